//! Recent deletes of a cluster node's shard (docs/cluster.md, "Deletes").
//!
//! Applied records keep the newer version (`Shard::apply_replicated`), but
//! a deleted key has no version left to compare: a write of the key from a
//! slot's previous primary, in flight across a move and older than a
//! delete the new primary made, would bring the key back when it lands
//! after that delete. So a shard of a replicating node remembers, for
//! [`KEEP_US`], the version of each delete it made or applied (by key
//! hash), and an applied write no newer than it is dropped. A late write is
//! applied at all only when younger than the failure timeout
//! (`crate::cluster::replicate`), which this outlasts.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// How long a delete is remembered (µs): twice the age past which a late
/// write of a moved slot is dropped anyway.
pub const KEEP_US: u64 = 2_000_000;

/// Deletes remembered at most (the oldest are forgotten first).
pub const MAX: usize = 1 << 16;

/// Keys are already 64-bit hashes.
#[derive(Default)]
struct Unhashed(u64);

impl Hasher for Unhashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Key hash → newest version of its deletes, for [`KEEP_US`] after the
/// last one was recorded.
#[derive(Default)]
pub struct Tombstones {
    /// Hash → (version, when its last delete was recorded).
    version: HashMap<u64, (u64, u64), BuildHasherDefault<Unhashed>>,
    /// (hash, when recorded), oldest first.
    order: VecDeque<(u64, u64)>,
}

impl Tombstones {
    /// The key of `hash` was deleted at `version` (recorded at `now_us`).
    pub fn record(&mut self, hash: u64, version: u64, now_us: u64) {
        self.forget_before(now_us);
        let v = self.version.entry(hash).or_insert((version, now_us));
        *v = (v.0.max(version), now_us);
        self.order.push_back((hash, now_us));
        while self.order.len() > MAX {
            self.pop_oldest();
        }
    }

    /// Whether a write of `hash` at `version` is older than a delete
    /// remembered (so it must not bring the key back).
    #[inline]
    pub fn hides(&self, hash: u64, version: u64) -> bool {
        !self.version.is_empty() && self.version.get(&hash).is_some_and(|&(d, _)| d >= version)
    }

    /// Forgets the deletes recorded before `now_us - KEEP_US`.
    pub fn forget_before(&mut self, now_us: u64) {
        while self
            .order
            .front()
            .is_some_and(|&(_, at)| now_us.saturating_sub(at) > KEEP_US)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((hash, at)) = self.order.pop_front() {
            // Only its last record forgets a key.
            if self.version.get(&hash).is_some_and(|&(_, last)| last == at) {
                self.version.remove(&hash);
            }
        }
    }

    /// Deletes remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.version.len()
    }

    /// Whether none is remembered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.version.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_hides_older_writes_for_a_while() {
        let mut t = Tombstones::default();
        assert!(!t.hides(1, 5));
        t.record(1, 100, 1_000);
        assert!(t.hides(1, 99) && t.hides(1, 100), "older writes hidden");
        assert!(!t.hides(1, 101), "a newer write is not");
        assert!(!t.hides(2, 50), "another key is not");
        // A later delete of the same key keeps the newer version.
        t.record(1, 90, 1_500);
        assert!(t.hides(1, 100));
        // Forgotten after KEEP_US from its recording.
        t.forget_before(1_000 + KEEP_US + 1);
        assert!(t.hides(1, 100), "the second record is younger");
        t.forget_before(1_500 + KEEP_US + 1);
        assert!(t.is_empty() && !t.hides(1, 100));
    }

    #[test]
    fn it_keeps_its_bound() {
        let mut t = Tombstones::default();
        for h in 0..(MAX as u64 + 10) {
            t.record(h, 7, 1);
        }
        assert_eq!(t.len(), MAX);
        assert!(!t.hides(0, 7), "the oldest went first");
        assert!(t.hides(MAX as u64 + 9, 7));
    }
}
