//! Where each key of a cluster lives, as this client last learned it
//! (docs/cluster.md, "Routing"; the same rules as the Python and Go
//! clients).
//!
//! - A key goes to its slot's primary node, to that node's owner shard
//!   when the client is shard-aware: no redirection while the map is
//!   current.
//! - The map comes with every handshake (a newer epoch replaces an older
//!   one) and each slot remembers the epoch of what set its route.
//! - A CACHE_013 answer at an epoch at or above the slot's moves the slot
//!   to the node it names; a newer epoch than the map's also refreshes the
//!   whole map. An answer at an older epoch comes from a node still running
//!   an older map: the route stays, and the request waits and asks again.
//! - A connection error to a node refreshes the map from another node, so
//!   a failover (the replica promoted at a higher epoch) is followed as
//!   soon as any reachable node runs the new map.
//! - Each node has its own circuit breaker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dnd_cache_proto::key::{owner_of, slot_of, SLOTS};
use dnd_cache_proto::pb as proto;

use crate::breaker::{Breaker, BreakerConfig};
use crate::Route;

/// Most CACHE_013 redirections one request follows.
pub(crate) const MAX_REDIRECTS: u32 = 3;

/// How long one request waits, in all, for a node that answered from an
/// older map to catch up (nodes install a map within about 200 ms of each
/// other; a lagging one within about 1 s).
pub(crate) const STALE_WAIT: Duration = Duration::from_secs(2);

/// A map is refreshed at most this often (a burst of errors or
/// redirections refreshes once).
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The wait before asking a lagging node again, after `tries` waits.
pub(crate) fn stale_backoff(tries: u32) -> Duration {
    Duration::from_millis(10u64 << tries.min(5)).min(Duration::from_millis(200))
}

/// What to do with a CACHE_013 answer, given the epoch the client holds
/// the slot's route at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnMoved {
    /// The answer is as new as what the client knows, or newer: the slot
    /// moved; go where it says.
    Follow,
    /// The answering node runs an older map than the client: keep the
    /// route, wait, and ask the same node again.
    Wait,
}

pub(crate) fn on_moved(known_epoch: u64, answer_epoch: u64) -> OnMoved {
    if answer_epoch >= known_epoch {
        OnMoved::Follow
    } else {
        OnMoved::Wait
    }
}

/// The fields of a CACHE_013 answer a client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Moved {
    pub slot: usize,
    pub address: String,
    pub epoch: u64,
}

impl Moved {
    pub(crate) fn parse(data: &[u8]) -> Option<Moved> {
        let v: serde_json::Value = serde_json::from_slice(data).ok()?;
        let m = &v["moved"];
        let slot = m["slot"].as_u64()? as usize;
        (slot < SLOTS).then_some(())?;
        Some(Moved {
            slot,
            address: m["address"].as_str()?.to_string(),
            epoch: m["epoch"].as_u64().unwrap_or(0),
        })
    }
}

/// One node: its public port, its shard ports, its breaker. Kept across
/// maps (by public address) so connections and breakers survive a change.
pub(crate) struct Node {
    pub address: String,
    pub public: Arc<Route>,
    shards: Vec<Arc<Route>>,
    pub breaker: Breaker,
}

impl Node {
    fn new(address: String, shard_addresses: Vec<String>, breaker: BreakerConfig) -> Node {
        Node {
            public: Arc::new(Route::new(address.clone())),
            shards: shard_addresses
                .into_iter()
                .map(|a| Arc::new(Route::new(a)))
                .collect(),
            address,
            breaker: Breaker::new(breaker),
        }
    }

    /// The route for a key hash: its owner shard, else the public port.
    pub(crate) fn route(&self, hash: u64, shard_aware: bool) -> Arc<Route> {
        if shard_aware && !self.shards.is_empty() {
            self.shards[owner_of(hash, self.shards.len())].clone()
        } else {
            self.public.clone()
        }
    }

    fn same_shards(&self, addresses: &[String]) -> bool {
        self.shards.len() == addresses.len()
            && self.shards.iter().zip(addresses).all(|(r, a)| r.address == *a)
    }
}

struct Slot {
    node: Arc<Node>,
    epoch: u64,
}

struct Map {
    epoch: u64,
    slots: Vec<Slot>,
}

