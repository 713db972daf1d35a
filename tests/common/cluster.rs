//! A cluster of real nodes for the cluster tests: three `cache-server`
//! processes on free loopback ports, zones a, b, a, replication 2, over a
//! real `nats-server -js`.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::HttpConn;
use super::nats::Nats;
use super::TestServer;

/// Flags of node `id` in `zone` of a three-node cluster with two copies.
pub fn node(nats: &Nats, id: &str, zone: &str) -> TestServer {
    node_at(&nats.url(), id, zone)
}

/// As [`node`], with the NATS URL given (credentials in it).
pub fn node_at(url: &str, id: &str, zone: &str) -> TestServer {
    let flags = node_flags(url, id, zone);
    TestServer::start(&flags.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The cluster flags of node `id` (NATS at `url`), as [`node`] starts it.
pub fn node_flags(url: &str, id: &str, zone: &str) -> Vec<String> {
    let flags = [
        "--nats-url",
        url,
        "--cluster-nodes",
        "3",
        "--replication",
        "2",
        "--cluster-zones",
        "a,b",
        "--zone",
        zone,
        "--node-id",
        id,
        "--cluster-name",
        "test-cluster",
        "--health-interval",
        "1",
    ];
    flags.iter().map(|f| f.to_string()).collect()
}

/// The `cluster` member of `GET /api/v2/cache/health`.
pub fn cluster_health(server: &TestServer) -> Value {
    let resp = HttpConn::open(server.http).get("/api/v2/cache/health");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["cache_response"]["data"]["cluster"].clone()
}

/// Polls a node's health until `done` holds, for at most `within`.
pub fn wait_for(server: &TestServer, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let health = cluster_health(server);
        if done(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last: {health:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn serving(health: &Value) -> Vec<String> {
    health["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["status"] == "serving")
        .map(|n| n["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn slot_totals(health: &Value) -> (u64, u64) {
    let nodes = health["nodes"].as_array().cloned().unwrap_or_default();
    let sum = |field: &str| nodes.iter().map(|n| n[field].as_u64().unwrap_or(0)).sum();
    (sum("primary_slots"), sum("replica_slots"))
}

/// Three nodes n1, n2, n3 in zones a, b, a, once every node runs with the
/// same map of all three; with that map's health (from n1).
pub fn three_nodes(nats: &Nats) -> ([TestServer; 3], Value) {
    let nodes = [
        node(nats, "n1", "a"),
        node(nats, "n2", "b"),
        node(nats, "n3", "a"),
    ];
    // Whole, balanced and settled: a node that joins first learns slots,
    // becomes their replica once it holds them, and takes primaries (by
    // swaps of roles) a few maps later.
    let whole = |h: &Value| {
        serving(h) == ["n1", "n2", "n3"]
            && slot_totals(h) == (4096, 4096)
            && h["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .all(|n| n["primary_slots"].as_u64() >= Some(4096 / 3) && n["learner_slots"] == 0)
            })
    };
    let first = wait_for(&nodes[0], Duration::from_secs(20), "a map of three nodes", whole);
    let epoch = first["epoch"].as_u64().unwrap();
    assert!(epoch >= 1);
    for other in &nodes[1..] {
        let h = wait_for(other, Duration::from_secs(5), "the same map everywhere", |h| {
            h["epoch"].as_u64() == Some(epoch) && whole(h)
        });
        assert_eq!(h["replication"], 2);
        assert_eq!(h["slots"], 4096);
    }
    (nodes, first)
}
