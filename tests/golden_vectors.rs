//! Golden vectors shared by the client libraries (clients/python, clients/go).
//!
//! `clients/testdata/golden.json` holds protobuf messages encoded by prost
//! (hex, with the field values they encode) and XXH3-64 hashes computed by
//! `xxhash_rust`. The Go and Python test suites encode and decode against the
//! same file; this test rebuilds the document from prost and xxhash_rust and
//! fails when the file differs, so the file cannot go stale. Regenerate it
//! with `DND_GOLDEN_UPDATE=1 cargo test --test golden_vectors`.
//!
//! JSON conventions of the `fields` objects: proto field names; strings as
//! JSON strings; bytes as lowercase hex; uint32 and bool as JSON numbers and
//! booleans; uint64 as decimal strings (JSON numbers lose precision past
//! 2^53); fields at their default value are omitted, except a present nested
//! message, written as an object even when empty.
//!
//! The file also has `interop_peer`, the Rust side of the cross-language test
//! driven by clients/python/tests/test_interop.py.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use dnd_cache::proto::{
    CacheConnection, CacheOperation, CacheResponse, Entry, Handshake, ItemResult, Metadata, Options,
};
use prost::Message;
use serde_json::{json, Map, Value};
use xxhash_rust::xxh3::xxh3_64_with_seed;

