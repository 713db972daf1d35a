//! The command line of `cache-server` (clap), merged with `--config FILE`.

use std::ffi::OsString;
use std::net::IpAddr;

use clap::Parser;

/// Command line of `cache-server`.
#[derive(Debug, Parser)]
#[command(
    name = "cache-server",
    version,
    about = "dnd-cache: a thread-per-core cache server",
    args_override_self = true
)]
pub struct Cli {
    /// YAML configuration file (ICD 9.1 shape); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// This server's service id: the source of its events and metrics.
    #[arg(long, default_value = "cache_service")]
    pub service_id: String,
    /// Deployment environment label (e.g. production).
    #[arg(long, default_value = "production")]
    pub environment: String,
    /// Address every listener binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Binary protocol port, served by every shard (SO_REUSEPORT); 0 picks a free port.
    #[arg(long, default_value_t = 7000)]
    pub port: u16,
    /// Shard i also listens on this port + i (shard-aware clients); 0 picks free ports.
    #[arg(long, default_value_t = 7100)]
    pub shard_port_base: u16,
    /// REST/health port; 0 picks a free port.
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,
    /// Number of shards, pinned to CPUs 0..N-1 (default: one per CPU).
    #[arg(long, conflicts_with = "cpus")]
    pub shards: Option<usize>,
    /// CPUs to run one shard each on, e.g. "0,1" or "0-3,8".
    #[arg(long)]
    pub cpus: Option<String>,
    /// Do not pin shard threads to their CPUs (shared hosts, tests).
    #[arg(long)]
    pub no_pin: bool,
    /// TTL in seconds for writes that give none (0 = keep until evicted).
    #[arg(long, default_value_t = 3600)]
    pub ttl_default: u32,
    /// Largest frame accepted, in bytes (size suffixes allowed).
    #[arg(long, default_value = "16MiB")]
    pub max_frame_bytes: String,
    /// Largest key + value accepted, in bytes (size suffixes allowed).
    #[arg(long, default_value = "1MiB")]
    pub max_item_bytes: String,
    /// Unsent answers one connection may hold (size suffixes allowed): past
    /// it the connection reads no more requests until the client reads;
    /// one answer always goes through, however large (docs/memory.md).
    #[arg(long, default_value = "4MiB")]
    pub max_output_bytes: String,
    /// Seconds a connection may wait for its client to read its answers
    /// before it is closed (counted in cache_output_stall_closes_total).
    #[arg(long, default_value_t = 30)]
    pub output_stall_timeout: u64,
    /// Most client connections open at once, over all shards.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Memory for items: bytes ("512MiB", "4GiB") or a share of physical memory ("75%").
    #[arg(long, default_value = "75%")]
    pub max_memory: String,
    /// What a write that does not fit does: "lru" evicts the least recently
    /// used items (CLOCK), "noeviction" refuses it with CACHE_003.
    #[arg(long, default_value = "lru")]
    pub eviction: String,
    /// Fixed hash seed (default: random per start). For reproducible benchmarks.
    #[arg(long, hide = true)]
    pub hash_seed: Option<u64>,
    /// NATS server of the Message Hub, e.g. nats://127.0.0.1:4222, or several servers of one NATS cluster, comma separated (default: events off).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Seconds between cache.health.status events.
    #[arg(long, default_value_t = 10)]
    pub health_interval: u64,
    /// CPU to pin the Message Hub bridge thread to (default: not pinned).
    #[arg(long)]
    pub hub_cpu: Option<usize>,
    /// Events each shard queues for the bridge; beyond that they are dropped and counted.
    #[arg(long, default_value_t = 8192)]
    pub event_queue: usize,
    /// Repeat the envelope of item events as NATS headers (it is always in the JSON body).
    #[arg(long)]
    pub event_headers: bool,
    /// Coalesce writes of one key within this many milliseconds into one event (0 = off).
    #[arg(long, default_value_t = 0)]
    pub event_coalesce_ms: u32,
    /// Default TTL of a cache type, e.g. "character_data=600" (repeatable).
    #[arg(long, value_name = "TYPE=SECS")]
    pub cache_type_ttl: Vec<String>,
    /// Cache types whose writes publish no events ("default" = keys of no type), comma separated.
    #[arg(long, value_name = "TYPES")]
    pub no_events_for: Option<String>,
    /// Server id in metrics and events (default: the host name).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Zone of this node (metrics label, health events, replica placement).
    #[arg(long, default_value = "default")]
    pub zone: String,
    /// Nodes the cluster is meant to have (1: this node alone, no NATS needed).
    #[arg(long, default_value_t = 1)]
    pub cluster_nodes: usize,
    /// Copies of each key in the cluster: 1 or 2 (2 needs --nats-url).
    #[arg(long, default_value_t = 1)]
    pub replication: u8,
    /// Zones of the cluster, comma separated; this node's --zone must be one of them.
    #[arg(long, value_name = "ZONES")]
    pub cluster_zones: Option<String>,
    /// MiB per second a full copy to a catching-up replica may send (0: as fast as the replica takes it).
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub catchup_rate: u64,
    /// Copies JetStream keeps of the cluster's map bucket (default: 3 when --nats-url lists 3 or more servers, else 1).
    #[arg(long, value_name = "N")]
    pub nats_replicas: Option<u8>,
    /// Name of the cluster: its JetStream KV bucket and subject prefix.
    #[arg(long, default_value = "dnd-cache")]
    pub cluster_name: String,
    /// Host other nodes and clients dial for this node (default: --bind, or 127.0.0.1 for 0.0.0.0).
    #[arg(long, value_name = "HOST")]
    pub advertise_addr: Option<String>,
    /// REST: milliseconds a request (head, plus 1 s per MiB of body) may take to arrive.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub http_request_timeout_ms: u64,
    /// REST: milliseconds an idle keep-alive connection stays open.
    #[arg(long, hide = true, default_value_t = 30_000)]
    pub http_idle_timeout_ms: u64,

