//! The per-shard slab allocator for item records.
//!
//! A shard's share of `max_memory` is carved into pages (1 MiB from 1 GiB
//! per shard up; smaller shards use pages of a 1024th of their memory, at
//! least 16 KiB, so that every size class can own pages without starving
//! the others); each page belongs to one size class and is cut into equal
//! chunks (memcached's slab design). A record goes into the smallest class
//! that holds it; records above a quarter page take the large path (one
//! allocation each, counted against the same budget). Values never touch the global
//! allocator on the hot path: a page is allocated once and reused.
//!
//! Chunks carry their state in their first 8 bytes: all zero means free (a
//! live record always has a non-zero key length there), and
//! [`ACCESSED_BIT`] is the CLOCK bit eviction uses. Free chunks of a page
//! form a list threaded through the chunks themselves.
//!
//! Eviction is CLOCK (second chance, the usual LRU approximation with one bit
//! per item) within a class. Pages move between classes: immediately when a
//! class has no page at all, and in the background toward classes that
//! evict the most from classes that evict the least, which undoes slab
//! calcification when the workload's sizes change.

pub mod classes;

pub use classes::{SizeClasses, MAX_PAGE_BYTES, MIN_PAGE_BYTES};

/// Bit of a record's first word that says it was read since the CLOCK hand
/// last passed.
pub const ACCESSED_BIT: u64 = 1 << 60;

/// Most pages per shard (15 bits of an [`ItemId`]): 32 GiB of 1 MiB pages.
pub const MAX_PAGES: usize = 1 << 15;

/// Most chunks the CLOCK hand inspects for one eviction; past it the chunk
/// under the hand goes even if recently read, so one eviction never scans
/// a whole class.
const MAX_CLOCK_STEPS: usize = 4096;

/// Bookkeeping bytes per large record, counted toward the budget.
const LARGE_SLOT_BYTES: usize = 16 + std::mem::size_of::<Option<Box<[u8]>>>();

const NONE: u32 = u32::MAX;
const LARGE_BIT: u32 = 1 << 31;

/// Handle of a record: page and chunk, or an entry of the large table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ItemId(pub u32);

impl ItemId {
    #[inline]
    fn chunk(page: u32, chunk: u32) -> ItemId {
        ItemId((page << 16) | chunk)
    }

    #[inline]
    fn large(index: u32) -> ItemId {
        ItemId(LARGE_BIT | index)
    }

    #[inline]
    pub fn is_large(self) -> bool {
        self.0 & LARGE_BIT != 0
    }

    #[inline]
    fn page(self) -> usize {
        (self.0 >> 16) as usize
    }

    #[inline]
    fn chunk_index(self) -> usize {
        (self.0 & 0xffff) as usize
    }

    #[inline]
    fn large_index(self) -> usize {
        (self.0 & !LARGE_BIT) as usize
    }
}

/// No memory for a record without evicting something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoMemory;

/// What to evict so that an allocation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    /// This record.
    Item(ItemId),
    /// Every live record of this page; then the page goes to class
    /// `to_class`, or back to the system when `None`.
    Page { page: u32, to_class: Option<usize> },
}

struct Page {
    /// `None` once released back to the system.
    mem: Option<Box<[u8]>>,
    class: usize,
    chunk_bytes: usize,
    capacity: u32,
    /// Chunks handed out at least once; those at and after `bump` are unused.
    bump: u32,
    free_head: u32,
    free_count: u32,
    in_partial: bool,
}

impl Page {
    fn has_room(&self) -> bool {
        self.free_head != NONE || self.bump < self.capacity
    }

    fn live(&self) -> u32 {
        self.bump - self.free_count
    }

    #[inline]
    fn chunk(&self, index: usize) -> &[u8] {
        let mem = self.mem.as_deref().expect("live page");
        &mem[index * self.chunk_bytes..(index + 1) * self.chunk_bytes]
    }

