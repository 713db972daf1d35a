//! A small closed-loop SET load for perf scripts when the bundled loadgen is
//! not built: N connections (one thread each), P requests in flight per
//! connection, K keys, V-byte values, for D seconds; prints one JSON line
//! `{"ops": .., "seconds": .., "ops_per_sec": .., "errors": ..}`.
//!
//! `cargo run --release --example set_throughput -- ADDR [N] [P] [K] [V] [D]`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnd_cache::proto::{CacheConnection, CacheOperation, CacheResponse};
use prost::Message;

fn frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    buf.resize(u32::from_be_bytes(header) as usize, 0);
    stream.read_exact(buf)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let addr = args.first().cloned().unwrap_or_else(|| "127.0.0.1:7000".into());
    let (conns, pipeline, keys, value_size, secs) =
        (arg(1, 50), arg(2, 16), arg(3, 100_000), arg(4, 100), arg(5, 10));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value = vec![b'x'; value_size as usize];
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (addr, stop, ops, errors, value) = (
                addr.clone(),
                stop.clone(),
                ops.clone(),
                errors.clone(),
                value.clone(),
            );
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect");
                s.set_nodelay(true).unwrap();
                let hello = CacheConnection {
                    service_id: "perf".into(),
                    protocol_version: 1,
                    ..Default::default()
                };
                s.write_all(&frame(&hello)).unwrap();
                let mut buf = Vec::new();
                read_frame(&mut s, &mut buf).unwrap();
                // Pre-encoded requests, cycled: no encoding in the loop.
                let per_conn = (keys / conns).clamp(1, 10_000);
                let requests: Vec<Vec<u8>> = (0..per_conn)
                    .map(|i| {
                        frame(&CacheOperation {
                            operation: "set".into(),
                            key: format!("perf:{}", c + i * conns).into_bytes().into(),
                            value: value.clone().into(),
                            ..Default::default()
                        })
                    })
                    .collect();
                let mut next = 0usize;
                let mut batch = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    batch.clear();
                    for _ in 0..pipeline {
                        batch.extend_from_slice(&requests[next]);
                        next = (next + 1) % requests.len();
                    }
                    if s.write_all(&batch).is_err() {
                        return;
                    }
                    for _ in 0..pipeline {
                        if read_frame(&mut s, &mut buf).is_err() {
                            return;
                        }
                        let status = CacheResponse::decode(&buf[..]).map_or(1, |r| r.status);
                        if status != 0 {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ops.fetch_add(pipeline, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Warm up one second, then measure.
    std::thread::sleep(Duration::from_secs(1));
    let (start_ops, start) = (ops.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let done = ops.load(Ordering::Relaxed) - start_ops;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!(
        "{{\"ops\": {done}, \"seconds\": {elapsed:.3}, \"ops_per_sec\": {:.0}, \"errors\": {}}}",
        done as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
}
