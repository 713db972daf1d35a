//! One shard: a pinned executor's exclusive partition of the key space, and
//! the code that runs operations on it.
//!
//! Only this module changes a shard's state. Its fields are private; the
//! rest of the server reaches them through named operations: requests
//! ([`execute`]), commands of the control plane ([`commands`]: flush,
//! invalidate, apply_policy, snapshot), and the counters below.
//!
//! - [`store`], [`item`]: the index and the records (over [`crate::slab`]);
//! - [`policy`]: TTLs, cache types, consistency and event switches;
//! - [`events`]: item events handed to the Message Hub bridge;
//! - [`stats`]: connection and request counters.

mod catchup;
#[cfg(test)]
mod codec_tests;
mod commands;
pub(crate) mod events;
pub(crate) mod execute;
#[cfg(test)]
mod flush_tests;
pub(crate) mod item;
pub(crate) mod policy;
pub mod replication;
pub(crate) mod stats;
pub mod store;
mod tombstones;

use std::cell::{Cell, Ref, RefCell, RefMut};

pub use commands::{FlushRule, ShardCommand};
use stats::ShardCounters;
use store::{Store, StoreConfig};

/// Limits every shard applies.
#[derive(Debug, Clone, Copy)]
pub struct ShardLimits {
    pub max_frame_bytes: usize,
    pub max_item_bytes: usize,
}

/// A shard's state, shared by the tasks of its executor (never across
/// threads).
pub struct Shard {
    id: usize,
    count: usize,
    seed: u64,
    limits: ShardLimits,
    store: RefCell<Store>,
    counters: RefCell<ShardCounters>,
    /// Set when the server is shutting down.
    draining: Cell<bool>,
    /// Compression and encryption at rest (see [`crate::codec`]).
    codec: RefCell<crate::codec::ValueCodec>,
    /// Whether writes that ask for nothing still go through the codec.
    codec_eager: bool,
    /// The plaintext of an encrypted value passed through this shard since
    /// the last [`Shard::take_secret`]: its caller wipes its buffers.
    secret: Cell<bool>,
    /// Request metrics of this shard (issue 7).
    metrics: RefCell<crate::metrics::ShardMetrics>,
    /// Default TTLs, cache types and event switches; replaced by the
    /// control plane when `config.cache.update` arrives.
    policy: RefCell<policy::Policy>,
    /// This shard's end of the Message Hub event queue; `None` = events off.
    events: Option<events::EventSink>,
    /// In a cluster: which node owns each slot (`None`: a node alone).
    ownership: RefCell<Option<std::sync::Arc<Ownership>>>,
    /// With replication 2: writes handed to the replicas.
    repl: Option<replication::ReplSink>,
    /// With replication 2: recent deletes, which older applied writes
    /// must not undo.
    tombstones: RefCell<tombstones::Tombstones>,
}

/// Which node of the cluster owns each slot, as a shard checks it
/// (built by `crate::cluster` from the slot map).
#[derive(Debug)]
pub struct Ownership {
    pub epoch: u64,
    /// This node's index in `nodes` (`None`: not in the map yet).
    pub me: Option<u16>,
    /// Primary node of each slot.
    pub primary: Vec<u16>,
    /// Replica node of each slot (`u16::MAX`: none).
    pub replica: Vec<u16>,
    /// Learner node of each slot (`u16::MAX` or empty: none): a replica
    /// being filled (the cluster agent copies it the replica's writes).
    pub learner: Vec<u16>,
    /// The nodes, as clients dial them (also sent in the handshake).
    pub nodes: Vec<crate::proto::ClusterNode>,
}

impl Ownership {
    /// The CACHE_013 answer for a slot owned by `node`: JSON naming it.
    pub fn moved(&self, slot: usize, node: u16) -> String {
        let n = self.nodes.get(node as usize);
        serde_json::json!({ "moved": {
            "slot": slot,
            "node": n.map(|n| n.id.as_str()),
            "address": n.map(|n| format!("{}:{}", n.host, n.port)),
            "http": n.map(|n| format!("{}:{}", n.host, n.http_port)),
            "epoch": self.epoch,
        }})
        .to_string()
    }
}

