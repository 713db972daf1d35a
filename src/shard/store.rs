//! A shard's partition of the key space: the index, the items, TTLs and
//! counters. Single-threaded by construction (one per shard executor).
//!
//! The index is split into [`SUBTABLES`] cuckoo tables (`index::Table`,
//! about 6 bytes per item). Each grows on its own, by a quarter, so growth
//! never rehashes more than about 2/SUBTABLES of the shard at once: loading
//! 10 million keys into a shard rehashes at most a few thousand entries at
//! a time (`cargo bench --bench index_growth` reports the slowest insert),
//! never millions.

use super::item::{encoding, key_of, write_encoded, ItemId, ItemView, Stamp};
use super::stats::StoreStats;
use crate::key::key_hash;
use crate::pattern::glob_match;
use crate::protocol::binary::Meta;
use crate::slab::{record, Slab};
use crate::time::HybridClock;

/// Number of index sub-tables per shard (a power of two).
pub const SUBTABLES: usize = 8192;

/// Result of a read.
pub enum Lookup<'a> {
    Hit(ItemView<'a>),
    /// The key was found past its expiry (and has been removed).
    Expired,
    Miss,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// No memory for the item (CACHE_003).
    Full,
    /// Key and value exceed `max_item_bytes` (CACHE_003).
    TooLarge,
}

/// What happens when a write does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvictionPolicy {
    /// Evict the least recently used items (CLOCK approximation).
    #[default]
    Lru,
    /// Refuse the write with CACHE_003; never drop a live item.
    NoEviction,
}

impl EvictionPolicy {
    pub fn parse(name: &str) -> Option<EvictionPolicy> {
        match name {
            "lru" => Some(EvictionPolicy::Lru),
            "noeviction" => Some(EvictionPolicy::NoEviction),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EvictionPolicy::Lru => "lru",
            EvictionPolicy::NoEviction => "noeviction",
        }
    }
}

/// Settings a store is built with.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    pub seed: u64,
    pub memory_limit_bytes: usize,
    pub max_item_bytes: usize,
    /// Applied when a write gives TTL 0; 0 = never expire.
    pub default_ttl_s: u32,
    pub eviction: EvictionPolicy,
}

/// Attempts at making room for one write before giving up.
const MAX_EVICTIONS_PER_WRITE: usize = 64;

/// Regions whose read records get a second chance within one write; past
/// them the oldest region goes whole, so that a write never moves more than
/// this many segments' worth of hot records (each move clears their bit,
/// so the next writes find them evictable, as CLOCK's hand does).
const SECOND_CHANCES_PER_WRITE: usize = MAX_EVICTIONS_PER_WRITE - 1;

pub struct Store {
    tables: Box<[index::Table]>,
    items: Slab,
    /// Bytes of the index tables' allocations.
    index_bytes: usize,
    /// Key and value bytes of the items held.
    payload_bytes: usize,
    clock: HybridClock,
    config: StoreConfig,
    items_count: usize,
    sweep_cursor: usize,
    pub stats: StoreStats,
    /// Keys that missed lately: a large value written after a miss may be
    /// declined while the cache is hot ([`admit`]).
    missed: admit::MissFilter,
    /// State of admission's random draws.
    draws: u64,
    /// Share of read records among those eviction examined lately (1/1024).
    read_share: u32,
    admission: bool,
}

/// What one [`Store::maintain`] pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    /// Expired items reclaimed.
    pub expired: usize,
    /// Always 0: memory goes to new sizes within the write that needs it
    /// (kept for the upkeep loop's idea of "busy").
    pub pages_moved: usize,
}

/// Which records of an evicted region stay.
#[derive(Clone, Copy)]
enum Keep {
    /// Those read since eviction last passed them (LRU's second chance).
    Read,
    Nothing,
    /// Every live one: the region is only compacted (`noeviction`).
    Live,
}

/// Hash bits that choose a sub-table.
const SUBTABLE_SELECT_BITS: u32 = 17;

/// Bytes a read warms of each record it may find: the first three lines.
/// A small record (a 20-byte key and a 100-byte value take 125 bytes) lies
/// packed at any offset, so its value usually ends in the second or third
/// line, which the copy of the answer would otherwise wait for.
pub const READ_SPAN: usize = 192;

