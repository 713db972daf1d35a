//! The cluster agent: one thread with a Tokio runtime and its own NATS
//! connection (apart from the Message Hub bridge, so that a burst of events
//! never delays a heartbeat).
//!
//! Every [`HEARTBEAT_INTERVAL`] it publishes this node's heartbeat on
//! `dnd.cluster.<name>.hb` and looks at who it heard from within
//! [`FAILURE_TIMEOUT`]. The live node with the lowest id is the
//! coordinator: when the live set differs from the map's nodes, it plans a
//! new map ([`super::slots::plan`]) and writes it to the KV bucket
//! `<name>` under `map` with compare-and-set on the revision it read
//! ([`super::bucket`]). Two coordinators (a partition, a slow read) cannot
//! both win: the loser's write fails, it re-reads the map and plans again.
//! Every node installs the maps it sees (a subscription to the key's
//! subject brings each new one at once; a read every tick covers a missed
//! message), never one of a lower epoch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event};

use futures_lite::StreamExt;
use tracing::{info, warn};

use super::bucket::Bucket;
use super::liveness::Liveness;
use super::replicate::Replicator;
use super::slots::SlotMap;
use super::ClusterState;
use crate::config::ClusterConfig;
use crate::control::ControlPlane;
use crate::shard::replication::{ReplShared, ReplWiring};
use crate::shard::ShardCommand;

mod coordinate;

use coordinate::MapRead;
mod handover;
mod relay;

use handover::{send_heartbeats, Beat, Handover, Heartbeat};

/// How often the shards' replication queues are drained and sent.
pub const REPLICATION_DRAIN: Duration = Duration::from_millis(1);

/// Empty drain ticks after which the agent stops ticking (100 ms idle).
const IDLE_AFTER: u32 = 100;

/// Period of heartbeats (and of the coordinator's look at membership).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// A node not heard from for this long is out of the cluster.
pub const FAILURE_TIMEOUT: Duration = Duration::from_secs(1);

/// After (re)connecting to NATS, time to hear every live node before
/// acting as coordinator: a node that has just come back must not take its
/// silent peers for dead.
const SETTLE: Duration = Duration::from_millis(1500);

/// A gap between ticks beyond this is a stall of this process.
const STALL: Duration = Duration::from_millis(500);

/// The KV key of the slot map.
const MAP_KEY: &str = "map";

/// Safety margin of a lease: a node serves strong requests until
/// [`FAILURE_TIMEOUT`] minus this after the last heartbeat it knows the
/// cluster heard (the others cannot have moved its slots before).
const LEASE_MARGIN: Duration = Duration::from_millis(250);

/// Starts the agent's thread. It runs until `stopping` returns true.
pub fn start(
    config: ClusterConfig,
    nats_url: String,
    state: Arc<ClusterState>,
    control: Arc<ControlPlane>,
    repl: ReplWiring,
    stopping: Arc<dyn Fn() -> bool + Send + Sync>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("cluster".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the cluster agent's Tokio runtime");
        runtime.block_on(run(config, nats_url, state, control, repl, stopping));
    })
}

/// Connection events the agent reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Down,
}

