//! Planning a slot map ([`plan`], [`plan_settled`]): a pure function of
//! the previous map, the live nodes and what each node holds.

use super::{NodeInfo, SlotMap, NO_NODE, SLOTS};

/// The map for `alive` (every live node, any order), moving as little as
/// possible from `prev`. Its epoch is `prev`'s + 1, or 1 for a first map;
/// `min_epoch` raises it (a map re-created after the bucket was lost must
/// not reuse an epoch a node has seen). `holds(slot, id)`: whether node
/// `id` holds every item of `slot`, and so may become its replica in place
/// of a learner. `leads(slot, id)`: whether it may also take the slot over
/// as primary to balance the load: only a node that acknowledged the
/// slot's strong writes (its replica, or its primary) holds every one of
/// them; a learner's acknowledgements are not waited for.
pub fn plan(
    prev: Option<&SlotMap>,
    alive: &[NodeInfo],
    replication: u8,
    min_epoch: u64,
    holds: &dyn Fn(usize, &str) -> bool,
    leads: &dyn Fn(usize, &str) -> bool,
) -> SlotMap {
    let mut nodes = alive.to_vec();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes.dedup_by(|a, b| a.id == b.id);
    let n = nodes.len();
    assert!(n > 0 && n < NO_NODE as usize, "a map needs 1 to 65534 nodes");
    // Previous index → new index, for the nodes still alive.
    let carry = |old: u16| -> Option<u16> {
        let prev = prev?;
        let id = &prev.nodes.get(old as usize)?.id;
        nodes.iter().position(|x| &x.id == id).map(|i| i as u16)
    };
    let mut primary = vec![NO_NODE; SLOTS];
    // The replica each slot should have: a learner of `prev` is where its
    // replica is moving.
    let mut replica = vec![NO_NODE; SLOTS];
    if let Some(prev) = prev {
        for slot in 0..SLOTS {
            let p = prev.primary.get(slot).and_then(|&p| carry(p));
            let r = prev.replica.get(slot).and_then(|&r| carry(r));
            let l = carry(prev.learner_of(slot));
            match (p, r) {
                (Some(p), r) => {
                    primary[slot] = p;
                    replica[slot] = l.or(r).filter(|&r| r != p).unwrap_or(NO_NODE);
                }
                // The primary is gone: its replica takes over (it holds the
                // slot; a learner may not yet), the learner goes on filling.
                (None, Some(r)) => {
                    primary[slot] = r;
                    replica[slot] = l.unwrap_or(NO_NODE);
                }
                (None, None) => primary[slot] = l.unwrap_or(NO_NODE),
            }
        }
    }
    let serve = |slot: usize, i: usize| leads(slot, &nodes[i].id);
    balance_primaries(&mut primary, &mut replica, n, replication, &serve);
    let mut learner = vec![NO_NODE; SLOTS];
    if replication >= 2 && n >= 2 {
        place_replicas(&primary, &mut replica, &nodes);
        if let Some(prev) = prev {
            keep_copies(prev, &carry, &nodes, &primary, &mut replica, &mut learner, holds);
        }
    } else {
        replica.fill(NO_NODE);
    }
    let epoch = prev.map_or(1, |p| p.epoch + 1).max(min_epoch);
    SlotMap {
        epoch,
        seed: prev.map_or(0, |p| p.seed),
        replication: replication.clamp(1, 2),
        nodes,
        primary,
        replica,
        learner,
    }
}

/// Where a slot's replica moves to a node that does not hold it yet, the
/// node of `prev` that holds it (its replica, else its old primary, alive
/// and not the new primary) stays its replica, and the new one becomes its
/// learner: the slot keeps two full copies while the third is filled.
fn keep_copies(
    prev: &SlotMap,
    carry: &dyn Fn(u16) -> Option<u16>,
    nodes: &[NodeInfo],
    primary: &[u16],
    replica: &mut [u16],
    learner: &mut [u16],
    holds: &dyn Fn(usize, &str) -> bool,
) {
    for slot in 0..SLOTS {
        let want = replica[slot];
        if want == NO_NODE || holds(slot, &nodes[want as usize].id) {
            continue;
        }
        let keeper = [prev.replica[slot], prev.primary[slot]]
            .into_iter()
            .filter_map(carry)
            .find(|&k| k != primary[slot] && k != want && holds(slot, &nodes[k as usize].id));
        if let Some(k) = keeper {
            replica[slot] = k;
            learner[slot] = want;
        }
    }
}

