//! The server's settings: command-line flags (clap), validated into a
//! [`ServerConfig`]. Errors name the flag and say why.

use std::ffi::OsString;
use std::net::IpAddr;

use clap::Parser;

use crate::hub::policy::{CacheType, Policy};
use crate::hub::HubConfig;
use crate::shard::store::EvictionPolicy;

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
    /// NATS server of the Message Hub, e.g. nats://127.0.0.1:4222 (default: events off).
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
    /// Zone of this node (metrics label, health events).
    #[arg(long, default_value = "default")]
    pub zone: String,
    /// REST: milliseconds a request (head, plus 1 s per MiB of body) may take to arrive.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub http_request_timeout_ms: u64,
    /// REST: milliseconds an idle keep-alive connection stays open.
    #[arg(long, hide = true, default_value_t = 30_000)]
    pub http_idle_timeout_ms: u64,

    // ---- security (issue 5): auth, TLS, encryption at rest, compression ----
    #[command(flatten, next_help_heading = "Security")]
    pub security: crate::security::SecurityArgs,
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
        let file_args = crate::config_file::load(&path).map_err(|e| CliExit::error(e.to_string()))?;
        let program = argv.first().cloned().unwrap_or_else(|| "cache-server".into());
        // The file alone must parse: its errors then name its key.
        if let Err(e) = Cli::try_parse_from(std::iter::once(program.clone()).chain(file_args.clone())) {
            let flag = e
                .get(clap::error::ContextKind::InvalidArg)
                .map(|a| a.to_string().split(' ').next().unwrap_or_default().to_string())
                .unwrap_or_default();
            let key = crate::config_file::key_of_flag(&flag).unwrap_or("a key");
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

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub service_id: String,
    pub environment: String,
    pub bind: IpAddr,
    pub port: u16,
    pub shard_port_base: u16,
    pub http_port: u16,
    /// One shard per entry, pinned to that CPU.
    pub cpus: Vec<usize>,
    pub pin: bool,
    pub ttl_default_s: u32,
    pub max_frame_bytes: usize,
    pub max_item_bytes: usize,
    pub max_connections: usize,
    pub max_memory_bytes: usize,
    pub eviction: EvictionPolicy,
    pub hash_seed: Option<u64>,
    /// REST deadlines (docs/rest.md).
    pub http_request_timeout: std::time::Duration,
    pub http_idle_timeout: std::time::Duration,
    /// Auth, TLS, encryption at rest, compression (loaded files included).
    pub security: crate::security::SecurityConfig,
    /// Message Hub bridge settings.
    pub hub: HubConfig,
    /// The policy shards start with (TTLs, cache types, event switches).
    pub policy: Policy,
}

/// A setting that cannot be used, with the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// Most memory one shard can manage (32,768 pages of 1 MiB).
pub const MAX_SHARD_MEMORY: usize = crate::slab::MAX_PAGES * crate::slab::MAX_PAGE_BYTES;

/// Largest number of shards.
pub const MAX_SHARDS: usize = 256;

