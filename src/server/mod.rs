//! Starting the shards, their listeners and accept loops; stopping them.
//!
//! - [`dispatch`]: the request path shared by both protocols;
//! - `binary/`: binary-protocol connections (handshake, read/write loop);
//! - `rest/`: REST connections (HTTP/1.1 loop, request handler);
//! - [`uring`]: our own io_uring socket path; `tls`, `inbuf`, `listener`,
//!   `shutdown`: what every connection needs.

mod binary;
pub(crate) mod dispatch;
mod inbuf;
mod listener;
pub(crate) mod output;
mod rest;
mod shutdown;
pub(crate) mod tls;
mod uring;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::control::ControlPlane;
use crate::shard::events::EventSink;
use crate::shard::stats::Tally;
use crate::shard::store::StoreConfig;
use crate::shard::{Shard, ShardLimits};
use dispatch::forward::{MeshPlan, Router};
use shutdown::ShutdownSignal;

/// What every shard knows about the server; immutable after start except
/// the connection count (touched on accept and close only).
pub struct ServerInfo {
    pub shard_ports: Vec<u16>,
    pub max_connections: usize,
    pub open_connections: AtomicUsize,
    /// Set by [`StopHandle::stop`]; each shard polls it.
    pub stopping: AtomicBool,
    /// Per shard: unix milliseconds of its last heartbeat (every 50 ms while
    /// its executor runs), for the systemd watchdog.
    pub heartbeats: Vec<AtomicU64>,
    /// Set once every shard serves (REST `/health/ready`).
    pub started: AtomicBool,
    /// Limits and deadlines of the REST port.
    pub http: rest::conn::HttpSettings,
    /// What one connection may hold for a client that does not read.
    pub output: output::OutputSettings,
    /// TLS for both listeners (`--tls-cert`, `--tls-key`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// JWT keys, shared with every shard's [`ShardRuntime::auth`].
    pub auth: Arc<crate::auth::AuthHub>,
    /// Commands into the shards from other threads (metrics scrapes, the
    /// Message Hub bridge).
    pub control: Arc<ControlPlane>,
}

/// The tasks of one shard share this.
pub struct ShardRuntime {
    pub shard: Rc<Shard>,
    pub router: Rc<Router>,
    pub server: Arc<ServerInfo>,
    pub shutdown: ShutdownSignal,
    pub open_connections: Cell<usize>,
    /// This shard's copy of the JWT verifier.
    pub auth: crate::auth::ShardAuth,
    /// The ring client sockets are read through.
    pub uring: Rc<uring::Driver>,
}

/// Longest wait of a shard in its own ring before it lets glommio turn
/// (`uring::RingWait`; docs/perf/syscalls.md). `DND_CACHE_RING_WAIT_US`
/// sets it for measurements; 0 turns waiting in the ring off.
const RING_WAIT: Duration = Duration::from_millis(1);

