//! A record's header: what the allocator reads to walk a segment, mark a
//! record dead, count its reads and move it, and what the item keeps
//! (version, TTL, codec bits). [`crate::shard::item`] reads items through
//! it.
//!
//! Layout, little-endian, variable length (issue #16: a leaner item):
//! - bytes 0..2 (`frame`): key length (bits 0..8), a 2-bit read counter
//!   (bits 8..10), [`DEAD`] (bit 10), the two codec bits (11..13),
//!   [`HAS_TTL`] (bit 13), [`BEFORE_BASE`] (bit 14), [`TTL_MINUTES`]
//!   (bit 15);
//! - the key, at a fixed offset ([`KEY_AT`]): a lookup compares it with no
//!   parsing, so the loads of the key do not wait on branches that depend
//!   on the header's bytes (with the key after the variable fields, GET of
//!   a 1-million-key store took 128 ns against 74: the cache misses of a
//!   record's two lines no longer overlapped);
//! - the value length, LEB128 (1 byte below 128, 2 below 16 KiB);
//! - the version, as the LEB128 of its distance from the *base* of the
//!   record's region (after it, or before it with [`BEFORE_BASE`]). A
//!   segment's base is the version of the write that opened it, so a record
//!   appended within 16 ms of it costs 2 bytes here instead of 6.5; a
//!   record moved to a newer segment is re-encoded against that segment's
//!   base ([`reencode`]);
//! - the TTL, LEB128, only when [`HAS_TTL`]: in minutes with
//!   [`TTL_MINUTES`] (a whole number of minutes: the default 3600 s takes
//!   1 byte), else in seconds;
//! - the value.
//!
//! A 20-byte key and 100-byte value with a TTL of 3600 s take a 6- or
//! 7-byte header (it was 14 bytes of fixed fields).

/// The read counter's low bit: set by the first read since eviction last
/// passed the record.
pub const ACCESSED: u16 = 1 << 8;
const READS_SHIFT: u32 = 8;
const READS_MASK: u16 = 3 << READS_SHIFT;
/// Set when the record was freed; its bytes stay until its segment goes.
pub const DEAD: u16 = 1 << 10;
const CODEC_SHIFT: u32 = 11;
const CODEC_MASK: u16 = 3 << CODEC_SHIFT;
/// A TTL follows the version.
pub const HAS_TTL: u16 = 1 << 13;
/// The version lies before the region's base (a replica's write, a record
/// moved to a newer segment).
pub const BEFORE_BASE: u16 = 1 << 14;
/// The TTL is stored in minutes.
pub const TTL_MINUTES: u16 = 1 << 15;

/// Shortest header: frame, 1-byte length, 1-byte version, no TTL.
pub const MIN_HEADER_BYTES: usize = 4;

/// Longest header: frame, 5-byte length, 8-byte version, 5-byte TTL.
pub const MAX_HEADER_BYTES: usize = 2 + 5 + 8 + 5;

/// Where the key starts.
pub const KEY_AT: usize = 2;

/// An item's fields, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 1 to 255.
    pub key_len: usize,
    pub value_len: usize,
    /// Microsecond hybrid clock of the write (below 2^53).
    pub version: u64,
    /// 0 = never expires.
    pub ttl_s: u32,
    /// 0..=3, meaning owned by [`crate::codec`].
    pub codec: u32,
}

/// A header read back, with where its value starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub header: Header,
    pub value_at: usize,
}

/// Bytes of `v` in LEB128: 7 bits a byte.
#[inline]
const fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[inline]
fn put_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// Reads a LEB128 number at `at`; returns it and the offset after it.
#[inline]
fn get_varint(bytes: &[u8], mut at: usize) -> (u64, usize) {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[at];
        at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return (v, at);
        }
        shift += 7;
    }
}

#[inline]
fn skip_varint(bytes: &[u8], mut at: usize) -> usize {
    while bytes[at] >= 0x80 {
        at += 1;
    }
    at + 1
}

