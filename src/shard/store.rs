//! A shard's partition of the key space: the index, the items, TTLs and
//! counters. Single-threaded by construction (one per shard executor).
//!
//! The index is split into [`SUBTABLES`] hashbrown tables. Each grows on its
//! own, so growth never rehashes more than 1/SUBTABLES of the shard at once:
//! loading 10 million keys into a shard rehashes about 10,000 entries at a
//! time (well under a millisecond), never millions.

use hashbrown::HashTable;

use super::clock::HybridClock;
use super::item::{record_len, write_record, AllocError, ItemId, ItemMemory, ItemView};
use super::stats::StoreStats;
use crate::key::key_hash;
use crate::pattern::glob_match;
use crate::protocol::binary::Meta;

/// Number of index sub-tables per shard (a power of two).
pub const SUBTABLES: usize = 1024;

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

/// Settings a store is built with.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    pub seed: u64,
    pub memory_limit_bytes: usize,
    pub max_item_bytes: usize,
    /// Applied when a write gives TTL 0; 0 = never expire.
    pub default_ttl_s: u32,
}

pub struct Store {
    tables: Box<[HashTable<ItemId>]>,
    items: ItemMemory,
    clock: HybridClock,
    config: StoreConfig,
    items_count: usize,
    sweep_cursor: usize,
    pub stats: StoreStats,
}

/// Which sub-table holds a key hash. Uses bits that neither the owner
/// choice (`hash % shards`, low bits) nor the in-table hash below rely on.
#[inline]
fn subtable_of(hash: u64) -> usize {
    ((hash >> 10) as usize) & (SUBTABLES - 1)
}

