// Package wire holds the messages of proto/cache.proto, encoded and decoded
// by hand (standard library only).
//
// The `proto:"number,name"` tag of each field is checked against
// proto/cache.proto by the tests, and Marshal/Unmarshal against the golden
// bytes prost produced (clients/testdata/golden.json). Encoding follows prost:
// fields in number order, proto3 defaults left out, a present nested message
// written even when empty, repeated numbers packed. Decoding skips unknown
// fields and accepts packed and unpacked repeated numbers.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Options of a connection or an operation.
type Options struct {
	Compression bool   `proto:"1,compression"`
	Encryption  bool   `proto:"2,encryption"`
	Consistency string `proto:"3,consistency"`
}

// CacheConnection is the first frame a client sends.
type CacheConnection struct {
	ServiceID       string   `proto:"1,service_id"`
	AuthToken       string   `proto:"2,auth_token"`
	Options         *Options `proto:"3,options"`
	ProtocolVersion uint32   `proto:"6,protocol_version"`
	CorrelationID   string   `proto:"7,correlation_id"`
}

// Entry is one key/value pair of set_many.
type Entry struct {
	Key   []byte `proto:"1,key"`
	Value []byte `proto:"2,value"`
	TTL   uint32 `proto:"3,ttl"`
}

// CacheOperation is one request.
type CacheOperation struct {
	Operation     string   `proto:"1,operation"`
	Key           []byte   `proto:"2,key"`
	Value         []byte   `proto:"3,value"`
	TTL           uint32   `proto:"4,ttl"`
	Options       *Options `proto:"5,options"`
	Keys          [][]byte `proto:"6,keys"`
	Entries       []Entry  `proto:"7,entries"`
	CorrelationID string   `proto:"8,correlation_id"`
	Limit         uint32   `proto:"9,limit"`
	WithValues    bool     `proto:"10,with_values"`
}

// Metadata of a stored item.
type Metadata struct {
	CreatedAt uint64 `proto:"1,created_at"`
	ExpiresAt uint64 `proto:"2,expires_at"`
	Version   uint64 `proto:"3,version"`
}

// ItemResult is the result for one key of a batch.
type ItemResult struct {
	Key      []byte    `proto:"1,key"`
	Status   uint32    `proto:"2,status"`
	Data     []byte    `proto:"3,data"`
	Metadata *Metadata `proto:"4,metadata"`
}

// Handshake tells a shard-aware client where each key lives.
type Handshake struct {
	ShardID       uint32   `proto:"1,shard_id"`
	ShardCount    uint32   `proto:"2,shard_count"`
	ShardPorts    []uint32 `proto:"3,shard_ports"`
	Hash          string   `proto:"4,hash"`
	HashSeed      uint64   `proto:"5,hash_seed"`
	ServerVersion string   `proto:"6,server_version"`
	MaxFrameBytes uint32   `proto:"7,max_frame_bytes"`
	MaxItemBytes  uint32   `proto:"8,max_item_bytes"`
	// In a cluster (docs/cluster.md): the map's epoch, nodes and slots.
	ClusterEpoch uint64        `proto:"9,cluster_epoch"`
	Nodes        []ClusterNode `proto:"10,nodes"`
	NodeIndex    uint32        `proto:"11,node_index"`
	SlotPrimary  []uint32      `proto:"12,slot_primary"`
}

// ClusterNode is a node of the cluster as clients dial it.
type ClusterNode struct {
	ID         string   `proto:"1,id"`
	Zone       string   `proto:"2,zone"`
	Host       string   `proto:"3,host"`
	Port       uint32   `proto:"4,port"`
	ShardPorts []uint32 `proto:"5,shard_ports"`
	HTTPPort   uint32   `proto:"6,http_port"`
}

