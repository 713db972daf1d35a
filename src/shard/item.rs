//! The stored form of an item: one record holding a header, the key and
//! the value, in a segment or a large record (see [`crate::slab`]).
//!
//! Header, little-endian ([`crate::slab::record`] owns the framing):
//! - bytes 0..8: `version_us` in bits 0..52 (microsecond hybrid clock of the
//!   write, also its creation time), then the allocator's bits: key length,
//!   CLOCK accessed bit, dead bit, wide-length bit;
//! - bytes 8..12: TTL in seconds in bits 0..30 (0 = never expires; TTLs
//!   are capped at 2^30 - 1 s, about 34 years), bits 30 and 31 reserved for
//!   value codecs (compression, encryption);
//! - bytes 12..14: the value length (12..16 for values of 64 KiB and more).
//!
//! Records lie back to back in a segment, so a record costs its 14-byte
//! header and nothing for rounding.
//!
//! The index stores only an [`ItemId`]; the key lives in the record.

use crate::protocol::binary::Meta;
use crate::slab::record;
pub use crate::slab::ItemId;

const VERSION_MASK: u64 = record::ITEM_BITS_MASK;

/// Largest TTL stored, in seconds.
pub const MAX_TTL_S: u32 = (1 << 30) - 1;
const TTL_MASK: u32 = MAX_TTL_S;

/// The two codec bits (bit 30 compressed, bit 31 encrypted) of the TTL
/// word, as a number 0..=3; their meaning belongs to [`crate::codec`].
const CODEC_SHIFT: u32 = 30;

/// Sets the codec bits of a record written by [`write_record`].
#[inline]
pub fn set_codec_flags(chunk: &mut [u8], flags: u32) {
    let word = u32::from_le_bytes(chunk[8..12].try_into().expect("header")) & TTL_MASK;
    chunk[8..12].copy_from_slice(&(word | (flags << CODEC_SHIFT)).to_le_bytes());
}

/// Bytes of the record of an item.
#[inline]
pub const fn record_len(key_len: usize, value_len: usize) -> usize {
    record::record_len(key_len, value_len)
}

/// Writes an item into `chunk` (at least [`record_len`] bytes). The key is
/// 1 to 255 bytes.
#[inline]
pub fn write_record(chunk: &mut [u8], version_us: u64, ttl_s: u32, key: &[u8], value: &[u8]) {
    debug_assert!(!key.is_empty() && key.len() <= 255 && chunk.len() >= record_len(key.len(), value.len()));
    let key_at = record::write_frame(chunk, version_us & VERSION_MASK, key.len(), value.len());
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
        record::key_len(self.word0())
    }

    #[inline]
    pub fn was_accessed(&self) -> bool {
        record::reads(self.word0()) > 0
    }

    #[inline]
    pub fn ttl_s(&self) -> u32 {
        u32::from_le_bytes(self.chunk[8..12].try_into().expect("header")) & TTL_MASK
    }

    /// The codec bits (see [`set_codec_flags`]); 0 = the value is stored
    /// as the client sent it.
    #[inline]
    pub fn codec_flags(&self) -> u32 {
        u32::from_le_bytes(self.chunk[8..12].try_into().expect("header")) >> CODEC_SHIFT
    }

    /// The whole record as it lies in the slab (tests of encryption at rest).
    pub fn record_bytes(&self) -> &'a [u8] {
        &self.chunk[..record::total_len(self.chunk)]
    }

    #[inline]
    fn key_at(&self) -> usize {
        record::key_at(self.word0())
    }

    #[inline]
    pub fn value_len(&self) -> usize {
        record::value_len(self.chunk)
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
        assert_eq!(v.codec_flags(), 0);
        set_codec_flags(&mut buf, 3);
        let v = ItemView::new(&buf);
        assert_eq!((v.codec_flags(), v.ttl_s(), v.value()), (3, 60, &b"value"[..]));
    }

    #[test]
    fn values_of_64_kib_and_more_round_trip() {
        let value = vec![9u8; 70_000];
        let mut buf = vec![0u8; record_len(2, value.len())];
        write_record(&mut buf, 77, 5, b"kk", &value);
        let v = ItemView::new(&buf);
        assert_eq!(
            (v.key(), v.value().len(), v.ttl_s(), v.version_us()),
            (&b"kk"[..], 70_000, 5, 77)
        );
        assert_eq!(v.record_bytes().len(), 16 + 2 + 70_000);
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
            prop_assert_eq!(v.record_bytes().len(), record_len(key.len(), value.len()));
        }
    }
}
