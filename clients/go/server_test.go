package cache

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testServer is a real cache-server on ephemeral ports.
type testServer struct {
	t      *testing.T
	bin    string
	port   string
	cmd    *exec.Cmd
	Addr   string
	Shards []string
	HTTP   string   // host:port of the HTTP API
	extra  []string // more flags (a cluster node's)
}

func serverBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("DND_CACHE_SERVER_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../../target/release/cache-server")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("DND_CACHE_REQUIRE_SERVER") != "" {
			t.Fatalf("cache-server binary not found: %v", err)
		}
		t.Skip("cache-server not built: cargo build --release --bin cache-server")
	}
	return bin
}

func startServer(t *testing.T) *testServer {
	s := &testServer{t: t, bin: serverBinary(t), port: "0"}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *testServer) start() {
	s.t.Helper()
	if err := s.tryStart(); err != nil {
		s.t.Fatal(err)
	}
}

// tryStart starts the server; safe to call from any goroutine.
func (s *testServer) tryStart() error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		args := append([]string{"--bind", "127.0.0.1", "--port", s.port, "--shard-port-base", "0",
			"--http-port", "0", "--shards", "2", "--no-pin", "--max-memory", "64MiB"}, s.extra...)
		cmd := exec.Command(s.bin, args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if strings.HasPrefix(line, "LISTENING") {
			s.cmd = cmd
			for _, kv := range strings.Fields(line)[1:] {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "binary":
					s.Addr = v
					s.port = v[strings.LastIndex(v, ":")+1:]
				case "shard_ports":
					s.Shards = strings.Split(v, ",")
				case "http":
					s.HTTP = v
				}
			}
			return nil
		}
		_ = cmd.Wait()
		if time.Now().After(deadline) {
			return fmt.Errorf("cache-server did not start: %q", line)
		}
		time.Sleep(200 * time.Millisecond) // the old port may linger after a stop
	}
}

func (s *testServer) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}