impl Shard {
    pub fn new(id: usize, count: usize, limits: ShardLimits, store: StoreConfig) -> Self {
        // The policy resolves a write's TTL 0 (per cache type, else the
        // default) before the store sees it; the store's own default is
        // then only reached for "never expire".
        let policy = policy::Policy::new(store.default_ttl_s, 0);
        let store = StoreConfig {
            default_ttl_s: 0,
            ..store
        };
        Shard {
            id,
            count,
            seed: store.seed,
            limits,
            store: RefCell::new(Store::new(store)),
            counters: RefCell::new(ShardCounters::default()),
            draining: Cell::new(false),
            codec: RefCell::new(crate::codec::ValueCodec::off(limits.max_item_bytes)),
            codec_eager: false,
            secret: Cell::new(false),
            metrics: RefCell::default(),
            policy: RefCell::new(policy),
            events: None,
            ownership: RefCell::new(None),
            repl: None,
            tombstones: RefCell::default(),
        }
    }

    /// Sets the start policy and, when events are on, the event queue.
    pub fn attach_hub(&mut self, policy: policy::Policy, events: Option<events::EventSink>) {
        self.policy = RefCell::new(policy);
        self.events = events;
    }

    /// This shard with its value codec (server start).
    pub fn with_codec(mut self, codec: crate::codec::ValueCodec) -> Self {
        self.codec_eager = codec.eager();
        self.codec = RefCell::new(codec);
        self
    }

    /// Whether this shard owns a key hash.
    #[inline]
    pub fn owns(&self, hash: u64) -> bool {
        crate::key::owner_of(hash, self.count) == self.id
    }

    /// This shard's index among the node's shards.
    #[inline]
    pub fn id(&self) -> usize {
        self.id
    }

    /// How many shards the node has.
    #[inline]
    pub fn count(&self) -> usize {
        self.count
    }

    /// The seed of the key hash (the same on every shard).
    #[inline]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Frame and item limits.
    #[inline]
    pub fn limits(&self) -> ShardLimits {
        self.limits
    }

    /// Starts loading a key hash's index entries into the CPU cache.
    #[inline]
    pub fn prefetch_index(&self, hash: u64) {
        self.store.borrow().prefetch_index(hash);
    }

    /// Starts loading the first `span` bytes of the records a key hash's
    /// index entries point at ([`store::READ_SPAN`] for a read,
    /// [`store::head_span`] for a write).
    #[inline]
    pub fn prefetch_records(&self, hash: u64, span: usize) {
        self.store.borrow().prefetch_records(hash, span);
    }

    /// Background upkeep: expired items swept and size classes rebalanced,
    /// within `budget` items.
    pub fn maintain(&self, now_us: u64, budget: usize, decay: bool) -> store::Upkeep {
        self.store.borrow_mut().maintain(now_us, budget, decay)
    }

    /// Whether the plaintext of an encrypted value was read or written
    /// since the last call: the caller then wipes the buffers that held
    /// the request and the answer (issue 19).
    #[inline]
    pub fn take_secret(&self) -> bool {
        self.secret.replace(false)
    }

    /// Whether values can be encrypted at rest (a key was configured).
    pub fn can_encrypt(&self) -> bool {
        self.codec.borrow().can_encrypt()
    }

    /// In a cluster, `Some(CACHE_013 message)` when the key hash's slot
    /// belongs to another node; `None` when it is this node's (or the node
    /// runs alone).
    #[inline]
    pub fn moved(&self, hash: u64) -> Option<String> {
        let ownership = self.ownership.borrow();
        let o = ownership.as_ref()?;
        let slot = crate::key::slot_of(hash);
        let owner = o.primary[slot];
        (Some(owner) != o.me).then(|| o.moved(slot, owner))
    }

