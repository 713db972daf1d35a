//! Plaintext of encrypted values does not stay in the server's memory
//! (issue 19, item 8): after an encrypted value is written and read back
//! (over the binary protocol and REST) and later traffic churns the
//! buffers, no run of its plaintext is found anywhere in the process's
//! memory, read through `/proc/PID/mem` as a memory dump would.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use common::http::HttpConn;
use common::*;
use dnd_cache::proto::{CacheOperation, Options};

/// Shortest run of the plaintext that counts as found.
const RUN: usize = 64;

/// 98 KB of text that never repeats itself (a 64-bit LCG in hex), so any
/// run of it found in memory is a copy of the value.
fn plaintext() -> Vec<u8> {
    let mut text = Vec::with_capacity(98_016);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while text.len() < 98_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        text.extend_from_slice(format!("{x:016x}").as_bytes());
    }
    text.truncate(98_000);
    text
}

/// Bytes of the process's memory that lie in runs of at least [`RUN`]
/// bytes equal to part of `secret` (which must be lowercase hex).
fn plaintext_bytes_in_memory(pid: u32, secret: &[u8]) -> usize {
    // Every 8-byte window of the secret, by value: where a run may start.
    let windows: HashMap<[u8; 8], Vec<usize>> =
        secret
            .windows(8)
            .enumerate()
            .fold(HashMap::new(), |mut m, (i, w)| {
                m.entry(w.try_into().unwrap()).or_default().push(i);
                m
            });
    let mem = File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem (needs ptrace access)");
    let maps = BufReader::new(File::open(format!("/proc/{pid}/maps")).unwrap());
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let mut found = 0;
    let mut buf = Vec::new();
    for line in maps.lines() {
        let line = line.unwrap();
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        buf.resize((end - start) as usize, 0);
        let Ok(n) = mem.read_at(&mut buf, start) else {
            continue;
        };
        let region = &buf[..n];
        // Runs of hex text, then the parts of them that are the secret.
        let mut i = 0;
        while i < region.len() {
            if !hex(region[i]) {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < region.len() && hex(region[i]) {
                i += 1;
            }
            let n = secret_bytes_in(&region[run_start..i], secret, &windows);
            if n > 0 && std::env::var_os("DEBUG_SCAN").is_some() {
                eprintln!("{n} bytes at {:#x} in {line}", start + run_start as u64);
            }
            found += n;
        }
    }
    found
}

fn secret_bytes_in(text: &[u8], secret: &[u8], windows: &HashMap<[u8; 8], Vec<usize>>) -> usize {
    let mut found = 0;
    let mut p = 0;
    while p + RUN <= text.len() {
        let longest = windows
            .get(&<[u8; 8]>::try_from(&text[p..p + 8]).unwrap())
            .into_iter()
            .flatten()
            .map(|&s| {
                text[p..]
                    .iter()
                    .zip(&secret[s..])
                    .take_while(|(a, b)| a == b)
                    .count()
            })
            .max()
            .unwrap_or(0);
        if longest >= RUN {
            if std::env::var_os("DEBUG_SCAN").is_some() {
                let at = windows[&<[u8; 8]>::try_from(&text[p..p + 8]).unwrap()].clone();
                eprintln!("run of {longest} starting at secret offsets {at:?}");
            }
            found += longest;
            p += longest;
        } else {
            p += 1;
        }
    }
    found
}

fn encrypted_set(key: &[u8], value: &[u8]) -> CacheOperation {
    CacheOperation {
        options: Some(Options {
            encryption: true,
            ..Default::default()
        }),
        ..set(key, value, 0)
    }
}

#[test]
fn no_plaintext_of_an_encrypted_value_stays_in_memory() {
    written_read_and_scanned(1);
}

/// Two shards, and the value written and read through the shard that does
/// not own its key: the request frames and answers travel between shards
/// (`server::dispatch::forward`), and those copies are wiped as well.
#[test]
fn no_plaintext_stays_in_memory_when_a_shard_forwards_the_value() {
    written_read_and_scanned(2);
}

fn written_read_and_scanned(shards: usize) {
    let dir = std::env::temp_dir().join(format!("dnd-cache-plaintext-{}-{shards}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let shard_count = shards.to_string();
    let server = TestServer::start(&[
        "--shards",
        &shard_count,
        "--encryption-key-file",
        key_file.to_str().unwrap(),
    ]);
    let secret = plaintext();

    // With several shards, talk to one that does not own the key.
    let mut c = if shards == 1 {
        server.connect()
    } else {
        let mut probe = Raw::open(server.addr);
        let seed = probe.handshake("svc").handshake.unwrap().hash_seed;
        let not_owner = (owner(b"secret:1", seed, shards) + 1) % shards;
        Raw::handshaken(server.shard_addr(not_owner))
    };
    assert_eq!(c.call(&encrypted_set(b"secret:1", &secret)).status, 0);
    let back = c.call(&get(b"secret:1"));
    assert_eq!((back.status, back.data.as_ref()), (0, &secret[..]));
    let mut rest = HttpConn::open(server.http);
    let r = rest.request(
        "GET",
        "/api/v2/cache/secret:1",
        &[("Accept", "application/octet-stream")],
        b"",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &secret[..]));

    // Later traffic reuses (and frees and reallocates) the same buffers.
    let filler = Bytes::from(vec![b'z'; 8 * 1024]);
    for i in 0..300 {
        let key = format!("filler:{}", i % 50);
        assert_eq!(c.call(&set(key.as_bytes(), &filler, 0)).status, 0);
        assert_eq!(c.call(&get(key.as_bytes())).status, 0);
    }
    let r = rest.request("GET", "/api/v2/cache/filler:1", &[], b"");
    assert_eq!(r.status, 200);

    if shards > 1 {
        let stats = stats(&mut c);
        let forwarded: u64 = (0..shards)
            .map(|s| stats["shards"][s]["forwarded_ops"].as_u64().unwrap())
            .sum();
        assert!(forwarded >= 2, "the value went through a forward: {forwarded}");
    }
    let found = plaintext_bytes_in_memory(server.child.id(), &secret);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found, 0,
        "{found} bytes of the encrypted value's plaintext are in the server's memory"
    );
}

/// Under TLS: rustls decrypts each record in a buffer of its own and
/// encrypts answers from ours; the value is written and read back over a
/// TLS connection, the same churn follows, and the scan finds no copy.
/// (The scan finds the value when it is stored without encryption: 98,000
/// bytes, its one copy in the slab.)
#[test]
fn no_plaintext_stays_in_memory_under_tls() {
    use common::tls::{connect, frame, self_signed};
    use prost::Message;

    let dir = std::env::temp_dir().join(format!("dnd-cache-plaintext-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let (cert, key, config) = self_signed(&dir);
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--encryption-key-file",
        key_file.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let secret = plaintext();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = connect(&config, server.addr).await;
        let hello = dnd_cache::proto::CacheConnection {
            service_id: "tls_secret".into(),
            protocol_version: 1,
            ..Default::default()
        };
        assert_eq!(frame(&mut s, &hello.encode_to_vec()).await.status, 0);
        assert_eq!(
            frame(&mut s, &encrypted_set(b"secret:1", &secret).encode_to_vec())
                .await
                .status,
            0
        );
        let back = frame(&mut s, &get(b"secret:1").encode_to_vec()).await;
        assert_eq!((back.status, back.data.as_ref()), (0, &secret[..]));
        let filler = Bytes::from(vec![b'z'; 8 * 1024]);
        for i in 0..300 {
            let key = format!("filler:{}", i % 50);
            assert_eq!(
                frame(&mut s, &set(key.as_bytes(), &filler, 0).encode_to_vec())
                    .await
                    .status,
                0
            );
            assert_eq!(
                frame(&mut s, &get(key.as_bytes()).encode_to_vec()).await.status,
                0
            );
        }
    });
    let found = plaintext_bytes_in_memory(server.child.id(), &secret);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found, 0,
        "{found} bytes of the encrypted value's plaintext are in the server's memory (TLS)"
    );
}
