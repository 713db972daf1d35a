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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use crossbeam_queue::ArrayQueue;

/// A write of a key.
pub const OP_SET: u8 = 1;
/// A removal of a key.
pub const OP_DELETE: u8 = 2;
/// A key as it is stored (catch-up, and writes through the value codec):
/// `options` holds the stored value's codec flags; the replica stores the
/// bytes as they are (an encrypted value travels encrypted).
pub const OP_COPY: u8 = 3;
/// The end of one shard's full copy (key = the copy's id, 8 bytes).
pub const OP_COPY_DONE: u8 = 4;

/// A client's flush on this node: the agent tells every node of the
/// cluster to flush (no key; `target` unused).
pub const OP_FLUSH: u8 = 5;

/// Bit of `options`: the write asked for compression.
pub const OPT_COMPRESSION: u8 = 1;
/// Bit of `options`: the write asked for encryption at rest.
pub const OPT_ENCRYPTION: u8 = 2;

const HEADER: usize = 2 + 1 + 1 + 4 + 8 + 2 + 4;

/// Buffers waiting per shard for the agent; beyond, they are dropped.
pub const QUEUE_BUFFERS: usize = 1024;

/// How long a strong write waits for its replica's acknowledgement before
/// it is answered CACHE_005 (about the failure timeout: by then a dead
/// replica has been replaced in the map and the client's retry succeeds).
pub const STRONG_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1000);

/// One cycle's records, handed to the agent.
pub struct Handover {
    /// Grows by one per handover of this shard.
    pub seq: u64,
    /// A strong write waits for this handover's acknowledgement.
    pub strong: bool,
    /// The epoch of the map the shard wrote these records under: replicas
    /// refuse them once they run a newer map (a deposed primary's writes
    /// never count, whatever map its agent has read since).
    pub epoch: u64,
    /// A handover of this shard was dropped before this one (the queue was
    /// full): its replicas missed records, and the agent makes them see a
    /// sequence gap (then a full copy).
    pub after_loss: bool,
    pub records: Vec<u8>,
}

/// The agent's end: buffers of records, in order.
pub type ReplQueue = Arc<ArrayQueue<Handover>>;

/// What the shards of a node and its cluster agent share (no per-request
/// traffic: the agent is woken only for strong writes, the lease is read
/// only by strong requests).
#[derive(Default)]
pub struct ReplShared {
    /// Rung when a strong write's records are handed over: the agent sends
    /// them at once instead of at its next drain.
    pub wake: tokio::sync::Notify,
    /// Until when (Unix µs) this node may serve strong requests for the
    /// slots its map gives it: the cluster cannot have moved them before
    /// (docs/cluster.md, "Leases"). 0: no lease.
    lease_until_us: AtomicU64,
    /// Bytes sent to replicas and not acknowledged yet (set by the agent;
    /// read by full copies only, which wait while it is over their window).
    unacked_bytes: AtomicU64,
    /// The agent stopped its drain tick (nothing to send for a while): the
    /// next handover rings `wake`. Written by the agent when it goes idle
    /// and by the one shard that wakes it; read once per handover.
    agent_idle: AtomicBool,
}

impl ReplShared {
    pub fn set_lease_until(&self, unix_us: u64) {
        self.lease_until_us.store(unix_us, Ordering::Relaxed);
    }

    pub fn revoke_lease(&self) {
        self.lease_until_us.store(0, Ordering::Relaxed);
    }