async fn run(
    config: ClusterConfig,
    url: String,
    state: Arc<ClusterState>,
    control: Arc<ControlPlane>,
    wiring: ReplWiring,
    stopping: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    let (link_tx, mut link_rx) = tokio::sync::mpsc::unbounded_channel();
    let options =
        connect_options(format!("dnd-cache cluster {}", state.me.id), &url).event_callback(move |event| {
            let link = link_tx.clone();
            async move {
                match event {
                    Event::Connected => drop(link.send(Link::Up)),
                    Event::Disconnected => drop(link.send(Link::Down)),
                    _ => {}
                }
            }
        });
    let client = match options.connect(crate::config::nats_url::servers(&url)).await {
        Ok(client) => client,
        Err(e) => {
            let url = crate::config::nats_url::redacted(&url);
            warn!(error = %e, url, "cluster agent not started: bad NATS address");
            return;
        }
    };
    let subject = format!("dnd.cluster.{}.hb", config.name);
    let shared = wiring.shared.clone();
    // Replication's records travel on a connection of their own: megabytes
    // of a full copy queued on one connection delayed heartbeats and map
    // reads by seconds (the peers then took this node for dead).
    let data = if wiring.queues.is_empty() {
        None
    } else {
        let options = connect_options(format!("dnd-cache replication {}", state.me.id), &url);
        match options.connect(crate::config::nats_url::servers(&url)).await {
            Ok(data) => Some(data),
            Err(e) => {
                let url = crate::config::nats_url::redacted(&url);
                warn!(error = %e, url, "cluster agent not started: bad NATS address");
                return;
            }
        }
    };
    let repl = data.as_ref().map(|data| {
        Replicator::new(
            (client.clone(), data.clone()),
            &config,
            &state.me.id,
            state.me.incarnation,
            wiring.queues,
            control.clone(),
        )
    });
    let (mut inbox, mut acks, mut sync_requests, mut flushes, mut resends) = match (&repl, &data) {
        (Some(r), Some(data)) => (
            data.subscribe(r.inbox()).await.ok(),
            client.subscribe(r.acks()).await.ok(),
            client.subscribe(r.sync_requests()).await.ok(),
            data.subscribe(r.flushes()).await.ok(),
            client.subscribe(r.resend_requests()).await.ok(),
        ),
        _ => (None, None, None, None, None),
    };
    let mut drain = tokio::time::interval(REPLICATION_DRAIN);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (read_tx, mut map_reads) = tokio::sync::mpsc::unbounded_channel();
    let (relay_tx, mut relays) = tokio::sync::mpsc::unbounded_channel();
    let first_beat = Heartbeat {
        node: state.me.clone(),
        epoch: 0,
        synced: false,
    };
    let mut agent = Agent {
        bucket: Bucket::new(client.clone(), &config.name, MAP_KEY, config.nats_replicas),
        client,
        subject,
        config,
        state,
        control,
        live: Liveness::default(),
        current: None,
        settled_at: Instant::now() + SETTLE,
        last_tick: Instant::now(),
        beat: Arc::new(Beat {
            heartbeat: std::sync::Mutex::new(first_beat),
            sent_at_us: Default::default(),
            now: tokio::sync::Notify::new(),
        }),
        repl,
        shared,
        pending_follow: None,
        handover: Handover::default(),
        reading: false,
        map_reads: read_tx,
        relays: relay_tx,
        relay_asked: None,
    };
    let (mut heartbeats, mut maps, mut map_asks) = loop {
        let hb = agent.client.subscribe(agent.subject.clone()).await;
        let maps = agent.client.subscribe(agent.bucket.subject().to_string()).await;
        let asks = agent
            .client
            .subscribe(relay::subject(&agent.config.name, &agent.state.me.id))
            .await;
        match (hb, maps, asks) {
            (Ok(hb), Ok(maps), Ok(asks)) => break (hb, maps, asks),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                warn!(error = %e, "cluster: subscribing");
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        }
    };
    let beat = agent.beat.clone();
    tokio::spawn(send_heartbeats(agent.client.clone(), agent.subject.clone(), beat));
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(node = %agent.state.me.id, name = %agent.config.name, "cluster agent started");
    let replicating = agent.repl.is_some();
    // Drain ticks in a row that found nothing to do.
    let mut quiet = 0u32;
    loop {
        if stopping() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => agent.tick().await,
            Some(read) = map_reads.recv() => agent.map_read(read).await,
            Some(msg) = map_asks.next() => agent.serve_map(msg).await,
            Some(relayed) = relays.recv() => agent.relayed(relayed).await,
            Some(msg) = heartbeats.next() => agent.heard(&msg.payload),
            Some(_) = maps.next() => {
                agent.refresh().await;
                agent.follow().await;
            }
            Some(link) = link_rx.recv() => agent.link(link),
            _ = agent.shared.wake.notified(), if replicating => {
                // Woken by a shard: tick again.
                agent.shared.set_agent_idle(false);
                quiet = 0;
                agent.drain_tick(&mut quiet).await;
            }
            _ = drain.tick(), if replicating && quiet < IDLE_AFTER => agent.drain_tick(&mut quiet).await,
            Some(msg) = next_message(&mut inbox) => {
                let map = agent.current.as_ref().map(|(m, _)| m.clone());
                if let Some(r) = agent.repl.as_mut() {
                    let was = r.in_sync();
                    r.receive(&msg, map.as_deref()).await;
                    if was && !r.in_sync() {
                        // A gap or a lost record: the coordinator must not
                        // count on this node's copies until it is in sync
                        // again (its last heartbeat said it was).
                        agent.announce();
                    }
                }
            }
            Some(msg) = next_message(&mut acks) => {
                if let Some(r) = agent.repl.as_mut() {
                    r.acked(&msg.payload);
                    agent.shared.set_unacked_bytes(r.unacked_bytes());
                }
            }
            Some(msg) = next_message(&mut flushes) => {
                let map = agent.current.as_ref().map(|(m, _)| m.clone());
                if let Some(r) = agent.repl.as_mut() {
                    r.flush_here(&msg.payload, map.as_deref()).await;
                }
            }
            Some(msg) = next_message(&mut resends) => {
                if let Some(r) = agent.repl.as_mut() {
                    r.serve_resend(&msg.payload).await;
                }
            }
            Some(msg) = next_message(&mut sync_requests) => {
                let map = agent.current.as_ref().map(|(m, _)| m.clone());
                if let Some(r) = agent.repl.as_mut() {
                    match map {
                        Some(map) => r.serve_copy(&msg.payload, &map).await,
                        // Asked by a node that read the first map before
                        // this one did: served once it is installed (a
                        // dropped ask cost the replica COPY_RETRY).
                        None => r.defer_copy(&msg.payload),
                    }
                }
            }
        }
    }
}

