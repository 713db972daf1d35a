//! One load run: connect, start the pinned workers on a common clock, print
//! progress each second, sample client and server CPU at the edges of the
//! measured window, and merge what the workers measured.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::config::LoadConfig;
use crate::connect::{self, ShardMap};
use crate::cpu::{now_ns, pid_cpu_ns, process_cpu_ns};
use crate::report;
use crate::stats::Stats;
use crate::worker::{run_worker, KeySource, WorkerPlan, WorkerResult};

/// Time between connecting and the first send, so every worker is up.
const START_DELAY_NS: u64 = 20_000_000;

/// What kind of run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// As fast as the pipelines allow.
    Closed,
    /// At `rate` requests per second, latency from the intended send time.
    Open { rate: f64 },
    /// Every key set once, in order (no warm-up, no duration).
    Prefill,
}

/// The merged outcome of a run.
#[derive(Debug)]
pub struct RunOutput {
    /// Measured requests (answered, plus lost ones in `errors`).
    pub stats: Stats,
    /// Measured requests sent.
    pub sent: u64,
    /// Open loop: due requests never sent.
    pub backlog: u64,
    /// Length of the measured window.
    pub window_ns: u64,
    /// CPU of this process over the window.
    pub client_cpu_ns: u64,
    /// CPU of `--server-pid` over the window.
    pub server_cpu_ns: Option<u64>,
    /// Sockets the server closed (or that failed) during the run.
    pub sockets_lost: u64,
    /// Shards the client routed to (shard-aware only).
    pub shards: Option<usize>,
}