impl ServerConfig {
    pub fn from_cli(cli: &Cli) -> Result<ServerConfig, ConfigError> {
        let online = online_cpus();
        let cpus = match (&cli.cpus, cli.shards) {
            (Some(list), _) => parse_cpu_list(list).map_err(|r| invalid("--cpus", r))?,
            (None, Some(n)) => {
                if n == 0 || n > MAX_SHARDS {
                    return Err(invalid("--shards", format!("must be 1 to {MAX_SHARDS}")));
                }
                (0..n).map(|i| online[i % online.len()]).collect()
            }
            (None, None) => online.clone(),
        };
        if cpus.len() > MAX_SHARDS {
            return Err(invalid("--cpus", format!("at most {MAX_SHARDS} shards")));
        }
        if !cli.no_pin {
            if let Some(cpu) = cpus.iter().find(|c| !online.contains(c)) {
                return Err(invalid(
                    "--cpus",
                    format!("CPU {cpu} is not available (online: {online:?})"),
                ));
            }
        }
        let max_frame_bytes =
            parse_size(&cli.max_frame_bytes).map_err(|r| invalid("--max-frame-bytes", r))?;
        if !(1024..=(1 << 30)).contains(&max_frame_bytes) {
            return Err(invalid("--max-frame-bytes", "must be between 1KiB and 1GiB"));
        }
        let max_item_bytes = parse_size(&cli.max_item_bytes).map_err(|r| invalid("--max-item-bytes", r))?;
        if max_item_bytes == 0 || max_item_bytes + 1024 > max_frame_bytes {
            return Err(invalid(
                "--max-item-bytes",
                "must be above 0 and at least 1KiB below --max-frame-bytes",
            ));
        }
        let max_memory_bytes = parse_memory(&cli.max_memory).map_err(|r| invalid("--max-memory", r))?;
        let per_shard = max_memory_bytes / cpus.len();
        if per_shard < (2 << 20) {
            return Err(invalid("--max-memory", "must give each shard at least 2MiB"));
        }
        if per_shard > MAX_SHARD_MEMORY {
            return Err(invalid(
                "--max-memory",
                "at most 32GiB per shard: use more shards",
            ));
        }
        let eviction = EvictionPolicy::parse(&cli.eviction).ok_or_else(|| {
            invalid(
                "--eviction",
                format!("{:?} is not \"lru\" or \"noeviction\"", cli.eviction),
            )
        })?;
        if cli.max_connections == 0 {
            return Err(invalid("--max-connections", "must be at least 1"));
        }
        if cli.port != 0 && cli.shard_port_base != 0 {
            let base = usize::from(cli.shard_port_base);
            if base + cpus.len() > 65536 {
                return Err(invalid("--shard-port-base", "shard ports would pass 65535"));
            }
            if (base..base + cpus.len()).contains(&usize::from(cli.port)) {
                return Err(invalid("--shard-port-base", "shard ports overlap --port"));
            }
        }
        let security = crate::security::SecurityConfig::from_args(&cli.security, cli.bind)?;
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        };
        if !id_ok(&cli.service_id) {
            return Err(invalid(
                "--service-id",
                "must be 1-128 characters of A-Z a-z 0-9 _ - . :",
            ));
        }
        if !id_ok(&cli.environment) {
            return Err(invalid(
                "--environment",
                "must be 1-128 characters of A-Z a-z 0-9 _ - . :",
            ));
        }
        let hub = hub_config(cli, &cpus)?;
        let policy = start_policy(cli)?;
        Ok(ServerConfig {
            service_id: cli.service_id.clone(),
            environment: cli.environment.clone(),
            bind: cli.bind,
            port: cli.port,
            shard_port_base: cli.shard_port_base,
            http_port: cli.http_port,
            cpus,
            pin: !cli.no_pin,
            ttl_default_s: cli.ttl_default,
            max_frame_bytes,
            max_item_bytes,
            max_connections: cli.max_connections,
            max_memory_bytes,
            eviction,
            hash_seed: cli.hash_seed,
            http_request_timeout: std::time::Duration::from_millis(cli.http_request_timeout_ms.max(1)),
            http_idle_timeout: std::time::Duration::from_millis(cli.http_idle_timeout_ms.max(1)),
            security,
            hub,
            policy,
        })
    }

    /// The policy every shard starts with.
    pub fn start_policy(&self) -> Policy {
        Policy {
            eviction: self.eviction.name().into(),
            ..self.policy.clone()
        }
    }
}

fn hub_config(cli: &Cli, _cpus: &[usize]) -> Result<HubConfig, ConfigError> {
    if let Some(url) = &cli.nats_url {
        url.parse::<async_nats::ServerAddr>()
            .map_err(|e| invalid("--nats-url", format!("{url:?}: {e}")))?;
    }
    if !(1..=86_400).contains(&cli.health_interval) {
        return Err(invalid("--health-interval", "must be 1 to 86400 seconds"));
    }
    if let Some(cpu) = cli.hub_cpu {
        if !online_cpus().contains(&cpu) {
            return Err(invalid("--hub-cpu", format!("CPU {cpu} is not available")));
        }
    }
    if !(16..=1 << 20).contains(&cli.event_queue) {
        return Err(invalid("--event-queue", "must be 16 to 1048576 events"));
    }
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
    };
    let node_id = cli.node_id.clone().unwrap_or_else(host_name);
    if !label_ok(&node_id) {
        return Err(invalid(
            "--node-id",
            "must be 1-128 characters of A-Z a-z 0-9 _ - . :",
        ));
    }
    if !label_ok(&cli.zone) {
        return Err(invalid(
            "--zone",
            "must be 1-128 characters of A-Z a-z 0-9 _ - . :",
        ));
    }
    Ok(HubConfig {
        nats_url: cli.nats_url.clone(),
        health_interval: std::time::Duration::from_secs(cli.health_interval),
        cpu: cli.hub_cpu,
        event_queue: cli.event_queue,
        item_headers: cli.event_headers,
        node_id,
        zone: cli.zone.clone(),
        ..HubConfig::default()
    })
}

