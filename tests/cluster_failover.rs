//! Consistency, failover and catch-up of the cluster (issue 17, stages
//! 2c and 3) with real processes: a `nats-server -js` and three
//! `cache-server` nodes in zones a, b, a, replication 2. Nodes are killed
//! (SIGKILL), paused (SIGSTOP) and restarted here for real.
//!
//! Without a `nats-server` binary these tests print a note and pass, unless
//! `DND_REQUIRE_NATS` is set (tests/run-all.sh and tests/suites/25-nats.sh set it).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{node, serving, slot_totals, three_nodes, wait_for};
use common::http::HttpConn;
use common::nats::{require_nats, Nats};
use common::TestServer;
use dnd_cache::{CacheClient, ClientConfig, Status};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client of the cluster through `server`, with `consistency` for every
/// request.
async fn client(server: &TestServer, consistency: &str) -> CacheClient {
    let mut config = ClientConfig::new("failover-test").address(server.addr.to_string());
    config.options.consistency = consistency.into();
    CacheClient::connect(config).await.unwrap()
}

fn signal(server: &TestServer, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn kill(server: &mut TestServer) {
    let _ = server.child.kill();
    let _ = server.child.wait();
}

/// Waits until `survivors` run a map of exactly them, all slots placed.
fn wait_for_map_of(survivors: &[&TestServer], ids: &[&str]) {
    for n in survivors {
        wait_for(n, Duration::from_secs(15), "the map of the survivors", |h| {
            let members: Vec<&str> = h["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["id"].as_str())
                .collect();
            members == ids && serving(h) == ids && slot_totals(h).0 == 4096
        });
    }
}

/// Writes `prefix:i` = `vi` for i in 0..count, strong, through `server`.
async fn write_strong(server: &TestServer, prefix: &str, count: usize) {
    let c = client(server, "strong").await;
    for i in 0..count {
        c.set(format!("{prefix}:{i}"), format!("v{i}"), 0).await.unwrap();
    }
}

/// Missing keys of `prefix:0..count` (read through a fresh client).
async fn missing(server: &TestServer, prefix: &str, count: usize) -> Vec<usize> {
    let c = client(server, "").await;
    let mut lost = Vec::new();
    for i in 0..count {
        let got = c.get(format!("{prefix}:{i}")).await;
        if lost.len() < 3 {
            if let Err(e) = &got {
                eprintln!("{prefix}:{i}: {e}");
            }
        }
        if got.ok().flatten().as_deref() != Some(format!("v{i}").as_bytes()) {
            lost.push(i);
        }
    }
    lost
}

/// A strong write is answered only once its replica applied it: killing
/// the node right after the last answer loses none of them (no waiting for
/// replication to drain, unlike eventual writes).
#[test]
fn strong_writes_survive_an_immediate_kill() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start_js(bin);
    let (mut nodes, _) = three_nodes(&nats);
    let rt = runtime();
    rt.block_on(write_strong(&nodes[0], "strong", 400));
    // n1 (zone a) dies at once: its slots go to their replicas.
    kill(&mut nodes[0]);
    wait_for_map_of(&[&nodes[1], &nodes[2]], &["n2", "n3"]);
    let lost = rt.block_on(missing(&nodes[1], "strong", 400));
    assert!(lost.is_empty(), "strong writes lost: {lost:?}");
}

/// A replica that stops answering (SIGSTOP) fails the strong writes that
/// need it with CACHE_005 instead of hanging; eventual writes go on; once
/// the map has moved on, strong writes succeed again; the paused node,
/// resumed, completes no strong write of the old map.
#[test]
fn a_stopped_replica_fails_strong_writes_with_cache_005_then_the_map_moves_on() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start_js(bin);
    let (nodes, _) = three_nodes(&nats);
    let rt = runtime();
    // n2 is the only node of zone b: every slot keeps a copy there.
    signal(&nodes[1], "-STOP");
    // Straight to n1 over one connection that follows no redirect (a
    // client would follow CACHE_013 to the stopped n2 and wait there).
    let mut raw = common::Raw::handshaken(nodes[0].addr);
    let strong_set = |raw: &mut common::Raw, key: &str, consistency: &str| {
        let mut op = common::set(key.as_bytes(), b"x", 0);
        op.options = Some(dnd_cache::proto::Options {
            consistency: consistency.into(),
            ..Default::default()
        });
        raw.call(&op).status
    };
    // A key n1 is primary of (its replica is then n2): its strong write
    // is refused within the 1 s replication timeout.
    let started = Instant::now();
    let mut refused = None;
    let mut outcomes = Vec::new();
    for i in 0..200 {
        let key = format!("paused:{i}");
        let asked = Instant::now();
        let status = strong_set(&mut raw, &key, "strong");
        if status == Status::Timeout as u32 {
            refused = Some(asked.elapsed());
            // An eventual write of the same key still succeeds.
            assert_eq!(strong_set(&mut raw, &key, "eventual"), Status::Ok as u32);
            break;
        }
        outcomes.push((started.elapsed(), status));
    }
    let took = refused.unwrap_or_else(|| {
        panic!("no strong write whose replica is stopped answered CACHE_005: {outcomes:?}")
    });
    assert!(took < Duration::from_secs(3), "CACHE_005 after {took:?}");
    // n2 is out of the map within the failure timeout; strong writes work.
    wait_for_map_of(&[&nodes[0], &nodes[2]], &["n1", "n3"]);
    rt.block_on(async {
        let strong = client(&nodes[0], "strong").await;
        // While the maps settle (new replicas placed, roles swapped), a
        // strong write caught by a change is refused (CACHE_005, "retry"):
        // a retry a little later succeeds.
        for i in 0..50 {
            let mut tries = 0;
            loop {
                match strong.set(format!("after:{i}"), "z", 0).await {
                    Ok(_) => break,
                    Err(e) if e.status() == Some(Status::Timeout) && tries < 10 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("strong write after the map moved on: {e:?}"),
                }
            }
        }
    });
    // n2 resumes with an old map and lapsed lease: a strong write sent to
    // it straight away is refused or redirected, never acknowledged under
    // the old epoch; it then rejoins and catches up.
    signal(&nodes[1], "-CONT");
    let mut raw = common::Raw::handshaken(nodes[1].addr);
    let mut op = common::set(b"character:rejoin", b"old-epoch", 0);
    op.options = Some(dnd_cache::proto::Options {
        consistency: "strong".into(),
        ..Default::default()
    });
    let answer = raw.call(&op);
    assert_ne!(
        answer.status,
        Status::Ok as u32,
        "a paused node acknowledged a strong write: {answer:?}"
    );
    wait_for(&nodes[0], Duration::from_secs(20), "n2 back and in sync", |h| {
        serving(h) == ["n1", "n2", "n3"] && slot_totals(h) == (4096, 4096)
    });
}

