//! What threads that are not shards ask of a shard, through the control
//! plane ([`crate::control`]): named operations on the shard's state, so
//! that nothing outside `shard/` touches its store.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::policy::Policy;
use super::Shard;
use crate::key::key_hash;
use crate::metrics::ShardSnapshot;
use crate::time::unix_now_us;

/// Most keys one `invalidate` pattern removes per shard per pass (the
/// pass repeats until no key matches, yielding between passes).
const INVALIDATE_BATCH: usize = 10_000;

/// Sub-tables a flush of some slots scans per step (of
/// [`super::store::SUBTABLES`]).
const FLUSH_TABLES_PER_STEP: usize = 8;

/// Something for a shard to do.
pub enum ShardCommand {
    /// Copy the counters and histograms.
    Snapshot(oneshot::Sender<ShardSnapshot>),
    /// Remove every item; answers how many there were.
    Flush(oneshot::Sender<u64>),
    /// Remove one key, or every key matching a glob; answers how many.
    Invalidate {
        target: Box<[u8]>,
        pattern: bool,
        done: oneshot::Sender<u64>,
    },
    /// Take the cluster's slot ownership (a new map).
    Ownership(Arc<super::Ownership>),
    /// Apply writes a primary replicated to this node (records of
    /// [`super::replication`]).
    Replicated(Vec<u8>),
    /// Stream every item of the slots whose replica is node `target` (in
    /// the map of `epoch`) to it, ending with a marker carrying `copy`: a
    /// replica's catch-up, at most `rate` bytes per second (0: as fast as
    /// the replica takes it). Runs as its own task.
    Copy {
        target: u16,
        epoch: u64,
        copy: u64,
        rate: u64,
    },
    /// Verdicts on strong handovers of this shard (sequence, every replica
    /// acknowledged it): their writes' answers were waiting.
    ReplDone(Vec<(u64, bool)>),
    /// Another node's client flushed the cluster (flush `id`, run on node
    /// `origin`): remove every item but those `spare` names (copies whose
    /// primary's own flush marker came first), then tell this node's
    /// replicas, in the stream, with a marker (docs/cluster.md, "Flush").
    FlushCluster {
        origin: String,
        id: u64,
        spare: Vec<FlushRule>,
    },
    /// A primary's flush marker arrived: remove the items its rules name
    /// (in order with the records before and after it).
    FlushSlots(Vec<FlushRule>),
    /// Replace the shard's policy; answers once applied.
    Policy {
        policy: Arc<Policy>,
        applied: oneshot::Sender<()>,
    },
}

/// Items of some slots, held by one shard of their primary: keys whose
/// slot is in `slots` and whose owner shard among `shards` is `shard`.
#[derive(Clone, Debug)]
pub struct FlushRule {
    pub slots: Arc<Vec<bool>>,
    pub shard: u16,
    pub shards: u16,
}

impl FlushRule {
    #[inline]
    pub fn names(&self, hash: u64) -> bool {
        self.slots
            .get(crate::key::slot_of(hash))
            .copied()
            .unwrap_or(false)
            && crate::key::owner_of(hash, usize::from(self.shards.max(1))) == usize::from(self.shard)
    }
}

impl Shard {
    /// Runs one command of the control plane.
    pub async fn run_command(&self, command: ShardCommand) {
        match command {
            ShardCommand::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            ShardCommand::Flush(reply) => {
                let _ = reply.send(self.flush());
            }
            ShardCommand::Invalidate {
                target,
                pattern,
                done,
            } => {
                let removed = if pattern {
                    self.invalidate_matching(&target).await
                } else {
                    self.invalidate(&target)
                };
                let _ = done.send(removed);
            }
            ShardCommand::Ownership(ownership) => self.install_ownership(ownership),
            ShardCommand::Replicated(records) => {
                self.apply_replicated(&records);
            }
            ShardCommand::Copy {
                target,
                epoch,
                copy,
                rate,
            } => {
                // Reached only without an Rc (tests): copy inline.
                self.copy_chunked(target, epoch, copy, rate).await;
            }
            ShardCommand::ReplDone(verdicts) => {
                if let Some(sink) = &self.repl {
                    for (seq, ok) in verdicts {
                        sink.settle(seq, ok);
                    }
                }
            }
            ShardCommand::FlushCluster { origin, id, spare } => {
                if spare.is_empty() {
                    self.flush();
                } else {
                    // Whole before any request runs: a client's write in
                    // between could stay here and go at the replica's
                    // marker (or the reverse).
                    self.flush_where(|hash| !spare.iter().any(|r| r.names(hash)));
                }
                self.push_flush_marker(id, origin.as_bytes());
                self.end_cycle();
            }
            ShardCommand::FlushSlots(rules) => {
                // Slots this node copies: only commands write them, and
                // those wait behind this one, so requests may run between
                // steps (a store of millions stalled its shard for the
                // whole scan).
                self.flush_where_yielding(|hash| rules.iter().any(|r| r.names(hash)))
                    .await;
            }
            ShardCommand::Policy { policy, applied } => {
                self.apply_policy(&policy);
                let _ = applied.send(());
            }
        }
    }

    /// Removes every item; how many there were.
    pub fn flush(&self) -> u64 {
        self.store.borrow_mut().flush() as u64
    }

    /// Removes the items whose key hash `remove` names, at once; how many.
    pub fn flush_where(&self, remove: impl Fn(u64) -> bool) -> u64 {
        let mut keys = Vec::new();
        (0..super::store::SUBTABLES)
            .step_by(FLUSH_TABLES_PER_STEP)
            .map(|first| self.flush_tables(first, &remove, &mut keys))
            .sum()
    }

