//! Runs the real `loadgen` binary against real servers on ephemeral loopback
//! ports: dnd-cache (binary protocol, plain and shard-aware), Redis and
//! memcached when installed, and a small HTTP/1.1 server for the REST target.
//! Checks that every request sent is accounted for and that errors are
//! counted by status. No mocks: every byte crosses a TCP socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// dnd-cache's REST listener, when its LISTENING line names one.
    http: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dnd-cache server binary: `$DND_CACHE_SERVER_BIN` (then it must
/// exist), else a workspace build, else `None`.
fn cache_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DND_CACHE_SERVER_BIN") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "DND_CACHE_SERVER_BIN={} does not exist", p.display());
        return Some(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["target/release/cache-server", "target/debug/cache-server"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.exists())
}

fn on_path(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(cmd))
        .find(|p| p.exists())
}

fn start_cache_server(shards: u32) -> Option<Server> {
    let Some(bin) = cache_server_bin() else {
        eprintln!("NOTE: no cache-server binary (set DND_CACHE_SERVER_BIN or build it); skipping");
        return None;
    };
    let mut command = Command::new(bin);
    command
        // 64 MiB over 2+ shards evicts items of mixed sizes long before it is
        // full (reported to the server's owner); 256 MiB is only reserved as used.
        .args(["--max-memory", "256MiB", "--shards", &shards.to_string()]);
    Some(spawn_listening(command))
}

/// Starts `command` (a cache-server) on ephemeral loopback ports and reads
/// its addresses from its LISTENING line.
fn spawn_listening(mut command: Command) -> Server {
    let mut child = command
        .args("--bind 127.0.0.1 --port 0 --shard-port-base 0 --http-port 0 --no-pin".split(' '))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cache-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("LISTENING line");
    assert!(line.starts_with("LISTENING "), "unexpected first line {line:?}");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .map(|a| a.parse::<SocketAddr>().unwrap())
    };
    let addr = field("binary=").expect("binary= in LISTENING line");
    let http = field("http=");
    Server { child, addr, http }
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server on {addr} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_external(cmd: &str, args: &[String], port: u16) -> Option<Server> {
    let Some(bin) = on_path(cmd) else {
        eprintln!("NOTE: {cmd} not installed (apt-get install {cmd}); skipping");
        return None;
    };
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = Server {
        child,
        addr,
        http: None,
    };
    wait_until_listening(addr);
    Some(server)
}

fn start_redis() -> Option<Server> {
    let port = free_port();
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    start_external("redis-server", &args, port)
}

fn start_memcached() -> Option<Server> {
    let port = free_port();
    let args: Vec<String> = [
        "-p",
        &port.to_string(),
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-t",
        "1",
        "-u",
        "root",
        "-m",
        "64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    start_external("memcached", &args, port)
}

/// Runs `loadgen run ARGS --json --quiet` (ARGS split at spaces); returns
/// (exit code, summary).
fn loadgen(args: &str) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("run")
        .args(args.split_whitespace())
        .args(["--json", "--quiet"])
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "loadgen {args:?}: no JSON ({e}); stdout {stdout}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), summary)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Every request sent got an answer, none failed, and the parts add up.
fn assert_clean(code: i32, s: &Value, expected_ops: Option<u64>) {
    assert_eq!(code, 0, "loadgen failed: {s}");
    assert_eq!(u(s, "errors"), 0, "errors: {}", s["errors_by_status"]);
    assert_eq!(u(s, "sent"), u(s, "ops"), "sent != answered: {s}");
    assert_eq!(u(s, "gets") + u(s, "sets"), u(s, "ops"));
    assert_eq!(u(s, "hits") + u(s, "misses"), u(s, "gets"));
    assert_eq!(s["latency_us"]["count"].as_u64(), Some(u(s, "ops")));
    if let Some(n) = expected_ops {
        assert_eq!(u(s, "ops"), n);
    }
    assert!(u(s, "ops") > 0);
    assert!(s["client_cpu_us_per_op"].as_f64().unwrap() > 0.0);
}

#[test]
fn binary_protocol_counts_add_up_with_prefill_and_server_cpu() {
    let Some(server) = start_cache_server(2) else {
        return;
    };
    let addr = server.addr.to_string();
    let pid = server.child.id().to_string();
    let (code, s) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 8 --threads 2 --pipeline 4 --ratio 3:1 \
         --keys 2000 --key-prefix character: --requests 20000 --prefill --ttl 300 --server-pid \
         {pid}"
    ));
    assert_clean(code, &s, Some(20000));
    assert!(u(&s, "sets") > 3000 && u(&s, "gets") > 13000, "{s}");
    // Every key was set by the prefill and the TTL is long: all gets hit.
    assert_eq!(s["hit_rate"].as_f64(), Some(1.0), "{s}");
    assert!(s["server_cpu_us_per_op"].as_f64().unwrap() > 0.0);
}

