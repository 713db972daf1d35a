use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// Pages of 1 MiB, as a shard of 1 GiB or more has.
const PAGE_BYTES: usize = MAX_PAGE_BYTES;

fn slab(limit: usize) -> Slab {
    Slab::with_page_bytes(limit, PAGE_BYTES)
}

/// Writes a live-looking record (non-zero first word) filled with `tag`.
fn fill(slab: &mut Slab, id: ItemId, tag: u8) {
    let r = slab.record_mut(id);
    r.fill(tag);
    r[..8].copy_from_slice(&(1u64 << 52 | u64::from(tag)).to_le_bytes());
}

fn check(slab: &Slab, id: ItemId, tag: u8) -> bool {
    let r = slab.record(id);
    r[..8] == (1u64 << 52 | u64::from(tag)).to_le_bytes() && r[8..].iter().all(|&b| b == tag)
}

#[test]
fn allocates_within_the_class_and_reuses_freed_chunks() {
    let mut slab = slab(8 * PAGE_BYTES);
    let a = slab.alloc(130).unwrap();
    let b = slab.alloc(130).unwrap();
    assert_ne!(a, b);
    assert_eq!(slab.record(a).len(), 132, "4-byte classes below 256 bytes");
    slab.free(a);
    assert_eq!(slab.alloc(129).unwrap(), a, "freed chunk reused first");
    assert_eq!(slab.live_pages(), 1);
}

#[test]
fn budget_counts_pages_index_and_large_records() {
    let mut slab = slab(3 * PAGE_BYTES);
    let big = slab.alloc(PAGE_BYTES).unwrap();
    assert!(big.is_large());
    assert_eq!(slab.record(big).len(), PAGE_BYTES);
    let _small = slab.alloc(100).unwrap();
    assert_eq!(
        slab.alloc(PAGE_BYTES),
        Err(NoMemory),
        "the large record and a page fill 2 of 3 MiB"
    );
    slab.set_index_bytes(PAGE_BYTES / 2);
    assert!(
        slab.alloc(200_000).is_err(),
        "no room for a new page once the index grows"
    );
    slab.free(big);
    assert!(slab.alloc(PAGE_BYTES / 2).is_ok());
    assert!(slab.used_bytes() <= slab.limit_bytes());
}

#[test]
fn clock_spares_recently_read_records() {
    let mut slab = slab(PAGE_BYTES);
    let mut ids = Vec::new();
    while let Ok(id) = slab.alloc(1000) {
        fill(&mut slab, id, 1);
        ids.push(id);
    }
    assert!(ids.len() > 900);
    for id in &ids[..ids.len() / 2] {
        slab.touch(*id);
    }
    let victim = match slab.choose_victim(1000) {
        Some(Victim::Item(id)) => id,
        other => panic!("expected an item, got {other:?}"),
    };
    assert!(
        ids[ids.len() / 2..].contains(&victim),
        "an unread record goes first"
    );
}

#[test]
fn a_class_without_pages_takes_one_from_another_class() {
    let mut slab = slab(2 * PAGE_BYTES);
    while let Ok(id) = slab.alloc(100) {
        fill(&mut slab, id, 3);
    }
    assert_eq!(slab.live_pages(), 2);
    let Some(Victim::Page {
        page,
        to_class: Some(class),
    }) = slab.choose_victim(10_000)
    else {
        panic!("expected a page move");
    };
    let victims = slab.live_records(page);
    assert!(victims.len() > 7000);
    slab.move_page(page, class);
    let id = slab.alloc(10_000).unwrap();
    assert_eq!(slab.record(id).len(), slab.chunk_bytes_for(10_000));
    assert_eq!(slab.pages_moved(), 1);
}

