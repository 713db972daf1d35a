//! Command line: `loadgen run` and `loadgen capacity` share the workload flags.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::LoadConfig;
use crate::protocol::Codec;
use crate::workload::{KeySpace, Ratio, ValueSize};

/// Load generator for dnd-cache (binary and REST), Redis and memcached.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One run: closed loop (as fast as possible) or open loop with --rate.
    Run(RunArgs),
    /// Steps the open-loop rate up until a latency objective breaks.
    Capacity(CapacityArgs),
}

/// Target protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// dnd-cache binary protobuf protocol.
    Binary,
    /// dnd-cache REST API (GET/PUT /api/v2/cache/{key}).
    Http,
    /// Redis RESP.
    Resp,
    /// memcached text protocol.
    Memcache,
}

/// Key distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipfian,
}

/// Workload flags shared by `run` and `capacity`.
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Target protocol.
    #[arg(long, value_enum, default_value = "binary")]
    pub protocol: Protocol,
    /// Target HOST:PORT (for the binary protocol: the public port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: String,
    /// Connections in total, spread over the threads.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Worker threads, each pinned when --cpus is given.
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// CPUs for the workers, e.g. `1` or `2-3` (worker i on the i-th, cycling).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,
    /// Requests in flight per connection.
    #[arg(long, short = 'P', default_value_t = 1)]
    pub pipeline: usize,
    /// GET:SET mix, e.g. 9:1, 1:0 (gets only), 0:1 (sets only). Note:
    /// memtier's --ratio is SET:GET; ours is GET:SET.
    #[arg(long, default_value = "9:1", value_parser = Ratio::parse)]
    pub ratio: Ratio,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key name prefix; keys are the prefix and a zero-padded index.
    #[arg(long, default_value = "key:")]
    pub key_prefix: String,
    /// Key distribution.
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: Distribution,
    /// Zipfian skew (exponent s of P(k) ∝ 1/k^s).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_skew: f64,
    /// Value size in bytes: fixed `100` or uniform range `100-1000`.
    #[arg(long, default_value = "100", value_parser = ValueSize::parse)]
    pub value_size: ValueSize,
    /// TTL of sets in seconds (0: none / the server's default).
    #[arg(long, default_value_t = 0)]
    pub ttl: u32,
    /// Measured time: `10`, `10s`, `500ms`, `2m`.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measured requests instead of a duration.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Unmeasured load before the measured window.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Set every key once before the run (so gets hit).
    #[arg(long)]
    pub prefill: bool,
    /// How long to wait for outstanding answers after the last send.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Binary protocol: service_id of the handshake.
    #[arg(long, default_value = "loadgen")]
    pub service_id: String,
    /// Binary protocol: the connection's consistency (`strong`, `eventual`;
    /// empty: each cache type's), sent in the handshake's options.
    #[arg(long, default_value = "")]
    pub consistency: String,
    /// Binary protocol: auth_token (JWT) of the handshake.
    #[arg(long, default_value = "")]
    pub token: String,
    /// Binary protocol: connect to every shard's port (from the handshake)
    /// and send each key to its owner shard.
    #[arg(long)]
    pub shard_aware: bool,
    /// Binary protocol, a cluster (docs/cluster.md): connect to every shard
    /// of every node (from the handshake's slot map) and send each key to
    /// its slot's primary node, to the shard that owns it there.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: send only the keys whose slot node ID is primary of
    /// (as the map was when the run started).
    #[arg(long, value_name = "ID", requires = "cluster")]
    pub node: Option<String>,
    /// Seed of the key/size/mix generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Local server process: its CPU time per op is measured (/proc/PID/stat).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the machine-readable summary (JSON) on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Open loop at this many requests per second (all connections together).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm text, ms).
    #[arg(long)]
    pub hdr_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Objective for p99, e.g. `1ms`, `500us`.
    #[arg(long, value_parser = parse_duration)]
    pub slo_p99: Option<Duration>,
    /// Objective for p99.9.
    #[arg(long, value_parser = parse_duration)]
    pub slo_p999: Option<Duration>,
    /// Length of each step (overrides --duration).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// First rate, percent of the closed-loop peak.
    #[arg(long, default_value_t = 10.0)]
    pub start_pct: f64,
    /// Rate increase per step, percent of the peak.
    #[arg(long, default_value_t = 10.0)]
    pub step_pct: f64,
    /// Bisection rounds between the last good and the first bad rate.
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
}