// CacheResponse answers a CacheConnection or a CacheOperation.
type CacheResponse struct {
	Status        uint32       `proto:"1,status"`
	Data          []byte       `proto:"2,data"`
	Metadata      *Metadata    `proto:"3,metadata"`
	Items         []ItemResult `proto:"6,items"`
	CorrelationID string       `proto:"7,correlation_id"`
	Handshake     *Handshake   `proto:"8,handshake"`
	Truncated     bool         `proto:"9,truncated"`
}

const (
	wireVarint = 0
	wireI64    = 1
	wireLen    = 2
	wireI32    = 5
)

// ---------------------------------------------------------------------------
// Encoding

type encoder []byte

func (e *encoder) varint(v uint64) { *e = binary.AppendUvarint(*e, v) }

func (e *encoder) tag(num, wt int) { e.varint(uint64(num)<<3 | uint64(wt)) }

func (e *encoder) uint(num int, v uint64) {
	if v != 0 {
		e.tag(num, wireVarint)
		e.varint(v)
	}
}

func (e *encoder) bool(num int, v bool) {
	if v {
		e.tag(num, wireVarint)
		*e = append(*e, 1)
	}
}

func (e *encoder) raw(num int, v []byte) {
	e.tag(num, wireLen)
	e.varint(uint64(len(v)))
	*e = append(*e, v...)
}

func (e *encoder) bytes(num int, v []byte) {
	if len(v) > 0 {
		e.raw(num, v)
	}
}

func (e *encoder) string(num int, v string) {
	if v != "" {
		e.tag(num, wireLen)
		e.varint(uint64(len(v)))
		*e = append(*e, v...)
	}
}

func (e *encoder) message(num int, body []byte) { e.raw(num, body) }

func (m *Options) append(b []byte) []byte {
	e := encoder(b)
	e.bool(1, m.Compression)
	e.bool(2, m.Encryption)
	e.string(3, m.Consistency)
	return e
}

// Marshal encodes the message.
func (m *CacheConnection) Marshal() []byte {
	var e encoder
	e.string(1, m.ServiceID)
	e.string(2, m.AuthToken)
	if m.Options != nil {
		e.message(3, m.Options.append(nil))
	}
	e.uint(6, uint64(m.ProtocolVersion))
	e.string(7, m.CorrelationID)
	return e
}

func (m *Entry) append(b []byte) []byte {
	e := encoder(b)
	e.bytes(1, m.Key)
	e.bytes(2, m.Value)
	e.uint(3, uint64(m.TTL))
	return e
}

// Marshal encodes the message.
func (m *CacheOperation) Marshal() []byte {
	var e encoder
	e.string(1, m.Operation)
	e.bytes(2, m.Key)
	e.bytes(3, m.Value)
	e.uint(4, uint64(m.TTL))
	if m.Options != nil {
		e.message(5, m.Options.append(nil))
	}
	for _, k := range m.Keys {
		e.raw(6, k)
	}
	for i := range m.Entries {
		e.message(7, m.Entries[i].append(nil))
	}
	e.string(8, m.CorrelationID)
	e.uint(9, uint64(m.Limit))
	e.bool(10, m.WithValues)
	return e
}

func (m *Metadata) append(b []byte) []byte {
	e := encoder(b)
	e.uint(1, m.CreatedAt)
	e.uint(2, m.ExpiresAt)
	e.uint(3, m.Version)
	return e
}

func (m *ItemResult) append(b []byte) []byte {
	e := encoder(b)
	e.bytes(1, m.Key)
	e.uint(2, uint64(m.Status))
	e.bytes(3, m.Data)
	if m.Metadata != nil {
		e.message(4, m.Metadata.append(nil))
	}
	return e
}

