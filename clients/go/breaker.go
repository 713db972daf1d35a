package cache

import (
	"sync"
	"time"
)

// Breaker states.
const (
	StateClosed   = "closed"
	StateOpen     = "open"
	StateHalfOpen = "half_open"
)

// breaker is the circuit breaker of ICD 9.2: outcomes are counted in
// one-second buckets over a sliding window; once MinRequests are in the
// window and the failed share reaches Threshold it opens, and calls fail at
// once with ErrCircuitOpen. After Cooldown one probe goes through
// (half-open): its success closes the breaker with an empty window, its
// failure opens it for another cool-down. Only failures that say the server
// is unreachable or overloaded count (Error.Retryable).
type breaker struct {
	cfg BreakerConfig
	now func() time.Time

	mu       sync.Mutex
	state    string
	openedAt time.Time
	probing  bool
	buckets  []bucket // oldest first
}

type bucket struct {
	second              int64
	successes, failures int
}

func newBreaker(cfg BreakerConfig, now func() time.Time) *breaker {
	return &breaker{cfg: cfg, now: now, state: StateClosed}
}

func (b *breaker) State() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == StateOpen && b.now().Sub(b.openedAt) >= b.cfg.Cooldown {
		return StateHalfOpen
	}
	return b.state
}

// isOpen reports whether the breaker refuses requests now (open, cool-down
// not over); unlike allow it takes no probe.
func (b *breaker) isOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == StateOpen && b.now().Sub(b.openedAt) < b.cfg.Cooldown
}

// allow reports whether a request may be sent now (taking the probe when half-open).
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case StateClosed:
		return true
	case StateOpen:
		if b.now().Sub(b.openedAt) < b.cfg.Cooldown {
			return false
		}
		b.state, b.probing = StateHalfOpen, false
	}
	if b.probing {
		return false
	}
	b.probing = true
	return true
}

// record counts the outcome of a request that allow let through.
func (b *breaker) record(success bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	switch b.state {
	case StateHalfOpen:
		b.probing = false
		if success {
			b.state, b.buckets = StateClosed, b.buckets[:0]
		} else {
			b.open(now)
		}
		return
	case StateOpen:
		return // sent before the breaker opened
	}
	sec := now.Unix()
	if n := len(b.buckets); n == 0 || b.buckets[n-1].second != sec {
		b.buckets = append(b.buckets, bucket{second: sec})
	}
	last := &b.buckets[len(b.buckets)-1]
	if success {
		last.successes++
	} else {
		last.failures++
	}
	cutoff := now.Add(-b.cfg.Window).Unix()
	drop := 0
	for drop < len(b.buckets) && b.buckets[drop].second <= cutoff {
		drop++
	}
	b.buckets = b.buckets[drop:]
	total, failures := 0, 0
	for _, bk := range b.buckets {
		total += bk.successes + bk.failures
		failures += bk.failures
	}
	if total >= b.cfg.MinRequests && float64(failures) >= b.cfg.Threshold*float64(total) {
		b.open(now)
	}
}

// abandon frees the probe slot of a request that ended without an outcome
// (canceled, or refused for reasons that say nothing about the server).
func (b *breaker) abandon() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

func (b *breaker) open(now time.Time) {
	b.state, b.openedAt, b.buckets = StateOpen, now, b.buckets[:0]
}