    // ---- security (issue 5): auth, TLS, encryption at rest, compression ----
    #[command(flatten, next_help_heading = "Security")]
    pub security: crate::config::SecurityArgs,
    // ---- end of security ----
}

/// Flags that cannot be given together; one from the command line drops
/// the other from the file.
const CONFLICTING_FLAGS: &[[&str; 2]] = &[["--shards", "--cpus"]];

impl Cli {
    /// Parses the command line, merging in `--config FILE` when given: the
    /// file's settings come first, so flags on the command line win. Errors
    /// are ready to print (they name the flag, or the file key).
    pub fn parse_with_file(argv: Vec<OsString>) -> Result<Cli, CliExit> {
        let cli = Cli::try_parse_from(&argv).map_err(CliExit::from)?;
        let Some(path) = cli.config.clone() else {
            return Ok(cli);
        };
        let file_args = crate::config::file::load(&path).map_err(|e| CliExit::error(e.to_string()))?;
        let program = argv.first().cloned().unwrap_or_else(|| "cache-server".into());
        // The file alone must parse: its errors then name its key.
        if let Err(e) = Cli::try_parse_from(std::iter::once(program.clone()).chain(file_args.clone())) {
            let flag = e
                .get(clap::error::ContextKind::InvalidArg)
                .map(|a| a.to_string().split(' ').next().unwrap_or_default().to_string())
                .unwrap_or_default();
            let key = crate::config::file::key_of_flag(&flag).unwrap_or("a key");
            let rendered = e.render().to_string();
            let reason = rendered
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            return Err(CliExit::error(format!("{}: {key}: {reason}", path.display())));
        }
        let given: Vec<String> = argv
            .iter()
            .skip(1)
            .filter_map(|a| a.to_str())
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap_or(a).to_string())
            .collect();
        let dropped: Vec<&str> = CONFLICTING_FLAGS
            .iter()
            .flat_map(|pair| {
                let (a, b) = (pair[0], pair[1]);
                let mut out = Vec::new();
                if given.iter().any(|g| g == a) {
                    out.push(b);
                }
                if given.iter().any(|g| g == b) {
                    out.push(a);
                }
                out
            })
            .collect();
        let mut merged = vec![program];
        let mut skip_value = false;
        for arg in file_args {
            if skip_value {
                skip_value = false;
                continue;
            }
            if dropped.iter().any(|d| arg == *d) {
                skip_value = true;
                continue;
            }
            merged.push(arg);
        }
        merged.extend(argv.into_iter().skip(1));
        Cli::try_parse_from(merged).map_err(CliExit::from)
    }
}

/// Why parsing the command line ended the program: an error to report, or
/// `--help` / `--version` output to print (exit 0).
#[derive(Debug)]
pub struct CliExit {
    pub message: String,
    pub is_error: bool,
}

impl CliExit {
    fn error(message: String) -> CliExit {
        CliExit {
            message,
            is_error: true,
        }
    }
}

impl From<clap::Error> for CliExit {
    fn from(e: clap::Error) -> CliExit {
        CliExit {
            message: e.render().to_string(),
            is_error: e.use_stderr(),
        }
    }
}
