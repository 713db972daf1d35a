package wire

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

type protoField struct {
	Number   int
	Name     string
	Repeated bool
	Type     string
}

// parseProto reads message -> fields from the .proto file.
func parseProto(text string) map[string][]protoField {
	text = regexp.MustCompile(`//[^\n]*`).ReplaceAllString(text, "")
	msgRe := regexp.MustCompile(`message\s+(\w+)\s*\{([^}]*)\}`)
	fieldRe := regexp.MustCompile(`(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;`)
	out := map[string][]protoField{}
	for _, m := range msgRe.FindAllStringSubmatch(text, -1) {
		var fields []protoField
		for _, f := range fieldRe.FindAllStringSubmatch(m[2], -1) {
			n, _ := strconv.Atoi(f[4])
			fields = append(fields, protoField{n, f[3], f[1] != "", f[2]})
		}
		sort.Slice(fields, func(i, j int) bool { return fields[i].Number < fields[j].Number })
		out[m[1]] = fields
	}
	return out
}

var messages = map[string]reflect.Type{
	"Options":         reflect.TypeOf(Options{}),
	"CacheConnection": reflect.TypeOf(CacheConnection{}),
	"CacheOperation":  reflect.TypeOf(CacheOperation{}),
	"Entry":           reflect.TypeOf(Entry{}),
	"Metadata":        reflect.TypeOf(Metadata{}),
	"CacheResponse":   reflect.TypeOf(CacheResponse{}),
	"ItemResult":      reflect.TypeOf(ItemResult{}),
	"Handshake":       reflect.TypeOf(Handshake{}),
	"ClusterNode":     reflect.TypeOf(ClusterNode{}),
}

// protoType names the proto type a Go field stands for.
func protoType(t reflect.Type) (string, bool) {
	repeated := false
	if t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8 {
		repeated, t = true, t.Elem()
	}
	if t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string", repeated
	case reflect.Slice:
		return "bytes", repeated
	case reflect.Bool:
		return "bool", repeated
	case reflect.Uint32:
		return "uint32", repeated
	case reflect.Uint64:
		return "uint64", repeated
	default:
		return t.Name(), repeated
	}
}

func goFields(t reflect.Type) []protoField {
	var out []protoField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		num, name, _ := strings.Cut(f.Tag.Get("proto"), ",")
		n, _ := strconv.Atoi(num)
		typ, repeated := protoType(f.Type)
		out = append(out, protoField{n, name, repeated, typ})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStructsMatchProtoFile(t *testing.T) {
	proto := parseProto(string(readFile(t, "../../../../proto/cache.proto")))
	if len(proto) != len(messages) {
		t.Fatalf("proto has %d messages, Go has %d", len(proto), len(messages))
	}
	for name, typ := range messages {
		if got, want := goFields(typ), proto[name]; !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n go    %v\n proto %v", name, got, want)
		}
	}
}

