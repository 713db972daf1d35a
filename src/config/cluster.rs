//! Settings of the cluster (ICD 9.1 `cluster:`): how many nodes, which
//! zones, how many copies of each key, and how other nodes reach this one.

use super::{invalid, Cli, ConfigError};

/// Most copies of a key (the ICD's replication 2).
pub const MAX_REPLICATION: u8 = 2;

/// Validated cluster settings. `enabled` is false for a node alone
/// (`--cluster-nodes 1 --replication 1`), which then runs exactly as a
/// single server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Nodes the cluster is meant to have.
    pub nodes: usize,
    /// Zones of the cluster (empty: any).
    pub zones: Vec<String>,
    /// Copies of each slot: 1 or 2.
    pub replication: u8,
    /// The cluster's name: its JetStream KV bucket and subject prefix.
    pub name: String,
    /// The host other nodes and clients dial for this node.
    pub advertise_host: String,
    /// MiB/s a full copy this node serves may send (0: unpaced).
    pub catchup_rate_mib: u64,
    /// Copies JetStream keeps of the map bucket (a NATS cluster of 3
    /// servers keeps the map through the loss of one).
    pub nats_replicas: u8,
}

impl ClusterConfig {
    /// Validates the cluster flags (with this node's `--nats-url`,
    /// `--zone` and `--bind`).
    pub fn from_cli(cli: &Cli) -> Result<ClusterConfig, ConfigError> {
        let (nodes, replication, name) = (cli.cluster_nodes, cli.replication, cli.cluster_name.as_str());
        let (zones, advertise, bind) = (
            cli.cluster_zones.as_deref(),
            cli.advertise_addr.as_deref(),
            cli.bind,
        );
        let (nats_url, zone) = (cli.nats_url.as_deref(), cli.zone.as_str());
        let listed = nats_url.map_or(0, |u| crate::config::nats_url::servers(u).len());
        let nats_replicas = cli.nats_replicas.unwrap_or(if listed >= 3 { 3 } else { 1 });
        if !(1..=5).contains(&nats_replicas) {
            return Err(invalid("--nats-replicas", "must be 1 to 5"));
        }
        if !(1..=1024).contains(&nodes) {
            return Err(invalid("--cluster-nodes", "must be 1 to 1024"));
        }
        if !(1..=MAX_REPLICATION).contains(&replication) {
            return Err(invalid("--replication", "must be 1 or 2"));
        }
        if usize::from(replication) > nodes {
            return Err(invalid(
                "--replication",
                format!("{replication} copies need at least {replication} nodes (--cluster-nodes {nodes})"),
            ));
        }
        let zones: Vec<String> = zones
            .map(|z| {
                z.split(',')
                    .map(str::trim)
                    .filter(|z| !z.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        for z in &zones {
            super::check_label("--cluster-zones", z)?;
        }
        super::check_label("--cluster-name", name)?;
        let enabled = nodes > 1 || replication > 1;
        if enabled && nats_url.is_none() {
            return Err(invalid(
                if nodes > 1 {
                    "--cluster-nodes"
                } else {
                    "--replication"
                },
                "a cluster agrees on its members through NATS JetStream: give --nats-url (nats-server -js)",
            ));
        }
        if enabled && !zones.is_empty() && !zones.iter().any(|z| z == zone) {
            return Err(invalid(
                "--zone",
                format!("{zone:?} is not one of the cluster's zones {zones:?}"),
            ));
        }
        let advertise_host = match advertise {
            Some(host) if !host.is_empty() => host.to_string(),
            Some(_) => return Err(invalid("--advertise-addr", "must not be empty")),
            None if bind.is_unspecified() => "127.0.0.1".to_string(),
            None => bind.to_string(),
        };
        Ok(ClusterConfig {
            enabled,
            nodes,
            zones,
            replication,
            name: name.to_string(),
            advertise_host,
            catchup_rate_mib: cli.catchup_rate,
            nats_replicas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cluster(args: &[&str]) -> Result<ClusterConfig, ConfigError> {
        let argv = [
            "cache-server",
            "--bind",
            "0.0.0.0",
            "--cluster-zones",
            "us-east-1a, us-east-1b",
            "--zone",
            "us-east-1a",
        ];
        ClusterConfig::from_cli(&Cli::parse_from(argv.iter().chain(args)))
    }

    #[test]
    fn a_node_alone_needs_no_nats() {
        let c = cluster(&[]).unwrap();
        assert!(!c.enabled);
        assert_eq!(c.advertise_host, "127.0.0.1");
    }

    #[test]
    fn a_cluster_without_nats_is_refused_with_its_flag() {
        let flag = |args: &[&str]| cluster(args).unwrap_err().flag;
        assert_eq!(
            flag(&["--cluster-nodes", "3", "--replication", "2"]),
            "--cluster-nodes"
        );
        assert_eq!(
            flag(&["--cluster-nodes", "2", "--replication", "2"]),
            "--cluster-nodes"
        );
        let nats = ["--nats-url", "nats://127.0.0.1:4222"];
        let c = cluster(&[&nats[..], &["--cluster-nodes", "3", "--replication", "2"]].concat()).unwrap();
        assert!(c.enabled);
        assert_eq!(c.zones, ["us-east-1a", "us-east-1b"]);
    }

    #[test]
    fn bad_settings_name_their_flag() {
        let flag = |args: &[&str]| {
            cluster(&[&["--nats-url", "nats://n:4222"][..], args].concat())
                .unwrap_err()
                .flag
        };
        assert_eq!(
            flag(&["--cluster-nodes", "2", "--replication", "3"]),
            "--replication"
        );
        assert_eq!(
            flag(&["--cluster-nodes", "1", "--replication", "2"]),
            "--replication"
        );
        assert_eq!(flag(&["--cluster-nodes", "0"]), "--cluster-nodes");
        assert_eq!(flag(&["--cluster-nodes", "3", "--zone", "z"]), "--zone");
        assert_eq!(
            flag(&["--cluster-nodes", "3", "--advertise-addr", ""]),
            "--advertise-addr"
        );
    }
}
