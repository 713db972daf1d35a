// Package cache is the Go client of the dnd-cache binary protocol (Cache
// Service ICD, section 5.2).
//
//	client := cache.NewClient(&cache.Config{
//		ServiceID: "campaign_service",
//		Options:   cache.Options{Consistency: "strong"},
//	})
//	defer client.Close()
//	err := client.Set(ctx, "campaign:1234", data, cache.TTL(3600))
//	value, err := client.Get(ctx, "campaign:1234") // (nil, ErrNotFound) on a miss
//
// Values: []byte and json.RawMessage are stored as they are, string as
// UTF-8, anything else as JSON (json.Marshal) — the rules of the Python
// client, so either reads what the other wrote.
//
// Every operation is retried (Config.Retries, exponential backoff with full
// jitter) after connection errors, timeouts, CACHE_009 and CACHE_011: get,
// set and delete are idempotent for a cache (a repeated set stores the same
// value again). A circuit breaker counts those failures and, once open,
// fails calls at once with ErrCircuitOpen.
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"strconv"
	"sync"
	"time"

	"dnd/cache/internal/wire"
	"dnd/cache/xxh3"
)

// MaxBatchKeys is the most keys the server accepts in one batch request;
// larger batches are split by the client.
const MaxBatchKeys = 10000

// Client is safe for concurrent use. Connections open lazily.
type Client struct {
	cfg     Config
	err     error // configuration error, returned by every call
	hello   []byte
	seeds   *seeds
	breaker *breaker

	mu       sync.Mutex
	pools    map[string]*pool
	topology *topology
	closed   bool
	// In a cluster: slots learned (from CACHE_013) to live on other nodes.
	moved map[int]string
}

// statusMoved is CACHE_013: the key's slot belongs to another node of the
// cluster, named in the answer's data (docs/cluster.md).
const statusMoved = 13

// maxRedirects bounds the CACHE_013 redirections one request follows.
const maxRedirects = 3