// fill sets v (a struct) from the golden file's JSON conventions.
func fill(v reflect.Value, obj map[string]any) error {
	t := v.Type()
	seen := 0
	for i := 0; i < t.NumField(); i++ {
		_, name, _ := strings.Cut(t.Field(i).Tag.Get("proto"), ",")
		raw, ok := obj[name]
		if !ok {
			continue
		}
		seen++
		if err := set(v.Field(i), raw); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if seen != len(obj) {
		return fmt.Errorf("%s: unknown fields in %v", t.Name(), obj)
	}
	return nil
}

func set(f reflect.Value, raw any) error {
	switch f.Kind() {
	case reflect.String:
		f.SetString(raw.(string))
	case reflect.Bool:
		f.SetBool(raw.(bool))
	case reflect.Uint32:
		f.SetUint(uint64(raw.(float64)))
	case reflect.Uint64:
		n, err := strconv.ParseUint(raw.(string), 10, 64)
		if err != nil {
			return err
		}
		f.SetUint(n)
	case reflect.Ptr:
		f.Set(reflect.New(f.Type().Elem()))
		return fill(f.Elem(), raw.(map[string]any))
	case reflect.Struct:
		return fill(f, raw.(map[string]any))
	case reflect.Slice:
		if f.Type().Elem().Kind() == reflect.Uint8 {
			b, err := hex.DecodeString(raw.(string))
			f.SetBytes(b)
			return err
		}
		list := raw.([]any)
		s := reflect.MakeSlice(f.Type(), len(list), len(list))
		for i, item := range list {
			if err := set(s.Index(i), item); err != nil {
				return err
			}
		}
		f.Set(s)
	default:
		return fmt.Errorf("unsupported kind %s", f.Kind())
	}
	return nil
}

type vector struct {
	Name   string         `json:"name"`
	Type   string         `json:"type"`
	Fields map[string]any `json:"fields"`
	Hex    string         `json:"hex"`
}

func golden(t *testing.T) (messages, decodeOnly []vector) {
	var doc struct {
		Messages   []vector `json:"messages"`
		DecodeOnly []vector `json:"decode_only"`
	}
	if err := json.Unmarshal(readFile(t, "../../../testdata/golden.json"), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Messages) < 10 || len(doc.DecodeOnly) == 0 {
		t.Fatal("golden file too small")
	}
	return doc.Messages, doc.DecodeOnly
}

type codec interface {
	Marshal() []byte
	Unmarshal([]byte) error
}

func build(t *testing.T, v vector) codec {
	t.Helper()
	ptr := reflect.New(messages[v.Type])
	if err := fill(ptr.Elem(), v.Fields); err != nil {
		t.Fatalf("%s: %v", v.Name, err)
	}
	return ptr.Interface().(codec)
}

func TestEncodeMatchesProst(t *testing.T) {
	all, _ := golden(t)
	for _, v := range all {
		if got := hex.EncodeToString(build(t, v).Marshal()); got != v.Hex {
			t.Errorf("%s:\n got  %s\n want %s", v.Name, got, v.Hex)
		}
	}
}

func TestDecodeMatchesProst(t *testing.T) {
	all, decodeOnly := golden(t)
	for _, v := range append(all, decodeOnly...) {
		want := build(t, v)
		got := reflect.New(messages[v.Type]).Interface().(codec)
		raw, _ := hex.DecodeString(v.Hex)
		if err := got.Unmarshal(raw); err != nil {
			t.Errorf("%s: %v", v.Name, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got  %+v\n want %+v", v.Name, got, want)
		}
	}
}

func TestProtocolPageExampleFrames(t *testing.T) {
	hello := (&CacheConnection{ServiceID: "svc", ProtocolVersion: 1}).Marshal()
	if got := hex.EncodeToString(AppendFrame(nil, hello)); got != "000000070a037376633001" {
		t.Errorf("hello frame %s", got)
	}
	get := (&CacheOperation{Operation: "get", Key: []byte("k1")}).Marshal()
	if got := hex.EncodeToString(AppendFrame(nil, get)); got != "000000090a0367657412026b31" {
		t.Errorf("get frame %s", got)
	}
}

func TestUnpackedShardPorts(t *testing.T) {
	raw, _ := hex.DecodeString("4206" + "18bc3718bd37") // CacheResponse.handshake{shard_ports unpacked}
	var r CacheResponse
	if err := r.Unmarshal(raw); err != nil || !reflect.DeepEqual(r.Handshake.ShardPorts, []uint32{7100, 7101}) {
		t.Fatalf("%v %+v", err, r.Handshake)
	}
}

func TestMalformedInput(t *testing.T) {
	for _, h := range []string{"0a05616263", "08", "08ffffffffffffffffffff01", "0b", "0a02c328", "0000", "0a01"} {
		raw, _ := hex.DecodeString(h)
		var m CacheConnection
		if err := m.Unmarshal(raw); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v", h, err)
		}
	}
}
