package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"dnd/cache/internal/wire"
)

func newTestClient(t *testing.T, s *testServer, mod func(*Config)) *Client {
	cfg := &Config{ServiceID: "go_tests", Address: s.Addr, Options: Options{Consistency: "strong"}}
	if mod != nil {
		mod(cfg)
	}
	c := NewClient(cfg)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestIntegration(t *testing.T) {
	s := startServer(t)
	c := newTestClient(t, s, nil)
	ctx := context.Background()

	t.Run("roundtrip", func(t *testing.T) {
		if err := c.Set(ctx, "go:bytes", []byte{0, 1, 0xff}, TTL(60)); err != nil {
			t.Fatal(err)
		}
		v, err := c.Get(ctx, "go:bytes")
		if err != nil || string(v) != "\x00\x01\xff" {
			t.Fatalf("%q %v", v, err)
		}
		if existed, err := c.Delete(ctx, "go:bytes"); !existed || err != nil {
			t.Fatal(existed, err)
		}
		if v, err := c.Get(ctx, "go:bytes"); v != nil || !errors.Is(err, ErrNotFound) {
			t.Fatalf("after delete: %q %v", v, err)
		}
		if existed, err := c.Delete(ctx, "go:bytes"); existed || err != nil {
			t.Fatal(existed, err)
		}
	})

	t.Run("encodings", func(t *testing.T) {
		type hero struct {
			Name  string `json:"name"`
			Level int    `json:"level"`
		}
		if err := c.Set(ctx, "go:json", hero{"Aria", 7}); err != nil {
			t.Fatal(err)
		}
		var h hero
		if err := c.GetJSON(ctx, "go:json", &h); err != nil || h != (hero{"Aria", 7}) {
			t.Fatal(h, err)
		}
		if err := c.Set(ctx, "go:str", "héllo"); err != nil {
			t.Fatal(err)
		}
		if v, err := c.GetString(ctx, "go:str"); v != "héllo" || err != nil {
			t.Fatal(v, err)
		}
		if err := c.Set(ctx, "go:empty", []byte{}); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(ctx, "go:empty"); err != nil || v == nil || len(v) != 0 {
			t.Fatalf("empty value: %q %v", v, err)
		}
	})

	t.Run("ttl", func(t *testing.T) {
		if err := c.Set(ctx, "go:short", "x", TTL(1)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2100 * time.Millisecond)
		if _, err := c.Get(ctx, "go:short"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("want a miss after the TTL, got %v", err)
		}
	})

	t.Run("typed errors", func(t *testing.T) {
		err := c.Set(ctx, "has space", "v")
		var e *Error
		if !errors.As(err, &e) || e.Code != "CACHE_004" || e.Status != 4 || !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("%#v", err)
		}
		if err := c.Set(ctx, "go:huge", make([]byte, 1<<20+1)); !errors.Is(err, ErrStorageFull) {
			t.Fatalf("%v", err)
		}
	})

	t.Run("batches", func(t *testing.T) {
		values := map[string]any{}
		var keys []string
		for i := 0; i < 300; i++ {
			k := fmt.Sprintf("go:batch:%d", i)
			values[k] = map[string]int{"i": i}
			keys = append(keys, k)
		}
		if err := c.SetMany(ctx, values, TTL(120)); err != nil {
			t.Fatal(err)
		}
		got, err := c.GetMany(ctx, append(keys, "go:batch:absent"))
		if err != nil || len(got) != 300 || string(got["go:batch:7"]) != `{"i":7}` {
			t.Fatalf("%d %v", len(got), err)
		}
		if n, err := c.DeleteMany(ctx, append(keys[:100], "go:batch:absent")); n != 100 || err != nil {
			t.Fatal(n, err)
		}
		err = c.SetMany(ctx, map[string]any{"go:ok": "a", "bad key": "b"})
		var be *BatchError
		if !errors.As(err, &be) || len(be.Errors) != 1 || !errors.Is(be.Errors["bad key"], ErrInvalidKey) {
			t.Fatalf("%v", err)
		}
		if v, _ := c.GetString(ctx, "go:ok"); v != "a" {
			t.Fatal("the good item of a failed batch is stored")
		}
	})

	t.Run("batch over the server limit is split", func(t *testing.T) {
		values := map[string]any{}
		keys := make([]string, 12500)
		for i := range keys {
			keys[i] = "go:big:" + strconv.Itoa(i)
			values[keys[i]] = []byte("v")
		}
		if err := c.SetMany(ctx, values, TTL(60)); err != nil {
			t.Fatal(err)
		}
		if got, err := c.GetMany(ctx, keys); err != nil || len(got) != len(keys) {
			t.Fatal(len(got), err)
		}
	})
}

func forwardedOps(t *testing.T, c *Client) float64 {
	t.Helper()
	doc, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return doc["total"].(map[string]any)["forwarded_ops"].(float64)
}

