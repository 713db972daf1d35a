//! Memory limits of the real server: RSS stays bounded while writing far
//! more than `--max-memory`, and LRU keeps serving while it evicts.

mod common;

use common::*;
use dnd_cache::proto::CacheOperation;

/// The stated fixed baseline: executable, thread stacks, io_uring rings and
/// glommio's registered buffers, allocator arenas.
const BASELINE_BYTES: usize = 48 << 20;

#[test]
fn rss_stays_within_max_memory_while_writing_three_times_as_much() {
    let server = TestServer::start(&["--shards", "2", "--max-memory", "64MiB"]);
    let mut c = server.connect();
    // 192 MiB of 1 KiB values, then 100-byte values: both size classes.
    let written = write_many(&mut c, "big", 3 * 64 * 1024, 1024);
    assert_eq!(written, 3 * 64 * 1024, "LRU makes room for every write");
    write_many(&mut c, "small", 200_000, 100);
    let rss = rss_bytes(server.child.id());
    let limit = 64 * 1024 * 1024 * 11 / 10 + BASELINE_BYTES;
    assert!(rss <= limit, "RSS {} MiB over {} MiB", rss >> 20, limit >> 20);
    let stats = stats(&mut c);
    assert!(stats["total"]["evictions"].as_u64().unwrap() > 100_000);
    assert!(stats["total"]["memory_used_bytes"].as_u64().unwrap() <= 64 << 20);
    // Recent writes are readable.
    let got = c.call(&get(b"small:199999"));
    assert_eq!(got.status, 0);
    assert_eq!(got.data.len(), 100);
}

#[test]
fn noeviction_answers_cache_003_and_keeps_every_earlier_item() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--max-memory",
        "8MiB",
        "--eviction",
        "noeviction",
    ]);
    let mut c = server.connect();
    let stored = write_many(&mut c, "k", 100_000, 200);
    assert!(stored > 10_000 && stored < 100_000, "{stored}");
    let refused = c.call(&set(b"one-more", &[1; 200], 0));
    assert_eq!(refused.status, dnd_cache::Status::StorageFull as u32);
    let keys: Vec<Vec<u8>> = (0..stored).map(|i| format!("k:{i}").into_bytes()).collect();
    for chunk in keys.chunks(5_000) {
        let answer = c.call(&keys_op("get_many", chunk));
        assert!(answer.items.iter().all(|i| i.status == 0 && i.data.len() == 200));
    }
    assert_eq!(stats(&mut c)["total"]["evictions"], 0);
}

#[test]
fn stats_report_memory_per_shard_and_per_class() {
    let server = TestServer::start(&["--shards", "2", "--max-memory", "32MiB"]);
    let mut c = server.connect();
    write_many(&mut c, "x", 10_000, 100);
    let s = stats(&mut c);
    for shard in s["shards"].as_array().unwrap() {
        assert_eq!(shard["memory_limit_bytes"], 16 << 20);
        assert!(shard["memory_used_bytes"].as_u64().unwrap() > 0);
        assert!(shard["memory_index_bytes"].as_u64().unwrap() > 0);
        let classes = shard["slab_classes"].as_array().unwrap();
        assert!(classes.iter().any(|cl| cl["items"].as_u64().unwrap() > 1000));
        let overhead = shard["overhead_per_item_bytes"].as_f64().unwrap();
        assert!(overhead > 0.0);
    }
    assert_eq!(s["total"]["items"], 10_000);
    let _ = CacheOperation::default();
}

#[test]
fn mixed_value_sizes_in_a_small_shard_lose_nothing() {
    // 200 keys of 10 to 200-byte values touch about 50 size classes: a
    // 32 MiB shard must hold them all without evicting anything.
    let server = TestServer::start(&["--shards", "2", "--max-memory", "64MiB"]);
    let mut c = server.connect();
    let value_of = |i: usize| vec![(i % 251) as u8; 10 + (i * 37) % 191];
    for round in 0..10 {
        for i in 0..200 {
            let answer = c.call(&set(format!("mixed:{i}").as_bytes(), &value_of(i + round), 0));
            assert_eq!(answer.status, 0);
        }
    }
    for i in 0..200 {
        let got = c.call(&get(format!("mixed:{i}").as_bytes()));
        assert_eq!(got.status, 0, "mixed:{i} lost");
        assert_eq!(got.data.to_vec(), value_of(i + 9));
    }
    assert_eq!(stats(&mut c)["total"]["evictions"], 0);
}

#[test]
fn after_filling_with_small_values_10_kib_values_take_over() {
    let server = TestServer::start(&["--shards", "1", "--max-memory", "128MiB"]);
    let mut c = server.connect();
    // Fill memory with 100-byte values until eviction starts.
    let mut n = 0;
    loop {
        write_many(&mut c, &format!("small{n}"), 100_000, 100);
        n += 1;
        if stats(&mut c)["total"]["evictions"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(n < 20, "128 MiB never filled");
    }
    // A working set of 10 KiB values, half of memory, written a few times.
    let working_set = 64 * 1024 / 10;
    let mut hit_rate = 0.0;
    for _round in 0..8 {
        write_many(&mut c, "big", working_set, 10 * 1024);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let keys: Vec<Vec<u8>> = (0..working_set)
            .map(|i| format!("big:{i}").into_bytes())
            .collect();
        let mut hits = 0;
        for chunk in keys.chunks(1000) {
            let answer = c.call(&keys_op("get_many", chunk));
            hits += answer
                .items
                .iter()
                .filter(|i| i.status == 0 && i.data.len() == 10 * 1024)
                .count();
        }
        hit_rate = hits as f64 / working_set as f64;
        if hit_rate > 0.95 {
            break;
        }
    }
    assert!(
        hit_rate > 0.95,
        "the hit rate of the new workload recovers: {hit_rate}"
    );
    let s = stats(&mut c);
    assert!(s["total"]["evictions"].as_u64().unwrap() > 0);
}