    /// In a cluster, the REST addresses (`host:port`) of the map's other
    /// nodes; `None` when the node runs alone or is not in the map yet.
    pub fn peer_http_addrs(&self) -> Option<Vec<String>> {
        let ownership = self.ownership.borrow();
        let o = ownership.as_ref()?;
        let me = usize::from(o.me?);
        Some(
            o.nodes
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != me)
                .map(|(_, n)| format!("{}:{}", n.host, n.http_port))
                .collect(),
        )
    }

    /// With replication 2: where this shard hands its writes.
    pub fn attach_replication(&mut self, sink: replication::ReplSink) {
        self.repl = Some(sink);
        self.store.get_mut().set_admission(false);
    }

    /// The replica node of a key hash's slot, when this node is its
    /// primary and the slot has one.
    #[inline]
    fn replica_target(&self, hash: u64) -> Option<u16> {
        let ownership = self.ownership.borrow();
        let o = ownership.as_ref()?;
        let slot = crate::key::slot_of(hash);
        let replica = o.replica[slot];
        (Some(o.primary[slot]) == o.me && replica != u16::MAX).then_some(replica)
    }

    /// Whether a full copy for node `target` includes the key: this node
    /// is its slot's primary, and `target` its replica or learner.
    fn copies_to(&self, hash: u64, target: u16) -> bool {
        let ownership = self.ownership.borrow();
        let Some(o) = ownership.as_ref() else {
            return false;
        };
        let slot = crate::key::slot_of(hash);
        Some(o.primary[slot]) == o.me && (o.replica[slot] == target || o.learner.get(slot) == Some(&target))
    }

    /// Hands a write of a slot this node is primary of to its replica.
    #[inline]
    pub(crate) fn replicate(&self, hash: u64, record: replication::ReplRecord<'_>) {
        let Some(sink) = &self.repl else { return };
        if let Some(target) = self.replica_target(hash) {
            sink.push(&replication::ReplRecord { target, ..record });
        }
    }

    /// The end of a read cycle: the cycle's writes go to the replicas.
    /// `Some(handover)` when they include a strong write: its answer waits
    /// for [`Shard::replicated`].
    #[inline]
    pub fn end_cycle(&self) -> Option<u64> {
        self.repl.as_ref().and_then(|sink| sink.hand_over())
    }

    /// Whether a strong write waits for the end of the cycle (the
    /// dispatcher then ends the cycle: its answer waits for the replica).
    #[inline]
    pub fn strong_pending(&self) -> bool {
        self.repl.as_ref().is_some_and(|sink| sink.strong_pending())
    }

    /// Waits until the replica acknowledged handover `seq` (true), or it
    /// cannot (refused by epoch, lost, or [`replication::STRONG_TIMEOUT`]).
    pub async fn replicated(&self, seq: u64) -> bool {
        match &self.repl {
            Some(sink) => sink.replicated(seq).await,
            None => true,
        }
    }

    /// Nobody waits for strong handover `seq` after all.
    pub fn forget_strong(&self, seq: u64) {
        if let Some(sink) = &self.repl {
            sink.forget(seq);
        }
    }

    /// Whether a request of `key` runs with strong consistency (its option,
    /// else its connection's, already merged into `requested`, else its
    /// cache type's), and `Err` (answered CACHE_005) when it cannot: the
    /// node's lease lapsed, or a write's slot has no replica. Only a node
    /// with replication 2 has strong requests; elsewhere this is one branch.
    #[inline]
    pub(crate) fn strong_gate(
        &self,
        hash: u64,
        key: &[u8],
        requested: &[u8],
        write: bool,
        now_us: u64,
    ) -> Result<bool, &'static str> {
        let Some(sink) = &self.repl else { return Ok(false) };
        let strong = match requested {
            b"strong" => true,
            b"eventual" => false,
            _ => self.policy.borrow().consistency_of(key) == policy::Consistency::Strong,
        };
        if !strong {
            return Ok(false);
        }
        if !sink.shared().lease_valid(now_us) {
            return Err("strong request refused: this node holds no lease on the cluster map (cut off from NATS or the cluster); retry");
        }
        if write && self.replica_target(hash).is_none() {
            return Err("strong write refused: the key's slot has no replica yet; retry when the cluster has placed one");
        }
        Ok(true)
    }

    /// After a write: marks the cycle as holding a strong write.
    #[inline]
    pub(crate) fn strong_written(&self, strong: bool) {
        if strong {
            if let Some(sink) = &self.repl {
                sink.mark_strong();
            }
        }
    }

    /// The cluster's ownership in force (for the handshake).
    pub fn ownership(&self) -> Option<std::sync::Arc<Ownership>> {
        self.ownership.borrow().clone()
    }

    /// Takes a new slot ownership (a new cluster map), unless older.
    pub fn install_ownership(&self, ownership: std::sync::Arc<Ownership>) {
        let mut current = self.ownership.borrow_mut();
        if current.as_ref().is_none_or(|c| c.epoch <= ownership.epoch) {
            if let Some(sink) = &self.repl {
                if let Some(seq) = sink.set_epoch(ownership.epoch) {
                    self.forget_strong(seq);
                }
            }
            *current = Some(ownership);
        }
    }

    /// Whether the server is shutting down.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// The server is shutting down: connections finish their cycle and close.
    pub fn start_draining(&self) {
        self.draining.set(true);
    }

    /// The counters of connections and requests, to read.
    pub fn counters(&self) -> ShardCounters {
        *self.counters.borrow()
    }

    /// Counts a connection or request event.
    #[inline]
    pub fn tally(&self, tally: stats::Tally) {
        self.counters.borrow_mut().add(tally);
    }

    /// The request metrics, for the dispatcher's once-per-cycle recording.
    #[inline]
    pub fn metrics_mut(&self) -> RefMut<'_, crate::metrics::ShardMetrics> {
        self.metrics.borrow_mut()
    }

    /// The policy in force.
    #[inline]
    pub fn policy(&self) -> Ref<'_, policy::Policy> {
        self.policy.borrow()
    }

    /// This shard's end of the event queue; `None` when events are off.
    #[inline]
    pub fn events(&self) -> Option<&events::EventSink> {
        self.events.as_ref()
    }
}

