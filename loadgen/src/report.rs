//! What a run prints: the per-second progress line, the closing table, the
//! `--json` summary and the `--hdr-out` percentile file.

use std::collections::BTreeMap;
use std::io::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::LoadConfig;
use crate::protocol::Codec;
use crate::runner::{Mode, RunOutput};
use crate::stats::Stats;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// Percentiles of a nanosecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The machine-readable result of `loadgen run --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub protocol: &'static str,
    pub addr: String,
    pub mode: &'static str,
    pub target_rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    pub pipeline: usize,
    pub shard_aware: bool,
    pub shards: Option<usize>,
    pub ratio: String,
    pub keys: u64,
    pub key_distribution: String,
    pub value_size: String,
    pub duration_s: f64,
    /// Measured requests sent.
    pub sent: u64,
    /// Measured requests answered (including error answers).
    pub ops: u64,
    pub ops_per_sec: f64,
    pub gets: u64,
    pub sets: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: Option<f64>,
    /// Errors of every kind: error answers and requests lost with a connection.
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    /// Open loop: requests due but never sent because the server fell behind.
    pub backlog: u64,
    /// Sockets the server closed (or that failed) before the run ended; the
    /// run stops early when every connection is gone.
    pub connections_lost: u64,
    pub latency_us: Latency,
    pub get_latency_us: Option<Latency>,
    pub set_latency_us: Option<Latency>,
    pub client_cpu_s: f64,
    pub client_cpu_us_per_op: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_op: Option<f64>,
}

/// The protocol's name on the command line.
pub fn protocol_name(codec: &Codec) -> &'static str {
    match codec {
        Codec::Binary => "binary",
        Codec::Http { .. } => "http",
        Codec::Resp => "resp",
        Codec::Memcache => "memcache",
    }
}

impl Summary {
    /// Builds the summary of `out`.
    pub fn new(cfg: &LoadConfig, mode: Mode, distribution: &str, out: &RunOutput) -> Self {
        let s = &out.stats;
        let ops = s.ops();
        let secs = out.window_ns as f64 / 1e9;
        let per_op = |ns: u64| (ops > 0).then(|| ns as f64 / 1000.0 / ops as f64);
        let vs = cfg.value_size;
        Summary {
            protocol: protocol_name(&cfg.codec),
            addr: cfg.addr.to_string(),
            mode: match mode {
                Mode::Closed => "closed",
                Mode::Open { .. } => "open",
                Mode::Prefill => "prefill",
            },
            target_rate: match mode {
                Mode::Open { rate } => Some(rate),
                _ => None,
            },
            connections: cfg.connections,
            threads: cfg.threads.min(cfg.connections),
            pipeline: cfg.pipeline,
            shard_aware: cfg.shard_aware,
            shards: out.shards,
            ratio: format!("{}:{}", cfg.ratio.get, cfg.ratio.set),
            keys: cfg.keys.count(),
            key_distribution: distribution.to_owned(),
            value_size: if vs.min == vs.max {
                vs.min.to_string()
            } else {
                format!("{}-{}", vs.min, vs.max)
            },
            duration_s: secs,
            sent: out.sent,
            ops,
            ops_per_sec: ops as f64 / secs,
            gets: s.gets,
            sets: s.sets,
            hits: s.hits,
            misses: s.misses,
            hit_rate: s.hit_rate(),
            errors: s.errors.total(),
            errors_by_status: s.errors.sorted().into_iter().collect(),
            backlog: out.backlog,
            connections_lost: out.sockets_lost,
            latency_us: Latency::of(&s.all_latency()),
            get_latency_us: (s.gets > 0).then(|| Latency::of(&s.get_latency)),
            set_latency_us: (s.sets > 0).then(|| Latency::of(&s.set_latency)),
            client_cpu_s: out.client_cpu_ns as f64 / 1e9,
            client_cpu_us_per_op: per_op(out.client_cpu_ns),
            server_cpu_s: out.server_cpu_ns.map(|n| n as f64 / 1e9),
            server_cpu_us_per_op: out.server_cpu_ns.and_then(per_op),
        }
    }

