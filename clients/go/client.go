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
//
// In a cluster, the handshake's slot map sends each key straight to its
// node (and that node's owner shard); the client follows CACHE_013 when the
// map moved, fetches the map again when a node is lost, and keeps one
// circuit breaker per node, so a dead node fails fast for its own keys only
// (cluster.go; Client.RoutingStats, Client.NodeBreakerStates).
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
	"sync/atomic"
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

	counts counters
	// learned is set once a handshake was read: until then the client
	// knows no route but the seed's, so a keyed request opens a
	// connection first (a cluster's map comes with it).
	learned atomic.Bool

	mu       sync.Mutex
	pools    map[string]*pool
	topology *topology
	closed   bool
	hashSeed uint64 // of the last handshake
	// In a cluster (cluster.go): the slot map and each node's breaker.
	cluster     *clusterMap
	breakers    map[string]*breaker
	refreshing  chan struct{} // closed when the map fetch in flight ends
	refreshedAt time.Time     // when the last map fetch ended
	// background is the context of map fetches no request waits for;
	// Close cancels it.
	background context.Context
	stop       context.CancelFunc
}

// statusMoved is CACHE_013: the key's slot belongs to another node of the
// cluster, named in the answer's data (docs/cluster.md).
const statusMoved = 13

// maxRedirects bounds the CACHE_013 redirections one request follows.
const maxRedirects = 3

// topology is what the handshake of the seed in use said about its shards
// (outside a cluster).
type topology struct {
	host  string
	ports []uint32
	seed  uint64
}

