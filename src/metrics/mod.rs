//! Request metrics: per shard, per (service, operation) counters and an
//! HDR latency histogram, written only by their shard (plain integers in a
//! `RefCell`, no lock, no shared atomic). A scrape asks every shard for a
//! [`ShardSnapshot`] (through the control plane, [`crate::control`]),
//! merges them into a [`MetricsSnapshot`] and renders it with
//! [`render_prometheus`].
//!
//! Recording happens once per read cycle of a connection, in the
//! dispatcher (`server/dispatch/observe.rs`), through [`ShardMetrics`].

mod bridge;
mod render;
mod snapshot;

pub use bridge::BridgeCounters;
pub use render::render_prometheus;
pub use snapshot::{BridgeSnapshot, ClusterSnapshot, MetricsSnapshot, NodeStatus, OpSnapshot, ShardSnapshot};

use hdrhistogram::Histogram;

use crate::ops::OpKind;
use crate::Status;

/// Distinct service ids a shard labels; later ones count as [`OTHER_SERVICE`].
pub const MAX_SERVICES_PER_SHARD: usize = 64;

/// Label of overflow services and of connections without a service id.
pub const OTHER_SERVICE: &str = "other";

/// Index of a service in a shard's table; 0 is [`OTHER_SERVICE`].
pub type ServiceIndex = u16;

/// Operation slots: every [`OpKind`], then requests that named none.
pub const OP_SLOTS: usize = OpKind::ALL.len() + 1;
/// Slot of requests that could not be decoded or named no known operation.
pub const INVALID_OP: u8 = OpKind::ALL.len() as u8;

const STATUS_SLOTS: usize = Status::ALL.len();

/// Largest latency the histograms hold exactly (60 s, in microseconds);
/// longer ones are recorded as this.
const LATENCY_MAX_US: u64 = 60_000_000;

/// The slot of an operation.
#[inline]
pub const fn op_slot(kind: OpKind) -> u8 {
    match kind {
        OpKind::Get => 0,
        OpKind::Set => 1,
        OpKind::Delete => 2,
        OpKind::GetMany => 3,
        OpKind::SetMany => 4,
        OpKind::DeleteMany => 5,
        OpKind::Pattern => 6,
        OpKind::Flush => 7,
        OpKind::Stats => 8,
        OpKind::Health => 9,
        OpKind::Reload => 10,
    }
}

/// The `operation` label of a slot.
pub fn op_label(slot: u8) -> &'static str {
    OpKind::ALL.get(usize::from(slot)).map_or("invalid", |k| k.name())
}

#[inline]
fn status_slot(status: u32) -> usize {
    // The position of the status in `Status::ALL` (checked by a test).
    match status {
        0..=13 => status as usize,
        101 => 14,
        102 => 15,
        _ => 6, // unknown statuses count as malformed
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid histogram bounds")
}

/// Counters of one (service, operation).
#[derive(Default)]
struct OpCell {
    requests: u64,
    hits: u64,
    misses: u64,
    errors: [u64; STATUS_SLOTS],
    latency_sum_us: u64,
    /// Created on first use: most (service, operation) pairs never occur.
    latency: Option<Box<Histogram<u64>>>,
}

/// One shard's metrics.
pub struct ShardMetrics {
    /// Service names by index; index 0 is [`OTHER_SERVICE`].
    names: Vec<Box<str>>,
    cells: Vec<[OpCell; OP_SLOTS]>,
    /// Events handed to the bridge, and dropped because its queue was full.
    pub events_queued: u64,
    pub events_dropped: u64,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            names: vec![OTHER_SERVICE.into()],
            cells: vec![Default::default()],
            events_queued: 0,
            events_dropped: 0,
        }
    }
}

