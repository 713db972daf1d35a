//! Item events as a shard hands them to the bridge.
//!
//! A shard appends each event as a compact record (a 12-byte header, then
//! the key, service id and correlation id) to a local batch, and hands the
//! whole batch over at the end of a read cycle: one push into a bounded
//! lock-free queue per cycle, not one per event, and no copy of a
//! fixed-size 450-byte slot. The bridge reads the records in place and
//! gives the emptied batch back for reuse, so a steady stream allocates
//! nothing.
//!
//! The bound is in events, as before (`event_queue`): a batch that would
//! take the queue past it is dropped whole and the shard counts its
//! events. The shard never waits for the bridge.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Longest key (the protocol's limit), service id and correlation id an
/// event carries. Longer correlation ids are cut to this length.
pub const KEY_CAP: usize = 250;
pub const SERVICE_CAP: usize = 128;
pub const CORRELATION_CAP: usize = 64;

/// A batch is handed over when it holds this many events, even mid-cycle
/// (a `set_many` of thousands of keys), so the bridge can start early.
const BATCH_MAX_EVENTS: u32 = 256;
/// Batches whose buffer grew beyond this are freed, not reused.
const REUSE_MAX_BYTES: usize = 64 * 1024;
/// Emptied batches kept for reuse per shard.
const SPARE_BATCHES: usize = 64;
/// op, three lengths, then the write's Unix milliseconds.
const RECORD_HEADER: usize = 4 + 8;

/// What changed an item (`data.operation` of `cache.item.updated`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOp {
    Set,
    Delete,
    SetMany,
    DeleteMany,
    Flush,
    /// `control.cache.action` `invalidate`.
    Invalidate,
}

impl ItemOp {
    const ALL: [ItemOp; 6] = [
        ItemOp::Set,
        ItemOp::Delete,
        ItemOp::SetMany,
        ItemOp::DeleteMany,
        ItemOp::Flush,
        ItemOp::Invalidate,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ItemOp::Set => "set",
            ItemOp::Delete => "delete",
            ItemOp::SetMany => "set_many",
            ItemOp::DeleteMany => "delete_many",
            ItemOp::Flush => "flush",
            ItemOp::Invalidate => "invalidate",
        }
    }

    fn from_byte(b: u8) -> Option<ItemOp> {
        ItemOp::ALL.get(usize::from(b)).copied()
    }
}

/// One `cache.item.updated`, borrowed from a batch (or an [`ItemEvent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemEventRef<'a> {
    pub op: ItemOp,
    /// Unix milliseconds of the write.
    pub at_ms: u64,
    pub key: &'a [u8],
    pub service: &'a [u8],
    /// Empty when the request and its connection gave none.
    pub correlation_id: &'a [u8],
}

impl<'a> ItemEventRef<'a> {
    /// An event; fields longer than their capacity are cut.
    pub fn new(op: ItemOp, at_ms: u64, key: &'a [u8], service: &'a [u8], correlation_id: &'a [u8]) -> Self {
        ItemEventRef {
            op,
            at_ms,
            key: cut(key, KEY_CAP),
            service: cut(service, SERVICE_CAP),
            correlation_id: cut(correlation_id, CORRELATION_CAP),
        }
    }

    pub fn to_owned(self) -> ItemEvent {
        let mut record = Vec::with_capacity(self.encoded_len());
        self.encode(&mut record);
        ItemEvent { record }
    }

    fn encoded_len(&self) -> usize {
        RECORD_HEADER + self.key.len() + self.service.len() + self.correlation_id.len()
    }