/// Bytes a write or a delete warms of the record it replaces: the frame,
/// the key (compared) and the header's numbers after it (read to free the
/// record: usually 4 to 6 bytes). Loading three lines for them too, as a
/// read does, cost SET at pipeline 16 about 3% (`perf/ab-builds`).
#[inline]
pub fn head_span(key_len: usize) -> usize {
    record::KEY_AT + key_len + 8
}

/// Chooses a sub-table from 17 hash bits `t` (as a fraction of 1): the
/// key lands in sub-table `SUBTABLES * t * (4 - t) / 3`, which gives the
/// first sub-table half the share of the last, rising smoothly in between.
/// The sub-tables' sizes then spread over a factor of two, wider than one
/// growth step (a quarter), so at any item count their loads spread over
/// their whole range instead of all sitting just after a growth at once
/// (which costs up to 0.7 bytes per item more), and they grow at different
/// times rather than all in the same short window.
///
/// Computed with one multiplication rather than looked up: a 256 KiB table
/// was one more cache miss per request, about a tenth of a lookup's time at
/// pipeline 1.
#[inline]
fn subtable_of(hash: u64) -> usize {
    const ONE: u64 = 1 << SUBTABLE_SELECT_BITS;
    // Bits 7..24, which neither the owner choice (`hash % shards`) nor the
    // in-table hash below rely on.
    let t = (hash >> 7) & (ONE - 1);
    // SUBTABLES * (t/ONE) * (4 - t/ONE) / 3, in integers (< 2^36).
    (t * (4 * ONE - t) * SUBTABLES as u64 / (3 * ONE * ONE)) as usize
}