/// How many times [`plan_settled`] re-plans at most.
pub const PLAN_ROUNDS: usize = 20;

/// [`plan`] from `from`, then again from its own result until nothing
/// moves (at most [`PLAN_ROUNDS`] times), so that one map write carries
/// the settled map. `holds` must judge against the map the nodes last
/// synced under, never against an intermediate plan: a replica placed by
/// this planning holds nothing yet, and so takes no primary in it.
pub fn plan_settled(
    from: Option<&SlotMap>,
    alive: &[NodeInfo],
    replication: u8,
    min_epoch: u64,
    holds: &dyn Fn(usize, &str) -> bool,
    leads: &dyn Fn(usize, &str) -> bool,
) -> SlotMap {
    let mut next = plan(from, alive, replication, min_epoch, holds, leads);
    for _ in 0..PLAN_ROUNDS {
        let mut again = plan(Some(&next), alive, replication, 0, holds, leads);
        again.epoch = next.epoch;
        if again.same_roles(&next) {
            break;
        }
        next = again;
    }
    next
}

/// How many slots node `i` of `n` should hold: an even share, the first
/// `SLOTS % n` nodes one more.
fn target(i: usize, n: usize) -> usize {
    SLOTS / n + usize::from(i < SLOTS % n)
}

/// Gives every slot a primary. A slot without one goes to its replica's
/// node (which holds its data), else to the node furthest under its share.
/// Then load moves by swapping roles, without a byte moved: a slot of a
/// node over its share whose replica holds its items (`holds`) changes
/// hands, directly to a node under its share or along a chain of such
/// swaps through other nodes (zones can make the direct swap impossible:
/// with zones a, b, a every slot has its copy on b). With one copy there is
/// no replica to swap with: slots move from nodes over their share to
/// nodes under it (their items are lost).
fn balance_primaries(
    primary: &mut [u16],
    replica: &mut [u16],
    n: usize,
    copies: u8,
    holds: &dyn Fn(usize, usize) -> bool,
) {
    let mut count = vec![0usize; n];
    for &p in primary.iter().filter(|&&p| p != NO_NODE) {
        count[p as usize] += 1;
    }
    let most_under = |count: &[usize]| {
        (0..n)
            .max_by_key(|&i| (target(i, n) as isize - count[i] as isize, std::cmp::Reverse(i)))
            .expect("at least one node")
    };
    for slot in 0..SLOTS {
        if primary[slot] != NO_NODE {
            continue;
        }
        let r = replica[slot];
        let to = if r != NO_NODE {
            r as usize
        } else {
            most_under(&count)
        };
        primary[slot] = to as u16;
        replica[slot] = NO_NODE;
        count[to] += 1;
    }
    // Role swaps along chains: from a node over its share, through nodes
    // at their share, to one under it. Each hop is a slot whose replica
    // holds its items; the nodes in between keep their count.
    let mut hops: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new(); n]; n];
    for slot in 0..SLOTS {
        let (p, r) = (primary[slot] as usize, replica[slot]);
        if r != NO_NODE && r as usize != p && holds(slot, r as usize) {
            hops[p][r as usize].push(slot);
        }
    }
    loop {
        let mut from = vec![usize::MAX; n];
        let mut seen: Vec<bool> = (0..n).map(|i| count[i] > target(i, n)).collect();
        let mut queue: std::collections::VecDeque<usize> = (0..n).filter(|&i| seen[i]).collect();
        let mut end = None;
        while let Some(x) = queue.pop_front() {
            if count[x] < target(x, n) {
                end = Some(x);
                break;
            }
            for y in 0..n {
                if !seen[y] && !hops[x][y].is_empty() {
                    seen[y] = true;
                    from[y] = x;
                    queue.push_back(y);
                }
            }
        }
        let Some(end) = end else {
            break;
        };
        let mut y = end;
        while from[y] != usize::MAX {
            let x = from[y];
            let slot = hops[x][y].pop().expect("a hop has a slot");
            primary[slot] = y as u16;
            replica[slot] = x as u16;
            y = x;
        }
        count[y] -= 1;
        count[end] += 1;
    }
    if copies >= 2 {
        return;
    }
    for slot in (0..SLOTS).rev() {
        let p = primary[slot] as usize;
        if count[p] > target(p, n) {
            let to = most_under(&count);
            if count[to] < target(to, n) {
                primary[slot] = to as u16;
                count[p] -= 1;
                count[to] += 1;
            }
        }
    }
}

