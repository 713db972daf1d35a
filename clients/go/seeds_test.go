package cache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestAddressListsSeeds(t *testing.T) {
	for text, want := range map[string][]string{
		"10.0.0.1:7000":                                 {"10.0.0.1:7000"},
		"10.0.0.1:7000,10.0.0.2:7001,[::1]:7002":        {"10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"},
		" 10.0.0.1:7000 ,\t10.0.0.2:7001,  [::1]:7002 ": {"10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"},
	} {
		if got, err := parseSeeds(text); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseSeeds(%q) = %q, %v; want %q", text, got, err, want)
		}
	}
	t.Setenv(AddressEnv, "a.local:1, b.local:2")
	c := NewClient(&Config{ServiceID: "svc"})
	if c.err != nil || !reflect.DeepEqual(c.seeds.list, []string{"a.local:1", "b.local:2"}) {
		t.Fatalf("from %s: %v %v", AddressEnv, c.seeds, c.err)
	}
	// Config.Address wins over the environment, list or not.
	if c := NewClient(&Config{ServiceID: "svc", Address: "c.local:3"}); c.err != nil || c.seeds.inUse() != "c.local:3" {
		t.Fatalf("Address: %v %v", c.seeds, c.err)
	}
}

func TestABadSeedIsNamed(t *testing.T) {
	for text, want := range map[string]string{
		"a:1,,b:2":    `Address "a:1,,b:2": empty seed address`,
		"a:1,":        `Address "a:1,": empty seed address`,
		",a:1":        `Address ",a:1": empty seed address`,
		"a:1, ,b:2":   `Address "a:1, ,b:2": empty seed address`,
		"a:1,b:x":     `Address "a:1,b:x": seed "b:x": port "x" is not 1-65535`,
		"a:1,b:0":     `Address "a:1,b:0": seed "b:0": port "0" is not 1-65535`,
		"a:1,b:65536": `Address "a:1,b:65536": seed "b:65536": port "65536" is not 1-65535`,
		"a:1,b":       `Address "a:1,b": seed "b": address b: missing port in address`,
		"b:x":         `Address "b:x": port "x" is not 1-65535`,
	} {
		_, err := parseSeeds(text)
		if err == nil || err.Error() != "dnd-cache: "+want {
			t.Errorf("parseSeeds(%q): %v; want %s", text, err, want)
		}
		// The client returns it from every call.
		c := NewClient(&Config{ServiceID: "svc", Address: text})
		if _, err := c.Get(context.Background(), "k"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewClient(%q).Get: %v", text, err)
		}
	}
}

func TestSeedWalksStartAtTheSeedLastUsed(t *testing.T) {
	s := newSeeds([]string{"a:1", "b:2", "c:3"})
	if s.inUse() != "" || !reflect.DeepEqual(s.order(), []string{"a:1", "b:2", "c:3"}) {
		t.Fatal(s.inUse(), s.order())
	}
	s.chose("b:2")
	s.forget()
	if s.inUse() != "" || !reflect.DeepEqual(s.order(), []string{"b:2", "c:3", "a:1"}) {
		t.Fatal(s.inUse(), s.order())
	}
	// One seed: in use from the start, never walked again.
	one := newSeeds([]string{"a:1"})
	one.forget()
	if one.inUse() != "a:1" {
		t.Fatal(one.inUse())
	}
}

func TestAWalkSkipsSeedsThatCannotAnswerOnly(t *testing.T) {
	for err, want := range map[error]bool{
		&Error{Code: codeConnection, Message: "refused"}: true,
		&Error{Code: "CACHE_005", Message: "slow"}:       true,
		statusError(11, []byte("shutting down")):         true,
		// A refused token would be refused by every node.
		statusError(101, []byte("bad token")): false,
		context.Canceled:                      false,
	} {
		if skipsSeed(err) != want {
			t.Errorf("skipsSeed(%v) = %v", err, !want)
		}
	}
}

// closedPort is an address nothing listens on: bound, then closed.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentPort is an address that completes the TCP connect (the kernel's
// backlog) but never answers the handshake.
func silentPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func TestAClosedFirstSeedIsSkipped(t *testing.T) {
	s := startServer(t)
	c := newTestClient(t, s, func(cfg *Config) {
		cfg.Address = closedPort(t) + ", " + s.Addr
		cfg.Retries = -1
	})
	ctx := context.Background()
	if err := c.Set(ctx, "seeds:go", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := c.GetString(ctx, "seeds:go"); v != "v" || err != nil {
		t.Fatal(v, err)
	}
	if m, err := c.GetMany(ctx, []string{"seeds:go", "seeds:none"}); len(m) != 1 || err != nil {
		t.Fatal(m, err)
	}
}

func TestASilentSeedIsSkippedAfterTheConnectTimeout(t *testing.T) {
	s := startServer(t)
	c := newTestClient(t, s, func(cfg *Config) {
		cfg.Address = silentPort(t) + "," + s.Addr
		cfg.ConnectTimeout = 500 * time.Millisecond
		cfg.Retries = -1
	})
	started := time.Now()
	if h, err := c.Health(context.Background()); err != nil || h["status"] != "ok" {
		t.Fatal(h, err)
	}
	if d := time.Since(started); d < 500*time.Millisecond || d > 3*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestWhenNoSeedAnswersTheConnectionErrorNamesEverySeed(t *testing.T) {
	closed, silent := closedPort(t), silentPort(t)
	c := NewClient(&Config{ServiceID: "svc", Address: closed + "," + silent,
		ConnectTimeout: 300 * time.Millisecond, Retries: 1, BackoffBase: 10 * time.Millisecond})
	defer c.Close()
	_, err := c.Get(context.Background(), "seeds:k")
	msg := fmt.Sprint(err)
	if !errors.Is(err, ErrConnection) || !strings.HasPrefix(msg, "dnd-cache: CLIENT_001: no seed answered the handshake: tried ") ||
		!strings.Contains(msg, closed+" (") || !strings.Contains(msg, silent+" (") {
		t.Fatal(msg)
	}
}

func TestAfterItsSeedGoesDownAClientWalksTheSeedsAgain(t *testing.T) {
	first, second := startServer(t), startServer(t)
	c := newTestClient(t, first, func(cfg *Config) { cfg.Address = first.Addr + "," + second.Addr })
	ctx := context.Background()
	if err := c.Set(ctx, "seeds:where", "first"); err != nil {
		t.Fatal(err)
	}
	first.stop()
	// The second server is another cache: the key is not there, but it answers.
	if v, err := c.Get(ctx, "seeds:where"); v != nil || !errors.Is(err, ErrNotFound) {
		t.Fatal(v, err)
	}
	if err := c.Set(ctx, "seeds:where", "second"); err != nil {
		t.Fatal(err)
	}
	direct := newTestClient(t, second, nil)
	if v, err := direct.GetString(ctx, "seeds:where"); v != "second" || err != nil {
		t.Fatal(v, err)
	}
}

func TestARefusedTokenIsNotTakenToTheNextSeed(t *testing.T) {
	// Every node of a cluster would refuse it too: the walk stops there.
	open := startServer(t)
	guarded := &testServer{t: t, bin: serverBinary(t), port: "0",
		extra: []string{"--auth-hs256-secret-file", "../../tests/keys/hs256.secret"}}
	guarded.start()
	t.Cleanup(guarded.stop)
	c := newTestClient(t, open, func(cfg *Config) { cfg.Address = guarded.Addr + "," + open.Addr })
	if _, err := c.Health(context.Background()); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
}
