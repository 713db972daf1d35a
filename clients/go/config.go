package cache

import (
	"fmt"
	"os"
	"time"
)

// DefaultAddress is used when Config.Address and $DND_CACHE_ADDR are empty.
const DefaultAddress = "127.0.0.1:7000"

// AddressEnv names the environment variable read when Config.Address is empty.
const AddressEnv = "DND_CACHE_ADDR"

// Options are sent in the handshake and apply to every request of the client.
type Options struct {
	// Consistency is "", "strong" or "eventual".
	Consistency string
	Compression bool
	Encryption  bool
}

// PoolConfig sizes the connection pool of each server address.
type PoolConfig struct {
	MinSize     int           // idle connections kept past IdleTimeout (default 5)
	MaxSize     int           // most connections open at once (default 50)
	IdleTimeout time.Duration // default 300 s
}

// BreakerConfig tunes the circuit breaker.
type BreakerConfig struct {
	Threshold   float64       // failed share that opens it (default 0.5)
	Window      time.Duration // sliding window (default 60 s)
	MinRequests int           // outcomes needed in the window first (default 20)
	Cooldown    time.Duration // open time before a half-open probe (default 5 s)
}

// Config configures a Client. Zero values take the defaults of ICD 9.2.
type Config struct {
	ServiceID string
	// Address is host:port, or a comma-separated list of seeds
	// ("10.0.0.1:7000,10.0.0.2:7000"): the client uses the first that
	// answers the handshake. In a cluster, any node will do as a seed: its
	// handshake gives the map of every node, and the seeds are also where
	// the client fetches the map again after losing a node. Default
	// $DND_CACHE_ADDR, then 127.0.0.1:7000.
	Address string
	// Token is the JWT sent in the handshake as auth_token.
	Token   string
	Options Options
	// CorrelationID (ICD 1.1) is sent in the handshake and with every
	// request of the client, unless the call's context carries one
	// (WithCorrelationID). At most 64 bytes.
	CorrelationID string

	ConnectTimeout time.Duration // default 5 s
	RequestTimeout time.Duration // default 5 s, bounds each attempt
	// Retries is the number of extra attempts (default 3; negative: none).
	Retries     int
	BackoffBase time.Duration // default 50 ms, doubled per retry, full jitter
	BackoffMax  time.Duration // default 2 s

	Pool    PoolConfig
	Breaker BreakerConfig
	// DisableShardRouting sends every request to the seed in use instead
	// of the port of the key's owner shard; in a cluster, to the public
	// port of the key's node.
	DisableShardRouting bool
}

// withDefaults returns a copy with every zero value filled in, or why the
// configuration cannot be used.
func (c Config) withDefaults() (Config, error) {
	if c.ServiceID == "" {
		return c, fmt.Errorf("dnd-cache: ServiceID is required")
	}
	if c.Address == "" {
		c.Address = os.Getenv(AddressEnv)
	}
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if _, err := parseSeeds(c.Address); err != nil {
		return c, err
	}
	switch c.Options.Consistency {
	case "", "strong", "eventual":
	default:
		return c, fmt.Errorf("dnd-cache: Consistency must be \"strong\" or \"eventual\", got %q", c.Options.Consistency)
	}
	if len(c.CorrelationID) > MaxCorrelationIDBytes {
		return c, fmt.Errorf("dnd-cache: CorrelationID is at most %d bytes", MaxCorrelationIDBytes)
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	setInt := func(n *int, def int) {
		if *n <= 0 {
			*n = def
		}
	}
	setDur(&c.ConnectTimeout, 5*time.Second)
	setDur(&c.RequestTimeout, 5*time.Second)
	switch {
	case c.Retries == 0:
		c.Retries = 3
	case c.Retries < 0:
		c.Retries = 0
	}
	setDur(&c.BackoffBase, 50*time.Millisecond)
	setDur(&c.BackoffMax, 2*time.Second)
	setInt(&c.Pool.MinSize, 5)
	setInt(&c.Pool.MaxSize, 50)
	setDur(&c.Pool.IdleTimeout, 300*time.Second)
	if c.Pool.MinSize > c.Pool.MaxSize {
		return c, fmt.Errorf("dnd-cache: Pool.MinSize %d > MaxSize %d", c.Pool.MinSize, c.Pool.MaxSize)
	}
	if c.Breaker.Threshold <= 0 || c.Breaker.Threshold > 1 {
		c.Breaker.Threshold = 0.5
	}
	setDur(&c.Breaker.Window, 60*time.Second)
	setInt(&c.Breaker.MinRequests, 20)
	setDur(&c.Breaker.Cooldown, 5*time.Second)
	return c, nil
}
