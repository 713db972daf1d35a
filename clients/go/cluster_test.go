package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"dnd/cache/xxh3"
)

// startNATS runs a real nats-server with JetStream on a free port; the test
// is skipped without the binary unless DND_REQUIRE_NATS is set.
func startNATS(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/nats-server"); statErr == nil {
			bin = "/usr/sbin/nats-server"
		} else if os.Getenv("DND_REQUIRE_NATS") != "" {
			t.Fatal("DND_REQUIRE_NATS is set but nats-server is not installed")
		} else {
			t.Skip("nats-server not installed")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "nats://" + addr
		}
		if time.Now().After(deadline) {
			t.Fatal("nats-server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startCluster starts n cache-server nodes of one cluster on NATS url;
// zones, when given, are the nodes' zones of a cluster with replication 2.
func startCluster(t *testing.T, url, name string, n int, zones []string) []*testServer {
	t.Helper()
	bin := serverBinary(t)
	var nodes []*testServer
	for i := 0; i < n; i++ {
		extra := []string{"--nats-url", url, "--cluster-nodes", strconv.Itoa(n), "--cluster-name", name,
			"--node-id", fmt.Sprintf("%s%d", name, i+1)}
		if zones != nil {
			extra = append(extra, "--replication", "2", "--cluster-zones", "a,b", "--zone", zones[i])
		}
		s := &testServer{t: t, bin: bin, port: "0", extra: extra}
		s.start()
		t.Cleanup(s.stop)
		nodes = append(nodes, s)
	}
	return nodes
}

// waitSettled waits until every node runs the same settled map of all the
// nodes (all serving, none learning, the primaries balanced, the same
// epoch on two polls in a row) and returns its epoch: a joining node takes
// its slots over a few maps (with replication 2 the primaries are balanced
// after the nodes serve), and a node still on an older one answers
// CACHE_013 with that map.
func waitSettled(t *testing.T, nodes []*testServer, within time.Duration) float64 {
	t.Helper()
	settled := func(h map[string]any) (float64, bool) {
		c, ok := h["cluster"].(map[string]any)
		if !ok {
			return 0, false
		}
		n, ok := c["nodes"].([]any)
		if !ok || len(n) != len(nodes) {
			return 0, false
		}
		fair := float64(slotCount / len(nodes))
		for _, x := range n {
			node, _ := x.(map[string]any)
			p, _ := node["primary_slots"].(float64)
			l, _ := node["learner_slots"].(float64)
			if node["status"] != "serving" || p < fair-2 || p > fair+2 || l != 0 {
				return 0, false
			}
		}
		epoch, _ := c["epoch"].(float64)
		return epoch, true
	}
	var clients []*Client
	for _, s := range nodes {
		c := NewClient(&Config{ServiceID: "go_settle", Address: s.Addr, Retries: -1})
		defer c.Close()
		clients = append(clients, c)
	}
	ctx := context.Background()
	started := time.Now()
	seen := -1.0 // the settled epoch of the poll before
	for {
		var epochs []float64
		var last []any
		for _, c := range clients {
			h, err := c.Health(ctx)
			last = append(last, h, err)
			if e, ok := settled(h); err == nil && ok && (len(epochs) == 0 || epochs[0] == e) {
				epochs = append(epochs, e)
			}
		}
		if len(epochs) == len(nodes) && epochs[0] != seen {
			seen = epochs[0]
		} else if len(epochs) == len(nodes) {
			t.Logf("settled map of %d nodes (epoch %v) after %v", len(nodes), epochs[0], time.Since(started).Round(time.Millisecond))
			return epochs[0]
		}
		if time.Since(started) > within {
			t.Fatalf("no settled map of %d nodes in %v: %v", len(nodes), within, last)
		}
		if len(epochs) != len(nodes) {
			seen = -1
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// nodeMetric sums the samples of a Prometheus family on a node's
// /health/metrics whose labels include every one of labels ("k=\"v\"").
func nodeMetric(t *testing.T, s *testServer, family string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.HTTP + "/health/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, family+"{") {
			continue
		}
		end := strings.LastIndex(line, "}")
		for _, l := range labels {
			if !strings.Contains(line[:end], l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			t.Fatalf("%s: %q", family, line)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestClusterRoutesByTheMap: once every node runs the same map, a client
// sends each key straight to its node's owner shard, one key at a time and
// in batches, entering through either node: no CACHE_013 at all, as the
// client's counter and each node's metrics of the client's service show.
func TestClusterRoutesByTheMap(t *testing.T) {
	url := startNATS(t)
	nodes := startCluster(t, url, "goroute", 2, nil)
	epoch := waitSettled(t, nodes, 30*time.Second)
	service := fmt.Sprintf("go_route_%d", os.Getpid())
	ctx := context.Background()
	var clients []*Client
	for _, s := range nodes {
		c := NewClient(&Config{ServiceID: service, Address: s.Addr})
		defer c.Close()
		clients = append(clients, c)
	}
	first, second := clients[0], clients[1]
	const n = 300
	keys := make([]string, n)
	values := map[string]any{}
	perNode := map[string]int{}
	for i := range keys {
		keys[i] = fmt.Sprintf("go:route:%d", i)
		if err := first.Set(ctx, keys[i], "v-"+keys[i]); err != nil {
			t.Fatal(keys[i], err)
		}
		perNode[first.routeFor([]byte(keys[i])).node]++
		values[fmt.Sprintf("go:routemany:%d", i)] = i
	}
	if len(perNode) != 2 {
		t.Fatalf("the keys should spread over both nodes: %v", perNode)
	}
	for _, k := range keys {
		got, err := second.GetString(ctx, k)
		if err != nil || got != "v-"+k {
			t.Fatalf("%s: %q %v", k, got, err)
		}
	}
	if err := second.SetMany(ctx, values); err != nil {
		t.Fatal(err)
	}
	many := make([]string, 0, len(values))
	for k := range values {
		many = append(many, k)
	}
	found, err := first.GetMany(ctx, many)
	if err != nil || len(found) != len(many) {
		t.Fatalf("get_many across nodes: %d of %d, %v", len(found), len(many), err)
	}
	if deleted, err := second.DeleteMany(ctx, append(many, keys...)); err != nil || deleted != len(many)+len(keys) {
		t.Fatalf("delete_many: %d of %d, %v", deleted, len(many)+len(keys), err)
	}
	for i, c := range clients {
		st := c.RoutingStats()
		t.Logf("client %d: %+v", i, st)
		if st.Redirects != 0 || st.StaleWaits != 0 || st.MapEpoch != uint64(epoch) {
			t.Errorf("client %d on a settled map of epoch %v: %+v", i, epoch, st)
		}
	}
	for _, s := range nodes {
		requests := nodeMetric(t, s, "cache_requests_total", `service="`+service+`"`)
		moved := nodeMetric(t, s, "cache_errors_total", `service="`+service+`"`, `code="CACHE_013"`)
		forwarded := nodeMetric(t, s, "cache_forwarded_ops_total")
		t.Logf("node %s: %v requests of %s, %v CACHE_013, %v forwarded between shards", s.Addr, requests, service, moved, forwarded)
		if requests == 0 || moved != 0 || forwarded != 0 {
			t.Errorf("node %s: %v requests, %v CACHE_013 answers to %s, %v forwarded between shards", s.Addr, requests, moved, service, forwarded)
		}
	}
	if t.Failed() {
		return
	}
	// A key sent to a node that does not own it is still followed there
	// (the server answers CACHE_013): point one slot at the wrong node.
	k := keys[0]
	owner := first.routeFor([]byte(k)).node
	other := nodes[0].Addr
	if other == owner {
		other = nodes[1].Addr
	}
	first.mu.Lock()
	first.cluster.slots[xxh3.Hash64Seed([]byte(k), first.cluster.seed)>>52] = slotRoute{node: other}
	first.mu.Unlock()
	if err := first.Set(ctx, k, "again"); err != nil {
		t.Fatal(err)
	}
	if st := first.RoutingStats(); st.Redirects != 1 || first.routeFor([]byte(k)).node != owner {
		t.Fatalf("after a wrong route: %+v, %s routed to %s, owner %s", st, k, first.routeFor([]byte(k)).node, owner)
	}
	// The wrong node counted that one answer: the metric check above can
	// see a redirection.
	moved := 0.0
	for _, s := range nodes {
		moved += nodeMetric(t, s, "cache_errors_total", `service="`+service+`"`, `code="CACHE_013"`)
	}
	if moved != 1 {
		t.Fatalf("after one wrong route the nodes count %v CACHE_013 answers to %s, want 1", moved, service)
	}
}

// TestClusterFailover: three nodes keeping two copies of each key; one is
// killed, the seed the client entered through. The keys of the live nodes keep being served all along, the
// killed node's keys are served by its promoted replica within 5 s, and
// only the killed node's breaker may open.
func TestClusterFailover(t *testing.T) {
	url := startNATS(t)
	nodes := startCluster(t, url, "gofail", 3, []string{"a", "b", "a"})
	waitSettled(t, nodes, 40*time.Second)
	var seeds []string
	for _, s := range nodes {
		seeds = append(seeds, s.Addr)
	}
	c := NewClient(&Config{ServiceID: fmt.Sprintf("go_failover_%d", os.Getpid()), Address: strings.Join(seeds, ",")})
	defer c.Close()
	ctx := context.Background()
	victim := nodes[0] // the seed in use: the map is fetched from the other seeds
	var victimKeys, otherKeys []string
	values := map[string]any{}
	for i := 0; len(victimKeys) < 20 || len(otherKeys) < 20; i++ {
		k := fmt.Sprintf("go:fail:%d", i)
		values[k] = "before"
		if _, err := c.Get(ctx, k); err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err) // learns the map
		}
		if c.routeFor([]byte(k)).node == victim.Addr {
			if len(victimKeys) < 20 {
				victimKeys = append(victimKeys, k)
			}
		} else if len(otherKeys) < 20 {
			otherKeys = append(otherKeys, k)
		}
	}
	if err := c.SetMany(ctx, values); err != nil {
		t.Fatal(err)
	}
	before := c.RoutingStats()
	if seed := c.seeds.inUse(); seed != victim.Addr {
		t.Fatalf("the seed in use is %s, not the first seed %s", seed, victim.Addr)
	}
	if epoch := waitSettled(t, nodes, 10*time.Second); before.MapEpoch != uint64(epoch) {
		t.Fatalf("the map moved while the keys were sorted by node: epoch %v, the client's %+v", epoch, before)
	}

	_ = victim.cmd.Process.Kill()
	_ = victim.cmd.Wait()
	victim.cmd = nil
	killed := time.Now()

	// The live nodes' keys, all along (in parallel with the victim's).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var otherErrs []error
	otherOps := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for round := 0; ; round++ {
			for _, k := range otherKeys {
				v := fmt.Sprintf("during-%d", round)
				if err := c.Set(ctx, k, v); err != nil {
					otherErrs = append(otherErrs, fmt.Errorf("set %s after %v: %w", k, time.Since(killed), err))
				} else if got, err := c.GetString(ctx, k); err != nil || got != v {
					otherErrs = append(otherErrs, fmt.Errorf("get %s after %v: %q %v", k, time.Since(killed), got, err))
				}
				otherOps++
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	// The victim's keys: every one written and read back, again and again,
	// until a whole round succeeds.
	var recovered time.Duration
	var lastErr error
	failures := 0
	for round := 0; recovered == 0; round++ {
		ok := true
		for _, k := range victimKeys {
			v := fmt.Sprintf("after-%d", round)
			err := c.Set(ctx, k, v)
			if err == nil {
				var got string
				if got, err = c.GetString(ctx, k); err == nil && got != v {
					err = fmt.Errorf("read %q, wrote %q", got, v)
				}
			}
			if err != nil {
				ok, lastErr = false, err
				failures++
				break
			}
		}
		if ok {
			recovered = time.Since(killed)
			break
		}
		if time.Since(killed) > 15*time.Second {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the live nodes' keys, a while after
	close(stop)
	wg.Wait()

	st := c.RoutingStats()
	t.Logf("killed node %s: its keys served again after %v (%d failed rounds, last error: %v); %d ops on the live nodes' keys, %d failed; routing %+v (before the kill %+v); breakers %v",
		victim.Addr, recovered.Round(time.Millisecond), failures, lastErr, otherOps, len(otherErrs), st, before, c.NodeBreakerStates())
	if recovered == 0 || recovered > 5*time.Second {
		t.Errorf("the killed node's keys were not served again within 5 s (%v): %v", recovered, lastErr)
	}
	for i, err := range otherErrs {
		if i == 5 {
			break
		}
		t.Errorf("a live node's key failed during the outage: %v", err)
	}
	if st.MapEpoch <= before.MapEpoch || st.MapRefreshes == 0 {
		t.Errorf("the client did not take the new map: %+v, before %+v", st, before)
	}
	states := c.NodeBreakerStates()
	for _, s := range nodes {
		if s != victim && states[s.Addr] != StateClosed {
			t.Errorf("the breaker of live node %s is %s", s.Addr, states[s.Addr])
		}
	}
	for _, k := range victimKeys {
		if c.routeFor([]byte(k)).node == victim.Addr {
			t.Errorf("%s still routed to the killed node", k)
		}
	}
}