#[test]
fn binary_protocol_shard_aware_routes_to_every_shard() {
    let Some(server) = start_cache_server(2) else {
        return;
    };
    let addr = server.addr.to_string();
    let (code, s) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 4 --pipeline 8 --ratio 1:1 --keys 5000 \
         --distribution zipfian --value-size 10-3000 --requests 10000 --shard-aware"
    ));
    assert_clean(code, &s, Some(10000));
    assert_eq!(s["shards"].as_u64(), Some(2));
    assert!(
        u(&s, "hits") > 0,
        "sets then gets on a zipfian key space must hit: {s}"
    );
}

#[test]
fn binary_protocol_errors_are_counted_by_status() {
    let Some(server) = start_cache_server(1) else {
        return;
    };
    let addr = server.addr.to_string();
    // Values over the server's 1 MiB item limit: every set is CACHE_003.
    let (code, s) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 2 --ratio 0:1 --keys 10 --value-size \
         1100000 --requests 6"
    ));
    assert_eq!(code, 1, "errors must fail the run: {s}");
    assert_eq!(u(&s, "errors"), 6);
    assert_eq!(s["errors_by_status"]["CACHE_003"].as_u64(), Some(6), "{s}");
    assert_eq!(u(&s, "sent"), 6);
}

#[test]
fn open_loop_sends_at_the_requested_rate() {
    let Some(server) = start_cache_server(1) else {
        return;
    };
    let addr = server.addr.to_string();
    let (code, s) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 4 --pipeline 4 --ratio 1:0 --keys 100 \
         --duration 1 --warmup 200ms --rate 2000"
    ));
    assert_clean(code, &s, None);
    // The schedule, not the server, decides how many come due: 2000 in 1 s,
    // sent or (if a busy test machine stalled the server) left in the backlog.
    let due = u(&s, "sent") + u(&s, "backlog");
    assert!((1990..=2010).contains(&due), "{due} due at 2000/s for 1 s: {s}");
    assert_eq!(s["mode"], "open");
}

#[test]
fn redis_resp_counts_add_up() {
    let Some(server) = start_redis() else { return };
    let addr = server.addr.to_string();
    let hgrm = std::env::temp_dir().join(format!("loadgen-test-{}.hgrm", std::process::id()));
    let hgrm_path = hgrm.display();
    let (code, s) = loadgen(&format!(
        "--protocol resp --addr {addr} --connections 10 --pipeline 16 --ratio 9:1 --keys 1000 \
         --requests 30000 --prefill --ttl 600 \
         --hdr-out {hgrm_path}"
    ));
    assert_clean(code, &s, Some(30000));
    assert_eq!(s["hit_rate"].as_f64(), Some(1.0));
    // The percentile file ends at percentile 1.0 with every request counted.
    let text = std::fs::read_to_string(&hgrm).expect("--hdr-out file written");
    let _ = std::fs::remove_file(&hgrm);
    let last = text
        .lines()
        .rfind(|l| l.contains(" 1.000000000000 "))
        .expect("a 100th percentile row");
    assert_eq!(last.split_whitespace().nth(2), Some("30000"), "{text}");
    assert!(text.contains("#[Max     ="));
    let (code, s) = loadgen(&format!(
        "--protocol resp --addr {addr} --connections 3 --ratio 1:0 --keys 10 --key-prefix absent: \
         --requests 300"
    ));
    assert_clean(code, &s, Some(300));
    assert_eq!(u(&s, "misses"), 300);
}

