package cache

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
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

// TestClusterKeysReachTheirNode writes through one node of a two-node
// cluster and reads through the other: the client follows CACHE_013 to the
// node that owns each key's slot, one key at a time and inside batches.
func TestClusterKeysReachTheirNode(t *testing.T) {
	url := startNATS(t)
	bin := serverBinary(t)
	var nodes []*testServer
	for i := 1; i <= 2; i++ {
		s := &testServer{t: t, bin: bin, port: "0", extra: []string{
			"--nats-url", url, "--cluster-nodes", "2", "--cluster-name", "go", "--node-id", fmt.Sprintf("go%d", i)}}
		s.start()
		t.Cleanup(s.stop)
		nodes = append(nodes, s)
	}
	ctx := context.Background()
	first := NewClient(&Config{ServiceID: "t", Address: nodes[0].Addr})
	defer first.Close()
	second := NewClient(&Config{ServiceID: "t", Address: nodes[1].Addr})
	defer second.Close()
	// Both nodes run the same settled map of two before writing: a joining
	// node takes its slots over a few maps (learner, then owner), and a
	// node still on an older one answers CACHE_013 with that map.
	settled := func(h map[string]any) (float64, bool) {
		c, ok := h["cluster"].(map[string]any)
		if !ok {
			return 0, false
		}
		n, ok := c["nodes"].([]any)
		if !ok || len(n) != 2 {
			return 0, false
		}
		for _, x := range n {
			node, _ := x.(map[string]any)
			p, _ := node["primary_slots"].(float64)
			l, _ := node["learner_slots"].(float64)
			if node["status"] != "serving" || p == 0 || l != 0 {
				return 0, false
			}
		}
		epoch, _ := c["epoch"].(float64)
		return epoch, true
	}
	for deadline := time.Now().Add(15 * time.Second); ; {
		h1, err1 := first.Health(ctx)
		h2, err2 := second.Health(ctx)
		if err1 == nil && err2 == nil {
			e1, ok1 := settled(h1)
			e2, ok2 := settled(h2)
			if ok1 && ok2 && e1 == e2 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no settled map of two nodes: %v %v / %v %v", h1, err1, h2, err2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	keys := make([]string, 0, 200)
	values := map[string]any{}
	for i := 0; i < 200; i++ {
		k := fmt.Sprintf("go:%d", i)
		keys = append(keys, k)
		if err := first.Set(ctx, k, "v-"+k); err != nil {
			t.Fatal(k, err)
		}
		values[fmt.Sprintf("gomany:%d", i)] = i
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
}