/// A node restarted under the same id comes back empty: the map hands its
/// primaries to their replicas, it is filled by a full copy, and once in
/// sync it holds every key: the other copy's node can then die without a
/// loss.
#[test]
fn a_restarted_node_is_filled_before_it_is_needed() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start_js(bin);
    let (mut nodes, _) = three_nodes(&nats);
    let rt = runtime();
    rt.block_on(write_strong(&nodes[0], "fill", 3000));
    let before = common::cluster::cluster_health(&nodes[0])["epoch"]
        .as_u64()
        .unwrap();
    kill(&mut nodes[2]);
    nodes[2] = node(&nats, "n3", "a");
    let started = Instant::now();
    // The restart is seen (a new map), n3 is filled, then serves again.
    // Asked of n3 itself: the new process says it serves only once in
    // sync (n1 may still hold the old process's last heartbeat).
    wait_for(&nodes[2], Duration::from_secs(30), "n3 back and in sync", |h| {
        h["epoch"].as_u64() > Some(before)
            && serving(h) == ["n1", "n2", "n3"]
            && slot_totals(h) == (4096, 4096)
    });
    eprintln!("restarted node in sync after {:?}", started.elapsed());
    let metrics = HttpConn::open(nodes[2].http).get("/health/metrics").text();
    assert!(
        metrics.contains("cache_node_status{node=\"n3\",zone=\"a\"} 1"),
        "{metrics}"
    );
    // Every slot's copies are {n2, n1} or {n2, n3}: with n2 gone, the
    // keys of the second kind live only on the refilled n3.
    kill(&mut nodes[1]);
    wait_for_map_of(&[&nodes[0], &nodes[2]], &["n1", "n3"]);
    let lost = rt.block_on(missing(&nodes[0], "fill", 3000));
    assert!(
        lost.is_empty(),
        "{} keys lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}

/// A NATS blip: the messages a replica missed come again from its
/// primary's backlog, with no full copy and nothing lost (docs/cluster.md,
/// "Backlog"). n2 is paused and nats-server killed; n1 takes writes (its
/// NATS client holds them), sends them once NATS is back, before n2 (still
/// paused) has subscribed again: nobody receives them. n2 resumes, sees
/// the gap at n1's next message (its oldest unacknowledged one, sent again
/// after 500 ms) and asks for the rest.
#[test]
fn a_nats_blip_is_repaired_from_the_backlog() {
    let Some(bin) = require_nats() else { return };
    let mut nats = Nats::start_js(bin);
    let (mut nodes, _) = three_nodes(&nats);
    let streams = |n: &TestServer, what: &str| {
        common::cluster::cluster_health(n)["replication_streams"][what]
            .as_u64()
            .unwrap_or(0)
    };
    let (copies, resends) = (
        streams(&nodes[1], "copies_received"),
        streams(&nodes[1], "resends_received"),
    );
    // n2, the only node of zone b, replicates every slot n1 is primary
    // of. Keys of other primaries are answered CACHE_013 by n1.
    let mut raw = common::Raw::handshaken(nodes[0].addr);
    signal(&nodes[1], "-STOP");
    nats.kill();
    let mut written = Vec::new();
    for i in 0..600 {
        let key = format!("blip:{i}");
        let value = format!("v{i}");
        if raw.call(&common::set(key.as_bytes(), value.as_bytes(), 0)).status == Status::Ok as u32 {
            written.push((key, value));
        }
    }
    assert!(
        written.len() > 100,
        "n1 took {} writes without NATS",
        written.len()
    );
    nats.restart();
    wait_for(&nodes[0], Duration::from_secs(10), "n1 connected again", |h| {
        h["nats_connected"] == true
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&nodes[1], "-CONT");
    wait_for(
        &nodes[1],
        Duration::from_secs(10),
        "the missed messages resent",
        |h| h["replication_streams"]["resends_received"].as_u64().unwrap_or(0) > resends,
    );
    assert_eq!(
        streams(&nodes[1], "copies_received"),
        copies,
        "a full copy was used"
    );
    // Every write reached n2: with n1 gone, n2 serves them.
    kill(&mut nodes[0]);
    wait_for_map_of(&[&nodes[1], &nodes[2]], &["n2", "n3"]);
    runtime().block_on(async {
        let c = client(&nodes[1], "").await;
        let mut lost = Vec::new();
        for (key, value) in &written {
            if c.get(key.as_str()).await.ok().flatten().as_deref() != Some(value.as_bytes()) {
                lost.push(key.clone());
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} writes lost: {:?}",
            lost.len(),
            written.len(),
            &lost[..lost.len().min(5)]
        );
    });
}

/// Runs `op` on `key` until it succeeds, retrying a failure every 100 ms
/// (30 times at most), as a client does; its result and the retries.
async fn retried<T, F, Fut>(key: &str, op: F) -> (T, u32)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, dnd_cache::ClientError>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Ok(v) => return (v, tries),
            Err(e) if tries < 30 => {
                eprintln!("{key}: {e}; again");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{key}: {e}"),
        }
    }
}