/// Counters of how the client routed: for tests and users
/// ([`crate::CacheClient::routing_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingStats {
    /// The map's epoch the client holds (0: not a cluster).
    pub epoch: u64,
    /// CACHE_013 answers followed to another node.
    pub redirects: u64,
    /// CACHE_013 answers from a node on an older map, waited on.
    pub stale_waits: u64,
    /// Whole maps installed after the first (from a refresh or a new
    /// connection's handshake).
    pub map_updates: u64,
    /// Refreshes asked for (after a newer epoch or a connection error).
    pub refreshes: u64,
}

#[derive(Default)]
struct Counters {
    redirects: AtomicU64,
    stale_waits: AtomicU64,
    map_updates: AtomicU64,
    refreshes: AtomicU64,
}

/// The client's view of a cluster.
pub(crate) struct Cluster {
    shard_aware: bool,
    breaker: BreakerConfig,
    map: RwLock<Map>,
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// When the map was last refreshed; held across a refresh, so one runs
    /// at a time.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    counters: Counters,
}

fn node_addresses(n: &proto::ClusterNode) -> (String, Vec<String>) {
    (
        format!("{}:{}", n.host, n.port),
        n.shard_ports
            .iter()
            .map(|p| format!("{}:{}", n.host, p))
            .collect(),
    )
}

impl Cluster {
    /// The cluster a handshake describes; `None` for a lone server.
    pub(crate) fn from_handshake(
        handshake: &proto::Handshake,
        shard_aware: bool,
        breaker: BreakerConfig,
    ) -> Option<Cluster> {
        if !is_cluster_map(handshake) {
            return None;
        }
        let cluster = Cluster {
            shard_aware,
            breaker,
            map: RwLock::new(Map {
                epoch: 0,
                slots: Vec::new(),
            }),
            nodes: Mutex::new(HashMap::new()),
            refreshed: tokio::sync::Mutex::new(None),
            counters: Counters::default(),
        };
        cluster.install(handshake);
        Some(cluster)
    }