fn ring_wait() -> Duration {
    std::env::var("DND_CACHE_RING_WAIT_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(RING_WAIT, Duration::from_micros)
}

/// How long shutdown waits for connections to finish what they were doing.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Background upkeep of each store: each pass looks for expired items in
/// `SWEEP_BUDGET` index entries (well under a millisecond), every
/// `SWEEP_INTERVAL_BUSY` (200,000 entries a second per shard) while at
/// least a tenth of what is visited has expired, else every
/// `SWEEP_INTERVAL_IDLE` (20,000 a second), so that a cache of long-lived
/// items does not pay for the sweep and an idle shard wakes ten times a
/// second, not a hundred; pages moving between size classes also keep the
/// quick pace (at most about 1 MiB per pass). An expired item is reclaimed when read, when
/// memory is needed, or by the sweep within `items_per_shard / 20,000`
/// seconds at most. Eviction pressure, which decides the page moves, decays
/// every `PRESSURE_DECAY_INTERVAL`.
const SWEEP_INTERVAL_BUSY: Duration = Duration::from_millis(10);
const SWEEP_INTERVAL_IDLE: Duration = Duration::from_millis(100);
const SWEEP_BUDGET: usize = 2_000;
const PRESSURE_DECAY_INTERVAL: Duration = Duration::from_millis(100);

/// A started server.
pub struct RunningServer {
    pub binary_addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    pub http_addr: SocketAddr,
    info: Arc<ServerInfo>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    hub: Option<std::thread::JoinHandle<()>>,
    cluster: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The line a script reads to learn where the server listens.
    pub fn listening_line(&self) -> String {
        let ports: Vec<String> = self.shard_ports.iter().map(u16::to_string).collect();
        format!(
            "LISTENING binary={} shards={} shard_ports={} http={}",
            self.binary_addr,
            self.shard_ports.len(),
            ports.join(","),
            self.http_addr
        )
    }

    /// A handle that stops the server from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.info.clone())
    }

    /// The JWT keys, for the reloader (SIGHUP, REST and binary `reload`).
    pub fn auth_hub(&self) -> Arc<crate::auth::AuthHub> {
        self.info.auth.clone()
    }

    /// Reaches every shard from any thread: metrics snapshots
    /// ([`ControlPlane::gather`] then [`crate::metrics::render_prometheus`]).
    pub fn control(&self) -> Arc<ControlPlane> {
        self.info.control.clone()
    }

    /// Waits until every shard (and the Message Hub bridge) has stopped.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
        for helper in [self.hub, self.cluster].into_iter().flatten() {
            let _ = helper.join();
        }
    }
}

/// Stops a running server: listeners close, connections finish the
/// requests in flight and close, shards exit.
#[derive(Clone)]
pub struct StopHandle(Arc<ServerInfo>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether every shard's executor has run within `max_age`.
    pub fn all_shards_alive(&self, max_age: Duration) -> bool {
        let now = now_ms();
        let max_age = max_age.as_millis() as u64;
        self.0
            .heartbeats
            .iter()
            .all(|h| now.saturating_sub(h.load(Ordering::Relaxed)) <= max_age)
    }
}

