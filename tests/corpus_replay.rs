//! Replays the malformed inputs of `tests/corpus/` (binary frames, HTTP
//! requests; the seeds of the fuzz targets too) against the real server,
//! with and without auth: no crash, every connection ends, and the server
//! still serves afterwards, its data intact.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::http::HttpConn;
use common::*;
use dnd_cache::proto::CacheConnection;
use prost::Message;

fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "corpus {} present", dir.display());
    files
}

/// Sends `bytes`, half-closes, and reads until the server closes (or 5 s
/// pass, for inputs the server may legitimately wait on).
fn replay(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut sink = [0u8; 65536];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

fn token() -> String {
    let secret = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/hs256.secret")).unwrap();
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"exp": exp, "roles": ["read", "write", "admin"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

fn connect(server: &TestServer, token: &str) -> Raw {
    let mut raw = Raw::open(server.addr);
    let hello = CacheConnection {
        service_id: "corpus".into(),
        auth_token: token.into(),
        ..Default::default()
    };
    raw.send_frame(&hello.encode_to_vec());
    assert_eq!(raw.recv().expect("handshake answer").status, 0);
    raw
}

fn replay_all(server: &mut TestServer, token: &str) {
    let mut keeper = connect(server, token);
    assert_eq!(keeper.call(&set(b"canary", b"alive", 0)).status, 0);
    let check = |server: &mut TestServer, name: &str| {
        assert!(server.is_running(), "server died on {name}");
        let got = connect(server, token).call(&get(b"canary"));
        assert_eq!((got.status, &got.data[..]), (0, &b"alive"[..]), "after {name}");
        assert_eq!(
            HttpConn::open(server.http).get("/health/live").status,
            200,
            "after {name}"
        );
    };
    for (name, bytes) in corpus("binary") {
        replay(server.addr, &bytes);
        check(server, &name);
    }
    for (name, bytes) in corpus("http") {
        replay(server.http, &bytes);
        check(server, &name);
    }
    // Binary inputs on the HTTP port and the other way round.
    for (name, bytes) in corpus("binary").into_iter().take(8) {
        replay(server.http, &bytes);
        check(server, &name);
    }
    for (name, bytes) in corpus("http").into_iter().take(8) {
        replay(server.addr, &bytes);
        check(server, &name);
    }
    assert_eq!(
        keeper.call(&get(b"canary")).status,
        0,
        "an open connection is unaffected"
    );
}

#[test]
fn corpus_without_auth() {
    let mut server = TestServer::start(&[]);
    replay_all(&mut server, "");
}

#[test]
fn corpus_with_auth_and_codec() {
    let dir = std::env::temp_dir().join(format!("dnd-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, [3u8; 32]).unwrap();
    let secret = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/hs256.secret");
    let mut server = TestServer::start(&[
        "--auth-hs256-secret-file",
        secret,
        "--encryption-key-file",
        key.to_str().unwrap(),
        "--compression",
        "always",
        "--compression-threshold",
        "0",
    ]);
    replay_all(&mut server, &token());
    let _ = std::fs::remove_dir_all(dir);
}