/// A NATS connection of the agent: retried at start, reconnecting fast.
fn connect_options(name: String, url: &str) -> ConnectOptions {
    let options = ConnectOptions::new();
    crate::config::nats_url::with_credentials(options, url)
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|a| {
            Duration::from_millis(50u64 << a.min(4)).min(Duration::from_millis(500))
        })
}

struct Agent {
    control: Arc<ControlPlane>,
    client: async_nats::Client,
    bucket: Bucket,
    subject: String,
    config: ClusterConfig,
    state: Arc<ClusterState>,
    live: Liveness,
    /// The map installed and its KV revision.
    current: Option<(Arc<SlotMap>, u64)>,
    /// No coordinating before this instant (see [`SETTLE`]).
    settled_at: Instant,
    /// When the last tick ran: a long gap means this process stalled
    /// (SIGSTOP, swapping, a frozen VM).
    last_tick: Instant,
    /// What the heartbeat task sends.
    beat: Arc<Beat>,
    /// With replication 2: the streams to and from the other nodes.
    repl: Option<Replicator>,
    /// Shared with the shards: the agent's doorbell and the lease.
    shared: Arc<ReplShared>,
    /// A map was installed since the streams last followed (with the map
    /// before it).
    pending_follow: Option<Option<Arc<SlotMap>>>,
    /// Leads taken over from nodes not yet known to run the new map.
    handover: Handover,
    /// A map read is in flight ([`coordinate::MapRead`]).
    reading: bool,
    /// Where map reads answer.
    map_reads: tokio::sync::mpsc::UnboundedSender<MapRead>,
    /// Where peers' maps answer ([`relay`]), and when one was last asked.
    relays: tokio::sync::mpsc::UnboundedSender<relay::Relayed>,
    relay_asked: Option<Instant>,
}

impl Agent {
    /// Sends what the shards queued; fails strong writes past their time.
    /// Returns whether there was anything to do (records, or messages
    /// waiting for acknowledgements).
    async fn drain(&mut self) -> bool {
        let Some(r) = self.repl.as_mut() else { return false };
        let mut took = false;
        if let Some((map, _)) = self.current.as_ref() {
            let map = map.clone();
            took = r.drain(&map).await;
        }
        r.expire(Instant::now());
        self.shared.set_unacked_bytes(r.unacked_bytes());
        self.state.set_lag(r.lag());
        took || !r.settled()
    }

