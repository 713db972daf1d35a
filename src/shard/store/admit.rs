//! Admission of large values written after a miss (docs/memory.md,
//! "Admission").
//!
//! Under a hit-ratio metric the worst use of memory is a large value that
//! is rarely read: one 50 KiB value takes the room of five hundred 100-byte
//! ones. Read-through clients write a value right after missing it, so a
//! write that follows a miss of its key says "this was asked for", not how
//! often. Such a write of a new key whose record is larger than
//! [`GATE_BYTES`] is stored with probability `2 × GATE_BYTES / record
//! bytes` (a size-aware admission, as AdaptSize does), while the cache is
//! *hot*: eviction keeps finding records read since it last passed them
//! (their share among the records it examined, averaged, is above
//! [`HOT_SHARE`]). A popular large value is stored within a few misses; a
//! rarely read one mostly is not, and the small values it would have
//! displaced stay.
//!
//! Everything else is stored at once: a write with no recent miss of its
//! key (a service storing what it just made, as the image service does), a
//! write replacing a held key, any write while the cache is cold (a size
//! switch: small values written once, then large ones), replicas' writes,
//! and every write of a cluster node with replicas (primary and replica
//! must hold the same items, and a strong write must be stored).
//!
//! A declined write is answered as a write that was evicted at once: OK,
//! with its metadata, and counted (`admissions_declined`).

use super::*;

/// Records above this many bytes written after a miss may be declined.
pub const GATE_BYTES: usize = 4096;

/// Eviction's share of read records (in 1/1024) above which the cache is
/// hot.
pub(super) const HOT_SHARE: u32 = 256;

/// Weight of the newest evicted region in the average (1/16).
const SHARE_WEIGHT_SHIFT: u32 = 4;

/// Keys that missed lately: one bit per hashed key, cleared after a
/// quarter of its bits were set. Admission matters only once the cache is
/// full, so the filter takes no memory until the store first has to evict
/// ([`MissFilter::arm`]); misses before that are not recorded.
pub(super) struct MissFilter {
    bits: Box<[u64]>,
    /// Bytes the filter takes once armed.
    size: usize,
    marked: usize,
}

impl MissFilter {
    /// A filter for a shard of `budget` bytes: a 128th of it, a power of
    /// two from 4 KiB to 512 KiB (counted in the index's memory once armed).
    pub(super) fn for_budget(budget: usize) -> MissFilter {
        let bytes = (budget / 128).clamp(4 << 10, 512 << 10);
        MissFilter {
            bits: Box::new([]),
            size: 1usize << (usize::BITS - 1 - bytes.leading_zeros()),
            marked: 0,
        }
    }

    /// Bytes it takes now.
    pub(super) fn bytes(&self) -> usize {
        self.bits.len() * 8
    }

    pub(super) fn is_armed(&self) -> bool {
        !self.bits.is_empty()
    }

    /// Allocates the filter; returns the bytes it now takes.
    pub(super) fn arm(&mut self) -> usize {
        if !self.is_armed() {
            self.bits = vec![0u64; self.size / 8].into_boxed_slice();
        }
        self.bytes()
    }

    #[inline]
    fn bit(&self, hash: u64) -> (usize, u64) {
        let bit = (hash.rotate_left(17) as usize) & (self.bits.len() * 64 - 1);
        (bit / 64, 1u64 << (bit % 64))
    }

    #[inline]
    pub(super) fn mark(&mut self, hash: u64) {
        if !self.is_armed() {
            return;
        }
        let (word, mask) = self.bit(hash);
        if self.bits[word] & mask == 0 {
            self.bits[word] |= mask;
            self.marked += 1;
            if self.marked > self.bits.len() * 16 {
                self.clear();
            }
        }
    }

    fn missed(&self, hash: u64) -> bool {
        if !self.is_armed() {
            return false;
        }
        let (word, mask) = self.bit(hash);
        self.bits[word] & mask != 0
    }

    pub(super) fn clear(&mut self) {
        self.bits.fill(0);
        self.marked = 0;
    }
}

impl Store {
    /// Arms the miss filter (the first time a write has to evict), keeping
    /// the whole within the budget.
    pub(super) fn arm_admission(&mut self, now_us: u64) {
        if self.missed.is_armed() {
            return;
        }
        self.index_bytes += self.missed.arm();
        self.items.set_index_bytes(self.index_bytes);
        self.release_over_budget(None, now_us);
    }

    /// Whether a client's write of a `len`-byte record of `key` is stored.
    pub(super) fn admits(&mut self, hash: u64, key: &[u8], len: usize) -> bool {
        if len <= GATE_BYTES
            || !self.admission
            || self.config.eviction != EvictionPolicy::Lru
            || self.read_share < HOT_SHARE
            || !self.missed.missed(hash)
            || self.peek(hash, key).is_some()
        {
            return true;
        }
        // xorshift64*: a draw per gated write.
        let mut x = self.draws;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.draws = x;
        let draw = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize;
        draw % len < 2 * GATE_BYTES
    }

    /// Eviction examined `examined` live records of a region and kept
    /// `read` of them for their reads.
    pub(super) fn note_eviction_pass(&mut self, examined: usize, read: usize) {
        if examined == 0 {
            return;
        }
        let share = (read * 1024 / examined) as u32;
        self.read_share =
            self.read_share - (self.read_share >> SHARE_WEIGHT_SHIFT) + (share >> SHARE_WEIGHT_SHIFT);
    }

    /// Turns admission off (see the module's note on clusters).
    pub fn set_admission(&mut self, on: bool) {
        self.admission = on;
    }

    /// The metadata of a write declined at admission (as if stored, then
    /// evicted at once).
    pub(super) fn declined_meta(&mut self, ttl_s: u32, now_us: u64) -> Meta {
        self.stats.admissions_declined += 1;
        let version = self.clock.tick(now_us);
        Meta {
            created_at_ms: version / 1000,
            expires_at_ms: if ttl_s == 0 {
                0
            } else {
                (version + u64::from(ttl_s) * 1_000_000) / 1000
            },
            version,
        }
    }
}
