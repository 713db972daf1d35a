//! The cuckoo index table against a model map, with hashes chosen to
//! collide (kicks, failed walks, growth and the stash all run), and its
//! memory per entry.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// A 64-bit mix (splitmix64's finalizer) standing in for a key hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Hashes of keys drawn from `tags` tag bytes (0 among them, which the
/// table maps to 1) and `homes` values of bits 0..32: few of each make many
/// keys share both buckets.
#[derive(Clone, Copy, Debug)]
struct Family {
    tags: u64,
    homes: u64,
}

impl Family {
    fn hash(self, key: u16) -> u64 {
        let k = u64::from(key);
        let tag = k % self.tags;
        let home = mix(k / self.tags % self.homes) & 0xFFFF_FFFF;
        (tag << 56) | (k << 32) | home
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u16),
    Remove(u16),
    Find(u16),
    Retain(u16),
    Clear,
}

fn op(keys: u16) -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..keys).prop_map(Op::Insert),
        4 => (0..keys).prop_map(Op::Remove),
        2 => (0..keys).prop_map(Op::Find),
        1 => (2..6u16).prop_map(Op::Retain),
        1 => Just(Op::Clear),
    ]
}

/// Table plus model: key -> id, and id -> key for the live ids.
struct Harness {
    family: Family,
    table: Table,
    model: HashMap<u16, u32>,
    live: HashMap<u32, u16>,
    next_id: u32,
}

impl Harness {
    fn new(family: Family) -> Harness {
        Harness {
            family,
            table: Table::new(),
            model: HashMap::new(),
            live: HashMap::new(),
            next_id: 0,
        }
    }

    /// Finds `key`, checking that `eq` only ever sees live ids of the
    /// same tag.
    fn find(&self, key: u16) -> Option<u32> {
        let hash = self.family.hash(key);
        self.table.find(hash, |id| {
            let other = *self.live.get(&id).expect("eq sees live ids only");
            assert_eq!(
                tag_of(self.family.hash(other)),
                tag_of(hash),
                "eq sees matching tags only"
            );
            other == key
        })
    }

    fn insert(&mut self, key: u16) {
        let id = self.next_id;
        self.next_id += 1;
        let hash = self.family.hash(key);
        let (family, live) = (self.family, &self.live);
        if let Some(slot) = self.table.find_mut(hash, |x| live[&x] == key) {
            let old = std::mem::replace(slot, id);
            assert_eq!(Some(old), self.model.insert(key, id));
            self.live.remove(&old);
        } else {
            assert!(!self.model.contains_key(&key));
            let before: Vec<u32> = self.table.iter().collect();
            let bytes = self.table.allocation_size();
            if !self.table.try_insert(hash, id) {
                let after: Vec<u32> = self.table.iter().collect();
                assert_eq!(before, after, "a refused try_insert changes nothing");
                assert_eq!(bytes, self.table.allocation_size());
                self.table.insert(hash, id, |x| family.hash(live[&x]));
            }
            self.model.insert(key, id);
        }
        self.live.insert(id, key);
    }

    fn apply(&mut self, op: &Op) {
        let bytes = self.table.allocation_size();
        match *op {
            Op::Insert(key) => return self.insert(key),
            Op::Remove(key) => {
                let live = &self.live;
                let got = self.table.remove(self.family.hash(key), |x| live[&x] == key);
                assert_eq!(got, self.model.remove(&key));
                if let Some(id) = got {
                    self.live.remove(&id);
                }
            }
            Op::Find(key) => assert_eq!(self.find(key), self.model.get(&key).copied()),
            Op::Retain(m) => {
                let live = &self.live;
                self.table.retain(|id| !live[&id].is_multiple_of(m));
                self.model.retain(|&k, _| !k.is_multiple_of(m));
                self.live.retain(|_, k| !k.is_multiple_of(m));
            }
            Op::Clear => {
                self.table.clear();
                self.model.clear();
                self.live.clear();
                assert_eq!(self.table.allocation_size(), 0);
                return;
            }
        }
        assert_eq!(
            bytes,
            self.table.allocation_size(),
            "only insert and clear allocate"
        );
    }

