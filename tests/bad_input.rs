//! Bad input gets a clear error, and nothing is lost: each case is followed
//! by a good request proving the server and its data are fine.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use dnd_cache::Status;

/// Stores a canary before the abuse and checks it (and the server) after.
fn with_canary(server: &TestServer, abuse: impl FnOnce()) {
    let mut good = server.connect();
    assert_eq!(good.call(&set(b"canary", b"alive", 0)).status, 0);
    abuse();
    let mut fresh = server.connect();
    let got = fresh.call(&get(b"canary"));
    assert_eq!(got.status, 0, "server still serves new connections");
    assert_eq!(&got.data[..], b"alive", "data intact");
    assert_eq!(
        good.call(&get(b"canary")).status,
        0,
        "other connections unaffected"
    );
}

#[test]
fn frame_over_the_limit_is_cache_008_and_closes() {
    let server = TestServer::start(&["--max-frame-bytes", "64KiB", "--max-item-bytes", "32KiB"]);
    with_canary(&server, || {
        let mut c = server.connect();
        c.stream.write_all(&(65 * 1024u32).to_be_bytes()).unwrap();
        let answer = c.recv().expect("an error answer before the close");
        assert_eq!(answer.status, Status::FrameTooLarge as u32);
        assert!(c.is_closed_within(Duration::from_secs(2)));
    });
}

#[test]
fn length_prefix_without_body_then_vanishing() {
    let server = TestServer::start(&[]);
    with_canary(&server, || {
        let mut c = server.connect();
        c.stream.write_all(&100u32.to_be_bytes()).unwrap();
        c.stream.write_all(b"only part of it").unwrap();
        drop(c);
        let mut c = server.connect();
        c.stream.write_all(&[0, 0]).unwrap();
        drop(c);
    });
}

#[test]
fn bytes_that_are_not_protobuf_answer_cache_006_on_the_same_connection() {
    let server = TestServer::start(&[]);
    with_canary(&server, || {
        let mut c = server.connect();
        for junk in [
            &[0xffu8, 0xff, 0xff, 0xff][..],
            &[0x0a, 0x80],
            &[0x12, 0x10, 1, 2],
            &[0x07],
        ] {
            c.send_frame(junk);
            assert_eq!(c.recv().unwrap().status, Status::Malformed as u32, "{junk:?}");
        }
        assert_eq!(c.call(&get(b"canary")).status, 0);
    });
}

#[test]
fn handshake_that_is_not_a_cache_connection_is_cache_010() {
    let server = TestServer::start(&[]);
    with_canary(&server, || {
        // An operation sent without a handshake.
        let mut c = Raw::open(server.addr);
        c.send(&get(b"canary"));
        let answer = c.recv().unwrap();
        assert_eq!(answer.status, Status::Handshake as u32);
        assert!(answer.handshake.is_none());
        assert!(c.is_closed_within(Duration::from_secs(2)));
        // Not protobuf at all.
        let mut c = Raw::open(server.addr);
        c.send_frame(&[0xff, 0xff, 0xff]);
        assert_eq!(c.recv().unwrap().status, Status::Handshake as u32);
        // Bad service id.
        let mut c = Raw::open(server.addr);
        assert_eq!(c.handshake("has spaces").status, Status::Handshake as u32);
        // Handshake frame over 16 KiB.
        let mut c = Raw::open(server.addr);
        c.stream.write_all(&(17 * 1024u32).to_be_bytes()).unwrap();
        assert_eq!(c.recv().unwrap().status, Status::FrameTooLarge as u32);
    });
}

#[test]
fn handshake_must_arrive_within_five_seconds() {
    let server = TestServer::start(&[]);
    with_canary(&server, || {
        let mut c = Raw::open(server.addr);
        let started = Instant::now();
        let answer = c.recv().expect("an answer at the deadline");
        assert_eq!(answer.status, Status::Handshake as u32);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(4500) && waited < Duration::from_secs(9),
            "{waited:?}"
        );
        assert!(c.is_closed_within(Duration::from_secs(2)));
    });
}

#[test]
fn http_on_the_binary_port_is_refused_within_a_second() {
    let server = TestServer::start(&[]);
    with_canary(&server, || {
        let mut c = Raw::open(server.addr);
        let started = Instant::now();
        c.stream
            .write_all(b"GET /api/v2/cache/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let answer = c.recv().expect("an error answer");
        assert_eq!(answer.status, Status::FrameTooLarge as u32);
        assert!(String::from_utf8_lossy(&answer.data).contains("HTTP"));
        assert!(c.is_closed_within(Duration::from_secs(1)));
        assert!(started.elapsed() < Duration::from_secs(1));
    });
}

#[test]
fn a_client_that_never_reads_does_not_hurt_others() {
    let server = TestServer::start(&["--shards", "1"]);
    let mut writer = server.connect();
    let value = vec![9u8; 512 * 1024];
    assert_eq!(writer.call(&set(b"big", &value, 0)).status, 0);
    with_canary(&server, || {
        // Ask for the big value again and again without reading: the server
        // stops reading this connection once its socket buffers fill.
        let mut greedy = server.connect();
        greedy
            .stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let body = prost::Message::encode_to_vec(&get(b"big"));
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && greedy.stream.write_all(&frame).is_ok() {
            sent += 1;
            if sent > 20_000 {
                break;
            }
        }
        // Meanwhile everyone else is served promptly.
        let mut other = server.connect();
        let started = Instant::now();
        assert_eq!(other.call(&get(b"big")).data.len(), value.len());
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(greedy);
    });
}

#[test]
fn connection_limit_answers_cache_009() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let mut a = server.connect();
    let _b = server.connect();
    let mut c = Raw::open(server.addr);
    let answer = c.recv().expect("refusal");
    assert_eq!(answer.status, Status::TooManyConnections as u32);
    assert!(c.is_closed_within(Duration::from_secs(2)));
    assert_eq!(
        a.call(&set(b"k", b"v", 0)).status,
        0,
        "existing connections keep working"
    );
    drop(a);
    // A slot frees up once a connection closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Raw::open(server.addr);
        let answer = d.handshake("svc");
        if answer.status == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn garbage_streams_never_crash_the_server() {
    let mut server = TestServer::start(&[]);
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut c = if round % 2 == 0 {
            server.connect()
        } else {
            Raw::open(server.addr)
        };
        let len = (next() % 300) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 {
            // A plausible frame header so the body is parsed as protobuf.
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.append(&mut body);
            body = framed;
        }
        let _ = c.stream.write_all(&body);
    }
    assert!(server.is_running());
    let mut c = server.connect();
    assert_eq!(c.call(&set(b"after", b"garbage", 0)).status, 0);
    assert_eq!(c.call(&get(b"after")).status, 0);
}
