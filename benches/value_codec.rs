//! The cost of compression and encryption at rest: a shard's full execute
//! path (decode → codec → store → codec → encode) for `set` then `get` of
//! 1 KiB values, codec off vs lz4 vs XChaCha20-Poly1305 vs both. The ratio
//! is in docs/security.md.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dnd_cache::codec::{CodecSettings, CompressionMode, EncryptionKey, ValueCodec};
use dnd_cache::ops::OpKind;
use dnd_cache::proto::{CacheOperation, Options};
use dnd_cache::protocol::binary::decode_operation;
use dnd_cache::shard::store::{EvictionPolicy, StoreConfig};
use dnd_cache::shard::{Shard, ShardLimits};
use prost::Message;

const KEYS: usize = 1024;

/// A 1 KiB JSON document like the services store (compresses about 3:1).
fn value(i: usize) -> Vec<u8> {
    let mut doc = format!(
        r#"{{"id":{i},"name":"character {i}","class":"ranger","level":{},"stats":{{"str":12,"dex":17,"con":14,"int":10,"wis":15,"cha":8}},"inventory":["#,
        i % 20
    );
    let mut n = 0;
    while doc.len() < 1000 {
        doc.push_str(&format!(r#"{{"item":"arrow","qty":{n}}},"#));
        n += 1;
    }
    let mut bytes = doc.into_bytes();
    bytes.resize(1024, b' ');
    bytes
}

fn shard(compression: CompressionMode, key: bool) -> Shard {
    let limits = ShardLimits {
        max_frame_bytes: 16 << 20,
        max_item_bytes: 1 << 20,
    };
    let store = StoreConfig {
        seed: 42,
        memory_limit_bytes: 256 << 20,
        max_item_bytes: 1 << 20,
        default_ttl_s: 0,
        eviction: EvictionPolicy::Lru,
    };
    let settings = CodecSettings {
        key: key.then(|| Arc::new(EncryptionKey::from_bytes([1; 32]))),
        encrypt_prefixes: Vec::new(),
        compression,
        compression_threshold: 512,
    };
    Shard::new(0, 1, limits, store).with_codec(ValueCodec::new(&settings, 1 << 20))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("set_get_1KiB");
    g.throughput(Throughput::Elements(2));
    for (name, compression, encryption) in [
        ("codec_off", false, false),
        ("lz4", true, false),
        ("xchacha20poly1305", false, true),
        ("lz4_then_xchacha20poly1305", true, true),
    ] {
        let shard = shard(CompressionMode::Requested, encryption);
        let frames: Vec<(Vec<u8>, Vec<u8>)> = (0..KEYS)
            .map(|i| {
                let key = format!("character:{i:08}").into_bytes();
                let set = CacheOperation {
                    operation: "set".into(),
                    key: key.clone().into(),
                    value: value(i).into(),
                    options: Some(Options {
                        compression,
                        encryption,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let get = CacheOperation {
                    operation: "get".into(),
                    key: key.into(),
                    ..Default::default()
                };
                (set.encode_to_vec(), get.encode_to_vec())
            })
            .collect();
        let mut out = Vec::with_capacity(8192);
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let (set, get) = &frames[i];
                out.clear();
                let op = decode_operation(set).unwrap();
                shard.execute_local(&op, OpKind::Set, 1_000, &mut out);
                let op = decode_operation(get).unwrap();
                shard.execute_local(&op, OpKind::Get, 2_000, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
