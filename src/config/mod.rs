//! The server's settings: command-line flags ([`cli`]) and the YAML file
//! ([`file`]) validated into a [`ServerConfig`]. Errors name the flag and
//! say why. Sizes are parsed once, here ([`crate::size`]).

mod cli;
mod cluster;
pub mod file;
mod host;
mod hub;
pub(crate) mod nats_url;
mod security;

use std::net::IpAddr;

pub use cli::{Cli, CliExit};
pub use cluster::ClusterConfig;
pub use host::{online_cpus, parse_cpu_list};
pub use hub::HubConfig;
pub use security::{SecurityArgs, SecurityConfig};

use crate::size::{parse_memory, parse_size};
use host::host_name;

use crate::shard::policy::{CacheType, Policy};
use crate::shard::store::EvictionPolicy;

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
    /// Unsent answer bytes after which a connection stops reading requests.
    pub max_output_bytes: usize,
    /// How long a connection may wait for its client to read before it closes.
    pub output_stall_timeout: std::time::Duration,
    pub max_memory_bytes: usize,
    pub eviction: EvictionPolicy,
    pub hash_seed: Option<u64>,
    /// REST deadlines (docs/rest.md).
    pub http_request_timeout: std::time::Duration,
    pub http_idle_timeout: std::time::Duration,
    /// Auth, TLS, encryption at rest, compression (loaded files included).
    pub security: crate::config::SecurityConfig,
    /// Message Hub bridge settings.
    pub hub: HubConfig,
    /// Cluster settings (`enabled` false: a node alone).
    pub cluster: ClusterConfig,
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

/// An id or label (service id, environment, node id, zone): 1-128
/// characters of A-Z a-z 0-9 _ - . : (safe in metrics labels and subjects).
fn check_label(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(flag, "must be 1-128 characters of A-Z a-z 0-9 _ - . :"))
    }
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
        let max_output_bytes =
            parse_size(&cli.max_output_bytes).map_err(|r| invalid("--max-output-bytes", r))?;
        if !(4096..=(1 << 30)).contains(&max_output_bytes) {
            return Err(invalid("--max-output-bytes", "must be between 4KiB and 1GiB"));
        }
        if cli.output_stall_timeout == 0 {
            return Err(invalid("--output-stall-timeout", "must be at least 1 second"));
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
        let security = crate::config::SecurityConfig::from_args(&cli.security, cli.bind, cli.cluster_nodes)?;
        check_label("--service-id", &cli.service_id)?;
        check_label("--environment", &cli.environment)?;
        let hub = hub_config(cli, &cpus)?;
        let cluster = ClusterConfig::from_cli(cli)?;
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
            max_output_bytes,
            output_stall_timeout: std::time::Duration::from_secs(cli.output_stall_timeout),
            max_memory_bytes,
            eviction,
            hash_seed: cli.hash_seed,
            http_request_timeout: std::time::Duration::from_millis(cli.http_request_timeout_ms.max(1)),
            http_idle_timeout: std::time::Duration::from_millis(cli.http_idle_timeout_ms.max(1)),
            security,
            hub,
            cluster,
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
        nats_url::check(url).map_err(|e| invalid("--nats-url", e))?;
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
    let node_id = cli.node_id.clone().unwrap_or_else(host_name);
    check_label("--node-id", &node_id)?;
    check_label("--zone", &cli.zone)?;
    Ok(HubConfig {
        nats_url: cli.nats_url.clone(),
        health_interval: std::time::Duration::from_secs(cli.health_interval),
        cpu: cli.hub_cpu,
        event_queue: cli.event_queue,
        item_headers: cli.event_headers,
        source: cli.service_id.clone(),
        environment: cli.environment.clone(),
        node_id,
        zone: cli.zone.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
        assert_eq!(config.max_output_bytes, 4 << 20, "the documented default");
        assert_eq!(
            config.output_stall_timeout.as_secs(),
            30,
            "the documented default"
        );
        let cli = Cli::parse_from(["cache-server", "--max-output-bytes", "1KiB"]);
        assert_eq!(
            ServerConfig::from_cli(&cli).unwrap_err().flag,
            "--max-output-bytes"
        );
        let cli = Cli::parse_from(["cache-server", "--output-stall-timeout", "0"]);
        assert_eq!(
            ServerConfig::from_cli(&cli).unwrap_err().flag,
            "--output-stall-timeout"
        );
    }
}
