//! Test harness: starts the real `cache-server` binary on ephemeral
//! loopback ports and talks to it over real TCP.
#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod nats;
pub mod tls;

/// Flags that give a server free ports (it prints them) and no pinning.
pub const FREE_PORTS: [&str; 7] = [
    "--port",
    "0",
    "--shard-port-base",
    "0",
    "--http-port",
    "0",
    "--no-pin",
];

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dnd_cache::proto::{CacheConnection, CacheOperation, CacheResponse, Entry};
use prost::Message;

/// The server binary: tests/run-all.sh points `DND_CACHE_SERVER_BIN` at the
/// release build (the binary that ships, and faster); plain `cargo test`
/// uses the debug build.
pub fn server_bin() -> String {
    std::env::var("DND_CACHE_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cache-server").into())
}

pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    /// The REST port (`http=` of the LISTENING line).
    pub http: SocketAddr,
    pub line: String,
}

impl TestServer {
    /// A server with 2 shards, free ports, 64 MiB, plus `extra` flags.
    pub fn start(extra: &[&str]) -> TestServer {
        let mut args = vec!["--bind", "127.0.0.1"];
        args.extend(FREE_PORTS);
        if !extra.contains(&"--max-memory") {
            args.extend(["--max-memory", "64MiB"]);
        }
        if !extra.iter().any(|a| *a == "--shards" || *a == "--cpus") {
            args.extend(["--shards", "2"]);
        }
        args.extend_from_slice(extra);
        Self::start_with_args(&args)
    }

    pub fn start_with_args(args: &[&str]) -> TestServer {
        // DND_TEST_LOG=info shows the servers' logs; DND_TEST_LOG_DIR puts
        // each server's log in its own file there (node id and a counter).
        let stderr = match std::env::var("DND_TEST_LOG_DIR") {
            Ok(dir) => {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = args
                    .iter()
                    .position(|a| *a == "--node-id")
                    .and_then(|i| args.get(i + 1))
                    .copied()
                    .unwrap_or("server");
                let name = format!("{dir}/{}-{n:03}-{id}.log", std::process::id());
                Stdio::from(std::fs::File::create(name).expect("create the log file"))
            }
            Err(_) => Stdio::inherit(),
        };
        let mut child = Command::new(server_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("DND_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start cache-server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read LISTENING line");
        assert!(line.starts_with("LISTENING "), "unexpected first line: {line:?}");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line}"))
                .to_string()
        };
        let addr: SocketAddr = field("binary").parse().unwrap();
        let shard_ports = field("shard_ports")
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect();
        let http: SocketAddr = field("http").parse().unwrap();
        TestServer {
            child,
            addr,
            shard_ports,
            http,
            line,
        }
    }

    pub fn shard_addr(&self, shard: usize) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.shard_ports[shard])
    }

    /// A connection that has completed the handshake.
    pub fn connect(&self) -> Raw {
        Raw::handshaken(self.addr)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status within `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking connection speaking raw frames.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    pub fn handshaken(addr: SocketAddr) -> Raw {
        let mut raw = Raw::open(addr);
        let answer = raw.handshake("test_service");
        assert_eq!(answer.status, 0, "handshake refused: {answer:?}");
        raw
    }

    pub fn handshake(&mut self, service_id: &str) -> CacheResponse {
        let hello = CacheConnection {
            service_id: service_id.into(),
            protocol_version: 1,
            ..Default::default()
        };
        self.send_frame(&hello.encode_to_vec());
        self.recv().expect("handshake answer")
    }

    pub fn send_frame(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).unwrap();
    }

    pub fn send(&mut self, op: &CacheOperation) {
        self.send_frame(&op.encode_to_vec());
    }

    /// The next answer; `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<CacheResponse> {
        let mut header = [0u8; 4];
        if self.stream.read_exact(&mut header).is_err() {
            return None;
        }
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(CacheResponse::decode(&body[..]).expect("a CacheResponse"))
    }

    pub fn call(&mut self, op: &CacheOperation) -> CacheResponse {
        self.send(op);
        self.recv().expect("an answer")
    }

    /// Whether the server has closed the connection (reads EOF in time).
    pub fn is_closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

pub fn op(name: &str, key: &[u8]) -> CacheOperation {
    CacheOperation {
        operation: name.into(),
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    }
}

pub fn set(key: &[u8], value: &[u8], ttl: u32) -> CacheOperation {
    CacheOperation {
        value: Bytes::copy_from_slice(value),
        ttl,
        ..op("set", key)
    }
}

pub fn get(key: &[u8]) -> CacheOperation {
    op("get", key)
}

pub fn keys_op(name: &str, keys: &[Vec<u8>]) -> CacheOperation {
    CacheOperation {
        keys: keys.iter().map(|k| Bytes::copy_from_slice(k)).collect(),
        ..op(name, b"")
    }
}

pub fn set_many(entries: &[(Vec<u8>, Vec<u8>)], ttl: u32) -> CacheOperation {
    CacheOperation {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: Bytes::copy_from_slice(k),
                value: Bytes::copy_from_slice(v),
                ttl: 0,
            })
            .collect(),
        ttl,
        ..op("set_many", b"")
    }
}

/// The owner shard of `key` as the server computes it, from the handshake.
pub fn owner(key: &[u8], seed: u64, shards: usize) -> usize {
    dnd_cache::key::owner_of(dnd_cache::key::key_hash(key, seed), shards)
}

pub fn stats(raw: &mut Raw) -> serde_json::Value {
    let resp = raw.call(&op("stats", b""));
    assert_eq!(resp.status, 0);
    serde_json::from_slice(&resp.data).unwrap()
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Sets `prefix:0..count` to `value_len`-byte values, pipelined 256 at a
/// time; returns how many were answered OK.
pub fn write_many(c: &mut Raw, prefix: &str, count: usize, value_len: usize) -> usize {
    let value = vec![0x5au8; value_len];
    let mut ok = 0;
    for start in (0..count).step_by(256) {
        let end = (start + 256).min(count);
        let mut batch = Vec::new();
        for i in start..end {
            let op = set(format!("{prefix}:{i}").as_bytes(), &value, 0);
            dnd_cache::frame::encode_frame(&op, &mut batch);
        }
        c.stream.write_all(&batch).unwrap();
        for _ in start..end {
            ok += usize::from(c.recv().unwrap().status == 0);
        }
    }
    ok
}
