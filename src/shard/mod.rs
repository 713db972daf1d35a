//! One shard: a pinned executor's exclusive partition of the key space, and
//! the code that runs operations on it.

pub mod clock;
pub mod execute;
pub mod item;
pub mod stats;
pub mod store;

use std::cell::{Cell, RefCell};

use stats::ShardCounters;
use store::{Store, StoreConfig};

/// Largest number of keys in one batch operation.
pub const MAX_BATCH_KEYS: usize = 10_000;

/// Default and largest `limit` of a pattern operation.
pub const DEFAULT_PATTERN_LIMIT: usize = 1_000;
pub const MAX_PATTERN_LIMIT: usize = 100_000;

/// Limits every shard applies.
#[derive(Debug, Clone, Copy)]
pub struct ShardLimits {
    pub max_frame_bytes: usize,
    pub max_item_bytes: usize,
}

/// A shard's state, shared by the tasks of its executor (never across
/// threads).
pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub seed: u64,
    pub limits: ShardLimits,
    pub store: RefCell<Store>,
    pub counters: RefCell<ShardCounters>,
    /// Set when the server is shutting down.
    pub draining: Cell<bool>,
    /// Compression and encryption at rest (see [`crate::codec`]).
    pub codec: RefCell<crate::codec::ValueCodec>,
    /// Whether writes that ask for nothing still go through the codec.
    pub codec_eager: bool,
    /// Request metrics of this shard (issue 7).
    pub metrics: RefCell<crate::metrics::ShardMetrics>,
    /// Default TTLs, cache types and event switches; replaced by the
    /// control plane when `config.cache.update` arrives.
    pub policy: RefCell<crate::hub::policy::Policy>,
    /// This shard's end of the Message Hub event queue; `None` = events off.
    pub events: Option<crate::hub::events::EventSink>,
}

impl Shard {
    pub fn new(id: usize, count: usize, limits: ShardLimits, store: StoreConfig) -> Self {
        // The policy resolves a write's TTL 0 (per cache type, else the
        // default) before the store sees it; the store's own default is
        // then only reached for "never expire".
        let policy = crate::hub::policy::Policy::new(store.default_ttl_s, 0);
        let store = StoreConfig {
            default_ttl_s: 0,
            ..store
        };
        Shard {
            id,
            count,
            seed: store.seed,
            limits,
            store: RefCell::new(Store::new(store)),
            counters: RefCell::new(ShardCounters::default()),
            draining: Cell::new(false),
            codec: RefCell::new(crate::codec::ValueCodec::off(limits.max_item_bytes)),
            codec_eager: false,
            metrics: RefCell::default(),
            policy: RefCell::new(policy),
            events: None,
        }
    }

    /// Sets the start policy and, when events are on, the event queue.
    pub fn attach_hub(
        &mut self,
        policy: crate::hub::policy::Policy,
        events: Option<crate::hub::events::EventSink>,
    ) {
        self.policy = RefCell::new(policy);
        self.events = events;
    }

    /// This shard with its value codec (server start).
    pub fn with_codec(mut self, codec: crate::codec::ValueCodec) -> Self {
        self.codec_eager = codec.eager();
        self.codec = RefCell::new(codec);
        self
    }

    /// Whether this shard owns a key hash.
    #[inline]
    pub fn owns(&self, hash: u64) -> bool {
        crate::key::owner_of(hash, self.count) == self.id
    }
}

/// A small shard for unit tests: `id` of `count`, 4 MiB, 64 KiB items,
/// 1 MiB frames, LRU, hash seed 1.
#[cfg(test)]
pub(crate) fn test_shard(id: usize, count: usize) -> Shard {
    let limits = ShardLimits {
        max_frame_bytes: 1 << 20,
        max_item_bytes: 1 << 16,
    };
    let store = StoreConfig {
        seed: 1,
        memory_limit_bytes: 4 << 20,
        max_item_bytes: 1 << 16,
        default_ttl_s: 0,
        eviction: store::EvictionPolicy::Lru,
    };
    Shard::new(id, count, limits, store)
}