    /// One drain tick (or a shard's wake-up); after [`IDLE_AFTER`] ticks
    /// with nothing to do the tick stops until a shard hands something
    /// over (an idle node then costs no wake-up a millisecond).
    async fn drain_tick(&mut self, quiet: &mut u32) {
        if self.drain().await {
            *quiet = 0;
            return;
        }
        *quiet += 1;
        if *quiet >= IDLE_AFTER {
            self.shared.set_agent_idle(true);
            // A handover queued just before is taken now.
            if self.drain().await {
                self.shared.set_agent_idle(false);
                *quiet = 0;
            }
        }
    }

    fn link(&mut self, link: Link) {
        self.state.set_connected(link == Link::Up);
        if link == Link::Down {
            // Cut off: no strong request until the cluster hears us again.
            self.shared.revoke_lease();
        }
        if link == Link::Up {
            // Rebuild liveness from fresh heartbeats before coordinating;
            // the server may have lost the bucket.
            self.live.clear();
            self.bucket.reset();
            self.settled_at = Instant::now() + SETTLE;
        }
    }

    fn heard(&mut self, payload: &[u8]) {
        match serde_json::from_slice::<Heartbeat>(payload) {
            Ok(hb) if hb.node.id != self.state.me.id => {
                let synced_at = hb.synced.then_some(hb.epoch);
                let (peer, epoch) = (hb.node.id.clone(), hb.epoch);
                self.live.saw(hb.node, hb.epoch, synced_at, Instant::now());
                self.maybe_grant_withheld();
                self.ask_peer_for_map(&peer, epoch);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cluster: unreadable heartbeat"),
        }
    }

    /// Reads the map and installs it when its epoch is higher than the
    /// one in force; keeps its revision for the next compare-and-set.
    /// Whether the read succeeded.
    async fn refresh(&mut self) -> bool {
        let read = self.bucket.read().await;
        self.took(read)
    }

    /// Installs what a map read found; whether it was answered.
    fn took(&mut self, read: Result<Option<(bytes::Bytes, u64)>, super::bucket::BucketError>) -> bool {
        match read {
            Ok(Some((value, revision))) => {
                self.seen(&value, revision);
                true
            }
            Ok(None) => true,
            Err(e) => {
                warn!(error = %e, "cluster: reading the map");
                false
            }
        }
    }

    fn seen(&mut self, value: &[u8], revision: u64) {
        match serde_json::from_slice::<SlotMap>(value) {
            Ok(map) if map.check().is_ok() => {
                let newer = self.current.as_ref().is_none_or(|(m, _)| map.epoch > m.epoch);
                if newer {
                    info!(epoch = map.epoch, nodes = ?map.node_ids(), "cluster: slot map installed");
                    self.install(Arc::new(map), revision);
                } else if let Some((m, rev)) = &mut self.current {
                    if m.epoch == map.epoch {
                        *rev = revision;
                    }
                }
            }
            Ok(map) => warn!(epoch = map.epoch, error = ?map.check(), "cluster: ignoring a malformed map"),
            Err(e) => warn!(error = %e, "cluster: unreadable map"),
        }
    }

    /// Runs with `map` from now on: every shard gets its slot ownership;
    /// the replication streams follow it at the next tick.
    fn install(&mut self, map: Arc<SlotMap>, revision: u64) {
        if tracing::enabled!(target: "dnd_cache::cluster::maps", tracing::Level::DEBUG) {
            let json = serde_json::to_string(&*map).unwrap_or_default();
            tracing::debug!(target: "dnd_cache::cluster::maps", epoch = map.epoch, map = %json, "cluster: installing");
        }
        self.note_givers(&map);
        self.state.install(map.clone());
        // Two installs before a follow: the streams follow from the map
        // they last followed, not from the one in between.
        if self.pending_follow.is_none() {
            self.pending_follow = Some(self.current.as_ref().map(|(m, _)| m.clone()));
        }
        let me = &self.state.me;
        let ownership = Arc::new(map.ownership(&me.id, me.incarnation));
        for shard in 0..self.control.shard_count() {
            // A full queue means a stuck shard; it keeps the older map and
            // the next map reaches it.
            let _ = self
                .control
                .send(shard, ShardCommand::Ownership(ownership.clone()));
        }
        self.current = Some((map, revision));
    }

    async fn tick(&mut self) {
        let started = Instant::now();
        let stalled = started.duration_since(self.last_tick);
        self.last_tick = started;
        if stalled > STALL {
            // Every peer looks dead to a process that was frozen: hear them
            // again before judging (a resumed node that coordinated at once
            // wrote a map of itself alone, with stale data as primaries).
            warn!(
                stalled_ms = stalled.as_millis() as u64,
                "cluster: this node stalled; hearing peers again before coordinating"
            );
            self.settled_at = Instant::now() + SETTLE;
        }
        let me = self.state.me.clone();
        let synced = self.repl.as_ref().is_none_or(|r| r.in_sync());
        let hb = Heartbeat {
            node: me.clone(),
            epoch: self.current.as_ref().map_or(0, |(m, _)| m.epoch),
            synced,
        };
        // The last heartbeat sent went out before this tick's map read on
        // the same connection (the lease below rests on that).
        let sent_at_us = self.beat.sent_at_us.load(std::sync::atomic::Ordering::Relaxed);
        let epoch = hb.epoch;
        *self.beat.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = hb;
        let now = Instant::now();
        let mut alive = self.live.alive(now, FAILURE_TIMEOUT);
        alive.push(me.clone());
        alive.sort_by(|a, b| a.id.cmp(&b.id));
        let syncing = alive
            .iter()
            .filter(|n| {
                if n.id == me.id {
                    !synced
                } else {
                    !self.live.synced(&n.id, epoch)
                }
            })
            .map(|n| n.id.clone())
            .collect();
        self.state.set_alive(
            alive.iter().map(|n| (n.id.clone(), n.zone.clone())).collect(),
            syncing,
        );
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if connected && !self.reading {
            // The map read runs in a task of its own: while JetStream
            // elects a leader it waits seconds, and the agent must go on
            // replicating meanwhile (a blocked agent let the shards'
            // queues overflow, and every replica resynced). Its answer
            // comes back to `map_read`, which renews the lease and plans.
            self.reading = true;
            let mut bucket = self.bucket.clone();
            let answers = self.map_reads.clone();
            tokio::spawn(async move {
                let result = bucket.read().await;
                let _ = answers.send(MapRead {
                    result,
                    ready: bucket.is_ready(),
                    sent_at_us,
                    started,
                });
            });
        }
        self.follow().await;
        if let Some(r) = self.repl.as_mut() {
            r.check_resends(Instant::now()).await;
            r.retransmit(Instant::now()).await;
            r.ask_for_copies().await;
            self.state.set_repl_counters(r.counters());
            if synced && !r.in_sync() {
                // Fell back to a full copy: say so now, not a tick later.
                self.announce();
            }
        }
    }
    /// Extends this node's lease on the slots of its map (docs/cluster.md,
    /// "Leases") when the map in force names it as it runs now.
    fn renew_lease(&mut self, heard_at_us: u64) {
        let me = &self.state.me;
        let current = self.current.as_ref().is_some_and(|(m, _)| {
            m.index_of(&me.id)
                .is_some_and(|i| m.nodes[i].incarnation == me.incarnation)
        });
        if current {
            let span = (FAILURE_TIMEOUT - LEASE_MARGIN).as_micros() as u64;
            self.grant_lease(heard_at_us + span);
        } else {
            self.shared.revoke_lease();
        }
    }

    /// The replication streams follow the map installed last: a replica
    /// asks the primaries of the slots it gained for a full copy.
    async fn follow(&mut self) {
        let Some(prev) = self.pending_follow.take() else {
            return;
        };
        let Some((map, _)) = self.current.as_ref() else {
            return;
        };
        let map = map.clone();
        if let Some(r) = self.repl.as_mut() {
            r.remember(&map);
            r.prune(&map);
            r.follow_map(prev.as_deref(), &map).await;
            r.serve_deferred(&map).await;
        }
        // The others learn at once that this node runs the map (a node
        // that took slots from it waits for that before its lease).
        self.announce();
    }
}

/// The next message of an optional subscription; pending forever without one.
async fn next_message(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(s) => futures_lite::StreamExt::next(s).await,
        None => std::future::pending().await,
    }
}
