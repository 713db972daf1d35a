//! The cluster: nodes in zones, a slot map agreed through NATS JetStream
//! (a KV bucket written with compare-and-set by revision), membership by
//! heartbeats on core NATS. See docs/cluster.md.
//!
//! - [`slots`]: the slot map and its placement (pure, property-tested);
//! - [`liveness`]: who was heard from lately;
//! - [`agent`]: the thread that talks to NATS: heartbeats, the map's
//!   watch, and (on the coordinator, the live node with the lowest id) the
//!   compare-and-set of a new map when membership changes.
//!
//! Shards get each map as an [`crate::shard::Ownership`] through the
//! control plane: a request for a key of another node's slot is answered
//! CACHE_013 naming that node (REST: 307 to it).

mod agent;
mod bucket;
mod liveness;
mod replicate;
pub mod slots;

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub use agent::start;
use slots::{NodeInfo, SlotMap};

use crate::control::ClusterView;
use crate::metrics::{ClusterSnapshot, NodeStatus};

/// Node status values of `cache_node_status`.
pub const NODE_DOWN: u8 = 0;
pub const NODE_SERVING: u8 = 1;
pub const NODE_SYNCING: u8 = 2;

/// What this node knows of the cluster; written by the agent thread, read
/// by scrapes and `health` (admin paths only, never per request).
pub struct ClusterState {
    me: NodeInfo,
    replication: u8,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    map: Option<Arc<SlotMap>>,
    /// Ids of the nodes heard from within the failure timeout (this one
    /// included).
    alive: Vec<(String, String)>,
    /// Ids of live nodes still catching up (not holding every item of the
    /// slots they replicate).
    syncing: Vec<String>,
    nats_connected: bool,
    /// Highest map epoch this node has seen (a map re-created after the
    /// bucket was lost starts above it).
    highest_epoch: u64,
    /// Seconds behind, per replica target.
    lag: Vec<(String, f64)>,
    /// The replication streams' counters (gaps, resends, full copies).
    repl_counters: Value,
}

impl ClusterState {
    pub fn new(me: NodeInfo, replication: u8) -> Arc<ClusterState> {
        Arc::new(ClusterState {
            me,
            replication,
            view: Mutex::new(View::default()),
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The map in force, if one was agreed.
    pub fn map(&self) -> Option<Arc<SlotMap>> {
        self.view().map.clone()
    }

    pub(crate) fn install(&self, map: Arc<SlotMap>) {
        let mut v = self.view();
        v.highest_epoch = v.highest_epoch.max(map.epoch);
        v.map = Some(map);
    }

    /// Waits (polling, at start only) until a map is installed.
    pub fn wait_for_map(&self, within: std::time::Duration) -> Option<Arc<SlotMap>> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(map) = self.map() {
                return Some(map);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub(crate) fn set_alive(&self, alive: Vec<(String, String)>, syncing: Vec<String>) {
        let mut v = self.view();
        v.alive = alive;
        v.syncing = syncing;
    }

    pub(crate) fn set_lag(&self, lag: Vec<(String, f64)>) {
        self.view().lag = lag;
    }

    pub(crate) fn set_repl_counters(&self, counters: Value) {
        self.view().repl_counters = counters;
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.view().nats_connected = connected;
    }

    pub(crate) fn highest_epoch(&self) -> u64 {
        self.view().highest_epoch
    }

    /// Status of every node in the map or alive: (id, zone, status).
    fn statuses(&self) -> Vec<(String, String, u8)> {
        let v = self.view();
        let alive = |id: &str| v.alive.iter().any(|(a, _)| a == id);
        let mut out: Vec<(String, String, u8)> = Vec::new();
        if let Some(map) = &v.map {
            for n in &map.nodes {
                let status = match (alive(&n.id), v.syncing.contains(&n.id)) {
                    (false, _) => NODE_DOWN,
                    (true, true) => NODE_SYNCING,
                    (true, false) => NODE_SERVING,
                };
                out.push((n.id.clone(), n.zone.clone(), status));
            }
        }
        for (id, zone) in &v.alive {
            if !out.iter().any(|(o, _, _)| o == id) {
                out.push((id.clone(), zone.clone(), NODE_SYNCING));
            }
        }
        out.sort();
        out
    }
}

impl ClusterView for ClusterState {
    fn metrics(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            nodes: self
                .statuses()
                .into_iter()
                .map(|(node, zone, status)| NodeStatus { node, zone, status })
                .collect(),
            lag: self.view().lag.clone(),
        }
    }

    fn health(&self) -> Value {
        let statuses = self.statuses();
        let v = self.view();
        let nodes: Vec<Value> = statuses
            .iter()
            .map(|(id, zone, status)| {
                let info = v.map.as_ref().and_then(|m| m.index_of(id).map(|i| (m, i)));
                let (primary, replica) = info.map_or((0, 0), |(m, i)| m.slot_counts(i));
                let learner = info.map_or(0, |(m, i)| m.learner_count(i));
                let addr = info.map(|(m, i)| format!("{}:{}", m.nodes[i].host, m.nodes[i].port));
                let status = ["down", "serving", "syncing"][usize::from(*status).min(2)];
                json!({
                    "id": id,
                    "zone": zone,
                    "status": status,
                    "address": addr,
                    "primary_slots": primary,
                    "replica_slots": replica,
                    "learner_slots": learner,
                })
            })
            .collect();
        json!({
            "node": self.me.id,
            "zone": self.me.zone,
            "replication": self.replication,
            "nats_connected": v.nats_connected,
            "epoch": v.map.as_ref().map_or(0, |m| m.epoch),
            "slots": slots::SLOTS,
            "nodes": nodes,
            "replication_streams": v.repl_counters,
        })
    }
}
