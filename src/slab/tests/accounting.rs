//! Property tests of the allocator with random size mixes: after every
//! operation the bytes held equal what is live plus what is free, stay
//! within the limit, and every live record reads back intact.

use super::*;
use crate::slab::mapped::mapped_len;
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    /// A record with a value of this many bytes (small, medium or large).
    Put(usize),
    Free(usize),
    Touch(usize),
    Evict(bool),
    IndexGrows(usize),
}

fn value_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..200,
        2 => 200usize..SEGMENT / 4,
        1 => SEGMENT / 4..3 * SEGMENT,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => value_len().prop_map(Op::Put),
        3 => any::<usize>().prop_map(Op::Free),
        3 => any::<usize>().prop_map(Op::Touch),
        1 => any::<bool>().prop_map(Op::Evict),
        1 => (0usize..SEGMENT).prop_map(Op::IndexGrows),
    ]
}

/// The model: what is live, with its length and tag.
struct Model {
    live: HashMap<ItemId, (usize, u8)>,
    order: Vec<ItemId>,
}

impl Model {
    fn pick(&self, n: usize) -> Option<ItemId> {
        (!self.order.is_empty()).then(|| self.order[n % self.order.len()])
    }

    fn remove(&mut self, id: ItemId) {
        self.live.remove(&id);
        self.order.retain(|&x| x != id);
    }

    fn apply_eviction(
        &mut self,
        slab: &Slab,
        before: &[ItemId],
        keep: &[ItemId],
        moves: &[(ItemId, ItemId)],
    ) {
        let mut moved = HashMap::new();
        for &(old, new) in moves {
            moved.insert(old, new);
        }
        for &id in before {
            if keep.contains(&id) && !moved.contains_key(&id) {
                continue; // a large record kept in place
            }
            let entry = self.live.remove(&id).expect("evicted records were live");
            self.order.retain(|&x| x != id);
            if let Some(&new) = moved.get(&id) {
                // Re-encoded against its new segment's base: the length
                // may change.
                self.live.insert(new, (total_len(slab.record(new)), entry.1));
                self.order.push(new);
            }
        }
    }
}

/// Evicts the oldest region as the store does; updates the model.
fn evict_into(slab: &mut Slab, model: &mut Model, second_chance: bool) -> bool {
    let Some(region) = slab.oldest() else {
        return false;
    };
    let before = slab.live_records(region);
    let keep: Vec<ItemId> = before
        .iter()
        .copied()
        .filter(|&id| second_chance && was_read(slab, id))
        .collect();
    let moves = slab.retire(region, &keep);
    match region {
        Region::Segment(_) => assert!(
            moves.is_empty() || moves.len() == keep.len(),
            "survivors of a segment all move, or all stay when nothing is reclaimed"
        ),
        Region::Large(_) => assert!(moves.is_empty(), "a large record stays where it is"),
    }
    model.apply_eviction(slab, &before, &keep, &moves);
    true
}

fn check(slab: &Slab, model: &Model) {
    assert!(
        slab.used_bytes() <= slab.limit_bytes(),
        "{} over {}",
        slab.used_bytes(),
        slab.limit_bytes()
    );
    let live: usize = model.live.values().map(|&(len, _)| len).sum();
    assert_eq!(slab.live_bytes(), live, "live bytes");
    // Bytes held = live records + free space in segments + what large
    // records take beyond their bytes (slot, page rounding) + index.
    let large_slots: usize = model
        .live
        .iter()
        .filter(|(id, _)| id.is_large())
        .map(|(_, &(len, _))| LARGE_SLOT_BYTES + mapped_len(len) - len)
        .sum();
    assert_eq!(
        slab.used_bytes(),
        live + slab.free_bytes_in_pages() + large_slots + slab.index_bytes,
        "held = live + free"
    );
    let in_regions: usize = slab
        .queue
        .iter()
        .filter(|&&(r, g)| slab.is_current(r, g))
        .map(|&(r, _)| slab.live_records(r).len())
        .sum();
    assert_eq!(
        in_regions,
        model.live.len(),
        "every live record is in exactly one queued region"
    );
    for (&id, &(len, tag)) in &model.live {
        assert_eq!(total_len(slab.record(id)), len);
        assert!(intact(slab, id, tag), "record {id:?} intact");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn accounting_holds_after_every_operation(ops in proptest::collection::vec(op(), 1..300)) {
        let mut slab = slab(6 * SEGMENT);
        let mut model = Model { live: HashMap::new(), order: Vec::new() };
        let mut tag = 0u8;
        for op in ops {
            match op {
                Op::Put(value_len) => {
                    tag = tag.wrapping_add(1).max(1);
                    let key_len = 1 + value_len % 40;
                    // As the store does: evict the oldest region until it fits.
                    let mut attempts = 0;
                    let id = loop {
                        match put(&mut slab, key_len, value_len, tag) {
                            Ok(id) => break Some(id),
                            Err(NoMemory) => {
                                attempts += 1;
                                if !evict_into(&mut slab, &mut model, attempts < 8) {
                                    break None;
                                }
                            }
                        }
                    };
                    if let Some(id) = id {
                        prop_assert!(!model.live.contains_key(&id), "fresh id");
                        model.live.insert(id, (total_len(slab.record(id)), tag));
                        model.order.push(id);
                    } else {
                        prop_assert!(model.live.is_empty() || value_len > slab.limit_bytes() / 2);
                    }
                }
                Op::Free(n) => {
                    if let Some(id) = model.pick(n) {
                        slab.free(id);
                        model.remove(id);
                    }
                }
                Op::Touch(n) => {
                    if let Some(id) = model.pick(n) {
                        slab.touch(id);
                    }
                }
                Op::Evict(second_chance) => {
                    evict_into(&mut slab, &mut model, second_chance);
                }
                Op::IndexGrows(bytes) => {
                    slab.set_index_bytes(bytes);
                    while slab.over_budget() && evict_into(&mut slab, &mut model, false) {}
                }
            }
            check(&slab, &model);
        }
    }
}
