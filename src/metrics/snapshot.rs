//! Owned copies of the metrics, taken on a shard and merged off it.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// One (service, operation) of one shard, or merged over shards.
#[derive(Clone, Debug)]
pub struct OpSnapshot {
    pub service: String,
    pub operation: &'static str,
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    /// (ICD code, count) for each non-OK status seen.
    pub errors: Vec<(&'static str, u64)>,
    pub latency_sum_us: u64,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

/// What one shard reports to a scrape.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub items: u64,
    pub used_bytes: u64,
    pub limit_bytes: u64,
    /// Answer bytes waiting for slow readers (outside `limit_bytes`).
    pub output_bytes: u64,
    pub output_paused: u64,
    pub output_stall_closes: u64,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub rejected_writes: u64,
    pub flushed: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub requests: u64,
    pub forwarded_ops: u64,
    pub protocol_errors: u64,
    pub events_queued: u64,
    pub events_dropped: u64,
    pub ops: Vec<OpSnapshot>,
}

/// Counters of the Message Hub bridge.
#[derive(Clone, Debug, Default)]
pub struct BridgeSnapshot {
    /// Whether `--nats-url` was given.
    pub enabled: bool,
    pub connected: bool,
    pub reconnects: u64,
    pub published_item_events: u64,
    pub published_health_events: u64,
    pub publish_failures: u64,
    pub coalesced: u64,
    pub received_config: u64,
    pub received_control: u64,
    pub invalid_messages: u64,
}

/// Everything a scrape shows: the shards' snapshots (in shard order, `None`
/// for a shard that did not answer), merged per (service, operation).
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    /// Server id (`--node-id`) and zone (`--zone`).
    pub node: String,
    pub zone: String,
    pub version: String,
    pub shards: Vec<Option<ShardSnapshot>>,
    /// Merged over the shards, sorted by (service, operation).
    pub ops: Vec<OpSnapshot>,
    pub bridge: BridgeSnapshot,
    /// The cluster's nodes as this node sees them; `None` for a node alone.
    pub cluster: Option<ClusterSnapshot>,
}

/// The cluster as one node sees it, for a scrape.
#[derive(Clone, Debug, Default)]
pub struct ClusterSnapshot {
    pub nodes: Vec<NodeStatus>,
    /// (replica target, seconds behind) of this node's replication streams.
    pub lag: Vec<(String, f64)>,
}

/// One node of the cluster: `cache_node_status{node,zone}`.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node: String,
    pub zone: String,
    /// 0 down, 1 serving, 2 syncing.
    pub status: u8,
}

impl MetricsSnapshot {
    /// Merges shard snapshots; histograms are added bucket by bucket.
    pub fn merge(node: &str, zone: &str, shards: Vec<Option<ShardSnapshot>>, bridge: BridgeSnapshot) -> Self {
        let mut merged: BTreeMap<(String, &'static str), OpSnapshot> = BTreeMap::new();
        for op in shards.iter().flatten().flat_map(|s| s.ops.iter()) {
            match merged.get_mut(&(op.service.clone(), op.operation)) {
                Some(m) => {
                    m.requests += op.requests;
                    m.hits += op.hits;
                    m.misses += op.misses;
                    m.latency_sum_us += op.latency_sum_us;
                    // Same bounds on every shard: adding cannot fail.
                    let _ = m.latency.add(&op.latency);
                    for &(code, n) in &op.errors {
                        match m.errors.iter_mut().find(|(c, _)| *c == code) {
                            Some((_, total)) => *total += n,
                            None => m.errors.push((code, n)),
                        }
                    }
                }
                None => {
                    merged.insert((op.service.clone(), op.operation), op.clone());
                }
            }
        }
        let mut ops: Vec<OpSnapshot> = merged.into_values().collect();
        for op in &mut ops {
            op.errors.sort();
        }
        MetricsSnapshot {
            node: node.to_string(),
            zone: zone.to_string(),
            version: crate::SERVER_VERSION.to_string(),
            shards,
            ops,
            bridge,
            cluster: None,
        }
    }

    /// Sum of a counter over the shards that answered.
    pub fn total(&self, field: impl Fn(&ShardSnapshot) -> u64) -> u64 {
        self.shards.iter().flatten().map(field).sum()
    }

    /// Whether every shard answered.
    pub fn all_shards_up(&self) -> bool {
        self.shards.iter().all(Option::is_some)
    }
}