const GOLDEN_PATH: &str = "clients/testdata/golden.json";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Builds a `fields` object, leaving out proto3 defaults.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Fields {
    fn string(mut self, name: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(name.into(), json!(v));
        }
        self
    }
    fn bytes(mut self, name: &str, v: &[u8]) -> Self {
        if !v.is_empty() {
            self.0.insert(name.into(), json!(hex(v)));
        }
        self
    }
    fn u32(mut self, name: &str, v: u32) -> Self {
        if v != 0 {
            self.0.insert(name.into(), json!(v));
        }
        self
    }
    fn u64(mut self, name: &str, v: u64) -> Self {
        if v != 0 {
            self.0.insert(name.into(), json!(v.to_string()));
        }
        self
    }
    fn bool(mut self, name: &str, v: bool) -> Self {
        if v {
            self.0.insert(name.into(), json!(true));
        }
        self
    }
    fn message(mut self, name: &str, v: Option<Value>) -> Self {
        if let Some(v) = v {
            self.0.insert(name.into(), v);
        }
        self
    }
    fn list(mut self, name: &str, v: Vec<Value>) -> Self {
        if !v.is_empty() {
            self.0.insert(name.into(), Value::Array(v));
        }
        self
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn options_json(m: &Options) -> Value {
    Fields::default()
        .bool("compression", m.compression)
        .bool("encryption", m.encryption)
        .string("consistency", &m.consistency)
        .done()
}

fn connection_json(m: &CacheConnection) -> Value {
    Fields::default()
        .string("service_id", &m.service_id)
        .string("auth_token", &m.auth_token)
        .message("options", m.options.as_ref().map(options_json))
        .u32("protocol_version", m.protocol_version)
        .string("correlation_id", &m.correlation_id)
        .done()
}

fn entry_json(m: &Entry) -> Value {
    Fields::default()
        .bytes("key", &m.key)
        .bytes("value", &m.value)
        .u32("ttl", m.ttl)
        .done()
}

fn operation_json(m: &CacheOperation) -> Value {
    Fields::default()
        .string("operation", &m.operation)
        .bytes("key", &m.key)
        .bytes("value", &m.value)
        .u32("ttl", m.ttl)
        .message("options", m.options.as_ref().map(options_json))
        .list("keys", m.keys.iter().map(|k| json!(hex(k))).collect())
        .list("entries", m.entries.iter().map(entry_json).collect())
        .string("correlation_id", &m.correlation_id)
        .u32("limit", m.limit)
        .bool("with_values", m.with_values)
        .done()
}

fn metadata_json(m: &Metadata) -> Value {
    Fields::default()
        .u64("created_at", m.created_at)
        .u64("expires_at", m.expires_at)
        .u64("version", m.version)
        .done()
}

fn item_json(m: &ItemResult) -> Value {
    Fields::default()
        .bytes("key", &m.key)
        .u32("status", m.status)
        .bytes("data", &m.data)
        .message("metadata", m.metadata.as_ref().map(metadata_json))
        .done()
}

fn handshake_json(m: &Handshake) -> Value {
    Fields::default()
        .u32("shard_id", m.shard_id)
        .u32("shard_count", m.shard_count)
        .list("shard_ports", m.shard_ports.iter().map(|p| json!(p)).collect())
        .string("hash", &m.hash)
        .u64("hash_seed", m.hash_seed)
        .string("server_version", &m.server_version)
        .u32("max_frame_bytes", m.max_frame_bytes)
        .u32("max_item_bytes", m.max_item_bytes)
        .done()
}

fn response_json(m: &CacheResponse) -> Value {
    Fields::default()
        .u32("status", m.status)
        .bytes("data", &m.data)
        .message("metadata", m.metadata.as_ref().map(metadata_json))
        .list("items", m.items.iter().map(item_json).collect())
        .string("correlation_id", &m.correlation_id)
        .message("handshake", m.handshake.as_ref().map(handshake_json))
        .bool("truncated", m.truncated)
        .done()
}

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn connections() -> Vec<(&'static str, CacheConnection)> {
    vec![
        (
            "connection_minimal",
            CacheConnection {
                service_id: "svc".into(),
                protocol_version: 1,
                ..Default::default()
            },
        ),
        (
            "connection_full",
            CacheConnection {
                service_id: "character_service".into(),
                auth_token: "eyJhbGciOiJIUzI1NiJ9.e30.sig".into(),
                options: Some(Options {
                    compression: true,
                    encryption: true,
                    consistency: "strong".into(),
                }),
                protocol_version: 1,
                correlation_id: "corr-1".into(),
            },
        ),
        (
            "connection_empty_options",
            CacheConnection {
                service_id: "s".into(),
                options: Some(Options::default()),
                ..Default::default()
            },
        ),
    ]
}

fn operations() -> Vec<(&'static str, CacheOperation)> {
    vec![
        (
            "get",
            CacheOperation {
                operation: "get".into(),
                key: b(b"k1"),
                ..Default::default()
            },
        ),
        (
            "set_ttl",
            CacheOperation {
                operation: "set".into(),
                key: b(b"character:1234"),
                value: b(b"{\"name\":\"Aria\",\"level\":7}"),
                ttl: 3600,
                options: Some(Options {
                    consistency: "eventual".into(),
                    ..Default::default()
                }),
                correlation_id: "c-42".into(),
                ..Default::default()
            },
        ),
        (
            "set_binary_large_ttl",
            CacheOperation {
                operation: "set".into(),
                key: Bytes::from(vec![0xe2, 0x82, 0xac, b'k', 0xff]),
                value: Bytes::from((0..=255u8).collect::<Vec<u8>>()),
                ttl: u32::MAX,
                ..Default::default()
            },
        ),
        (
            "get_many",
            CacheOperation {
                operation: "get_many".into(),
                keys: vec![b(b"char:1"), b(b"char:2"), b(b"")],
                ..Default::default()
            },
        ),
        (
            "set_many",
            CacheOperation {
                operation: "set_many".into(),
                entries: vec![
                    Entry {
                        key: b(b"a"),
                        value: b(b"1"),
                        ttl: 0,
                    },
                    Entry {
                        key: b(b"b"),
                        value: b(b""),
                        ttl: 60,
                    },
                ],
                ttl: 300,
                ..Default::default()
            },
        ),
        (
            "pattern",
            CacheOperation {
                operation: "pattern".into(),
                key: b(b"char:*"),
                limit: 100_000,
                with_values: true,
                ..Default::default()
            },
        ),
    ]
}

fn responses() -> Vec<(&'static str, CacheResponse)> {
    vec![
        (
            "miss",
            CacheResponse {
                status: 1,
                ..Default::default()
            },
        ),
        ("empty", CacheResponse::default()),
        (
            "hit",
            CacheResponse {
                data: b(b"hello"),
                metadata: Some(Metadata {
                    created_at: 1_756_512_000_123,
                    expires_at: 1_756_515_600_123,
                    version: u64::MAX,
                }),
                correlation_id: "c-42".into(),
                ..Default::default()
            },
        ),
        (
            "handshake",
            CacheResponse {
                handshake: Some(Handshake {
                    shard_id: 1,
                    shard_count: 2,
                    shard_ports: vec![7100, 7101],
                    hash: "xxh3_64".into(),
                    hash_seed: 0x9E37_79B9_7F4A_7C15,
                    server_version: "0.1.0".into(),
                    max_frame_bytes: 16 << 20,
                    max_item_bytes: 1 << 20,
                    // A node alone: no cluster fields on the wire.
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "batch",
            CacheResponse {
                items: vec![
                    ItemResult {
                        key: b(b"char:1"),
                        status: 0,
                        data: b(b"v1"),
                        metadata: Some(Metadata {
                            created_at: 1,
                            expires_at: 0,
                            version: 2,
                        }),
                    },
                    ItemResult {
                        key: b(b"char:2"),
                        status: 1,
                        ..Default::default()
                    },
                    ItemResult {
                        key: b(b"char:3"),
                        status: 2,
                        ..Default::default()
                    },
                ],
                truncated: true,
                ..Default::default()
            },
        ),
        (
            "error",
            CacheResponse {
                status: 102,
                data: b(b"insufficient permissions"),
                ..Default::default()
            },
        ),
    ]
}

/// Unknown fields of every wire type, appended to an encoded message: decoders
/// must skip them (a newer server may add fields).
fn unknown_fields() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend([0xf8, 0x01, 0x96, 0x01]); // field 31, varint 150
    out.extend([0xfa, 0x01, 0x03, 0x01, 0x02, 0x03]); // field 31, len 3
    out.extend([0x8d, 0x02, 1, 2, 3, 4]); // field 33, fixed32
    out.extend([0x89, 0x02, 1, 2, 3, 4, 5, 6, 7, 8]); // field 33, fixed64
    out
}

fn message_vectors() -> Vec<Value> {
    let mut out = Vec::new();
    let mut push = |name: &str, ty: &str, fields: Value, encoded: Vec<u8>| {
        out.push(json!({"name": name, "type": ty, "fields": fields, "hex": hex(&encoded)}));
    };
    for (name, m) in connections() {
        push(name, "CacheConnection", connection_json(&m), m.encode_to_vec());
    }
    for (name, m) in operations() {
        push(name, "CacheOperation", operation_json(&m), m.encode_to_vec());
    }
    for (name, m) in responses() {
        push(name, "CacheResponse", response_json(&m), m.encode_to_vec());
    }
    out
}

/// Encodings that carry unknown fields: to decode only (re-encoding drops them).
fn decode_only_vectors() -> Vec<Value> {
    let (_, hit) = responses().into_iter().find(|(n, _)| *n == "hit").unwrap();
    let (_, hs) = responses().into_iter().find(|(n, _)| *n == "handshake").unwrap();
    let mut out = Vec::new();
    for (name, m) in [
        ("hit_with_unknown_fields", hit),
        ("handshake_with_unknown_fields", hs),
    ] {
        let mut encoded = unknown_fields();
        encoded.extend(m.encode_to_vec());
        encoded.extend(unknown_fields());
        assert_eq!(
            CacheResponse::decode(&encoded[..]).unwrap(),
            m,
            "prost skips unknown fields"
        );
        out.push(
            json!({"name": name, "type": "CacheResponse", "fields": response_json(&m), "hex": hex(&encoded)}),
        );
    }
    out
}

/// Inputs covering every XXH3-64 code path: empty, 1-3, 4-8, 9-16, 17-128,
/// 129-240 bytes, and long inputs of one block, several blocks and a partial
/// last stripe (a block is 1024 bytes with the default secret).
fn xxh3_vectors() -> Vec<Value> {
    let lengths = [
        0usize, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 32, 33, 64, 65, 96, 97, 128, 129, 200, 240, 241, 255, 256,
        1023, 1024, 1025, 2048, 4099,
    ];
    let seeds = [0u64, 1, 0x9E37_79B9_7F4A_7C15, u64::MAX, 0x0000_0000_DEAD_BEEF];
    let mut out = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        let input: Vec<u8> = (0..len).map(|j| ((j * 131 + i * 7 + 13) % 251) as u8).collect();
        let seed = seeds[i % seeds.len()];
        let other = seeds[(i + 2) % seeds.len()];
        for seed in [seed, other] {
            let hash = xxh3_64_with_seed(&input, seed);
            out.push(json!({"input_hex": hex(&input), "seed": seed.to_string(), "hash": hash.to_string()}));
        }
    }
    for key in [
        "character:1234",
        "campaign:1234",
        "char:1",
        "k1",
        "image:metadata:0001",
    ] {
        for seed in [0u64, 42, 0x0123_4567_89AB_CDEF] {
            let hash = xxh3_64_with_seed(key.as_bytes(), seed);
            out.push(
                json!({"input_hex": hex(key.as_bytes()), "seed": seed.to_string(), "hash": hash.to_string()}),
            );
        }
    }
    out
}

fn golden_document() -> String {
    let doc = json!({
        "about": "Generated by tests/golden_vectors.rs from prost and xxhash_rust; do not edit. Bytes are hex, uint64 are decimal strings, default fields are omitted.",
        "messages": message_vectors(),
        "decode_only": decode_only_vectors(),
        "xxh3_64": xxh3_vectors(),
    });
    serde_json::to_string_pretty(&doc).unwrap() + "\n"
}

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn golden_file_matches_prost_and_xxhash_rust() {
    let expected = golden_document();
    let path = repo_path(GOLDEN_PATH);
    if std::env::var_os("DND_GOLDEN_UPDATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).expect("clients/testdata/golden.json exists");
    assert!(
        actual == expected,
        "{GOLDEN_PATH} is stale: regenerate with DND_GOLDEN_UPDATE=1 cargo test --test golden_vectors"
    );
}

#[test]
fn golden_hex_decodes_back_to_the_same_messages() {
    for (name, m) in connections() {
        assert_eq!(
            CacheConnection::decode(&m.encode_to_vec()[..]).unwrap(),
            m,
            "{name}"
        );
    }
    for (name, m) in operations() {
        assert_eq!(
            CacheOperation::decode(&m.encode_to_vec()[..]).unwrap(),
            m,
            "{name}"
        );
    }
    // The protocol page's example bytes are those of the golden vectors.
    let doc: Value = serde_json::from_str(&golden_document()).unwrap();
    let find = |n: &str| {
        doc["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap()["hex"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(find("connection_minimal"), "0a037376633001");
    assert_eq!(find("get"), "0a0367657412026b31");
    assert_eq!(find("miss"), "0801");
}

// ---------------------------------------------------------------------------
// Rust side of the cross-language test.

/// One frame: 4-byte big-endian length, then the message.
fn write_frame(stream: &mut TcpStream, m: &impl Message) {
    let body = m.encode_to_vec();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    stream.write_all(&frame).unwrap();
}

fn read_response(stream: &mut TcpStream) -> CacheResponse {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    CacheResponse::decode(&body[..]).unwrap()
}

fn connect(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let hello = CacheConnection {
        service_id: "rust_interop".into(),
        protocol_version: 1,
        ..Default::default()
    };
    write_frame(&mut stream, &hello);
    let answer = read_response(&mut stream);
    assert_eq!(answer.status, 0, "handshake refused: {answer:?}");
    assert!(answer.handshake.is_some(), "handshake answer lacks `handshake`");
    stream
}

fn rust_set(stream: &mut TcpStream, key: &[u8], value: &[u8]) {
    let op = CacheOperation {
        operation: "set".into(),
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ttl: 600,
        ..Default::default()
    };
    write_frame(stream, &op);
    let answer = read_response(stream);
    assert_eq!(answer.status, 0, "set failed: {answer:?}");
}

fn rust_get(stream: &mut TcpStream, key: &[u8]) -> Option<Vec<u8>> {
    let op = CacheOperation {
        operation: "get".into(),
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    };
    write_frame(stream, &op);
    let answer = read_response(stream);
    match answer.status {
        0 => Some(answer.data.to_vec()),
        1 | 2 => None,
        s => panic!("get failed with status {s}: {answer:?}"),
    }
}

/// Starts the release server on ephemeral ports; returns it and its address.
fn start_server(bin: &str) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(["--bind", "127.0.0.1", "--shards", "2", "--max-memory", "64MiB"])
        .args(common::FREE_PORTS)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cache-server");
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("binary="))
        .unwrap_or_else(|| panic!("no binary= in {line:?}"))
        .to_string();
    (child, addr)
}

/// With `DND_INTEROP_ADDR` set (by clients/python/tests/test_interop.py):
/// for each `DND_INTEROP_SET` entry `key_hex=value_hex` sets the key, and for
/// each `DND_INTEROP_GET` key_hex prints `INTEROP_VALUE key_hex value_hex`
/// (or `INTEROP_MISS key_hex`). Without it, a round trip against a server of
/// its own when `DND_CACHE_SERVER_BIN` names one.
#[test]
fn interop_peer() {
    if let Ok(addr) = std::env::var("DND_INTEROP_ADDR") {
        let mut stream = connect(&addr);
        let list = |var: &str| -> Vec<String> {
            std::env::var(var)
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        for entry in list("DND_INTEROP_SET") {
            let (k, v) = entry.split_once('=').expect("key_hex=value_hex");
            rust_set(&mut stream, &unhex(k), &unhex(v));
        }
        for k in list("DND_INTEROP_GET") {
            match rust_get(&mut stream, &unhex(&k)) {
                Some(v) => println!("INTEROP_VALUE {k} {}", hex(&v)),
                None => println!("INTEROP_MISS {k}"),
            }
        }
        return;
    }
    let Ok(bin) = std::env::var("DND_CACHE_SERVER_BIN") else {
        eprintln!("interop_peer: DND_CACHE_SERVER_BIN not set, nothing to talk to");
        return;
    };
    let (mut server, addr) = start_server(&bin);
    let mut stream = connect(&addr);
    rust_set(&mut stream, b"rust:roundtrip", b"\x00\xffvalue");
    assert_eq!(
        rust_get(&mut stream, b"rust:roundtrip").as_deref(),
        Some(&b"\x00\xffvalue"[..])
    );
    assert_eq!(rust_get(&mut stream, b"rust:absent"), None);
    server.kill().ok();
    server.wait().ok();
}
