//! The coordinator's step (docs/cluster.md, "Membership"): a new map
//! planned from the live nodes, written with compare-and-set.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use super::{Agent, FAILURE_TIMEOUT, SETTLE, STALL};
use crate::cluster::bucket::BucketError;
use crate::cluster::slots::{plan, plan_settled, NodeInfo};

/// A map read's answer, back from its task.
pub(super) struct MapRead {
    pub result: Result<Option<(Bytes, u64)>, BucketError>,
    /// The bucket's stream was found (or made) on the way.
    pub ready: bool,
    /// When the last heartbeat before the read was sent (Unix µs).
    pub sent_at_us: u64,
    /// When the tick that asked began.
    pub started: Instant,
}

impl Agent {
    /// A map read answered: installs a newer map, renews the lease, and
    /// plans when this node coordinates.
    pub(super) async fn map_read(&mut self, read: MapRead) {
        self.reading = false;
        if read.ready && read.result.is_ok() {
            self.bucket.set_ready();
        }
        let answered = self.took(read.result);
        if answered {
            // The map read was answered after the heartbeat went out: the
            // others heard from us at `sent_at_us` or later, and no newer
            // map moved our slots. They cannot before FAILURE_TIMEOUT.
            self.renew_lease(read.sent_at_us);
        }
        self.follow().await;
        if answered {
            self.plan_if_coordinator(read.started).await;
        }
    }

    /// When this node is the coordinator and may judge liveness: plans and
    /// writes the next map if the live set differs from the map's.
    async fn plan_if_coordinator(&mut self, started: Instant) {
        let me = self.state.me.clone();
        let now = Instant::now();
        let mut alive = self.live.alive(now, FAILURE_TIMEOUT);
        alive.push(me.clone());
        alive.sort_by(|a, b| a.id.cmp(&b.id));
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if !connected || now < self.settled_at || alive[0].id != me.id {
            return;
        }
        // This read waited on NATS (a request during an outage): what
        // the others heard of us meanwhile is unsure, so silence proves
        // nothing yet (the first map is exempt: it removes no one, and
        // JetStream may be slow to answer while it starts).
        let blocked = started.elapsed();
        if self.current.is_some()
            && (blocked > STALL || self.client.connection_state() != async_nats::connection::State::Connected)
        {
            warn!(
                blocked_ms = blocked.as_millis() as u64,
                "cluster: the map read waited on NATS; hearing peers again before coordinating"
            );
            self.settled_at = Instant::now() + SETTLE;
            return;
        }
        // A coordinator that hears fewer than half of the map's nodes is
        // more likely cut off than they are all dead: it does not shrink
        // the map (with replication 2, two nodes lost at once lose data
        // anyway; one node of two still fails over).
        if let Some((map, _)) = &self.current {
            let heard = map
                .nodes
                .iter()
                .filter(|n| alive.iter().any(|a| a.id == n.id))
                .count();
            if heard * 2 < map.nodes.len() {
                warn!(
                    heard,
                    nodes = map.nodes.len(),
                    "cluster: hearing a minority of the map's nodes; not planning"
                );
                return;
            }
        }
        // The first map waits for the cluster to be whole, or for the
        // settle time to pass twice over (a cluster that starts degraded
        // still serves).
        if self.current.is_none() && alive.len() < self.config.nodes && now < self.settled_at + SETTLE {
            return;
        }
        self.coordinate(&alive).await;
        self.follow().await;
    }

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
        // Only the slot's primary or its replica acknowledged every strong
        // write of it; a learner may lack the last ones (strong writes do
        // not wait for it), so it takes no primary before it is the replica.
        let leads = |slot: usize, id: &str| {
            prev.as_ref().is_some_and(|p| {
                let is = |i: u16| p.nodes.get(i as usize).is_some_and(|n| n.id == id);
                is(p.primary[slot]) || is(p.replica[slot])
            }) && eligible.iter().any(|e| e == id)
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
            (!rest.is_empty()).then(|| plan(prev.as_deref(), &rest, replication, min_epoch, &holds, &leads))
        };
        let mut next = plan_settled(
            base.as_ref().or(prev.as_deref()),
            alive,
            replication,
            min_epoch,
            &holds,
            &leads,
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