/// Gives every slot a replica on another node, in another zone than its
/// primary's when one exists: replicas that fit stay, missing ones go to
/// the least loaded node that fits, and a replica moves only when that
/// strictly evens the load (so re-planning settles instead of churning).
fn place_replicas(primary: &[u16], replica: &mut [u16], nodes: &[NodeInfo]) {
    let n = nodes.len();
    let other_zone_exists = |p: usize| nodes.iter().any(|x| x.zone != nodes[p].zone);
    let fits = |p: usize, r: usize| r != p && (nodes[r].zone != nodes[p].zone || !other_zone_exists(p));
    let mut count = vec![0usize; n];
    for slot in 0..SLOTS {
        let (p, r) = (primary[slot] as usize, replica[slot]);
        if r != NO_NODE && fits(p, r as usize) {
            count[r as usize] += 1;
        } else {
            replica[slot] = NO_NODE;
        }
    }
    let least = |count: &[usize], p: usize| (0..n).filter(|&r| fits(p, r)).min_by_key(|&r| (count[r], r));
    for slot in 0..SLOTS {
        if replica[slot] == NO_NODE {
            if let Some(r) = least(&count, primary[slot] as usize) {
                replica[slot] = r as u16;
                count[r] += 1;
            }
        }
    }
    for slot in 0..SLOTS {
        let (p, r) = (primary[slot] as usize, replica[slot] as usize);
        if let Some(to) = least(&count, p) {
            if count[to] + 1 < count[r] {
                replica[slot] = to as u16;
                count[r] -= 1;
                count[to] += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::cluster::slots::test_node as node;

    /// The coordinator's rule: the slot's primary or replica may lead it.
    fn leads_in(prev: &SlotMap, slot: usize, id: &str) -> bool {
        let is = |i: u16| prev.nodes.get(i as usize).is_some_and(|n| n.id == id);
        is(prev.primary[slot]) || is(prev.replica[slot])
    }

    fn counts(map: &SlotMap) -> Vec<(usize, usize)> {
        (0..map.nodes.len()).map(|i| map.slot_counts(i)).collect()
    }

    #[test]
    fn three_nodes_in_two_zones() {
        let nodes = [node("a", "z1"), node("b", "z2"), node("c", "z1")];
        let map = plan(None, &nodes, 2, 0, &|_, _| true, &|_, _| true);
        map.check().unwrap();
        assert_eq!(map.epoch, 1);
        for (p, _) in counts(&map) {
            assert!((1365..=1366).contains(&p), "{p}");
        }
        for slot in 0..SLOTS {
            let (p, r) = (map.primary[slot] as usize, map.replica[slot] as usize);
            assert_ne!(map.nodes[p].zone, map.nodes[r].zone, "slot {slot}");
        }
    }

    #[test]
    fn a_lost_primary_hands_its_slots_to_their_replicas() {
        let nodes = [node("a", "z1"), node("b", "z2"), node("c", "z1")];
        let before = plan(None, &nodes, 2, 0, &|_, _| true, &|_, _| true);
        let after = plan(
            Some(&before),
            &[node("a", "z1"), node("b", "z2")],
            2,
            0,
            &|_, _| true,
            &|_, _| true,
        );
        after.check().unwrap();
        assert_eq!(after.epoch, 2);
        let c = before.index_of("c").unwrap() as u16;
        for slot in 0..SLOTS {
            if before.primary[slot] == c {
                let replica = &before.nodes[before.replica[slot] as usize].id;
                assert_eq!(
                    &after.nodes[after.primary[slot] as usize].id, replica,
                    "slot {slot}"
                );
            }
        }
    }

    #[test]
    fn a_joining_node_takes_primaries_once_it_serves_its_replicas() {
        let two = [node("a", "z1"), node("b", "z2")];
        let three = [node("a", "z1"), node("b", "z2"), node("c", "z1")];
        let first = plan(None, &two, 2, 0, &|_, _| true, &|_, _| true);
        let joined = plan(Some(&first), &three, 2, 0, &|_, id| id != "c", &|_, id| id != "c");
        joined.check().unwrap();
        let c = joined.index_of("c").unwrap();
        let (p, r) = joined.slot_counts(c);
        assert_eq!(p, 0, "not filled yet: no primaries");
        assert_eq!(r, 0, "not filled yet: no replica either");
        let l = joined.learner_count(c);
        assert!(l > 600, "slots to fill as learner: {l}");
        // Each slot c learns keeps its replica until c holds it.
        for slot in 0..SLOTS {
            if joined.learner_of(slot) as usize == c {
                assert_eq!(joined.replica[slot], first.replica[slot], "slot {slot}");
            }
        }
        // Zones bind the swaps: every slot keeps a copy on b (the only
        // node of z2), so c takes b's primaries, and b takes a's. Each
        // map swaps only onto copies the map before placed; within a few
        // maps the primaries are even.
        let mut m = joined;
        for _ in 0..6 {
            let prev = m.clone();
            m = plan_settled(
                Some(&prev),
                &three,
                2,
                0,
                &|slot, id| prev.has_copy(slot, id),
                &|slot, id| leads_in(&prev, slot, id),
            );
            m.check().unwrap();
            for slot in 0..SLOTS {
                let (was, now) = (
                    &prev.nodes[prev.primary[slot] as usize].id,
                    &m.nodes[m.primary[slot] as usize].id,
                );
                assert!(
                    was == now || &prev.nodes[prev.replica[slot] as usize].id == now,
                    "slot {slot} moved to {now}, which was not its replica (a learner lacks strong writes)"
                );
            }
        }
        for (p, _) in counts(&m) {
            assert!(
                (1365..=1366).contains(&p),
                "primaries once filled: {:?}",
                counts(&m)
            );
        }
    }

    #[test]
    fn in_one_zone_swaps_balance_a_grown_cluster() {
        let one = [node("a", "z")];
        let two = [node("a", "z"), node("b", "z")];
        let all = |_: usize, _: &str| true;
        let first = plan(None, &one, 2, 0, &all, &all);
        let grown = plan(Some(&first), &two, 2, 0, &all, &all);
        assert_eq!(counts(&grown), [(4096, 0), (0, 4096)], "b gets copies first");
        let balanced = plan(Some(&grown), &two, 2, 0, &all, &all);
        assert_eq!(counts(&balanced), [(2048, 2048), (2048, 2048)]);
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeInfo>> {
        proptest::collection::btree_map(0u8..12, 0u8..3, 1..8).prop_map(|m| {
            m.into_iter()
                .map(|(id, zone)| node(&format!("n{id:02}"), &format!("z{zone}")))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn maps_stay_valid_balanced_and_stable(
            first in arb_nodes(), second in arb_nodes(), replication in 1u8..=2
        ) {
            let all = |_: usize, _: &str| true;
            let a = plan(None, &first, replication, 0, &all, &all);
            prop_assert!(a.check().is_ok(), "{:?}", a.check());
            let b = plan(Some(&a), &second, replication, 0, &all, &all);
            prop_assert!(b.check().is_ok(), "{:?}", b.check());
            prop_assert!(b.epoch > a.epoch);
            let n = b.nodes.len();
            if replication == 1 || n == 1 {
                for (i, (p, _)) in counts(&b).into_iter().enumerate() {
                    prop_assert_eq!(p, target(i, n), "primaries of node {}", i);
                }
            }
            // Zones: a replica shares its primary's zone only when no
            // other zone has a node.
            for slot in 0..SLOTS {
                let r = b.replica[slot];
                if r != NO_NODE {
                    let p = &b.nodes[b.primary[slot] as usize];
                    let r = &b.nodes[r as usize];
                    let other = b.nodes.iter().any(|x| x.zone != p.zone);
                    prop_assert!(r.zone != p.zone || !other);
                }
            }
            // Re-planning with nothing changed settles within a few maps
            // (swaps need the replicas the previous map placed), then
            // nothing moves.
            let mut m = b.clone();
            let mut settled = false;
            let mut moves = Vec::new();
            for _ in 0..20 {
                let again = plan(Some(&m), &second, replication, 0, &all, &all);
                if again.primary == m.primary && again.replica == m.replica {
                    settled = true;
                    break;
                }
                let moved = |x: &[u16], y: &[u16]| x.iter().zip(y).filter(|(a, b)| a != b).count();
                moves.push((moved(&again.primary, &m.primary), moved(&again.replica, &m.replica)));
                m = again;
            }
            prop_assert!(settled, "no fixpoint within 20 plans: {:?}", moves);
            // Settled planning swaps a live primary's slot only onto a
            // node that held a copy of it in the map planned from.
            let s = plan_settled(
                Some(&a),
                &second,
                replication,
                0,
                &|slot, id| a.has_copy(slot, id),
                &|slot, id| leads_in(&a, slot, id),
            );
            prop_assert!(s.check().is_ok(), "{:?}", s.check());
            for slot in 0..SLOTS {
                let old_p = &a.nodes[a.primary[slot] as usize].id;
                let new_p = &s.nodes[s.primary[slot] as usize].id;
                if replication == 2 && s.index_of(old_p).is_some() && new_p != old_p {
                    prop_assert!(leads_in(&a, slot, new_p), "slot {} moved to {}, not its replica", slot, new_p);
                }
            }
            // Whatever moves, a slot that a live node held keeps such a
            // node as primary or replica (new copies come as learners).
            for slot in 0..SLOTS {
                let holders: Vec<&str> = second
                    .iter()
                    .map(|n| n.id.as_str())
                    .filter(|id| a.has_copy(slot, id))
                    .collect();
                if replication == 2 && !holders.is_empty() {
                    let p = s.nodes[s.primary[slot] as usize].id.as_str();
                    let r = (s.replica[slot] != NO_NODE).then(|| s.nodes[s.replica[slot] as usize].id.as_str());
                    prop_assert!(holders.contains(&p), "slot {}: primary {} held nothing", slot, p);
                    if holders.len() >= 2 {
                        prop_assert!(r.is_some_and(|r| holders.contains(&r)), "slot {}: a second copy was dropped", slot);
                    }
                }
            }
            // A slot whose primary lives on keeps it, or swaps roles
            // with its replica; a lost primary's slot goes to its replica.
            for slot in 0..SLOTS {
                let old_p = &a.nodes[a.primary[slot] as usize].id;
                let new_p = &b.nodes[b.primary[slot] as usize].id;
                let old_r = (a.replica[slot] != NO_NODE).then(|| &a.nodes[a.replica[slot] as usize].id);
                if replication == 2 && b.index_of(old_p).is_some() {
                    prop_assert!(new_p == old_p || Some(new_p) == old_r, "slot {}", slot);
                }
                if b.index_of(old_p).is_none() {
                    if let Some(r) = old_r.filter(|r| b.index_of(r).is_some()) {
                        prop_assert_eq!(new_p, r, "slot {} fails over to its replica", slot);
                    }
                }
            }
        }
    }
}