    /// Until when (Unix µs) the lease runs; 0: none.
    pub fn lease_until(&self) -> u64 {
        self.lease_until_us.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn lease_valid(&self, now_us: u64) -> bool {
        now_us < self.lease_until_us.load(Ordering::Relaxed)
    }

    pub fn set_unacked_bytes(&self, bytes: u64) {
        self.unacked_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes.load(Ordering::Relaxed)
    }

    /// The agent goes idle (`true`: wake it at the next handover) or
    /// ticks again. It looks at the queues once more after going idle, so
    /// a handover queued meanwhile is never left waiting.
    pub fn set_agent_idle(&self, idle: bool) {
        self.agent_idle.store(idle, Ordering::SeqCst);
    }

    /// After queueing a handover: wakes the agent if it is idle.
    #[inline]
    fn ring_if_idle(&self) {
        if self.agent_idle.load(Ordering::SeqCst) && self.agent_idle.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

/// The node's replication plumbing, handed to its cluster agent: one
/// queue per shard, and what they share.
#[derive(Default)]
pub struct ReplWiring {
    pub queues: Vec<ReplQueue>,
    pub shared: Arc<ReplShared>,
}

/// A strong write waiting for its handover's result.
struct Waiter {
    seq: u64,
    result: Option<bool>,
    waker: Option<Waker>,
}

/// A shard's end.
pub struct ReplSink {
    buffer: RefCell<Vec<u8>>,
    queue: ReplQueue,
    shared: Arc<ReplShared>,
    dropped: Cell<u64>,
    /// A handover was dropped and no later one reached the agent yet.
    lost: Cell<bool>,
    /// Sequence of the last handover.
    handed: Cell<u64>,
    /// A strong write is in the buffer.
    strong: Cell<bool>,
    /// The epoch of the shard's slot ownership (stamped on handovers).
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waiter>>,
}

impl ReplSink {
    /// A sink and the queue it fills.
    pub fn new(shared: Arc<ReplShared>) -> (ReplSink, ReplQueue) {
        let queue = Arc::new(ArrayQueue::new(QUEUE_BUFFERS));
        let sink = ReplSink {
            buffer: RefCell::new(Vec::new()),
            queue: queue.clone(),
            shared,
            dropped: Cell::new(0),
            lost: Cell::new(false),
            handed: Cell::new(0),
            strong: Cell::new(false),
            epoch: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
        };
        (sink, queue)
    }

    /// Appends one record.
    #[inline]
    pub fn push(&self, record: &ReplRecord<'_>) {
        record.encode(&mut self.buffer.borrow_mut());
    }

    /// The records pushed since the last handover include a strong write.
    #[inline]
    pub fn mark_strong(&self) {
        self.strong.set(true);
    }

    /// Whether a strong write waits in the buffer.
    #[inline]
    pub fn strong_pending(&self) -> bool {
        self.strong.get()
    }

    /// The shared state (lease).
    #[inline]
    pub fn shared(&self) -> &ReplShared {
        &self.shared
    }

    /// Hands the records of this cycle to the agent (one queue operation).
    /// Returns the handover's sequence when it carries a strong write, to
    /// wait on with [`ReplSink::replicated`].
    #[inline]
    pub fn hand_over(&self) -> Option<u64> {
        let strong = self.strong.replace(false);
        let mut buffer = self.buffer.borrow_mut();
        if buffer.is_empty() {
            return None;
        }
        let seq = self.handed.get() + 1;
        self.handed.set(seq);
        let records = std::mem::take(&mut *buffer);
        let epoch = self.epoch.get();
        let sent = self
            .queue
            .push(Handover {
                seq,
                strong,
                epoch,
                after_loss: self.lost.get(),
                records,
            })
            .is_ok();
        if sent {
            self.lost.set(false);
            if !strong {
                self.shared.ring_if_idle();
            }
        } else {
            self.dropped.set(self.dropped.get() + 1);
            self.lost.set(true);
        }
        if strong {
            // The waiter exists before the verdict can arrive; a buffer
            // never sent fails its strong write at once.
            self.waiters.borrow_mut().push(Waiter {
                seq,
                result: (!sent).then_some(false),
                waker: None,
            });
            if sent {
                self.shared.wake.notify_one();
            }
        }
        strong.then_some(seq)
    }

    /// The shard runs a map of `epoch` from now on. Hands over what was
    /// written under the one before first (returns a strong handover's
    /// sequence, which cannot happen between request cycles).
    pub fn set_epoch(&self, epoch: u64) -> Option<u64> {
        let handed = self.hand_over();
        self.epoch.set(epoch);
        handed
    }

    /// The agent's verdict on handover `seq` (a strong one): every replica
    /// acknowledged it (`true`), or it cannot be (refused, lost, timed out).
    pub fn settle(&self, seq: u64, ok: bool) {
        let mut waiters = self.waiters.borrow_mut();
        if let Some(w) = waiters.iter_mut().find(|w| w.seq == seq) {
            w.result = Some(ok);
            if let Some(waker) = w.waker.take() {
                waker.wake();
            }
        }
    }

    /// Waits for the verdict on handover `seq`, at most [`STRONG_TIMEOUT`]
    /// (then `false`).
    pub async fn replicated(&self, seq: u64) -> bool {
        {
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.seq == seq) {
                waiters.push(Waiter {
                    seq,
                    result: None,
                    waker: None,
                });
            }
        }
        let verdict = std::future::poll_fn(|cx| {
            let mut waiters = self.waiters.borrow_mut();
            match waiters.iter_mut().find(|w| w.seq == seq) {
                Some(Waiter { result: Some(ok), .. }) => Poll::Ready(*ok),
                Some(w) => {
                    w.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(false),
            }
        });
        let timeout = async {
            glommio::timer::sleep(STRONG_TIMEOUT).await;
            false
        };
        let ok = futures_lite::future::or(verdict, timeout).await;
        self.waiters.borrow_mut().retain(|w| w.seq != seq);
        ok
    }

    /// Drops the waiter of handover `seq` (nobody will wait for it).
    pub fn forget(&self, seq: u64) {
        self.waiters.borrow_mut().retain(|w| w.seq != seq);
    }

    /// Buffers waiting for the agent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Bytes pushed since the last handover.
    pub fn buffered(&self) -> usize {
        self.buffer.borrow().len()
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
    /// Bytes of the encoded record.
    pub fn encoded_len(&self) -> usize {
        HEADER + self.key.len() + self.value.len()
    }

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
        let (sink, queue) = ReplSink::new(Arc::default());
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
        // The first handover the agent gets after a loss says so, once.
        while queue.pop().is_some() {}
        sink.push(&record);
        sink.hand_over();
        sink.push(&record);
        sink.hand_over();
        let flags: Vec<bool> = std::iter::from_fn(|| queue.pop()).map(|h| h.after_loss).collect();
        assert_eq!(flags, [true, false]);
    }
}
