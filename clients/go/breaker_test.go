package cache

import (
	"context"
	"errors"
	"testing"
	"time"

	"dnd/cache/internal/wire"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestBreaker() (*breaker, *fakeClock) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	return newBreaker(BreakerConfig{Threshold: 0.5, Window: time.Minute, MinRequests: 20, Cooldown: 5 * time.Second}, clock.now), clock
}

func feed(t *testing.T, b *breaker, ok bool, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if !b.allow() {
			t.Fatalf("request %d refused", i)
		}
		b.record(ok)
	}
}

func TestBreakerOpensAtThresholdOnceMinRequestsSeen(t *testing.T) {
	b, _ := newTestBreaker()
	feed(t, b, false, 19)
	if b.State() != StateClosed {
		t.Fatal("opened below MinRequests")
	}
	b, _ = newTestBreaker()
	feed(t, b, true, 20)
	feed(t, b, false, 19) // 19 of 39: below half
	if b.State() != StateClosed {
		t.Fatal("opened below threshold")
	}
	feed(t, b, false, 1) // 20 of 40
	if b.State() != StateOpen || b.allow() {
		t.Fatal("should be open and refuse")
	}
}

func TestBreakerWindowSlides(t *testing.T) {
	b, clock := newTestBreaker()
	feed(t, b, false, 15)
	clock.t = clock.t.Add(61 * time.Second)
	feed(t, b, true, 6)
	if b.State() != StateClosed {
		t.Fatal("old failures still counted")
	}
	feed(t, b, false, 14)
	if b.State() != StateOpen {
		t.Fatal("14 failures of 20 should open")
	}
}

func TestBreakerHalfOpenProbe(t *testing.T) {
	b, clock := newTestBreaker()
	feed(t, b, false, 20)
	clock.t = clock.t.Add(4 * time.Second)
	if b.allow() {
		t.Fatal("allowed during cool-down")
	}
	clock.t = clock.t.Add(time.Second)
	if !b.allow() || b.allow() {
		t.Fatal("want exactly one probe")
	}
	b.record(false)
	if b.State() != StateOpen {
		t.Fatal("failed probe should reopen")
	}
	clock.t = clock.t.Add(5 * time.Second)
	if !b.allow() {
		t.Fatal("second probe refused")
	}
	b.record(true)
	if b.State() != StateClosed {
		t.Fatal("successful probe should close")
	}
	feed(t, b, false, 19)
	if b.State() != StateClosed {
		t.Fatal("window should restart empty")
	}
}

func TestErrorsIs(t *testing.T) {
	err := statusError(4, []byte("bad key"))
	if !errors.Is(err, ErrInvalidKey) || errors.Is(err, ErrNotFound) {
		t.Fatal("CACHE_004 matching")
	}
	if err.Code != "CACHE_004" || err.Status != 4 || err.Error() != "dnd-cache: CACHE_004: bad key" {
		t.Fatalf("%+v", err)
	}
	if !errors.Is(statusError(2, nil), ErrNotFound) || !errors.Is(statusError(2, nil), ErrExpired) {
		t.Fatal("an expired key is a missing key")
	}
	if statusError(102, nil).Code != "AUTH_002" || statusError(77, nil).Code != "STATUS_77" {
		t.Fatal("codes")
	}
	var be error = &BatchError{Errors: map[string]*Error{"k": statusError(3, nil)}, first: statusError(3, nil)}
	if !errors.Is(be, ErrStorageFull) {
		t.Fatal("BatchError unwraps to its first failure")
	}
}