    /// Appends the record; the lengths were cut by [`ItemEventRef::new`].
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            self.op as u8,
            self.key.len() as u8,
            self.service.len() as u8,
            self.correlation_id.len() as u8,
        ]);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.service);
        out.extend_from_slice(self.correlation_id);
    }

    /// The record at the start of `buf` and its length; `None` when `buf`
    /// does not start with a whole one.
    fn decode(buf: &'a [u8]) -> Option<(ItemEventRef<'a>, usize)> {
        let header = buf.get(..RECORD_HEADER)?;
        let op = ItemOp::from_byte(header[0])?;
        let (k, s, c) = (
            usize::from(header[1]),
            usize::from(header[2]),
            usize::from(header[3]),
        );
        let at_ms = u64::from_le_bytes(header[4..12].try_into().ok()?);
        let end = RECORD_HEADER + k + s + c;
        let fields = buf.get(RECORD_HEADER..end)?;
        let (key, rest) = fields.split_at(k);
        let (service, correlation_id) = rest.split_at(s);
        let event = ItemEventRef {
            op,
            at_ms,
            key,
            service,
            correlation_id,
        };
        Some((event, end))
    }
}

fn cut(field: &[u8], cap: usize) -> &[u8] {
    &field[..field.len().min(cap)]
}

/// An event the bridge holds on to (coalescing, control actions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemEvent {
    record: Vec<u8>,
}

impl ItemEvent {
    /// An event; fields longer than their capacity are cut.
    pub fn new(op: ItemOp, at_ms: u64, key: &[u8], service: &[u8], correlation_id: &[u8]) -> ItemEvent {
        ItemEventRef::new(op, at_ms, key, service, correlation_id).to_owned()
    }

    pub fn view(&self) -> ItemEventRef<'_> {
        ItemEventRef::decode(&self.record)
            .expect("an owned event holds one whole record")
            .0
    }
}

/// Events of one shard, encoded back to back.
#[derive(Default)]
pub struct EventBatch {
    bytes: Vec<u8>,
    events: u32,
}

impl EventBatch {
    pub fn len(&self) -> usize {
        self.events as usize
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    fn push(&mut self, event: &ItemEventRef<'_>) {
        event.encode(&mut self.bytes);
        self.events += 1;
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.events = 0;
    }

    /// The events, in the order they were offered.
    pub fn iter(&self) -> impl Iterator<Item = ItemEventRef<'_>> {
        let mut rest = &self.bytes[..];
        std::iter::from_fn(move || {
            let (event, len) = ItemEventRef::decode(rest)?;
            rest = &rest[len..];
            Some(event)
        })
    }
}

/// Wakes the bridge when it sleeps: shared by every shard's queue. A
/// bridge with nothing to do stops its 2 ms drain and waits for a shard's
/// hand-over to ring (one flag read per hand-over).
#[derive(Default)]
pub struct EventBell {
    idle: AtomicBool,
    wake: tokio::sync::Notify,
}

impl EventBell {
    /// The bridge sleeps (`true`) or drains again.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::SeqCst);
    }

    /// After a hand-over: wakes the bridge if it sleeps.
    #[inline]
    fn ring_if_idle(&self) {
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Resolves when a shard rang.
    pub async fn rung(&self) {
        self.wake.notified().await;
    }
}

/// The queue between one shard and the bridge.
pub struct EventChannel {
    full: ArrayQueue<EventBatch>,
    spare: ArrayQueue<EventBatch>,
    /// Events in `full` and in the batch the bridge is publishing.
    queued: AtomicUsize,
    capacity: usize,
    bell: Arc<EventBell>,
}

/// The bridge's end of a shard's queue.
pub type EventQueue = Arc<EventChannel>;

impl EventChannel {
    /// The next batch, oldest first. Give it back with
    /// [`EventChannel::recycle`] once published: until then its events
    /// count against the bound.
    pub fn pop(&self) -> Option<EventBatch> {
        self.full.pop()
    }

