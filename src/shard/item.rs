//! The stored form of an item: one record holding a header, the key and
//! the value, in a segment or a large record (see [`crate::slab`]).
//!
//! [`crate::slab::record`] owns the header: the key and value lengths, the
//! version (microsecond hybrid clock of the write, also its creation time,
//! stored relative to its region's base), the TTL in seconds (0 = never
//! expires; capped at 2^30 - 1 s, about 34 years), the two value-codec bits
//! (compression, encryption), and the allocator's bits (read counter, dead
//! bit). A 20-byte key with a 100-byte value and a TTL costs an 8-byte
//! header, and nothing for rounding: records lie back to back.
//!
//! The index stores only an [`ItemId`]; the key lives in the record.

use crate::protocol::binary::Meta;
use crate::slab::record::{self, Header, Parsed};
pub use crate::slab::ItemId;

/// Largest TTL stored, in seconds.
pub const MAX_TTL_S: u32 = (1 << 30) - 1;

/// What a write stores besides key and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub version_us: u64,
    pub ttl_s: u32,
    /// The codec bits (0..=3); their meaning belongs to [`crate::codec`].
    pub codec: u32,
}

impl Stamp {
    /// The wire metadata of the item written with this stamp (what
    /// [`ItemView::meta`] reads back).
    #[inline]
    pub fn meta(&self) -> Meta {
        let ttl = self.ttl_s.min(MAX_TTL_S);
        Meta {
            created_at_ms: self.version_us / 1000,
            expires_at_ms: if ttl == 0 {
                0
            } else {
                self.version_us.saturating_add(u64::from(ttl) * 1_000_000) / 1000
            },
            version: self.version_us,
        }
    }
}

#[inline]
fn header(stamp: Stamp, key_len: usize, value_len: usize) -> Header {
    Header {
        key_len,
        value_len,
        version: stamp.version_us,
        ttl_s: stamp.ttl_s.min(MAX_TTL_S),
        codec: stamp.codec,
    }
}

/// The header of an item written with `stamp`, worked out once for
/// sizing its record ([`record::Encoding::record_len`]) and writing it
/// ([`write_encoded`]).
#[inline]
pub fn encoding(stamp: Stamp, key_len: usize, value_len: usize) -> record::Encoding {
    record::Encoding::new(&header(stamp, key_len, value_len))
}

/// Bytes of the record of an item in a region based at `base`.
#[cfg(test)]
pub fn record_len(stamp: Stamp, key_len: usize, value_len: usize, base: u64) -> usize {
    encoding(stamp, key_len, value_len).record_len(base)
}

/// Writes an item into `chunk` (at least [`record_len`] bytes) of a region
/// based at `base`. The key is 1 to 255 bytes.
#[cfg(test)]
pub fn write_record(chunk: &mut [u8], stamp: Stamp, base: u64, key: &[u8], value: &[u8]) {
    write_encoded(chunk, &encoding(stamp, key.len(), value.len()), base, key, value);
}

/// As [`write_record`], with the header worked out by [`encoding`].
#[inline]
pub fn write_encoded(chunk: &mut [u8], e: &record::Encoding, base: u64, key: &[u8], value: &[u8]) {
    debug_assert!(!key.is_empty() && key.len() <= 255 && chunk.len() >= e.record_len(base));
    let value_at = e.write(chunk, base);
    chunk[record::KEY_AT..record::KEY_AT + key.len()].copy_from_slice(key);
    chunk[value_at..value_at + value.len()].copy_from_slice(value);
}

/// The key of a record (no need to know its region's base).
#[inline]
pub fn key_of(chunk: &[u8]) -> &[u8] {
    record::key(chunk)
}

/// A read-only view of a record, its header read once.
#[derive(Clone, Copy)]
pub struct ItemView<'a> {
    chunk: &'a [u8],
    parsed: Parsed,
}

impl<'a> ItemView<'a> {
    /// `base`: the base of the record's region ([`crate::slab::Slab::base_of`]).
    #[inline]
    pub fn new(chunk: &'a [u8], base: u64) -> Self {
        ItemView {
            chunk,
            parsed: record::parse(chunk, base),
        }
    }

    /// A view of `chunk` whose header an earlier view of the same record
    /// read ([`ItemView::parsed`]): the read counter may have changed since,
    /// nothing else.
    #[inline]
    pub fn with_parsed(chunk: &'a [u8], parsed: Parsed) -> Self {
        ItemView { chunk, parsed }
    }

    /// The header as read, to build a later view without reading it again.
    #[inline]
    pub fn parsed(&self) -> Parsed {
        self.parsed
    }

    #[inline]
    pub fn version_us(&self) -> u64 {
        self.parsed.header.version
    }

