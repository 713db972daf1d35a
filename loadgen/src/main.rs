//! `loadgen`: the load generator of dnd-cache. It drives the server's binary
//! protocol (optionally shard-aware) and REST API, Redis and memcached with
//! the same workload, closed loop or open loop, and reports throughput,
//! latency percentiles, errors by status and CPU per operation.

mod capacity;
mod cli;
mod config;
mod connect;
mod cpu;
mod inflight;
mod pacer;
mod protocol;
mod report;
mod rng;
mod runner;
mod stats;
mod worker;
mod workload;
mod zipf;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, Command, WorkloadArgs};
use crate::config::LoadConfig;
use crate::runner::Mode;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Capacity(args) => capacity(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Sets every key once when `--prefill` asks for it.
fn prefill(w: &WorkloadArgs, cfg: &LoadConfig) -> anyhow::Result<()> {
    if !w.prefill {
        return Ok(());
    }
    let mut pre = cfg.clone();
    pre.progress = false;
    pre.pipeline = pre.pipeline.max(16);
    let out = runner::run(&pre, Mode::Prefill).context("prefill")?;
    let errors = out.stats.errors.total();
    eprintln!(
        "prefill: {} keys set in {:.2} s, {} errors",
        out.stats.sets,
        out.window_ns as f64 / 1e9,
        errors
    );
    anyhow::ensure!(
        errors == 0 && out.sockets_lost == 0,
        "prefill failed: errors {:?}, {} connections lost",
        out.stats.errors.sorted(),
        out.sockets_lost
    );
    Ok(())
}

/// `loadgen run`. Exit code 1 when any request failed or a connection was
/// lost, so scripts notice.
fn run(args: cli::RunArgs) -> anyhow::Result<i32> {
    let w = &args.workload;
    let cfg = w.to_config()?;
    prefill(w, &cfg)?;
    let mode = match args.rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
            Mode::Open { rate }
        }
        None => Mode::Closed,
    };
    let out = runner::run(&cfg, mode)?;
    let summary = report::Summary::new(&cfg, mode, &w.distribution_name(), &out);
    if let Some(path) = &args.hdr_out {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        report::write_hgrm(&out.stats.all_latency(), std::io::BufWriter::new(file))?;
    }
    if w.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(if summary.errors > 0 || summary.connections_lost > 0 {
        1
    } else {
        0
    })
}

/// `loadgen capacity`.
fn capacity(args: cli::CapacityArgs) -> anyhow::Result<i32> {
    let w = &args.workload;
    let cfg = w.to_config()?;
    prefill(w, &cfg)?;
    let plan = capacity::CapacityPlan {
        slo_p99: args.slo_p99,
        slo_p999: args.slo_p999,
        step: args.step_duration,
        start_pct: args.start_pct,
        step_pct: args.step_pct,
        refine: args.refine,
    };
    let rep = capacity::search(&cfg, &plan)?;
    if w.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{:>12} {:>12} {:>10} {:>10} {:>10} {:>8}  verdict",
            "target/s", "achieved/s", "p50(us)", "p99(us)", "p99.9(us)", "errors"
        );
        for s in &rep.steps {
            println!(
                "{:>12.0} {:>12.0} {:>10.0} {:>10.0} {:>10.0} {:>8}  {}",
                s.target_rate,
                s.ops_per_sec,
                s.p50_us,
                s.p99_us,
                s.p999_us,
                s.errors,
                if s.met { "meets" } else { &s.reason }
            );
        }
        println!(
            "closed-loop peak {:.0} ops/s; capacity under the objective: {:.0} ops/s",
            rep.closed_loop_peak, rep.capacity_ops_per_sec
        );
    }
    Ok(0)
}
