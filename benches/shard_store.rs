//! A shard's get/set path without the network: the store with 1 million
//! keys (16-24 byte keys, 100-byte values), and the full execute path
//! (decode → store → encode) the connection runs for a local key.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dnd_cache::key::key_hash;
use dnd_cache::ops::OpKind;
use dnd_cache::protocol::binary::decode_operation;
use dnd_cache::shard::store::{EvictionPolicy, Lookup, Store, StoreConfig, READ_SPAN};
use dnd_cache::shard::{Shard, ShardLimits};
use prost::Message;
use std::hint::black_box;

const KEYS: usize = 1_000_000;
const SEED: u64 = 42;

fn config() -> StoreConfig {
    StoreConfig {
        seed: SEED,
        memory_limit_bytes: 1 << 30,
        max_item_bytes: 1 << 20,
        default_ttl_s: 0,
        eviction: EvictionPolicy::Lru,
    }
}

fn key(i: usize) -> String {
    format!("character:{i:08}")
}

fn store_ops(c: &mut Criterion) {
    let mut store = Store::new(config());
    let value = [7u8; 100];
    for i in 0..KEYS {
        let k = key(i);
        store
            .set(key_hash(k.as_bytes(), SEED), k.as_bytes(), &value, 0, 1)
            .unwrap();
    }
    let keys: Vec<(u64, String)> = (0..4096)
        .map(|i| key(i * 241 % KEYS))
        .map(|k| (key_hash(k.as_bytes(), SEED), k))
        .collect();
    let mut g = c.benchmark_group("store_1m_keys");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let (h, k) = &keys[i];
            match store.get(*h, k.as_bytes(), 2) {
                Lookup::Hit(item) => item.value().len(),
                _ => 0,
            }
        })
    });
    g.bench_function("set_replace", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let (h, k) = &keys[i];
            store
                .set(*h, k.as_bytes(), black_box(&value), 0, 3)
                .unwrap()
                .version
        })
    });
    g.finish();

    // A read cycle's worth of lookups on keys not touched lately (a
    // quarter-million-key rotation: past the CPU caches), one after another
    // against warmed first (src/server/connection.rs `warm_lookups`). Their
    // ratio is the point.
    let cold: Vec<(u64, String)> = (0..1usize << 18)
        .map(|i| key(i.wrapping_mul(2_654_435_761) % KEYS))
        .map(|k| (key_hash(k.as_bytes(), SEED), k))
        .collect();
    let mut g = c.benchmark_group("store_1m_keys_cycle_of_16");
    g.throughput(Throughput::Elements(16));
    let mut at = 0;
    g.bench_function("one_by_one", |b| {
        b.iter(|| {
            at = (at + 16) & ((1 << 18) - 1);
            let mut found = 0;
            for (h, k) in &cold[at..at + 16] {
                if let Lookup::Hit(item) = store.get(*h, k.as_bytes(), 2) {
                    found += item.value().len();
                }
            }
            found
        })
    });
    g.bench_function("warmed_first", |b| {
        b.iter(|| {
            at = (at + 16) & ((1 << 18) - 1);
            let batch = &cold[at..at + 16];
            for (h, _) in batch {
                store.prefetch_index(*h);
            }
            for (h, _) in batch {
                store.prefetch_records(*h, READ_SPAN);
            }
            let mut found = 0;
            for (h, k) in batch {
                if let Lookup::Hit(item) = store.get(*h, k.as_bytes(), 2) {
                    found += item.value().len();
                }
            }
            found
        })
    });
    g.finish();
}

fn execute_path(c: &mut Criterion) {
    let shard = Shard::new(
        0,
        1,
        ShardLimits {
            max_frame_bytes: 16 << 20,
            max_item_bytes: 1 << 20,
        },
        config(),
    );
    let set = dnd_cache::proto::CacheOperation {
        operation: "set".into(),
        key: key(1).into_bytes().into(),
        value: vec![7u8; 100].into(),
        ..Default::default()
    }
    .encode_to_vec();
    let get = dnd_cache::proto::CacheOperation {
        operation: "get".into(),
        key: key(1).into_bytes().into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("execute");
    g.throughput(Throughput::Elements(1));
    for (name, body) in [("set_100b", &set), ("get_hit_100b", &get)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let op = decode_operation(black_box(body)).unwrap();
                let kind = OpKind::parse(op.operation).unwrap();
                shard.execute_local(&op, kind, 5, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, store_ops, execute_path);
criterion_main!(benches);
