//! One index sub-table: bucketized cuckoo hashing over buckets of twelve
//! slots (an 8-bit tag and a 32-bit item id each) that fill one 64-byte
//! cache line (5.33 bytes a slot).
//!
//! A key may sit in two buckets: its home bucket, chosen by bits 0..32 of
//! its hash, and an alternate computed from the home bucket and the tag
//! (bits 56..64) only, so that an entry can move to its other bucket
//! without its key being read. Lookups read the tags of at most two buckets
//! and compare a key only where a tag matches: a miss reads a record about
//! once in 12 (24 slots, about 21 of them full, each matching with 1/255).
//! The second bucket's line starts loading before the first is read, so
//! the two cache misses of a lookup overlap.
//!
//! Buckets were first 40 bytes of eight slots (5 bytes a slot): half of
//! them straddled two cache lines, and a lookup read the second bucket only
//! after the first: GET of a 1-million-key store took 110-117 ns against
//! 74 ns with hashbrown (`cargo bench --bench shard_store`, `get_hit`).
//!
//! The bucket count may be any number: the table is filled to
//! [`MAX_LOAD_PER_1024`] of its slots, then grows by a quarter (not
//! doubling), so that its load stays between about 0.78 and 0.97: about
//! 6.2 to 6.5 bytes per entry on average, where hashbrown's doubling, at 5 bytes a
//! slot and loads between 7/16 and 7/8, costs about 8.6.
//!
//! Growing needs every entry's full hash: the caller gives a `rehash`
//! closure (the store reads the entry's key and hashes it).
//!
//! Keys whose hashes collide so badly that no table size separates them
//! (more than 24 sharing 40 hash bits, which random keys never do) go to a
//! small stash searched after both buckets, instead of growing the table
//! without end.

/// Slots per bucket.
const SLOTS: usize = 12;

/// Buckets of a table's first allocation: one (64 bytes), as a small
/// shard's sub-tables hold a few items each (two made a 4 MiB shard's index
/// a third bigger than hashbrown's, and hold fewer items).
const INITIAL_BUCKETS: usize = 1;

/// Entries moved, at most, to make room for one insert before the table
/// grows.
const MAX_KICKS: usize = 64;

/// Share of the slots (in 1/1024) a table fills before it grows: 0.97.
/// With eight-slot buckets, measured at max loads 0.93, 0.95, 0.96 and
/// 0.97: walks that find no room (each an early growth) in 0.5, 1.4, 2.7
/// and 7.1 inserts in 10,000. Twelve-slot buckets (24 places per key) fail
/// about once in 10,000 at 0.97 (`kick_failures_are_rare_at_the_max_load`),
/// for 6.16 bytes per entry in one table and 6.5 over the store's
/// sub-tables.
const MAX_LOAD_PER_1024: usize = 993;

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
/// The high bits of the four tag bytes of a bucket's second tag word.
const HIGH4: u64 = 0x8080_8080;

/// The high bit of each byte of `x` that is zero (no carry crosses bytes,
/// so no false match).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    !((((x & LOW7) + LOW7) | x) | LOW7)
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    /// 0: empty slot.
    tags: [u8; SLOTS],
    ids: [u32; SLOTS],
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        tags: [0; SLOTS],
        ids: [0; SLOTS],
    };

    /// The high bit of byte `i` set exactly where `tags[i] == tag`.
    #[inline]
    fn matches(&self, tag: u8) -> u128 {
        let t = self.tags;
        let lo = u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
        let hi = u64::from(u32::from_le_bytes([t[8], t[9], t[10], t[11]]));
        let spread = ONES * u64::from(tag);
        u128::from(zero_bytes(lo ^ spread)) | (u128::from(zero_bytes(hi ^ spread) & HIGH4) << 64)
    }

    #[inline]
    fn find(&self, tag: u8, eq: &mut impl FnMut(u32) -> bool) -> Option<usize> {
        let mut m = self.matches(tag);
        while m != 0 {
            let slot = m.trailing_zeros() as usize / 8;
            if eq(self.ids[slot]) {
                return Some(slot);
            }
            m &= m - 1;
        }
        None
    }

    #[inline]
    fn free_slot(&self) -> Option<usize> {
        let m = self.matches(0);
        (m != 0).then(|| m.trailing_zeros() as usize / 8)
    }
}

