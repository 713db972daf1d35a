//! Size classes: the chunk sizes pages are carved into.
//!
//! Up to 256 bytes classes are 4 bytes apart (the small items that make up
//! most caches lose at most 3 bytes to rounding); above, each class is
//! about 6.25% larger than the previous (rounding waste under 6.25%), up to
//! [`MAX_CHUNK_BYTES`]. Larger records take the large path.

/// Bytes of one page.
pub const PAGE_BYTES: usize = 1 << 20;

/// Smallest chunk.
pub const MIN_CHUNK_BYTES: usize = 16;

/// Largest chunk; a page holds at least four.
pub const MAX_CHUNK_BYTES: usize = PAGE_BYTES / 4;

/// End of the 4-byte-step region.
const FINE_LIMIT: usize = 256;

/// The chunk size of every class, ascending.
#[derive(Debug, Clone)]
pub struct SizeClasses {
    sizes: Vec<u32>,
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

impl SizeClasses {
    pub fn new() -> Self {
        let mut sizes: Vec<u32> = (MIN_CHUNK_BYTES..=FINE_LIMIT)
            .step_by(4)
            .map(|s| s as u32)
            .collect();
        let mut size = FINE_LIMIT;
        while size < MAX_CHUNK_BYTES {
            size = ((size + size / 16).div_ceil(8) * 8).min(MAX_CHUNK_BYTES);
            sizes.push(size as u32);
        }
        SizeClasses { sizes }
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Chunk size of class `class`.
    #[inline]
    pub fn chunk_bytes(&self, class: usize) -> usize {
        self.sizes[class] as usize
    }

    /// The smallest class whose chunks hold `len` bytes; `None` above
    /// [`MAX_CHUNK_BYTES`].
    #[inline]
    pub fn class_for(&self, len: usize) -> Option<usize> {
        if len <= FINE_LIMIT {
            return Some(len.max(MIN_CHUNK_BYTES).div_ceil(4) - MIN_CHUNK_BYTES / 4);
        }
        if len > MAX_CHUNK_BYTES {
            return None;
        }
        Some(self.sizes.partition_point(|&s| (s as usize) < len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classes_ascend_and_cover_the_range() {
        let c = SizeClasses::new();
        assert_eq!(c.chunk_bytes(0), MIN_CHUNK_BYTES);
        assert_eq!(c.chunk_bytes(c.len() - 1), MAX_CHUNK_BYTES);
        for i in 1..c.len() {
            assert!(c.chunk_bytes(i) > c.chunk_bytes(i - 1));
        }
        assert_eq!(c.class_for(MAX_CHUNK_BYTES + 1), None);
        assert!(c.len() < 256);
    }

    proptest! {
        #[test]
        fn class_for_is_the_tightest_fit(len in 1usize..=MAX_CHUNK_BYTES) {
            let c = SizeClasses::new();
            let class = c.class_for(len).unwrap();
            prop_assert!(c.chunk_bytes(class) >= len);
            if class > 0 {
                prop_assert!(c.chunk_bytes(class - 1) < len || len < MIN_CHUNK_BYTES);
            }
            // Rounding waste: at most 3 bytes, or 6.25% above 256 bytes.
            let waste = c.chunk_bytes(class) - len;
            prop_assert!(waste <= 3 || (len > 256 && waste <= len / 16 + 8), "len {} waste {}", len, waste);
        }
    }
}
