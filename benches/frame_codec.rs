//! Frame encode/decode: the hand-written zero-copy codec of the hot path,
//! next to prost's generated code for the same messages (the ratio is the
//! point, not the absolute numbers).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dnd_cache::proto;
use dnd_cache::protocol::binary::{decode_operation, Meta, ResponseEncoder};
use dnd_cache::Status;
use prost::Message;
use std::hint::black_box;

fn get_request() -> Vec<u8> {
    proto::CacheOperation {
        operation: "get".into(),
        key: Bytes::from_static(b"character:00001234"),
        correlation_id: "req-42".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn set_request() -> Vec<u8> {
    proto::CacheOperation {
        operation: "set".into(),
        key: Bytes::from_static(b"character:00001234"),
        value: Bytes::from(vec![7u8; 100]),
        ttl: 3600,
        ..Default::default()
    }
    .encode_to_vec()
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, body) in [("get", get_request()), ("set_100b", set_request())] {
        g.bench_function(format!("ours/{name}"), |b| {
            b.iter(|| decode_operation(black_box(&body)).unwrap().key.len())
        });
        let bytes = Bytes::from(body.clone());
        g.bench_function(format!("prost/{name}"), |b| {
            b.iter(|| {
                proto::CacheOperation::decode(black_box(bytes.clone()))
                    .unwrap()
                    .key
                    .len()
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_response");
    g.throughput(Throughput::Elements(1));
    let value = vec![7u8; 100];
    let meta = Meta {
        created_at_ms: 1_764_000_000_000,
        expires_at_ms: 1_764_003_600_000,
        version: 1_764_000_000_000_123,
    };
    let mut out = Vec::with_capacity(4096);
    g.bench_function("ours/hit_100b", |b| {
        b.iter(|| {
            out.clear();
            ResponseEncoder::simple(&mut out, Status::Ok, black_box(&value), Some(&meta), b"");
            out.len()
        })
    });
    g.bench_function("ours/miss", |b| {
        b.iter(|| {
            out.clear();
            ResponseEncoder::simple(&mut out, Status::NotFound, b"", None, b"");
            out.len()
        })
    });
    let resp = proto::CacheResponse {
        status: 0,
        data: Bytes::from(value.clone()),
        metadata: Some(proto::Metadata {
            created_at: meta.created_at_ms,
            expires_at: meta.expires_at_ms,
            version: meta.version,
        }),
        ..Default::default()
    };
    g.bench_function("prost/hit_100b", |b| {
        b.iter(|| {
            out.clear();
            black_box(&resp).encode(&mut out).unwrap();
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