/// The tag of a hash: bits 56..64, never 0 (the empty mark).
#[inline]
fn tag_of(hash: u64) -> u8 {
    let tag = (hash >> 56) as u8;
    tag | u8::from(tag == 0)
}

/// The home bucket of a hash among `n`: bits 0..32, scaled.
#[inline]
fn home_of(hash: u64, n: usize) -> usize {
    ((u64::from(hash as u32) * n as u64) >> 32) as usize
}

/// The other bucket of an entry with `tag` in bucket `b`: (c - b) mod n,
/// for a `c` spread by the tag, so that `alt(alt(b)) == b`.
#[inline]
fn alt_of(b: usize, tag: u8, n: usize) -> usize {
    let spread = u32::from(tag).wrapping_mul(0x9E37_79B9);
    let c = ((u64::from(spread) * n as u64) >> 32) as usize;
    let a = c + n - b;
    if a >= n {
        a - n
    } else {
        a
    }
}

/// Entries a table of `n` buckets holds before it grows.
#[inline]
fn max_len(n: usize) -> usize {
    n * SLOTS * MAX_LOAD_PER_1024 / 1024
}

/// Bucket count after growing from `n`.
fn grown(n: usize) -> usize {
    if n == 0 {
        INITIAL_BUCKETS
    } else {
        (n + 1).max((n * 5).div_ceil(4))
    }
}

/// Where an entry is.
enum Place {
    Bucket(usize, usize),
    Stash(usize),
}

/// Entries (tag, id) that no bucket could take.
type Stash = Vec<(u8, u32)>;

pub struct Table {
    buckets: Box<[Bucket]>,
    /// Boxed: one word in every table for what almost none has.
    stash: Option<Box<Stash>>,
    len: u32,
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    /// An empty table; allocates nothing.
    pub fn new() -> Table {
        Table {
            buckets: Box::default(),
            stash: None,
            len: 0,
        }
    }