/// A parsed `--cpus` list (a newtype: clap would take a bare `Vec` for a
/// repeated flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    crate::cpu::parse_cpu_list(s).map(CpuList)
}

/// Parses `5`, `5s`, `1.5s`, `500ms`, `250us`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use s, ms, us, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl WorkloadArgs {
    /// Resolves the flags into a run configuration.
    pub fn to_config(&self) -> anyhow::Result<LoadConfig> {
        let addr = self
            .addr
            .to_socket_addrs()
            .with_context(|| format!("resolving --addr {}", self.addr))?
            .next()
            .with_context(|| format!("--addr {} resolves to nothing", self.addr))?;
        let codec = match self.protocol {
            Protocol::Binary => Codec::Binary,
            Protocol::Http => Codec::Http {
                host: self.addr.clone(),
            },
            Protocol::Resp => Codec::Resp,
            Protocol::Memcache => Codec::Memcache,
        };
        anyhow::ensure!(
            !(self.shard_aware || self.cluster) || self.protocol == Protocol::Binary,
            "--shard-aware and --cluster need --protocol binary"
        );
        anyhow::ensure!(self.connections >= 1, "--connections must be at least 1");
        anyhow::ensure!(self.threads >= 1, "--threads must be at least 1");
        anyhow::ensure!(self.pipeline >= 1, "--pipeline must be at least 1");
        anyhow::ensure!(self.requests != Some(0), "--requests must be at least 1");
        let skew = (self.distribution == Distribution::Zipfian).then_some(self.zipf_skew);
        Ok(LoadConfig {
            codec,
            addr,
            connections: self.connections,
            threads: self.threads,
            cpus: self.cpus.as_ref().map(|c| c.0.clone()),
            pipeline: self.pipeline,
            ratio: self.ratio,
            keys: KeySpace::new(self.keys, &self.key_prefix, skew)?,
            value_size: self.value_size,
            ttl: self.ttl,
            duration: self.duration,
            requests: self.requests,
            warmup: self.warmup,
            drain: self.drain_timeout,
            service_id: self.service_id.clone(),
            token: self.token.clone(),
            consistency: self.consistency.clone(),
            shard_aware: self.shard_aware || self.cluster,
            cluster: self.cluster,
            node: self.node.clone(),
            seed: self.seed,
            server_pid: self.server_pid,
            progress: !self.quiet,
        })
    }

    /// The distribution as the summary names it.
    pub fn distribution_name(&self) -> String {
        match self.distribution {
            Distribution::Uniform => "uniform".into(),
            Distribution::Zipfian => format!("zipfian({})", self.zipf_skew),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn the_documented_command_line_parses() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "run",
            "--protocol",
            "resp",
            "--addr",
            "127.0.0.1:6379",
            "--connections",
            "50",
            "--pipeline",
            "16",
            "--ratio",
            "1:0",
            "--keys",
            "1000",
            "--value-size",
            "100-1000",
            "--duration",
            "5",
            "--rate",
            "10000",
            "--json",
            "--cpus",
            "1,3-4",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.rate, Some(10000.0));
        let cfg = run.workload.to_config().unwrap();
        assert_eq!((cfg.connections, cfg.pipeline, cfg.keys.count()), (50, 16, 1000));
        assert_eq!(cfg.value_size, ValueSize { min: 100, max: 1000 });
        assert_eq!(cfg.cpus, Some(vec![1, 3, 4]));
        let cli = Cli::try_parse_from([
            "loadgen",
            "capacity",
            "--protocol",
            "binary",
            "--service-id",
            "svc",
            "--token",
            "t",
            "--slo-p99",
            "1ms",
            "--slo-p999",
            "5ms",
            "--distribution",
            "zipfian",
            "--zipf-skew",
            "1.1",
        ])
        .unwrap();
        let Command::Capacity(cap) = cli.command else {
            panic!("not capacity")
        };
        assert_eq!(cap.slo_p99, Some(Duration::from_millis(1)));
        assert_eq!(cap.workload.distribution_name(), "zipfian(1.1)");
        let mut bad = cap.workload.clone();
        bad.shard_aware = true;
        bad.protocol = Protocol::Resp;
        assert!(bad.to_config().is_err());
    }
}
