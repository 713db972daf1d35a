use super::record::{parse, reads, record_len, total_len, write_header, Header};
use super::*;

mod accounting;

/// Segments of 64 KiB: records above 16 KiB are large.
const SEGMENT: usize = MIN_PAGE_BYTES;

fn slab(limit: usize) -> Slab {
    Slab::with_page_bytes(limit, SEGMENT)
}

/// The version a record of `tag` is written with: far apart and out of
/// order, so that records land in segments of every base and moves
/// re-encode them with deltas of every size.
fn version_of(tag: u8) -> u64 {
    (u64::from(tag) * 7_919_000_017) % (1 << 50)
}

fn header(key_len: usize, value_len: usize, tag: u8) -> Header {
    Header {
        key_len,
        value_len,
        version: version_of(tag),
        ttl_s: u32::from(tag),
        codec: u32::from(tag % 4),
    }
}

/// Allocates and writes a record of a `key_len`-byte key and a
/// `value_len`-byte value, every byte after the header `tag`.
fn put(slab: &mut Slab, key_len: usize, value_len: usize, tag: u8) -> Result<ItemId, NoMemory> {
    let h = header(key_len, value_len, tag);
    let (id, len) = slab.alloc(h.version, |base| record_len(&h, base))?;
    let base = slab.base_of(id);
    assert_eq!(len, record_len(&h, base));
    let space = slab.space_mut(id, len);
    space.fill(tag);
    write_header(space, &h, base);
    Ok(id)
}

fn intact(slab: &Slab, id: ItemId, tag: u8) -> bool {
    let r = slab.record(id);
    let r = &r[..total_len(r)];
    let p = parse(r, slab.base_of(id));
    let h = header(p.header.key_len, p.header.value_len, tag);
    p.header == h
        && r[record::KEY_AT..record::KEY_AT + h.key_len]
            .iter()
            .all(|&b| b == tag)
        && r[p.value_at..].iter().all(|&b| b == tag)
}

fn was_read(slab: &Slab, id: ItemId) -> bool {
    reads(slab.record(id)) > 0
}

/// What the store does: evict the oldest region, keeping read records
/// when `second_chance`; returns the moves.
fn evict(slab: &mut Slab, second_chance: bool) -> Option<Vec<(ItemId, ItemId)>> {
    let region = slab.oldest()?;
    let keep: Vec<ItemId> = slab
        .live_records(region)
        .into_iter()
        .filter(|&id| second_chance && was_read(slab, id))
        .collect();
    Some(slab.retire(region, &keep))
}

#[test]
fn records_lie_back_to_back_in_one_segment() {
    let mut s = slab(8 * SEGMENT);
    let a = put(&mut s, 16, 100, 1).unwrap();
    let b = put(&mut s, 16, 100, 2).unwrap();
    // Header: frame 2, length 1, version 1 (the segment's base), TTL 1.
    assert_eq!(total_len(s.record(a)), 121, "5-byte header, no rounding");
    assert_eq!(b.0 - a.0, 121, "the next record starts right after");
    let len_b = total_len(s.record(b));
    assert!(len_b > 121, "b's version is stored relative to a's: {len_b}");
    assert!(intact(&s, a, 1) && intact(&s, b, 2));
    assert_eq!(s.live_pages(), 1);
    assert_eq!(s.live_bytes(), 121 + len_b);
}

#[test]
fn large_records_share_the_budget_and_the_queue() {
    let mut s = slab(4 * SEGMENT);
    let small = put(&mut s, 8, 100, 1).unwrap();
    let big = put(&mut s, 8, 2 * SEGMENT, 2).unwrap();
    assert!(big.is_large() && !small.is_large());
    assert!(
        put(&mut s, 8, 2 * SEGMENT, 3).is_err(),
        "a segment and 2 segments' worth fill 3 of 4"
    );
    assert_eq!(
        s.oldest(),
        Some(Region::Segment(0)),
        "the segment was written first"
    );
    evict(&mut s, false).unwrap();
    assert_eq!(s.oldest(), Some(Region::Large(0)));
    assert!(
        put(&mut s, 8, SEGMENT, 4).is_ok(),
        "the evicted segment's memory serves a large record"
    );
}

#[test]
fn a_closed_segment_whose_records_all_died_goes_back_at_once() {
    let mut s = slab(8 * SEGMENT);
    let first: Vec<ItemId> = (0..500).map(|_| put(&mut s, 16, 200, 1).unwrap()).collect();
    assert_eq!(s.live_pages(), 2, "the second segment is open");
    let in_first: Vec<ItemId> = first
        .into_iter()
        .filter(|id| s.region_of(*id) == Region::Segment(0))
        .collect();
    for id in in_first {
        s.free(id);
    }
    assert_eq!(s.live_pages(), 1);
    assert_eq!(s.oldest(), Some(Region::Segment(1)));
}

#[test]
fn read_records_survive_the_eviction_of_their_segment() {
    let mut s = slab(2 * SEGMENT);
    let ids: Vec<ItemId> = (0..400)
        .map(|i| put(&mut s, 16, 100, (i % 200) as u8).unwrap())
        .collect();
    let hot = ids[10];
    s.touch(hot);
    let moves = evict(&mut s, true).unwrap();
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].0, hot);
    let moved = moves[0].1;
    assert!(intact(&s, moved, 10), "re-encoded against its new segment");
    assert!(!was_read(&s, moved), "its chance is used");
    assert_eq!(
        s.live_bytes(),
        total_len(s.record(moved)),
        "every other record went"
    );
}

#[test]
fn a_read_large_record_goes_to_the_back_of_the_queue() {
    let mut s = slab(4 * SEGMENT);
    let big = put(&mut s, 8, SEGMENT, 5).unwrap();
    put(&mut s, 8, 100, 6).unwrap();
    s.touch(big);
    assert_eq!(evict(&mut s, true).unwrap(), vec![]);
    assert!(intact(&s, big, 5));
    assert_eq!(s.oldest(), Some(Region::Segment(0)));
}

#[test]
fn segment_size_follows_the_shard_size() {
    assert_eq!(page_bytes_for(2 << 20), MIN_PAGE_BYTES);
    assert_eq!(page_bytes_for(32 << 20), 128 << 10);
    assert_eq!(page_bytes_for(1 << 30), MAX_PAGE_BYTES);
    // Ids address the largest shard: 32 GiB of 1 MiB segments.
    let s = Slab::new(32 << 30);
    assert!(1usize << (31 - s.offset_bits) >= (32 << 30) / MAX_PAGE_BYTES);
    assert_eq!(Slab::new(32 << 30).align_shift, 4);
    assert_eq!(Slab::new(4 << 30).align_shift, 1);
    assert_eq!(
        Slab::new(2 << 30).align_shift,
        0,
        "up to 2 GiB, records are packed byte by byte"
    );
    let s = Slab::new(32 << 20);
    assert_eq!(s.align_shift, 0, "small shards pack records byte by byte");
}