    /// Returns a published (or abandoned) batch's room to the shard.
    pub fn recycle(&self, mut batch: EventBatch) {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        if batch.bytes.capacity() <= REUSE_MAX_BYTES {
            batch.clear();
            let _ = self.spare.push(batch);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.full.is_empty()
    }

    /// The bell every shard's queue shares.
    pub fn bell(&self) -> &Arc<EventBell> {
        &self.bell
    }

    /// Events queued and not yet given back.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// How a hand-over went, in events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handed {
    pub queued: u64,
    pub dropped: u64,
}

/// A shard's end of its event queue: the batch being filled, then the
/// queue it goes to.
pub struct EventSink {
    channel: Arc<EventChannel>,
    batch: RefCell<EventBatch>,
}

impl EventSink {
    /// A queue bounded at `capacity` events and the sink that fills it;
    /// its hand-overs ring `bell`.
    pub fn with_capacity(capacity: usize, bell: Arc<EventBell>) -> (EventSink, EventQueue) {
        let capacity = capacity.max(1);
        let channel = Arc::new(EventChannel {
            full: ArrayQueue::new(capacity),
            spare: ArrayQueue::new(SPARE_BATCHES),
            queued: AtomicUsize::new(0),
            capacity,
            bell,
        });
        let sink = EventSink {
            channel: channel.clone(),
            batch: RefCell::new(EventBatch::default()),
        };
        (sink, channel)
    }

    /// Adds an event to the batch; hands the batch over when it is full.
    #[inline]
    pub fn offer(&self, event: &ItemEventRef<'_>) -> Handed {
        let full = {
            let mut batch = self.batch.borrow_mut();
            batch.push(event);
            batch.events >= BATCH_MAX_EVENTS
        };
        if full {
            self.hand_over()
        } else {
            Handed::default()
        }
    }

    /// Hands the batch to the bridge, or drops it whole when that would
    /// pass the bound.
    pub fn hand_over(&self) -> Handed {
        let mut batch = self.batch.borrow_mut();
        let n = batch.len();
        if n == 0 {
            return Handed::default();
        }
        let channel = &self.channel;
        if channel.queued.load(Ordering::Acquire) + n > channel.capacity {
            batch.clear();
            return Handed {
                queued: 0,
                dropped: n as u64,
            };
        }
        channel.queued.fetch_add(n, Ordering::AcqRel);
        let next = channel.spare.pop().unwrap_or_default();
        let ready = std::mem::replace(&mut *batch, next);
        // Cannot fail: every queued batch holds at least one of the
        // `capacity` events the bound allows.
        if let Err(mut back) = channel.full.push(ready) {
            channel.queued.fetch_sub(n, Ordering::AcqRel);
            back.clear();
            *batch = back;
            return Handed {
                queued: 0,
                dropped: n as u64,
            };
        }
        channel.bell.ring_if_idle();
        Handed {
            queued: n as u64,
            dropped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A sleeping bridge is rung by the next hand-over, once; an awake one
    /// is not (it drains every 2 ms anyway).
    #[test]
    fn a_hand_over_rings_a_sleeping_bridge() {
        use futures_lite::future::{block_on, poll_once};
        let bell = Arc::new(EventBell::default());
        let (sink, queue) = EventSink::with_capacity(100, bell.clone());
        let event = ItemEventRef::new(ItemOp::Set, 1, b"k", b"s", b"");
        sink.offer(&event);
        sink.hand_over();
        assert!(block_on(poll_once(bell.rung())).is_none(), "awake: no ring");
        bell.set_idle(true);
        sink.offer(&event);
        sink.hand_over();
        assert!(block_on(poll_once(bell.rung())).is_some(), "asleep: rung");
        assert!(!bell.idle.load(Ordering::SeqCst), "and awake again");
        sink.offer(&event);
        sink.hand_over();
        assert!(block_on(poll_once(bell.rung())).is_none(), "rung once");
        assert_eq!(drain(&queue).len(), 3);
    }

    fn drain(queue: &EventQueue) -> Vec<ItemEvent> {
        let mut out = Vec::new();
        while let Some(batch) = queue.pop() {
            out.extend(batch.iter().map(|e| e.to_owned()));
            queue.recycle(batch);
        }
        out
    }

    #[test]
    fn fields_are_kept_and_long_ones_cut() {
        let long = vec![b'c'; 100];
        let e = ItemEvent::new(ItemOp::Set, 5, b"k1", b"svc", &long);
        let v = e.view();
        assert_eq!((v.op, v.at_ms), (ItemOp::Set, 5));
        assert_eq!(v.key, b"k1");
        assert_eq!(v.service, b"svc");
        assert_eq!(v.correlation_id, &long[..CORRELATION_CAP]);
    }

    #[test]
    fn a_batch_travels_at_hand_over_and_its_buffer_comes_back() {
        let (sink, queue) = EventSink::with_capacity(100, Arc::default());
        sink.offer(&ItemEventRef::new(ItemOp::Set, 1, b"a", b"s", b""));
        sink.offer(&ItemEventRef::new(ItemOp::Delete, 2, b"b", b"s", b"c"));
        assert!(queue.pop().is_none(), "nothing travels before the hand-over");
        assert_eq!(
            sink.hand_over(),
            Handed {
                queued: 2,
                dropped: 0
            }
        );
        assert_eq!(sink.hand_over(), Handed::default(), "an empty batch is not sent");
        assert_eq!(queue.queued(), 2);
        let got = drain(&queue);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].view().key, b"b");
        assert_eq!(queue.queued(), 0);
        assert_eq!(queue.spare.len(), 1, "the emptied batch is kept for reuse");
    }

