//! The control plane: how threads that are not shards (the Message Hub
//! bridge, a metrics scrape) reach every shard. Each shard has a bounded
//! lock-free command queue and a doorbell (an eventfd) that the sender rings
//! after queueing; a task of the shard waits on the doorbell (so an idle
//! shard never wakes for nothing) and drains the queue. Answers come back on
//! oneshot channels, which any executor can await (glommio or Tokio).
//!
//! Why not a loopback connection to our own port: commands such as a
//! snapshot of the histograms or a new policy are not operations of the
//! protocol, and a queue keeps them off the client connection limits.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::sync::oneshot;

use crate::shard::store::EvictionPolicy;

use super::policy::Policy;
use crate::key::key_hash;
use crate::metrics::{BridgeSnapshot, MetricsSnapshot, ShardSnapshot};
use crate::shard::clock::unix_now_us;
use crate::shard::Shard;

/// Commands waiting per shard; a full queue refuses more.
const COMMAND_QUEUE: usize = 64;

/// Most keys one `invalidate` pattern removes per shard per pass (the
/// pass repeats until no key matches, yielding between passes).
const INVALIDATE_BATCH: usize = 10_000;

/// Something for a shard to do.
pub enum ShardCommand {
    /// Copy the counters and histograms.
    Snapshot(oneshot::Sender<ShardSnapshot>),
    /// Remove every item; answers how many there were.
    Flush(oneshot::Sender<u64>),
    /// Remove one key, or every key matching a glob; answers how many.
    Invalidate {
        target: Box<[u8]>,
        pattern: bool,
        done: oneshot::Sender<u64>,
    },
    /// Replace the shard's policy; answers once applied.
    Policy {
        policy: Arc<Policy>,
        applied: oneshot::Sender<()>,
    },
}

/// Counters of the bridge, written by its thread only.
#[derive(Default)]
pub struct BridgeCounters {
    pub enabled: AtomicBool,
    pub connected: AtomicBool,
    /// Successful connections to NATS (the first one included).
    pub connects: AtomicU64,
    pub published_item_events: AtomicU64,
    pub published_health_events: AtomicU64,
    pub publish_failures: AtomicU64,
    pub coalesced: AtomicU64,
    pub received_config: AtomicU64,
    pub received_control: AtomicU64,
    pub invalid_messages: AtomicU64,
}

impl BridgeCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BridgeSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeSnapshot {
            enabled: self.enabled.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            reconnects: r(&self.connects).saturating_sub(1),
            published_item_events: r(&self.published_item_events),
            published_health_events: r(&self.published_health_events),
            publish_failures: r(&self.publish_failures),
            coalesced: r(&self.coalesced),
            received_config: r(&self.received_config),
            received_control: r(&self.received_control),
            invalid_messages: r(&self.invalid_messages),
        }
    }
}

/// Shared by every shard, the bridge and scrapes.
pub struct ControlPlane {
    queues: Vec<ArrayQueue<ShardCommand>>,
    /// Per shard: rung after a command is queued.
    doorbells: Vec<Doorbell>,
    pub bridge: BridgeCounters,
    /// `--node-id` and `--zone`, for metrics and health events.
    pub node_id: String,
    pub zone: String,
    /// The policy every shard runs with: the one copy that
    /// `config.cache.update` and reloads change (admin path, never the data
    /// path).
    policy: std::sync::Mutex<Policy>,
    /// Re-reads the configuration (set by the binary once it has one).
    pub reloader: std::sync::OnceLock<Arc<crate::reload::Reloader>>,
}

impl ControlPlane {
    pub fn new(shards: usize, node_id: String, zone: String, policy: Policy) -> ControlPlane {
        ControlPlane {
            queues: (0..shards).map(|_| ArrayQueue::new(COMMAND_QUEUE)).collect(),
            doorbells: (0..shards).map(|_| Doorbell::new()).collect(),
            bridge: BridgeCounters::default(),
            node_id,
            zone,
            policy: std::sync::Mutex::new(policy),
            reloader: std::sync::OnceLock::new(),
        }
    }