    #[inline]
    pub fn key_len(&self) -> usize {
        self.parsed.header.key_len
    }

    #[inline]
    pub fn was_accessed(&self) -> bool {
        record::reads(self.chunk) > 0
    }

    #[inline]
    pub fn ttl_s(&self) -> u32 {
        self.parsed.header.ttl_s
    }

    /// The codec bits; 0 = the value is stored as the client sent it.
    #[inline]
    pub fn codec_flags(&self) -> u32 {
        self.parsed.header.codec
    }

    /// The whole record as it lies in the slab (tests of encryption at rest).
    pub fn record_bytes(&self) -> &'a [u8] {
        &self.chunk[..self.value_end()]
    }

    #[inline]
    fn value_end(&self) -> usize {
        self.parsed.value_at + self.parsed.header.value_len
    }

    #[inline]
    pub fn value_len(&self) -> usize {
        self.parsed.header.value_len
    }

    #[inline]
    pub fn key(&self) -> &'a [u8] {
        &self.chunk[record::KEY_AT..record::KEY_AT + self.key_len()]
    }

    #[inline]
    pub fn value(&self) -> &'a [u8] {
        let start = self.parsed.value_at;
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

    fn stamp(version_us: u64, ttl_s: u32) -> Stamp {
        Stamp {
            version_us,
            ttl_s,
            codec: 0,
        }
    }

    #[test]
    fn record_round_trips() {
        let base = 1_700_000_000_000_000;
        let st = stamp(1_700_000_000_123_456, 60);
        let mut buf = vec![0u8; record_len(st, 3, 5, base)];
        write_record(&mut buf, st, base, b"key", b"value");
        let v = ItemView::new(&buf, base);
        assert_eq!(v.key(), b"key");
        assert_eq!(key_of(&buf), b"key");
        assert_eq!(v.value(), b"value");
        assert_eq!(v.ttl_s(), 60);
        assert_eq!(v.version_us(), 1_700_000_000_123_456);
        assert_eq!(v.meta().created_at_ms, 1_700_000_000_123);
        assert_eq!(v.meta().expires_at_ms, 1_700_000_060_123);
        assert!(!v.is_expired(1_700_000_060_123_455));
        assert!(v.is_expired(1_700_000_060_123_456));
        assert!(!v.was_accessed());
        assert_eq!(v.codec_flags(), 0);
        assert_eq!(v.record_bytes().len(), buf.len());
        let st = Stamp { codec: 3, ..st };
        write_record(&mut buf, st, base, b"key", b"value");
        let v = ItemView::new(&buf, base);
        assert_eq!((v.codec_flags(), v.ttl_s(), v.value()), (3, 60, &b"value"[..]));
    }

    #[test]
    fn values_of_64_kib_and_more_round_trip() {
        let value = vec![9u8; 70_000];
        let mut buf = vec![0u8; record_len(stamp(77, 5), 2, value.len(), 77)];
        write_record(&mut buf, stamp(77, 5), 77, b"kk", &value);
        let v = ItemView::new(&buf, 77);
        assert_eq!(
            (v.key(), v.value().len(), v.ttl_s(), v.version_us()),
            (&b"kk"[..], 70_000, 5, 77)
        );
        assert_eq!(v.record_bytes().len(), 2 + 3 + 1 + 1 + 2 + 70_000);
    }

    #[test]
    fn huge_ttls_are_capped() {
        let mut buf = vec![0u8; record_len(stamp(5, u32::MAX), 1, 1, 0)];
        write_record(&mut buf, stamp(5, u32::MAX), 0, b"k", b"v");
        assert_eq!(ItemView::new(&buf, 0).ttl_s(), MAX_TTL_S);
    }

    proptest! {
        #[test]
        fn any_item_in_any_larger_chunk(key in proptest::collection::vec(any::<u8>(), 1..=255),
                                        value in proptest::collection::vec(any::<u8>(), 0..600),
                                        extra in 0usize..80, ttl in 0u32..MAX_TTL_S,
                                        version in 0u64..(1 << 52), base in 0u64..(1 << 52)) {
            let st = stamp(version, ttl);
            let len = record_len(st, key.len(), value.len(), base);
            let mut chunk = vec![0xAAu8; len + extra];
            write_record(&mut chunk, st, base, &key, &value);
            let v = ItemView::new(&chunk, base);
            prop_assert_eq!(v.key(), &key[..]);
            prop_assert_eq!(v.value(), &value[..]);
            prop_assert_eq!(v.ttl_s(), ttl);
            prop_assert_eq!(v.version_us(), version);
            prop_assert_eq!(v.record_bytes().len(), len);
        }
    }
}
