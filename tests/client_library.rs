//! The Rust client `dnd_cache::CacheClient` against the real server.

mod common;

use std::time::Duration;

use common::TestServer;
use dnd_cache::client::BreakerState;
use dnd_cache::{CacheClient, ClientConfig, ClientError, Status};

fn config(server: &TestServer) -> ClientConfig {
    ClientConfig::new("character_service").address(server.addr.to_string())
}

#[tokio::test]
async fn set_get_delete_and_batches_through_the_client() {
    let server = TestServer::start(&["--shards", "3"]);
    let client = CacheClient::connect(config(&server)).await.unwrap();
    let meta = client.set("character:1234", b"{\"hp\":12}", 3600).await.unwrap();
    assert!(meta.version > 0);
    assert_eq!(
        client.get("character:1234").await.unwrap().as_deref(),
        Some(&b"{\"hp\":12}"[..])
    );
    let item = client.get_item("character:1234").await.unwrap().unwrap();
    assert_eq!(item.metadata, meta);
    assert!(client.delete("character:1234").await.unwrap());
    assert!(!client.delete("character:1234").await.unwrap());
    assert_eq!(client.get("character:1234").await.unwrap(), None);

    let entries: Vec<(String, String)> = (0..20).map(|i| (format!("char:{i}"), format!("v{i}"))).collect();
    let results = client.set_many(&entries, 60).await.unwrap();
    assert!(results.iter().all(|r| r.status == 0));
    let keys: Vec<String> = (0..22).map(|i| format!("char:{i}")).collect();
    let values = client.get_many(&keys).await.unwrap();
    for (i, v) in values.iter().enumerate() {
        if i < 20 {
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()));
        } else {
            assert_eq!(*v, None);
        }
    }
    let mut found = client.pattern("char:1*", 0).await.unwrap();
    found.sort();
    assert_eq!(found.len(), 11);
    assert_eq!(client.delete_many(&keys).await.unwrap(), 20);
    assert_eq!(client.stats().await.unwrap()["total"]["items"], 0);
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    client.set("x", "y", 0).await.unwrap();
    assert_eq!(client.flush().await.unwrap(), 1);
}

