//! The per-shard allocator for item records: a log of segments in one
//! recency order, whatever the record's size.
//!
//! A shard's share of `max_memory` is cut into segments (a 256th of it,
//! between 64 KiB and 1 MiB). Records are appended to the open segment,
//! back to back (no size classes, so no rounding waste and nothing to
//! rebalance); records above a quarter of a segment get an allocation of
//! their own (a *large record*), counted against the same budget. Segments
//! and large records are *regions*, kept in one queue in the order they
//! were written.
//!
//! When a write needs memory, the store takes the oldest region, whatever
//! it holds: records read since they were written (the CLOCK bit of
//! [`record::ACCESSED`]) get a second chance (moved to the open
//! segment, or the segment compacted in place and reopened; a large record
//! goes back to the tail of the queue), the others are evicted, and the
//! region's memory serves the write. So memory goes to the new sizes
//! within the write that needs it, with no background task and no slab
//! calcification. `docs/memory.md` explains the choice.
//!
//! A freed record is marked dead; its bytes count as free until its
//! segment is evicted or, once every record of a closed segment is dead,
//! released at once.

mod evict;
mod mapped;
pub mod record;
mod stats;

use std::collections::VecDeque;

use mapped::{mapped_len, Mapped};

pub use record::ACCESSED;
use record::{is_dead, mark_dead};

/// Largest segment: a shard with at least 256 MiB uses 1 MiB segments.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// Smallest segment.
pub const MIN_PAGE_BYTES: usize = 64 << 10;

/// Segments per shard the segment size aims at.
const SEGMENTS_PER_SHARD: usize = 256;

/// Most 1 MiB segments per shard (the largest shard `--max-memory` allows).
pub const MAX_PAGES: usize = 1 << 15;

/// Bookkeeping bytes per large record, counted toward the budget (its
/// slot and the allocator's header).
const LARGE_SLOT_BYTES: usize = 16 + std::mem::size_of::<Large>();

const LARGE_BIT: u32 = 1 << 31;

/// Released segment mappings kept for reuse.
const SPARE_SEGMENTS: usize = 2;

/// Handle of a record: segment and offset, or an entry of the large table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ItemId(pub u32);

impl ItemId {
    #[inline]
    fn large(index: u32) -> ItemId {
        ItemId(LARGE_BIT | index)
    }

    #[inline]
    pub fn is_large(self) -> bool {
        self.0 & LARGE_BIT != 0
    }

    #[inline]
    fn large_index(self) -> usize {
        (self.0 & !LARGE_BIT) as usize
    }
}

/// No memory for a record without evicting something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoMemory;

/// A unit of eviction: a segment or a large record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Segment(u32),
    Large(u32),
}

struct Segment {
    /// `None` once released.
    mem: Option<Mapped>,
    /// Bytes appended.
    used: u32,
    /// Live records and their bytes.
    live: u32,
    live_bytes: u32,
    /// Bumped on release, so that stale queue entries are recognised.
    generation: u32,
    /// Versions of its records are stored relative to this one
    /// ([`record`]): the version of the write that opened it.
    base: u64,
}

struct Large {
    record: Option<Mapped>,
    generation: u32,
    base: u64,
}

/// Statistics of one kind of region (the stats' `slab_classes`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassStats {
    /// Segment size, or 0 for large records.
    pub chunk_bytes: usize,
    pub pages: usize,
    pub items: u64,
    /// Bytes of dead records and unused segment tails.
    pub free_chunks: u64,
    pub evictions: u64,
}

/// The allocator of one shard.
pub struct Slab {
    segment_bytes: usize,
    /// Records start at multiples of `1 << align_shift`, so that an
    /// [`ItemId`]'s 31 bits address the whole budget.
    align_shift: u32,
    offset_bits: u32,
    large_above: usize,
    segments: Vec<Segment>,
    free_segments: Vec<u32>,
    /// The segment records are appended to.
    open: Option<u32>,
    live_segments: usize,
    /// Mappings of released segments kept for the next segments (counted as
    /// held, free bytes): a fresh mapping costs a page fault per 4 KiB on
    /// first write, which made a replacing SET 60% slower
    /// (`cargo bench --bench shard_store`, `set_replace`).
    spare: Vec<Mapped>,
    large: Vec<Large>,
    large_free: Vec<u32>,
    large_bytes: usize,
    large_live: u64,
    /// Regions oldest first; entries whose generation is stale are skipped.
    queue: VecDeque<(Region, u32)>,
    /// Bytes of live records, segments and large records together.
    live_bytes: usize,
    limit_bytes: usize,
    index_bytes: usize,
    segment_evictions: u64,
    large_evictions: u64,
    compactions: u64,
}

