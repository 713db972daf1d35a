//! Every operation and status code of the binary protocol, pipelining,
//! routing across shards, batches and TTLs, against the real server.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use dnd_cache::proto::CacheOperation;
use dnd_cache::Status;

const OK: u32 = 0;

#[test]
fn handshake_tells_the_shard_map() {
    let server = TestServer::start(&["--shards", "3"]);
    let mut raw = Raw::open(server.addr);
    let answer = raw.handshake("character_service");
    assert_eq!(answer.status, OK);
    let hs = answer.handshake.expect("handshake info");
    assert_eq!(hs.shard_count, 3);
    assert_eq!(
        hs.shard_ports,
        server
            .shard_ports
            .iter()
            .map(|&p| u32::from(p))
            .collect::<Vec<_>>()
    );
    assert_eq!(hs.hash, "xxh3_64");
    assert_eq!(hs.max_item_bytes, 1 << 20);
    assert!(hs.shard_id < 3);
}

#[test]
fn set_get_delete_and_their_statuses() {
    let server = TestServer::start(&[]);
    let mut c = server.connect();
    let stored = c.call(&set(b"character:1234", b"{\"hp\":12}", 60));
    assert_eq!(stored.status, OK);
    let meta = stored.metadata.expect("metadata on set");
    assert!(meta.created_at > 0 && meta.version > 0);
    assert_eq!(meta.expires_at, meta.created_at + 60_000);

    let got = c.call(&get(b"character:1234"));
    assert_eq!(got.status, OK);
    assert_eq!(&got.data[..], b"{\"hp\":12}");
    assert_eq!(got.metadata, Some(meta));

    let again = c.call(&set(b"character:1234", b"v2", 0));
    assert!(
        again.metadata.unwrap().version > meta.version,
        "version grows with every write"
    );
    let got = c.call(&get(b"character:1234"));
    assert_eq!(
        got.metadata.unwrap().expires_at,
        got.metadata.unwrap().created_at + 3_600_000,
        "default TTL"
    );

    assert_eq!(c.call(&op("delete", b"character:1234")).status, OK);
    assert_eq!(
        c.call(&op("delete", b"character:1234")).status,
        Status::NotFound as u32
    );
    let miss = c.call(&get(b"character:1234"));
    assert_eq!(miss.status, Status::NotFound as u32);
    assert!(miss.data.is_empty(), "a miss carries no message");
}

#[test]
fn correlation_id_is_echoed() {
    let server = TestServer::start(&[]);
    let mut c = server.connect();
    for name in ["get", "set", "stats", "get_many", "nonsense"] {
        let mut o = set(b"k", b"v", 0);
        o.operation = name.into();
        o.correlation_id = format!("corr-{name}");
        assert_eq!(c.call(&o).correlation_id, format!("corr-{name}"), "{name}");
    }
}

#[test]
fn expired_items_answer_cache_002_then_cache_001() {
    let server = TestServer::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.call(&set(b"short", b"lived", 1)).status, OK);
    assert_eq!(c.call(&get(b"short")).status, OK);
    std::thread::sleep(Duration::from_millis(1100));
    let first = c.call(&get(b"short"));
    // The background sweep may already have reclaimed it.
    assert!(first.status == Status::Expired as u32 || first.status == Status::NotFound as u32);
    assert_eq!(c.call(&get(b"short")).status, Status::NotFound as u32);
}

#[test]
fn expired_item_found_by_get_is_cache_002() {
    // The background sweep visits about 200,000 index entries a second per
    // shard, so right after 100,000 items expire most are still indexed.
    let server = TestServer::start(&["--shards", "1"]);
    let mut c = server.connect();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..100_000)
        .map(|i| (format!("ttl:{i}").into_bytes(), b"x".to_vec()))
        .collect();
    for chunk in entries.chunks(10_000) {
        assert_eq!(c.call(&set_many(chunk, 1)).status, OK);
    }
    // An item expires one second after its version, and versions, strictly
    // increasing per write (a hybrid clock), run up to one microsecond per
    // write ahead of the wall clock during a burst: 100 ms for 100,000.
    std::thread::sleep(Duration::from_millis(1150));
    let keys: Vec<Vec<u8>> = entries[90_000..].iter().map(|(k, _)| k.clone()).collect();
    let answer = c.call(&keys_op("get_many", &keys));
    let expired = answer
        .items
        .iter()
        .filter(|i| i.status == Status::Expired as u32)
        .count();
    let other: Vec<u32> = answer
        .items
        .iter()
        .map(|i| i.status)
        .filter(|&s| s != Status::Expired as u32 && s != Status::NotFound as u32)
        .collect();
    assert!(
        other.is_empty(),
        "statuses other than expired or not found: {:?}",
        &other[..other.len().min(5)]
    );
    assert!(expired > 0, "some expired items should still have been found");
    assert!(
        answer.items.iter().all(|i| i.data.is_empty()),
        "no value past its expiry"
    );
}