    fn check(&self, keys: u16) {
        assert_eq!(self.table.len(), self.model.len());
        for key in 0..keys {
            assert_eq!(self.find(key), self.model.get(&key).copied(), "key {key}");
        }
        let mut ids: Vec<u32> = self.table.iter().collect();
        let mut want: Vec<u32> = self.model.values().copied().collect();
        ids.sort_unstable();
        want.sort_unstable();
        assert_eq!(ids, want);
        let n = self.table.buckets.len();
        assert!(self.table.len() <= max_len(n));
    }
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![
        (1..4u64, 1..4u64).prop_map(|(tags, homes)| Family { tags, homes }),
        (1..8u64, 1..64u64).prop_map(|(tags, homes)| Family { tags, homes }),
        Just(Family {
            tags: 256,
            homes: 1 << 32
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random operations on keys whose hashes collide (few tags, few home
    /// buckets): after each, the table holds exactly the model's entries.
    #[test]
    fn table_matches_a_model_map(family in family(), ops in prop::collection::vec(op(200), 1..400)) {
        let mut h = Harness::new(family);
        for op in &ops {
            h.apply(op);
            h.check(200);
        }
    }
}

#[test]
fn alternate_bucket_is_an_involution() {
    for n in 1..300 {
        for tag in 1..=255u8 {
            for b in 0..n {
                let a = alt_of(b, tag, n);
                assert!(a < n);
                assert_eq!(alt_of(a, tag, n), b, "n {n} tag {tag} b {b}");
            }
        }
    }
}

#[test]
fn a_bucket_is_one_cache_line() {
    assert_eq!(std::mem::size_of::<Bucket>(), 64);
    assert_eq!(std::mem::align_of::<Bucket>(), 64);
}

#[test]
fn tag_match_is_exact() {
    let mut bucket = Bucket::EMPTY;
    bucket.tags = [1, 0, 2, 1, 255, 0x80, 0x81, 1, 0, 7, 0x80, 1];
    bucket.ids = [u32::MAX; SLOTS];
    for tag in 0..=255u8 {
        let m = bucket.matches(tag);
        for (i, &t) in bucket.tags.iter().enumerate() {
            assert_eq!(m >> (8 * i + 7) & 1 == 1, t == tag, "tag {tag} slot {i}");
        }
        assert_eq!(m & !0x8080_8080_8080_8080_8080_8080, 0, "no bit past the tags");
    }
}

/// Inserts keys of a colliding family one by one, checking every key after
/// each insert: growth (with walks failing on the way) and the stash never
/// lose an entry.
fn load_family(family: Family, keys: u16) -> Harness {
    let mut h = Harness::new(family);
    for key in 0..keys {
        h.insert(key);
        h.check(key + 1);
    }
    h
}

#[test]
fn growth_never_loses_entries_when_walks_fail() {
    for tags in 1..5 {
        for homes in 1..9 {
            load_family(Family { tags, homes }, 300);
        }
    }
    // One tag, one home: at most two buckets' worth fit, the
    // rest are stashed, and the table grows with the entries only (not
    // once per failed walk).
    let h = load_family(Family { tags: 1, homes: 1 }, 300);
    assert!(h.table.stash.as_ref().is_some_and(|s| s.len() >= 300 - 2 * SLOTS));
    assert!(
        h.table.buckets.len() * SLOTS <= 2 * 300,
        "{} buckets",
        h.table.buckets.len()
    );
}

/// Bytes of the allocations per entry, over `tables`.
fn bytes_per_entry(tables: &[Table]) -> f64 {
    let bytes: usize = tables.iter().map(Table::allocation_size).sum();
    let len: usize = tables.iter().map(Table::len).sum();
    bytes as f64 / len as f64
}

#[test]
fn a_million_entries_over_the_store_subtables_take_under_6_8_bytes_each() {
    use super::super::{subtable_of, table_hash, SUBTABLES};
    let mut tables: Vec<Table> = (0..SUBTABLES).map(|_| Table::new()).collect();
    for step in 1..=4u64 {
        for i in (step - 1) * 250_000..step * 250_000 {
            let hash = mix(i);
            tables[subtable_of(hash)].insert(table_hash(hash), i as u32, |id| table_hash(mix(u64::from(id))));
        }
        let per_entry = bytes_per_entry(&tables);
        let fixed = (SUBTABLES * size_of::<Table>()) as f64 / (step * 250_000) as f64;
        println!(
            "{} entries: {per_entry:.3} bytes per entry (+{fixed:.3} of table headers)",
            step * 250_000
        );
        assert!(per_entry <= 6.8, "{per_entry}");
    }
    assert!(tables.iter().all(|t| t.stash.is_none()));
}

#[test]
fn one_table_averages_under_6_3_bytes_per_entry_over_its_growth() {
    let mut table = Table::new();
    let (mut sum, mut samples, mut worst) = (0.0, 0, 0.0f64);
    for i in 0..100_000u64 {
        table.insert(mix(i), i as u32, |id| mix(u64::from(id)));
        if i >= 10_000 && i.is_multiple_of(100) {
            let per_entry = bytes_per_entry(std::slice::from_ref(&table));
            sum += per_entry;
            samples += 1;
            worst = worst.max(per_entry);
        }
    }
    let mean = sum / f64::from(samples);
    println!("one table, 10k..100k entries: {mean:.3} bytes per entry on average, {worst:.3} at worst");
    assert!(mean <= 6.3, "{mean}");
    assert!(worst <= 7.0, "{worst}");
}

#[test]
fn kick_failures_are_rare_at_the_max_load() {
    // Tables of the sizes the store's sub-tables have, filled with random
    // hashes: count the inserts refused below the max load (a walk found
    // no room) among all inserts.
    let (mut inserts, mut failures) = (0u64, 0u64);
    for t in 0..2_000u64 {
        let mut table = Table::new();
        let count = 100 + t % 1_500;
        for i in 0..count {
            let key = t << 32 | i;
            let hash = mix(key);
            let n = table.buckets.len();
            let room = n > 0 && table.len() < max_len(n);
            if !table.try_insert(hash, key as u32) {
                failures += u64::from(room);
                table.insert(hash, key as u32, |id| mix(t << 32 | u64::from(id)));
            }
            inserts += 1;
        }
    }
    let rate = failures as f64 / inserts as f64;
    println!("{failures} walks failed in {inserts} inserts ({rate:.2e})");
    assert!(rate < 1e-3, "{rate}");
}