    /// The closing table (memtier-style), for people.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mode = match self.target_rate {
            Some(r) => format!("open loop at {r:.0} ops/s"),
            None => self.mode.to_string(),
        };
        t += &format!(
            "{} {} | {} | {} conns x pipeline {} on {} thread(s){} | ratio {} | {} keys {} | values {} B\n",
            self.protocol,
            self.addr,
            mode,
            self.connections,
            self.pipeline,
            self.threads,
            if self.shard_aware {
                format!(", shard-aware over {} shards", self.shards.unwrap_or(0))
            } else {
                String::new()
            },
            self.ratio,
            self.keys,
            self.key_distribution,
            self.value_size,
        );
        t += &format!(
            "{:<6} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "Type", "Ops", "Ops/sec", "Hits/sec", "Avg(ms)", "p50(ms)", "p99(ms)", "p99.9(ms)", "Max(ms)"
        );
        let secs = self.duration_s;
        let row = |name: &str, ops: u64, hits: Option<u64>, l: &Latency| {
            format!(
                "{:<6} {:>12} {:>12.0} {:>12} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}\n",
                name,
                ops,
                ops as f64 / secs,
                hits.map_or("-".to_string(), |h| format!("{:.0}", h as f64 / secs)),
                l.mean / 1000.0,
                l.p50 / 1000.0,
                l.p99 / 1000.0,
                l.p999 / 1000.0,
                l.max / 1000.0
            )
        };
        if let Some(l) = &self.get_latency_us {
            t += &row("Gets", self.gets, Some(self.hits), l);
        }
        if let Some(l) = &self.set_latency_us {
            t += &row("Sets", self.sets, None, l);
        }
        t += &row("Totals", self.ops, None, &self.latency_us);
        t += &format!(
            "sent {} | answered {} | hit rate {} | errors {}{} | backlog {}\n",
            self.sent,
            self.ops,
            self.hit_rate.map_or("-".into(), |h| format!("{:.2}%", h * 100.0)),
            self.errors,
            if self.errors_by_status.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    self.errors_by_status
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            self.backlog,
        );
        if self.connections_lost > 0 {
            t += &format!(
                "ERROR: {} connections were closed during the run\n",
                self.connections_lost
            );
        }
        if self.backlog > 0 {
            t += &format!(
                "WARNING: the target fell behind: {} requests came due but never went out (pipelines \
                 full); latency counts from the intended send times\n",
                self.backlog
            );
        }
        t += &format!(
            "client CPU {:.3} s = {} us/op | server CPU {}\n",
            self.client_cpu_s,
            self.client_cpu_us_per_op
                .map_or("-".into(), |v| format!("{v:.3}")),
            match (self.server_cpu_s, self.server_cpu_us_per_op) {
                (Some(s), Some(p)) => format!("{s:.3} s = {p:.3} us/op"),
                _ => "- (give --server-pid)".into(),
            }
        );
        t
    }
}

/// One progress line: the last interval's rate, hit rate, percentiles, errors.
pub fn progress_line(elapsed_s: f64, s: &Stats, interval_s: f64) -> String {
    let h = s.all_latency();
    let ms = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1e6
        }
    };
    format!(
        "[{:>5.0}s] {:>10.0} ops/s  hit {:>6}  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  errors {}",
        elapsed_s,
        s.ops() as f64 / interval_s.max(1e-9),
        s.hit_rate().map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        s.errors.total()
    )
}

/// Writes `h` (nanoseconds) as a percentile distribution in milliseconds, in
/// the `.hgrm` text format of HdrHistogram's `outputPercentileDistribution`
/// (what HdrHistogram's plotter and wrk2 use).
pub fn write_hgrm(h: &Histogram<u64>, mut out: impl Write) -> std::io::Result<()> {
    const SCALE: f64 = 1e6;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                writeln!(
                    out,
                    "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}")?;
            }
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    writeln!(out, "#[Mean    = {mean:>12.3}, StdDeviation   = {sd:>12.3}]")?;
    writeln!(out, "#[Max     = {max:>12.3}, Total count    = {:>12}]", h.len())?;
    // HdrHistogram's sub-bucket count: 2^ceil(log2(2 * 10^digits)).
    let sub_buckets = 1u64 << (2.0 * 10f64.powi(h.sigfig() as i32)).log2().ceil() as u32;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {sub_buckets:>12}]",
        h.buckets()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Kind, Outcome};

    #[test]
    fn hgrm_lists_rising_percentiles_up_to_the_total() {
        let mut s = Stats::default();
        for i in 1..=10_000u64 {
            s.record(Kind::Get, Outcome::Hit, i * 1_000);
        }
        let mut out = Vec::new();
        write_hgrm(&s.get_latency, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<(f64, f64, u64)> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.trim_start().starts_with("Value"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        assert!(rows.len() > 20);
        assert!(rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2));
        let last = rows.last().unwrap();
        assert_eq!((last.1, last.2), (1.0, 10_000));
        assert!((last.0 - 10.0).abs() < 0.01, "max {} ms", last.0);
        assert!(text.contains("Total count    =        10000]"));
    }

    #[test]
    fn latency_percentiles_in_microseconds() {
        let mut h = crate::stats::new_histogram();
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 500.0).abs() < 1.0 && (l.p99 - 990.0).abs() < 1.0 && (l.max - 1000.0).abs() < 1.0);
    }
}
