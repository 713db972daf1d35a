//! The Rust client of dnd-cache, `dnd_cache_client::CacheClient` (also
//! re-exported by the server crate as `dnd_cache::CacheClient`): async on Tokio, pipelined,
//! shard-aware, with the timeouts and retries of ICD section 9.2.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dnd_cache_client::ClientError> {
//! use dnd_cache_client::{CacheClient, ClientConfig};
//! let client = CacheClient::connect(ClientConfig::new("character_service")).await?;
//! client.set("character:1234", b"{\"hp\":12}", 3600).await?;
//! let value = client.get("character:1234").await?;
//! # Ok(()) }
//! ```
//!
//! One multiplexed connection per shard replaces a pool: every call is
//! pipelined on it, so concurrency needs no extra sockets.
//!
//! `address` may list several seeds (`"10.0.0.1:7000,10.0.0.2:7000"`): the
//! client enters by the first that answers the handshake (`seeds.rs`).

mod connection;
mod error;
mod seeds;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;

use connection::Connection;
use dnd_cache_proto::key::{key_hash, owner_of, slot_of, SLOTS};
use dnd_cache_proto::pb as proto;
use dnd_cache_proto::validate::check_key;
use seeds::Seeds;

pub use dnd_cache_proto::pb::{ItemResult, Metadata, Options};
pub use error::{ClientError, Status};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// "host:port" of the public binary port, or a comma-separated list of
    /// seeds: the first that answers the handshake is used. Default:
    /// `$DND_CACHE_ADDR`, else 127.0.0.1:7000.
    pub address: String,
    pub service_id: String,
    /// JWT sent in the handshake, when the server requires one.
    pub token: Option<String>,
    pub options: Options,
    /// ICD 9.2: 5 s.
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// ICD 9.2: 3 retries, exponential backoff with jitter, for failures of
    /// the connection (never for an error status the server sent).
    pub retries: u32,
    pub backoff: Duration,
    /// Send each key straight to its owner shard's port.
    pub shard_aware: bool,
    pub max_frame_bytes: usize,
}

impl ClientConfig {
    pub fn new(service_id: impl Into<String>) -> Self {
        ClientConfig {
            address: std::env::var("DND_CACHE_ADDR")
                .ok()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "127.0.0.1:7000".into()),
            service_id: service_id.into(),
            token: None,
            options: Options::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(50),
            shard_aware: true,
            max_frame_bytes: dnd_cache_proto::frame::DEFAULT_MAX_FRAME_BYTES,
        }
    }

    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn shard_aware(mut self, on: bool) -> Self {
        self.shard_aware = on;
        self
    }
}

/// A value with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub value: Bytes,
    pub metadata: Metadata,
}

struct Route {
    address: String,
    conn: Mutex<Option<Arc<Connection>>>,
}

/// A cache client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct CacheClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    hello: proto::CacheConnection,
    seed: u64,
    /// Route 0..n: one per shard when shard-aware; else a single route.
    shards: Vec<Arc<Route>>,
    /// The entry connection, to the seed that answered first (its
    /// `address`); it reconnects by walking the seeds again (`Seeds::open`).
    public: Arc<Route>,
    /// The seed addresses (not the hash `seed` above).
    seeds: Seeds,
    /// In a cluster: the slots of other nodes (docs/cluster.md).
    cluster: Option<Cluster>,
}

/// Where each slot of a cluster lives, as this client last learned it (the
/// handshake's map, then each CACHE_013 answer).
struct Cluster {
    /// `None`: the node this client connected to; else another node's
    /// public port.
    slots: std::sync::RwLock<Vec<Option<Arc<Route>>>>,
    /// One route per node address, shared by its slots.
    nodes: std::sync::Mutex<std::collections::HashMap<String, Arc<Route>>>,
}