/// Runs `mode` with `cfg`.
pub fn run(cfg: &LoadConfig, mode: Mode) -> anyhow::Result<RunOutput> {
    anyhow::ensure!(
        cfg.connections >= 1 && cfg.threads >= 1 && cfg.pipeline >= 1,
        "counts must be >= 1"
    );
    let threads = cfg.threads.min(cfg.connections);
    let shard_map: Option<ShardMap> = if cfg.shard_aware {
        Some(connect::discover_shards(cfg)?)
    } else {
        None
    };
    let mut all_conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        all_conns.push(connect::open_logical(cfg, shard_map.as_ref())?);
    }

    let prefill = mode == Mode::Prefill;
    let start_ns = now_ns() + START_DELAY_NS;
    let warmup_ns = if prefill { 0 } else { cfg.warmup.as_nanos() as u64 };
    let measure_from = start_ns + warmup_ns;
    let duration_mode = cfg.requests.is_none() && !prefill;
    let stop_at = duration_mode.then(|| measure_from + cfg.duration.as_nanos() as u64);
    let rate = match mode {
        Mode::Open { rate } => Some(rate),
        _ => None,
    };

    let mut handles = Vec::with_capacity(threads);
    // Each worker holds a sender and drops it when it ends: the main thread
    // sleeps on the channel and wakes the moment the last one is gone,
    // instead of polling the workers every few milliseconds (each wake-up
    // costs client CPU that counts against the run).
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut progress_slots = Vec::with_capacity(threads);
    let mut conns_iter = all_conns.into_iter();
    let mut first_conn = 0;
    for t in 0..threads {
        let n = cfg.connections / threads + usize::from(t < cfg.connections % threads);
        let conns: Vec<_> = conns_iter.by_ref().take(n).collect();
        let share = |total: u64| total / threads as u64 + u64::from((t as u64) < total % threads as u64);
        let keys = if prefill {
            let count = cfg.keys.count();
            let begin = count / threads as u64 * t as u64 + (t as u64).min(count % threads as u64);
            KeySource::Sequential {
                next: begin,
                end: begin + share(count),
            }
        } else {
            KeySource::Random
        };
        let progress = Arc::new(Mutex::new(Stats::default()));
        progress_slots.push(progress.clone());
        let plan = WorkerPlan {
            conns,
            first_conn,
            total_conns: cfg.connections,
            cpu: cfg.cpus.as_ref().map(|c| c[t % c.len()]),
            seed: cfg.seed.wrapping_add(t as u64),
            start_ns,
            measure_from_ns: measure_from,
            stop_at_ns: stop_at,
            quota: if duration_mode || prefill {
                None
            } else {
                cfg.requests.map(share)
            },
            keys,
            sets_only: prefill,
            rate,
            route: shard_map.as_ref().map(|m| m.route.clone()).unwrap_or_default(),
            progress,
        };
        first_conn += n;
        let cfg = cfg.clone();
        let done = done_tx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    let _done = done;
                    run_worker(&cfg, plan)
                })
                .context("spawning a worker")?,
        );
    }

    drop(done_tx);

    let cpu_sample = || (process_cpu_ns(), cfg.server_pid.map(pid_cpu_ns).transpose());
    let mut window_start_cpu = None;
    let mut window_end_cpu = None;
    if warmup_ns == 0 {
        sleep_until(start_ns);
        window_start_cpu = Some(cpu_sample());
    }
    let mut next_tick = start_ns + 1_000_000_000;
    let mut interval_start = start_ns;
    let mut workers_done = false;
    while !workers_done {
        let mut wake = next_tick;
        if window_start_cpu.is_none() {
            wake = wake.min(measure_from);
        }
        if let (Some(stop), None) = (stop_at, &window_end_cpu) {
            wake = wake.min(stop);
        }
        workers_done = sleep_until_or_done(wake, &done_rx);
        let now = now_ns();
        if window_start_cpu.is_none() && now >= measure_from {
            window_start_cpu = Some(cpu_sample());
        }
        if let (Some(stop), None) = (stop_at, &window_end_cpu) {
            if now >= stop {
                window_end_cpu = Some(cpu_sample());
            }
        }
        if now >= next_tick {
            if cfg.progress {
                let mut interval = Stats::default();
                for slot in &progress_slots {
                    let mut s = slot.lock().map_err(|_| anyhow::anyhow!("a worker panicked"))?;
                    interval.merge(&s);
                    s.reset();
                }
                let elapsed_s = (now - start_ns) as f64 / 1e9;
                let phase = if now < measure_from { " (warm-up)" } else { "" };
                eprintln!(
                    "{}{phase}",
                    report::progress_line(elapsed_s, &interval, (now - interval_start) as f64 / 1e9)
                );
            }
            interval_start = now;
            next_tick += 1_000_000_000;
        }
    }
    let mut results: Vec<WorkerResult> = Vec::with_capacity(threads);
    for h in handles {
        results.push(h.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??);
    }
    let window_start_cpu = window_start_cpu.unwrap_or_else(cpu_sample);
    let window_end_cpu = window_end_cpu.unwrap_or_else(cpu_sample);

    let mut stats = Stats::default();
    let (mut sent, mut backlog, mut last_answer, mut sockets_lost) = (0, 0, measure_from, 0);
    for r in &results {
        sockets_lost += r.sockets_lost;
        stats.merge(&r.stats);
        sent += r.sent;
        backlog += r.backlog;
        last_answer = last_answer.max(r.last_answer_ns);
    }
    let window_ns = match stop_at {
        Some(stop) => stop - measure_from,
        None => last_answer.saturating_sub(measure_from).max(1),
    };
    let server_cpu_ns = match (window_start_cpu.1?, window_end_cpu.1?) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(RunOutput {
        stats,
        sent,
        backlog,
        window_ns,
        client_cpu_ns: window_end_cpu.0.saturating_sub(window_start_cpu.0),
        server_cpu_ns,
        sockets_lost,
        shards: shard_map.map(|m| m.addrs.len()),
    })
}

fn sleep_until(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// Sleeps until `t_ns` or until every worker has ended (all senders of
/// `done` dropped); true in the second case.
fn sleep_until_or_done(t_ns: u64, done: &Receiver<()>) -> bool {
    loop {
        let timeout = Duration::from_nanos(t_ns.saturating_sub(now_ns()));
        match done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => return true,
            Err(RecvTimeoutError::Timeout) => return false,
            // Nobody sends; only dropping counts.
            Ok(()) => {}
        }
    }
}
