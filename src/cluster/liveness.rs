//! Who was heard from lately: a node is alive while its last heartbeat is
//! younger than the failure timeout. Liveness rests on heartbeats, not on
//! KV expiry (nats-server 2.9 has no per-key TTL, and an expired KV entry
//! vanishes without a watch event).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::slots::NodeInfo;

/// The nodes heard from, by id.
#[derive(Default)]
pub struct Liveness {
    seen: BTreeMap<String, (NodeInfo, Instant)>,
    /// Per node whose last heartbeat said it holds every item of the slots
    /// it replicates: the epoch of the map it said so under.
    synced: BTreeMap<String, u64>,
    /// Per node, the epoch of the map its last heartbeat said it runs.
    epochs: BTreeMap<String, u64>,
}

impl Liveness {
    /// A heartbeat from `node` at `now`.
    pub fn saw(&mut self, node: NodeInfo, epoch: u64, synced_at: Option<u64>, now: Instant) {
        self.epochs.insert(node.id.clone(), epoch);
        if let Some(epoch) = synced_at {
            self.synced.insert(node.id.clone(), epoch);
        } else {
            self.synced.remove(&node.id);
        }
        self.seen.insert(node.id.clone(), (node, now));
    }

    /// Whether `id`'s last heartbeat said it was in sync with the map of
    /// `epoch` (in sync under an older map says nothing of the slots the
    /// newer one gave it).
    pub fn synced(&self, id: &str, epoch: u64) -> bool {
        self.synced.get(id) == Some(&epoch)
    }

    /// The epoch of the map `id`'s last heartbeat said it runs.
    pub fn epoch_of(&self, id: &str) -> Option<u64> {
        self.epochs.get(id).copied()
    }

    /// The nodes heard from within `timeout` of `now`, by id; older ones
    /// are forgotten.
    pub fn alive(&mut self, now: Instant, timeout: Duration) -> Vec<NodeInfo> {
        self.seen
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= timeout);
        self.seen.values().map(|(n, _)| n.clone()).collect()
    }

    /// Forgets everyone (after a reconnection to NATS, liveness is
    /// rebuilt from fresh heartbeats).
    pub fn clear(&mut self) {
        self.seen.clear();
        self.synced.clear();
        self.epochs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            zone: "z".into(),
            host: "h".into(),
            port: 1,
            http_port: 2,
            shard_ports: vec![],
            incarnation: 0,
        }
    }

    #[test]
    fn a_node_is_out_once_its_heartbeats_stop() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.saw(node("a"), 1, Some(1), t0);
        l.saw(node("b"), 1, Some(1), t0 + Duration::from_millis(600));
        let ids = |v: Vec<NodeInfo>| v.into_iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(
            ids(l.alive(t0 + Duration::from_millis(900), Duration::from_secs(1))),
            ["a", "b"]
        );
        assert_eq!(
            ids(l.alive(t0 + Duration::from_millis(1100), Duration::from_secs(1))),
            ["b"]
        );
        l.saw(node("a"), 1, Some(1), t0 + Duration::from_millis(1200));
        assert_eq!(
            ids(l.alive(t0 + Duration::from_millis(1300), Duration::from_secs(1))),
            ["a", "b"]
        );
        l.clear();
        assert!(l.alive(t0, Duration::from_secs(1)).is_empty());
    }
}
