//! The shard's io_uring socket path (src/server/uring): sockets are released
//! whichever side ends a connection, frames larger than one receive arrive
//! whole, and a reader slower than the answers still gets every byte.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;

/// Open descriptors of the server process.
fn open_fds(server: &TestServer) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .expect("the server's /proc entry")
        .count()
}

/// Descriptors of a server that has settled: one request served, then a
/// pause, so that nothing the shards open lazily at start counts later.
fn settled_fds(server: &TestServer) -> usize {
    let mut c = server.connect();
    assert_eq!(c.call(&set(b"settle", b"x", 0)).status, 0);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    open_fds(server)
}

/// Waits until the server holds at most `limit` descriptors.
fn fds_drop_to(server: &TestServer, limit: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let now = open_fds(server);
        if now <= limit || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sockets_are_released_when_the_server_ends_idle_connections() {
    // Connections that never handshake are closed by the server at the
    // deadline, while their receive is still in flight on the ring: it must
    // be cancelled for the socket to close.
    let server = TestServer::start(&[]);
    let baseline = settled_fds(&server);
    let mut idle: Vec<Raw> = (0..64).map(|_| Raw::open(server.addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        open_fds(&server) >= baseline + 64,
        "the server holds the connections"
    );
    for raw in &mut idle {
        assert!(
            raw.is_closed_within(Duration::from_secs(10)),
            "closed at the handshake deadline"
        );
    }
    let left = fds_drop_to(&server, baseline, Duration::from_secs(3));
    assert!(
        left <= baseline,
        "{left} descriptors open, {baseline} before the connections"
    );
}

#[test]
fn sockets_are_released_when_clients_vanish_mid_frame() {
    let server = TestServer::start(&[]);
    let baseline = settled_fds(&server);
    for _ in 0..4 {
        let batch: Vec<Raw> = (0..32)
            .map(|_| {
                let mut raw = Raw::handshaken(server.addr);
                // Half a frame: the server waits for the rest.
                raw.stream.write_all(&[0, 0, 0, 40, 10, 3]).unwrap();
                raw
            })
            .collect();
        drop(batch);
    }
    let left = fds_drop_to(&server, baseline, Duration::from_secs(3));
    assert!(
        left <= baseline,
        "{left} descriptors open, {baseline} before the connections"
    );
    let mut c = server.connect();
    assert_eq!(c.call(&set(b"after", b"still serving", 0)).status, 0);
}

#[test]
fn a_value_larger_than_many_receives_round_trips() {
    let server = TestServer::start(&["--max-item-bytes", "4MiB", "--max-memory", "64MiB"]);
    let mut c = server.connect();
    let value: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(c.call(&set(b"big", &value, 0)).status, 0);
    let got = c.call(&get(b"big"));
    assert_eq!(got.status, 0);
    assert!(
        got.data.len() == value.len() && got.data == value,
        "the value comes back whole"
    );
}

#[test]
fn a_reader_slower_than_the_answers_gets_every_byte() {
    // Twenty 1 MiB answers outgrow the socket buffers: the server waits for
    // the socket to drain (a POLLOUT poll on the ring) and resumes.
    let server = TestServer::start(&["--max-item-bytes", "2MiB", "--max-memory", "64MiB"]);
    let mut c = server.connect();
    let value = vec![0x5a_u8; 1024 * 1024];
    assert_eq!(c.call(&set(b"wide", &value, 0)).status, 0);
    let mut burst = Vec::new();
    for _ in 0..20 {
        let body = get(b"wide").encode_to_vec();
        burst.extend_from_slice(&(body.len() as u32).to_be_bytes());
        burst.extend_from_slice(&body);
    }
    c.stream.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..20 {
        let got = c.recv().unwrap_or_else(|| panic!("answer {i}"));
        assert_eq!(got.status, 0, "answer {i}");
        assert!(got.data == value, "answer {i} whole");
    }
}