/// The distance of `version` from `base`, and the frame bit of its side.
#[inline]
fn distance(version: u64, base: u64) -> (u64, u16) {
    if version >= base {
        (version - base, 0)
    } else {
        (base - version, BEFORE_BASE)
    }
}

/// The stored TTL and its frame bits.
#[inline]
fn stored_ttl(ttl_s: u32) -> (u64, u16) {
    match ttl_s {
        0 => (0, 0),
        t if t % 60 == 0 => (u64::from(t / 60), HAS_TTL | TTL_MINUTES),
        t => (u64::from(t), HAS_TTL),
    }
}

/// A header with everything that does not depend on its region's base
/// worked out once: a write sizes its record for a region (perhaps two,
/// when the open one is full) and then writes it, and the TTL's unit, the
/// frame and the length's bytes are the same each time.
#[derive(Clone, Copy, Debug)]
pub struct Encoding {
    /// Key length, codec and TTL bits ([`BEFORE_BASE`] is the region's).
    frame: u16,
    key_len: usize,
    value_len: usize,
    version: u64,
    /// The stored TTL (minutes or seconds), written when [`HAS_TTL`].
    ttl: u64,
    /// Header bytes but the version's.
    fixed_len: usize,
}

impl Encoding {
    #[inline]
    pub fn new(h: &Header) -> Encoding {
        debug_assert!((1..=0xff).contains(&h.key_len) && h.codec <= 3);
        let (ttl, ttl_bits) = stored_ttl(h.ttl_s);
        let ttl_len = if ttl_bits == 0 { 0 } else { varint_len(ttl) };
        Encoding {
            frame: h.key_len as u16 | ((h.codec as u16) << CODEC_SHIFT) | ttl_bits,
            key_len: h.key_len,
            value_len: h.value_len,
            version: h.version,
            ttl,
            fixed_len: 2 + varint_len(h.value_len as u64) + ttl_len,
        }
    }

    /// Header bytes in a region whose base is `base`.
    #[inline]
    pub fn header_len(&self, base: u64) -> usize {
        self.fixed_len + varint_len(distance(self.version, base).0)
    }

    /// Bytes of the whole record: header, key and value.
    #[inline]
    pub fn record_len(&self, base: u64) -> usize {
        self.header_len(base) + self.key_len + self.value_len
    }

    /// Writes the header of a live, unread record (the key goes at
    /// [`KEY_AT`]); returns where the value goes.
    #[inline]
    pub fn write(&self, record: &mut [u8], base: u64) -> usize {
        let (d, side) = distance(self.version, base);
        set_frame(record, self.frame | side);
        let mut at = KEY_AT + self.key_len;
        at += put_varint(&mut record[at..], self.value_len as u64);
        at += put_varint(&mut record[at..], d);
        if self.frame & HAS_TTL != 0 {
            at += put_varint(&mut record[at..], self.ttl);
        }
        at
    }
}

/// Header bytes of `h` in a region whose base is `base`.
#[inline]
pub fn header_len(h: &Header, base: u64) -> usize {
    Encoding::new(h).header_len(base)
}

/// Bytes of the record of `h`: header, key and value.
#[inline]
pub fn record_len(h: &Header, base: u64) -> usize {
    Encoding::new(h).record_len(base)
}

/// Writes the header of a live, unread record (the key goes at
/// [`KEY_AT`]); returns where the value goes.
#[inline]
pub fn write_header(record: &mut [u8], h: &Header, base: u64) -> usize {
    Encoding::new(h).write(record, base)
}

/// Reads a record's header; `base` is its region's.
#[inline]
pub fn parse(record: &[u8], base: u64) -> Parsed {
    let f = frame(record);
    let (value_len, at) = get_varint(record, KEY_AT + usize::from(f & 0xff));
    let (d, at) = get_varint(record, at);
    let (ttl, at) = if f & HAS_TTL != 0 {
        get_varint(record, at)
    } else {
        (0, at)
    };
    let ttl_s = if f & TTL_MINUTES != 0 { ttl * 60 } else { ttl };
    Parsed {
        header: Header {
            key_len: usize::from(f & 0xff),
            value_len: value_len as usize,
            version: if f & BEFORE_BASE != 0 { base - d } else { base + d },
            ttl_s: ttl_s as u32,
            codec: u32::from((f & CODEC_MASK) >> CODEC_SHIFT),
        },
        value_at: at,
    }
}

