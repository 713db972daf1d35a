package cache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"dnd/cache/internal/wire"
	"dnd/cache/xxh3"
)

// Cluster routing decisions that need no server: the stale-epoch rule, the
// map's routes, and the breaker of each node.

func TestAMovedAnswerIsErrMoved(t *testing.T) {
	err := statusError(statusMoved, []byte(`{"moved":{}}`))
	if !errors.Is(err, ErrMoved) || err.Code != "CACHE_013" || err.Retryable() {
		t.Fatalf("%+v", err)
	}
}

func TestOnMovedFollowsTheSameOrANewerEpoch(t *testing.T) {
	for _, tc := range []struct {
		answer, known uint64
		redirects     int
		want          movedAction
	}{
		{answer: 5, known: 5, redirects: 0, want: follow},
		{answer: 6, known: 5, redirects: 0, want: follow},
		{answer: 1, known: 0, redirects: 2, want: follow},
		{answer: 6, known: 5, redirects: maxRedirects, want: giveUp},
		{answer: 4, known: 5, redirects: 0, want: waitStale},
		{answer: 4, known: 5, redirects: maxRedirects, want: waitStale}, // waits are not redirections
	} {
		got, _ := onMoved(tc.answer, tc.known, tc.redirects, 0, staleWaitFirst)
		if got != tc.want {
			t.Errorf("onMoved(answer %d, known %d, %d redirects) = %v, want %v", tc.answer, tc.known, tc.redirects, got, tc.want)
		}
	}
}

// TestOnMovedWaitsOnAnOlderMapThenGivesUp plays a request whose node keeps
// answering with an older epoch: waits of 10 ms doubling to 200 ms, 2 s in
// all, then the CACHE_013 error.
func TestOnMovedWaitsOnAnOlderMapThenGivesUp(t *testing.T) {
	var waits []time.Duration
	var waited time.Duration
	next := staleWaitFirst
	for {
		action, d := onMoved(7, 8, 0, waited, next)
		if action == giveUp {
			break
		}
		if action != waitStale || len(waits) > 100 {
			t.Fatalf("after %v: %v", waits, action)
		}
		waits = append(waits, d)
		waited += d
		next *= 2
	}
	want := []time.Duration{10, 20, 40, 80, 160, 200, 200, 200, 200, 200, 200, 200, 200, 90}
	if len(waits) != len(want) {
		t.Fatalf("waits %v", waits)
	}
	for i := range want {
		if waits[i] != want[i]*time.Millisecond {
			t.Fatalf("waits %v, want %v ms", waits, want)
		}
	}
	if waited != staleWaitTotal {
		t.Fatalf("waited %v in all", waited)
	}
}

// testMap is a cluster map of the nodes at addrs (host:port; shard ports
// per node, or none), slot s owned by node s % len(addrs).
func testMap(t *testing.T, epoch uint64, addrs []string, shardPorts [][]uint32) *wire.Handshake {
	t.Helper()
	hs := &wire.Handshake{Hash: "xxh3_64", HashSeed: 42, ClusterEpoch: epoch, SlotPrimary: make([]uint32, slotCount)}
	for i, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		n := wire.ClusterNode{ID: fmt.Sprint("n", i), Host: host, Port: uint32(p)}
		if shardPorts != nil {
			n.ShardPorts = shardPorts[i]
		}
		hs.Nodes = append(hs.Nodes, n)
	}
	for s := range hs.SlotPrimary {
		hs.SlotPrimary[s] = uint32(s % len(addrs))
	}
	return hs
}

// keyOn returns a key (prefix plus a number) whose slot node of n owns in testMap.
func keyOn(prefix string, node, n int, from int) (string, int) {
	for i := from; ; i++ {
		k := prefix + strconv.Itoa(i)
		if int(xxh3.Hash64Seed([]byte(k), 42)>>52)%n == node {
			return k, i + 1
		}
	}
}

func TestTheMapRoutesEachKeyToItsNodesOwnerShard(t *testing.T) {
	addrs := []string{"10.0.0.1:7000", "10.0.0.2:7000"}
	ports := [][]uint32{{7101, 7102}, {7201, 7202, 7203}}
	c := NewClient(&Config{ServiceID: "svc", Address: addrs[0]})
	defer c.Close()
	if !c.learnMap(addrs[0], testMap(t, 3, addrs, ports)) {
		t.Fatal("a cluster handshake was not taken for one")
	}
	for i := 0; i < 200; i++ {
		key := []byte("k" + strconv.Itoa(i))
		h := xxh3.Hash64Seed(key, 42)
		node := int(h>>52) % 2
		host, _, _ := net.SplitHostPort(addrs[node])
		want := net.JoinHostPort(host, strconv.Itoa(int(ports[node][h%uint64(len(ports[node]))])))
		if rt := c.routeFor(key); rt.addr != want || rt.node != addrs[node] {
			t.Fatalf("%s: route %+v, want %s on %s", key, rt, want, addrs[node])
		}
	}
	if st := c.RoutingStats(); st.MapEpoch != 3 {
		t.Fatalf("stats %+v", st)
	}

	// Without shard routing: the node's public port.
	plain := NewClient(&Config{ServiceID: "svc", Address: addrs[0], DisableShardRouting: true})
	defer plain.Close()
	plain.learnMap(addrs[0], testMap(t, 3, addrs, ports))
	k, _ := keyOn("k", 1, 2, 0)
	if rt := plain.routeFor([]byte(k)); rt.addr != addrs[1] || rt.node != addrs[1] {
		t.Fatalf("route %+v", rt)
	}
}

