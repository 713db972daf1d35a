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

mod batch;
mod breaker;
mod cluster;
mod connection;
mod error;
mod seeds;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;

use cluster::{Cluster, Moved, OnMoved, MAX_REDIRECTS, STALE_WAIT};
use connection::Connection;
use dnd_cache_proto::key::{key_hash, owner_of};
use dnd_cache_proto::pb as proto;
use dnd_cache_proto::validate::check_key;
use seeds::Seeds;

pub use breaker::{BreakerConfig, BreakerState};
pub use cluster::RoutingStats;
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
    /// ICD 9.2's circuit breaker, one per node of a cluster.
    pub breaker: BreakerConfig,
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
            breaker: BreakerConfig::default(),
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

/// One address the client sends to, with its connection (opened on first
/// use, reopened after it closes).
pub(crate) struct Route {
    address: String,
    conn: Mutex<Option<Arc<Connection>>>,
}

impl Route {
    pub(crate) fn new(address: String) -> Route {
        Route {
            address,
            conn: Mutex::new(None),
        }
    }
}

/// Where one attempt of a request goes: the route, and in a cluster the
/// node behind it (whose breaker counts the outcome).
struct Target {
    route: Arc<Route>,
    node: Option<Arc<cluster::Node>>,
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
    /// In a cluster: where each slot lives (docs/cluster.md, "Routing").
    cluster: Option<Cluster>,
    /// The breaker of a lone server, and of the entry connection in a
    /// cluster (a cluster's nodes have their own).
    breaker: breaker::Breaker,
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
        let cluster = Cluster::from_handshake(&map, config.shard_aware, config.breaker);
        let breaker = breaker::Breaker::new(config.breaker);
        Ok(CacheClient {
            inner: Arc::new(Inner {
                config,
                hello,
                seed: map.hash_seed,
                shards,
                public,
                seeds,
                cluster,
                breaker,
            }),
        })
    }

    /// How this client routed so far (all zero for a lone server).
    pub fn routing_stats(&self) -> RoutingStats {
        self.inner
            .cluster
            .as_ref()
            .map(Cluster::stats)
            .unwrap_or_default()
    }

    /// In a cluster, the node (its public `host:port`) a key is sent to by
    /// the map this client holds; `None` for a lone server.
    pub fn node_for(&self, key: impl AsRef<[u8]>) -> Option<String> {
        let hash = key_hash(key.as_ref(), self.inner.seed);
        Some(self.inner.cluster.as_ref()?.route(hash).0.address.clone())
    }

    /// The state of the breaker of the node at `address` (a node's public
    /// `host:port` as the map names it); of the one breaker for a lone
    /// server (any address).
    pub fn breaker_state(&self, address: &str) -> BreakerState {
        match &self.inner.cluster {
            Some(c) => c
                .members()
                .into_iter()
                .find(|n| n.address == address)
                .map_or(BreakerState::Closed, |n| n.breaker.state()),
            None => self.inner.breaker.state(),
        }
    }

    /// Where a request goes: a key's (`hash`) to its slot's node and owner
    /// shard, anything else to the entry connection.
    fn target(&self, hash: Option<u64>) -> Target {
        if let (Some(hash), Some(cluster)) = (hash, &self.inner.cluster) {
            let (node, route) = cluster.route(hash);
            return Target {
                route,
                node: Some(node),
            };
        }
        let shards = &self.inner.shards;
        let route = match hash {
            Some(hash) if !shards.is_empty() => shards[owner_of(hash, shards.len())].clone(),
            _ => self.inner.public.clone(),
        };
        Target { route, node: None }
    }

    fn breaker_of<'a>(&'a self, target: &'a Target) -> &'a breaker::Breaker {
        target.node.as_ref().map_or(&self.inner.breaker, |n| &n.breaker)
    }

    /// Asks a node for the map it runs (a fresh handshake) and installs it
    /// if newer: `first` first, then the other nodes of the map but
    /// `avoid`, then the seeds. One refresh at a time, at most one per
    /// 100 ms; a node that does not answer within a second is skipped.
    async fn refresh(&self, first: Option<&str>, avoid: Option<&str>) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let Some(mut done) = cluster.refresh_slot().await else {
            return;
        };
        let c = &self.inner.config;
        let timeout = c.connect_timeout.min(std::time::Duration::from_secs(1));
        let mut answered = false;
        for node in cluster.refresh_candidates(first, avoid) {
            if node.breaker.state() == BreakerState::Open {
                continue;
            }
            if let Ok(conn) =
                Connection::open(&node.address, &self.inner.hello, timeout, c.max_frame_bytes).await
            {
                cluster.install(&conn.handshake);
                // The fresh connection serves the node's next requests.
                *node.public.conn.lock().await = Some(Arc::new(conn));
                answered = true;
                break;
            }
        }
        if !answered {
            if let Ok((_, conn)) = self
                .inner
                .seeds
                .open(&self.inner.hello, timeout, c.max_frame_bytes)
                .await
            {
                cluster.install(&conn.handshake);
            }
        }
        *done = Some(std::time::Instant::now());
    }

    /// [`CacheClient::refresh`] in the background (a redirection named a
    /// newer map than the client's: the other slots that moved with it are
    /// learned without a redirection each).
    fn refresh_later(&self, from: String) {
        let me = self.clone();
        tokio::spawn(async move { me.refresh(Some(&from), None).await });
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
        if let Some(cluster) = &self.inner.cluster {
            cluster.install(&conn.handshake);
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends an operation (retrying failures of the connection) and returns
    /// the raw answer, whatever its status.
    ///
    /// In a cluster a key's request goes to its slot's node (its owner
    /// shard); a CACHE_013 answer is followed to the node it names (at most
    /// 3 times), or, when it comes from a node on an older map than the
    /// client's, waited on (at most 2 s); a connection error refreshes the
    /// map before the retry. Each node's breaker counts its outcomes.
    pub async fn execute(&self, op: &proto::CacheOperation) -> Result<proto::CacheResponse, ClientError> {
        let keyed = matches!(op.operation.as_str(), "get" | "set" | "delete");
        let hash = keyed.then(|| key_hash(&op.key, self.inner.seed));
        self.send(op, self.target(hash), hash).await
    }

    /// [`CacheClient::execute`] from a first target; `hash` is the key's
    /// for a single-key request (redirections and refreshes re-route it).
    async fn send(
        &self,
        op: &proto::CacheOperation,
        mut target: Target,
        hash: Option<u64>,
    ) -> Result<proto::CacheResponse, ClientError> {
        let cluster = self.inner.cluster.as_ref();
        let config = &self.inner.config;
        let mut attempt = 0;
        let mut redirects = 0;
        let mut stale: Option<(std::time::Instant, u32)> = None;
        loop {
            if !self.breaker_of(&target).allow() {
                // The slot may have moved off the failing node.
                if let (Some(node), Some(_)) = (&target.node, cluster) {
                    let avoid = node.address.clone();
                    self.refresh(None, Some(&avoid)).await;
                    let next = self.target(hash);
                    if next.node.as_ref().is_some_and(|n| n.address != avoid) {
                        target = next;
                        continue;
                    }
                }
                return Err(ClientError::CircuitOpen(target.route.address.clone()));
            }
            let result = match self.connection(&target.route).await {
                Ok(conn) => conn.call(op, config.request_timeout).await,
                Err(e) => Err(e),
            };
            let breaker = self.breaker_of(&target);
            let resp = match result {
                Err(e @ (ClientError::Io(_) | ClientError::Closed | ClientError::Timeout)) => {
                    breaker.record(false);
                    if attempt >= config.retries {
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff(config.backoff, attempt)).await;
                    if let Some(node) = &target.node {
                        let failed = node.address.clone();
                        self.refresh(None, Some(&failed)).await;
                        if hash.is_some() {
                            target = self.target(hash);
                        }
                    }
                    continue;
                }
                Err(e) => {
                    breaker.abandon();
                    return Err(e);
                }
                Ok(resp) => resp,
            };
            let unhealthy = [Status::TooManyConnections, Status::Unavailable].map(Status::code_number);
            breaker.record(!unhealthy.contains(&resp.status));
            if resp.status != Status::Moved.code_number() {
                return Ok(resp);
            }
            let Some(moved) = Moved::parse(&resp.data) else {
                return Ok(resp);
            };
            match (cluster, hash) {
                (Some(cluster), Some(hash)) => match cluster.moved(hash, &moved) {
                    (OnMoved::Follow, node, route) if redirects < MAX_REDIRECTS => {
                        redirects += 1;
                        if moved.epoch > cluster.epoch() {
                            self.refresh_later(moved.address.clone());
                        }
                        target = Target {
                            route,
                            node: Some(node),
                        };
                    }
                    (OnMoved::Wait, _, _) => {
                        let (since, tries) = stale.get_or_insert((std::time::Instant::now(), 0));
                        if since.elapsed() >= STALE_WAIT {
                            return Ok(resp);
                        }
                        tokio::time::sleep(cluster::stale_backoff(*tries)).await;
                        *tries += 1;
                    }
                    _ => return Ok(resp),
                },
                // A lone server's client (or a request of no key) follows
                // the address as it is.
                _ if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    target = Target {
                        route: Arc::new(Route::new(moved.address)),
                        node: None,
                    };
                }
                _ => return Ok(resp),
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