#[test]
fn invalid_keys_are_cache_004() {
    let server = TestServer::start(&[]);
    let mut c = server.connect();
    let long = vec![b'k'; 251];
    for key in [&b""[..], b"has space", b"tab\there", b"nl\n", &long[..]] {
        assert_eq!(c.call(&get(key)).status, Status::InvalidKey as u32, "{key:?}");
        assert_eq!(c.call(&set(key, b"v", 0)).status, Status::InvalidKey as u32);
        assert_eq!(c.call(&op("delete", key)).status, Status::InvalidKey as u32);
    }
    let max = vec![b'k'; 250];
    assert_eq!(c.call(&set(&max, b"v", 0)).status, OK);
    assert_eq!(c.call(&set("clé:ü".as_bytes(), b"v", 0)).status, OK);
}

#[test]
fn oversized_items_and_full_memory_are_cache_003() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--max-memory",
        "2MiB",
        "--max-item-bytes",
        "64KiB",
        "--eviction",
        "noeviction",
    ]);
    let mut c = server.connect();
    let big = vec![7u8; 64 * 1024];
    let refused = c.call(&set(b"big", &big, 0));
    assert_eq!(refused.status, Status::StorageFull as u32);
    assert!(!refused.data.is_empty());
    let value = vec![1u8; 60 * 1024];
    let mut stored = 0;
    loop {
        let answer = c.call(&set(format!("fill:{stored}").as_bytes(), &value, 0));
        if answer.status == Status::StorageFull as u32 {
            break;
        }
        assert_eq!(answer.status, OK);
        stored += 1;
        assert!(stored < 100, "2 MiB must fill up");
    }
    assert!(stored >= 10, "{stored}");
    for i in 0..stored {
        let got = c.call(&get(format!("fill:{i}").as_bytes()));
        assert_eq!(got.status, OK, "earlier items stay intact");
        assert_eq!(got.data.len(), value.len());
    }
}

#[test]
fn unknown_and_malformed_operations_keep_the_connection() {
    let server = TestServer::start(&[]);
    let mut c = server.connect();
    let unknown = c.call(&op("explode", b"k"));
    assert_eq!(unknown.status, Status::UnknownOperation as u32);
    assert!(String::from_utf8_lossy(&unknown.data).contains("explode"));
    c.send_frame(&[0xff, 0xff, 0xff]);
    assert_eq!(c.recv().unwrap().status, Status::Malformed as u32);
    let mut bad_option = set(b"k", b"v", 0);
    bad_option.options = Some(dnd_cache::proto::Options {
        consistency: "sometimes".into(),
        ..Default::default()
    });
    assert_eq!(c.call(&bad_option).status, Status::Malformed as u32);
    assert_eq!(
        c.call(&set(b"k", b"v", 0)).status,
        OK,
        "the connection still serves"
    );
}

#[test]
fn a_thousand_pipelined_requests_answer_in_order() {
    let server = TestServer::start(&["--shards", "3"]);
    let mut c = server.connect();
    let mut batch = Vec::new();
    for i in 0..1000u32 {
        let key = format!("pipe:{}", i / 2);
        let o = if i % 2 == 0 {
            set(key.as_bytes(), format!("value-{i}").as_bytes(), 0)
        } else {
            get(key.as_bytes())
        };
        let mut o = o;
        o.correlation_id = i.to_string();
        let body = prost::Message::encode_to_vec(&o);
        batch.extend_from_slice(&(body.len() as u32).to_be_bytes());
        batch.extend_from_slice(&body);
    }
    use std::io::Write;
    c.stream.write_all(&batch).unwrap();
    for i in 0..1000u32 {
        let answer = c.recv().expect("answer");
        assert_eq!(answer.correlation_id, i.to_string(), "answers in request order");
        assert_eq!(answer.status, OK);
        if i % 2 == 1 {
            assert_eq!(answer.data, Bytes::from(format!("value-{}", i - 1)));
        }
    }
}