/// Where the value starts and its length (no base needed).
#[inline]
pub fn layout(record: &[u8]) -> (usize, usize) {
    let f = frame(record);
    let (value_len, mut at) = get_varint(record, KEY_AT + usize::from(f & 0xff));
    at = skip_varint(record, at);
    if f & HAS_TTL != 0 {
        at = skip_varint(record, at);
    }
    (at, value_len as usize)
}

/// The key of a record.
#[inline]
pub fn key(record: &[u8]) -> &[u8] {
    &record[KEY_AT..KEY_AT + usize::from(frame(record) & 0xff)]
}

/// Key and value bytes of a record, and its whole length.
#[inline]
pub fn sizes(record: &[u8]) -> (usize, usize) {
    let (at, value_len) = layout(record);
    (usize::from(frame(record) & 0xff) + value_len, at + value_len)
}

/// Bytes of the record starting at `record[0]`.
#[inline]
pub fn total_len(record: &[u8]) -> usize {
    let (at, value_len) = layout(record);
    at + value_len
}

/// Bytes `record` (of a region based at `from`) takes once re-encoded in a
/// region based at `to`.
#[inline]
pub fn reencoded_len(record: &[u8], from: u64, to: u64) -> usize {
    record_len(&parse(record, from).header, to)
}

/// Copies `record` (of a region based at `from`) into `out` for a region
/// based at `to`, keeping its read counter; returns the
/// bytes written ([`reencoded_len`]).
#[inline]
pub fn reencode(record: &[u8], from: u64, to: u64, out: &mut [u8]) -> usize {
    let p = parse(record, from);
    let at = write_header(out, &p.header, to);
    set_frame(out, (frame(out) & !READS_MASK) | (frame(record) & READS_MASK));
    let key_len = p.header.key_len;
    out[KEY_AT..KEY_AT + key_len].copy_from_slice(&record[KEY_AT..KEY_AT + key_len]);
    let value_len = p.header.value_len;
    out[at..at + value_len].copy_from_slice(&record[p.value_at..p.value_at + value_len]);
    at + value_len
}

#[inline]
pub fn frame(record: &[u8]) -> u16 {
    u16::from_le_bytes([record[0], record[1]])
}

#[inline]
pub fn set_frame(record: &mut [u8], frame: u16) {
    record[..2].copy_from_slice(&frame.to_le_bytes());
}

#[inline]
pub fn is_dead(record: &[u8]) -> bool {
    frame(record) & DEAD != 0
}

#[inline]
pub fn mark_dead(record: &mut [u8]) {
    set_frame(record, frame(record) | DEAD);
}

/// Reads counted since eviction last passed the record, 0 to 3.
#[inline]
pub fn reads(record: &[u8]) -> u16 {
    (frame(record) & READS_MASK) >> READS_SHIFT
}

#[inline]
fn set_reads(record: &mut [u8], n: u16) {
    set_frame(record, (frame(record) & !READS_MASK) | (n << READS_SHIFT));
}

/// Counts a read (saturating at 3).
#[inline]
pub fn count_read(record: &mut [u8]) {
    let n = reads(record);
    if n < 3 {
        set_reads(record, n + 1);
    }
}

