//! The stored form of an item: one record holding a 12-byte header, the key
//! and the value, in a slab chunk (see [`crate::slab`]).
//!
//! Header, little-endian:
//! - bytes 0..8: `version_us` in bits 0..52 (microsecond hybrid clock of the
//!   write, also its creation time), key length in bits 52..60, the CLOCK
//!   accessed bit 60, the LONG flag bit 61, padding length in bits 62..64;
//! - bytes 8..12: TTL in seconds in bits 0..30 (0 = never expires; TTLs
//!   are capped at 2^30 - 1 s, about 34 years), bits 30 and 31 reserved for
//!   value codecs (compression, encryption).
//!
//! The value length is not stored when the chunk is at most 3 bytes longer
//! than the record (the padding length says how much): the small items
//! that dominate a cache then cost 12 bytes of header. Otherwise (LONG) a
//! 4-byte value length follows the header.
//!
//! The index stores only an [`ItemId`]; the key lives in the record.

use crate::protocol::binary::Meta;
pub use crate::slab::ItemId;
use crate::slab::ACCESSED_BIT;

/// Bytes of the short header.
pub const HEADER_BYTES: usize = 12;

const VERSION_BITS: u32 = 52;
const VERSION_MASK: u64 = (1 << VERSION_BITS) - 1;
const LONG_BIT: u64 = 1 << 61;
const PAD_SHIFT: u32 = 62;

/// Largest TTL stored, in seconds.
pub const MAX_TTL_S: u32 = (1 << 30) - 1;
const TTL_MASK: u32 = MAX_TTL_S;

/// Bytes a record needs at least (its chunk may be larger).
#[inline]
pub const fn record_len(key_len: usize, value_len: usize) -> usize {
    HEADER_BYTES + key_len + value_len
}

/// Writes an item into `chunk` (at least [`record_len`] bytes). The key is
/// 1 to 255 bytes.
#[inline]
pub fn write_record(chunk: &mut [u8], version_us: u64, ttl_s: u32, key: &[u8], value: &[u8]) {
    let needed = record_len(key.len(), value.len());
    debug_assert!(!key.is_empty() && key.len() <= 255 && chunk.len() >= needed);
    let pad = chunk.len() - needed;
    let mut word0 = (version_us & VERSION_MASK) | ((key.len() as u64) << VERSION_BITS);
    let key_at = if pad <= 3 {
        word0 |= (pad as u64) << PAD_SHIFT;
        HEADER_BYTES
    } else {
        word0 |= LONG_BIT;
        chunk[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
        HEADER_BYTES + 4
    };
    chunk[0..8].copy_from_slice(&word0.to_le_bytes());
    chunk[8..12].copy_from_slice(&(ttl_s.min(MAX_TTL_S)).to_le_bytes());
    chunk[key_at..key_at + key.len()].copy_from_slice(key);
    chunk[key_at + key.len()..key_at + key.len() + value.len()].copy_from_slice(value);
}

/// A read-only view of a record.
#[derive(Clone, Copy)]
pub struct ItemView<'a> {
    chunk: &'a [u8],
}

impl<'a> ItemView<'a> {
    #[inline]
    pub fn new(chunk: &'a [u8]) -> Self {
        ItemView { chunk }
    }

    #[inline]
    fn word0(&self) -> u64 {
        u64::from_le_bytes(self.chunk[0..8].try_into().expect("header"))
    }

    #[inline]
    pub fn version_us(&self) -> u64 {
        self.word0() & VERSION_MASK
    }

    #[inline]
    pub fn key_len(&self) -> usize {
        ((self.word0() >> VERSION_BITS) & 0xff) as usize
    }

    #[inline]
    pub fn was_accessed(&self) -> bool {
        self.word0() & ACCESSED_BIT != 0
    }

    #[inline]
    pub fn ttl_s(&self) -> u32 {
        u32::from_le_bytes(self.chunk[8..12].try_into().expect("header")) & TTL_MASK
    }

    #[inline]
    fn key_at(&self) -> usize {
        if self.word0() & LONG_BIT != 0 {
            HEADER_BYTES + 4
        } else {
            HEADER_BYTES
        }
    }

    #[inline]
    pub fn value_len(&self) -> usize {
        let word0 = self.word0();
        if word0 & LONG_BIT != 0 {
            u32::from_le_bytes(self.chunk[12..16].try_into().expect("header")) as usize
        } else {
            self.chunk.len() - HEADER_BYTES - self.key_len() - (word0 >> PAD_SHIFT) as usize
        }
    }

    #[inline]
    pub fn key(&self) -> &'a [u8] {
        let at = self.key_at();
        &self.chunk[at..at + self.key_len()]
    }

    #[inline]
    pub fn value(&self) -> &'a [u8] {
        let start = self.key_at() + self.key_len();
        &self.chunk[start..start + self.value_len()]
    }

    /// Microsecond at which the item expires; `None` = never.
    #[inline]
    pub fn expires_at_us(&self) -> Option<u64> {
        match self.ttl_s() {
            0 => None,
            ttl => Some(self.version_us().saturating_add(u64::from(ttl) * 1_000_000)),
        }
    }

    #[inline]
    pub fn is_expired(&self, now_us: u64) -> bool {
        self.expires_at_us().is_some_and(|at| now_us >= at)
    }

    /// Wire metadata.
    #[inline]
    pub fn meta(&self) -> Meta {
        let version = self.version_us();
        Meta {
            created_at_ms: version / 1000,
            expires_at_ms: self.expires_at_us().map_or(0, |us| us / 1000),
            version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn record_round_trips() {
        let mut buf = vec![0u8; record_len(3, 5)];
        write_record(&mut buf, 1_700_000_000_123_456, 60, b"key", b"value");
        let v = ItemView::new(&buf);
        assert_eq!(v.key(), b"key");
        assert_eq!(v.value(), b"value");
        assert_eq!(v.ttl_s(), 60);
        assert_eq!(v.version_us(), 1_700_000_000_123_456);
        assert_eq!(v.meta().created_at_ms, 1_700_000_000_123);
        assert_eq!(v.meta().expires_at_ms, 1_700_000_060_123);
        assert!(!v.is_expired(1_700_000_060_123_455));
        assert!(v.is_expired(1_700_000_060_123_456));
        assert!(!v.was_accessed());
    }

    #[test]
    fn huge_ttls_are_capped() {
        let mut buf = vec![0u8; record_len(1, 1)];
        write_record(&mut buf, 5, u32::MAX, b"k", b"v");
        assert_eq!(ItemView::new(&buf).ttl_s(), MAX_TTL_S);
    }

    proptest! {
        #[test]
        fn any_item_in_any_larger_chunk(key in proptest::collection::vec(any::<u8>(), 1..=255),
                                        value in proptest::collection::vec(any::<u8>(), 0..600),
                                        extra in 0usize..80, ttl in 0u32..MAX_TTL_S,
                                        version in 0u64..(1 << 52)) {
            let mut chunk = vec![0xAAu8; record_len(key.len(), value.len()) + extra];
            write_record(&mut chunk, version, ttl, &key, &value);
            let v = ItemView::new(&chunk);
            prop_assert_eq!(v.key(), &key[..]);
            prop_assert_eq!(v.value(), &value[..]);
            prop_assert_eq!(v.ttl_s(), ttl);
            prop_assert_eq!(v.version_us(), version);
            prop_assert!(u64::from_le_bytes(chunk[..8].try_into().unwrap()) != 0, "a live record is never all-zero");
        }
    }
}