fn start_policy(cli: &Cli) -> Result<Policy, ConfigError> {
    if cli.event_coalesce_ms > 60_000 {
        return Err(invalid("--event-coalesce-ms", "must be 0 to 60000"));
    }
    let mut policy = Policy::new(cli.ttl_default, cli.event_coalesce_ms);
    for spec in &cli.cache_type_ttl {
        let (name, secs) = spec
            .split_once('=')
            .ok_or_else(|| invalid("--cache-type-ttl", format!("{spec:?} is not TYPE=SECS")))?;
        let t = CacheType::from_name(name.trim())
            .ok_or_else(|| invalid("--cache-type-ttl", format!("unknown cache type {name:?}")))?;
        let secs: u32 = secs
            .trim()
            .parse()
            .map_err(|_| invalid("--cache-type-ttl", format!("{secs:?} is not a number of seconds")))?;
        policy.types[t as usize].ttl_s = secs;
    }
    for name in cli.no_events_for.iter().flat_map(|l| l.split(',')).map(str::trim) {
        match name {
            "" => {}
            "default" => policy.default_events = false,
            name => {
                let t = CacheType::from_name(name)
                    .ok_or_else(|| invalid("--no-events-for", format!("unknown cache type {name:?}")))?;
                policy.types[t as usize].events = false;
            }
        }
    }
    Ok(policy)
}

/// The host name, or "cache-node" when it cannot be read.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "cache-node".to_string(),
    }
}

/// CPUs this process may run on.
pub fn online_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Parses "0,1", "0-3,8".
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .map_err(|_| format!("{part:?} is not a CPU number or range"))?;
        let hi: usize = hi
            .parse()
            .map_err(|_| format!("{part:?} is not a CPU number or range"))?;
        if lo > hi || hi >= 4096 {
            return Err(format!("{part:?} is not a valid range"));
        }
        for c in lo..=hi {
            if cpus.contains(&c) {
                return Err(format!("CPU {c} is listed twice"));
            }
            cpus.push(c);
        }
    }
    if cpus.is_empty() {
        return Err("no CPU listed".into());
    }
    Ok(cpus)
}

/// Parses a byte size: "1048576", "512KiB", "64MiB", "4GiB", "1G", "10MB".
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mult)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a memory budget: a size, or a percentage of physical memory.
pub fn parse_memory(text: &str) -> Result<usize, String> {
    match text.trim().strip_suffix('%') {
        Some(pct) => {
            let pct: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage"))?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err("a percentage must be above 0 and at most 100".into());
            }
            Ok((physical_memory_bytes() as f64 * pct / 100.0) as usize)
        }
        None => parse_size(text),
    }
}

/// Physical memory of the host.
pub fn physical_memory_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && page > 0 {
        (pages as usize).saturating_mul(page as usize)
    } else {
        1 << 30
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_memory("75%").unwrap() > 0);
        assert!(parse_memory("0%").is_err());
        assert!(parse_memory("101%").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,1"), Ok(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-3,8"), Ok(vec![0, 1, 2, 3, 8]));
        assert!(parse_cpu_list("1,1").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn flags_are_validated_with_their_name() {
        let cli = Cli::parse_from(["cache-server", "--shards", "0"]);
        assert_eq!(ServerConfig::from_cli(&cli).unwrap_err().flag, "--shards");
        let cli = Cli::parse_from(["cache-server", "--max-memory", "lots"]);
        assert_eq!(ServerConfig::from_cli(&cli).unwrap_err().flag, "--max-memory");
        let cli = Cli::parse_from(["cache-server", "--max-item-bytes", "32MiB"]);
        assert_eq!(ServerConfig::from_cli(&cli).unwrap_err().flag, "--max-item-bytes");
        let cli = Cli::parse_from(["cache-server", "--shards", "1", "--port", "7100"]);
        assert_eq!(
            ServerConfig::from_cli(&cli).unwrap_err().flag,
            "--shard-port-base"
        );
        let cli = Cli::parse_from(["cache-server", "--shards", "1", "--eviction", "lfu"]);
        assert_eq!(ServerConfig::from_cli(&cli).unwrap_err().flag, "--eviction");
        let cli = Cli::parse_from(["cache-server", "--shards", "2", "--max-memory", "64MiB"]);
        let config = ServerConfig::from_cli(&cli).unwrap();
        assert_eq!(config.cpus.len(), 2);
        assert_eq!(config.max_memory_bytes, 64 << 20);
    }
}