/// Binds every listener, starts one pinned executor per shard, and returns
/// once every shard accepts connections.
pub fn start(config: &ServerConfig) -> anyhow::Result<RunningServer> {
    if config.security.codec.key.is_some() {
        wipe_freed_heap_memory();
    }
    let shards = config.cpus.len();
    let listeners = listener::bind_all(config)?;
    let info = Arc::new(ServerInfo {
        shard_ports: listeners.shard_ports.clone(),
        max_connections: config.max_connections,
        open_connections: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        heartbeats: (0..shards).map(|_| AtomicU64::new(now_ms())).collect(),
        started: AtomicBool::new(false),
        http: rest::conn::HttpSettings {
            request_timeout: config.http_request_timeout,
            idle_timeout: config.http_idle_timeout,
            max_body_bytes: config.max_frame_bytes,
        },
        output: output::OutputSettings {
            max_bytes: config.max_output_bytes,
            stall_timeout: config.output_stall_timeout,
        },
        tls: config.security.tls.clone(),
        auth: config.security.auth.clone(),
        control: Arc::new(ControlPlane::new(
            shards,
            config.hub.node_id.clone(),
            config.hub.zone.clone(),
            config.start_policy(),
        )),
    });
    let policy = config.start_policy();
    let events_on = config.hub.nats_url.is_some();
    let mut event_queues = Vec::new();
    let event_bell = Arc::new(crate::shard::events::EventBell::default());
    let me = crate::cluster::slots::NodeInfo {
        id: config.hub.node_id.clone(),
        zone: config.hub.zone.clone(),
        host: config.cluster.advertise_host.clone(),
        port: listeners.public_addr.port(),
        http_port: listeners.http_addr.port(),
        shard_ports: listeners.shard_ports.clone(),
        incarnation: crate::time::unix_now_us(),
    };
    // With two copies, each shard hands its writes to the agent.
    let replicated = config.cluster.enabled && config.cluster.replication >= 2;
    let repl_shared = Arc::new(crate::shard::replication::ReplShared::default());
    let (mut repl_sinks, repl_queues): (Vec<_>, Vec<_>) = (0..shards)
        .filter(|_| replicated)
        .map(|_| crate::shard::replication::ReplSink::new(repl_shared.clone()))
        .map(|(sink, queue)| (Some(sink), queue))
        .unzip();
    let repl_wiring = crate::shard::replication::ReplWiring {
        queues: repl_queues,
        shared: repl_shared,
    };
    repl_sinks.resize_with(shards, || None);
    let mut repl_sinks = repl_sinks.into_iter();
    let (cluster, cluster_state) = start_cluster(config, me, &info, repl_wiring)?;
    // In a cluster every node hashes keys with the map's seed, so that a
    // key has one slot everywhere: wait for the first map.
    let seed = match &cluster_state {
        Some(state) => match state.wait_for_map(CLUSTER_JOIN_TIMEOUT) {
            Some(map) => map.seed,
            None => anyhow::bail!(
                "no cluster map within {CLUSTER_JOIN_TIMEOUT:?}: is nats-server reachable at {} and started with -js?",
                crate::config::nats_url::redacted(config.hub.nats_url.as_deref().unwrap_or_default())
            ),
        },
        None => config.hash_seed.unwrap_or_else(random_seed),
    };
    let per_shard_memory = config.max_memory_bytes / shards;
    let plan = MeshPlan::new(shards);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let mut threads = Vec::with_capacity(shards);
    let mut public = listeners.public.into_iter();
    let mut own = listeners.own.into_iter();
    let mut http_fds = listeners.http.into_iter();
    for (id, &cpu) in config.cpus.iter().enumerate() {
        let public_fd = public.next().expect("one public listener per shard");
        let own_fd = own.next().expect("one shard listener per shard");
        let http_fd = http_fds.next().expect("one HTTP listener per shard");
        let store = StoreConfig {
            seed,
            memory_limit_bytes: per_shard_memory,
            max_item_bytes: config.max_item_bytes,
            default_ttl_s: config.ttl_default_s,
            eviction: config.eviction,
        };
        let limits = ShardLimits {
            max_frame_bytes: config.max_frame_bytes,
            max_item_bytes: config.max_item_bytes,
        };
        let (plan, info, ready) = (plan.clone(), info.clone(), ready_tx.clone());
        let codec = config.security.codec.clone();
        let policy = policy.clone();
        let repl = repl_sinks.next().flatten();
        let events = events_on.then(|| {
            let (sink, queue) = EventSink::with_capacity(config.hub.event_queue, event_bell.clone());
            event_queues.push(queue);
            sink
        });
        let placement = if config.pin {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let ring_wait = ring_wait();
        let builder = LocalExecutorBuilder::new(placement).name(&format!("shard-{id}"));
        let doorbell = info.control.doorbell_fd(id);
        let handle = builder
            .spawn(move || async move {
                let codec = crate::codec::ValueCodec::new(&codec, limits.max_item_bytes);
                let mut shard = Shard::new(id, shards, limits, store).with_codec(codec);
                shard.attach_hub(policy, events);
                if let Some(sink) = repl {
                    shard.attach_replication(sink);
                }
                let shard = Rc::new(shard);
                let auth = crate::auth::ShardAuth::new(info.auth.clone());
                let router = Router::join(shard.clone(), plan).await;
                let uring = match uring::Driver::new().and_then(|d| {
                    d.wait_in_ring(uring::RingWait {
                        max: ring_wait,
                        doorbell,
                        poke: router.poke(),
                        gate: Some(router.clone()),
                    });
                    d.spawn().map(|()| d)
                }) {
                    Ok(driver) => driver,
                    Err(e) => {
                        let _ = ready.send(Err(format!("shard {id}: setting up io_uring: {e}")));
                        return;
                    }
                };
                uring.set_warm(Rc::new(dispatch::warm::ShardWarm(shard.clone())));
                let rt = Rc::new(ShardRuntime {
                    shard,
                    router,
                    server: info,
                    shutdown: ShutdownSignal::default(),
                    open_connections: Cell::new(0),
                    auth,
                    uring,
                });
                run_shard(rt, public_fd, own_fd, http_fd, ready).await;
            })
            .map_err(|e| anyhow::anyhow!("starting shard {id} on CPU {cpu}: {e}"))?;
        threads.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!(e),
            Err(_) => anyhow::bail!("a shard stopped during start"),
        }
    }
    info.started.store(true, Ordering::Release);
    info!(shards, seed, "all shards serving");
    if config.security.generated_key {
        info!("values asked to be encrypted use a key generated at start and held in memory only: they last as long as this process (--encryption-key-file to choose the key)");
    } else if config.security.codec.key.is_none() {
        warn!(
            "a cluster node without --encryption-key-file: requests for encryption are refused (CACHE_006)"
        );
    }
    let hub = if events_on {
        let stop_info = info.clone();
        let stopping = Arc::new(move || stop_info.stopping.load(Ordering::Relaxed));
        Some(crate::hub::start(
            config.hub.clone(),
            policy,
            info.control.clone(),
            event_queues,
            stopping,
        )?)
    } else {
        None
    };
    Ok(RunningServer {
        binary_addr: listeners.public_addr,
        shard_ports: listeners.shard_ports,
        http_addr: listeners.http_addr,
        info,
        threads,
        hub,
        cluster,
    })
}