func TestShardAwareRoutingAvoidsForwarding(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	c := newTestClient(t, s, nil)
	if _, err := c.Get(ctx, "warm-up"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if c.topology == nil || len(c.topology.ports) != len(s.Shards) {
		t.Fatalf("topology %+v, server shard ports %v", c.topology, s.Shards)
	}
	before := forwardedOps(t, c)
	owners := map[int]bool{}
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("route:%d", i)
		owners[OwnerShard([]byte(keys[i]), c.topology.seed, len(c.topology.ports))] = true
		if err := c.Set(ctx, keys[i], "v", TTL(60)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.GetMany(ctx, keys); err != nil {
		t.Fatal(err)
	}
	if after := forwardedOps(t, c); after != before || len(owners) != len(s.Shards) {
		t.Fatalf("forwarded ops %v -> %v, owners %v", before, after, owners)
	}
	plain := newTestClient(t, s, func(cfg *Config) { cfg.DisableShardRouting = true })
	before = forwardedOps(t, plain)
	for _, k := range keys[:50] {
		if _, err := plain.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if forwardedOps(t, plain) <= before {
		t.Fatal("without routing some keys should have been forwarded")
	}
}

func TestConcurrentUseStaysWithinPool(t *testing.T) {
	s := startServer(t)
	c := newTestClient(t, s, func(cfg *Config) { cfg.Pool = PoolConfig{MinSize: 2, MaxSize: 4} })
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				k := fmt.Sprintf("conc:%d:%d", g, i)
				if err := c.Set(ctx, k, strconv.Itoa(i)); err != nil {
					errs <- err
					return
				}
				if v, err := c.GetString(ctx, k); err != nil || v != strconv.Itoa(i) {
					errs <- fmt.Errorf("%s = %q, %v", k, v, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, p := range c.pools {
		if open, _ := p.stats(); open > 4 {
			t.Errorf("%s: %d connections open", addr, open)
		}
	}
}

func TestContextCancellation(t *testing.T) {
	s := startServer(t)
	c := newTestClient(t, s, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("%v", err)
	}
	if c.BreakerState() != StateClosed {
		t.Fatal("a canceled call is not a server failure")
	}
}

func TestHandshakeErrorIsTyped(t *testing.T) {
	s := startServer(t)
	c := newTestClient(t, s, func(cfg *Config) { cfg.ServiceID = "bad service id!"; cfg.Retries = -1 })
	if _, err := c.Get(context.Background(), "k"); !errors.Is(err, ErrHandshake) {
		t.Fatalf("%v", err)
	}
}

func TestBreakerOpensFailsFastAndRecovers(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	c := newTestClient(t, s, func(cfg *Config) {
		cfg.Retries = 1
		cfg.BackoffBase, cfg.BackoffMax = 10*time.Millisecond, 20*time.Millisecond
		cfg.ConnectTimeout = time.Second
		cfg.Breaker = BreakerConfig{MinRequests: 6, Cooldown: time.Second}
	})
	if err := c.Set(ctx, "br:key", "v"); err != nil {
		t.Fatal(err)
	}
	s.stop()
	failures := 0
	for {
		_, err := c.Get(ctx, "br:key")
		if errors.Is(err, ErrCircuitOpen) {
			break
		}
		if !errors.Is(err, ErrConnection) {
			t.Fatalf("want a connection error, got %v", err)
		}
		if failures++; failures > 6 {
			t.Fatal("the breaker should have opened")
		}
	}
	start := time.Now()
	for i := 0; i < 20; i++ {
		if _, err := c.Get(ctx, "br:key"); !errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("want ErrCircuitOpen, got %v", err)
		}
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("open breaker took %v for 20 calls", d)
	}
	s.start() // same public port, new shard ports and seed
	time.Sleep(1100 * time.Millisecond)
	if _, err := c.Get(ctx, "br:key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after recovery: %v", err)
	}
	if c.BreakerState() != StateClosed {
		t.Fatal("breaker should be closed again")
	}
	if err := c.Set(ctx, "br:key", "back"); err != nil {
		t.Fatal(err)
	}
}

func TestRetriesRideOverARestart(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	c := newTestClient(t, s, func(cfg *Config) {
		cfg.Retries = 6
		cfg.BackoffBase, cfg.BackoffMax = 200*time.Millisecond, 500*time.Millisecond
		cfg.ConnectTimeout = time.Second
	})
	if err := c.Set(ctx, "rt:key", "v"); err != nil {
		t.Fatal(err)
	}
	s.stop()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		restarted <- s.tryStart()
	}()
	_, err := c.Get(ctx, "rt:key")
	if startErr := <-restarted; startErr != nil {
		t.Fatal(startErr)
	}
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("want a miss from the restarted server, got %v", err)
	}
}

func TestCorrelationIDPerClientAndPerCall(t *testing.T) {
	s := startServer(t)
	c := newTestClient(t, s, func(cfg *Config) { cfg.CorrelationID = "go-client-7" })
	ctx := context.Background()
	echoed := func(ctx context.Context) string {
		t.Helper()
		r, err := c.single(ctx, &wire.CacheOperation{Operation: "get", Key: []byte("go:corr")})
		if err != nil {
			t.Fatal(err)
		}
		return r.CorrelationID
	}
	if got := echoed(ctx); got != "go-client-7" {
		t.Fatalf("per client: server echoed %q", got)
	}
	if got := echoed(WithCorrelationID(ctx, "go-call-8")); got != "go-call-8" {
		t.Fatalf("per call: server echoed %q", got)
	}
	if err := c.Set(WithCorrelationID(ctx, "go-call-9"), "go:corr", "v"); err != nil {
		t.Fatal(err)
	}
	long := WithCorrelationID(ctx, string(make([]byte, MaxCorrelationIDBytes+1)))
	if _, err := c.Get(long, "go:corr"); err == nil {
		t.Fatal("a 65-byte correlation id was sent")
	}
	bad := NewClient(&Config{ServiceID: "x", Address: s.Addr, CorrelationID: string(make([]byte, 65))})
	if _, err := bad.Get(ctx, "go:corr"); err == nil {
		t.Fatal("a 65-byte Config.CorrelationID was accepted")
	}
}