func (m *Handshake) append(b []byte) []byte {
	e := encoder(b)
	e.uint(1, uint64(m.ShardID))
	e.uint(2, uint64(m.ShardCount))
	if len(m.ShardPorts) > 0 {
		var packed encoder
		for _, p := range m.ShardPorts {
			packed.varint(uint64(p))
		}
		e.raw(3, packed)
	}
	e.string(4, m.Hash)
	e.uint(5, m.HashSeed)
	e.string(6, m.ServerVersion)
	e.uint(7, uint64(m.MaxFrameBytes))
	e.uint(8, uint64(m.MaxItemBytes))
	e.uint(9, m.ClusterEpoch)
	for i := range m.Nodes {
		e.message(10, m.Nodes[i].append(nil))
	}
	e.uint(11, uint64(m.NodeIndex))
	if len(m.SlotPrimary) > 0 {
		var packed encoder
		for _, p := range m.SlotPrimary {
			packed.varint(uint64(p))
		}
		e.raw(12, packed)
	}
	return e
}

func (m *ClusterNode) append(b []byte) []byte {
	e := encoder(b)
	e.string(1, m.ID)
	e.string(2, m.Zone)
	e.string(3, m.Host)
	e.uint(4, uint64(m.Port))
	if len(m.ShardPorts) > 0 {
		var packed encoder
		for _, p := range m.ShardPorts {
			packed.varint(uint64(p))
		}
		e.raw(5, packed)
	}
	e.uint(6, uint64(m.HTTPPort))
	return e
}

// Marshal encodes the message (the server's side; used by the tests).
func (m *CacheResponse) Marshal() []byte {
	var e encoder
	e.uint(1, uint64(m.Status))
	e.bytes(2, m.Data)
	if m.Metadata != nil {
		e.message(3, m.Metadata.append(nil))
	}
	for i := range m.Items {
		e.message(6, m.Items[i].append(nil))
	}
	e.string(7, m.CorrelationID)
	if m.Handshake != nil {
		e.message(8, m.Handshake.append(nil))
	}
	e.bool(9, m.Truncated)
	return e
}

