//! The coordinator's step (docs/cluster.md, "Membership"): a new map
//! planned from the live nodes, written with compare-and-set.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{info, warn};

use super::Agent;
use crate::cluster::slots::{plan, plan_settled, NodeInfo};

impl Agent {
    /// Writes a new map when the live set differs from the current map's.
    pub(super) async fn coordinate(&mut self, alive: &[NodeInfo]) {
        let prev = self.current.as_ref().map(|(m, _)| m.clone());
        let min_epoch = self.state.highest_epoch() + 1;
        let me = self.state.me.id.clone();
        let my_sync = self.repl.as_ref().is_none_or(|r| r.in_sync());
        // A node that restarted (same id, new incarnation) is empty: its
        // primaries go to their replicas first, then it joins as new.
        let restarted: Vec<String> = match &prev {
            Some(p) => alive
                .iter()
                .filter(|n| {
                    p.index_of(&n.id)
                        .is_some_and(|i| p.nodes[i].incarnation != n.incarnation)
                })
                .map(|n| n.id.clone())
                .collect(),
            None => Vec::new(),
        };
        // A node may take over a slot only while it holds every item of
        // it: it had a copy of the slot in the map planned from, and is
        // in sync under that map (not restarted since).
        let prev_epoch = prev.as_ref().map_or(0, |p| p.epoch);
        let eligible: Vec<String> = alive
            .iter()
            .filter(|n| !restarted.contains(&n.id))
            .filter(|n| {
                if n.id == me {
                    my_sync
                } else {
                    self.live.synced(&n.id, prev_epoch)
                }
            })
            .map(|n| n.id.clone())
            .collect();
        let holds = |slot: usize, id: &str| {
            prev.as_ref().is_some_and(|p| p.has_copy(slot, id)) && eligible.iter().any(|e| e == id)
        };
        let replication = self.config.replication;
        let base = if restarted.is_empty() {
            prev.as_deref().cloned()
        } else {
            // Restarted nodes first hand their slots over, then come back
            // as new nodes.
            let rest: Vec<NodeInfo> = alive
                .iter()
                .filter(|n| !restarted.contains(&n.id))
                .cloned()
                .collect();
            (!rest.is_empty()).then(|| plan(prev.as_deref(), &rest, replication, min_epoch, &holds))
        };
        let mut next = plan_settled(
            base.as_ref().or(prev.as_deref()),
            alive,
            replication,
            min_epoch,
            &holds,
        );
        next.epoch = next.epoch.max(min_epoch);
        if let Some(prev) = &prev {
            if prev.same_roles(&next) {
                return;
            }
        }
        if prev.is_none() && next.seed == 0 {
            // The first map chooses the key hash seed of the cluster.
            next.seed = random_seed();
        }
        let Ok(body) = serde_json::to_vec(&next) else {
            return;
        };
        let expected = self.current.as_ref().map_or(0, |(_, revision)| *revision);
        let written = self.bucket.write(Bytes::from(body), expected).await;
        match written {
            Ok(revision) => {
                info!(epoch = next.epoch, nodes = ?next.node_ids(), "cluster: new slot map written");
                self.install(Arc::new(next), revision);
            }
            Err(e) => {
                // Another coordinator won, or our revision is stale: read
                // the map again and plan from it next time.
                warn!(error = %e, epoch = next.epoch, "cluster: map update lost; re-reading");
                self.current = None;
                self.refresh().await;
            }
        }
    }
}

/// A non-zero seed no client can predict.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes).max(1)
}
