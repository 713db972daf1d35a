//! Eviction: the oldest region goes, its read records moved on.

use super::record::{is_dead, reencode, reencoded_len, spend_chance, total_len};
use super::{ItemId, Region, Slab};

impl Slab {
    /// The oldest region, the next to evict.
    pub fn oldest(&mut self) -> Option<Region> {
        while let Some(&(region, generation)) = self.queue.front() {
            if self.is_current(region, generation) {
                return Some(region);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Sends the oldest region to the back of the queue (the region a
    /// write is landing in, which must not be evicted under it: the next
    /// oldest goes instead).
    pub fn requeue_oldest(&mut self) {
        if self.oldest().is_some() {
            if let Some(front) = self.queue.pop_front() {
                self.queue.push_back(front);
            }
        }
    }

    /// The region holding `id`.
    pub fn region_of(&self, id: ItemId) -> Region {
        if id.is_large() {
            Region::Large(id.large_index() as u32)
        } else {
            Region::Segment(self.locate(id).0 as u32)
        }
    }

    /// The live records of a region, in the order they lie.
    pub fn live_records(&self, region: Region) -> Vec<ItemId> {
        match region {
            Region::Large(i) => vec![ItemId::large(i)],
            Region::Segment(s) => {
                let seg = &self.segments[s as usize];
                let mem = seg.mem.as_deref().expect("live segment");
                let mut ids = Vec::with_capacity(seg.live as usize);
                let mut offset = 0;
                while offset < seg.used as usize {
                    let record = &mem[offset..];
                    if !is_dead(record) {
                        ids.push(self.chunk_id(s, offset));
                    }
                    offset += self.aligned(total_len(record));
                }
                ids
            }
        }
    }

    /// Retires the oldest region (the one [`Slab::oldest`] returned): the
    /// records of `keep` (a subset of its live records, in order) get a
    /// second chance with their CLOCK bit cleared, every other record of the
    /// region is dropped (the caller has unindexed them). Returns the moved
    /// records as (old, new) pairs, for the index.
    pub fn retire(&mut self, region: Region, keep: &[ItemId]) -> Vec<(ItemId, ItemId)> {
        let (front, generation) = self.queue.pop_front().expect("retire the oldest region");
        debug_assert_eq!(front, region);
        match region {
            Region::Large(i) => {
                if keep.is_empty() {
                    self.release_large(i as usize);
                } else {
                    spend_chance(self.large[i as usize].record.as_deref_mut().expect("live"));
                    self.queue.push_back((region, generation));
                }
                Vec::new()
            }
            Region::Segment(s) => self.retire_segment(s, generation, keep),
        }
    }

    fn retire_segment(&mut self, s: u32, generation: u32, keep: &[ItemId]) -> Vec<(ItemId, ItemId)> {
        let shift = self.align_shift;
        let aligned = move |len: usize| (len + (1 << shift) - 1) >> shift << shift;
        // The dropped records' bytes stop being live.
        let mem = self.segments[s as usize].mem.as_deref().expect("live segment");
        let kept: Vec<(usize, usize)> = keep
            .iter()
            .map(|&id| {
                let offset = self.locate(id).1;
                (offset, total_len(&mem[offset..]))
            })
            .collect();
        let kept_live: usize = kept.iter().map(|&(_, len)| len).sum();
        let kept_bytes: usize = kept.iter().map(|&(_, len)| aligned(len)).sum();
        let seg = &mut self.segments[s as usize];
        self.live_bytes -= seg.live_bytes as usize - kept_live;
        seg.live_bytes = kept_live as u32;
        if keep.is_empty() {
            self.release_segment(s);
            return Vec::new();
        }
        if kept_bytes == self.segments[s as usize].used as usize {
            // Nothing to reclaim: the segment goes to the tail as it is.
            let mem = self.segments[s as usize]
                .mem
                .as_deref_mut()
                .expect("live segment");
            for &(offset, _) in &kept {
                spend_chance(&mut mem[offset..]);
            }
            self.queue.push_back((Region::Segment(s), generation));
            return Vec::new();
        }
        self.compactions += 1;
        // Versions are stored relative to a segment's base: moved records
        // are re-encoded against the open segment's, which may change their
        // length.
        let from = self.segments[s as usize].base;
        let mem = self.segments[s as usize].mem.as_deref().expect("live segment");
        let target = self.open.filter(|&o| o != s).and_then(|o| {
            let to = self.segments[o as usize].base;
            let moved: usize = kept
                .iter()
                .map(|&(offset, _)| aligned(reencoded_len(&mem[offset..], from, to)))
                .sum();
            (self.segments[o as usize].used as usize + moved <= self.segment_bytes).then_some(o)
        });
        let mut moves = Vec::with_capacity(keep.len());
        if let Some(o) = target {
            // Room in the open segment: move the survivors there.
            let mem = self.segments[s as usize].mem.take().expect("live segment");
            let to_base = self.segments[o as usize].base;
            let mut at = self.segments[o as usize].used as usize;
            let to = self.segments[o as usize]
                .mem
                .as_deref_mut()
                .expect("open segment");
            let mut moved_live = 0;
            for &(offset, _) in &kept {
                let len = reencode(&mem[offset..], from, to_base, &mut to[at..]);
                spend_chance(&mut to[at..]);
                moves.push(at);
                moved_live += len;
                at += aligned(len);
            }
            let open = &mut self.segments[o as usize];
            open.used = at as u32;
            open.live += keep.len() as u32;
            open.live_bytes += moved_live as u32;
            self.live_bytes = self.live_bytes + moved_live - kept_live;
            // The survivors stay live, in the open segment.
            self.segments[s as usize].mem = Some(mem);
            self.segments[s as usize].live_bytes = 0;
            self.release_segment(s);
            return keep
                .iter()
                .zip(moves)
                .map(|(&old, at)| (old, self.chunk_id(o, at)))
                .collect();
        }
        // Compact in place and reopen the segment at the tail of the queue.
        let mut at = 0;
        let mem = self.segments[s as usize]
            .mem
            .as_deref_mut()
            .expect("live segment");
        for &(offset, len) in &kept {
            debug_assert!(offset >= at, "survivors in order");
            if offset != at {
                mem.copy_within(offset..offset + len, at);
            }
            spend_chance(&mut mem[at..]);
            moves.push(at);
            at += aligned(len);
        }
        let seg = &mut self.segments[s as usize];
        (seg.used, seg.live) = (at as u32, keep.len() as u32);
        if self.open != Some(s) {
            self.close_open();
            self.open = Some(s);
        }
        self.queue.push_back((Region::Segment(s), generation));
        keep.iter()
            .zip(moves)
            .map(|(&old, at)| (old, self.chunk_id(s, at)))
            .collect()
    }

    /// Counts an eviction of `id` (called by the store as it evicts).
    pub fn note_eviction(&mut self, id: ItemId) {
        if id.is_large() {
            self.large_evictions += 1;
        } else {
            self.segment_evictions += 1;
        }
    }
}