/// Starts the cluster agent when the node runs in a cluster.
fn start_cluster(
    config: &ServerConfig,
    me: crate::cluster::slots::NodeInfo,
    info: &Arc<ServerInfo>,
    repl: crate::shard::replication::ReplWiring,
) -> anyhow::Result<ClusterParts> {
    let (true, Some(url)) = (config.cluster.enabled, config.hub.nats_url.clone()) else {
        return Ok((None, None));
    };
    let state = crate::cluster::ClusterState::new(me, config.cluster.replication);
    let _ = info.control.cluster.set(state.clone());
    let stop_info = info.clone();
    let stopping = Arc::new(move || stop_info.stopping.load(Ordering::Relaxed));
    let control = info.control.clone();
    let agent = crate::cluster::start(
        config.cluster.clone(),
        url,
        state.clone(),
        control,
        repl,
        stopping,
    )?;
    Ok((Some(agent), Some(state)))
}

/// The cluster agent's thread and the cluster's state, in a cluster.
type ClusterParts = (
    Option<std::thread::JoinHandle<()>>,
    Option<Arc<crate::cluster::ClusterState>>,
);

/// How long a node in a cluster waits at start for the slot map.
const CLUSTER_JOIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn run_shard(
    rt: Rc<ShardRuntime>,
    public_fd: OwnedFd,
    own_fd: OwnedFd,
    http_fd: OwnedFd,
    ready: mpsc::Sender<Result<usize, String>>,
) {
    // SAFETY: each fd is a bound, listening TCP socket created by
    // `listener::bind_all` and owned by this shard alone.
    let public = unsafe { glommio::net::TcpListener::from_raw_fd(public_fd.into_raw_fd()) };
    // SAFETY: as above.
    let own = unsafe { glommio::net::TcpListener::from_raw_fd(own_fd.into_raw_fd()) };
    // SAFETY: as above.
    let http = unsafe { glommio::net::TcpListener::from_raw_fd(http_fd.into_raw_fd()) };
    let accept_public = glommio::spawn_local(accept_loop(rt.clone(), public, Front::Binary));
    let accept_own = glommio::spawn_local(accept_loop(rt.clone(), own, Front::Binary));
    let accept_http = glommio::spawn_local(accept_loop(rt.clone(), http, Front::Http));
    glommio::spawn_local(sweep_loop(rt.clone())).detach();
    glommio::spawn_local(crate::control::serve_shard(
        rt.shard.clone(),
        rt.server.control.clone(),
        rt.shutdown.wait(),
    ))
    .detach();
    let _ = ready.send(Ok(rt.shard.id()));

    while !rt.server.stopping.load(Ordering::Relaxed) {
        rt.server.heartbeats[rt.shard.id()].store(now_ms(), Ordering::Relaxed);
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    rt.shard.start_draining();
    rt.shutdown.fire();
    accept_public.await;
    accept_own.await;
    accept_http.await;
    // Connections finish the cycle in flight, then close. Other shards may
    // still forward work here until their own connections are done.
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while rt.server.open_connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    info!(shard = rt.shard.id(), "shard stopped");
}

/// The protocol a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    Binary,
    /// REST and health over HTTP/1.1.
    Http,
}