/// The hash given to hashbrown: rotated so that its bucket bits (low) are
/// not the bits fixed by the owner choice.
#[inline]
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        Store {
            tables: (0..SUBTABLES).map(|_| HashTable::new()).collect(),
            items: ItemMemory::new(config.memory_limit_bytes),
            clock: HybridClock::default(),
            config,
            items_count: 0,
            sweep_cursor: 0,
            stats: StoreStats::default(),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Number of items held (expired ones not yet reclaimed included).
    pub fn len(&self) -> usize {
        self.items_count
    }

    pub fn is_empty(&self) -> bool {
        self.items_count == 0
    }

    /// Bytes held by items and their bookkeeping.
    pub fn used_bytes(&self) -> usize {
        self.items.used_bytes()
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<ItemId> {
        let items = &self.items;
        self.tables[subtable_of(hash)]
            .find(table_hash(hash), |&id| items.view(id).key() == key)
            .copied()
    }

    /// Reads a key. An expired item is removed and reported as such.
    #[inline]
    pub fn get(&mut self, hash: u64, key: &[u8], now_us: u64) -> Lookup<'_> {
        match self.find(hash, key) {
            None => {
                self.stats.misses += 1;
                Lookup::Miss
            }
            Some(id) if self.items.view(id).is_expired(now_us) => {
                self.remove(hash, key);
                self.stats.misses += 1;
                self.stats.expired_on_access += 1;
                Lookup::Expired
            }
            Some(id) => {
                self.stats.hits += 1;
                Lookup::Hit(self.items.view(id))
            }
        }
    }

    /// Stores a key, replacing any previous item. `ttl_s` 0 means the
    /// default TTL.
    pub fn set(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_s: u32,
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
        let len = record_len(key.len(), value.len());
        let new_id = match self.items.alloc(len) {
            Ok(id) => id,
            Err(AllocError::Full) => {
                // Make room from expired items before refusing.
                if self.sweep_expired(now_us, 4096) == 0 {
                    self.stats.rejected_writes += 1;
                    return Err(WriteError::Full);
                }
                self.items.alloc(len).map_err(|_| {
                    self.stats.rejected_writes += 1;
                    WriteError::Full
                })?
            }
        };
        let version = self.clock.tick(now_us);
        write_record(self.items.record_mut(new_id), version, ttl_s, key, value);
        let meta = self.items.view(new_id).meta();

        let items = &self.items;
        let table = &mut self.tables[subtable_of(hash)];
        let old = match table.find_mut(table_hash(hash), |&id| items.view(id).key() == key) {
            Some(slot) => Some(std::mem::replace(slot, new_id)),
            None => {
                table.insert_unique(table_hash(hash), new_id, |&id| {
                    table_hash(key_hash(items.view(id).key(), self.config.seed))
                });
                None
            }
        };
        match old {
            Some(old) => self.items.free(old),
            None => self.items_count += 1,
        }
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
        let Ok(entry) =
            self.tables[subtable_of(hash)].find_entry(table_hash(hash), |&id| items.view(id).key() == key)
        else {
            return false;
        };
        let (id, _) = entry.remove();
        self.items.free(id);
        self.items_count -= 1;
        true
    }

    /// Removes every item; returns how many there were.
    pub fn flush(&mut self) -> usize {
        let n = self.items_count;
        for t in self.tables.iter_mut() {
            *t = HashTable::new();
        }
        self.items.clear();
        self.items_count = 0;
        self.stats.flushed += n as u64;
        n
    }

    /// Reclaims expired items, visiting at most about `budget` index entries
    /// (whole sub-tables, round robin). Returns the number reclaimed.
    pub fn sweep_expired(&mut self, now_us: u64, budget: usize) -> usize {
        let mut visited = 0;
        let mut reclaimed = 0;
        let mut tables_seen = 0;
        while visited < budget && tables_seen < SUBTABLES {
            let t = self.sweep_cursor;
            self.sweep_cursor = (self.sweep_cursor + 1) % SUBTABLES;
            tables_seen += 1;
            let table = &mut self.tables[t];
            visited += table.len();
            let items = &mut self.items;
            table.retain(|&mut id| {
                if items.view(id).is_expired(now_us) {
                    items.free(id);
                    reclaimed += 1;
                    false
                } else {
                    true
                }
            });
        }
        self.items_count -= reclaimed;
        self.stats.expired_swept += reclaimed as u64;
        reclaimed
    }

    /// Calls `found` for each live key matching `pattern`, until it returns
    /// false.
    pub fn scan(&self, pattern: &[u8], now_us: u64, mut found: impl FnMut(ItemView<'_>) -> bool) {
        for table in self.tables.iter() {
            for &id in table.iter() {
                let item = self.items.view(id);
                if !item.is_expired(now_us) && glob_match(pattern, item.key()) && !found(item) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const SEED: u64 = 7;

    fn store(limit: usize) -> Store {
        Store::new(StoreConfig {
            seed: SEED,
            memory_limit_bytes: limit,
            max_item_bytes: 1 << 20,
            default_ttl_s: 0,
        })
    }

    fn get(s: &mut Store, key: &[u8], now: u64) -> Option<Vec<u8>> {
        match s.get(key_hash(key, SEED), key, now) {
            Lookup::Hit(v) => Some(v.value().to_vec()),
            _ => None,
        }
    }

    #[test]
    fn set_get_replace_delete() {
        let mut s = store(1 << 20);
        let h = key_hash(b"a", SEED);
        let m1 = s.set(h, b"a", b"one", 0, 1_000).unwrap();
        assert_eq!(get(&mut s, b"a", 2_000), Some(b"one".to_vec()));
        let m2 = s.set(h, b"a", b"two", 0, 1_000).unwrap();
        assert!(m2.version > m1.version);
        assert_eq!(get(&mut s, b"a", 2_000), Some(b"two".to_vec()));
        assert_eq!(s.len(), 1);
        assert!(s.delete(h, b"a"));
        assert!(!s.delete(h, b"a"));
        assert_eq!(get(&mut s, b"a", 2_000), None);
        assert_eq!(s.used_bytes(), 0);
    }

    #[test]
    fn ttl_expires_and_reports_expired_once() {
        let mut s = store(1 << 20);
        let h = key_hash(b"t", SEED);
        s.set(h, b"t", b"v", 1, 5_000).unwrap();
        assert!(matches!(s.get(h, b"t", 1_004_999), Lookup::Hit(_)));
        assert!(matches!(s.get(h, b"t", 1_005_000), Lookup::Expired));
        assert!(matches!(s.get(h, b"t", 1_005_000), Lookup::Miss));
    }

    #[test]
    fn sweep_reclaims_expired_items_and_memory() {
        let mut s = store(1 << 24);
        for i in 0..5000u32 {
            let k = format!("k{i}");
            s.set(
                key_hash(k.as_bytes(), SEED),
                k.as_bytes(),
                b"v",
                if i % 2 == 0 { 1 } else { 0 },
                0,
            )
            .unwrap();
        }
        let before = s.used_bytes();
        let mut reclaimed = 0;
        for _ in 0..SUBTABLES {
            reclaimed += s.sweep_expired(2_000_000, 100);
        }
        assert_eq!(reclaimed, 2500);
        assert_eq!(s.len(), 2500);
        assert!(s.used_bytes() < before);
    }

    #[test]
    fn full_memory_refuses_writes_and_keeps_items() {
        let mut s = store(10_000);
        let mut stored = 0;
        for i in 0..1000u32 {
            let k = format!("key{i}");
            match s.set(key_hash(k.as_bytes(), SEED), k.as_bytes(), &[1u8; 100], 0, 0) {
                Ok(_) => stored += 1,
                Err(e) => {
                    assert_eq!(e, WriteError::Full);
                    break;
                }
            }
        }
        assert!(stored > 10 && stored < 1000);
        for i in 0..stored {
            assert!(get(&mut s, format!("key{i}").as_bytes(), 0).is_some());
        }
    }

    #[test]
    fn item_larger_than_max_is_refused() {
        let mut s = Store::new(StoreConfig {
            seed: SEED,
            memory_limit_bytes: 1 << 20,
            max_item_bytes: 100,
            default_ttl_s: 0,
        });
        assert_eq!(
            s.set(key_hash(b"k", SEED), b"k", &[0; 100], 0, 0),
            Err(WriteError::TooLarge)
        );
        assert!(s.set(key_hash(b"k", SEED), b"k", &[0; 99], 0, 0).is_ok());
    }

    #[test]
    fn scan_finds_matching_live_keys() {
        let mut s = store(1 << 20);
        for k in ["character:1", "character:2", "campaign:1"] {
            s.set(key_hash(k.as_bytes(), SEED), k.as_bytes(), b"v", 0, 0)
                .unwrap();
        }
        let mut found = Vec::new();
        s.scan(b"character:*", 0, |item| {
            found.push(item.key().to_vec());
            true
        });
        found.sort();
        assert_eq!(found, vec![b"character:1".to_vec(), b"character:2".to_vec()]);
    }

    #[derive(Debug, Clone)]
    enum ModelOp {
        Set(u8, Vec<u8>),
        Get(u8),
        Delete(u8),
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(prop_oneof![
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(k, v)| ModelOp::Set(k, v)),
            any::<u8>().prop_map(ModelOp::Get),
            any::<u8>().prop_map(ModelOp::Delete),
        ], 1..400)) {
            let mut s = store(1 << 24);
            let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
            for op in ops {
                match op {
                    ModelOp::Set(k, v) => {
                        let key = format!("k{k}");
                        s.set(key_hash(key.as_bytes(), SEED), key.as_bytes(), &v, 0, 0).unwrap();
                        model.insert(k, v);
                    }
                    ModelOp::Get(k) => {
                        prop_assert_eq!(get(&mut s, format!("k{k}").as_bytes(), 0), model.get(&k).cloned());
                    }
                    ModelOp::Delete(k) => {
                        let key = format!("k{k}");
                        prop_assert_eq!(s.delete(key_hash(key.as_bytes(), SEED), key.as_bytes()), model.remove(&k).is_some());
                    }
                }
                prop_assert_eq!(s.len(), model.len());
            }
        }
    }
}