    #[inline]
    fn chunk_mut(&mut self, index: usize) -> &mut [u8] {
        let cb = self.chunk_bytes;
        let mem = self.mem.as_deref_mut().expect("live page");
        &mut mem[index * cb..(index + 1) * cb]
    }
}

#[derive(Default)]
struct Class {
    pages: Vec<u32>,
    /// Pages that may have room; may hold stale entries (checked on use).
    partial: Vec<u32>,
    clock_page: usize,
    clock_chunk: u32,
    live: u64,
    evictions: u64,
    /// Recent evictions, halved every decay period.
    pressure: u64,
}

/// Statistics of one size class.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassStats {
    pub chunk_bytes: usize,
    pub pages: usize,
    pub items: u64,
    pub free_chunks: u64,
    pub evictions: u64,
}

/// The allocator of one shard.
pub struct Slab {
    page_bytes: usize,
    sizes: SizeClasses,
    classes: Vec<Class>,
    pages: Vec<Page>,
    free_page_slots: Vec<u32>,
    live_pages: usize,
    large: Vec<Option<Box<[u8]>>>,
    large_free: Vec<u32>,
    large_clock: usize,
    large_bytes: usize,
    large_live: u64,
    large_evictions: u64,
    limit_bytes: usize,
    index_bytes: usize,
    pages_moved: u64,
}

impl Slab {
    /// An allocator that never holds more than `limit_bytes` (pages, large
    /// records and the index size reported by [`Slab::set_index_bytes`]).
    pub fn new(limit_bytes: usize) -> Slab {
        Slab::with_page_bytes(limit_bytes, page_bytes_for(limit_bytes))
    }