    #[test]
    fn a_batch_past_the_bound_is_dropped_whole() {
        let (sink, queue) = EventSink::with_capacity(3, Arc::default());
        let e = ItemEventRef::new(ItemOp::Delete, 1, b"k", b"s", b"");
        sink.offer(&e);
        sink.offer(&e);
        assert_eq!(sink.hand_over().queued, 2);
        sink.offer(&e);
        sink.offer(&e);
        assert_eq!(
            sink.hand_over(),
            Handed {
                queued: 0,
                dropped: 2
            }
        );
        sink.offer(&e);
        assert_eq!(sink.hand_over().queued, 1, "room for exactly one more");
        assert_eq!(drain(&queue).len(), 3);
        sink.offer(&e);
        assert_eq!(
            sink.hand_over().queued,
            1,
            "room again once the bridge gave it back"
        );
    }

    #[test]
    fn a_full_batch_is_handed_over_mid_cycle() {
        let (sink, queue) = EventSink::with_capacity(10_000, Arc::default());
        let e = ItemEventRef::new(ItemOp::SetMany, 1, b"k", b"s", b"");
        let mut handed = Handed::default();
        for _ in 0..BATCH_MAX_EVENTS {
            handed = sink.offer(&e);
        }
        assert_eq!(handed.queued, u64::from(BATCH_MAX_EVENTS));
        assert_eq!(queue.pop().map(|b| b.len()), Some(BATCH_MAX_EVENTS as usize));
    }

    proptest! {
        #[test]
        fn records_round_trip_in_order(
            events in proptest::collection::vec(
                (0u8..6, any::<u64>(),
                 proptest::collection::vec(any::<u8>(), 0..300),
                 proptest::collection::vec(any::<u8>(), 0..200),
                 proptest::collection::vec(any::<u8>(), 0..100)),
                0..40),
        ) {
            let (sink, queue) = EventSink::with_capacity(1000, Arc::default());
            let mut expected = Vec::new();
            for (op, at, key, service, corr) in &events {
                let e = ItemEventRef::new(ItemOp::from_byte(*op).unwrap(), *at, key, service, corr);
                expected.push(e.to_owned());
                sink.offer(&e);
            }
            sink.hand_over();
            let got = drain(&queue);
            prop_assert_eq!(got, expected);
        }
    }
}
