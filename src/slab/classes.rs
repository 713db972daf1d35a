//! Size classes: the chunk sizes pages are carved into.
//!
//! Up to 256 bytes classes are 4 bytes apart (the small items that make up
//! most caches lose at most 3 bytes to rounding); above, each class is
//! about 6.25% larger than the previous (rounding waste under 6.25%), up to
//! a quarter of the page size. Larger records take the large path.

/// Largest page: a shard with at least 1 GiB uses 1 MiB pages.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// Smallest page.
pub const MIN_PAGE_BYTES: usize = 16 << 10;

/// Smallest chunk.
pub const MIN_CHUNK_BYTES: usize = 16;

/// End of the 4-byte-step region.
const FINE_LIMIT: usize = 256;

/// The chunk size of every class, ascending.
#[derive(Debug, Clone)]
pub struct SizeClasses {
    sizes: Vec<u32>,
    max_chunk: usize,
}

impl SizeClasses {
    /// Classes for pages of `page_bytes` (a power of two, at least
    /// [`MIN_PAGE_BYTES`]): the largest chunk is a quarter page.
    pub fn new(page_bytes: usize) -> Self {
        let max_chunk = page_bytes / 4;
        let mut sizes: Vec<u32> = (MIN_CHUNK_BYTES..=FINE_LIMIT)
            .step_by(4)
            .map(|s| s as u32)
            .collect();
        let mut size = FINE_LIMIT;
        while size < max_chunk {
            size = ((size + size / 16).div_ceil(8) * 8).min(max_chunk);
            sizes.push(size as u32);
        }
        SizeClasses { sizes, max_chunk }
    }

    /// Largest chunk; bigger records take the large path.
    pub fn max_chunk_bytes(&self) -> usize {
        self.max_chunk
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

    /// The smallest class whose chunks hold `len` bytes; `None` above the
    /// largest chunk.
    #[inline]
    pub fn class_for(&self, len: usize) -> Option<usize> {
        if len <= FINE_LIMIT {
            return Some(len.max(MIN_CHUNK_BYTES).div_ceil(4) - MIN_CHUNK_BYTES / 4);
        }
        if len > self.max_chunk {
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
        for page in [MIN_PAGE_BYTES, MAX_PAGE_BYTES] {
            let c = SizeClasses::new(page);
            assert_eq!(c.chunk_bytes(0), MIN_CHUNK_BYTES);
            assert_eq!(c.chunk_bytes(c.len() - 1), page / 4);
            for i in 1..c.len() {
                assert!(c.chunk_bytes(i) > c.chunk_bytes(i - 1));
            }
            assert_eq!(c.class_for(page / 4 + 1), None);
            assert!(c.len() < 256);
        }
    }

    proptest! {
        #[test]
        fn class_for_is_the_tightest_fit(len in 1usize..=MAX_PAGE_BYTES / 4) {
            let c = SizeClasses::new(MAX_PAGE_BYTES);
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