    fn with_buckets(n: usize) -> Table {
        Table {
            buckets: vec![Bucket::EMPTY; n].into_boxed_slice(),
            stash: None,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Bytes of the table's heap allocations (0 when empty). Changes only
    /// in [`Table::insert`] and [`Table::clear`].
    pub fn allocation_size(&self) -> usize {
        self.buckets.len() * size_of::<Bucket>()
            + self
                .stash
                .as_ref()
                .map_or(0, |s| size_of::<Stash>() + s.capacity() * size_of::<(u8, u32)>())
    }

    /// Bytes of the bucket array after the next growth (what an insert
    /// refused by [`Table::try_insert`] allocates, the old array aside).
    pub fn grown_allocation_size(&self) -> usize {
        grown(self.buckets.len()) * size_of::<Bucket>()
    }

    /// Addresses of the two buckets of `hash`, for a prefetch (the table
    /// itself when it has none).
    #[inline]
    pub fn bucket_ptrs(&self, hash: u64) -> [*const u8; 2] {
        let n = self.buckets.len();
        if n == 0 {
            let me = std::ptr::from_ref(self).cast();
            return [me, me];
        }
        let b1 = home_of(hash, n);
        let b2 = alt_of(b1, tag_of(hash), n);
        [
            std::ptr::from_ref(&self.buckets[b1]).cast(),
            std::ptr::from_ref(&self.buckets[b2]).cast(),
        ]
    }

    #[inline]
    fn locate(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<Place> {
        let n = self.buckets.len();
        if n == 0 {
            return None;
        }
        let tag = tag_of(hash);
        let b1 = home_of(hash, n);
        // (Prefetching the second bucket here made a lookup slower:
        // `cargo bench --bench shard_store`, `get_hit` 98 ns against 81-88.
        // Pipelined lookups prefetch it a step ahead, in
        // `Store::prefetch_records`.)
        if let Some(slot) = self.buckets[b1].find(tag, &mut eq) {
            return Some(Place::Bucket(b1, slot));
        }
        let b2 = alt_of(b1, tag, n);
        if b2 != b1 {
            if let Some(slot) = self.buckets[b2].find(tag, &mut eq) {
                return Some(Place::Bucket(b2, slot));
            }
        }
        let stash = self.stash.as_deref()?;
        stash
            .iter()
            .position(|&(t, id)| t == tag && eq(id))
            .map(Place::Stash)
    }

    /// The id of an entry of `hash` for which `eq` holds. `eq` sees only
    /// ids whose tag matches the hash's.
    #[inline]
    pub fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        Some(match self.locate(hash, eq)? {
            Place::Bucket(b, slot) => self.buckets[b].ids[slot],
            Place::Stash(i) => self.stash.as_deref()?[i].1,
        })
    }

    #[inline]
    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<&mut u32> {
        Some(match self.locate(hash, eq)? {
            Place::Bucket(b, slot) => &mut self.buckets[b].ids[slot],
            Place::Stash(i) => &mut self.stash.as_deref_mut()?[i].1,
        })
    }

    /// Removes the entry [`Table::find`] would find; frees nothing.
    pub fn remove(&mut self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let id = match self.locate(hash, eq)? {
            Place::Bucket(b, slot) => {
                self.buckets[b].tags[slot] = 0;
                self.buckets[b].ids[slot]
            }
            Place::Stash(i) => self.stash.as_deref_mut()?.swap_remove(i).1,
        };
        self.len -= 1;
        Some(id)
    }

    /// Adds an entry (its key known absent) if that needs no allocation;
    /// false, the table unchanged, when it would need one: the table is
    /// empty or at its max load, or no walk of [`MAX_KICKS`] moves made
    /// room. [`Table::insert`] then adds it.
    pub fn try_insert(&mut self, hash: u64, id: u32) -> bool {
        let n = self.buckets.len();
        if n == 0 || self.len() + 1 > max_len(n) || !self.place(hash, id) {
            return false;
        }
        self.len += 1;
        true
    }

    /// Adds an entry (its key known absent), growing the table when
    /// [`Table::try_insert`] would refuse it. `rehash` gives the hash of
    /// any id in the table (growth places every entry anew).
    pub fn insert(&mut self, hash: u64, id: u32, rehash: impl Fn(u32) -> u64) {
        if self.try_insert(hash, id) {
            return;
        }
        let (n, total) = (self.buckets.len(), self.len() + 1);
        if total <= max_len(n) && self.stash_ok(n, total) {
            // A walk found no room, in a table under half its max load or
            // with a stash: hashes so alike that more buckets would not
            // separate them.
            self.push_stash(tag_of(hash), id);
            self.len += 1;
            return;
        }
        self.grow(hash, id, &rehash);
    }

    /// Whether an entry that finds no room in a table of `n` buckets
    /// holding `total` entries goes to the stash: when the table is under
    /// half its max load (more room would not help), or already has a
    /// stash (colliding hashes were seen: growing further for them would
    /// only waste memory).
    fn stash_ok(&self, n: usize, total: usize) -> bool {
        n > 0 && (total * 2 <= max_len(n) || self.stash.is_some())
    }

    /// Rebuilds the table bigger with every entry and (`hash`, `id`); a
    /// size where some entry finds no place is skipped for the next one,
    /// unless [`Table::stash_ok`].
    #[cold]
    fn grow(&mut self, hash: u64, id: u32, rehash: &impl Fn(u32) -> u64) {
        let total = self.len() + 1;
        let mut n = grown(self.buckets.len());
        loop {
            let stash_ok = self.stash_ok(n, total);
            let mut table = Table::with_buckets(n);
            let placed = table.add(hash, id, stash_ok)
                && self.entries().all(|(tag, id)| {
                    let hash = rehash(id);
                    debug_assert_eq!(tag_of(hash), tag, "rehash gives the hash an entry came with");
                    table.add(hash, id, stash_ok)
                });
            if placed {
                *self = table;
                return;
            }
            n = grown(n);
        }
    }

    /// Places an entry, in the stash if no bucket has room and `stash_ok`.
    fn add(&mut self, hash: u64, id: u32, stash_ok: bool) -> bool {
        if !self.place(hash, id) {
            if !stash_ok {
                return false;
            }
            self.push_stash(tag_of(hash), id);
        }
        self.len += 1;
        true
    }

    fn push_stash(&mut self, tag: u8, id: u32) {
        self.stash.get_or_insert_with(Box::default).push((tag, id));
    }

    /// Puts an entry into a free slot of one of its buckets, moving others
    /// to their alternate bucket if needed (a random walk of at most
    /// [`MAX_KICKS`] moves, undone when it fails). Does not count it.
    fn place(&mut self, hash: u64, id: u32) -> bool {
        let n = self.buckets.len();
        let tag = tag_of(hash);
        let b1 = home_of(hash, n);
        if self.put_free(b1, tag, id) {
            return true;
        }
        let b2 = alt_of(b1, tag, n);
        if self.put_free(b2, tag, id) {
            return true;
        }
        self.kick(hash, tag, id, [b1, b2])
    }

    #[inline]
    fn put_free(&mut self, b: usize, tag: u8, id: u32) -> bool {
        let bucket = &mut self.buckets[b];
        let Some(slot) = bucket.free_slot() else {
            return false;
        };
        bucket.tags[slot] = tag;
        bucket.ids[slot] = id;
        true
    }

    #[cold]
    fn kick(&mut self, hash: u64, mut tag: u8, mut id: u32, start: [usize; 2]) -> bool {
        let n = self.buckets.len();
        let mut path = [(0usize, 0usize); MAX_KICKS];
        // Deterministic draws: the same insert walks the same way.
        let mut draws = (hash ^ (hash >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut b = start[(draws >> 63) as usize];
        for step in path.iter_mut() {
            draws ^= draws << 13;
            draws ^= draws >> 7;
            draws ^= draws << 17;
            let slot = (((draws >> 32) * SLOTS as u64) >> 32) as usize;
            let bucket = &mut self.buckets[b];
            std::mem::swap(&mut bucket.tags[slot], &mut tag);
            std::mem::swap(&mut bucket.ids[slot], &mut id);
            *step = (b, slot);
            b = alt_of(b, tag, n);
            if self.put_free(b, tag, id) {
                return true;
            }
        }
        // Swaps undone in reverse order bring back every entry and leave
        // the new one in hand.
        for &(b, slot) in path.iter().rev() {
            let bucket = &mut self.buckets[b];
            std::mem::swap(&mut bucket.tags[slot], &mut tag);
            std::mem::swap(&mut bucket.ids[slot], &mut id);
        }
        false
    }

    /// Every entry: (tag, id).
    fn entries(&self) -> impl Iterator<Item = (u8, u32)> + '_ {
        let stashed = self.stash.as_deref().into_iter().flatten().copied();
        self.buckets
            .iter()
            .flat_map(|b| b.tags.into_iter().zip(b.ids))
            .filter(|&(tag, _)| tag != 0)
            .chain(stashed)
    }

    /// Every id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries().map(|(_, id)| id)
    }

    /// Removes the entries for which `keep` is false; frees nothing.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let mut removed = 0;
        for bucket in self.buckets.iter_mut() {
            for slot in 0..SLOTS {
                if bucket.tags[slot] != 0 && !keep(bucket.ids[slot]) {
                    bucket.tags[slot] = 0;
                    removed += 1;
                }
            }
        }
        if let Some(stash) = self.stash.as_deref_mut() {
            stash.retain(|&(_, id)| {
                let kept = keep(id);
                removed += u32::from(!kept);
                kept
            });
        }
        self.len -= removed;
    }

    /// Removes every entry and frees the allocation.
    pub fn clear(&mut self) {
        *self = Table::new();
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