impl Slab {
    /// An allocator that never holds more than `limit_bytes` (segments,
    /// large records and the index size reported by [`Slab::set_index_bytes`]).
    ///
    /// The first call also makes the process's C allocator return large
    /// blocks to the kernel (see [`mapped::return_large_blocks_to_the_kernel`]),
    /// so that RSS stays within `--max-memory` plus the baseline.
    pub fn new(limit_bytes: usize) -> Slab {
        mapped::return_large_blocks_to_the_kernel();
        Slab::with_page_bytes(limit_bytes, page_bytes_for(limit_bytes))
    }

    /// An allocator with segments of `page_bytes` (a power of two between
    /// [`MIN_PAGE_BYTES`] and [`MAX_PAGE_BYTES`]).
    pub fn with_page_bytes(limit_bytes: usize, page_bytes: usize) -> Slab {
        assert!(page_bytes.is_power_of_two() && (MIN_PAGE_BYTES..=MAX_PAGE_BYTES).contains(&page_bytes));
        // 31 bits of ItemId address 2^31 alignment units: enough for every
        // segment the budget can hold (spare mappings included).
        let units = limit_bytes.max(1).div_ceil(1 << 31).next_power_of_two();
        let align_shift = units.trailing_zeros();
        Slab {
            segment_bytes: page_bytes,
            align_shift,
            offset_bits: page_bytes.trailing_zeros() - align_shift,
            large_above: page_bytes / 4,
            segments: Vec::new(),
            free_segments: Vec::new(),
            open: None,
            live_segments: 0,
            spare: Vec::new(),
            large: Vec::new(),
            large_free: Vec::new(),
            large_bytes: 0,
            large_live: 0,
            queue: VecDeque::new(),
            live_bytes: 0,
            limit_bytes,
            index_bytes: 0,
            segment_evictions: 0,
            large_evictions: 0,
            compactions: 0,
        }
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Changes the budget; segments stay the size they are.
    pub fn set_limit_bytes(&mut self, bytes: usize) {
        self.limit_bytes = bytes;
        while self.over_budget() && self.spare.pop().is_some() {}
    }

    /// Bytes held: segments, large records and the index.
    pub fn used_bytes(&self) -> usize {
        (self.live_segments + self.spare.len()) * self.segment_bytes + self.large_bytes + self.index_bytes
    }

    /// Tells the allocator how much memory the index takes, so that the
    /// budget covers it.
    pub fn set_index_bytes(&mut self, bytes: usize) {
        self.index_bytes = bytes;
        while self.over_budget() && self.spare.pop().is_some() {}
    }

    /// Whether the budget is exceeded (the index grew into it).
    pub fn over_budget(&self) -> bool {
        self.used_bytes() > self.limit_bytes
    }

    /// Whether `bytes` more fit in the budget.
    pub fn can_grow(&self, bytes: usize) -> bool {
        self.used_bytes().saturating_add(bytes) <= self.limit_bytes
    }

    #[inline]
    fn aligned(&self, len: usize) -> usize {
        let mask = (1usize << self.align_shift) - 1;
        (len + mask) & !mask
    }

    #[inline]
    fn chunk_id(&self, segment: u32, offset: usize) -> ItemId {
        ItemId((segment << self.offset_bits) | (offset >> self.align_shift) as u32)
    }

    #[inline]
    fn locate(&self, id: ItemId) -> (usize, usize) {
        let segment = (id.0 >> self.offset_bits) as usize;
        let offset = ((id.0 & ((1 << self.offset_bits) - 1)) as usize) << self.align_shift;
        (segment, offset)
    }

    /// Whether a record of `len` bytes gets an allocation of its own.
    #[inline]
    pub fn is_large_len(&self, len: usize) -> bool {
        len > self.large_above
    }

    /// Reserves room for a record without evicting. A record's length
    /// depends on the base of the region it lands in (its version is stored
    /// relative to it): `len_for(base)` says it. `base` is the base a new
    /// region gets (the version of the write). The caller writes the record
    /// (see [`record::write_header`], with [`Slab::base_of`]) into
    /// [`Slab::space_mut`] before anything else reaches the allocator.
    ///
    /// Returns the record's id and its length.
    pub fn alloc(&mut self, base: u64, len_for: impl Fn(u64) -> usize) -> Result<(ItemId, usize), NoMemory> {
        if let Some(open) = self.open {
            let len = len_for(self.segments[open as usize].base);
            if !self.is_large_len(len) {
                if let Some(id) = self.append(self.aligned(len), len) {
                    return Ok((id, len));
                }
            }
        }
        let fresh = len_for(base);
        if self.is_large_len(fresh) {
            return Ok((self.alloc_large(fresh, base)?, fresh));
        }
        if self.spare.is_empty() && !self.can_grow(self.segment_bytes) {
            return Err(NoMemory);
        }
        self.open_segment(base).ok_or(NoMemory)?;
        let id = self.append(self.aligned(fresh), fresh).ok_or(NoMemory)?;
        Ok((id, fresh))
    }

    /// The base of the region holding `id` (see [`Slab::alloc`]).
    #[inline]
    pub fn base_of(&self, id: ItemId) -> u64 {
        if id.is_large() {
            self.large[id.large_index()].base
        } else {
            self.segments[self.locate(id).0].base
        }
    }

    #[inline]
    fn append(&mut self, need: usize, len: usize) -> Option<ItemId> {
        let s = self.open?;
        let seg = &mut self.segments[s as usize];
        let offset = seg.used as usize;
        if offset + need > self.segment_bytes {
            return None;
        }
        seg.used += need as u32;
        seg.live += 1;
        seg.live_bytes += len as u32;
        self.live_bytes += len;
        Some(self.chunk_id(s, offset))
    }

    fn alloc_large(&mut self, len: usize, base: u64) -> Result<ItemId, NoMemory> {
        let need = mapped_len(len.min(isize::MAX as usize / 2)) + LARGE_SLOT_BYTES;
        while !self.can_grow(need) && self.spare.pop().is_some() {}
        if len > isize::MAX as usize / 2 || !self.can_grow(need) {
            return Err(NoMemory);
        }
        let record = Some(Mapped::zeroed(len));
        let index = match self.large_free.pop() {
            Some(i) => {
                self.large[i as usize].record = record;
                self.large[i as usize].base = base;
                i
            }
            None => {
                self.large.push(Large {
                    record,
                    generation: 0,
                    base,
                });
                (self.large.len() - 1) as u32
            }
        };
        self.large_bytes += mapped_len(len) + LARGE_SLOT_BYTES;
        self.large_live += 1;
        self.live_bytes += len;
        let generation = self.large[index as usize].generation;
        self.push_queue(Region::Large(index), generation);
        Ok(ItemId::large(index))
    }

    /// Opens a new segment for appends, based at `base`; the open one is
    /// closed.
    fn open_segment(&mut self, base: u64) -> Option<u32> {
        let most = 1usize << (31 - self.offset_bits);
        let s = match self.free_segments.pop() {
            Some(s) => s,
            None if self.segments.len() < most => {
                self.segments.push(Segment {
                    mem: None,
                    used: 0,
                    live: 0,
                    live_bytes: 0,
                    generation: 0,
                    base,
                });
                (self.segments.len() - 1) as u32
            }
            None => return None,
        };
        let seg = &mut self.segments[s as usize];
        // Records are written before they are read and walks stop at
        // `used`, so a reused mapping needs no zeroing.
        seg.mem = Some(
            self.spare
                .pop()
                .unwrap_or_else(|| Mapped::zeroed(self.segment_bytes)),
        );
        (seg.used, seg.live, seg.live_bytes, seg.base) = (0, 0, 0, base);
        let generation = seg.generation;
        self.live_segments += 1;
        self.close_open();
        self.open = Some(s);
        self.push_queue(Region::Segment(s), generation);
        Some(s)
    }

    /// Closes the open segment; one holding nothing goes back at once.
    fn close_open(&mut self) {
        if let Some(s) = self.open.take() {
            if self.segments[s as usize].live == 0 {
                self.release_segment(s);
            }
        }
    }

    fn push_queue(&mut self, region: Region, generation: u32) {
        self.queue.push_back((region, generation));
        // Freed regions leave stale entries; drop them before they add up.
        if self.queue.len() > 2 * (self.live_segments + self.large_live as usize) + 64 {
            let mut queue = std::mem::take(&mut self.queue);
            queue.retain(|&(r, g)| self.is_current(r, g));
            self.queue = queue;
        }
    }

    fn is_current(&self, region: Region, generation: u32) -> bool {
        match region {
            Region::Segment(s) => {
                let seg = &self.segments[s as usize];
                seg.mem.is_some() && seg.generation == generation
            }
            Region::Large(i) => {
                let l = &self.large[i as usize];
                l.record.is_some() && l.generation == generation
            }
        }
    }

    fn release_segment(&mut self, s: u32) {
        let seg = &mut self.segments[s as usize];
        let mem = seg.mem.take();
        seg.generation = seg.generation.wrapping_add(1);
        self.live_bytes -= seg.live_bytes as usize;
        (seg.used, seg.live, seg.live_bytes) = (0, 0, 0);
        self.free_segments.push(s);
        self.live_segments -= 1;
        if self.open == Some(s) {
            self.open = None;
        }
        // Keep a couple of mappings for the next segments, within budget.
        if self.spare.len() < SPARE_SEGMENTS && self.can_grow(self.segment_bytes) {
            self.spare.extend(mem);
        }
    }

    fn release_large(&mut self, i: usize) {
        if let Some(record) = self.large[i].record.take() {
            self.large_bytes -= mapped_len(record.len()) + LARGE_SLOT_BYTES;
            self.live_bytes -= record.len();
            self.large_live -= 1;
            self.large[i].generation = self.large[i].generation.wrapping_add(1);
            self.large_free.push(i as u32);
        }
    }

    /// Returns a record's memory; returns its key and value bytes (one
    /// read of its header for both the store's count and ours).
    pub fn free(&mut self, id: ItemId) -> usize {
        if id.is_large() {
            let payload = record::sizes(self.record(id)).0;
            self.release_large(id.large_index());
            return payload;
        }
        let (s, offset) = self.locate(id);
        let seg = &mut self.segments[s];
        let record = &mut seg.mem.as_deref_mut().expect("live segment")[offset..];
        let (payload, len) = record::sizes(record);
        debug_assert!(!is_dead(record), "double free");
        mark_dead(record);
        seg.live -= 1;
        seg.live_bytes -= len as u32;
        self.live_bytes -= len;
        if seg.live == 0 && self.open != Some(s as u32) {
            self.release_segment(s as u32);
        }
        payload
    }

    /// The bytes reserved for a record just allocated with `len` bytes.
    #[inline]
    pub fn space_mut(&mut self, id: ItemId, len: usize) -> &mut [u8] {
        if id.is_large() {
            return self.large[id.large_index()]
                .record
                .as_deref_mut()
                .expect("live large record");
        }
        let (s, offset) = self.locate(id);
        &mut self.segments[s].mem.as_deref_mut().expect("live segment")[offset..offset + len]
    }

    /// The record of `id`, from its first byte; the slice may run on past
    /// its end (the header says where that is: [`record::total_len`]). Not
    /// cutting it saves parsing the header twice per lookup (GET at
    /// pipeline 1 in `cargo bench --bench shard_store`, `execute/get_hit_100b`).
    #[inline]
    pub fn record(&self, id: ItemId) -> &[u8] {
        if id.is_large() {
            return self.large[id.large_index()]
                .record
                .as_deref()
                .expect("live large record");
        }
        let (s, offset) = self.locate(id);
        &self.segments[s].mem.as_deref().expect("live segment")[offset..]
    }

    /// [`Slab::record`], writable.
    #[inline]
    pub fn record_mut(&mut self, id: ItemId) -> &mut [u8] {
        if id.is_large() {
            return self.large[id.large_index()]
                .record
                .as_deref_mut()
                .expect("live large record");
        }
        let (s, offset) = self.locate(id);
        &mut self.segments[s].mem.as_deref_mut().expect("live segment")[offset..]
    }

    /// Where a record starts, for a prefetch hint (no bounds to check).
    #[inline]
    pub fn record_ptr(&self, id: ItemId) -> *const u8 {
        if id.is_large() {
            return self.large[id.large_index()]
                .record
                .as_deref()
                .map_or(std::ptr::null(), <[u8]>::as_ptr);
        }
        let (s, offset) = self.locate(id);
        self.segments[s]
            .mem
            .as_deref()
            .map_or(std::ptr::null(), |m| m[offset..].as_ptr())
    }

    /// Marks a record as read, for the second chance.
    #[inline]
    pub fn touch(&mut self, id: ItemId) {
        record::count_read(self.record_mut(id));
    }

    /// Drops every segment and record.
    pub fn clear(&mut self) {
        let index = self.index_bytes;
        *self = Slab::with_page_bytes(self.limit_bytes, self.segment_bytes);
        self.index_bytes = index;
    }

    /// Bytes of one segment.
    pub fn page_bytes(&self) -> usize {
        self.segment_bytes
    }

    /// Segments held.
    pub fn live_pages(&self) -> usize {
        self.live_segments
    }

    pub fn large_records(&self) -> u64 {
        self.large_live
    }

    pub fn large_bytes(&self) -> usize {
        self.large_bytes
    }

    /// Segments whose read records were moved or compacted on eviction.
    pub fn pages_moved(&self) -> u64 {
        self.compactions
    }

    pub fn large_evictions(&self) -> u64 {
        self.large_evictions
    }
}

/// Segment size for a shard of `limit_bytes`: a 256th of it, rounded down
/// to a power of two, between [`MIN_PAGE_BYTES`] and [`MAX_PAGE_BYTES`].
pub fn page_bytes_for(limit_bytes: usize) -> usize {
    let target = (limit_bytes / SEGMENTS_PER_SHARD).max(1);
    let floor = 1usize << (usize::BITS - 1 - target.leading_zeros());
    floor.clamp(MIN_PAGE_BYTES, MAX_PAGE_BYTES)
}

#[cfg(test)]
mod tests;
