//! Counters of the Message Hub bridge: atomics, as the bridge runs on its
//! own thread and a scrape reads them from another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::BridgeSnapshot;

/// Counters of the bridge, written by its thread only.
#[derive(Default)]
pub struct BridgeCounters {
    pub enabled: AtomicBool,
    pub connected: AtomicBool,
    /// Successful connections to NATS (the first one included).
    pub connects: AtomicU64,
    pub published_item_events: AtomicU64,
    pub published_health_events: AtomicU64,
    pub publish_failures: AtomicU64,
    pub coalesced: AtomicU64,
    pub received_config: AtomicU64,
    pub received_control: AtomicU64,
    pub invalid_messages: AtomicU64,
}

impl BridgeCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> BridgeSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeSnapshot {
            enabled: self.enabled.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            reconnects: r(&self.connects).saturating_sub(1),
            published_item_events: r(&self.published_item_events),
            published_health_events: r(&self.published_health_events),
            publish_failures: r(&self.publish_failures),
            coalesced: r(&self.coalesced),
            received_config: r(&self.received_config),
            received_control: r(&self.received_control),
            invalid_messages: r(&self.invalid_messages),
        }
    }
}
