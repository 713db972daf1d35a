//! Does a shard's index stall requests while it grows? Loads 10 million
//! keys into one store and reports the slowest single insert (the issue's
//! goal: none above 1 ms) and the tail of the insert-time distribution.
//!
//!     cargo bench --bench index_growth
//!
//! Under `cargo test` (no `--bench` argument) it loads 100,000 keys only.

use std::time::Instant;

use dnd_cache::key::key_hash;
use dnd_cache::shard::store::{EvictionPolicy, Store, StoreConfig};
use hdrhistogram::Histogram;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let keys: u64 = if full { 10_000_000 } else { 100_000 };
    let mut store = Store::new(StoreConfig {
        seed: 1,
        memory_limit_bytes: 8 << 30,
        max_item_bytes: 1 << 20,
        default_ttl_s: 0,
        eviction: EvictionPolicy::Lru,
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let value = [7u8; 32];
    let mut key = Vec::with_capacity(32);
    let started = Instant::now();
    for i in 0..keys {
        key.clear();
        key.extend_from_slice(format!("character:{i:012}").as_bytes());
        let hash = key_hash(&key, 1);
        let (index_before, pages_before) = (store.index_bytes(), store.slab().live_pages());
        let t = Instant::now();
        store.set(hash, &key, &value, 0, 1).unwrap();
        let took = t.elapsed().as_nanos() as u64;
        hist.record(took).unwrap();
        if took > 500_000 && std::env::var("INDEX_GROWTH_TRACE").is_ok() {
            println!(
                "  slow insert {i}: {took} ns, index +{} B, pages +{}",
                store.index_bytes() - index_before,
                store.slab().live_pages() - pages_before
            );
        }
    }
    let total = started.elapsed();
    println!(
        "index_growth: {keys} keys in {:.2} s, index {} MiB",
        total.as_secs_f64(),
        store.index_bytes() >> 20
    );
    for q in [0.5, 0.99, 0.9999, 0.999999] {
        println!("  p{:<8} {:>10} ns", q * 100.0, hist.value_at_quantile(q));
    }
    println!("  max       {:>10} ns  (goal: under 1,000,000 ns)", hist.max());
}