#[test]
fn memcached_counts_add_up_and_errors_are_counted() {
    let Some(server) = start_memcached() else { return };
    let addr = server.addr.to_string();
    let (code, s) = loadgen(&format!(
        "--protocol memcache --addr {addr} --connections 10 --pipeline 8 --ratio 9:1 --keys 1000 \
         --value-size 100-1000 --requests 30000 --prefill"
    ));
    assert_clean(code, &s, Some(30000));
    assert_eq!(s["hit_rate"].as_f64(), Some(1.0));
    // memcached refuses items over its 1 MiB default: SERVER_ERROR each.
    let (code, s) = loadgen(&format!(
        "--protocol memcache --addr {addr} --connections 1 --ratio 0:1 --keys 3 --value-size \
         2000000 --requests 3"
    ));
    assert_eq!(code, 1);
    assert_eq!(s["errors_by_status"]["SERVER_ERROR"].as_u64(), Some(3), "{s}");
}

/// A small HTTP/1.1 keep-alive server with the REST routes the load
/// generator uses; one thread per connection, requests answered in order.
/// The HTTP test server's items.
type Store = Arc<Mutex<HashMap<String, Vec<u8>>>>;

fn start_http_server() -> (SocketAddr, Store) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let store: Store = Arc::default();
    let shared = store.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let store = shared.clone();
            std::thread::spawn(move || serve_http(conn, &store));
        }
    });
    (addr, store)
}

fn serve_http(conn: TcpStream, store: &Mutex<HashMap<String, Vec<u8>>>) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
        let key = path
            .strip_prefix("/api/v2/cache/")
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap()
            .to_string();
        let response: Vec<u8> = match method {
            "PUT" => {
                store.lock().unwrap().insert(key, body);
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
            }
            "GET" => match store.lock().unwrap().get(&key) {
                Some(v) => {
                    // Chunked on purpose: the client must handle both framings.
                    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    r.extend_from_slice(format!("{:x}\r\n", v.len()).as_bytes());
                    r.extend_from_slice(v);
                    r.extend_from_slice(b"\r\n0\r\n\r\n");
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec(),
            },
            _ => b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        out.write_all(&response).unwrap();
    }
}

#[test]
fn http_rest_target_counts_add_up() {
    let (addr, store) = start_http_server();
    let addr = addr.to_string();
    let (code, s) = loadgen(&format!(
        "--protocol http --addr {addr} --connections 4 --pipeline 4 --ratio 1:1 --keys 200 \
         --key-prefix character: --value-size 50-500 --requests 4000 --prefill"
    ));
    assert_clean(code, &s, Some(4000));
    assert_eq!(s["hit_rate"].as_f64(), Some(1.0));
    let store = store.lock().unwrap();
    assert_eq!(store.len(), 200);
    let v = &store["character:042"];
    assert!((50..=500).contains(&v.len()));
}