impl Cluster {
    fn from_handshake(map: &proto::Handshake) -> Option<Cluster> {
        if map.cluster_epoch == 0 || map.slot_primary.len() != SLOTS {
            return None;
        }
        let cluster = Cluster {
            slots: std::sync::RwLock::new(vec![None; SLOTS]),
            nodes: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        let routes: Vec<Option<Arc<Route>>> = map
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (i as u32 != map.node_index).then(|| cluster.node(&format!("{}:{}", n.host, n.port)))
            })
            .collect();
        {
            let mut slots = cluster.slots.write().unwrap_or_else(|e| e.into_inner());
            for (slot, &p) in map.slot_primary.iter().enumerate() {
                slots[slot] = routes.get(p as usize).cloned().flatten();
            }
        }
        Some(cluster)
    }

    /// The route to a node's public port.
    fn node(&self, address: &str) -> Arc<Route> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .entry(address.to_string())
            .or_insert_with(|| {
                Arc::new(Route {
                    address: address.to_string(),
                    conn: Mutex::new(None),
                })
            })
            .clone()
    }

    fn route(&self, slot: usize) -> Option<Arc<Route>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())[slot].clone()
    }

    /// A CACHE_013 answer: the slot lives at `address` from now on.
    fn moved(&self, slot: usize, address: &str) -> Arc<Route> {
        let route = self.node(address);
        if let Some(s) = self
            .slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            *s = Some(route.clone());
        }
        route
    }
}

/// Most CACHE_013 redirections one request follows.
const MAX_REDIRECTS: u32 = 3;

/// The slot and node address of a CACHE_013 answer.
fn moved_target(data: &[u8]) -> Option<(usize, String)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let moved = &v["moved"];
    Some((
        moved["slot"].as_u64()? as usize,
        moved["address"].as_str()?.to_string(),
    ))
}

