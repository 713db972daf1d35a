//! Writes a primary hands to its replicas (docs/cluster.md, "Replication").
//!
//! A shard appends one compact record per write of a slot it is primary
//! of (a set with its value, TTL and version; a delete) to a buffer, and
//! hands the buffer over once per read cycle through a bounded lock-free
//! queue, as it hands item events to the bridge. It never waits: a full
//! queue drops the buffer, counts it, and marks the replica out of sync.
//! The cluster agent drains the queues, sends each replica its records
//! over NATS, and the replica's agent hands them to its shards
//! ([`super::Shard::apply_replicated`]).
//!
//! Record: `target u16 | op u8 | options u8 | ttl_s u32 | version u64 |
//! key_len u16 | value_len u32 | key | value`, little-endian.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// A write of a key.
pub const OP_SET: u8 = 1;
/// A removal of a key.
pub const OP_DELETE: u8 = 2;

/// Bit of `options`: the write asked for compression.
pub const OPT_COMPRESSION: u8 = 1;
/// Bit of `options`: the write asked for encryption at rest.
pub const OPT_ENCRYPTION: u8 = 2;

const HEADER: usize = 2 + 1 + 1 + 4 + 8 + 2 + 4;

/// Buffers waiting per shard for the agent; beyond, they are dropped.
pub const QUEUE_BUFFERS: usize = 1024;

/// The agent's end: buffers of records, in order.
pub type ReplQueue = Arc<ArrayQueue<Vec<u8>>>;

/// A shard's end.
pub struct ReplSink {
    buffer: RefCell<Vec<u8>>,
    queue: ReplQueue,
    dropped: Cell<u64>,
}

impl ReplSink {
    /// A sink and the queue it fills.
    pub fn new() -> (ReplSink, ReplQueue) {
        let queue = Arc::new(ArrayQueue::new(QUEUE_BUFFERS));
        let sink = ReplSink {
            buffer: RefCell::new(Vec::new()),
            queue: queue.clone(),
            dropped: Cell::new(0),
        };
        (sink, queue)
    }

    /// Appends one record.
    #[inline]
    pub fn push(&self, record: &ReplRecord<'_>) {
        record.encode(&mut self.buffer.borrow_mut());
    }

    /// Hands the records of this cycle to the agent (one queue operation).
    #[inline]
    pub fn hand_over(&self) {
        let mut buffer = self.buffer.borrow_mut();
        if buffer.is_empty() {
            return;
        }
        let full = std::mem::take(&mut *buffer);
        if self.queue.push(full).is_err() {
            self.dropped.set(self.dropped.get() + 1);
        }
    }

    /// Buffers dropped because the agent fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// One record, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplRecord<'a> {
    /// Index of the replica node in the map.
    pub target: u16,
    pub op: u8,
    pub options: u8,
    pub ttl_s: u32,
    pub version: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl ReplRecord<'_> {
    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER + self.key.len() + self.value.len());
        out.extend_from_slice(&self.target.to_le_bytes());
        out.push(self.op);
        out.push(self.options);
        out.extend_from_slice(&self.ttl_s.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
    }
}

/// The records of a buffer, in order; stops at the first malformed one (a
/// buffer from the network is checked, never trusted).
pub fn records(buf: &[u8]) -> impl Iterator<Item = ReplRecord<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let h = buf.get(at..at + HEADER)?;
        let key_len = u16::from_le_bytes([h[16], h[17]]) as usize;
        let value_len = u32::from_le_bytes([h[18], h[19], h[20], h[21]]) as usize;
        let key_at = at + HEADER;
        let value_at = key_at.checked_add(key_len)?;
        let end = value_at.checked_add(value_len)?;
        let record = ReplRecord {
            target: u16::from_le_bytes([h[0], h[1]]),
            op: h[2],
            options: h[3],
            ttl_s: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            version: u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
            key: buf.get(key_at..value_at)?,
            value: buf.get(value_at..end)?,
        };
        at = end;
        Some(record)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(items in proptest::collection::vec(
            (any::<u16>(), 1u8..3, any::<u8>(), any::<u32>(), any::<u64>(),
             proptest::collection::vec(any::<u8>(), 1..40), proptest::collection::vec(any::<u8>(), 0..100)),
            0..20)) {
            let mut buf = Vec::new();
            for (target, op, options, ttl_s, version, key, value) in &items {
                ReplRecord { target: *target, op: *op, options: *options, ttl_s: *ttl_s, version: *version, key, value }
                    .encode(&mut buf);
            }
            let back: Vec<_> = records(&buf).collect();
            prop_assert_eq!(back.len(), items.len());
            for (r, (target, op, options, ttl_s, version, key, value)) in back.iter().zip(&items) {
                prop_assert_eq!(r, &ReplRecord { target: *target, op: *op, options: *options, ttl_s: *ttl_s, version: *version, key, value });
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            for r in records(&buf) {
                prop_assert!(r.key.len() + r.value.len() <= buf.len());
            }
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (sink, queue) = ReplSink::new();
        let record = ReplRecord {
            target: 1,
            op: OP_DELETE,
            options: 0,
            ttl_s: 0,
            version: 7,
            key: b"k",
            value: b"",
        };
        for _ in 0..QUEUE_BUFFERS + 3 {
            sink.push(&record);
            sink.hand_over();
        }
        assert_eq!(queue.len(), QUEUE_BUFFERS);
        assert_eq!(sink.dropped(), 3);
        sink.hand_over();
        assert_eq!(sink.dropped(), 3, "nothing to hand over");
    }
}