func TestEncodeValue(t *testing.T) {
	cases := []struct {
		in   any
		want string
	}{
		{[]byte{0, 0xff}, "\x00\xff"},
		{"héllo", "héllo"},
		{map[string]any{"name": "Aria", "hp": 12}, `{"hp":12,"name":"Aria"}`},
		{[]any{1, "two", nil}, `[1,"two",null]`},
		{42, "42"},
	}
	for _, c := range cases {
		got, err := EncodeValue(c.in)
		if err != nil || string(got) != c.want {
			t.Errorf("EncodeValue(%v) = %q, %v", c.in, got, err)
		}
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	t.Setenv(AddressEnv, "")
	cfg, err := (Config{ServiceID: "svc"}).withDefaults()
	if err != nil || cfg.Address != DefaultAddress || cfg.Retries != 3 || cfg.Pool.MaxSize != 50 ||
		cfg.Pool.MinSize != 5 || cfg.Pool.IdleTimeout != 300*time.Second || cfg.ConnectTimeout != 5*time.Second ||
		cfg.Breaker.MinRequests != 20 || cfg.Breaker.Window != time.Minute {
		t.Fatalf("%+v %v", cfg, err)
	}
	t.Setenv(AddressEnv, "cache.local:7100")
	if cfg, _ := (Config{ServiceID: "svc", Retries: -1}).withDefaults(); cfg.Address != "cache.local:7100" || cfg.Retries != 0 {
		t.Fatalf("%+v", cfg)
	}
	for _, bad := range []Config{{}, {ServiceID: "s", Address: "nohost"}, {ServiceID: "s", Options: Options{Consistency: "sometimes"}}} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	c := NewClient(&Config{})
	if _, err := c.Get(context.Background(), "k"); err == nil {
		t.Fatal("a client without ServiceID must fail its calls")
	}
}

func TestRetriesCountAndStopOnClientErrors(t *testing.T) {
	c := NewClient(&Config{ServiceID: "svc", Retries: 3, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond,
		Breaker: BreakerConfig{MinRequests: 1000}})
	calls := 0
	_, err := c.withRetries(context.Background(), nil, func(route) (*wire.CacheResponse, error) {
		calls++
		return nil, &Error{Code: codeConnection}
	})
	if calls != 4 || !errors.Is(err, ErrConnection) {
		t.Fatalf("calls=%d err=%v", calls, err)
	}
	calls = 0
	answers := []uint32{11, 5, 0}
	r, err := c.withRetries(context.Background(), nil, func(route) (*wire.CacheResponse, error) {
		calls++
		return &wire.CacheResponse{Status: answers[calls-1]}, nil
	})
	if err != nil || r.Status != 0 || calls != 3 {
		t.Fatalf("calls=%d r=%v err=%v", calls, r, err)
	}
	calls = 0
	r, _ = c.withRetries(context.Background(), nil, func(route) (*wire.CacheResponse, error) {
		calls++
		return &wire.CacheResponse{Status: 4}, nil
	})
	if calls != 1 || r.Status != 4 {
		t.Fatal("CACHE_004 must not be retried")
	}
}

// TestICD9_2ClientDefaults checks the defaults against ICD section 9.2
// (tests/icd_conformance runs it by name).
func TestICD9_2ClientDefaults(t *testing.T) {
	t.Setenv(AddressEnv, "")
	c, err := (Config{ServiceID: "svc"}).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	// connection: timeout 5, retry 3, backoff exponential
	if c.ConnectTimeout != 5*time.Second || c.RequestTimeout != 5*time.Second || c.Retries != 3 ||
		c.BackoffBase <= 0 || c.BackoffMax <= c.BackoffBase {
		t.Errorf("connection: %+v", c)
	}
	// pool: min_size 5, max_size 50, idle_timeout 300
	if c.Pool != (PoolConfig{MinSize: 5, MaxSize: 50, IdleTimeout: 300 * time.Second}) {
		t.Errorf("pool: %+v", c.Pool)
	}
	// circuit_breaker: threshold 0.5, window 60, min_requests 20
	if c.Breaker.Threshold != 0.5 || c.Breaker.Window != 60*time.Second || c.Breaker.MinRequests != 20 {
		t.Errorf("circuit_breaker: %+v", c.Breaker)
	}
}