impl CacheClient {
    /// Connects to the public port (of the first seed that answers), learns
    /// the shard map, and (when shard-aware) prepares a connection per shard.
    pub async fn connect(config: ClientConfig) -> Result<CacheClient, ClientError> {
        let seeds = Seeds::parse(&config.address)?;
        let hello = proto::CacheConnection {
            service_id: config.service_id.clone(),
            auth_token: config.token.clone().unwrap_or_default(),
            options: Some(config.options.clone()),
            protocol_version: 1,
            correlation_id: String::new(),
        };
        let (address, first) = seeds
            .open(&hello, config.connect_timeout, config.max_frame_bytes)
            .await?;
        let map = first.handshake.clone();
        let host = address
            .rsplit_once(':')
            .map_or(address.as_str(), |(h, _)| h)
            .to_string();
        let shards =
            if config.shard_aware && map.shard_count > 1 && map.shard_ports.len() == map.shard_count as usize
            {
                map.shard_ports
                    .iter()
                    .map(|port| {
                        Arc::new(Route {
                            address: format!("{host}:{port}"),
                            conn: Mutex::new(None),
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
        let public = Arc::new(Route {
            address,
            conn: Mutex::new(Some(Arc::new(first))),
        });
        let cluster = Cluster::from_handshake(&map);
        Ok(CacheClient {
            inner: Arc::new(Inner {
                config,
                hello,
                seed: map.hash_seed,
                shards,
                public,
                seeds,
                cluster,
            }),
        })
    }

    fn route_for(&self, key: &[u8]) -> Arc<Route> {
        let hash = key_hash(key, self.inner.seed);
        if let Some(route) = self.inner.cluster.as_ref().and_then(|c| c.route(slot_of(hash))) {
            return route;
        }
        let shards = &self.inner.shards;
        if shards.is_empty() {
            self.inner.public.clone()
        } else {
            shards[owner_of(hash, shards.len())].clone()
        }
    }

    async fn connection(&self, route: &Route) -> Result<Arc<Connection>, ClientError> {
        let mut slot = route.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(conn.clone());
        }
        let c = &self.inner.config;
        let conn = if std::ptr::eq(route, &*self.inner.public) {
            // The seed may be down: walk the seeds from the one last used.
            let seeds = &self.inner.seeds;
            let (_, conn) = seeds
                .open(&self.inner.hello, c.connect_timeout, c.max_frame_bytes)
                .await?;
            Arc::new(conn)
        } else {
            Arc::new(
                Connection::open(
                    &route.address,
                    &self.inner.hello,
                    c.connect_timeout,
                    c.max_frame_bytes,
                )
                .await?,
            )
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends an operation (retrying failures of the connection) and returns
    /// the raw answer, whatever its status.
    /// In a cluster, a key's request goes to the node that owns its slot;
    /// a CACHE_013 answer (the map moved) is followed to the node it names.
    pub async fn execute(&self, op: &proto::CacheOperation) -> Result<proto::CacheResponse, ClientError> {
        let mut route = match op.operation.as_str() {
            "get" | "set" | "delete" => self.route_for(&op.key),
            _ => self.inner.public.clone(),
        };
        let config = &self.inner.config;
        let mut attempt = 0;
        let mut redirects = 0;
        loop {
            let result = match self.connection(&route).await {
                Ok(conn) => conn.call(op, config.request_timeout).await,
                Err(e) => Err(e),
            };
            match result {
                Err(ClientError::Io(_) | ClientError::Closed | ClientError::Timeout)
                    if attempt < config.retries =>
                {
                    attempt += 1;
                    tokio::time::sleep(backoff(config.backoff, attempt)).await;
                }
                Ok(resp) if resp.status == Status::Moved.code_number() && redirects < MAX_REDIRECTS => {
                    let Some((slot, address)) = moved_target(&resp.data) else {
                        return Ok(resp);
                    };
                    redirects += 1;
                    route = match &self.inner.cluster {
                        Some(cluster) => cluster.moved(slot, &address),
                        None => Arc::new(Route {
                            address,
                            conn: Mutex::new(None),
                        }),
                    };
                }
                other => return other,
            }
        }
    }

    async fn call(&self, op: proto::CacheOperation) -> Result<proto::CacheResponse, ClientError> {
        let resp = self.execute(&op).await?;
        check_status(&resp)?;
        Ok(resp)
    }

    /// The value of `key`; `None` when missing or expired.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, ClientError> {
        Ok(self.get_item(key).await?.map(|item| item.value))
    }

    /// The value of `key` with its metadata; `None` when missing or expired.
    pub async fn get_item(&self, key: impl AsRef<[u8]>) -> Result<Option<Item>, ClientError> {
        let key = checked_key(key.as_ref())?;
        let resp = self.execute(&op("get", key)).await?;
        match Status::from_u32(resp.status) {
            Some(Status::NotFound | Status::Expired) => Ok(None),
            _ => {
                check_status(&resp)?;
                Ok(Some(Item {
                    value: resp.data,
                    metadata: resp.metadata.unwrap_or_default(),
                }))
            }
        }
    }

    /// Stores `value` under `key` for `ttl_s` seconds (0 = server default).
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl_s: u32,
    ) -> Result<Metadata, ClientError> {
        let key = checked_key(key.as_ref())?;
        let mut o = op("set", key);
        o.value = Bytes::copy_from_slice(value.as_ref());
        o.ttl = ttl_s;
        Ok(self.call(o).await?.metadata.unwrap_or_default())
    }

    /// Removes `key`; whether it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, ClientError> {
        let key = checked_key(key.as_ref())?;
        let resp = self.execute(&op("delete", key)).await?;
        if resp.status == Status::NotFound.code_number() {
            return Ok(false);
        }
        check_status(&resp)?;
        Ok(true)
    }

    /// Values of `keys`, in order; `None` for keys missing or expired.
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Bytes>>, ClientError> {
        let mut o = op("get_many", b"");
        o.keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let resp = self.call(o).await?;
        let mut values = Vec::with_capacity(resp.items.len());
        for item in resp.items {
            values.push(match Status::from_u32(item.status) {
                Some(Status::Ok) => Some(item.data),
                Some(Status::NotFound | Status::Expired) => None,
                // In a cluster: a key of another node's slot.
                Some(Status::Moved) => self.get(&item.key).await?,
                _ => return Err(item_error(&item)),
            });
        }
        Ok(values)
    }

    /// Stores every entry with `ttl_s`; per-entry results in order.
    pub async fn set_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        entries: &[(K, V)],
        ttl_s: u32,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let mut o = op("set_many", b"");
        o.ttl = ttl_s;
        o.entries = entries
            .iter()
            .map(|(k, v)| proto::Entry {
                key: Bytes::copy_from_slice(k.as_ref()),
                value: Bytes::copy_from_slice(v.as_ref()),
                ttl: 0,
            })
            .collect();
        let mut items = self.call(o).await?.items;
        for (item, (_, value)) in items.iter_mut().zip(entries) {
            // In a cluster: a key of another node's slot.
            if item.status == Status::Moved.code_number() {
                let metadata = self.set(&item.key, value, ttl_s).await?;
                *item = ItemResult {
                    key: item.key.clone(),
                    status: Status::Ok.code_number(),
                    data: Bytes::new(),
                    metadata: Some(metadata),
                };
            }
        }
        Ok(items)
    }

    /// Removes `keys`; how many existed.
    pub async fn delete_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<usize, ClientError> {
        let mut o = op("delete_many", b"");
        o.keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let mut removed = 0;
        for item in self.call(o).await?.items {
            removed += match Status::from_u32(item.status) {
                Some(Status::Ok) => 1,
                // In a cluster: a key of another node's slot.
                Some(Status::Moved) => usize::from(self.delete(&item.key).await?),
                _ => 0,
            };
        }
        Ok(removed)
    }

    /// Keys matching a glob (at most `limit`, 0 = 1000).
    pub async fn pattern(&self, glob: &str, limit: u32) -> Result<Vec<Bytes>, ClientError> {
        let mut o = op("pattern", glob.as_bytes());
        o.limit = limit;
        Ok(self.call(o).await?.items.into_iter().map(|i| i.key).collect())
    }

    /// Removes every item on every shard; how many there were.
    pub async fn flush(&self) -> Result<u64, ClientError> {
        let resp = self.call(op("flush", b"")).await?;
        Ok(json(&resp)?["flushed"].as_u64().unwrap_or(0))
    }

    /// Server statistics (JSON).
    pub async fn stats(&self) -> Result<serde_json::Value, ClientError> {
        json(&self.call(op("stats", b"")).await?)
    }

    /// Server health (JSON).
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        json(&self.call(op("health", b"")).await?)
    }
}

fn op(name: &str, key: &[u8]) -> proto::CacheOperation {
    proto::CacheOperation {
        operation: name.into(),
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    }
}

fn checked_key(key: &[u8]) -> Result<&[u8], ClientError> {
    check_key(key)
        .map(|()| key)
        .map_err(|e| ClientError::InvalidRequest(e.message().into()))
}

fn json(resp: &proto::CacheResponse) -> Result<serde_json::Value, ClientError> {
    serde_json::from_slice(&resp.data).map_err(|e| ClientError::Protocol(format!("answer is not JSON: {e}")))
}

/// Turns an error status into an error.
pub(crate) fn check_status(resp: &proto::CacheResponse) -> Result<(), ClientError> {
    match Status::from_u32(resp.status) {
        Some(Status::Ok) => Ok(()),
        Some(status) => Err(ClientError::Server {
            status,
            message: String::from_utf8_lossy(&resp.data).into_owned(),
        }),
        None => Err(ClientError::UnknownStatus(resp.status)),
    }
}

fn item_error(item: &ItemResult) -> ClientError {
    match Status::from_u32(item.status) {
        Some(status) => ClientError::Server {
            status,
            message: String::from_utf8_lossy(&item.data).into_owned(),
        },
        None => ClientError::UnknownStatus(item.status),
    }
}

/// Exponential backoff with full jitter: uniform in [0, base × 2^attempt].
fn backoff(base: Duration, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap = base.saturating_mul(1 << attempt.min(10));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let fraction = (h.finish() % 1000) as u32;
    cap * fraction / 1000
}