// AppendFrame appends the 4-byte big-endian length and the body.
func AppendFrame(dst, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// ---------------------------------------------------------------------------
// Decoding

// ErrMalformed wraps every decoding error.
var ErrMalformed = errors.New("malformed protobuf message")

type decoder struct {
	b []byte
	i int
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func (d *decoder) more() bool { return d.i < len(d.b) }

func (d *decoder) varint() (uint64, error) {
	var v uint64
	for n := 0; n < 10; n++ {
		if d.i >= len(d.b) {
			return 0, malformed("truncated varint")
		}
		c := d.b[d.i]
		d.i++
		if n == 9 && c > 1 {
			return 0, malformed("varint longer than 64 bits")
		}
		v |= uint64(c&0x7f) << (7 * n)
		if c < 0x80 {
			return v, nil
		}
	}
	return 0, malformed("varint longer than 10 bytes")
}

func (d *decoder) take(n uint64) ([]byte, error) {
	if n > uint64(len(d.b)-d.i) {
		return nil, malformed("truncated field")
	}
	out := d.b[d.i : d.i+int(n)]
	d.i += int(n)
	return out, nil
}

// field reads the next tag.
func (d *decoder) field() (num, wt int, err error) {
	key, err := d.varint()
	if err != nil {
		return 0, 0, err
	}
	if key>>3 == 0 || key>>3 > 1<<29-1 {
		return 0, 0, malformed("invalid field number")
	}
	return int(key >> 3), int(key & 7), nil
}

// skip passes over an unknown field.
func (d *decoder) skip(wt int) error {
	var err error
	switch wt {
	case wireVarint:
		_, err = d.varint()
	case wireI64:
		_, err = d.take(8)
	case wireLen:
		var n uint64
		if n, err = d.varint(); err == nil {
			_, err = d.take(n)
		}
	case wireI32:
		_, err = d.take(4)
	default:
		err = malformed("unsupported wire type %d", wt)
	}
	return err
}

func (d *decoder) expect(num, wt, want int) error {
	if wt != want {
		return malformed("field %d: wire type %d, want %d", num, wt, want)
	}
	return nil
}

func (d *decoder) uint(num, wt int) (uint64, error) {
	if err := d.expect(num, wt, wireVarint); err != nil {
		return 0, err
	}
	return d.varint()
}

func (d *decoder) u32(num, wt int) (uint32, error) {
	v, err := d.uint(num, wt)
	return uint32(v), err // as prost: a wider varint is truncated
}

func (d *decoder) bool(num, wt int) (bool, error) {
	v, err := d.uint(num, wt)
	return v != 0, err
}

func (d *decoder) bytes(num, wt int) ([]byte, error) {
	if err := d.expect(num, wt, wireLen); err != nil {
		return nil, err
	}
	n, err := d.varint()
	if err != nil {
		return nil, err
	}
	b, err := d.take(n)
	if err != nil {
		return nil, err
	}
	return append([]byte{}, b...), nil
}

func (d *decoder) string(num, wt int) (string, error) {
	b, err := d.bytes(num, wt)
	if err == nil && !utf8.Valid(b) {
		err = malformed("field %d: invalid UTF-8", num)
	}
	return string(b), err
}

// sub returns a decoder over a nested message.
// fields calls one for each field of the message, in order, and stops at
// the first error (one skips the fields it does not know).
func (d *decoder) fields(one func(num, wt int) error) error {
	for d.more() {
		num, wt, err := d.field()
		if err != nil {
			return err
		}
		if err := one(num, wt); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) sub(num, wt int) (*decoder, error) {
	b, err := d.bytes(num, wt)
	return &decoder{b: b}, err
}

func (m *Options) decode(d *decoder) error {
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.Compression, err = d.bool(num, wt)
		case 2:
			m.Encryption, err = d.bool(num, wt)
		case 3:
			m.Consistency, err = d.string(num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

// Unmarshal decodes b into m.
func (m *CacheConnection) Unmarshal(b []byte) error {
	d := &decoder{b: b}
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.ServiceID, err = d.string(num, wt)
		case 2:
			m.AuthToken, err = d.string(num, wt)
		case 3:
			var sub *decoder
			if sub, err = d.sub(num, wt); err == nil {
				m.Options = &Options{}
				err = m.Options.decode(sub)
			}
		case 6:
			m.ProtocolVersion, err = d.u32(num, wt)
		case 7:
			m.CorrelationID, err = d.string(num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

func (m *Entry) decode(d *decoder) error {
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.Key, err = d.bytes(num, wt)
		case 2:
			m.Value, err = d.bytes(num, wt)
		case 3:
			m.TTL, err = d.u32(num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

// Unmarshal decodes b into m.
func (m *CacheOperation) Unmarshal(b []byte) error {
	d := &decoder{b: b}
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.Operation, err = d.string(num, wt)
		case 2:
			m.Key, err = d.bytes(num, wt)
		case 3:
			m.Value, err = d.bytes(num, wt)
		case 4:
			m.TTL, err = d.u32(num, wt)
		case 5:
			var sub *decoder
			if sub, err = d.sub(num, wt); err == nil {
				m.Options = &Options{}
				err = m.Options.decode(sub)
			}
		case 6:
			var k []byte
			if k, err = d.bytes(num, wt); err == nil {
				m.Keys = append(m.Keys, k)
			}
		case 7:
			var sub *decoder
			if sub, err = d.sub(num, wt); err == nil {
				var entry Entry
				if err = entry.decode(sub); err == nil {
					m.Entries = append(m.Entries, entry)
				}
			}
		case 8:
			m.CorrelationID, err = d.string(num, wt)
		case 9:
			m.Limit, err = d.u32(num, wt)
		case 10:
			m.WithValues, err = d.bool(num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

func (m *Metadata) decode(d *decoder) error {
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.CreatedAt, err = d.uint(num, wt)
		case 2:
			m.ExpiresAt, err = d.uint(num, wt)
		case 3:
			m.Version, err = d.uint(num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

func decodeMetadata(d *decoder, num, wt int) (*Metadata, error) {
	sub, err := d.sub(num, wt)
	if err != nil {
		return nil, err
	}
	m := &Metadata{}
	return m, m.decode(sub)
}

func (m *ItemResult) decode(d *decoder) error {
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.Key, err = d.bytes(num, wt)
		case 2:
			m.Status, err = d.u32(num, wt)
		case 3:
			m.Data, err = d.bytes(num, wt)
		case 4:
			m.Metadata, err = decodeMetadata(d, num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

func (m *Handshake) decode(d *decoder) error {
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.ShardID, err = d.u32(num, wt)
		case 2:
			m.ShardCount, err = d.u32(num, wt)
		case 3:
			if wt == wireVarint { // unpacked
				var p uint32
				if p, err = d.u32(num, wt); err == nil {
					m.ShardPorts = append(m.ShardPorts, p)
				}
				break
			}
			var sub *decoder
			if sub, err = d.sub(num, wt); err == nil {
				for sub.more() && err == nil {
					var p uint32
					if p, err = sub.u32(num, wireVarint); err == nil {
						m.ShardPorts = append(m.ShardPorts, p)
					}
				}
			}
		case 4:
			m.Hash, err = d.string(num, wt)
		case 5:
			m.HashSeed, err = d.uint(num, wt)
		case 6:
			m.ServerVersion, err = d.string(num, wt)
		case 7:
			m.MaxFrameBytes, err = d.u32(num, wt)
		case 8:
			m.MaxItemBytes, err = d.u32(num, wt)
		case 9:
			m.ClusterEpoch, err = d.uint(num, wt)
		case 10:
			var sub *decoder
			if sub, err = d.sub(num, wt); err == nil {
				var n ClusterNode
				if err = n.decode(sub); err == nil {
					m.Nodes = append(m.Nodes, n)
				}
			}
		case 11:
			m.NodeIndex, err = d.u32(num, wt)
		case 12:
			m.SlotPrimary, err = d.u32s(m.SlotPrimary, num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

func (m *ClusterNode) decode(d *decoder) error {
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.ID, err = d.string(num, wt)
		case 2:
			m.Zone, err = d.string(num, wt)
		case 3:
			m.Host, err = d.string(num, wt)
		case 4:
			m.Port, err = d.u32(num, wt)
		case 5:
			m.ShardPorts, err = d.u32s(m.ShardPorts, num, wt)
		case 6:
			m.HTTPPort, err = d.u32(num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}

// u32s appends a repeated uint32 field, packed or not.
func (d *decoder) u32s(out []uint32, num, wt int) ([]uint32, error) {
	if wt == wireVarint {
		p, err := d.u32(num, wt)
		return append(out, p), err
	}
	sub, err := d.sub(num, wt)
	for err == nil && sub.more() {
		var p uint32
		if p, err = sub.u32(num, wireVarint); err == nil {
			out = append(out, p)
		}
	}
	return out, err
}

// Unmarshal decodes b into m.
func (m *CacheResponse) Unmarshal(b []byte) error {
	d := &decoder{b: b}
	return d.fields(func(num, wt int) (err error) {
		switch num {
		case 1:
			m.Status, err = d.u32(num, wt)
		case 2:
			m.Data, err = d.bytes(num, wt)
		case 3:
			m.Metadata, err = decodeMetadata(d, num, wt)
		case 6:
			var sub *decoder
			if sub, err = d.sub(num, wt); err == nil {
				var item ItemResult
				if err = item.decode(sub); err == nil {
					m.Items = append(m.Items, item)
				}
			}
		case 7:
			m.CorrelationID, err = d.string(num, wt)
		case 8:
			var sub *decoder
			if sub, err = d.sub(num, wt); err == nil {
				m.Handshake = &Handshake{}
				err = m.Handshake.decode(sub)
			}
		case 9:
			m.Truncated, err = d.bool(num, wt)
		default:
			err = d.skip(wt)
		}
		return err
	})
}
