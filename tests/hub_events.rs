//! The Message Hub bridge against a real `nats-server` and the real
//! `cache-server` binary, on free loopback ports.
//!
//! Without a `nats-server` binary these tests print a note and pass, unless
//! `DND_REQUIRE_NATS` is set (tests/run-all.sh and tests/suites/25-nats.sh set it), in which
//! case they fail.

mod common;

use std::time::{Duration, Instant};

use async_nats::Message;
use bytes::Bytes;
use common::nats::{require_nats, Nats};
use common::{get, keys_op, op, set, set_many, stats, Raw, TestServer};
use dnd_cache::proto::{CacheConnection, CacheOperation};
use futures_lite::StreamExt;
use prost::Message as _;
use serde_json::{json, Value};

const ITEM_SUBJECT: &str = "cache.item.updated";

fn start_server(nats: &Nats, extra: &[&str]) -> TestServer {
    let url = nats.url();
    let mut args = vec!["--nats-url", url.as_str(), "--health-interval", "1"];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

async fn connect(nats: &Nats) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap()
}

async fn subscribe(client: &async_nats::Client, subject: &'static str) -> async_nats::Subscriber {
    let sub = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    sub
}

async fn next_msg(sub: &mut async_nats::Subscriber, within: Duration) -> Option<Message> {
    tokio::time::timeout(within, sub.next()).await.ok().flatten()
}

fn body(msg: &Message) -> Value {
    serde_json::from_slice(&msg.payload).expect("event payload is JSON")
}