    /// As [`Shard::flush_where`], a few sub-tables at a time, letting the
    /// shard's other tasks run between steps when the executor asks.
    pub async fn flush_where_yielding(&self, remove: impl Fn(u64) -> bool) -> u64 {
        let mut keys = Vec::new();
        let mut removed = 0;
        for first in (0..super::store::SUBTABLES).step_by(FLUSH_TABLES_PER_STEP) {
            removed += self.flush_tables(first, &remove, &mut keys);
            glommio::yield_if_needed().await;
        }
        removed
    }

    /// One step of a flush: the named items of the sub-tables from `first`
    /// ([`FLUSH_TABLES_PER_STEP`] of them). `keys` is scratch, kept between
    /// steps: a step holds about 1/1024 of the store's keys, so a flush
    /// never copies the whole key set.
    fn flush_tables(
        &self,
        first: usize,
        remove: &impl Fn(u64) -> bool,
        keys: &mut Vec<(u64, Vec<u8>)>,
    ) -> u64 {
        let mut store = self.store.borrow_mut();
        let end = (first + FLUSH_TABLES_PER_STEP).min(super::store::SUBTABLES);
        keys.clear();
        // `now_us` 0: expired items are removed too.
        store.for_each_in(first..end, 0, |item| {
            let hash = key_hash(item.key(), self.seed);
            if remove(hash) {
                keys.push((hash, item.key().to_vec()));
            }
        });
        keys.iter()
            .map(|(hash, key)| u64::from(store.delete(*hash, key)))
            .sum()
    }

    /// Tells this node's replicas, in order with the writes before it, that
    /// this shard flushed (flush `id` of node `origin`, empty: this node):
    /// each removes its copies of this shard's slots when it reaches the
    /// marker. Key: `id` (8 bytes) then `origin`; value: this shard's
    /// index and the node's shard count (u16 each).
    pub fn push_flush_marker(&self, id: u64, origin: &[u8]) {
        let Some(sink) = &self.repl else { return };
        let mut key = Vec::with_capacity(8 + origin.len());
        key.extend_from_slice(&id.to_le_bytes());
        key.extend_from_slice(origin);
        let mut value = [0u8; 4];
        value[..2].copy_from_slice(&(self.id as u16).to_le_bytes());
        value[2..].copy_from_slice(&(self.count as u16).to_le_bytes());
        sink.push(&super::replication::ReplRecord {
            target: 0,
            op: super::replication::OP_FLUSH,
            options: 0,
            ttl_s: 0,
            version: 0,
            key: &key,
            value: &value,
        });
    }

    /// Removes one key; 1 if it was there.
    pub fn invalidate(&self, key: &[u8]) -> u64 {
        u64::from(self.store.borrow_mut().delete(key_hash(key, self.seed), key))
    }

    /// Removes every key matching a glob, in passes of at most
    /// [`INVALIDATE_BATCH`] keys with the shard's connections running
    /// between them; how many were removed.
    pub async fn invalidate_matching(&self, pattern: &[u8]) -> u64 {
        let mut removed = 0u64;
        loop {
            let mut keys: Vec<Vec<u8>> = Vec::new();
            self.store.borrow().scan(pattern, unix_now_us(), |item| {
                keys.push(item.key().to_vec());
                keys.len() < INVALIDATE_BATCH
            });
            {
                let mut store = self.store.borrow_mut();
                for key in &keys {
                    removed += u64::from(store.delete(key_hash(key, self.seed), key));
                }
            }
            if keys.len() < INVALIDATE_BATCH {
                return removed;
            }
            glommio::executor().yield_now().await;
        }
    }

    /// Takes a new policy: TTLs, cache types and event switches, and the
    /// store's eviction policy and memory limit (this shard's share).
    pub fn apply_policy(&self, policy: &Policy) {
        {
            let mut store = self.store.borrow_mut();
            if let Some(eviction) = super::store::EvictionPolicy::parse(&policy.eviction) {
                store.set_eviction(eviction);
            }
            if let Some(total) = policy.max_memory_bytes {
                store.set_memory_limit(total / self.count);
            }
        }
        *self.policy.borrow_mut() = policy.clone();
    }
}

impl Shard {
    /// Copies this shard's counters and histograms for a scrape.
    pub fn snapshot(&self) -> ShardSnapshot {
        let shard = self;
        let store = shard.store.borrow();
        let s = store.stats;
        let c = *shard.counters.borrow();
        let m = shard.metrics.borrow();
        ShardSnapshot {
            shard: shard.id,
            items: store.len() as u64,
            used_bytes: store.used_bytes() as u64,
            limit_bytes: store.config().memory_limit_bytes as u64,
            output_bytes: c.output_bytes,
            output_paused: c.output_paused,
            output_stall_closes: c.output_stall_closes,
            hits: s.hits,
            misses: s.misses,
            sets: s.sets,
            deletes: s.deletes,
            evictions: s.evictions,
            expirations: s.expired_on_access + s.expired_swept,
            rejected_writes: s.rejected_writes,
            flushed: s.flushed,
            connections_open: c.connections_open,
            connections_accepted: c.connections_accepted,
            connections_refused: c.connections_refused,
            requests: c.requests,
            forwarded_ops: c.forwarded_ops,
            protocol_errors: c.protocol_errors,
            events_queued: m.events_queued,
            events_dropped: m.events_dropped,
            ops: m.op_snapshots(),
        }
    }
}