#[test]
fn keys_spread_over_shards_through_one_connection_and_through_shard_ports() {
    let server = TestServer::start(&["--shards", "4"]);
    let mut c = server.connect();
    let mut hello = Raw::open(server.addr);
    let hs = hello.handshake("svc").handshake.unwrap();
    let mut per_shard = [0usize; 4];
    for i in 0..400 {
        let key = format!("campaign:{i}");
        per_shard[owner(key.as_bytes(), hs.hash_seed, 4)] += 1;
        assert_eq!(c.call(&set(key.as_bytes(), key.as_bytes(), 0)).status, OK);
    }
    assert!(
        per_shard.iter().all(|&n| n > 50),
        "keys reach every shard: {per_shard:?}"
    );
    let stats = stats(&mut c);
    assert_eq!(stats["total"]["items"], 400);
    for shard in 0..4 {
        assert_eq!(
            stats["shards"][shard]["items"], per_shard[shard],
            "shard {shard} holds its keys"
        );
    }
    // Every shard port serves every key: owned ones directly, others forwarded.
    for shard in 0..4 {
        let mut direct = Raw::handshaken(server.shard_addr(shard));
        for i in (0..400).step_by(7) {
            let key = format!("campaign:{i}");
            let answer = direct.call(&get(key.as_bytes()));
            assert_eq!(answer.status, OK);
            assert_eq!(&answer.data[..], key.as_bytes());
        }
    }
}

#[test]
fn shard_aware_traffic_is_never_forwarded() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut probe = Raw::open(server.addr);
    let hs = probe.handshake("svc").handshake.unwrap();
    let mut conns: Vec<Raw> = (0..2).map(|s| Raw::handshaken(server.shard_addr(s))).collect();
    for i in 0..200 {
        let key = format!("image:{i}");
        let o = owner(key.as_bytes(), hs.hash_seed, 2);
        assert_eq!(conns[o].call(&set(key.as_bytes(), b"meta", 0)).status, OK);
        assert_eq!(conns[o].call(&get(key.as_bytes())).status, OK);
    }
    let stats = stats(&mut conns[0]);
    let forwarded: u64 = (0..2)
        .map(|s| stats["shards"][s]["forwarded_ops"].as_u64().unwrap())
        .sum();
    assert_eq!(forwarded, 0, "shard-aware requests need no hop");
}