/// The hash given to a sub-table: rotated so that its bucket bits (0..32)
/// and tag bits (56..64) are the key hash's bits 32..64 and 24..32, none of
/// them fixed by the owner choice (bits 0..7) or the sub-table (7..24).
#[inline]
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        let missed = admit::MissFilter::for_budget(config.memory_limit_bytes);
        let fixed = Self::fixed_index_bytes() + missed.bytes();
        let mut items = Slab::new(config.memory_limit_bytes);
        items.set_index_bytes(fixed);
        Store {
            tables: (0..SUBTABLES).map(|_| index::Table::new()).collect(),
            items,
            index_bytes: fixed,
            payload_bytes: 0,
            clock: HybridClock::default(),
            config,
            items_count: 0,
            sweep_cursor: 0,
            stats: StoreStats::default(),
            draws: config.seed | 1,
            missed,
            read_share: 0,
            admission: true,
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Changes the eviction policy at runtime.
    pub fn set_eviction(&mut self, eviction: EvictionPolicy) {
        self.config.eviction = eviction;
    }

    /// Changes the memory budget at runtime; a lower budget is reached by
    /// releasing pages in the next upkeep ticks.
    pub fn set_memory_limit(&mut self, bytes: usize) {
        self.config.memory_limit_bytes = bytes;
        self.items.set_limit_bytes(bytes);
    }

    /// Number of items held (expired ones not yet reclaimed included).
    pub fn len(&self) -> usize {
        self.items_count
    }

    pub fn is_empty(&self) -> bool {
        self.items_count == 0
    }

    /// Bytes held: slab pages, large records and the index.
    pub fn used_bytes(&self) -> usize {
        self.items.used_bytes()
    }

    /// The allocator, for statistics.
    pub fn slab(&self) -> &Slab {
        &self.items
    }

    /// Bytes the index takes with no item: the sub-table headers and map.
    fn fixed_index_bytes() -> usize {
        SUBTABLES * std::mem::size_of::<index::Table>()
    }

    /// Bytes of the index.
    pub fn index_bytes(&self) -> usize {
        self.index_bytes
    }

    /// Key and value bytes of the items held.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    #[inline]
    fn view(&self, id: ItemId) -> ItemView<'_> {
        ItemView::new(self.items.record(id), self.items.base_of(id))
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<ItemId> {
        let items = &self.items;
        self.tables[subtable_of(hash)]
            .find(table_hash(hash), |id| key_of(items.record(ItemId(id))) == key)
            .map(ItemId)
    }

    /// First step of warming a lookup: starts loading both index buckets
    /// of `hash` (the sub-table headers, 256 KiB, stay in L2). A
    /// connection's read cycle calls this for every request it holds, then
    /// [`Store::prefetch_records`] for each, then runs them: the cache
    /// misses of many lookups then overlap instead of coming one after
    /// another (they were about 40% of the CPU at pipeline 16).
    #[inline]
    pub fn prefetch_index(&self, hash: u64) {
        for bucket in self.tables[subtable_of(hash)].bucket_ptrs(table_hash(hash)) {
            prefetch(bucket);
        }
    }

    /// Second step: walks the index for `hash` (whose buckets the first
    /// step brought in) and starts loading the first `span` bytes of the
    /// records the lookup will compare (at most [`READ_SPAN`]).
    #[inline]
    pub fn prefetch_records(&self, hash: u64, span: usize) {
        let items = &self.items;
        let _ = self.tables[subtable_of(hash)].find(table_hash(hash), |id| {
            let at = items.record_ptr(ItemId(id));
            prefetch(at);
            if span > 64 {
                prefetch(at.wrapping_add(64));
            }
            if span > 128 {
                prefetch(at.wrapping_add(128));
            }
            if span < READ_SPAN {
                prefetch(at.wrapping_add(span - 1));
            }
            false
        });
    }

    /// Reads a key. An expired item is removed and reported as such.
    #[inline]
    pub fn get(&mut self, hash: u64, key: &[u8], now_us: u64) -> Lookup<'_> {
        match self.find(hash, key) {
            None => {
                self.stats.misses += 1;
                self.missed.mark(hash);
                Lookup::Miss
            }
            Some(id) => {
                // The header is read once: counting the read below changes
                // only the frame's read counter.
                let view = self.view(id);
                if view.is_expired(now_us) {
                    self.remove(hash, key);
                    self.missed.mark(hash);
                    self.stats.misses += 1;
                    self.stats.expired_on_access += 1;
                    return Lookup::Expired;
                }
                let parsed = view.parsed();
                self.stats.hits += 1;
                self.items.touch(id);
                Lookup::Hit(ItemView::with_parsed(self.items.record(id), parsed))
            }
        }
    }

    /// Stores a key, replacing any previous item. `ttl_s` 0 means the
    /// default TTL.
    #[inline]
    pub fn set(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_s: u32,
        now_us: u64,
    ) -> Result<Meta, WriteError> {
        self.set_flagged(hash, key, value, ttl_s, 0, now_us)
    }

    /// [`Store::set`] of a value transformed by a value codec, recording
    /// the codec's `flags` (0..=3) in the item header. The store does not
    /// interpret them.
    pub fn set_flagged(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_s: u32,
        flags: u32,
        now_us: u64,
    ) -> Result<Meta, WriteError> {
        self.insert(hash, key, value, ttl_s, flags, None, now_us)
    }

    /// [`Store::set_flagged`] of a write made on another node (a replica
    /// applying its primary's write): it keeps the primary's `version`, so
    /// both copies have the same version and expiry.
    #[allow(clippy::too_many_arguments)]
    pub fn set_replicated(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_s: u32,
        flags: u32,
        version: u64,
        now_us: u64,
    ) -> Result<Meta, WriteError> {
        self.clock.observe(version);
        self.insert(hash, key, value, ttl_s, flags, Some(version), now_us)
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_s: u32,
        flags: u32,
        version: Option<u64>,
        now_us: u64,
    ) -> Result<Meta, WriteError> {
        if key.len() + value.len() > self.config.max_item_bytes {
            self.stats.rejected_writes += 1;
            return Err(WriteError::TooLarge);
        }
        let ttl_s = if ttl_s == 0 {
            self.config.default_ttl_s
        } else {
            ttl_s
        };
        let (key_len, value_len) = (key.len(), value.len());
        // Admission judges the record's size: key, value and the least header.
        let least = key_len + value_len + record::MIN_HEADER_BYTES;
        if version.is_none() && !self.admits(hash, key, least) {
            return Ok(self.declined_meta(ttl_s, now_us));
        }
        let stamp = Stamp {
            version_us: version.unwrap_or_else(|| self.clock.tick(now_us)),
            ttl_s,
            codec: flags,
        };
        let enc = encoding(stamp, key_len, value_len);
        let len_for = |base| enc.record_len(base);
        let (new_id, len) = self
            .allocate(stamp.version_us, len_for, now_us)
            .inspect_err(|_| {
                self.stats.rejected_writes += 1;
            })?;
        let base = self.items.base_of(new_id);
        write_encoded(self.items.space_mut(new_id, len), &enc, base, key, value);
        let meta = stamp.meta();
        debug_assert_eq!(meta, self.view(new_id).meta());

        let items = &self.items;
        let seed = self.config.seed;
        let table = &mut self.tables[subtable_of(hash)];
        let th = table_hash(hash);
        let old = match table.find_mut(th, |id| id != new_id.0 && key_of(items.record(ItemId(id))) == key) {
            Some(slot) => Some(ItemId(std::mem::replace(slot, new_id.0))),
            None => {
                if !table.try_insert(th, new_id.0) {
                    // The table must grow (rarely: stash the entry); account
                    // for its new allocation.
                    let before = table.allocation_size();
                    // Under noeviction the index may not grow into memory that
                    // holds items: refuse the new key instead.
                    if self.config.eviction == EvictionPolicy::NoEviction
                        && !items.can_grow(table.grown_allocation_size().saturating_sub(before).max(64))
                    {
                        let _ = self.items.free(new_id);
                        self.stats.rejected_writes += 1;
                        return Err(WriteError::Full);
                    }
                    table.insert(th, new_id.0, |id| {
                        table_hash(key_hash(key_of(items.record(ItemId(id))), seed))
                    });
                    self.index_bytes = self.index_bytes + table.allocation_size() - before;
                    self.items.set_index_bytes(self.index_bytes);
                    self.release_over_budget(Some(new_id), now_us);
                }
                None
            }
        };
        match old {
            Some(old) => {
                self.payload_bytes -= self.items.free(old);
            }
            None => self.items_count += 1,
        }
        self.payload_bytes += key.len() + value.len();
        self.stats.sets += 1;
        Ok(meta)
    }

    /// Removes a key; whether it was there (expired or not).
    pub fn delete(&mut self, hash: u64, key: &[u8]) -> bool {
        let removed = self.remove(hash, key);
        if removed {
            self.stats.deletes += 1;
        }
        removed
    }

    fn remove(&mut self, hash: u64, key: &[u8]) -> bool {
        let items = &self.items;
        let Some(id) = self.tables[subtable_of(hash)]
            .remove(table_hash(hash), |id| key_of(items.record(ItemId(id))) == key)
        else {
            return false;
        };
        let id = ItemId(id);
        self.payload_bytes -= self.items.free(id);
        self.items_count -= 1;
        true
    }

    /// Removes every item; returns how many there were.
    pub fn flush(&mut self) -> usize {
        let n = self.items_count;
        for t in self.tables.iter_mut() {
            t.clear();
        }
        self.missed.clear();
        self.index_bytes = Self::fixed_index_bytes() + self.missed.bytes();
        self.payload_bytes = 0;
        self.items.set_index_bytes(self.index_bytes);
        self.items.clear();
        self.items_count = 0;
        self.stats.flushed += n as u64;
        n
    }

    /// Calls `each` for every live item of sub-tables `tables` (a cursor
    /// over the whole store that survives writes between calls: an item
    /// never changes sub-table).
    pub fn for_each_in(
        &self,
        tables: std::ops::Range<usize>,
        now_us: u64,
        mut each: impl FnMut(ItemView<'_>),
    ) {
        for table in &self.tables[tables] {
            for id in table.iter() {
                let item = self.view(ItemId(id));
                if !item.is_expired(now_us) {
                    each(item);
                }
            }
        }
    }

    /// The item of a key, without touching its recency (replication reads
    /// what a write just stored).
    pub fn peek(&self, hash: u64, key: &[u8]) -> Option<ItemView<'_>> {
        self.find(hash, key).map(|id| self.view(id))
    }

    /// Calls `found` for each live key matching `pattern`, until it returns
    /// false.
    pub fn scan(&self, pattern: &[u8], now_us: u64, mut found: impl FnMut(ItemView<'_>) -> bool) {
        for table in self.tables.iter() {
            for id in table.iter() {
                let item = self.view(ItemId(id));
                if !item.is_expired(now_us) && glob_match(pattern, item.key()) && !found(item) {
                    return;
                }
            }
        }
    }
}

mod admit;
#[cfg(test)]
mod admit_tests;
mod evict;
mod index;

#[cfg(test)]
mod tests;

/// Hints the CPU to start loading the cache line at `ptr` (no effect on
/// other targets). Never faults, whatever the address.
#[inline(always)]
fn prefetch(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch hint reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}
