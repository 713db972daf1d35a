//! Opening connections: TCP connect, the binary protocol's handshake, and the
//! shard map a shard-aware client routes with. Done before the clock starts,
//! with plain blocking sockets; workers get them ready and non-blocking.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::LoadConfig;
use crate::protocol::binary::{self, HandshakeAnswer};
use crate::protocol::Codec;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where each key goes when the client is shard-aware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// `addrs[i]` serves shard `i` (in a cluster: shard `i % per_node` of
    /// node `i / per_node`).
    pub addrs: Vec<SocketAddr>,
    /// `xxh3_64_with_seed` seed.
    pub seed: u64,
    /// How a worker finds a key's socket.
    pub route: Route,
}

/// How a key is routed among a logical connection's sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub seed: u64,
    /// In a cluster: the primary node of each slot (slot = hash >> 52);
    /// empty for a node alone.
    pub slot_node: Arc<[u32]>,
    /// Shards per node (in a cluster).
    pub per_node: u32,
    /// `--node`: only keys whose primary is this node (index in the map).
    pub node: Option<u32>,
}

impl Route {
    /// Whether `key`'s primary is the `--node` node.
    pub fn on_node(&self, key: &[u8]) -> bool {
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed);
        self.slot_node.get((hash >> 52) as usize).copied() == self.node
    }

    /// The socket (of `sockets`) that serves `key`.
    #[inline]
    pub fn socket(&self, key: &[u8], sockets: u32) -> u32 {
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed);
        match self.slot_node.get((hash >> 52) as usize) {
            Some(&node) => node * self.per_node + (hash % u64::from(self.per_node.max(1))) as u32,
            None => (hash % u64::from(sockets.max(1))) as u32,
        }
    }
}

impl ShardMap {
    /// Builds the map from a handshake answer; shard ports share `addr`'s host.
    pub fn from_handshake(addr: SocketAddr, ans: &HandshakeAnswer) -> anyhow::Result<Self> {
        if ans.shard_count == 0 || ans.shard_ports.len() != ans.shard_count as usize {
            bail!(
                "handshake lists {} shard ports for {} shards; cannot route by shard",
                ans.shard_ports.len(),
                ans.shard_count
            );
        }
        let addrs = ans
            .shard_ports
            .iter()
            .map(|&p| SocketAddr::new(addr.ip(), p))
            .collect();
        Ok(ShardMap {
            addrs,
            seed: ans.hash_seed,
            route: Route {
                seed: ans.hash_seed,
                ..Route::default()
            },
        })
    }

    /// Builds the map of a cluster from a handshake answer: every node's
    /// shards, and the primary node of each slot.
    pub fn from_cluster(ans: &HandshakeAnswer, only: Option<&str>) -> anyhow::Result<Self> {
        if ans.cluster_epoch == 0 || ans.slot_primary.len() != 4096 {
            bail!("--cluster: the server is not in a cluster (no slot map in its handshake)");
        }
        let per_node = ans.nodes.first().map_or(0, |n| n.shard_ports.len());
        let mut addrs = Vec::new();
        for node in &ans.nodes {
            if node.shard_ports.len() != per_node || per_node == 0 {
                bail!(
                    "--cluster: node {} has {} shard ports, another {per_node}",
                    node.id,
                    node.shard_ports.len()
                );
            }
            let ip: std::net::IpAddr = node
                .host
                .parse()
                .with_context(|| format!("--cluster: node {} host {:?}", node.id, node.host))?;
            addrs.extend(node.shard_ports.iter().map(|&p| SocketAddr::new(ip, p)));
        }
        let node = match only {
            None => None,
            Some(id) => Some(
                ans.nodes
                    .iter()
                    .position(|n| n.id == id)
                    .with_context(|| format!("--node {id}: not a node of the cluster's map"))?
                    as u32,
            ),
        };
        Ok(ShardMap {
            addrs,
            seed: ans.hash_seed,
            route: Route {
                seed: ans.hash_seed,
                slot_node: ans.slot_primary.iter().copied().collect(),
                per_node: per_node as u32,
                node,
            },
        })
    }
}

/// Connects to `addr`; for the binary protocol also sends the handshake and
/// checks its answer.
pub fn connect(addr: SocketAddr, cfg: &LoadConfig) -> anyhow::Result<(TcpStream, Option<HandshakeAnswer>)> {
    let stream = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let answer = match cfg.codec {
        Codec::Binary => Some(handshake(&stream, cfg).with_context(|| format!("handshake with {addr}"))?),
        _ => None,
    };
    Ok((stream, answer))
}

fn handshake(mut stream: &TcpStream, cfg: &LoadConfig) -> anyhow::Result<HandshakeAnswer> {
    let mut frame = Vec::new();
    binary::encode_handshake(&mut frame, &cfg.service_id, &cfg.token, &cfg.consistency);
    stream.write_all(&frame)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((len, answer)) = binary::parse_handshake(&buf).map_err(|e| anyhow::anyhow!("{e}"))? {
            if answer.status != 0 {
                bail!(
                    "refused: {} {}",
                    binary::status_label(answer.status).as_str(),
                    answer.message
                );
            }
            if len != buf.len() {
                bail!(
                    "server sent {} unexpected bytes after the handshake",
                    buf.len() - len
                );
            }
            stream.set_read_timeout(None)?;
            return Ok(answer);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Learns the shard map from one handshake on the public port.
pub fn discover_shards(cfg: &LoadConfig) -> anyhow::Result<ShardMap> {
    let (_stream, answer) = connect(cfg.addr, cfg)?;
    let answer = answer.context("--shard-aware needs the binary protocol")?;
    if cfg.cluster {
        return ShardMap::from_cluster(&answer, cfg.node.as_deref());
    }
    ShardMap::from_handshake(cfg.addr, &answer)
}

/// Opens one logical connection: one socket, or one per shard when `shards`
/// is given (socket `i` talks to shard `i`).
pub fn open_logical(cfg: &LoadConfig, shards: Option<&ShardMap>) -> anyhow::Result<Vec<TcpStream>> {
    match shards {
        None => Ok(vec![connect(cfg.addr, cfg)?.0]),
        Some(map) => map
            .addrs
            .iter()
            .map(|&a| connect(a, cfg).map(|(s, _)| s))
            .collect(),
    }
}