impl ShardMetrics {
    /// The index of a service id (once per connection): known ids keep
    /// theirs; past [`MAX_SERVICES_PER_SHARD`] ids share [`OTHER_SERVICE`].
    pub fn intern(&mut self, service: &str) -> ServiceIndex {
        if let Some(i) = self.names.iter().position(|n| &**n == service) {
            return i as ServiceIndex;
        }
        if self.names.len() > MAX_SERVICES_PER_SHARD {
            return 0;
        }
        self.names.push(service.into());
        self.cells.push(Default::default());
        (self.names.len() - 1) as ServiceIndex
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&mut self, service: ServiceIndex, op: u8, status: u32, latency_us: u64) {
        let cell = &mut self.cells[usize::from(service)][usize::from(op)];
        cell.requests += 1;
        if status != 0 {
            cell.errors[status_slot(status)] += 1;
        }
        cell.latency_sum_us += latency_us;
        let hist = cell.latency.get_or_insert_with(|| Box::new(new_histogram()));
        hist.saturating_record(latency_us.max(1));
    }

    /// Records lookups of a `get` or `get_many`.
    #[inline]
    pub fn record_lookups(&mut self, service: ServiceIndex, op: u8, hits: u64, misses: u64) {
        let cell = &mut self.cells[usize::from(service)][usize::from(op)];
        cell.hits += hits;
        cell.misses += misses;
    }

    /// Every (service, operation) seen, as owned data.
    pub fn op_snapshots(&self) -> Vec<OpSnapshot> {
        let mut out = Vec::new();
        for (name, cells) in self.names.iter().zip(&self.cells) {
            for (slot, cell) in cells.iter().enumerate() {
                if cell.requests == 0 {
                    continue;
                }
                let errors = Status::ALL
                    .iter()
                    .zip(cell.errors.iter())
                    .filter(|(_, &n)| n > 0)
                    .map(|(s, &n)| (s.code(), n))
                    .collect();
                out.push(OpSnapshot {
                    service: name.to_string(),
                    operation: op_label(slot as u8),
                    requests: cell.requests,
                    hits: cell.hits,
                    misses: cell.misses,
                    errors,
                    latency_sum_us: cell.latency_sum_us,
                    latency: cell.latency.as_deref().cloned().unwrap_or_else(new_histogram),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status is counted under its own code (CACHE_013 was counted
    /// as CACHE_006, and AUTH_001 shown as CACHE_013, until 2026-12-07).
    #[test]
    fn every_status_is_counted_under_its_own_code() {
        for status in Status::ALL {
            assert_eq!(Status::ALL[status_slot(status as u32)], status, "{status:?}");
            let mut m = ShardMetrics::default();
            let svc = m.intern("svc");
            m.record(svc, 0, status as u32, 5);
            let errors = &m.op_snapshots()[0].errors;
            if status == Status::Ok {
                assert!(errors.is_empty());
            } else {
                assert_eq!(errors, &vec![(status.code(), 1)], "{status:?}");
            }
        }
    }

    #[test]
    fn services_are_capped() {
        let mut m = ShardMetrics::default();
        let a = m.intern("a");
        assert_eq!(m.intern("a"), a);
        assert_ne!(a, 0);
        for i in 0..200 {
            m.intern(&format!("svc{i}"));
        }
        assert_eq!(m.intern("one-too-many"), 0);
        assert_eq!(m.names.len(), MAX_SERVICES_PER_SHARD + 1);
    }

    #[test]
    fn records_by_service_and_operation() {
        let mut m = ShardMetrics::default();
        let s = m.intern("character_service");
        m.record(s, op_slot(OpKind::Get), 0, 12);
        m.record(s, op_slot(OpKind::Get), 1, 30);
        m.record_lookups(s, op_slot(OpKind::Get), 1, 1);
        m.record(0, INVALID_OP, 7, 3);
        let snaps = m.op_snapshots();
        assert_eq!(snaps.len(), 2);
        let get = snaps.iter().find(|o| o.operation == "get").unwrap();
        assert_eq!(get.service, "character_service");
        assert_eq!((get.requests, get.hits, get.misses), (2, 1, 1));
        assert_eq!(get.errors, vec![("CACHE_001", 1)]);
        assert_eq!(get.latency.len(), 2);
        assert_eq!(get.latency_sum_us, 42);
        let bad = snaps.iter().find(|o| o.operation == "invalid").unwrap();
        assert_eq!((bad.service.as_str(), bad.errors[0].0), ("other", "CACHE_007"));
    }
}