    /// An allocator with pages of `page_bytes` (a power of two between
    /// [`MIN_PAGE_BYTES`] and [`MAX_PAGE_BYTES`]).
    pub fn with_page_bytes(limit_bytes: usize, page_bytes: usize) -> Slab {
        assert!(page_bytes.is_power_of_two() && (MIN_PAGE_BYTES..=MAX_PAGE_BYTES).contains(&page_bytes));
        let sizes = SizeClasses::new(page_bytes);
        let classes = (0..sizes.len()).map(|_| Class::default()).collect();
        Slab {
            page_bytes,
            sizes,
            classes,
            pages: Vec::new(),
            free_page_slots: Vec::new(),
            live_pages: 0,
            large: Vec::new(),
            large_free: Vec::new(),
            large_clock: 0,
            large_bytes: 0,
            large_live: 0,
            large_evictions: 0,
            limit_bytes,
            index_bytes: 0,
            pages_moved: 0,
        }
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Changes the budget; pages stay the size they are.
    pub fn set_limit_bytes(&mut self, bytes: usize) {
        self.limit_bytes = bytes;
    }

    /// Bytes held: pages, large records and the index.
    pub fn used_bytes(&self) -> usize {
        self.live_pages * self.page_bytes + self.large_bytes + self.index_bytes
    }

    /// Tells the allocator how much memory the index takes, so that the
    /// budget covers it.
    pub fn set_index_bytes(&mut self, bytes: usize) {
        self.index_bytes = bytes;
    }

    /// Whether the budget is exceeded (the index grew into it): pages must
    /// be released.
    pub fn over_budget(&self) -> bool {
        self.used_bytes() > self.limit_bytes
    }

    /// Whether `bytes` more fit in the budget.
    pub fn can_grow(&self, bytes: usize) -> bool {
        self.used_bytes().saturating_add(bytes) <= self.limit_bytes
    }

    /// Size class of a record of `len` bytes (`None`: large path).
    #[inline]
    pub fn class_for(&self, len: usize) -> Option<usize> {
        self.sizes.class_for(len)
    }

    /// Chunk size of the class that holds `len`-byte records (`len` itself
    /// on the large path).
    #[inline]
    pub fn chunk_bytes_for(&self, len: usize) -> usize {
        self.class_for(len).map_or(len, |c| self.sizes.chunk_bytes(c))
    }

    /// Reserves a chunk (or a large record) for `len` bytes without
    /// evicting. The chunk may be larger than `len`.
    pub fn alloc(&mut self, len: usize) -> Result<ItemId, NoMemory> {
        match self.sizes.class_for(len) {
            Some(class) => {
                if let Some(id) = self.alloc_in_class(class) {
                    return Ok(id);
                }
                if !self.can_grow(self.page_bytes) {
                    return Err(NoMemory);
                }
                self.new_page(class).ok_or(NoMemory)?;
                self.alloc_in_class(class).ok_or(NoMemory)
            }
            None => {
                if !self.can_grow(len.saturating_add(LARGE_SLOT_BYTES)) {
                    return Err(NoMemory);
                }
                let record = vec![0u8; len].into_boxed_slice();
                let index = match self.large_free.pop() {
                    Some(i) => {
                        self.large[i as usize] = Some(record);
                        i
                    }
                    None => {
                        self.large.push(Some(record));
                        (self.large.len() - 1) as u32
                    }
                };
                self.large_bytes += len + LARGE_SLOT_BYTES;
                self.large_live += 1;
                Ok(ItemId::large(index))
            }
        }
    }

    fn new_page(&mut self, class: usize) -> Option<u32> {
        let chunk_bytes = self.sizes.chunk_bytes(class);
        let page = Page {
            mem: Some(vec![0u8; self.page_bytes].into_boxed_slice()),
            class,
            chunk_bytes,
            capacity: (self.page_bytes / chunk_bytes) as u32,
            bump: 0,
            free_head: NONE,
            free_count: 0,
            in_partial: true,
        };
        let id = match self.free_page_slots.pop() {
            Some(id) => {
                self.pages[id as usize] = page;
                id
            }
            None => {
                if self.pages.len() >= MAX_PAGES {
                    return None;
                }
                self.pages.push(page);
                (self.pages.len() - 1) as u32
            }
        };
        self.live_pages += 1;
        self.classes[class].pages.push(id);
        self.classes[class].partial.push(id);
        Some(id)
    }

    fn alloc_in_class(&mut self, class: usize) -> Option<ItemId> {
        while let Some(&p) = self.classes[class].partial.last() {
            let page = &mut self.pages[p as usize];
            if page.mem.is_none() || page.class != class {
                self.classes[class].partial.pop();
                continue;
            }
            if !page.has_room() {
                page.in_partial = false;
                self.classes[class].partial.pop();
                continue;
            }
            let index = if page.free_head != NONE {
                let index = page.free_head;
                let chunk = page.chunk(index as usize);
                page.free_head = u32::from_le_bytes(chunk[8..12].try_into().expect("4 bytes"));
                page.free_count -= 1;
                index
            } else {
                page.bump += 1;
                page.bump - 1
            };
            self.classes[class].live += 1;
            return Some(ItemId::chunk(p, index));
        }
        None
    }

    /// Returns a record's memory.
    pub fn free(&mut self, id: ItemId) {
        if id.is_large() {
            if let Some(record) = self.large.get_mut(id.large_index()).and_then(Option::take) {
                self.large_bytes -= record.len() + LARGE_SLOT_BYTES;
                self.large_live -= 1;
                self.large_free.push(id.large_index() as u32);
            }
            return;
        }
        let page = &mut self.pages[id.page()];
        let next = page.free_head;
        let chunk = page.chunk_mut(id.chunk_index());
        chunk[..8].fill(0);
        chunk[8..12].copy_from_slice(&next.to_le_bytes());
        page.free_head = id.chunk_index() as u32;
        page.free_count += 1;
        let class = page.class;
        let push = !page.in_partial;
        page.in_partial = true;
        let c = &mut self.classes[class];
        c.live -= 1;
        if push {
            c.partial.push(id.page() as u32);
            if c.partial.len() > 2 * c.pages.len() + 16 {
                self.compact_partial(class);
            }
        }
    }

    /// Drops stale entries of a class's partial list.
    fn compact_partial(&mut self, class: usize) {
        let pages = &self.pages;
        let c = &mut self.classes[class];
        c.partial.retain(|&p| {
            let page = &pages[p as usize];
            page.mem.is_some() && page.class == class && page.has_room()
        });
        c.partial.sort_unstable();
        c.partial.dedup();
    }

    /// The whole chunk (or large record) of `id`.
    #[inline]
    pub fn record(&self, id: ItemId) -> &[u8] {
        if id.is_large() {
            self.large[id.large_index()]
                .as_deref()
                .expect("live large record")
        } else {
            self.pages[id.page()].chunk(id.chunk_index())
        }
    }

    #[inline]
    pub fn record_mut(&mut self, id: ItemId) -> &mut [u8] {
        if id.is_large() {
            self.large[id.large_index()]
                .as_deref_mut()
                .expect("live large record")
        } else {
            self.pages[id.page()].chunk_mut(id.chunk_index())
        }
    }

    /// Marks a record as read, for CLOCK.
    #[inline]
    pub fn touch(&mut self, id: ItemId) {
        let record = self.record_mut(id);
        let word = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
        if word & ACCESSED_BIT == 0 {
            record[..8].copy_from_slice(&(word | ACCESSED_BIT).to_le_bytes());
        }
    }

    /// Chooses what to evict so that a `len`-byte record fits.
    pub fn choose_victim(&mut self, len: usize) -> Option<Victim> {
        match self.sizes.class_for(len) {
            Some(class) if !self.classes[class].pages.is_empty() => {
                self.clock_victim(class).map(Victim::Item)
            }
            Some(class) => self
                .donor_page(Some(class))
                .map(|page| Victim::Page {
                    page,
                    to_class: Some(class),
                })
                .or_else(|| self.large_victim().map(Victim::Item)),
            None => self.large_victim().map(Victim::Item).or_else(|| {
                self.donor_page(None)
                    .map(|page| Victim::Page { page, to_class: None })
            }),
        }
    }

    /// Counts an eviction of `id` (called by the store as it evicts).
    pub fn note_eviction(&mut self, id: ItemId) {
        if id.is_large() {
            self.large_evictions += 1;
        } else {
            let class = self.pages[id.page()].class;
            let c = &mut self.classes[class];
            c.evictions += 1;
            c.pressure += 1;
        }
    }

    fn clock_victim(&mut self, class: usize) -> Option<ItemId> {
        let c = &mut self.classes[class];
        let mut steps = 0usize;
        let limit = 2 * MAX_CLOCK_STEPS + c.pages.len();
        while steps < limit {
            steps += 1;
            if c.clock_page >= c.pages.len() {
                c.clock_page = 0;
                c.clock_chunk = 0;
            }
            let p = c.pages[c.clock_page];
            let page = &mut self.pages[p as usize];
            if c.clock_chunk >= page.bump {
                c.clock_page += 1;
                c.clock_chunk = 0;
                continue;
            }
            let index = c.clock_chunk;
            c.clock_chunk += 1;
            let chunk = page.chunk_mut(index as usize);
            let word = u64::from_le_bytes(chunk[..8].try_into().expect("8 bytes"));
            if word == 0 {
                continue;
            }
            if word & ACCESSED_BIT != 0 && steps < MAX_CLOCK_STEPS {
                chunk[..8].copy_from_slice(&(word & !ACCESSED_BIT).to_le_bytes());
                continue;
            }
            return Some(ItemId::chunk(p, index));
        }
        None
    }

    fn large_victim(&mut self) -> Option<ItemId> {
        if self.large_live == 0 {
            return None;
        }
        let slots = self.large.len();
        for step in 0..2 * slots {
            let i = self.large_clock % slots;
            self.large_clock = i + 1;
            if let Some(record) = self.large[i].as_deref_mut() {
                let word = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                if word & ACCESSED_BIT != 0 && step < slots {
                    record[..8].copy_from_slice(&(word & !ACCESSED_BIT).to_le_bytes());
                    continue;
                }
                return Some(ItemId::large(i as u32));
            }
        }
        None
    }

    /// The page whose loss costs least, from classes other than `except`:
    /// among a few candidates (the pages under the CLOCK hands of the
    /// classes under the least eviction pressure), the one with the fewest
    /// recently read records, then the fewest records.
    fn donor_page(&self, except: Option<usize>) -> Option<u32> {
        self.donor_page_avoiding(except, None)
    }

    fn donor_page_avoiding(&self, except: Option<usize>, avoid: Option<u32>) -> Option<u32> {
        const CLASSES: usize = 8;
        const PAGES_PER_CLASS: usize = 2;
        let mut classes: Vec<(u64, usize, usize)> = self
            .classes
            .iter()
            .enumerate()
            .filter(|(i, c)| Some(*i) != except && !c.pages.is_empty())
            .map(|(i, c)| (c.pressure, usize::MAX - c.pages.len(), i))
            .collect();
        classes.sort_unstable();
        classes
            .iter()
            .take(CLASSES)
            .flat_map(|&(pressure, _, i)| {
                let c = &self.classes[i];
                (0..(PAGES_PER_CLASS + 1).min(c.pages.len()))
                    .map(move |k| (pressure, c.pages[(c.clock_page + k) % c.pages.len()]))
            })
            .filter(|&(_, page)| Some(page) != avoid)
            .map(|(pressure, page)| {
                let (accessed, live) = self.page_usage(page);
                ((accessed, pressure, live), page)
            })
            .min()
            .map(|(_, page)| page)
    }

    /// Recently read records and live records of a page.
    fn page_usage(&self, page: u32) -> (u32, u32) {
        let p = &self.pages[page as usize];
        let mut accessed = 0;
        for i in 0..p.bump as usize {
            let word = u64::from_le_bytes(p.chunk(i)[..8].try_into().expect("8 bytes"));
            if word & ACCESSED_BIT != 0 {
                accessed += 1;
            }
        }
        (accessed, p.live())
    }

    /// Records on a page, for evicting them all before the page moves.
    pub fn live_records(&self, page: u32) -> Vec<ItemId> {
        let p = &self.pages[page as usize];
        (0..p.bump)
            .filter(|&i| u64::from_le_bytes(p.chunk(i as usize)[..8].try_into().expect("8 bytes")) != 0)
            .map(|i| ItemId::chunk(page, i))
            .collect()
    }

    fn detach_page(&mut self, page: u32) {
        let p = &mut self.pages[page as usize];
        let (class, live) = (p.class, u64::from(p.live()));
        p.in_partial = false;
        let c = &mut self.classes[class];
        c.live -= live;
        if let Some(pos) = c.pages.iter().position(|&x| x == page) {
            c.pages.swap_remove(pos);
            if c.clock_page == pos {
                c.clock_chunk = 0;
            }
        }
        if c.clock_page >= c.pages.len() {
            c.clock_page = 0;
        }
    }

    /// Gives a page whose records were all evicted to another class.
    pub fn move_page(&mut self, page: u32, to_class: usize) {
        self.detach_page(page);
        let chunk_bytes = self.sizes.chunk_bytes(to_class);
        let p = &mut self.pages[page as usize];
        p.class = to_class;
        p.chunk_bytes = chunk_bytes;
        p.capacity = (self.page_bytes / chunk_bytes) as u32;
        p.bump = 0;
        p.free_head = NONE;
        p.free_count = 0;
        p.in_partial = true;
        self.classes[to_class].pages.push(page);
        self.classes[to_class].partial.push(page);
        self.pages_moved += 1;
    }

    /// Returns a page whose records were all evicted to the system.
    pub fn release_page(&mut self, page: u32) {
        self.detach_page(page);
        self.pages[page as usize].mem = None;
        self.free_page_slots.push(page);
        self.live_pages -= 1;
    }

    /// A page to release when the budget is exceeded.
    pub fn page_to_release(&self, avoid: Option<u32>) -> Option<u32> {
        self.donor_page_avoiding(None, avoid)
    }

    /// The page holding `id`, if it is a chunk of a page.
    pub fn page_of(&self, id: ItemId) -> Option<u32> {
        (!id.is_large()).then_some(id.page() as u32)
    }

    /// Pages to move per upkeep tick: about 1 MiB of memory whatever the
    /// page size, so that small shards rebalance as fast as large ones.
    pub fn pages_per_rebalance(&self) -> usize {
        (MAX_PAGE_BYTES / self.page_bytes).max(1)
    }

    /// A page move that would relieve the class evicting the most, from a
    /// class evicting far less; `None` when the classes are in balance.
    pub fn rebalance_move(&self) -> Option<(u32, usize)> {
        const MIN_PRESSURE: u64 = 16;
        let (pressure, needy) = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.pressure, i))
            .max()?;
        if pressure < MIN_PRESSURE {
            return None;
        }
        // Only a class evicting far less may give a page.
        let calm = self
            .classes
            .iter()
            .enumerate()
            .any(|(i, c)| i != needy && !c.pages.is_empty() && c.pressure * 4 < pressure);
        if !calm {
            return None;
        }
        let page = self.donor_page(Some(needy))?;
        (self.classes[self.pages[page as usize].class].pressure * 4 < pressure).then_some((page, needy))
    }

    /// Halves every class's recent-eviction count.
    pub fn decay_pressure(&mut self) {
        for c in &mut self.classes {
            c.pressure /= 2;
        }
    }

    /// Drops every page and record.
    pub fn clear(&mut self) {
        let index = self.index_bytes;
        *self = Slab::with_page_bytes(self.limit_bytes, self.page_bytes);
        self.index_bytes = index;
    }

    /// Bytes of one page of this allocator.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    pub fn live_pages(&self) -> usize {
        self.live_pages
    }

    pub fn large_records(&self) -> u64 {
        self.large_live
    }

    pub fn large_bytes(&self) -> usize {
        self.large_bytes
    }

    pub fn pages_moved(&self) -> u64 {
        self.pages_moved
    }

    pub fn large_evictions(&self) -> u64 {
        self.large_evictions
    }

    /// Per-class statistics (classes holding pages only).
    pub fn class_stats(&self) -> Vec<ClassStats> {
        self.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.pages.is_empty() || c.evictions > 0)
            .map(|(i, c)| {
                let capacity: u64 = c
                    .pages
                    .iter()
                    .map(|&p| u64::from(self.pages[p as usize].capacity))
                    .sum();
                ClassStats {
                    chunk_bytes: self.sizes.chunk_bytes(i),
                    pages: c.pages.len(),
                    items: c.live,
                    free_chunks: capacity - c.live,
                    evictions: c.evictions,
                }
            })
            .collect()
    }

    /// Bytes of pages not holding a record (free chunks, unused tails).
    pub fn free_bytes_in_pages(&self) -> usize {
        let used: usize = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| c.live as usize * self.sizes.chunk_bytes(i))
            .sum();
        self.live_pages * self.page_bytes - used
    }
}

/// Page size for a shard of `limit_bytes`: a 1024th of it, rounded down to
/// a power of two, between [`MIN_PAGE_BYTES`] and [`MAX_PAGE_BYTES`].
pub fn page_bytes_for(limit_bytes: usize) -> usize {
    let target = (limit_bytes / 1024).max(1);
    let floor = 1usize << (usize::BITS - 1 - target.leading_zeros());
    floor.clamp(MIN_PAGE_BYTES, MAX_PAGE_BYTES)
}

#[cfg(test)]
mod tests;
