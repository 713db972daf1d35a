//! Shard-local counters: plain integers written only by their shard, read
//! on demand by `stats` (no atomics on the data path).

use serde::Serialize;

/// Counters of one store.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct StoreStats {
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub expired_on_access: u64,
    pub expired_swept: u64,
    /// Expired items reclaimed by eviction (they needed no eviction).
    pub expired_evicted: u64,
    pub evictions: u64,
    pub rejected_writes: u64,
    pub flushed: u64,
}

/// Counters of one shard's connections and requests.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ShardCounters {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_open: u64,
    pub requests: u64,
    pub forwarded_ops: u64,
    pub forwarded_batches: u64,
    pub protocol_errors: u64,
}