// movedTarget is the slot and node address a CACHE_013 answer names.
func movedTarget(data []byte) (int, string, bool) {
	var body struct {
		Moved struct {
			Slot    int    `json:"slot"`
			Address string `json:"address"`
		} `json:"moved"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Moved.Address == "" {
		return 0, "", false
	}
	return body.Moved.Slot, body.Moved.Address, true
}

// slotOf is the cluster slot of a key: the top 12 bits of its hash.
func slotOf(key []byte, seed uint64) int {
	return int(xxh3.Hash64Seed(key, seed) >> 52)
}

// topology is what the handshake of the seed in use said about its shards.
type topology struct {
	host  string
	ports []uint32
	seed  uint64
}

// NewClient returns a client for cfg. A configuration error is returned by
// every call of the client.
func NewClient(cfg *Config) *Client {
	c := &Client{pools: map[string]*pool{}}
	if cfg == nil {
		cfg = &Config{}
	}
	c.cfg, c.err = cfg.withDefaults()
	c.breaker = newBreaker(c.cfg.Breaker, time.Now)
	if c.err == nil {
		list, _ := parseSeeds(c.cfg.Address) // checked by withDefaults
		c.seeds = newSeeds(list)
		c.hello = (&wire.CacheConnection{
			ServiceID: c.cfg.ServiceID,
			AuthToken: c.cfg.Token,
			Options: &wire.Options{
				Consistency: c.cfg.Options.Consistency,
				Compression: c.cfg.Options.Compression,
				Encryption:  c.cfg.Options.Encryption,
			},
			ProtocolVersion: 1,
			CorrelationID:   c.cfg.CorrelationID,
		}).Marshal()
	}
	return c
}

// SetOption modifies a Set or SetMany.
type SetOption func(*setOptions)

type setOptions struct{ ttl uint32 }

// TTL sets the time to live in seconds; 0 (the default) takes the server's.
func TTL(seconds uint32) SetOption { return func(o *setOptions) { o.ttl = seconds } }

// TTLDuration sets the time to live, rounded up to whole seconds.
func TTLDuration(d time.Duration) SetOption {
	return TTL(uint32((d + time.Second - 1) / time.Second))
}

// Get returns the value of key, or (nil, ErrNotFound) when it is missing
// or expired (errors.Is(err, ErrNotFound)).
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	r, err := c.single(ctx, &wire.CacheOperation{Operation: "get", Key: []byte(key)})
	if err != nil {
		return nil, err
	}
	if r.Status != 0 {
		return nil, statusError(r.Status, r.Data)
	}
	if r.Data == nil {
		return []byte{}, nil
	}
	return r.Data, nil
}

// GetString returns the value as a string.
func (c *Client) GetString(ctx context.Context, key string) (string, error) {
	v, err := c.Get(ctx, key)
	return string(v), err
}

// GetJSON parses the value as JSON into out.
func (c *Client) GetJSON(ctx context.Context, key string, out any) error {
	v, err := c.Get(ctx, key)
	if err != nil {
		return err
	}
	return json.Unmarshal(v, out)
}

// Set stores value for key (see the package comment for how values become bytes).
func (c *Client) Set(ctx context.Context, key string, value any, opts ...SetOption) error {
	data, err := EncodeValue(value)
	if err != nil {
		return err
	}
	var o setOptions
	for _, opt := range opts {
		opt(&o)
	}
	r, err := c.single(ctx, &wire.CacheOperation{Operation: "set", Key: []byte(key), Value: data, TTL: o.ttl})
	if err != nil {
		return err
	}
	if r.Status != 0 {
		return statusError(r.Status, r.Data)
	}
	return nil
}

// Delete removes key and reports whether it existed.
func (c *Client) Delete(ctx context.Context, key string) (bool, error) {
	r, err := c.single(ctx, &wire.CacheOperation{Operation: "delete", Key: []byte(key)})
	switch {
	case err != nil:
		return false, err
	case r.Status == 1:
		return false, nil
	case r.Status != 0:
		return false, statusError(r.Status, r.Data)
	}
	return true, nil
}

// GetMany returns the values of the keys found; missing and expired keys
// are left out. Other per-key failures are a *BatchError.
func (c *Client) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	keys = unique(keys)
	items, err := c.batch(ctx, "get_many", keys, nil, 0)
	if err != nil {
		return nil, err
	}
	found := make(map[string][]byte, len(keys))
	failed := map[string]*Error{}
	for i, it := range items {
		switch it.Status {
		case 0:
			if it.Data == nil {
				it.Data = []byte{}
			}
			found[keys[i]] = it.Data
		case 1, 2:
		default:
			failed[keys[i]] = statusError(it.Status, it.Data)
		}
	}
	return found, newBatchError(keys, failed)
}

// SetMany stores every pair; the keys that failed are reported in a *BatchError.
func (c *Client) SetMany(ctx context.Context, values map[string]any, opts ...SetOption) error {
	var o setOptions
	for _, opt := range opts {
		opt(&o)
	}
	keys := make([]string, 0, len(values))
	encoded := make(map[string][]byte, len(values))
	for k, v := range values {
		data, err := EncodeValue(v)
		if err != nil {
			return fmt.Errorf("dnd-cache: value of %q: %w", k, err)
		}
		keys = append(keys, k)
		encoded[k] = data
	}
	items, err := c.batch(ctx, "set_many", keys, encoded, o.ttl)
	if err != nil {
		return err
	}
	failed := map[string]*Error{}
	for i, it := range items {
		if it.Status != 0 {
			failed[keys[i]] = statusError(it.Status, it.Data)
		}
	}
	return newBatchError(keys, failed)
}

// DeleteMany removes the keys and returns how many existed.
func (c *Client) DeleteMany(ctx context.Context, keys []string) (int, error) {
	keys = unique(keys)
	items, err := c.batch(ctx, "delete_many", keys, nil, 0)
	if err != nil {
		return 0, err
	}
	deleted := 0
	failed := map[string]*Error{}
	for i, it := range items {
		switch it.Status {
		case 0:
			deleted++
		case 1:
		default:
			failed[keys[i]] = statusError(it.Status, it.Data)
		}
	}
	return deleted, newBatchError(keys, failed)
}

// Health returns the server's health document ({"status":"ok",...}).
func (c *Client) Health(ctx context.Context) (map[string]any, error) {
	return c.document(ctx, "health")
}

// Stats returns the server's statistics document.
func (c *Client) Stats(ctx context.Context) (map[string]any, error) {
	return c.document(ctx, "stats")
}

func (c *Client) document(ctx context.Context, op string) (map[string]any, error) {
	r, err := c.single(ctx, &wire.CacheOperation{Operation: op})
	if err != nil {
		return nil, err
	}
	if r.Status != 0 {
		return nil, statusError(r.Status, r.Data)
	}
	var doc map[string]any
	return doc, json.Unmarshal(r.Data, &doc)
}

// BreakerState is "closed", "open" or "half_open".
func (c *Client) BreakerState() string { return c.breaker.State() }

// Close closes every connection; later calls fail.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	pools := c.pools
	c.pools = map[string]*pool{}
	c.mu.Unlock()
	for _, p := range pools {
		p.close()
	}
	return nil
}

// EncodeValue turns a value into the bytes stored: []byte and
// json.RawMessage as they are, string as UTF-8, anything else as JSON.
func EncodeValue(value any) ([]byte, error) {
	switch v := value.(type) {
	case []byte:
		return v, nil
	case json.RawMessage:
		return v, nil
	case string:
		return []byte(v), nil
	default:
		return json.Marshal(v)
	}
}

// OwnerShard is the shard that owns key: xxh3_64_with_seed(key, seed) % shards.
func OwnerShard(key []byte, seed uint64, shards int) int {
	return int(xxh3.Hash64Seed(key, seed) % uint64(shards))
}

// ---------------------------------------------------------------------------
// Routing and resilience

func (c *Client) single(ctx context.Context, op *wire.CacheOperation) (*wire.CacheResponse, error) {
	if c.err != nil {
		return nil, c.err
	}
	id, err := c.correlationID(ctx)
	if err != nil {
		return nil, err
	}
	op.CorrelationID = id
	body := op.Marshal()
	redirect := ""
	for n := 0; ; n++ {
		r, err := c.withRetries(ctx, func() (*wire.CacheResponse, error) {
			addr := redirect
			if addr == "" {
				addr = c.addressFor(op.Key)
			}
			return c.send(ctx, addr, body)
		})
		if err != nil || r.Status != statusMoved || n == maxRedirects {
			return r, err
		}
		slot, addr, ok := movedTarget(r.Data)
		if !ok {
			return r, nil
		}
		// In a cluster: the key's slot lives on another node.
		c.mu.Lock()
		if c.moved == nil {
			c.moved = map[int]string{}
		}
		c.moved[slot] = addr
		c.mu.Unlock()
		redirect = addr
	}
}

// singleOf is one item of a batch as its own request (a key another node of
// the cluster owns, answered CACHE_013 in the batch).
func singleOf(operation string, key []byte, value []byte, ttl uint32) *wire.CacheOperation {
	single := map[string]string{"get_many": "get", "set_many": "set", "delete_many": "delete"}[operation]
	return &wire.CacheOperation{Operation: single, Key: key, Value: value, TTL: ttl}
}

// batch splits keys by owner shard and into chunks the server accepts,
// sends the groups in parallel, and returns one item per key, in order.
func (c *Client) batch(ctx context.Context, operation string, keys []string, values map[string][]byte, ttl uint32) ([]wire.ItemResult, error) {
	if c.err != nil {
		return nil, c.err
	}
	id, err := c.correlationID(ctx)
	if err != nil {
		return nil, err
	}
	groups := map[string][]int{}
	var order []string
	for i, k := range keys {
		addr := c.addressFor([]byte(k))
		if _, ok := groups[addr]; !ok {
			order = append(order, addr)
		}
		groups[addr] = append(groups[addr], i)
	}
	type chunk struct {
		addr    string
		indexes []int
	}
	var chunks []chunk
	for _, addr := range order {
		idx := groups[addr]
		for start := 0; start < len(idx); start += MaxBatchKeys {
			end := start + MaxBatchKeys
			if end > len(idx) {
				end = len(idx)
			}
			chunks = append(chunks, chunk{addr, idx[start:end]})
		}
	}
	results := make([]wire.ItemResult, len(keys))
	errs := make([]error, len(chunks))
	var wg sync.WaitGroup
	for n, ch := range chunks {
		op := &wire.CacheOperation{Operation: operation, TTL: ttl, CorrelationID: id}
		for _, i := range ch.indexes {
			if values == nil {
				op.Keys = append(op.Keys, []byte(keys[i]))
			} else {
				op.Entries = append(op.Entries, wire.Entry{Key: []byte(keys[i]), Value: values[keys[i]]})
			}
		}
		wg.Add(1)
		go func(n int, ch chunk, body []byte) {
			defer wg.Done()
			r, err := c.withRetries(ctx, func() (*wire.CacheResponse, error) { return c.send(ctx, ch.addr, body) })
			switch {
			case err != nil:
				errs[n] = err
			case r.Status != 0:
				errs[n] = statusError(r.Status, r.Data)
			case len(r.Items) != len(ch.indexes):
				errs[n] = &Error{Code: codeProtocol, Message: fmt.Sprintf("%s: %d items for %d keys", operation, len(r.Items), len(ch.indexes))}
			default:
				for j, i := range ch.indexes {
					results[i] = r.Items[j]
				}
			}
		}(n, ch, op.Marshal())
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	for i := range results {
		if results[i].Status != statusMoved {
			continue
		}
		// In a cluster: a key of another node, sent there alone.
		key := []byte(keys[i])
		var value []byte
		if values != nil {
			value = values[keys[i]]
		}
		r, err := c.single(ctx, singleOf(operation, key, value, ttl))
		if err != nil {
			return nil, err
		}
		results[i] = wire.ItemResult{Key: key, Status: r.Status, Data: r.Data, Metadata: r.Metadata}
	}
	return results, nil
}

// addressFor is the owner shard's port when the server listed them, else
// the seed in use; "" when a walk must find one (send does).
func (c *Client) addressFor(key []byte) string {
	if c.cfg.DisableShardRouting || len(key) == 0 {
		return c.seeds.inUse()
	}
	c.mu.Lock()
	t := c.topology
	var moved string
	if t != nil && c.moved != nil {
		moved = c.moved[slotOf(key, t.seed)]
	}
	c.mu.Unlock()
	if moved != "" {
		return moved
	}
	if t == nil {
		return c.seeds.inUse()
	}
	port := t.ports[OwnerShard(key, t.seed, len(t.ports))]
	return net.JoinHostPort(t.host, strconv.Itoa(int(port)))
}

func (c *Client) withRetries(ctx context.Context, attempt func() (*wire.CacheResponse, error)) (*wire.CacheResponse, error) {
	var lastErr error
	for n := 0; n <= c.cfg.Retries; n++ {
		if n > 0 {
			if err := c.backoff(ctx, n-1); err != nil {
				return nil, err
			}
		}
		if !c.breaker.allow() {
			return nil, &Error{Code: codeCircuitOpen, Message: "circuit breaker open: the server is failing", Err: lastErr}
		}
		r, err := attempt()
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !e.Retryable() {
				// A canceled context or a refused handshake says nothing
				// about the server's health.
				c.breaker.abandon()
				return nil, err
			}
			c.breaker.record(false)
			if e.Code == codeConnection {
				c.mu.Lock()
				c.topology = nil // the shard ports may be stale
				c.mu.Unlock()
				c.seeds.forget() // and the seed may be down
			}
			lastErr = err
			continue
		}
		if r.Status != 0 && statusError(r.Status, nil).Retryable() {
			c.breaker.record(false)
			lastErr = statusError(r.Status, r.Data)
			if n < c.cfg.Retries {
				continue
			}
			return r, nil
		}
		c.breaker.record(true)
		return r, nil
	}
	return nil, lastErr
}

func (c *Client) backoff(ctx context.Context, attempt int) error {
	limit := c.cfg.BackoffBase << uint(attempt)
	if limit > c.cfg.BackoffMax || limit <= 0 {
		limit = c.cfg.BackoffMax
	}
	t := time.NewTimer(time.Duration(rand.Int63n(int64(limit) + 1))) // full jitter
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send sends body to addr, or to the seed in use when addr is "".
func (c *Client) send(ctx context.Context, addr string, body []byte) (*wire.CacheResponse, error) {
	if addr == "" {
		seed, err := c.enter(ctx)
		if err != nil {
			return nil, err
		}
		addr = seed
	}
	p, err := c.pool(addr)
	if err != nil {
		return nil, err
	}
	conn, err := p.get(ctx)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(c.cfg.RequestTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	answers, err := conn.roundtrip(ctx, deadline, [][]byte{body})
	p.put(conn)
	if err != nil {
		return nil, err
	}
	return answers[0], nil
}

func (c *Client) pool(addr string) (*pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, &Error{Code: codeConnection, Message: "client closed"}
	}
	p, ok := c.pools[addr]
	if !ok {
		p = newPool(addr, c.cfg.Pool, c.cfg.ConnectTimeout, c.dial)
		c.pools[addr] = p
	}
	return p, nil
}

func (c *Client) dial(ctx context.Context, addr string) (*conn, error) {
	conn, err := dial(ctx, addr, c.hello, c.cfg.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	if addr == c.seeds.inUse() {
		c.learnTopology(addr, conn.handshake)
	}
	return conn, nil
}

// learnTopology keeps the shard ports of the seed in use: other nodes of a
// cluster are reached on their public port.
func (c *Client) learnTopology(seed string, hs *wire.Handshake) {
	if hs.Hash != "xxh3_64" || hs.ShardCount == 0 || len(hs.ShardPorts) != int(hs.ShardCount) {
		return
	}
	host, _, _ := net.SplitHostPort(seed)
	c.mu.Lock()
	c.topology = &topology{host: host, ports: hs.ShardPorts, seed: hs.HashSeed}
	c.mu.Unlock()
}

func unique(keys []string) []string {
	seen := make(map[string]struct{}, len(keys))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if _, dup := seen[k]; !dup {
			seen[k] = struct{}{}
			out = append(out, k)
		}
	}
	return out
}
