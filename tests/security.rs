//! Issue 5 against the real server: JWT on both protocols, key rotation,
//! protected mode, encryption and compression through the shards, TLS on
//! both listeners.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::http::HttpConn;
use common::*;
use dnd_cache::proto::{CacheConnection, CacheResponse, Options};
use dnd_cache::Status;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use prost::Message;
use serde_json::json;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn key_path(name: &str) -> String {
    format!("{KEYS}/{name}")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "exp": now() + 600,
        "iss": "auth-service",
        "aud": "cache",
        "service_id": "test_service",
        "scope": "cache:read cache:write cache:delete cache:flush cache:reload metrics:read",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn hs256(c: &serde_json::Value) -> String {
    let secret = std::fs::read(key_path("hs256.secret")).unwrap();
    encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

fn rs256(kid: &str, private: &str, c: &serde_json::Value) -> String {
    let pem = std::fs::read(key_path(private)).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(&header, c, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// The hostile tokens every protocol must refuse with AUTH_001.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let rsa_public = std::fs::read(key_path("rsa-public.pem")).unwrap();
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rsa-1".into());
    vec![
        ("missing", String::new()),
        ("expired", hs256(&claims(json!({"exp": now() - 120})))),
        ("not yet valid", hs256(&claims(json!({"nbf": now() + 600})))),
        (
            "wrong signature",
            rs256("rsa-1", "rsa2-private.pem", &claims(json!({}))),
        ),
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims(json!({})))),
        ),
        (
            "HS/RS confusion",
            encode(
                &confused,
                &claims(json!({})),
                &EncodingKey::from_secret(&rsa_public),
            )
            .unwrap(),
        ),
        ("wrong audience", hs256(&claims(json!({"aud": "billing"})))),
        ("wrong issuer", hs256(&claims(json!({"iss": "mallory"})))),
        ("garbage", "a.b.c".into()),
    ]
}