    /// The node at `address`; `shards` when the map lists them (a node
    /// whose shard ports changed, restarted elsewhere, gets a fresh entry).
    fn node(&self, address: &str, shards: Option<Vec<String>>) -> Arc<Node> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        match (nodes.get(address), &shards) {
            (Some(n), Some(s)) if n.same_shards(s) => return n.clone(),
            (Some(n), None) => return n.clone(),
            _ => {}
        }
        let node = Arc::new(Node::new(
            address.to_string(),
            shards.unwrap_or_default(),
            self.breaker,
        ));
        nodes.insert(address.to_string(), node.clone());
        node
    }

    /// Installs a handshake's map if it is newer than the one held; each
    /// slot keeps a route learned at a still newer epoch. True if it did.
    pub(crate) fn install(&self, handshake: &proto::Handshake) -> bool {
        if !is_cluster_map(handshake) || handshake.cluster_epoch <= self.epoch() {
            return false;
        }
        let members: Vec<Arc<Node>> = handshake
            .nodes
            .iter()
            .map(|n| {
                let (address, shards) = node_addresses(n);
                self.node(&address, Some(shards))
            })
            .collect();
        let epoch = handshake.cluster_epoch;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if epoch <= map.epoch {
            return false;
        }
        let first = map.slots.is_empty();
        let old = std::mem::take(&mut map.slots);
        let mut old = old.into_iter();
        let mut slots = Vec::with_capacity(SLOTS);
        for &p in &handshake.slot_primary {
            let kept = old.next().filter(|s| s.epoch > epoch);
            slots.push(match (kept, members.get(p as usize)) {
                (Some(s), _) => s,
                (None, Some(node)) => Slot {
                    node: node.clone(),
                    epoch,
                },
                // A slot without a primary (a map mid-change): the
                // answering node's view is the best there is.
                (None, None) => Slot {
                    node: members[handshake.node_index as usize % members.len()].clone(),
                    epoch: 0,
                },
            });
        }
        map.slots = slots;
        map.epoch = epoch;
        if !first {
            self.counters.map_updates.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.map.read().unwrap_or_else(|e| e.into_inner()).epoch
    }

    /// The node owning `hash`'s slot and the route to use for it.
    pub(crate) fn route(&self, hash: u64) -> (Arc<Node>, Arc<Route>) {
        let node = self.map.read().unwrap_or_else(|e| e.into_inner()).slots[slot_of(hash)]
            .node
            .clone();
        let route = node.route(hash, self.shard_aware);
        (node, route)
    }

    /// Every node of the current map, each once, in slot order.
    pub(crate) fn members(&self) -> Vec<Arc<Node>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut seen: Vec<Arc<Node>> = Vec::new();
        for s in &map.slots {
            if !seen.iter().any(|n| Arc::ptr_eq(n, &s.node)) {
                seen.push(s.node.clone());
            }
        }
        seen
    }

    /// Applies a CACHE_013 answer for a request of key hash `hash`: the
    /// decision, and for `Follow` the new route (the slot now points at
    /// the named node, at the answer's epoch).
    pub(crate) fn moved(&self, hash: u64, moved: &Moved) -> (OnMoved, Arc<Node>, Arc<Route>) {
        let slot = slot_of(hash);
        let known = self.map.read().unwrap_or_else(|e| e.into_inner()).slots[slot].epoch;
        match on_moved(known, moved.epoch) {
            OnMoved::Wait => {
                self.counters.stale_waits.fetch_add(1, Ordering::Relaxed);
                let (node, route) = self.route(hash);
                (OnMoved::Wait, node, route)
            }
            OnMoved::Follow => {
                self.counters.redirects.fetch_add(1, Ordering::Relaxed);
                let node = self.node(&moved.address, None);
                {
                    let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
                    let s = &mut map.slots[slot];
                    if moved.epoch >= s.epoch {
                        *s = Slot {
                            node: node.clone(),
                            epoch: moved.epoch,
                        };
                    }
                }
                let route = node.route(hash, self.shard_aware);
                (OnMoved::Follow, node, route)
            }
        }
    }

    /// Whether a refresh may start now; if so, the guard to hold while it
    /// runs (one at a time, at most one per [`REFRESH_EVERY`]).
    pub(crate) async fn refresh_slot(&self) -> Option<tokio::sync::MutexGuard<'_, Option<Instant>>> {
        let guard = self.refreshed.lock().await;
        if guard.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return None;
        }
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        Some(guard)
    }

    /// Addresses to refresh the map from, best first: `first`, then every
    /// known node but `avoid`.
    pub(crate) fn refresh_candidates(&self, first: Option<&str>, avoid: Option<&str>) -> Vec<Arc<Node>> {
        let mut out: Vec<Arc<Node>> = Vec::new();
        if let Some(a) = first {
            out.push(self.node(a, None));
        }
        for n in self.members() {
            if Some(n.address.as_str()) != avoid && !out.iter().any(|o| o.address == n.address) {
                out.push(n);
            }
        }
        out
    }

    pub(crate) fn stats(&self) -> RoutingStats {
        let c = &self.counters;
        RoutingStats {
            epoch: self.epoch(),
            redirects: c.redirects.load(Ordering::Relaxed),
            stale_waits: c.stale_waits.load(Ordering::Relaxed),
            map_updates: c.map_updates.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
        }
    }
}