/// A node paused out of the map keeps its items; keys deleted while it is
/// away must not come back when it rejoins (a full copy adds items and
/// removes none, and deletes leave no tombstone). n3 is paused until the
/// map drops it, every key is deleted (strong), n3 resumes and is filled
/// again: no key reads back, neither now nor once n1 dies and n3 serves
/// the slots it shared with n1.
#[test]
fn a_node_back_from_a_pause_brings_back_no_deleted_key() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start_js(bin);
    let (mut nodes, _) = three_nodes(&nats);
    let rt = runtime();
    let count = 300;
    rt.block_on(write_strong(&nodes[0], "gone", count));
    signal(&nodes[2], "-STOP");
    wait_for_map_of(&[&nodes[0], &nodes[1]], &["n1", "n2"]);
    rt.block_on(async {
        let c = client(&nodes[0], "strong").await;
        for i in 0..count {
            // Just after a map change a node may hold no lease yet for a
            // few milliseconds (CACHE_005): retried, as a client does.
            let key = format!("gone:{i}");
            let (deleted, tries) = retried(&key, || c.delete(&key)).await;
            // A refused try may still have deleted it (CACHE_005 says
            // "maybe"): then the retry finds nothing.
            assert!(deleted || tries > 0, "gone:{i} was there");
        }
    });
    signal(&nodes[2], "-CONT");
    let whole = |h: &serde_json::Value| {
        serving(h) == ["n1", "n2", "n3"]
            && slot_totals(h) == (4096, 4096)
            && h["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .all(|n| n["learner_slots"] == 0 && n["primary_slots"].as_u64() > Some(0))
            })
    };
    for n in &nodes {
        wait_for(
            n,
            Duration::from_secs(30),
            "n3 back, filled, leading slots",
            whole,
        );
    }
    let back = |server: &TestServer| {
        let server_addr = server.addr;
        rt.block_on(async move {
            // Eventual reads: served by each slot's primary, with no
            // lease to wait for after the map moved.
            let config = ClientConfig::new("failover-test").address(server_addr.to_string());
            let c = CacheClient::connect(config).await.unwrap();
            let mut back = Vec::new();
            for i in 0..count {
                // A read that lands while the map still moves is retried.
                let key = format!("gone:{i}");
                let (got, _) = retried(&key, || c.get(&key)).await;
                if got.is_some() {
                    back.push(i);
                }
            }
            back
        })
    };
    let now = back(&nodes[1]);
    assert!(now.is_empty(), "deleted keys read back: {now:?}");
    kill(&mut nodes[0]);
    wait_for_map_of(&[&nodes[1], &nodes[2]], &["n2", "n3"]);
    let after = back(&nodes[1]);
    assert!(after.is_empty(), "deleted keys read back once n1 died: {after:?}");
}

