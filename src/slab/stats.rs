//! What the allocator reports: live and dead bytes, and segments and
//! large records as two "classes" (the stats' `slab_classes`).

use super::{ClassStats, Slab};

impl Slab {
    /// Bytes of segments that compaction would give back: dead records and
    /// padding before each segment's end of appends. Walks the segment
    /// table (only a write refused under `noeviction` asks).
    pub fn dead_bytes(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.mem.is_some())
            .map(|s| (s.used - s.live_bytes) as usize)
            .sum()
    }

    /// Bytes of live records.
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// Segments and large records, as two "classes".
    pub fn class_stats(&self) -> Vec<ClassStats> {
        let segment_items: u64 = self.segments.iter().map(|s| u64::from(s.live)).sum();
        vec![
            ClassStats {
                chunk_bytes: self.segment_bytes,
                pages: self.live_segments,
                items: segment_items,
                free_chunks: self.free_bytes_in_pages() as u64,
                evictions: self.segment_evictions,
            },
            ClassStats {
                chunk_bytes: 0,
                pages: self.large_live as usize,
                items: self.large_live,
                free_chunks: 0,
                evictions: self.large_evictions,
            },
        ]
    }

    /// Bytes of segments not holding a live record (dead records, padding,
    /// unused tails).
    pub fn free_bytes_in_pages(&self) -> usize {
        let live_in_segments: usize = self.segments.iter().map(|s| s.live_bytes as usize).sum();
        (self.live_segments + self.spare.len()) * self.segment_bytes - live_in_segments
    }
}
