//! Making room: the allocation of a record, eviction of the oldest region
//! (with its second chances), index bookkeeping of moved records, the
//! expiry sweep and the background upkeep.

use super::*;

impl Store {
    /// Memory for a record, evicting under the LRU policy when needed: the
    /// oldest region goes, whatever the size of what it holds.
    /// `base` and `len_for` as [`crate::slab::Slab::alloc`] takes them.
    pub(super) fn allocate(
        &mut self,
        base: u64,
        len_for: impl Fn(u64) -> usize + Copy,
        now_us: u64,
    ) -> Result<(ItemId, usize), WriteError> {
        for attempt in 0..MAX_EVICTIONS_PER_WRITE {
            if let Ok(placed) = self.items.alloc(base, len_for) {
                return Ok(placed);
            }
            if self.config.eviction == EvictionPolicy::NoEviction {
                // Only expired items and the bytes of dead records may make
                // room: sweep, then compact the oldest region, keeping every
                // live record.
                if self.sweep_expired(now_us, 4096) > 0 {
                    continue;
                }
                if self.items.dead_bytes() == 0 || !self.evict_oldest(Keep::Live, None, now_us) {
                    return Err(WriteError::Full);
                }
                continue;
            }
            if attempt == 0 {
                self.arm_admission(now_us);
            }
            let keep = if attempt < SECOND_CHANCES_PER_WRITE {
                Keep::Read
            } else {
                Keep::Nothing
            };
            if !self.evict_oldest(keep, None, now_us) {
                return Err(WriteError::Full);
            }
        }
        if self.config.eviction == EvictionPolicy::NoEviction {
            return Err(WriteError::Full);
        }
        // Every pass may have kept hot records (and the last one evicted
        // only one region): evict whole regions until the record fits. A
        // cache where everything was read still takes the write.
        loop {
            if let Ok(placed) = self.items.alloc(base, len_for) {
                return Ok(placed);
            }
            if !self.evict_oldest(Keep::Nothing, None, now_us) {
                return Err(WriteError::Full);
            }
        }
    }

    /// Evicts the oldest region (a segment or a large record), keeping the
    /// records `keep_which` says (moved, one read count spent). Expired
    /// records count as expirations, others as evictions. Returns false
    /// when there is nothing to evict but the region of `spare`.
    pub(super) fn evict_oldest(&mut self, keep_which: Keep, spare: Option<ItemId>, now_us: u64) -> bool {
        let Some(mut region) = self.items.oldest() else {
            return false;
        };
        if spare.is_some_and(|id| self.items.region_of(id) == region) {
            // The write's own region is the oldest (a segment of small
            // records opened long ago, still open): it goes to the back,
            // and the next oldest is evicted. Stopping here left the index
            // grown past the budget (found by the store's model proptest).
            self.items.requeue_oldest();
            match self.items.oldest() {
                Some(next) if next != region => region = next,
                _ => return false,
            }
        }
        let mut keep = Vec::new();
        let (mut examined, mut read) = (0, 0);
        for id in self.items.live_records(region) {
            let item = self.view(id);
            let expired = item.is_expired(now_us);
            examined += usize::from(!expired);
            read += usize::from(!expired && item.was_accessed());
            let stays = match keep_which {
                Keep::Read => item.was_accessed(),
                Keep::Nothing => false,
                Keep::Live => true,
            };
            if stays && !expired {
                keep.push(id);
                continue;
            }
            if !item.is_expired(now_us) {
                self.items.note_eviction(id);
            }
            self.unindex(id, now_us);
        }
        for (old, new) in self.items.retire(region, &keep) {
            self.reindex(old, new);
        }
        self.note_eviction_pass(examined, read);
        true
    }

    /// Removes a record from the index and counts why it went.
    pub(super) fn unindex(&mut self, id: ItemId, now_us: u64) {
        let item = self.view(id);
        let hash = key_hash(item.key(), self.config.seed);
        let payload = item.key_len() + item.value_len();
        if item.is_expired(now_us) {
            self.stats.expired_evicted += 1;
        } else {
            self.stats.evictions += 1;
        }
        if self.tables[subtable_of(hash)]
            .remove(table_hash(hash), |x| x == id.0)
            .is_some()
        {
            self.items_count -= 1;
            self.payload_bytes -= payload;
        }
    }

    /// Points the index entry of a record the allocator moved at its new
    /// place.
    pub(super) fn reindex(&mut self, old: ItemId, new: ItemId) {
        let hash = key_hash(self.view(new).key(), self.config.seed);
        if let Some(slot) = self.tables[subtable_of(hash)].find_mut(table_hash(hash), |x| x == old.0) {
            *slot = new.0;
        }
    }

    /// Background upkeep, bounded: reclaims expired items (at most about
    /// `budget` index entries visited) and evicts if the index grew past
    /// the budget. `decay` is kept for the upkeep loop; the log needs no
    /// aging.
    pub fn maintain(&mut self, now_us: u64, budget: usize, _decay: bool) -> Upkeep {
        let expired = self.sweep_expired(now_us, budget);
        self.release_over_budget(None, now_us);
        Upkeep {
            expired,
            pages_moved: 0,
        }
    }

    /// Evicts the oldest regions while the index has grown the total past
    /// the budget (read records get their second chance, as in
    /// [`Store::allocate`]), sparing the region of `keep` (the item being
    /// written).
    pub(super) fn release_over_budget(&mut self, keep: Option<ItemId>, now_us: u64) {
        let mut attempt = 0;
        while self.items.over_budget() {
            let keep_which = if attempt < SECOND_CHANCES_PER_WRITE {
                Keep::Read
            } else {
                Keep::Nothing
            };
            if !self.evict_oldest(keep_which, keep, now_us) {
                break;
            }
            attempt += 1;
        }
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
            let payload = &mut self.payload_bytes;
            table.retain(|id| {
                let id = ItemId(id);
                let item = ItemView::new(items.record(id), items.base_of(id));
                if item.is_expired(now_us) {
                    *payload -= item.key_len() + item.value_len();
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
}
