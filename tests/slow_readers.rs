//! Slow readers (issue 16, item 5; docs/memory.md, "Answers waiting for
//! slow readers"): clients that pipeline requests for a large value and
//! never read the answers hold a bounded amount of server memory, counted
//! in the stats and metrics; other clients are served meanwhile; the
//! stalled connections are closed after `--output-stall-timeout`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::HttpConn;
use common::*;

const VALUE_BYTES: usize = 512 * 1024;
const HOSTILE_CONNECTIONS: usize = 10;
/// The bound of issue 16 for the ten connections together.
const MAX_RSS_GROWTH: usize = 100 << 20;
const STALL_SECS: u64 = 6;
/// How long the hostile clients keep writing (and RSS is sampled): less
/// than the stall deadline, so every connection is still open.
const PRESSURE: Duration = Duration::from_secs(3);

fn start_server() -> TestServer {
    let stall = STALL_SECS.to_string();
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--max-memory",
        "256MiB",
        "--output-stall-timeout",
        &stall,
    ]);
    let mut c = server.connect();
    assert_eq!(c.call(&set(b"big", &value(), 0)).status, 0);
    server
}

fn value() -> Vec<u8> {
    (0..VALUE_BYTES).map(|i| (i % 251) as u8).collect()
}

/// Writes `requests` on every connection, as much as the sockets take,
/// for `PRESSURE`, never reading; returns the peak RSS seen meanwhile.
fn press(server: &TestServer, conns: &mut [TcpStream], requests: &[u8]) -> usize {
    for s in conns.iter() {
        s.set_nonblocking(true).unwrap();
    }
    let pid = server.child.id();
    let mut peak = 0;
    let start = Instant::now();
    while start.elapsed() < PRESSURE {
        for s in conns.iter_mut() {
            let _ = s.write(requests);
        }
        peak = peak.max(rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// A well-behaved binary client gets the whole value, in time.
fn binary_client_is_served(server: &TestServer) {
    let mut c = server.connect();
    for _ in 0..3 {
        let started = Instant::now();
        let got = c.call(&get(b"big"));
        assert_eq!(got.status, 0);
        assert!(got.data == value(), "the value, whole");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}

/// Sum of a metric's samples over its label sets.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(server: &TestServer) -> String {
    let mut http = HttpConn::open(server.http);
    let resp = http.get("/health/metrics");
    assert_eq!(resp.status, 200);
    resp.text()
}

/// While the hostile connections wait: each is paused, and what they hold
/// shows in the stats and in `cache_memory_usage{type="output"}`.
fn paused_connections_are_counted(server: &TestServer) {
    let stats = stats(&mut server.connect());
    let total = &stats["total"];
    assert_eq!(
        total["output_paused_connections"], HOSTILE_CONNECTIONS as u64,
        "{total}"
    );
    let held = total["output_bytes"].as_u64().unwrap();
    assert!(held >= (HOSTILE_CONNECTIONS * VALUE_BYTES) as u64, "{held}");
    let text = scrape(server);
    assert_eq!(
        metric(&text, "cache_output_paused_connections", ""),
        HOSTILE_CONNECTIONS as f64
    );
    assert!(metric(&text, "cache_memory_usage", "type=\"output\"") >= held as f64 / 2.0);
}

/// After the deadline: every hostile connection is closed and counted.
fn stalled_connections_are_closed(server: &TestServer, conns: Vec<TcpStream>) {
    std::thread::sleep(Duration::from_secs(STALL_SECS) + Duration::from_millis(1500) - PRESSURE);
    let text = scrape(server);
    assert_eq!(
        metric(&text, "cache_output_stall_closes_total", ""),
        HOSTILE_CONNECTIONS as f64,
        "{}",
        text.lines()
            .filter(|l| l.contains("output"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(metric(&text, "cache_output_paused_connections", ""), 0.0);
    assert_eq!(metric(&text, "cache_memory_usage", "type=\"output\""), 0.0);
    for s in conns {
        s.set_nonblocking(false).unwrap();
        let mut raw = Raw { stream: s };
        assert!(
            raw.is_closed_within(Duration::from_secs(5)),
            "closed by the server"
        );
    }
}

#[test]
fn binary_clients_that_never_read_hold_a_bounded_amount_of_memory() {
    let server = start_server();
    let before = rss_bytes(server.child.id());
    let mut requests = Vec::new();
    for _ in 0..4096 {
        dnd_cache::frame::encode_frame(&get(b"big"), &mut requests);
    }
    let mut conns: Vec<TcpStream> = (0..HOSTILE_CONNECTIONS)
        .map(|_| server.connect().stream)
        .collect();
    let peak = press(&server, &mut conns, &requests);
    eprintln!("binary: RSS before {} MiB, peak {} MiB", before >> 20, peak >> 20);
    assert!(
        peak.saturating_sub(before) < MAX_RSS_GROWTH,
        "RSS grew by {} MiB",
        (peak - before) >> 20
    );
    binary_client_is_served(&server);
    paused_connections_are_counted(&server);
    stalled_connections_are_closed(&server, conns);
    binary_client_is_served(&server);
}

#[test]
fn rest_clients_that_never_read_hold_a_bounded_amount_of_memory() {
    let server = start_server();
    let before = rss_bytes(server.child.id());
    let mut requests = Vec::new();
    for _ in 0..4096 {
        requests.extend_from_slice(&HttpConn::encode("GET", "/api/v2/cache/big", &[], b""));
    }
    let mut conns: Vec<TcpStream> = (0..HOSTILE_CONNECTIONS)
        .map(|_| {
            let s = TcpStream::connect(server.http).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let peak = press(&server, &mut conns, &requests);
    eprintln!("REST: RSS before {} MiB, peak {} MiB", before >> 20, peak >> 20);
    assert!(
        peak.saturating_sub(before) < MAX_RSS_GROWTH,
        "RSS grew by {} MiB",
        (peak - before) >> 20
    );
    let mut http = HttpConn::open(server.http);
    let resp = http.request(
        "GET",
        "/api/v2/cache/big",
        &[("Accept", "application/octet-stream")],
        b"",
    );
    assert_eq!(resp.status, 200);
    assert!(resp.body == value(), "the value, whole");
    binary_client_is_served(&server);
    paused_connections_are_counted(&server);
    stalled_connections_are_closed(&server, conns);
}

/// The bound changes nothing a client that reads sees: a pipeline of large
/// answers owned by both shards (owner shards stop at their share of the
/// budget, the cycle goes on in rounds), mixed with small writes and reads,
/// and a batch, is answered whole and in order.
#[test]
fn pipelined_large_answers_arrive_whole_and_in_order() {
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--max-memory",
        "256MiB",
        "--max-output-bytes",
        "1MiB",
    ]);
    let mut c = server.connect();
    let value_of = |i: usize| -> Vec<u8> { (0..VALUE_BYTES).map(|b| ((b + i * 7) % 253) as u8).collect() };
    let keys: Vec<Vec<u8>> = (0..8).map(|i| format!("big:{i}").into_bytes()).collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(c.call(&set(key, &value_of(i), 0)).status, 0);
    }
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for round in 0..5 {
        for (i, key) in keys.iter().enumerate() {
            dnd_cache::frame::encode_frame(&get(key), &mut requests);
            expected.push(Some(value_of(i)));
            let small = format!("small:{round}:{i}");
            dnd_cache::frame::encode_frame(&set(small.as_bytes(), small.as_bytes(), 0), &mut requests);
            expected.push(None);
            dnd_cache::frame::encode_frame(&get(small.as_bytes()), &mut requests);
            expected.push(Some(small.into_bytes()));
        }
        dnd_cache::frame::encode_frame(&keys_op("get_many", &keys), &mut requests);
        expected.push(None);
    }
    c.stream.write_all(&requests).unwrap();
    for (n, want) in expected.iter().enumerate() {
        let got = c.recv().expect("an answer");
        assert_eq!(got.status, 0, "answer {n}");
        match want {
            Some(v) => assert!(got.data == *v, "answer {n}: the value of its own request"),
            None if !got.items.is_empty() => {
                for (i, item) in got.items.iter().enumerate() {
                    assert!(item.data == value_of(i), "answer {n}, item {i}");
                }
            }
            None => {}
        }
    }
    let total = &stats(&mut c)["total"];
    assert_eq!(total["output_paused_connections"], 0);
    // 20 forwarded 512 KiB answers with a 1 MiB budget: owner shards ran
    // them in rounds, not in one batch per read.
    assert!(total["forwarded_batches"].as_u64().unwrap() >= 10, "{total}");
}