async fn accept_loop(rt: Rc<ShardRuntime>, listener: glommio::net::TcpListener, front: Front) {
    let mut shutdown = rt.shutdown.wait();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            (&mut shutdown).await;
            None
        };
        let Some(result) = futures_lite::future::or(accept, stop).await else {
            return;
        };
        let stream = match result {
            Ok(stream) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) => {
                // Out of file descriptors (or similar): back off instead of
                // spinning on an accept that fails at once.
                warn!(error = %e, "accept failed; backing off");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let open = rt.server.open_connections.fetch_add(1, Ordering::SeqCst);
        if open >= rt.server.max_connections {
            rt.server.open_connections.fetch_sub(1, Ordering::SeqCst);
            rt.shard.tally(Tally::Refused);
            match front {
                // Over TLS a plain-text refusal is noise: just close.
                _ if rt.server.tls.is_some() => drop(stream),
                Front::Binary => {
                    glommio::spawn_local(refuse_connection(stream)).detach();
                }
                Front::Http => {
                    glommio::spawn_local(rest::conn::refuse(stream)).detach();
                }
            }
            continue;
        }
        rt.shard.tally(Tally::Accepted);
        rt.open_connections.set(rt.open_connections.get() + 1);
        let conn_rt = rt.clone();
        glommio::spawn_local(async move {
            let stream =
                uring::UringStream::from_glommio(&conn_rt.uring, stream, conn_rt.server.output.stall_timeout);
            match (front, stream) {
                (_, Err(e)) => warn!(error = %e, "taking over an accepted socket failed"),
                (Front::Binary, Ok(stream)) => {
                    if conn_rt.server.tls.is_none() {
                        stream.warm_lookups();
                    }
                    binary::conn::serve(conn_rt.clone(), stream).await
                }
                (Front::Http, Ok(stream)) => rest::conn::serve(conn_rt.clone(), stream).await,
            }
            conn_rt.open_connections.set(conn_rt.open_connections.get() - 1);
            conn_rt.shard.tally(Tally::Closed);
            conn_rt.server.open_connections.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
}

/// Answers CACHE_009 and closes, without waiting for a handshake.
async fn refuse_connection(mut stream: glommio::net::TcpStream) {
    use futures_lite::AsyncWriteExt;
    let mut out = Vec::new();
    let response = crate::proto::CacheResponse {
        status: crate::Status::TooManyConnections.code_number(),
        data: "too many connections".into(),
        ..Default::default()
    };
    crate::frame::encode_frame(&response, &mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// Store upkeep: expired items, page moves between size classes, budget.
async fn sweep_loop(rt: Rc<ShardRuntime>) {
    let mut busy = false;
    let mut last_decay = Instant::now();
    while !rt.shutdown.is_fired() {
        let interval = if busy {
            SWEEP_INTERVAL_BUSY
        } else {
            SWEEP_INTERVAL_IDLE
        };
        glommio::timer::sleep(interval).await;
        let decay = last_decay.elapsed() >= PRESSURE_DECAY_INTERVAL;
        if decay {
            last_decay = Instant::now();
        }
        let now = crate::time::unix_now_us();
        let upkeep = rt.shard.maintain(now, SWEEP_BUDGET, decay);
        // Stay quick while items expire or the size classes rebalance.
        busy = upkeep.expired * 10 >= SWEEP_BUDGET || upkeep.pages_moved > 0;
    }
}

fn now_ms() -> u64 {
    crate::time::unix_now_us() / 1000
}

/// A seed no client can predict, fixed for this server start.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Makes the allocator overwrite every block it frees (glibc `M_PERTURB`):
/// buffers this server owns are zeroed before they are freed or reused
/// (`zeroize`), but a `Vec` that grows inside a library frees its old block
/// as it is, and that block may hold the plaintext of an encrypted value
/// (issue 19). The request path allocates nothing, so the cost falls on
/// connection setup and on growth.
fn wipe_freed_heap_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) only changes a setting of the allocator.
    unsafe {
        libc::mallopt(libc::M_PERTURB, 0x5a);
    }
}