/// A small shard for unit tests: `id` of `count`, 4 MiB, 64 KiB items,
/// 1 MiB frames, LRU, hash seed 1.
#[cfg(test)]
pub(crate) fn test_shard(id: usize, count: usize) -> Shard {
    let limits = ShardLimits {
        max_frame_bytes: 1 << 20,
        max_item_bytes: 1 << 16,
    };
    let store = StoreConfig {
        seed: 1,
        memory_limit_bytes: 4 << 20,
        max_item_bytes: 1 << 16,
        default_ttl_s: 0,
        eviction: store::EvictionPolicy::Lru,
    };
    Shard::new(id, count, limits, store)
}

#[cfg(test)]
mod replicated_tests {
    use super::replication::{ReplRecord, OP_COPY, OP_DELETE, OP_SET};
    use super::*;

    fn record(op: u8, version: u64, value: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        ReplRecord {
            target: 0,
            op,
            options: 0,
            ttl_s: 0,
            version,
            key: b"k",
            value,
        }
        .encode(&mut buf);
        buf
    }

    fn held(shard: &Shard) -> Option<(Vec<u8>, u64)> {
        let hash = crate::key::key_hash(b"k", shard.seed);
        let store = shard.store.borrow();
        store
            .peek(hash, b"k")
            .map(|i| (i.value().to_vec(), i.version_us()))
    }

    /// A replica keeps the newer item: an older write (a full copy, or a
    /// previous primary's write in flight) never replaces it, nor does an
    /// older delete remove it; equal or newer versions apply.
    #[test]
    fn the_newer_version_wins() {
        let shard = test_shard(0, 1);
        assert_eq!(shard.apply_replicated(&record(OP_SET, 200, b"new")), 1);
        assert_eq!(shard.apply_replicated(&record(OP_COPY, 100, b"old")), 0);
        assert_eq!(shard.apply_replicated(&record(OP_SET, 150, b"old")), 0);
        assert_eq!(shard.apply_replicated(&record(OP_DELETE, 199, b"")), 0);
        assert_eq!(held(&shard), Some((b"new".to_vec(), 200)));
        assert_eq!(shard.apply_replicated(&record(OP_SET, 300, b"newer")), 1);
        assert_eq!(held(&shard), Some((b"newer".to_vec(), 300)));
        assert_eq!(shard.apply_replicated(&record(OP_DELETE, 301, b"")), 1);
        assert_eq!(held(&shard), None);
    }

    /// A deleted key has no version left to compare: a write older than
    /// the delete, landing after it (a previous primary's write in flight
    /// across a move, a copy), must not bring the key back.
    #[test]
    fn an_older_write_does_not_undo_a_delete() {
        let shard = test_shard(0, 1);
        assert_eq!(shard.apply_replicated(&record(OP_SET, 200, b"v")), 1);
        assert_eq!(shard.apply_replicated(&record(OP_DELETE, 300, b"")), 1);
        assert_eq!(shard.apply_replicated(&record(OP_SET, 250, b"late")), 0);
        assert_eq!(shard.apply_replicated(&record(OP_COPY, 300, b"late")), 0);
        assert_eq!(held(&shard), None);
        assert_eq!(shard.apply_replicated(&record(OP_SET, 301, b"after")), 1);
        assert_eq!(held(&shard), Some((b"after".to_vec(), 301)));
    }
}
