//! Lifecycle: SIGTERM under load stops the server cleanly within its bound,
//! and every answer a client got before the close is whole and true.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;

#[test]
fn sigterm_under_load_answers_what_it_read_and_exits_zero() {
    let mut server = TestServer::start(&["--shards", "2"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let addr = server.addr;
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let mut c = Raw::handshaken(addr);
            let mut acknowledged = 0u64;
            let mut verified = 0u64;
            let mut round = 0u64;
            loop {
                // 32 pipelined sets, then read the value of one back.
                let mut batch = Vec::new();
                for i in 0..32 {
                    let body = set(
                        format!("w{w}:{round}:{i}").as_bytes(),
                        format!("v{round}:{i}").as_bytes(),
                        0,
                    )
                    .encode_to_vec();
                    batch.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    batch.extend_from_slice(&body);
                }
                if c.stream.write_all(&batch).is_err() {
                    break;
                }
                let mut answered = 0;
                while answered < 32 {
                    match c.recv() {
                        Some(answer) => {
                            assert_eq!(answer.status, 0, "every answer before the close is a success");
                            answered += 1;
                        }
                        None => break,
                    }
                }
                acknowledged += answered;
                if answered < 32 {
                    break;
                }
                // What was acknowledged is really there.
                c.send(&get(format!("w{w}:{round}:31").as_bytes()));
                match c.recv() {
                    Some(answer) => {
                        assert_eq!(answer.status, 0);
                        assert_eq!(&answer.data[..], format!("v{round}:31").as_bytes());
                        verified += 1;
                    }
                    None => break,
                }
                round += 1;
                if stop.load(Ordering::Relaxed) && round > 100_000 {
                    break;
                }
            }
            (acknowledged, verified)
        }));
    }
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let status = server
        .terminate(Duration::from_secs(15))
        .expect("exits within the shutdown bound");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(11), "took {took:?}");
    for worker in workers {
        let (acknowledged, verified) = worker.join().expect("no wrong answer");
        assert!(acknowledged > 0 && verified > 0, "the load ran before the stop");
    }
}
