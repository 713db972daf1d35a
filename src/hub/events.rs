//! Item events as a shard hands them to the bridge: fixed-size records
//! (no allocation) pushed into a bounded lock-free queue, one queue per
//! shard. A full queue drops the event and the shard counts it; the shard
//! never waits for the bridge.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Longest key (the protocol's limit), service id and correlation id an
/// event carries. Longer correlation ids are cut to this length.
pub const KEY_CAP: usize = 250;
pub const SERVICE_CAP: usize = 128;
pub const CORRELATION_CAP: usize = 64;

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
}

/// One `cache.item.updated`, stored inline.
#[derive(Clone)]
pub struct ItemEvent {
    pub op: ItemOp,
    /// Unix milliseconds of the write.
    pub at_ms: u64,
    key_len: u8,
    service_len: u8,
    correlation_len: u8,
    key: [u8; KEY_CAP],
    service: [u8; SERVICE_CAP],
    correlation: [u8; CORRELATION_CAP],
}

impl ItemEvent {
    /// An event; fields longer than their capacity are cut.
    pub fn new(op: ItemOp, at_ms: u64, key: &[u8], service: &[u8], correlation_id: &[u8]) -> ItemEvent {
        let mut e = ItemEvent {
            op,
            at_ms,
            key_len: 0,
            service_len: 0,
            correlation_len: 0,
            key: [0; KEY_CAP],
            service: [0; SERVICE_CAP],
            correlation: [0; CORRELATION_CAP],
        };
        e.key_len = copy_into(&mut e.key, key);
        e.service_len = copy_into(&mut e.service, service);
        e.correlation_len = copy_into(&mut e.correlation, correlation_id);
        e
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    pub fn service(&self) -> &[u8] {
        &self.service[..usize::from(self.service_len)]
    }

    /// Empty when the request and its connection gave none.
    pub fn correlation_id(&self) -> &[u8] {
        &self.correlation[..usize::from(self.correlation_len)]
    }
}

fn copy_into<const N: usize>(dst: &mut [u8; N], src: &[u8]) -> u8 {
    let n = src.len().min(N).min(usize::from(u8::MAX));
    dst[..n].copy_from_slice(&src[..n]);
    n as u8
}

/// A shard's end of its event queue.
pub struct EventSink {
    queue: Arc<ArrayQueue<ItemEvent>>,
}

/// The queue between one shard and the bridge.
pub type EventQueue = Arc<ArrayQueue<ItemEvent>>;

impl EventSink {
    /// A queue of `capacity` events and the sink that fills it.
    pub fn with_capacity(capacity: usize) -> (EventSink, EventQueue) {
        let queue = Arc::new(ArrayQueue::new(capacity.max(1)));
        (EventSink { queue: queue.clone() }, queue)
    }

    /// Hands an event to the bridge; false when the queue was full and the
    /// event was dropped.
    #[inline]
    pub fn offer(&self, event: ItemEvent) -> bool {
        self.queue.push(event).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_kept_and_long_ones_cut() {
        let long = vec![b'c'; 100];
        let e = ItemEvent::new(ItemOp::Set, 5, b"k1", b"svc", &long);
        assert_eq!(e.key(), b"k1");
        assert_eq!(e.service(), b"svc");
        assert_eq!(e.correlation_id(), &long[..CORRELATION_CAP]);
    }

    #[test]
    fn a_full_queue_drops() {
        let (sink, queue) = EventSink::with_capacity(2);
        let e = ItemEvent::new(ItemOp::Delete, 1, b"k", b"s", b"");
        assert!(sink.offer(e.clone()));
        assert!(sink.offer(e.clone()));
        assert!(!sink.offer(e));
        assert_eq!(queue.len(), 2);
    }
}