func TestASlotMovedByANewerEpochOutlivesAnOlderMap(t *testing.T) {
	addrs := []string{"10.0.0.1:7000", "10.0.0.2:7000"}
	c := NewClient(&Config{ServiceID: "svc", Address: addrs[0]})
	defer c.Close()
	c.learnMap(addrs[0], testMap(t, 3, addrs, nil))
	k, _ := keyOn("k", 0, 2, 0)
	slot := int(xxh3.Hash64Seed([]byte(k), 42) >> 52)
	if newer := c.pointSlot(moved{Slot: slot, Address: "10.0.0.3:7000", Epoch: 5}); !newer {
		t.Fatal("epoch 5 is newer than the map's 3")
	}
	if !c.pointSlot(moved{Slot: slot, Address: addrs[1], Epoch: 4}) {
		t.Fatal("epoch 4 is newer than the map's 3 (the map is fetched again)")
	}
	if rt := c.routeFor([]byte(k)); rt.addr != "10.0.0.3:7000" || c.slotEpoch(slot) != 5 {
		t.Fatalf("an older answer moved the slot: %+v", rt)
	}
	c.learnMap(addrs[1], testMap(t, 4, addrs, nil)) // newer map, older than the slot
	if rt := c.routeFor([]byte(k)); rt.addr != "10.0.0.3:7000" {
		t.Fatalf("the map of epoch 4 overrode the slot of epoch 5: %+v", rt)
	}
	c.learnMap(addrs[1], testMap(t, 2, addrs, nil)) // older map: ignored
	if st := c.RoutingStats(); st.MapEpoch != 4 {
		t.Fatalf("stats %+v", st)
	}
	c.learnMap(addrs[1], testMap(t, 6, addrs, nil))
	if rt := c.routeFor([]byte(k)); rt.addr != addrs[0] || c.slotEpoch(slot) != 6 {
		t.Fatalf("the map of epoch 6 should route the slot again: %+v", rt)
	}
}

// TestFailuresOfOneNodeOpenOnlyItsBreaker: node A is down; its keys fail
// until its breaker opens, then fail fast, while the keys of node B are
// still sent to B (which is down too here, so they fail as connection
// errors, not as an open breaker).
func TestFailuresOfOneNodeOpenOnlyItsBreaker(t *testing.T) {
	a, b := closedPort(t), closedPort(t)
	c := NewClient(&Config{ServiceID: "svc", Address: a, Retries: -1, ConnectTimeout: time.Second})
	defer c.Close()
	c.learnMap(a, testMap(t, 1, []string{a, b}, nil))
	ctx := context.Background()
	next := 0
	for i := 0; i < 20; i++ { // MinRequests, all failed
		var k string
		k, next = keyOn("a", 0, 2, next)
		if _, err := c.Get(ctx, k); !errors.Is(err, ErrConnection) {
			t.Fatalf("request %d to A: %v", i, err)
		}
	}
	states := c.NodeBreakerStates()
	if states[a] != StateOpen || states[b] == StateOpen {
		t.Fatalf("after 20 failures on A: %v", states)
	}
	k, _ := keyOn("a", 0, 2, next)
	started := time.Now()
	if _, err := c.Get(ctx, k); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("A's key with A's breaker open: %v", err)
	}
	if d := time.Since(started); d > 500*time.Millisecond {
		t.Fatalf("failing fast took %v", d)
	}
	kb, _ := keyOn("b", 1, 2, 0)
	if _, err := c.Get(ctx, kb); !errors.Is(err, ErrConnection) || errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("B's key must still be sent to B: %v", err)
	}
	if states := c.NodeBreakerStates(); states[a] != StateOpen || states[b] != StateClosed {
		t.Fatalf("breakers %v", states)
	}
	if c.BreakerState() != StateClosed {
		t.Fatalf("the client's breaker summary is %s while B's is closed", c.BreakerState())
	}
	// Outside a cluster the client keeps its one breaker.
	if c.breakerFor("") != c.breaker || c.breaker.State() != StateClosed {
		t.Fatal("the non-cluster breaker was used in a cluster")
	}
}