fn is_cluster_map(h: &proto::Handshake) -> bool {
    h.cluster_epoch != 0 && h.slot_primary.len() == SLOTS && !h.nodes.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(epoch: u64, owner: impl Fn(usize) -> u32) -> proto::Handshake {
        proto::Handshake {
            cluster_epoch: epoch,
            nodes: (0..2)
                .map(|i| proto::ClusterNode {
                    id: format!("n{i}"),
                    host: "127.0.0.1".into(),
                    port: 7000 + i,
                    shard_ports: vec![7100 + 10 * i, 7101 + 10 * i],
                    ..Default::default()
                })
                .collect(),
            node_index: 0,
            slot_primary: (0..SLOTS).map(owner).collect(),
            ..Default::default()
        }
    }

    fn hash_of_slot(slot: usize) -> u64 {
        (slot as u64) << 52
    }

    #[test]
    fn an_older_answer_waits_a_newer_or_equal_one_is_followed() {
        assert_eq!(on_moved(5, 4), OnMoved::Wait);
        assert_eq!(on_moved(5, 5), OnMoved::Follow);
        assert_eq!(on_moved(5, 6), OnMoved::Follow);
        assert_eq!(on_moved(0, 0), OnMoved::Follow);
    }

    #[test]
    fn the_stale_wait_doubles_to_a_cap() {
        let waits: Vec<u64> = (0..8).map(|t| stale_backoff(t).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 200, 200, 200]);
    }

    #[test]
    fn keys_route_to_their_primary_owner_shard() {
        let c = Cluster::from_handshake(&handshake(3, |s| (s % 2) as u32), true, BreakerConfig::default())
            .unwrap();
        let (node, route) = c.route(hash_of_slot(1));
        assert_eq!(node.address, "127.0.0.1:7001");
        assert!(route.address == "127.0.0.1:7110" || route.address == "127.0.0.1:7111");
        let (node, _) = c.route(hash_of_slot(2));
        assert_eq!(node.address, "127.0.0.1:7000");
        let plain = Cluster::from_handshake(&handshake(3, |_| 1), false, BreakerConfig::default()).unwrap();
        assert_eq!(plain.route(hash_of_slot(9)).1.address, "127.0.0.1:7001");
    }

    #[test]
    fn a_moved_answer_moves_one_slot_and_an_older_map_changes_nothing() {
        let c = Cluster::from_handshake(&handshake(3, |_| 0), true, BreakerConfig::default()).unwrap();
        let moved = Moved {
            slot: 7,
            address: "127.0.0.1:7001".into(),
            epoch: 4,
        };
        let (decision, node, route) = c.moved(hash_of_slot(7), &moved);
        assert_eq!(decision, OnMoved::Follow);
        assert_eq!(node.address, "127.0.0.1:7001");
        // The node's shard ports are known from the map: its owner shard.
        assert!(route.address.starts_with("127.0.0.1:711"));
        assert_eq!(c.route(hash_of_slot(7)).0.address, "127.0.0.1:7001");
        assert_eq!(c.route(hash_of_slot(8)).0.address, "127.0.0.1:7000");
        // An answer from a node at epoch 3 about slot 7 (now known at 4).
        let stale = Moved {
            epoch: 3,
            ..moved.clone()
        };
        assert_eq!(c.moved(hash_of_slot(7), &stale).0, OnMoved::Wait);
        // A map at epoch 2 is older than the one held: ignored.
        assert!(!c.install(&handshake(2, |_| 1)));
        assert_eq!(c.route(hash_of_slot(8)).0.address, "127.0.0.1:7000");
        // Slot 9 is learned at epoch 6; a whole map at epoch 5 replaces
        // the rest but keeps that newer route.
        let newer = Moved {
            slot: 9,
            epoch: 6,
            ..moved
        };
        assert_eq!(c.moved(hash_of_slot(9), &newer).0, OnMoved::Follow);
        assert!(c.install(&handshake(5, |_| 0)));
        assert_eq!(c.route(hash_of_slot(9)).0.address, "127.0.0.1:7001");
        assert_eq!(c.route(hash_of_slot(7)).0.address, "127.0.0.1:7000");
        let s = c.stats();
        assert_eq!((s.epoch, s.redirects, s.stale_waits, s.map_updates), (5, 2, 1, 1));
    }

    #[test]
    fn nodes_keep_their_breakers_across_maps() {
        let c = Cluster::from_handshake(&handshake(3, |_| 0), true, BreakerConfig::default()).unwrap();
        let a = c.route(hash_of_slot(0)).0;
        assert!(c.install(&handshake(5, |_| 0)));
        assert!(Arc::ptr_eq(&a, &c.route(hash_of_slot(0)).0));
        assert_eq!(c.members().len(), 1);
    }

    #[test]
    fn a_moved_answer_parses_and_refuses_a_slot_out_of_range() {
        let m = Moved::parse(br#"{"moved":{"slot":12,"node":"n2","address":"h:1","http":"h:2","epoch":9}}"#)
            .unwrap();
        assert_eq!(
            m,
            Moved {
                slot: 12,
                address: "h:1".into(),
                epoch: 9
            }
        );
        assert!(Moved::parse(br#"{"moved":{"slot":4096,"address":"h:1","epoch":9}}"#).is_none());
        assert!(Moved::parse(b"not json").is_none());
    }
}