#[test]
fn pressure_moves_pages_toward_the_evicting_class() {
    let mut slab = slab(4 * PAGE_BYTES);
    while let Ok(id) = slab.alloc(100) {
        fill(&mut slab, id, 1);
    }
    assert!(slab.rebalance_move().is_none());
    let Some(Victim::Page {
        page,
        to_class: Some(class),
    }) = slab.choose_victim(5000)
    else {
        panic!()
    };
    slab.move_page(page, class);
    let id = slab.alloc(5000).unwrap();
    for _ in 0..32 {
        slab.note_eviction(id);
    }
    let (page, to) = slab.rebalance_move().expect("a move toward the evicting class");
    assert_eq!(Some(to), slab.class_for(5000));
    assert_ne!(page, id.page() as u32);
    slab.decay_pressure();
    slab.decay_pressure();
    slab.decay_pressure();
    assert!(slab.rebalance_move().is_none(), "pressure decays");
}

#[test]
fn releasing_a_page_returns_its_memory() {
    let mut slab = slab(2 * PAGE_BYTES);
    let a = slab.alloc(100).unwrap();
    fill(&mut slab, a, 9);
    let page = slab.page_to_release(None).unwrap();
    assert_eq!(slab.live_records(page), vec![a]);
    slab.release_page(page);
    assert_eq!(slab.used_bytes(), 0);
    let b = slab.alloc(100).unwrap();
    assert!(!b.is_large());
}

#[test]
fn page_size_follows_the_shard_size() {
    assert_eq!(page_bytes_for(2 << 20), MIN_PAGE_BYTES);
    assert_eq!(page_bytes_for(32 << 20), 32 << 10);
    assert_eq!(page_bytes_for(256 << 20), 256 << 10);
    assert_eq!(page_bytes_for(1 << 30), MAX_PAGE_BYTES);
    assert_eq!(page_bytes_for(64 << 30), MAX_PAGE_BYTES);
    // A 32 MiB shard can give every size class pages of its own.
    let s = Slab::new(32 << 20);
    assert!(s.sizes.len() * s.page_bytes() * 2 < 32 << 20);
}

#[derive(Debug, Clone)]
enum SlabOp {
    Alloc(usize),
    Free(usize),
}

proptest! {
    /// Random allocs and frees against a model: records never overlap
    /// (each keeps its own fill), memory never exceeds the budget, and
    /// freeing everything leaves no record behind.
    #[test]
    fn no_overlap_no_leak(ops in proptest::collection::vec(prop_oneof![
        prop_oneof![1usize..300, 300usize..20_000, 200_000usize..400_000].prop_map(SlabOp::Alloc),
        any::<usize>().prop_map(SlabOp::Free),
    ], 1..300)) {
        let mut slab = slab(6 * PAGE_BYTES);
        let mut live: HashMap<ItemId, u8> = HashMap::new();
        let mut order: Vec<ItemId> = Vec::new();
        let mut tag = 0u8;
        for op in ops {
            match op {
                SlabOp::Alloc(len) => {
                    let len = len.max(12);
                    if let Ok(id) = slab.alloc(len) {
                        prop_assert!(!live.contains_key(&id), "handed out twice");
                        prop_assert!(slab.record(id).len() >= len);
                        tag = tag.wrapping_add(1).max(1);
                        fill(&mut slab, id, tag);
                        live.insert(id, tag);
                        order.push(id);
                    }
                }
                SlabOp::Free(i) if !order.is_empty() => {
                    let id = order.swap_remove(i % order.len());
                    slab.free(id);
                    live.remove(&id);
                }
                SlabOp::Free(_) => {}
            }
            prop_assert!(slab.used_bytes() <= slab.limit_bytes());
            for (&id, &t) in &live {
                prop_assert!(check(&slab, id, t), "record {:?} was overwritten", id);
            }
        }
        for id in order {
            slab.free(id);
        }
        prop_assert_eq!(slab.large_records(), 0);
        prop_assert!(slab.class_stats().iter().all(|c| c.items == 0));
        prop_assert_eq!(slab.free_bytes_in_pages(), slab.live_pages() * PAGE_BYTES);
    }
}
