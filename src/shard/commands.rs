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
    /// Replace the shard's policy; answers once applied.
    Policy {
        policy: Arc<Policy>,
        applied: oneshot::Sender<()>,
    },
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