fn auth_server(extra: &[&str]) -> TestServer {
    let secret = key_path("hs256.secret");
    let rsa = format!("rsa-1={}", key_path("rsa-public.pem"));
    let mut args = vec![
        "--auth-hs256-secret-file",
        &secret,
        "--auth-public-key-file",
        &rsa,
        "--auth-issuer",
        "auth-service",
        "--auth-audience",
        "cache",
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

fn hello(raw: &mut Raw, token: &str, options: Option<Options>) -> CacheResponse {
    let hello = CacheConnection {
        service_id: "test_service".into(),
        auth_token: token.into(),
        protocol_version: 1,
        options,
        ..Default::default()
    };
    raw.send_frame(&hello.encode_to_vec());
    raw.recv().expect("handshake answer")
}

fn authed(addr: std::net::SocketAddr, token: &str) -> Raw {
    let mut raw = Raw::open(addr);
    let answer = hello(&mut raw, token, None);
    assert_eq!(answer.status, 0, "{answer:?}");
    raw
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn binary_protocol_checks_tokens_and_permissions() {
    let server = auth_server(&[]);
    let admin = hs256(&claims(json!({})));
    let mut c = authed(server.addr, &admin);
    assert_eq!(c.call(&set(b"canary", b"alive", 0)).status, 0);

    for (name, token) in bad_tokens() {
        let mut raw = Raw::open(server.addr);
        let answer = hello(&mut raw, &token, None);
        assert_eq!(
            answer.status,
            Status::InvalidCredentials as u32,
            "{name}: {answer:?}"
        );
        raw.send(&get(b"canary"));
        assert!(raw.is_closed_within(Duration::from_secs(3)), "{name}: closed");
    }
    // A token of another service_id is refused too.
    let other = hs256(&claims(json!({"service_id": "image_service"})));
    assert_eq!(
        hello(&mut Raw::open(server.addr), &other, None).status,
        Status::InvalidCredentials as u32
    );

    // Read-only, on every shard's port (forwarded keys included).
    let reader = hs256(&claims(json!({"scope": "cache:read"})));
    for shard in 0..2 {
        let mut r = authed(server.shard_addr(shard), &reader);
        for key in [&b"canary"[..], b"k0", b"k1", b"k2", b"k3"] {
            let answer = r.call(&set(key, b"overwritten", 0));
            assert_eq!(answer.status, Status::Forbidden as u32, "{answer:?}");
        }
        assert_eq!(
            r.call(&keys_op("delete_many", &[b"canary".to_vec()])).status,
            Status::Forbidden as u32
        );
        assert_eq!(r.call(&op("flush", b"")).status, Status::Forbidden as u32);
        assert_eq!(r.call(&op("stats", b"")).status, Status::Forbidden as u32);
        assert_eq!(r.call(&op("reload", b"")).status, Status::Forbidden as u32);
        assert_eq!(r.call(&op("health", b"")).status, 0, "health is open");
        let got = r.call(&get(b"canary"));
        assert_eq!(
            (got.status, &got.data[..]),
            (0, &b"alive"[..]),
            "kept the connection"
        );
        for key in [b"k0", b"k1", b"k2", b"k3"] {
            assert_eq!(
                r.call(&get(key)).status,
                Status::NotFound as u32,
                "nothing written"
            );
        }
    }
    // Roles (ICD 7.2): "write" grants cache:write and cache:delete.
    let writer = hs256(&claims(json!({"scope": null, "roles": ["write"]})));
    let mut w = authed(server.addr, &writer);
    assert_eq!(w.call(&set(b"w", b"1", 0)).status, 0);
    assert_eq!(w.call(&op("delete", b"w")).status, 0);
    assert_eq!(w.call(&get(b"w")).status, Status::Forbidden as u32);
    // RS256 with its kid.
    let mut rs = authed(
        server.addr,
        &rs256("rsa-1", "rsa-private.pem", &claims(json!({}))),
    );
    assert_eq!(rs.call(&get(b"canary")).status, 0);
}

#[test]
fn a_binary_connection_stops_when_its_token_expires() {
    let server = auth_server(&[]);
    // Within the 30 s leeway: accepted, and expires about 3 s from now.
    let token = hs256(&claims(json!({"exp": now() - 27})));
    let mut c = authed(server.addr, &token);
    assert_eq!(c.call(&set(b"e", b"1", 0)).status, 0);
    std::thread::sleep(Duration::from_secs(4));
    let answer = c.call(&get(b"e"));
    assert_eq!(answer.status, Status::InvalidCredentials as u32, "{answer:?}");
    assert_eq!(c.call(&op("health", b"")).status, 0);
}

#[test]
fn rest_checks_bearer_tokens_and_permissions() {
    let server = auth_server(&[]);
    let admin = hs256(&claims(json!({})));
    let mut h = HttpConn::open(server.http);
    let auth = bearer(&admin);
    let put = |h: &mut HttpConn, token: &str| {
        h.request(
            "PUT",
            "/api/v2/cache/canary",
            &[("Content-Type", "application/json"), ("Authorization", token)],
            br#"{"value":"alive"}"#,
        )
    };
    assert_eq!(put(&mut h, &auth).status, 200);

    for (name, token) in bad_tokens() {
        let header = bearer(&token);
        let r = put(&mut h, &header);
        assert_eq!((r.status, r.error_code()), (401, "AUTH_001".into()), "{name}");
        let r = h.request("GET", "/api/v2/cache/canary", &[("Authorization", &header)], b"");
        assert_eq!(r.status, 401, "{name}");
    }
    let r = h.get("/api/v2/cache/canary");
    assert_eq!((r.status, r.error_code()), (401, "AUTH_001".into()), "no header");
    let r = h.request(
        "GET",
        "/api/v2/cache/canary",
        &[("Authorization", "Basic dXNlcjpwdw==")],
        b"",
    );
    assert_eq!(r.status, 401, "another scheme");

    let reader = bearer(&hs256(&claims(json!({"scope": "cache:read"}))));
    let r = put(&mut h, &reader);
    assert_eq!((r.status, r.error_code()), (403, "AUTH_002".into()));
    for (method, path) in [
        ("DELETE", "/api/v2/cache/canary"),
        ("POST", "/api/v2/cache/flush"),
        ("GET", "/api/v2/cache/stats"),
        ("GET", "/health/metrics"),
        ("POST", "/api/v2/cache/reload"),
    ] {
        let r = h.request(method, path, &[("Authorization", &reader)], b"");
        assert_eq!(
            (r.status, r.error_code()),
            (403, "AUTH_002".into()),
            "{method} {path}"
        );
    }
    let r = h.request("GET", "/api/v2/cache/canary", &[("Authorization", &reader)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["cache_response"]["data"]["value"], "alive", "untouched");
    for path in ["/health/live", "/health/ready", "/api/v2/cache/health"] {
        assert_eq!(h.get(path).status, 200, "{path} stays open");
    }
    let metrics = bearer(&hs256(&claims(json!({"scope": "metrics:read"}))));
    assert_eq!(
        h.request("GET", "/health/metrics", &[("Authorization", &metrics)], b"")
            .status,
        200
    );
}

#[test]
fn reload_rotates_keys_by_kid() {
    let dir = temp_dir("rotate");
    let active = dir.join("active.pem");
    std::fs::copy(key_path("rsa-public.pem"), &active).unwrap();
    let spec = format!("2024={}", active.display());
    let mut server = TestServer::start(&["--auth-public-key-file", &spec]);
    let old = rs256(
        "2024",
        "rsa-private.pem",
        &claims(json!({"iss": null, "aud": null})),
    );
    let new = rs256(
        "2024",
        "rsa2-private.pem",
        &claims(json!({"iss": null, "aud": null})),
    );
    authed(server.addr, &old);
    assert_eq!(hello(&mut Raw::open(server.addr), &new, None).status, 101);

    // REST reload, allowed by cache:reload.
    std::fs::copy(key_path("rsa2-public.pem"), &active).unwrap();
    let mut h = HttpConn::open(server.http);
    let r = h.request(
        "POST",
        "/api/v2/cache/reload",
        &[("Authorization", &bearer(&old))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let data = &r.json()["cache_response"]["data"];
    assert!(
        data["reloaded"].as_array().unwrap().contains(&json!("auth_keys")),
        "{data}"
    );
    assert_eq!(data["errors"], json!([]), "{data}");
    for shard in 0..2 {
        authed(server.shard_addr(shard), &new);
        assert_eq!(
            hello(&mut Raw::open(server.shard_addr(shard)), &old, None).status,
            101
        );
    }

    // SIGHUP does the same.
    std::fs::copy(key_path("rsa-public.pem"), &active).unwrap();
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut raw = Raw::open(server.addr);
        if hello(&mut raw, &old, None).status == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "SIGHUP reloaded the keys");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.is_running());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn protected_mode_refuses_a_public_bind_without_auth() {
    let bin = common::server_bin();
    let run = |args: &[&str]| {
        Command::new(&bin)
            .args(common::FREE_PORTS)
            .args(["--shards", "1"])
            .args(["--max-memory", "16MiB"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let out = run(&["--bind", "0.0.0.0"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--insecure-no-auth") && stderr.contains("--bind"),
        "{stderr}"
    );
    let short = temp_dir("short").join("short.secret");
    std::fs::write(&short, "too short").unwrap();
    let out = run(&["--auth-hs256-secret-file", short.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
    // With --insecure-no-auth it serves.
    let args: Vec<&str> = ["--bind", "0.0.0.0", "--insecure-no-auth"]
        .into_iter()
        .chain(FREE_PORTS)
        .chain(["--shards", "1", "--max-memory", "16MiB"])
        .collect();
    let server = TestServer::start_with_args(&args);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
    assert_eq!(Raw::handshaken(addr).call(&op("health", b"")).status, 0);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dnd-security-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Key and value bytes held by all shards.
fn payload_bytes(raw: &mut Raw) -> u64 {
    stats(raw)["total"]["payload_bytes"]
        .as_u64()
        .expect("total.payload_bytes")
}

#[test]
fn encryption_and_compression_through_every_shard() {
    let dir = temp_dir("enc");
    let key = dir.join("key.hex");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let server = TestServer::start(&[
        "--encryption-key-file",
        key.to_str().unwrap(),
        "--encrypt-prefix",
        "secret:",
    ]);

    // Connection-wide encryption, on shard 0's port: half of the keys are
    // owned by shard 1 and forwarded there.
    let mut c = Raw::open(server.shard_addr(0));
    let answer = hello(
        &mut c,
        "",
        Some(Options {
            encryption: true,
            ..Default::default()
        }),
    );
    assert_eq!(answer.status, 0);
    let mut plain = server.connect();
    let before = payload_bytes(&mut plain);
    let value = vec![b'x'; 100];
    for i in 0..8 {
        let key = format!("enc{i}");
        assert_eq!(c.call(&set(key.as_bytes(), &value, 0)).status, 0);
    }
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..8)
        .map(|i| (format!("many{i}").into_bytes(), value.clone()))
        .collect();
    assert_eq!(c.call(&set_many(&entries, 0)).status, 0);
    let stored = payload_bytes(&mut plain) - before;
    let plain_size: u64 = (0..8).map(|i| format!("enc{i}").len() as u64 + 100).sum::<u64>()
        + (0..8).map(|i| format!("many{i}").len() as u64 + 100).sum::<u64>();
    assert_eq!(stored, plain_size + 16 * 40, "every value sealed (nonce + tag)");
    for i in 0..8 {
        let got = plain.call(&get(format!("enc{i}").as_bytes()));
        assert_eq!(&got.data[..], &value[..], "decrypted for any reader");
    }
    let got = plain.call(&keys_op(
        "get_many",
        &entries.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
    ));
    assert!(got.items.iter().all(|i| i.status == 0 && i.data[..] == value[..]));

    // Per-request compression saves space; prefixes force encryption.
    let before = payload_bytes(&mut plain);
    let big: Vec<u8> = b"goblin ".iter().cycle().take(8192).copied().collect();
    let mut req = set(b"zip", &big, 0);
    req.options = Some(Options {
        compression: true,
        ..Default::default()
    });
    assert_eq!(plain.call(&req).status, 0);
    assert!(payload_bytes(&mut plain) - before < 1024);
    assert_eq!(&plain.call(&get(b"zip")).data[..], &big[..]);
    let before = payload_bytes(&mut plain);
    assert_eq!(plain.call(&set(b"secret:1", b"v", 0)).status, 0);
    assert_eq!(payload_bytes(&mut plain) - before, 8 + 1 + 40);
    let _ = std::fs::remove_dir_all(dir);
}

/// ICD 5.1/5.2 ask for encryption: a server started without
/// `--encryption-key-file` serves them with a key generated at start.
#[test]
fn encryption_without_a_key_file_uses_a_key_generated_at_start() {
    let server = TestServer::start(&[]);
    let mut c = Raw::open(server.addr);
    let answer = hello(
        &mut c,
        "",
        Some(Options {
            encryption: true,
            ..Default::default()
        }),
    );
    assert_eq!(answer.status, 0, "{:?}", String::from_utf8_lossy(&answer.data));
    let mut req = set(b"k", b"secret value", 0);
    req.options = Some(Options {
        encryption: true,
        ..Default::default()
    });
    assert_eq!(c.call(&req).status, 0);
    let back = c.call(&get(b"k"));
    assert_eq!((back.status, back.data.as_ref()), (0, &b"secret value"[..]));
}

mod tls {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use common::tls::{connect, frame, self_signed};

    #[test]
    fn both_listeners_speak_tls() {
        let dir = temp_dir("tls");
        let (cert, key, config) = self_signed(&dir);
        let server = TestServer::start(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Binary protocol.
            let mut s = connect(&config, server.addr).await;
            let hello = CacheConnection {
                service_id: "tls_test".into(),
                protocol_version: 1,
                ..Default::default()
            };
            assert_eq!(frame(&mut s, &hello.encode_to_vec()).await.status, 0);
            assert_eq!(
                frame(&mut s, &set(b"t", b"over tls", 0).encode_to_vec())
                    .await
                    .status,
                0
            );
            let got = frame(&mut s, &get(b"t").encode_to_vec()).await;
            assert_eq!(&got.data[..], b"over tls");

            // REST.
            let mut h = connect(&config, server.http).await;
            h.write_all(b"GET /api/v2/cache/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            h.read_to_end(&mut answer).await.unwrap();
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.contains("over tls"), "{text}");
        });
        // A plain-text client gets nothing it could mistake for an answer.
        let mut raw = Raw::open(server.addr);
        let hello = CacheConnection {
            service_id: "plain".into(),
            ..Default::default()
        };
        raw.send_frame(&hello.encode_to_vec());
        assert!(raw.is_closed_within(Duration::from_secs(7)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