/// A client through a failover (issue 17, "clients follow the map"): the
/// primary of a third of the keys is killed; the client's writes to the
/// other nodes' keys never fail, its writes to the dead node's keys
/// succeed again once the survivors' map has moved them (the client
/// refreshes its map after the connection error, no new client needed),
/// and only the dead node's breaker can open.
#[test]
fn a_client_follows_a_failover_and_only_the_dead_nodes_breaker_opens() {
    let Some(bin) = require_nats() else { return };
    let nats = Nats::start_js(bin);
    let (mut nodes, _) = three_nodes(&nats);
    let rt = runtime();
    rt.block_on(async {
        // Through n2; eventual, so writes to the live nodes' keys need no
        // replica (a strong write whose replica was n1 waits for the map).
        let c = client(&nodes[1], "eventual").await;
        let dead = format!("127.0.0.1:{}", nodes[0].addr.port());
        let keys: Vec<String> = (0..90).map(|i| format!("fo:{i}")).collect();
        for k in &keys {
            c.set(k, "before", 0).await.unwrap();
        }
        let (moving, staying): (Vec<&String>, Vec<&String>) = keys
            .iter()
            .partition(|k| c.node_for(k.as_str()).as_deref() == Some(dead.as_str()));
        assert!(
            moving.len() > 10 && staying.len() > 30,
            "{} / {}",
            moving.len(),
            staying.len()
        );
        let epoch = c.routing_stats().epoch;

        kill(&mut nodes[0]);
        let killed = Instant::now();
        let mut pending: Vec<&String> = moving.clone();
        let mut rounds = 0;
        while !pending.is_empty() {
            rounds += 1;
            for k in &staying {
                c.set(k.as_str(), "during", 0)
                    .await
                    .unwrap_or_else(|e| panic!("{k} on a live node failed during the failover: {e}"));
            }
            let mut still = Vec::new();
            for k in pending {
                if c.set(k.as_str(), "after", 0).await.is_err() {
                    still.push(k);
                }
            }
            pending = still;
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "{} keys of the dead node still failing after {:?}",
                pending.len(),
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        eprintln!(
            "the client wrote every key of the killed node again {took:?} after the kill ({rounds} rounds)"
        );
        let stats = c.routing_stats();
        assert!(stats.epoch > epoch, "the client learned the new map: {stats:?}");
        for k in &moving {
            assert_ne!(c.node_for(k.as_str()).as_deref(), Some(dead.as_str()), "{k}");
            assert_eq!(
                c.get(k.as_str()).await.unwrap().as_deref(),
                Some(&b"after"[..]),
                "{k}"
            );
        }
        for n in &nodes[1..] {
            let live = format!("127.0.0.1:{}", n.addr.port());
            assert_eq!(
                c.breaker_state(&live),
                dnd_cache::client::BreakerState::Closed,
                "{live}"
            );
        }
    });
}
