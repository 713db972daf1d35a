//! The slot map: [`SLOTS`] slots of the key space, each with a primary
//! node and (with replication 2) a replica on another node, in another
//! zone where the cluster has one. A map has an epoch; every change makes a
//! new map with a higher epoch, written with compare-and-set in the
//! cluster's JetStream KV bucket (`agent.rs`), so two nodes cannot both
//! install one.
//!
//! [`plan`] is a pure function of the previous map and the live nodes:
//! slots stay where they are while their nodes live, a slot whose primary
//! is gone goes to its replica, and only what is needed moves to balance
//! the load. Property-tested below.

use serde::{Deserialize, Serialize};

pub use crate::key::{slot_of, SLOTS};

/// No node (a slot without a replica).
pub const NO_NODE: u16 = u16::MAX;

/// A member of the cluster as other nodes and clients reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `--node-id`: unique in the cluster.
    pub id: String,
    /// `--zone`.
    pub zone: String,
    /// `--advertise-addr`: the host other nodes and clients dial.
    pub host: String,
    /// Public binary port.
    pub port: u16,
    /// REST port.
    pub http_port: u16,
    /// Binary port of each shard.
    pub shard_ports: Vec<u16>,
    /// When this process started (Unix µs): a node that restarts under the
    /// same id comes back empty, and the map treats it as new.
    #[serde(default)]
    pub incarnation: u64,
}

/// Who holds each slot, at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMap {
    /// Raised by every change; a node never installs a lower one.
    pub epoch: u64,
    /// The key hash seed every node uses (chosen with the first map), so
    /// that a key has the same slot everywhere.
    pub seed: u64,
    /// Copies of each slot wanted (1 or 2).
    pub replication: u8,
    /// The members, sorted by id; slots name them by index.
    pub nodes: Vec<NodeInfo>,
    /// Primary of each slot (index into `nodes`).
    pub primary: Vec<u16>,
    /// Replica of each slot, or [`NO_NODE`].
    pub replica: Vec<u16>,
    /// Learner of each slot, or [`NO_NODE`] (empty: none at all): the node
    /// the slot's replica moves to, being filled. It gets the primary's
    /// writes and a full copy; the replica that holds the slot stays until
    /// the learner is in sync, so a move never leaves a slot with one copy.
    #[serde(default)]
    pub learner: Vec<u16>,
}

impl SlotMap {
    /// The index of a node in this map.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The index of node `id` as this very process (`incarnation`): a map
    /// that names an earlier run of the node (restarted, empty) does not
    /// name this one.
    pub fn index_of_run(&self, id: &str, incarnation: u64) -> Option<usize> {
        self.index_of(id)
            .filter(|&i| self.nodes[i].incarnation == incarnation)
    }

    /// Slots whose primary, and whose replica, is node `index`.
    pub fn slot_counts(&self, index: usize) -> (usize, usize) {
        let primary = self.primary.iter().filter(|&&p| p as usize == index).count();
        let replica = self.replica.iter().filter(|&&r| r as usize == index).count();
        (primary, replica)
    }

    /// Slots node `index` is the learner of (being filled).
    pub fn learner_count(&self, index: usize) -> usize {
        self.learner.iter().filter(|&&l| l as usize == index).count()
    }

    /// The learner of `slot`, or [`NO_NODE`].
    pub fn learner_of(&self, slot: usize) -> u16 {
        self.learner.get(slot).copied().unwrap_or(NO_NODE)
    }

    /// Whether the map is well formed: every slot has a live primary, a
    /// replica (when wanted and possible) on another node.
    pub fn check(&self) -> Result<(), String> {
        if self.primary.len() != SLOTS
            || self.replica.len() != SLOTS
            || !(self.learner.is_empty() || self.learner.len() == SLOTS)
        {
            return Err(format!("{} slots, not {SLOTS}", self.primary.len()));
        }
        if self.nodes.is_empty() {
            return Err("no node".into());
        }
        if !self.nodes.windows(2).all(|w| w[0].id < w[1].id) {
            return Err("nodes not sorted by id or listed twice".into());
        }
        let n = self.nodes.len();
        for slot in 0..SLOTS {
            let (p, r) = (self.primary[slot] as usize, self.replica[slot]);
            if p >= n {
                return Err(format!("slot {slot}: primary {p} is not a node"));
            }
            if r != NO_NODE && (r as usize >= n || r as usize == p) {
                return Err(format!("slot {slot}: replica {r} is not another node"));
            }
            if r == NO_NODE && self.replication >= 2 && n >= 2 {
                return Err(format!("slot {slot}: no replica"));
            }
            let l = self.learner_of(slot);
            if l != NO_NODE && (l as usize >= n || l as usize == p || l == r || r == NO_NODE) {
                return Err(format!("slot {slot}: learner {l} is not a third node"));
            }
        }
        Ok(())
    }

    /// The node ids, in map order.
    pub fn node_ids(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.id.as_str()).collect()
    }
}

impl SlotMap {
    /// Slot ownership as shards check it, from a map, for node `me` as it
    /// runs now: a map naming an earlier run (restarted, empty) gives it no
    /// slot, so it serves none of them until the coordinator re-adds it.
    pub fn ownership(&self, me: &str, incarnation: u64) -> crate::shard::Ownership {
        crate::shard::Ownership {
            epoch: self.epoch,
            me: self.index_of_run(me, incarnation).map(|i| i as u16),
            primary: self.primary.clone(),
            replica: self.replica.clone(),
            learner: self.learner.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| crate::proto::ClusterNode {
                    id: n.id.clone(),
                    zone: n.zone.clone(),
                    host: n.host.clone(),
                    port: u32::from(n.port),
                    shard_ports: n.shard_ports.iter().map(|&p| u32::from(p)).collect(),
                    http_port: u32::from(n.http_port),
                })
                .collect(),
        }
    }

    /// Whether node `id` is the primary, the replica or the learner of
    /// `slot`.
    pub fn has_copy(&self, slot: usize, id: &str) -> bool {
        let is = |i: u16| self.nodes.get(i as usize).is_some_and(|n| n.id == id);
        is(self.primary[slot]) || is(self.replica[slot]) || is(self.learner_of(slot))
    }

    /// Whether both maps give every slot the same nodes in the same roles.
    pub fn same_roles(&self, other: &SlotMap) -> bool {
        let learners = |m: &SlotMap| (0..SLOTS).map(|s| m.learner_of(s)).collect::<Vec<_>>();
        self.nodes == other.nodes
            && self.primary == other.primary
            && self.replica == other.replica
            && learners(self) == learners(other)
    }
}

mod plan;

/// A node for tests: `id` in `zone`, on made-up ports.
#[cfg(test)]
pub(crate) fn test_node(id: &str, zone: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        zone: zone.into(),
        host: "127.0.0.1".into(),
        port: 7000,
        http_port: 8000,
        shard_ports: vec![7100],
        incarnation: 0,
    }
}

pub use plan::{plan, plan_settled, PLAN_ROUNDS};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_of_uses_the_top_bits() {
        assert_eq!(slot_of(0), 0);
        assert_eq!(slot_of(u64::MAX), SLOTS - 1);
        assert_eq!(slot_of(1 << 52), 1);
    }
}
