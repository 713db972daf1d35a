//! A replica's catch-up, primary side (docs/cluster.md, "Catch-up"): the
//! shard streams every item of the slots a replica holds for this node
//! into its replication buffer, a few sub-tables at a time, in the same
//! ordered stream as live writes. An item written after its sub-table was
//! copied reaches the replica as a write; one written before is copied
//! with its latest value: either way the replica ends with the primary's
//! item. The last record is a marker with the copy's id.
//!
//! Flow control: a copy runs as fast as the replica takes it, never
//! faster, and no faster than `--catchup-rate` (split among the shards). It hands its records over in pieces of [`HANDOVER_BYTES`] and
//! waits while more than [`QUEUED_BUFFERS`] buffers wait for the agent or
//! more than [`WINDOW_BYTES`] sent are unacknowledged. A copy pushed out
//! unpaced (5 million items measured) filled NATS' per-client buffers, so
//! the server cut the slow replica off, the agents' heartbeats waited behind
//! the data, and the cluster moved the map under the copy again and again.

use std::time::Duration;

use super::replication::{ReplRecord, OP_COPY, OP_COPY_DONE, QUEUE_BUFFERS};
use super::store::SUBTABLES;
use super::Shard;
use crate::key::key_hash;

/// Sub-tables copied per step (about 1/1,024 of the shard's items).
const TABLES_PER_STEP: usize = 8;

/// A copy hands its records to the agent once it has this many bytes.
const HANDOVER_BYTES: usize = 256 << 10;

/// A copy waits while more buffers than this wait for the agent...
const QUEUED_BUFFERS: usize = 8;

/// ... or while this node has more bytes than this in flight to replicas.
const WINDOW_BYTES: u64 = 16 << 20;

/// Pause while the copy waits.
const BACKOFF: Duration = Duration::from_millis(1);

impl Shard {
    /// Copies the items whose slot's replica or learner is `target` (index in the map
    /// of `epoch`) to it; stops if the map changes under it (the replica
    /// asks again under the new map).
    pub async fn copy_chunked(&self, target: u16, epoch: u64, copy: u64, rate: u64) {
        let Some(sink) = &self.repl else { return };
        let mut next = 0;
        let mut copied = 0u64;
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while next < SUBTABLES {
            if self.ownership().is_none_or(|o| o.epoch != epoch) {
                tracing::info!(shard = self.id, copy, "full copy stopped: the map changed");
                return;
            }
            while sink.queued() > QUEUED_BUFFERS.min(QUEUE_BUFFERS / 2)
                || sink.shared().unacked_bytes() > WINDOW_BYTES
            {
                glommio::timer::sleep(BACKOFF).await;
                if self.ownership().is_none_or(|o| o.epoch != epoch) {
                    tracing::info!(shard = self.id, copy, "full copy stopped: the map changed");
                    return;
                }
            }
            let end = (next + TABLES_PER_STEP).min(SUBTABLES);
            {
                let store = self.store.borrow();
                let now_us = crate::time::unix_now_us();
                store.for_each_in(next..end, now_us, |item| {
                    let hash = key_hash(item.key(), self.seed);
                    if self.copies_to(hash, target) {
                        sink.push(&ReplRecord {
                            target,
                            op: OP_COPY,
                            options: item.codec_flags() as u8,
                            ttl_s: item.ttl_s(),
                            version: item.version_us(),
                            key: item.key(),
                            value: item.value(),
                        });
                        copied += 1;
                    }
                });
            }
            next = end;
            if sink.buffered() < HANDOVER_BYTES {
                glommio::yield_if_needed().await;
                continue;
            }
            sent += sink.buffered() as u64;
            if let Some(seq) = sink.hand_over() {
                // A strong write of a request cycle was in the buffer: its
                // cycle waits on it, not this task (never reached: cycles
                // hand over their strong writes before yielding).
                self.forget_strong(seq);
            }
            // Paced (--catchup-rate): no faster than `rate` on average.
            let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
            match due.checked_sub(started.elapsed()) {
                Some(wait) if rate > 0 => glommio::timer::sleep(wait).await,
                _ => glommio::yield_if_needed().await,
            }
        }
        let id = copy.to_le_bytes();
        sink.push(&ReplRecord {
            target,
            op: OP_COPY_DONE,
            options: 0,
            ttl_s: 0,
            version: 0,
            key: &id,
            value: b"",
        });
        let _ = sink.hand_over();
        tracing::info!(shard = self.id, copy, copied, "full copy sent");
    }
}