#[tokio::test]
async fn errors_carry_the_icd_code() {
    let server = TestServer::start(&["--max-item-bytes", "2KiB"]);
    let client = CacheClient::connect(config(&server)).await.unwrap();
    match client.set("big", vec![0u8; 4096], 0).await {
        Err(e @ ClientError::Server { .. }) => {
            assert_eq!(e.status(), Some(Status::StorageFull));
            assert!(e.to_string().starts_with("CACHE_003"));
        }
        other => panic!("expected CACHE_003, got {other:?}"),
    }
    assert!(matches!(
        client.get("bad key").await,
        Err(ClientError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn concurrent_calls_are_pipelined_and_shard_aware() {
    let server = TestServer::start(&["--shards", "4"]);
    let client = CacheClient::connect(config(&server)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let key = format!("campaign:{t}:{i}");
                client.set(&key, key.as_bytes(), 0).await.unwrap();
                assert_eq!(client.get(&key).await.unwrap().as_deref(), Some(key.as_bytes()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["total"]["items"], 1600);
    assert_eq!(
        stats["total"]["forwarded_ops"], 0,
        "the client sends every key to its owner"
    );
}

#[tokio::test]
async fn connect_failures_time_out_and_retry_then_report() {
    // A port nobody listens on: connect is refused, retried 3 times, then an I/O error.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = ClientConfig::new("svc").address(addr.to_string());
    cfg.connect_timeout = Duration::from_millis(500);
    assert!(matches!(CacheClient::connect(cfg).await, Err(ClientError::Io(_))));
}

#[tokio::test]
async fn the_client_reconnects_after_the_server_closes_its_connection() {
    let server = TestServer::start(&["--shards", "1"]);
    let client = CacheClient::connect(config(&server).shard_aware(false))
        .await
        .unwrap();
    client.set("k", "v", 0).await.unwrap();
    drop(server);
    // The server is gone: calls fail after the retries.
    let err = client.get("k").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout
        ),
        "{err:?}"
    );
}

/// ICD 9.2's circuit breaker: once the failed share of at least
/// `min_requests` calls reaches the threshold, calls fail at once with
/// `CircuitOpen` (no connect, no retry) until the cool-down ends.
#[tokio::test]
async fn a_dead_server_opens_the_breaker_and_calls_then_fail_fast() {
    let server = TestServer::start(&["--shards", "1"]);
    let mut cfg = config(&server).shard_aware(false);
    cfg.retries = 0;
    cfg.breaker.min_requests = 5;
    cfg.breaker.cooldown = Duration::from_secs(60);
    let client = CacheClient::connect(cfg).await.unwrap();
    client.set("k", "v", 0).await.unwrap();
    let address = server.addr.to_string();
    assert_eq!(client.breaker_state(&address), BreakerState::Closed);
    drop(server);
    let mut failures = 0;
    let err = loop {
        match client.get("k").await {
            Err(ClientError::CircuitOpen(a)) => break a,
            Err(_) => failures += 1,
            Ok(v) => panic!("a dead server answered {v:?}"),
        }
        assert!(failures < 10, "the breaker never opened");
    };
    assert_eq!(err, address);
    assert!(
        failures >= 4,
        "opened after {failures} failures, below min_requests"
    );
    assert_eq!(client.breaker_state(&address), BreakerState::Open);
    assert!(matches!(client.get("k").await, Err(ClientError::CircuitOpen(_))));
}

/// A port nothing listens on: bound, then closed.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn a_closed_first_seed_is_skipped() {
    let server = TestServer::start(&[]);
    let mut cfg = config(&server).address(format!("{}, {}", closed_port(), server.addr));
    cfg.retries = 0;
    let client = CacheClient::connect(cfg).await.unwrap();
    client.set("seeds:rust", "v", 0).await.unwrap();
    assert_eq!(
        client.get("seeds:rust").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    let values = client.get_many(&["seeds:rust", "seeds:none"]).await.unwrap();
    assert_eq!(values, [Some(bytes::Bytes::from("v")), None]);
}

#[tokio::test]
async fn a_silent_seed_is_skipped_after_the_connect_timeout() {
    let server = TestServer::start(&[]);
    // Completes the TCP connect (the kernel's backlog), never answers the handshake.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(&server).address(format!("{},{}", silent.local_addr().unwrap(), server.addr));
    cfg.connect_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let client = CacheClient::connect(cfg).await.unwrap();
    assert_eq!(client.health().await.unwrap()["status"], "ok");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn when_no_seed_answers_the_io_error_names_every_seed() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (closed, silent) = (closed_port(), silent.local_addr().unwrap().to_string());
    let mut cfg = ClientConfig::new("svc").address(format!("{closed},{silent}"));
    cfg.connect_timeout = Duration::from_millis(300);
    match CacheClient::connect(cfg).await {
        Err(ClientError::Io(e)) => {
            let message = e.to_string();
            assert!(
                message.starts_with("no seed answered the handshake: tried "),
                "{message}"
            );
            assert!(message.contains(&format!("{closed} (")) && message.contains(&format!("{silent} (")));
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn a_bad_seed_is_a_configuration_error() {
    let cfg = ClientConfig::new("svc").address("127.0.0.1:7000,,127.0.0.1:7001");
    match CacheClient::connect(cfg).await {
        Err(ClientError::Config(m)) => assert!(m.contains("empty seed address"), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("accepted"),
    }
}

#[tokio::test]
async fn after_its_seed_goes_down_the_entry_connection_walks_the_seeds_again() {
    let (first, second) = (TestServer::start(&[]), TestServer::start(&[]));
    let cfg = config(&first).address(format!("{},{}", first.addr, second.addr));
    let client = CacheClient::connect(cfg.shard_aware(false)).await.unwrap();
    client.set("seeds:where", "first", 0).await.unwrap();
    drop(first);
    // The second server is another cache: the key is not there, but it answers.
    assert_eq!(client.get("seeds:where").await.unwrap(), None);
    client.set("seeds:where", "second", 0).await.unwrap();
    let direct = CacheClient::connect(config(&second)).await.unwrap();
    assert_eq!(
        direct.get("seeds:where").await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
}

#[tokio::test]
async fn a_refused_token_is_not_taken_to_the_next_seed() {
    // Every node of a cluster would refuse it too: the walk stops there.
    let secret = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/hs256.secret");
    let guarded = TestServer::start(&["--auth-hs256-secret-file", secret]);
    let open = TestServer::start(&[]);
    let cfg = config(&open).address(format!("{},{}", guarded.addr, open.addr));
    match CacheClient::connect(cfg).await {
        Err(e) => assert_eq!(e.status(), Some(Status::InvalidCredentials), "{e:?}"),
        Ok(_) => panic!("the walk went past a refused token"),
    }
}