fn header(msg: &Message, name: &str) -> String {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Writes `probe:N` keys until their event arrives: the bridge is
/// connected and subscribed. Returns how long that took.
async fn await_bridge(raw: &mut Raw, sub: &mut async_nats::Subscriber, within: Duration) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < within {
        n += 1;
        let key = format!("probe:{n}");
        assert_eq!(raw.call(&set(key.as_bytes(), b"p", 0)).status, 0);
        while let Some(msg) = next_msg(sub, Duration::from_millis(300)).await {
            if body(&msg)["data"]["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("probe:"))
            {
                let took = start.elapsed();
                // Let the events of earlier probes go by.
                while next_msg(sub, Duration::from_millis(300)).await.is_some() {}
                return took;
            }
        }
    }
    panic!("no event from the bridge within {within:?}");
}

/// A message with the ICD envelope, as another service would send it now.
fn hub_message(event: &str, data: Value) -> Bytes {
    hub_message_at(event, "1.0", now_ms(), 30, data)
}

fn hub_message_at(event: &str, version: &str, timestamp_ms: u64, ttl_s: u64, data: Value) -> Bytes {
    json!({
        "event": event,
        "version": version,
        "correlation_id": "test-corr-1",
        "source": "test_service",
        "timestamp": rfc3339_ms(timestamp_ms),
        "ttl": ttl_s,
        "data": data,
    })
    .to_string()
    .into()
}

/// Unix milliseconds as RFC 3339 UTC (H. Hinnant's `civil_from_days`).
fn rfc3339_ms(ms: u64) -> String {
    let (secs, days) = (ms / 1000, (ms / 86_400_000) as i64);
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn request(client: &async_nats::Client, subject: &'static str, payload: Bytes) -> Value {
    let reply = tokio::time::timeout(Duration::from_secs(10), client.request(subject, payload))
        .await
        .expect("reply in time")
        .expect("request");
    serde_json::from_slice(&reply.payload).unwrap()
}

fn set_with_corr(key: &[u8], correlation_id: &str) -> CacheOperation {
    CacheOperation {
        correlation_id: correlation_id.into(),
        ..set(key, b"v", 0)
    }
}

/// Starts a server with `extra` flags, waits until its bridge publishes,
/// then sets `key` as `character_service` with `correlation_id` and returns
/// the server, the connection, the item subscription and that set's event.
async fn first_set_event(
    nats: &Nats,
    client: &async_nats::Client,
    extra: &[&str],
    key: &[u8],
    correlation_id: &str,
) -> (TestServer, Raw, async_nats::Subscriber, Message) {
    let mut items = subscribe(client, ITEM_SUBJECT).await;
    let server = start_server(nats, extra);
    let mut raw = Raw::open(server.addr);
    assert_eq!(raw.handshake("character_service").status, 0);
    await_bridge(&mut raw, &mut items, Duration::from_secs(10)).await;
    assert_eq!(raw.call(&set_with_corr(key, correlation_id)).status, 0);
    let msg = next_msg(&mut items, Duration::from_secs(5))
        .await
        .expect("set event");
    (server, raw, items, msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_the_envelope_and_the_request_correlation_id() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start(bin);
    let client = connect(&nats).await;
    let mut health = subscribe(&client, "cache.health.status").await;
    let (server, mut raw, mut items, msg) =
        first_set_event(&nats, &client, &[], b"character:42", "req-corr-7").await;
    let b = body(&msg);
    assert!(
        msg.headers.as_ref().is_none_or(|h| h.is_empty()),
        "item events carry the envelope in the body only unless --event-headers"
    );
    assert_eq!(b["correlation_id"], "req-corr-7");
    assert_eq!(b["source"], "cache_service");
    assert_eq!(b["event"], ITEM_SUBJECT);
    assert_eq!(b["version"], "1.0");
    assert!(b["ttl"].as_u64().unwrap() > 0);
    assert!(b["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(b["data"]["key"], "character:42");
    assert_eq!(b["data"]["operation"], "set");
    assert_eq!(b["data"]["service_id"], "character_service");
    assert_eq!(b["data"]["cache_type"], "character_data");

    // A delete of an absent key changes nothing and publishes nothing; a
    // delete that removes does.
    assert_eq!(raw.call(&op("delete", b"absent")).status, 1);
    assert_eq!(raw.call(&op("delete", b"character:42")).status, 0);
    let msg = next_msg(&mut items, Duration::from_secs(5)).await.unwrap();
    assert_eq!(body(&msg)["data"]["operation"], "delete");
    assert_eq!(body(&msg)["data"]["key"], "character:42");

    // Batches publish one event per stored key, across shards.
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..6)
        .map(|i| (format!("m:{i}").into_bytes(), b"v".to_vec()))
        .collect();
    raw.call(&set_many(&entries, 0));
    let mut keys = Vec::new();
    for _ in 0..6 {
        let b = body(&next_msg(&mut items, Duration::from_secs(5)).await.unwrap());
        assert_eq!(b["data"]["operation"], "set_many");
        keys.push(b["data"]["key"].as_str().unwrap().to_string());
    }
    keys.sort();
    assert_eq!(keys, (0..6).map(|i| format!("m:{i}")).collect::<Vec<_>>());
    let resp = raw.call(&keys_op("delete_many", &[b"m:0".to_vec(), b"m:1".to_vec()]));
    assert_eq!(resp.status, 0);
    for _ in 0..2 {
        let b = body(&next_msg(&mut items, Duration::from_secs(5)).await.unwrap());
        assert_eq!(b["data"]["operation"], "delete_many");
    }

    // The connection's correlation id stands in for a request without one.
    let mut conn = Raw::open(server.addr);
    let hello = CacheConnection {
        service_id: "campaign_service".into(),
        protocol_version: 1,
        correlation_id: "conn-corr-9".into(),
        ..Default::default()
    };
    conn.send_frame(&hello.encode_to_vec());
    assert_eq!(conn.recv().unwrap().status, 0);
    assert_eq!(conn.call(&set(b"campaign:1", b"v", 0)).status, 0);
    let b = body(&next_msg(&mut items, Duration::from_secs(5)).await.unwrap());
    assert_eq!(b["correlation_id"], "conn-corr-9");
    assert_eq!(b["data"]["service_id"], "campaign_service");

    assert_eq!(conn.call(&op("flush", b"")).status, 0);
    let b = body(&next_msg(&mut items, Duration::from_secs(5)).await.unwrap());
    assert_eq!(b["data"]["operation"], "flush");
    assert_eq!(b["data"]["key"], "*");

    // Health every second, with the ICD's metrics and the envelope.
    let msg = next_msg(&mut health, Duration::from_secs(5))
        .await
        .expect("health event");
    let b = body(&msg);
    assert_eq!(header(&msg, "Event-Type"), "cache.health.status");
    assert_eq!(b["event"], "cache.health.status");
    assert_eq!(b["data"]["status"], "healthy");
    let metrics = &b["data"]["metrics"];
    assert!(
        metrics["hit_rate"].is_f64() || metrics["hit_rate"].is_u64(),
        "{b}"
    );
    assert!(metrics["memory_usage"].as_f64().is_some(), "{b}");
    assert!(metrics["ops_rate"].as_u64().is_some(), "{b}");
    assert!(!b["correlation_id"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_events_repeat_the_envelope_as_headers_when_asked() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start(bin);
    let client = connect(&nats).await;
    let (_server, _raw, _items, msg) = first_set_event(
        &nats,
        &client,
        &["--event-headers"],
        b"character:43",
        "req-corr-8",
    )
    .await;
    let b = body(&msg);
    for (h, field) in [
        ("Correlation-Id", "correlation_id"),
        ("Source-Service", "source"),
        ("Event-Type", "event"),
        ("Event-Version", "version"),
        ("Timestamp", "timestamp"),
    ] {
        assert_eq!(header(&msg, h), b[field].as_str().unwrap(), "{h} vs {field}");
    }
    assert_eq!(header(&msg, "Ttl"), b["ttl"].to_string());
    assert_eq!(header(&msg, "Correlation-Id"), "req-corr-8");
    assert_eq!(b["data"]["key"], "character:43");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_events_change_ttls_and_bad_ones_are_refused() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start(bin);
    let client = connect(&nats).await;
    let mut items = subscribe(&client, ITEM_SUBJECT).await;
    let server = start_server(&nats, &[]);
    let mut raw = server.connect();
    await_bridge(&mut raw, &mut items, Duration::from_secs(10)).await;
    let ttl_ms = |raw: &mut Raw, key: &[u8]| {
        let meta = raw.call(&set(key, b"v", 0)).metadata.unwrap();
        meta.expires_at - meta.created_at
    };
    assert_eq!(ttl_ms(&mut raw, b"plain:1"), 3_600_000);
    assert_eq!(
        ttl_ms(&mut raw, b"computation:1"),
        300_000,
        "ICD TTL of computation_results"
    );

    let data = json!({"policy": "ttl", "parameters": {"ttl": 5}, "scope": "global"});
    let reply = request(
        &client,
        "config.cache.update",
        hub_message("config.cache.update", data),
    )
    .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(ttl_ms(&mut raw, b"plain:2"), 5_000);
    assert_eq!(
        ttl_ms(&mut raw, b"computation:2"),
        300_000,
        "a type keeps its own TTL"
    );

    let data = json!({"policy": "ttl", "parameters": {"ttl": 42}, "scope": "computation_results"});
    let reply = request(
        &client,
        "config.cache.update",
        hub_message("config.cache.update", data),
    )
    .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(ttl_ms(&mut raw, b"computation:3"), 42_000);

    // A plain publish (no reply subject) applies too.
    let data = json!({"policy": "ttl", "parameters": {"ttl": 9}, "scope": "global"});
    client
        .publish("config.cache.update", hub_message("config.cache.update", data))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ttl_ms(&mut raw, b"plain:3") != 9_000 {
        assert!(Instant::now() < deadline, "published config not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Switching events off for a cache type.
    let data = json!({"policy": "events", "parameters": {"enabled": false}, "scope": "image_metadata"});
    let reply = request(
        &client,
        "config.cache.update",
        hub_message("config.cache.update", data),
    )
    .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    while next_msg(&mut items, Duration::from_millis(200)).await.is_some() {}
    raw.call(&set(b"image:1", b"v", 0));
    raw.call(&set(b"character:1", b"v", 0));
    let b = body(&next_msg(&mut items, Duration::from_secs(5)).await.unwrap());
    assert_eq!(b["data"]["key"], "character:1", "image:1 published no event");

    // Invalid messages: refused with a reason, nothing changes, nothing breaks.
    for bad in [
        Bytes::from_static(b"not json"),
        hub_message(
            "config.cache.update",
            json!({"policy": "ttl", "parameters": {"ttl": "x"}}),
        ),
        hub_message(
            "config.cache.update",
            json!({"policy": "ttl", "parameters": {"ttl": 1}, "scope": "nope"}),
        ),
        hub_message(
            "control.cache.action",
            json!({"policy": "ttl", "parameters": {"ttl": 1}}),
        ),
        Bytes::from(json!({"data": "not an object"}).to_string()),
    ] {
        let reply = request(&client, "config.cache.update", bad).await;
        assert_eq!(reply["status"], "error", "{reply}");
    }
    let reply = request(
        &client,
        "control.cache.action",
        hub_message("control.cache.action", json!({"action": "explode"})),
    )
    .await;
    assert_eq!(reply["status"], "error");
    assert_eq!(ttl_ms(&mut raw, b"plain:4"), 9_000);

    // reload: back to the policy the server started with.
    let reply = request(
        &client,
        "control.cache.action",
        hub_message("control.cache.action", json!({"action": "reload"})),
    )
    .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(ttl_ms(&mut raw, b"plain:5"), 3_600_000);
    assert_eq!(ttl_ms(&mut raw, b"computation:5"), 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_actions_flush_and_invalidate_every_shard() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start(bin);
    let client = connect(&nats).await;
    let mut items = subscribe(&client, ITEM_SUBJECT).await;
    let server = start_server(&nats, &[]);
    let mut raw = server.connect();
    await_bridge(&mut raw, &mut items, Duration::from_secs(10)).await;
    for i in 0..200 {
        raw.call(&set(format!("character:{i}").as_bytes(), b"v", 0));
        raw.call(&set(format!("image:{i}").as_bytes(), b"v", 0));
    }

    let action = json!({"action": "invalidate", "target": "character:7", "parameters": {}});
    let reply = request(
        &client,
        "control.cache.action",
        hub_message("control.cache.action", action),
    )
    .await;
    assert_eq!(
        (reply["status"].as_str(), reply["data"]["removed"].as_u64()),
        (Some("ok"), Some(1)),
        "{reply}"
    );
    assert_eq!(raw.call(&get(b"character:7")).status, 1);

    let action = json!({"action": "invalidate", "target": "image:*"});
    let reply = request(
        &client,
        "control.cache.action",
        hub_message("control.cache.action", action),
    )
    .await;
    assert_eq!(reply["data"]["removed"], 200, "{reply}");
    assert_eq!(raw.call(&get(b"image:3")).status, 1);
    assert_eq!(raw.call(&get(b"character:3")).status, 0);

    // flush by plain publish: the cache empties on every shard.
    client
        .publish(
            "control.cache.action",
            hub_message("control.cache.action", json!({"action": "flush"})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&mut raw)["total"]["items"] != 0 {
        assert!(Instant::now() < deadline, "flush did not empty the cache");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(raw.call(&get(b"character:3")).status, 1);
    // The flush is announced with the control message's correlation id.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let b = body(
            &next_msg(&mut items, Duration::from_secs(5))
                .await
                .expect("flush event"),
        );
        if b["data"]["operation"] == "flush" {
            assert_eq!(b["correlation_id"], "test-corr-1");
            assert_eq!(b["data"]["service_id"], "test_service");
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_loses_no_data_counts_drops_and_recovers() {
    let Some(bin) = require_nats() else { return };
    let mut nats = Nats::start(bin);
    let server = start_server(&nats, &["--event-queue", "64"]);
    let mut raw = server.connect();
    {
        let client = connect(&nats).await;
        let mut items = subscribe(&client, ITEM_SUBJECT).await;
        await_bridge(&mut raw, &mut items, Duration::from_secs(10)).await;
    }

    nats.kill();
    // Keep writing, pipelined, while the hub is down.
    let keys = 3000;
    let start = Instant::now();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(100) {
        for i in chunk {
            raw.send(&set(
                format!("outage:{i}").as_bytes(),
                format!("value-{i}").as_bytes(),
                0,
            ));
        }
        for _ in chunk {
            assert_eq!(raw.recv().expect("answer during the outage").status, 0);
        }
    }
    let write_time = start.elapsed();
    assert!(
        write_time < Duration::from_secs(10),
        "writes slowed down: {write_time:?}"
    );
    for i in 0..keys {
        let got = raw.call(&get(format!("outage:{i}").as_bytes()));
        assert_eq!(got.status, 0, "outage:{i} lost");
        assert_eq!(&got.data[..], format!("value-{i}").as_bytes());
    }
    let dropped = stats(&mut raw)["total"]["events_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "events beyond the queue must be dropped and counted");

    nats.restart();
    let client = connect(&nats).await;
    let mut items = subscribe(&client, ITEM_SUBJECT).await;
    await_bridge(&mut raw, &mut items, Duration::from_secs(20)).await;
    assert_eq!(raw.call(&get(b"outage:0")).status, 0);
    assert!(stats(&mut raw)["total"]["events_dropped"].as_u64().unwrap() >= dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_on_one_key_coalesce_within_the_window() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start(bin);
    let client = connect(&nats).await;
    let mut items = subscribe(&client, ITEM_SUBJECT).await;
    let server = start_server(&nats, &["--event-coalesce-ms", "400"]);
    let mut raw = server.connect();
    await_bridge(&mut raw, &mut items, Duration::from_secs(10)).await;

    for _ in 0..5 {
        assert_eq!(raw.call(&set(b"burst:1", b"v", 0)).status, 0);
    }
    assert_eq!(raw.call(&op("delete", b"burst:1")).status, 0);
    assert_eq!(raw.call(&set(b"burst:2", b"v", 0)).status, 0);
    let mut got = Vec::new();
    while let Some(msg) = next_msg(&mut items, Duration::from_secs(2)).await {
        got.push(body(&msg)["data"].clone());
    }
    assert_eq!(got.len(), 2, "{got:?}");
    let one = got.iter().find(|d| d["key"] == "burst:1").unwrap();
    assert_eq!(one["operation"], "delete", "the latest write wins");
    assert_eq!(one["coalesced"], 5);
    let two = got.iter().find(|d| d["key"] == "burst:2").unwrap();
    assert!(two.get("coalesced").is_none());
}

/// ICD 1.3 on incoming messages: a message past its TTL, of an unknown
/// major version, or without its envelope is refused, counted and not
/// applied; every reply carries the envelope (JSON fields and headers) and
/// a refusal the ICD 8.2 error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_unknown_major_messages_are_refused_and_replies_carry_the_envelope() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start(bin);
    let client = connect(&nats).await;
    let mut items = subscribe(&client, ITEM_SUBJECT).await;
    let server = start_server(&nats, &[]);
    let mut raw = server.connect();
    await_bridge(&mut raw, &mut items, Duration::from_secs(10)).await;
    let ttl_ms = |raw: &mut Raw, key: &[u8]| {
        let meta = raw.call(&set(key, b"v", 0)).metadata.unwrap();
        meta.expires_at - meta.created_at
    };
    let change = json!({"policy": "ttl", "parameters": {"ttl": 7}, "scope": "global"});
    let refused = [
        (
            "stale",
            hub_message_at(
                "config.cache.update",
                "1.0",
                now_ms() - 31_000,
                30,
                change.clone(),
            ),
        ),
        (
            "future",
            hub_message_at(
                "config.cache.update",
                "1.0",
                now_ms() + 600_000,
                30,
                change.clone(),
            ),
        ),
        (
            "version",
            hub_message_at("config.cache.update", "2.0", now_ms(), 30, change.clone()),
        ),
        (
            "no envelope",
            Bytes::from(json!({"data": change.clone()}).to_string()),
        ),
    ];
    for (what, message) in refused {
        let reply = client.request("config.cache.update", message).await.unwrap();
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["status"], "error", "{what}: {body}");
        assert_eq!(body["error"]["code"], "CACHE_006", "{what}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("refused"),
            "{what}: {body}"
        );
        assert_eq!(body["error"]["details"]["operation"], "", "{what}: {body}");
        assert!(
            body["error"]["details"]["timestamp"].is_string(),
            "{what}: {body}"
        );
        assert_eq!(body["event"], "config.cache.update.reply", "{what}: {body}");
        for field in ["correlation_id", "source", "version", "timestamp", "ttl"] {
            assert!(!body[field].is_null(), "{what}: reply without {field}: {body}");
        }
        let headers = reply.headers.as_ref().expect("reply headers");
        assert_eq!(
            headers.get("Event-Type").unwrap().as_str(),
            "config.cache.update.reply"
        );
    }
    assert_eq!(
        ttl_ms(&mut raw, b"plain:after-refusals"),
        3_600_000,
        "a refused message changed the policy"
    );

    let reply = client
        .request("config.cache.update", hub_message("config.cache.update", change))
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(
        body["correlation_id"], "test-corr-1",
        "the reply keeps the request's correlation id"
    );
    assert_eq!(body["data"]["policy"]["default_ttl_s"], 7, "{body}");
    let headers = reply.headers.as_ref().expect("reply headers");
    assert_eq!(headers.get("Correlation-Id").unwrap().as_str(), "test-corr-1");
    assert_eq!(ttl_ms(&mut raw, b"plain:after-update"), 7_000);
    let invalid = server_metric(&server, "cache_hub_invalid_messages_total");
    assert_eq!(invalid, Some(4.0));
}

/// A sample without labels from the server's /health/metrics.
fn server_metric(server: &TestServer, name: &str) -> Option<f64> {
    let mut http = common::http::HttpConn::open(server.http);
    let text = String::from_utf8(http.get("/health/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `--service-id` and `--environment` reach every published message: the
/// envelope's `source` and `environment`, in the body and the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_name_the_configured_service_and_environment() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start(bin);
    let client = connect(&nats).await;
    let mut items = subscribe(&client, ITEM_SUBJECT).await;
    let mut health = subscribe(&client, "cache.health.status").await;
    let server = start_server(
        &nats,
        &[
            "--service-id",
            "cache_eu_1",
            "--environment",
            "staging",
            "--event-headers",
        ],
    );
    let mut raw = server.connect();
    await_bridge(&mut raw, &mut items, Duration::from_secs(10)).await;
    raw.call(&set(b"character:src", b"v", 0));
    let item = next_msg(&mut items, Duration::from_secs(5))
        .await
        .expect("an item event");
    let beat = next_msg(&mut health, Duration::from_secs(5))
        .await
        .expect("a health event");
    for msg in [item, beat] {
        let b = body(&msg);
        assert_eq!(
            (b["source"].as_str(), b["environment"].as_str()),
            (Some("cache_eu_1"), Some("staging")),
            "{b}"
        );
        let h = msg.headers.as_ref().expect("headers");
        assert_eq!(h.get("Source-Service").unwrap().as_str(), "cache_eu_1");
        assert_eq!(h.get("Environment").unwrap().as_str(), "staging");
    }
}