#[test]
fn a_server_that_dies_fails_the_run_instead_of_looking_idle() {
    let Some(mut server) = start_cache_server(1) else {
        return;
    };
    let addr = server.addr.to_string();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            "--addr",
            &addr,
            "--connections",
            "3",
            "--duration",
            "20",
            "--json",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    server.child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).expect("summary even after the server died");
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(u(&s, "connections_lost"), 3, "{s}");
    assert!(u(&s, "ops") > 0, "{s}");
    // Every request sent is answered, or counted as lost with its connection.
    let lost: u64 = ["conn_closed", "timeout", "protocol_error"]
        .iter()
        .map(|k| s["errors_by_status"][k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(u(&s, "sent"), u(&s, "ops") + lost, "{s}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the run must stop once every connection is gone"
    );
}

#[test]
fn rest_api_of_the_real_server_counts_add_up() {
    let Some(server) = start_cache_server(2) else {
        return;
    };
    let Some(http) = server.http else {
        eprintln!("NOTE: this cache-server names no http= listener; skipping");
        return;
    };
    let pid = server.child.id();
    let (code, s) = loadgen(&format!(
        "--protocol http --addr {http} --connections 4 --pipeline 4 --ratio 3:1 --keys 500 \
         --key-prefix character: --value-size 10-2000 --ttl 120 --requests 4000 --prefill --server-pid {pid}"
    ));
    assert_clean(code, &s, Some(4000));
    assert_eq!(s["hit_rate"].as_f64(), Some(1.0), "{s}");
    let (code, s) = loadgen(&format!(
        "--protocol http --addr {http} --connections 2 --ratio 1:0 --keys 10 --key-prefix absent: \
         --requests 50"
    ));
    assert_clean(code, &s, Some(50));
    assert_eq!(u(&s, "misses"), 50, "404 is a miss, not an error: {s}");
}

/// `nats-server` with JetStream on a free port (a cluster needs it), or
/// `None` with a note when it is not installed.
fn start_nats_js() -> Option<(Server, String)> {
    let Some(bin) = on_path("nats-server").or_else(|| {
        let p = PathBuf::from("/usr/sbin/nats-server");
        p.exists().then_some(p)
    }) else {
        eprintln!("NOTE: nats-server not installed; skipping");
        return None;
    };
    let port = free_port();
    let store = std::env::temp_dir().join(format!("loadgen-js-{}-{port}", std::process::id()));
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until_listening(addr);
    Some((
        Server {
            child,
            addr,
            http: None,
        },
        format!("nats://{addr}"),
    ))
}

/// Node `id` of a two-node cluster (replication 1) on `nats`.
fn start_cluster_node(nats: &str, id: &str, zone: &str) -> Server {
    let mut command = Command::new(cache_server_bin().expect("cache-server binary"));
    command
        .args(["--shards", "2", "--nats-url", nats, "--cluster-nodes", "2"])
        .args(["--cluster-name", "loadgen-test", "--cluster-zones", "a,b"])
        .args(["--zone", zone, "--node-id", id]);
    spawn_listening(command)
}

/// The `cluster` member of a node's REST health answer.
fn cluster_health(http: SocketAddr) -> Value {
    let Ok(mut s) = TcpStream::connect(http) else {
        return Value::Null;
    };
    let _ = s.write_all(b"GET /api/v2/cache/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["cache_response"]["data"]["cluster"].clone()
}

#[test]
fn binary_protocol_cluster_routes_by_the_slot_map() {
    if cache_server_bin().is_none() {
        eprintln!("NOTE: no cache-server binary; skipping");
        return;
    }
    let Some((_nats, url)) = start_nats_js() else {
        return;
    };
    let n1 = start_cluster_node(&url, "n1", "a");
    let n2 = start_cluster_node(&url, "n2", "b");
    // Both nodes run one map giving each of them primaries.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let settled = [&n1, &n2].iter().all(|n| {
            let h = cluster_health(n.http.unwrap());
            let nodes = h["nodes"].as_array().cloned().unwrap_or_default();
            nodes.len() == 2
                && nodes
                    .iter()
                    .all(|x| x["primary_slots"].as_u64().unwrap_or(0) > 1000)
                && h["epoch"] == cluster_health(n1.http.unwrap())["epoch"]
        });
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not settle");
        std::thread::sleep(Duration::from_millis(100));
    }
    let addr = n1.addr.to_string();
    // Routed by the map: every key reaches its primary; no redirect.
    let (code, s) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 4 --pipeline 8 --ratio 1:1 --keys 5000 \
         --requests 10000 --cluster --consistency eventual"
    ));
    assert_clean(code, &s, Some(10000));
    assert_eq!(s["shards"].as_u64(), Some(4), "two nodes of two shards: {s}");
    // The same load sent to n1 alone meets CACHE_013 for n2's keys.
    let (_, plain) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 4 --pipeline 8 --ratio 1:1 --keys 5000 \
         --requests 10000 --shard-aware"
    ));
    assert!(u(&plain, "errors") > 2000, "{plain}");
    // --node n1: only the keys n1 is primary of (about half of them).
    let (code, s) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 2 --keys 4000 --key-prefix only: \
         --prefill --requests 1 --cluster --node n1"
    ));
    assert_eq!(code, 0, "{s}");
    let (code, s) = loadgen(&format!(
        "--protocol binary --addr {addr} --connections 2 --ratio 1:0 --keys 4000 --key-prefix only: \
         --requests 8000 --cluster"
    ));
    assert_clean(code, &s, Some(8000));
    let hit_rate = s["hit_rate"].as_f64().unwrap();
    assert!((0.3..0.7).contains(&hit_rate), "hit rate {hit_rate}: {s}");
    // The consistency reaches the server: one it does not know is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "run",
            "--addr",
            &addr,
            "--requests",
            "10",
            "--cluster",
            "--consistency",
            "bogus",
        ])
        .output()
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("CACHE_010"), "{stderr}");
}
