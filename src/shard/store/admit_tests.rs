//! Admission of large values written after a miss: it acts only while
//! eviction finds read records (docs/memory.md, "Admission").

use super::admit::HOT_SHARE;
use super::*;

const SEED: u64 = 7;

fn lru(limit: usize) -> Store {
    Store::new(StoreConfig {
        seed: SEED,
        memory_limit_bytes: limit,
        max_item_bytes: 1 << 20,
        default_ttl_s: 0,
        eviction: EvictionPolicy::Lru,
    })
}

fn put(s: &mut Store, key: &str, value: &[u8]) {
    s.set(key_hash(key.as_bytes(), SEED), key.as_bytes(), value, 0, 1_000)
        .unwrap();
}

fn held(s: &mut Store, key: &str) -> bool {
    matches!(
        s.get(key_hash(key.as_bytes(), SEED), key.as_bytes(), 2_000),
        Lookup::Hit(_)
    )
}

/// A working set of small items read over and over, and new small items
/// written (and read right after) beside it, until eviction has gone round
/// the store several times: the cache is hot, and stays so under the same
/// traffic.
fn hot() -> Store {
    let mut s = lru(4 << 20);
    for i in 0..WORKING_SET {
        put(&mut s, &format!("ws:{i}"), &[1; 100]);
    }
    for round in 0..400 {
        small_traffic(&mut s, "warm", round);
    }
    assert!(s.stats.evictions > 0, "the small items filled the store");
    assert!(s.read_share >= HOT_SHARE, "hot: {}", s.read_share);
    s
}

const WORKING_SET: usize = 10_000;

/// 200 new small values, each read three times after its write, and 200
/// reads of the working set (written again when it was evicted).
fn small_traffic(s: &mut Store, prefix: &str, round: usize) {
    for j in 0..200 {
        let small = format!("{prefix}:{round}:{j}");
        put(s, &small, &[1; 100]);
        for _ in 0..3 {
            let _ = held(s, &small);
        }
        let ws = format!("ws:{}", (round * 200 + j) % WORKING_SET);
        if !held(s, &ws) {
            put(s, &ws, &[1; 100]);
        }
    }
}

/// Writes `n` new 20,000-byte values, each after a miss of its key (as a
/// read-through client does), with small values written and read between
/// them when `hot_traffic`; how many are held.
fn read_through(s: &mut Store, n: usize, hot_traffic: bool) -> usize {
    (0..n)
        .filter(|&i| {
            let key = format!("large:{i}");
            assert!(!held(s, &key));
            put(s, &key, &[2; 20_000]);
            let stored = held(s, &key);
            // Small values go on being written and read meanwhile.
            if hot_traffic {
                small_traffic(s, "small", i);
            }
            stored
        })
        .count()
}

#[test]
fn a_cold_cache_stores_large_values_at_once() {
    let mut s = lru(4 << 20);
    for i in 0..60_000 {
        put(&mut s, &format!("small:{i}"), &[1; 100]);
    }
    assert!(s.stats.evictions > 0);
    assert_eq!(read_through(&mut s, 100, false), 100);
    assert_eq!(s.stats.admissions_declined, 0);
}

#[test]
fn a_hot_cache_stores_large_values_written_after_a_miss_by_their_size() {
    let mut s = hot();
    // Stored with probability 2 × 4096 / 20,019 (0.41).
    let stored = read_through(&mut s, 100, true);
    assert!((20..70).contains(&stored), "{stored} of 100");
    assert!(s.read_share >= HOT_SHARE, "still hot: {}", s.read_share);
    assert_eq!(s.stats.admissions_declined, 100 - stored as u64);
    // No miss before: stored at once (a service storing what it made).
    // (The miss filter is a bit per hashed key: a key may share its bit
    // with one that missed.)
    let declined = s.stats.admissions_declined;
    let made: Vec<usize> = (0..100)
        .filter(|i| {
            put(&mut s, &format!("made:{i}"), &[2; 20_000]);
            held(&mut s, &format!("made:{i}"))
        })
        .collect();
    assert!(made.len() >= 95, "{} of 100", made.len());
    let declined = s.stats.admissions_declined - declined;
    assert_eq!(declined, 100 - made.len() as u64);
    // Small values after a miss, and replaced keys, likewise.
    assert!(!held(&mut s, "small:new"));
    put(&mut s, "small:new", &[1; 100]);
    assert!(held(&mut s, "small:new"));
    let replaced = format!("made:{}", made[0]);
    put(&mut s, &replaced, &[3; 30_000]);
    assert!(held(&mut s, &replaced));
    assert_eq!(s.stats.admissions_declined, 100 - stored as u64 + declined);
}

#[test]
fn admission_off_stores_every_write() {
    let mut s = hot();
    s.set_admission(false);
    assert_eq!(read_through(&mut s, 100, true), 100);
    assert_eq!(s.stats.admissions_declined, 0);
}
