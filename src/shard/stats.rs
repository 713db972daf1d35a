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
    /// Large new items not stored on their first write (the cache was hot:
    /// docs/memory.md, "Admission").
    pub admissions_declined: u64,
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
    /// Bytes of answers written to sockets that have not taken them yet
    /// (docs/memory.md, "Answers waiting for slow readers").
    pub output_bytes: u64,
    /// Connections waiting for their client to read before reading more.
    pub output_paused: u64,
    /// Connections closed because their client did not read their answers
    /// within `--output-stall-timeout`.
    pub output_stall_closes: u64,
}

/// Something a shard counts (see [`ShardCounters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// A connection was accepted (and is open).
    Accepted,
    /// A connection was refused (too many open).
    Refused,
    /// An accepted connection closed.
    Closed,
    /// Requests read by this shard's connections, or run for another shard.
    Requests(u64),
    /// A request sent to its owner shard.
    ForwardedOp,
    /// A batch of requests from another shard, run here.
    ForwardedBatch,
    /// A request that could not be read as one.
    ProtocolError,
    /// A connection starts waiting for its client to take `n` answer bytes.
    OutputPaused(u64),
    /// ... and stops waiting (its answers sent, or the connection gone).
    OutputResumed(u64),
    /// A connection closed: its client did not read in time.
    OutputStallClose,
}

impl ShardCounters {
    /// Counts one event.
    #[inline]
    pub fn add(&mut self, tally: Tally) {
        match tally {
            Tally::Accepted => {
                self.connections_accepted += 1;
                self.connections_open += 1;
            }
            Tally::Refused => self.connections_refused += 1,
            Tally::Closed => self.connections_open -= 1,
            Tally::Requests(n) => self.requests += n,
            Tally::ForwardedOp => self.forwarded_ops += 1,
            Tally::ForwardedBatch => self.forwarded_batches += 1,
            Tally::ProtocolError => self.protocol_errors += 1,
            Tally::OutputPaused(n) => {
                self.output_paused += 1;
                self.output_bytes += n;
            }
            Tally::OutputResumed(n) => {
                self.output_paused -= 1;
                self.output_bytes -= n;
            }
            Tally::OutputStallClose => self.output_stall_closes += 1,
        }
    }
}