#[test]
fn batch_operations_span_shards_and_keep_key_order() {
    let server = TestServer::start(&["--shards", "3"]);
    let mut c = server.connect();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..50)
        .map(|i| (format!("char:{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    let mut with_bad = entries.clone();
    with_bad.insert(10, (b"bad key".to_vec(), b"x".to_vec()));
    let stored = c.call(&set_many(&with_bad, 120));
    assert_eq!(stored.status, OK);
    assert_eq!(stored.items.len(), 51);
    for (item, (key, _)) in stored.items.iter().zip(&with_bad) {
        assert_eq!(&item.key[..], &key[..]);
        let want = if key == b"bad key" {
            Status::InvalidKey as u32
        } else {
            OK
        };
        assert_eq!(item.status, want);
    }
    let mut keys: Vec<Vec<u8>> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.reverse();
    keys.push(b"char:missing".to_vec());
    let got = c.call(&keys_op("get_many", &keys));
    assert_eq!(got.items.len(), keys.len());
    for (item, key) in got.items.iter().zip(&keys) {
        assert_eq!(&item.key[..], &key[..], "items in request order");
        if key == b"char:missing" {
            assert_eq!(item.status, Status::NotFound as u32);
        } else {
            assert_eq!(item.status, OK);
            assert_eq!(
                &item.data[..],
                format!("v{}", &String::from_utf8_lossy(key)[5..]).as_bytes()
            );
            assert!(item.metadata.unwrap().expires_at > 0);
        }
    }
    let deleted = c.call(&keys_op("delete_many", &keys[..10]));
    assert_eq!(deleted.items.len(), 10);
    assert!(deleted.items.iter().all(|i| i.status == OK));
    let again = c.call(&keys_op("get_many", &keys[..12]));
    let missing = again
        .items
        .iter()
        .filter(|i| i.status == Status::NotFound as u32)
        .count();
    assert_eq!(missing, 10);

    let too_many: Vec<Vec<u8>> = (0..10_001).map(|i| format!("k{i}").into_bytes()).collect();
    assert_eq!(
        c.call(&keys_op("get_many", &too_many)).status,
        Status::BatchTooLarge as u32
    );
}

#[test]
fn pattern_flush_stats_and_health_cover_every_shard() {
    let server = TestServer::start(&["--shards", "3"]);
    let mut c = server.connect();
    for i in 0..30 {
        c.call(&set(format!("character:{i}").as_bytes(), b"c", 0));
        c.call(&set(format!("campaign:{i}").as_bytes(), b"p", 0));
    }
    let found = c.call(&op("pattern", b"character:*"));
    assert_eq!(found.status, OK);
    assert_eq!(found.items.len(), 30);
    assert!(found
        .items
        .iter()
        .all(|i| i.key.starts_with(b"character:") && i.data.is_empty()));
    assert!(!found.truncated);
    let limited = c.call(&CacheOperation {
        limit: 5,
        with_values: true,
        ..op("pattern", b"c*")
    });
    assert_eq!(limited.items.len(), 5);
    assert!(limited.truncated);
    assert!(limited.items.iter().all(|i| !i.data.is_empty()));
    assert_eq!(c.call(&op("pattern", b"")).status, Status::InvalidKey as u32);

    let health = c.call(&op("health", b""));
    let health: serde_json::Value = serde_json::from_slice(&health.data).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["shards"], 3);

    let s = stats(&mut c);
    assert_eq!(s["total"]["items"], 60);
    assert_eq!(s["shards"].as_array().unwrap().len(), 3);
    assert!(s["total"]["sets"].as_u64().unwrap() >= 60);

    let flushed = c.call(&op("flush", b""));
    let flushed: serde_json::Value = serde_json::from_slice(&flushed.data).unwrap();
    assert_eq!(flushed["flushed"], 60);
    assert_eq!(stats(&mut c)["total"]["items"], 0);
    assert_eq!(c.call(&get(b"character:1")).status, Status::NotFound as u32);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = TestServer::start(&[]);
    let mut c = server.connect();
    assert_eq!(c.call(&set(b"k", b"v", 0)).status, OK);
    let status = server
        .terminate(Duration::from_secs(15))
        .expect("exits within the shutdown bound");
    assert!(status.success(), "{status:?}");
    assert!(c.is_closed_within(Duration::from_secs(1)));
}

#[test]
fn batch_answers_never_exceed_the_frame_limit() {
    for shards in ["1", "3"] {
        let server = TestServer::start(&[
            "--shards",
            shards,
            "--max-frame-bytes",
            "64KiB",
            "--max-item-bytes",
            "32KiB",
        ]);
        let mut c = server.connect();
        let value = vec![3u8; 30_000];
        let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("big:{i}").into_bytes()).collect();
        for k in &keys {
            assert_eq!(c.call(&set(k, &value, 0)).status, OK);
        }
        c.send(&keys_op("get_many", &keys));
        let mut header = [0u8; 4];
        std::io::Read::read_exact(&mut c.stream, &mut header).unwrap();
        let len = u32::from_be_bytes(header) as usize;
        assert!(len <= 64 * 1024, "answer frame of {len} bytes");
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut c.stream, &mut body).unwrap();
        let answer: dnd_cache::proto::CacheResponse = prost::Message::decode(&body[..]).unwrap();
        let ok = answer.items.iter().filter(|i| i.status == OK).count();
        let later = answer
            .items
            .iter()
            .filter(|i| i.status == Status::BatchTooLarge as u32)
            .count();
        assert_eq!(answer.items.len(), 10);
        assert!(
            ok >= 1 && ok + later == 10 && later > 0,
            "{shards} shards: {ok} ok, {later} to ask again"
        );
        let found = c.call(&CacheOperation {
            with_values: true,
            ..op("pattern", b"big:*")
        });
        assert!(found.truncated && found.items.len() < 10);
    }
}
