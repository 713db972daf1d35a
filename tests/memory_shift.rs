//! Memory follows the value size: after a server fills with 100-byte
//! values, larger values written next are held at once (issue #16), and
//! RSS stays within `--max-memory` plus the stated baseline.

mod common;

use common::*;

/// The stated fixed baseline (see tests/memory.rs).
const BASELINE_BYTES: usize = 48 << 20;

/// How many of `prefix:from..to` are held with a `value_len`-byte value.
fn held(c: &mut Raw, prefix: &str, from: usize, to: usize, value_len: usize) -> usize {
    let keys: Vec<Vec<u8>> = (from..to).map(|i| format!("{prefix}:{i}").into_bytes()).collect();
    keys.chunks(250)
        .map(|chunk| {
            c.call(&keys_op("get_many", chunk))
                .items
                .iter()
                .filter(|i| i.status == 0 && i.data.len() == value_len)
                .count()
        })
        .sum()
}

#[test]
fn after_100_byte_values_fill_64_mib_the_last_500_10_kib_values_are_held() {
    let server = TestServer::start(&["--shards", "2", "--max-memory", "64MiB"]);
    let mut c = server.connect();
    let mut round = 0;
    while stats(&mut c)["total"]["evictions"].as_u64().unwrap() == 0 {
        assert_eq!(
            write_many(&mut c, &format!("small{round}"), 100_000, 100),
            100_000
        );
        round += 1;
        assert!(round < 20, "64 MiB never filled");
    }
    // Half the memory in 10 KiB values: 3,276 of them.
    let count = (64 << 20) / 2 / 10240;
    assert_eq!(
        write_many(&mut c, "big", count, 10240),
        count,
        "every write answered OK"
    );
    let kept = held(&mut c, "big", count - 500, count, 10240);
    assert!(kept >= 475, "{kept} of the last 500 held (goal 95%)");
    let s = stats(&mut c);
    assert!(s["total"]["memory_used_bytes"].as_u64().unwrap() <= 64 << 20);
    let rss = rss_bytes(server.child.id());
    assert!(rss <= (64 << 20) + BASELINE_BYTES, "RSS {} MiB", rss >> 20);
}

#[test]
fn read_small_values_survive_a_stream_of_large_writes() {
    let server = TestServer::start(&["--shards", "1", "--max-memory", "32MiB"]);
    let mut c = server.connect();
    // 2,000 small values read often, then 64 MiB of 300 KiB values.
    assert_eq!(write_many(&mut c, "hot", 2000, 100), 2000);
    for round in 0..8 {
        assert_eq!(held(&mut c, "hot", 0, 2000, 100), 2000, "round {round}");
        assert_eq!(write_many(&mut c, &format!("large{round}"), 28, 300 * 1024), 28);
    }
    assert_eq!(
        held(&mut c, "large7", 0, 28, 300 * 1024),
        28,
        "the latest large values are held"
    );
    assert!(stats(&mut c)["total"]["evictions"].as_u64().unwrap() > 100);
}