/// Spends one of the record's chances: eviction passes it by once per read
/// counted, so a key read often outlives one read once (a 2-bit CLOCK).
#[inline]
pub fn spend_chance(record: &mut [u8]) {
    set_reads(record, reads(record).saturating_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(key_len: usize, value_len: usize, version: u64, ttl_s: u32, codec: u32) -> Header {
        Header {
            key_len,
            value_len,
            version,
            ttl_s,
            codec,
        }
    }

    #[test]
    fn a_small_item_written_near_its_base_has_an_8_byte_header() {
        // 100-byte value (1 byte), 10 ms after the base (2 bytes), 60
        // minutes (1 byte).
        let h = header(20, 100, 1_000_010_000, 3600, 0);
        assert_eq!(header_len(&h, 1_000_000_000), 6);
        assert_eq!(header_len(&h, 1_000_020_000), 6, "before the base");
        assert_eq!(header_len(&Header { ttl_s: 0, ..h }, 1_000_000_000), 5);
        assert_eq!(header_len(&Header { ttl_s: 3601, ..h }, 1_000_000_000), 7);
        // 40 ms: 3 bytes.
        assert_eq!(header_len(&h, 999_960_000), 7);
    }

    #[test]
    fn the_read_counter_saturates_at_3_and_spends_one_chance_at_a_time() {
        let h = header(1, 1, 99, 0, 2);
        let mut r = vec![0u8; record_len(&h, 0)];
        write_header(&mut r, &h, 0);
        for expected in [1, 2, 3, 3] {
            count_read(&mut r);
            assert_eq!(reads(&r), expected);
        }
        spend_chance(&mut r);
        assert_eq!(reads(&r), 2);
        assert_eq!(parse(&r, 0).header, h);
        mark_dead(&mut r);
        assert!(is_dead(&r) && reads(&r) == 2 && parse(&r, 0).header == h);
    }

    proptest! {
        #[test]
        fn varints_read_back_wherever_they_lie(v in any::<u64>(), pad in 0usize..12, tail in 0usize..12) {
            let mut buf = vec![0xFFu8; pad];
            let mut enc = [0u8; 10];
            let n = put_varint(&mut enc, v);
            prop_assert_eq!(n, varint_len(v));
            buf.extend_from_slice(&enc[..n]);
            buf.extend(std::iter::repeat_n(0xA5u8, tail));
            prop_assert_eq!(get_varint(&buf, pad), (v, pad + n));
        }

        #[test]
        fn any_header_round_trips_and_moves(key_len in 1usize..=255, value_len in 0usize..(1 << 31),
                                            version in 0u64..(1 << 53), base in 0u64..(1 << 53),
                                            to in 0u64..(1 << 53), ttl_s in 0u32..(1 << 30),
                                            codec in 0u32..4, reads_n in 0u16..4) {
            let h = header(key_len, value_len.min(300), version, ttl_s, codec);
            let mut r = vec![0xAAu8; record_len(&h, base) + 7];
            let at = write_header(&mut r, &h, base);
            r[KEY_AT..KEY_AT + h.key_len].fill(0x5B);
            r[at..at + h.value_len].fill(0x5A);
            for _ in 0..reads_n {
                count_read(&mut r);
            }
            prop_assert_eq!(parse(&r, base), Parsed { header: h, value_at: at });
            prop_assert_eq!(layout(&r), (at, h.value_len));
            // Cut right after the header: read byte by byte, not as a word.
            prop_assert_eq!(parse(&r[..at], base), Parsed { header: h, value_at: at });
            prop_assert_eq!(layout(&r[..at]), (at, h.value_len));
            prop_assert_eq!(total_len(&r), record_len(&h, base));
            prop_assert!(header_len(&h, base) <= MAX_HEADER_BYTES);
            let mut out = vec![0u8; reencoded_len(&r, base, to) + 3];
            let n = reencode(&r, base, to, &mut out);
            prop_assert_eq!(n, record_len(&h, to));
            prop_assert_eq!(parse(&out, to).header, h);
            prop_assert_eq!(reads(&out), reads_n.min(3));
            prop_assert_eq!(key(&out), key(&r));
            let p = parse(&out, to);
            prop_assert_eq!(&out[p.value_at..n], &r[at..at + h.value_len]);
            // Any value length is framed (the wide lengths of large records).
            let big = header(key_len, value_len, version, ttl_s, codec);
            let mut r = vec![0u8; header_len(&big, base) + key_len];
            write_header(&mut r, &big, base);
            prop_assert_eq!(layout(&r).1, value_len);
        }
    }
}
