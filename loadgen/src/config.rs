//! The settings of one load run, validated and resolved from the command line.

use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::Codec;
use crate::workload::{KeySpace, Ratio, ValueSize};

/// Everything a run needs; shared read-only by the workers.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Target protocol.
    pub codec: Codec,
    /// Target address (the public port for the binary protocol).
    pub addr: SocketAddr,
    /// Logical connections in total, spread over the threads.
    pub connections: usize,
    /// Worker threads.
    pub threads: usize,
    /// CPUs to pin worker `i` to (`cpus[i % len]`), if any.
    pub cpus: Option<Vec<usize>>,
    /// Requests in flight per logical connection.
    pub pipeline: usize,
    /// Get/set mix.
    pub ratio: Ratio,
    /// Keys and their distribution.
    pub keys: KeySpace,
    /// Value sizes of sets.
    pub value_size: ValueSize,
    /// TTL of sets in seconds, 0 for none / the server's default.
    pub ttl: u32,
    /// Measured time, unless `requests` is set.
    pub duration: Duration,
    /// Measured requests instead of a duration.
    pub requests: Option<u64>,
    /// Unmeasured load before the measured window.
    pub warmup: Duration,
    /// How long to wait for answers after the last send.
    pub drain: Duration,
    /// Binary protocol: `CacheConnection.service_id`.
    pub service_id: String,
    /// Binary protocol: `CacheConnection.auth_token`.
    pub token: String,
    /// Binary protocol: `CacheConnection.options.consistency`.
    pub consistency: String,
    /// Binary protocol: one socket per shard per connection, keys sent to their owner.
    pub shard_aware: bool,
    /// Binary protocol: route by the cluster's slot map (every node's shards).
    pub cluster: bool,
    /// With `cluster`: only the keys of this node's primary slots.
    pub node: Option<String>,
    /// Seed of every worker's generator (worker `i` uses `seed + i`).
    pub seed: u64,
    /// Local server process whose CPU time is measured.
    pub server_pid: Option<u32>,
    /// Print a progress line every second (stderr).
    pub progress: bool,
}
