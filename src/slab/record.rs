//! A record's framing: the part of its header the allocator reads, so that
//! it can walk a segment from record to record, mark records dead and keep
//! the CLOCK bit. [`crate::shard::item`] owns the rest (version, TTL, codec
//! bits).
//!
//! Layout, little-endian:
//! - bytes 0..8 (`word0`): bits 0..52 belong to the item (its version),
//!   key length in bits 52..60, [`DEAD_BIT`] 61, [`WIDE_BIT`] 62, and a
//!   2-bit read counter in bits 60 ([`ACCESSED_BIT`]) and 63;
//! - bytes 8..12 belong to the item (TTL and codec bits);
//! - bytes 12..14: the value length (u16), or bytes 12..16 (u32) when WIDE
//!   (values of 64 KiB and more);
//! - the key, then the value.

/// Low bit of the read counter: set by the first read since eviction last
/// passed the record.
pub const ACCESSED_BIT: u64 = 1 << 60;
/// High bit of the read counter.
const READS_HIGH_BIT: u64 = 1 << 63;
const READS_MASK: u64 = ACCESSED_BIT | READS_HIGH_BIT;
/// Set when the record was freed; its bytes stay until its segment goes.
pub const DEAD_BIT: u64 = 1 << 61;
/// The value length takes 4 bytes instead of 2.
pub const WIDE_BIT: u64 = 1 << 62;

/// Bits of `word0` the item owns.
pub const ITEM_BITS_MASK: u64 = (1 << KEY_LEN_SHIFT) - 1;

const KEY_LEN_SHIFT: u32 = 52;
const SHORT_HEADER_BYTES: usize = 14;
const WIDE_HEADER_BYTES: usize = 16;
/// Offset of the value length.
const LEN_AT: usize = 12;

/// Header bytes of a record with a `value_len`-byte value.
#[inline]
pub const fn header_len(value_len: usize) -> usize {
    if value_len <= u16::MAX as usize {
        SHORT_HEADER_BYTES
    } else {
        WIDE_HEADER_BYTES
    }
}

/// Bytes of a record: header, key and value.
#[inline]
pub const fn record_len(key_len: usize, value_len: usize) -> usize {
    header_len(value_len) + key_len + value_len
}

/// The first word of a record.
#[inline]
pub fn word0(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[..8].try_into().expect("8 bytes"))
}

#[inline]
pub fn set_word0(record: &mut [u8], word: u64) {
    record[..8].copy_from_slice(&word.to_le_bytes());
}

/// Reads counted since eviction last passed the record, 0 to 3.
#[inline]
pub fn reads(word0: u64) -> u64 {
    ((word0 >> 60) & 1) | ((word0 >> 62) & 2)
}

#[inline]
fn with_reads(word0: u64, reads: u64) -> u64 {
    (word0 & !READS_MASK) | ((reads & 1) << 60) | ((reads & 2) << 62)
}

/// Counts a read (saturating at 3).
#[inline]
pub fn count_read(record: &mut [u8]) {
    let w = word0(record);
    let n = reads(w);
    if n < 3 {
        set_word0(record, with_reads(w, n + 1));
    }
}

/// Spends one of the record's chances: eviction passes it by once per read
/// counted, so a key read often outlives one read once (a 2-bit CLOCK).
#[inline]
pub fn spend_chance(record: &mut [u8]) {
    let w = word0(record);
    set_word0(record, with_reads(w, reads(w).saturating_sub(1)));
}

#[inline]
pub fn key_len(word0: u64) -> usize {
    ((word0 >> KEY_LEN_SHIFT) & 0xff) as usize
}

/// Where the key starts.
#[inline]
pub fn key_at(word0: u64) -> usize {
    if word0 & WIDE_BIT != 0 {
        WIDE_HEADER_BYTES
    } else {
        SHORT_HEADER_BYTES
    }
}

#[inline]
pub fn value_len(record: &[u8]) -> usize {
    if word0(record) & WIDE_BIT != 0 {
        u32::from_le_bytes(record[LEN_AT..LEN_AT + 4].try_into().expect("4 bytes")) as usize
    } else {
        u16::from_le_bytes(record[LEN_AT..LEN_AT + 2].try_into().expect("2 bytes")) as usize
    }
}

/// Bytes of the record starting at `record[0]`.
#[inline]
pub fn total_len(record: &[u8]) -> usize {
    let w = word0(record);
    key_at(w) + key_len(w) + value_len(record)
}

/// Writes the framing of a record: `item_bits` (the item's part of
/// `word0`), the key length and the value length (a live, unread record).
/// Returns where the key goes.
#[inline]
pub fn write_frame(record: &mut [u8], item_bits: u64, key_len: usize, value_len: usize) -> usize {
    debug_assert!(key_len <= 0xff && item_bits & !ITEM_BITS_MASK == 0);
    let mut w = item_bits | ((key_len as u64) << KEY_LEN_SHIFT);
    if value_len <= u16::MAX as usize {
        record[LEN_AT..LEN_AT + 2].copy_from_slice(&(value_len as u16).to_le_bytes());
    } else {
        w |= WIDE_BIT;
        record[LEN_AT..LEN_AT + 4].copy_from_slice(&(value_len as u32).to_le_bytes());
    }
    set_word0(record, w);
    header_len(value_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_short_and_wide() {
        for value_len in [0usize, 1, 65_535, 65_536, 1 << 20] {
            let mut r = vec![0u8; record_len(7, value_len)];
            let at = write_frame(&mut r, 12345, 7, value_len);
            assert_eq!(at, header_len(value_len));
            assert_eq!(key_at(word0(&r)), at);
            assert_eq!(key_len(word0(&r)), 7);
            assert_eq!(value_len_of(&r), value_len);
            assert_eq!(total_len(&r), r.len());
            assert_eq!(word0(&r) & ITEM_BITS_MASK, 12345);
        }
    }

    #[test]
    fn the_read_counter_saturates_at_3_and_spends_one_chance_at_a_time() {
        let mut r = vec![0u8; record_len(1, 1)];
        write_frame(&mut r, 99, 1, 1);
        for expected in [1, 2, 3, 3] {
            count_read(&mut r);
            assert_eq!(reads(word0(&r)), expected);
        }
        spend_chance(&mut r);
        assert_eq!(reads(word0(&r)), 2);
        assert_eq!(
            (word0(&r) & ITEM_BITS_MASK, key_len(word0(&r)), total_len(&r)),
            (99, 1, r.len())
        );
    }

    fn value_len_of(r: &[u8]) -> usize {
        value_len(r)
    }
}