    /// The policy in force.
    pub fn current_policy(&self) -> Policy {
        self.policy.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Version of the policy in force (cheap check before a copy).
    pub fn policy_version(&self) -> u64 {
        self.policy.lock().unwrap_or_else(|e| e.into_inner()).version
    }

    /// Changes the policy with `change` (refused changes leave it as it
    /// was) and hands the result to every shard. Returns `change`'s answer
    /// and one receiver per shard reached, answered once applied.
    pub fn update_policy<T>(
        &self,
        change: impl FnOnce(&mut Policy) -> Result<T, String>,
    ) -> Result<(T, Vec<oneshot::Receiver<()>>), String> {
        let policy = {
            let mut current = self.policy.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = current.clone();
            let answer = change(&mut next)?;
            next.version = current.version + 1;
            *current = next.clone();
            (answer, Arc::new(next))
        };
        let (answer, policy) = policy;
        let mut applied = Vec::with_capacity(self.shard_count());
        for shard in 0..self.shard_count() {
            let (tx, rx) = oneshot::channel();
            let command = ShardCommand::Policy {
                policy: policy.clone(),
                applied: tx,
            };
            // The queue holds 64 commands and shards drain it every 5 ms:
            // a full queue means a stuck shard, reported as not applied.
            if self.send(shard, command).is_ok() {
                applied.push(rx);
            }
        }
        Ok((answer, applied))
    }

    pub fn shard_count(&self) -> usize {
        self.queues.len()
    }

    /// Queues a command for a shard; gives it back when the queue is full.
    pub fn send(&self, shard: usize, command: ShardCommand) -> Result<(), ShardCommand> {
        self.queues[shard].push(command)?;
        self.doorbells[shard].ring();
        Ok(())
    }

    /// Asks every shard for a snapshot and merges what arrives before
    /// `deadline` completes (pass the caller's runtime's sleep). A shard
    /// that does not answer shows as down.
    pub async fn gather(&self, deadline: impl Future<Output = ()>) -> MetricsSnapshot {
        let answers: RefCell<Vec<Option<ShardSnapshot>>> = RefCell::new(vec![None; self.shard_count()]);
        let mut receivers = Vec::with_capacity(self.shard_count());
        for shard in 0..self.shard_count() {
            let (tx, rx) = oneshot::channel();
            if self.send(shard, ShardCommand::Snapshot(tx)).is_ok() {
                receivers.push((shard, rx));
            }
        }
        let collect = async {
            for (shard, rx) in receivers {
                if let Ok(s) = rx.await {
                    answers.borrow_mut()[shard] = Some(s);
                }
            }
        };
        futures_lite::future::or(collect, deadline).await;
        let shards = answers.into_inner();
        MetricsSnapshot::merge(&self.node_id, &self.zone, shards, self.bridge.snapshot())
    }
}

/// A shard's command loop: runs until `stop` completes.
pub async fn serve_shard(
    shard: std::rc::Rc<Shard>,
    control: Arc<ControlPlane>,
    stop: impl Future<Output = ()>,
) {
    let bell = control.doorbells[shard.id].listener();
    let mut stop = std::pin::pin!(stop);
    loop {
        let rung = async {
            match &bell {
                // One read stays in flight until the bell rings: nothing
                // wakes an idle shard.
                Some(file) => drop(file.read_at(0, 8).await),
                // No eventfd (out of descriptors at start): poll instead.
                None => glommio::timer::sleep(FALLBACK_POLL).await,
            }
            false
        };
        let stopping = async {
            (&mut stop).await;
            true
        };
        let stopped = futures_lite::future::or(rung, stopping).await;
        while let Some(command) = control.queues[shard.id].pop() {
            run_command(&shard, command).await;
        }
        if stopped {
            return;
        }
    }
}

/// Queue polling when the doorbell could not be created.
const FALLBACK_POLL: Duration = Duration::from_millis(5);

/// A shard's doorbell: an eventfd any thread may ring.
struct Doorbell(Option<std::os::fd::OwnedFd>);

impl Doorbell {
    fn new() -> Doorbell {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        // SAFETY: a new descriptor, owned here alone.
        Doorbell((fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn ring(&self) {
        if let Some(fd) = &self.0 {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer; a full counter
            // (EAGAIN) already means "rung".
            unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(fd), one.as_ptr().cast(), 8) };
        }
    }

    /// The eventfd as a glommio file, read (and so reset) by the shard.
    fn listener(&self) -> Option<glommio::io::BufferedFile> {
        let dup = self.0.as_ref()?.try_clone().ok()?;
        // SAFETY: `dup` is a new descriptor, owned by the file from here on.
        Some(unsafe {
            <glommio::io::BufferedFile as std::os::fd::FromRawFd>::from_raw_fd(
                std::os::fd::IntoRawFd::into_raw_fd(dup),
            )
        })
    }
}

async fn run_command(shard: &Shard, command: ShardCommand) {
    match command {
        ShardCommand::Snapshot(reply) => {
            let _ = reply.send(ShardSnapshot::take(shard));
        }
        ShardCommand::Flush(reply) => {
            let n = shard.store.borrow_mut().flush();
            let _ = reply.send(n as u64);
        }
        ShardCommand::Invalidate {
            target,
            pattern: false,
            done,
        } => {
            let removed = shard
                .store
                .borrow_mut()
                .delete(key_hash(&target, shard.seed), &target);
            let _ = done.send(u64::from(removed));
        }
        ShardCommand::Invalidate {
            target,
            pattern: true,
            done,
        } => {
            let mut removed = 0u64;
            loop {
                let mut keys: Vec<Vec<u8>> = Vec::new();
                shard.store.borrow().scan(&target, unix_now_us(), |item| {
                    keys.push(item.key().to_vec());
                    keys.len() < INVALIDATE_BATCH
                });
                {
                    let mut store = shard.store.borrow_mut();
                    for key in &keys {
                        removed += u64::from(store.delete(key_hash(key, shard.seed), key));
                    }
                }
                if keys.len() < INVALIDATE_BATCH {
                    break;
                }
                // Let the shard's connections run between passes.
                glommio::executor().yield_now().await;
            }
            let _ = done.send(removed);
        }
        ShardCommand::Policy { policy, applied } => {
            {
                let mut store = shard.store.borrow_mut();
                if let Some(eviction) = EvictionPolicy::parse(&policy.eviction) {
                    store.set_eviction(eviction);
                }
                if let Some(total) = policy
                    .max_memory
                    .as_deref()
                    .and_then(|m| crate::config::parse_memory(m).ok())
                {
                    store.set_memory_limit(total / shard.count);
                }
            }
            *shard.policy.borrow_mut() = (*policy).clone();
            let _ = applied.send(());
        }
    }
}