// NewClient returns a client for cfg. A configuration error is returned by
// every call of the client.
func NewClient(cfg *Config) *Client {
	c := &Client{pools: map[string]*pool{}, breakers: map[string]*breaker{}}
	c.background, c.stop = context.WithCancel(context.Background())
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

// BreakerState is "closed", "open" or "half_open". In a cluster each node
// has its own breaker (NodeBreakerStates): BreakerState is then "open" when
// every node's breaker the client used is open, "half_open" when none is
// closed but one is half-open, else "closed".
func (c *Client) BreakerState() string {
	if !c.inCluster() {
		return c.breaker.State()
	}
	states := c.NodeBreakerStates()
	if len(states) == 0 {
		return c.breaker.State()
	}
	summary := StateOpen
	for _, st := range states {
		switch st {
		case StateClosed:
			return StateClosed
		case StateHalfOpen:
			summary = StateHalfOpen
		}
	}
	return summary
}

// Close closes every connection; later calls fail.
func (c *Client) Close() error {
	c.stop() // a map fetch in the background ends now
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
	redirects := 0
	var waited time.Duration
	next := staleWaitFirst
	for {
		r, err := c.withRetries(ctx, op.Key, func(rt route) (*wire.CacheResponse, error) {
			return c.send(ctx, rt.addr, body)
		})
		if err != nil || r.Status != statusMoved {
			return r, err
		}
		// In a cluster: the node sent to does not hold the key's slot.
		mv, ok := parseMoved(r.Data)
		if !ok {
			return r, nil
		}
		action, wait := onMoved(mv.Epoch, c.slotEpoch(mv.Slot), redirects, waited, next)
		switch action {
		case follow:
			redirects++
			c.counts.redirects.Add(1)
			if c.pointSlot(mv) {
				c.refreshInBackground(mv.Address)
			}
		case waitStale:
			c.counts.staleWaits.Add(1)
			if err := sleep(ctx, wait); err != nil {
				return nil, err
			}
			waited += wait
			next *= 2
		default:
			return r, nil
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// singleOf is one item of a batch as its own request (a key another node of
// the cluster owns, answered CACHE_013 in the batch).
func singleOf(operation string, key []byte, value []byte, ttl uint32) *wire.CacheOperation {
	single := map[string]string{"get_many": "get", "set_many": "set", "delete_many": "delete"}[operation]
	return &wire.CacheOperation{Operation: single, Key: key, Value: value, TTL: ttl}
}

// chunk is the keys of a batch (indexes) sent to one address in one request.
type chunk struct {
	rt      route
	indexes []int
}

// chunks groups the keys at idx by route (owner shard, or node) and splits
// the groups into requests the server accepts. A node with an open breaker
// makes it fetch the map first (its slots may have moved).
func (c *Client) chunks(ctx context.Context, keys []string, idx []int) []chunk {
	group := func() (map[route][]int, []route) {
		groups := map[route][]int{}
		var order []route
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, i := range idx {
			rt := c.routeLocked([]byte(keys[i]))
			if _, ok := groups[rt]; !ok {
				order = append(order, rt)
			}
			groups[rt] = append(groups[rt], i)
		}
		return groups, order
	}
	groups, order := group()
	for _, rt := range order {
		if rt.node != "" && c.breakerFor(rt.node).isOpen() {
			c.refreshMap(ctx, "", rt.node, true)
			groups, order = group()
			break
		}
	}
	var out []chunk
	for _, rt := range order {
		in := groups[rt]
		for start := 0; start < len(in); start += MaxBatchKeys {
			end := start + MaxBatchKeys
			if end > len(in) {
				end = len(in)
			}
			out = append(out, chunk{rt, in[start:end]})
		}
	}
	return out
}

// batch splits keys by owner shard (and, in a cluster, owner node) and into
// chunks the server accepts, sends the chunks in parallel, and returns one
// item per key, in order. A chunk that fails with a retryable error is sent
// again after the backoff, its keys grouped again by the route the map
// gives then (a connection error fetches the map again).
func (c *Client) batch(ctx context.Context, operation string, keys []string, values map[string][]byte, ttl uint32) ([]wire.ItemResult, error) {
	if c.err != nil {
		return nil, c.err
	}
	id, err := c.correlationID(ctx)
	if err != nil {
		return nil, err
	}
	_ = c.handshakeFirst(ctx) // a failure is met again by the chunks' attempts
	results := make([]wire.ItemResult, len(keys))
	pending := make([]int, len(keys))
	for i := range pending {
		pending[i] = i
	}
	var lastErr error
	for round := 0; len(pending) > 0; round++ {
		if round > 0 {
			if err := c.backoff(ctx, round-1); err != nil {
				return nil, err
			}
		}
		chunks := c.chunks(ctx, keys, pending)
		errs := make([]error, len(chunks))
		again := make([]bool, len(chunks))
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
				r, retry, err := c.attempt(ctx, ch.rt, lastErr, func(rt route) (*wire.CacheResponse, error) {
					return c.send(ctx, rt.addr, body)
				})
				switch {
				case retry && round < c.cfg.Retries:
					again[n], errs[n] = true, err
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
		var next []int
		for n, ch := range chunks {
			switch {
			case again[n]:
				next = append(next, ch.indexes...)
				lastErr = errs[n]
			case errs[n] != nil:
				return nil, errs[n]
			}
		}
		pending = next
	}
	for i := range results {
		if results[i].Status != statusMoved {
			continue
		}
		// In a cluster: a key of another node (the map moved), sent there
		// alone, following CACHE_013 as single requests do.
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

// addressForLocked is, outside a cluster, the owner shard's port when the
// server listed them, else the seed in use; "" when a walk must find one
// (send does). c.mu is held.
func (c *Client) addressForLocked(key []byte) string {
	t := c.topology
	if c.cfg.DisableShardRouting || len(key) == 0 || t == nil {
		return c.seeds.inUse()
	}
	port := t.ports[OwnerShard(key, t.seed, len(t.ports))]
	return net.JoinHostPort(t.host, strconv.Itoa(int(port)))
}

// withRetries sends a request for key (nil: no key) with send, on the route
// the client knows for it at each attempt, retrying retryable failures
// after the backoff.
func (c *Client) withRetries(ctx context.Context, key []byte, send func(route) (*wire.CacheResponse, error)) (*wire.CacheResponse, error) {
	var lastErr error
	for n := 0; n <= c.cfg.Retries; n++ {
		if n > 0 {
			if err := c.backoff(ctx, n-1); err != nil {
				return nil, err
			}
		}
		rt, first := c.checkedRoute(ctx, key)
		r, retry, err := c.attempt(ctx, rt, lastErr, func(rt route) (*wire.CacheResponse, error) {
			if first != nil {
				return nil, first // the first handshake failed: this attempt's failure
			}
			return send(rt)
		})
		if !retry {
			return r, err
		}
		if r != nil && n == c.cfg.Retries {
			return r, nil // the retryable status of the last attempt
		}
		lastErr = err
	}
	return nil, lastErr
}

// attempt sends one request on rt through the breaker of rt's node, and
// says whether it may be retried. lastErr is the failure of the attempt
// before, if any. A connection error or timeout (a node lost) makes the
// client look for another seed, or in a cluster fetch the map again.
func (c *Client) attempt(ctx context.Context, rt route, lastErr error, send func(route) (*wire.CacheResponse, error)) (r *wire.CacheResponse, retry bool, err error) {
	b := c.breakerFor(rt.node)
	if !b.allow() {
		msg := "circuit breaker open: the server is failing"
		if rt.node != "" {
			msg = "circuit breaker open: node " + rt.node + " is failing"
		}
		return nil, false, &Error{Code: codeCircuitOpen, Message: msg, Err: lastErr}
	}
	r, err = send(rt)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || !e.Retryable() {
			// A canceled context or a refused handshake says nothing
			// about the server's health.
			b.abandon()
			return nil, false, err
		}
		b.record(false)
		if e.Code == codeConnection || (e.Code == ErrTimeout.Code && e.Status == 0) {
			c.lostNode(ctx, rt, e.Code != codeConnection)
		}
		return nil, true, err
	}
	if r.Status != 0 && statusError(r.Status, nil).Retryable() {
		b.record(false)
		return r, true, statusError(r.Status, r.Data)
	}
	b.record(true)
	return r, false, nil
}

// lostNode follows a connection error (or a timeout) on rt. Outside a
// cluster, a connection error forgets the shard ports and, with several
// seeds, the seed in use. In a cluster, the map is fetched again from
// another node so the retry takes the route it gives.
func (c *Client) lostNode(ctx context.Context, rt route, timeout bool) {
	if !c.inCluster() {
		if !timeout {
			c.mu.Lock()
			c.topology = nil // the shard ports may be stale
			c.mu.Unlock()
			c.seeds.forget() // and the seed may be down
		}
		return
	}
	if seed := c.seeds.inUse(); rt.node == "" || rt.node == seed {
		c.seeds.forget()
	}
	c.refreshMap(ctx, "", rt.node, true)
}

func (c *Client) backoff(ctx context.Context, attempt int) error {
	limit := c.cfg.BackoffBase << uint(attempt)
	if limit > c.cfg.BackoffMax || limit <= 0 {
		limit = c.cfg.BackoffMax
	}
	return sleep(ctx, time.Duration(rand.Int63n(int64(limit)+1))) // full jitter
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
	c.learnHandshake(addr, conn.handshake, addr == c.seeds.inUse())
	return conn, nil
}

// learnHandshake keeps what a handshake that addr answered says: a
// cluster's map when it is newer than the client's (any node's handshake
// carries it), else, from the seed in use, its shard ports (other nodes are
// then reached on their public port).
func (c *Client) learnHandshake(addr string, hs *wire.Handshake, seed bool) {
	c.learned.Store(true)
	c.mu.Lock()
	c.hashSeed = hs.HashSeed
	c.mu.Unlock()
	if c.learnMap(addr, hs) || !seed {
		return
	}
	if hs.Hash != "xxh3_64" || hs.ShardCount == 0 || len(hs.ShardPorts) != int(hs.ShardCount) {
		return
	}
	host, _, _ := net.SplitHostPort(addr)
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
