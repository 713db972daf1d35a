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
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::sync::oneshot;

pub mod reload;

use crate::metrics::{BridgeCounters, MetricsSnapshot, ShardSnapshot};
use crate::shard::policy::Policy;
use crate::shard::{Shard, ShardCommand};

/// Commands waiting per shard; a full queue refuses more.
const COMMAND_QUEUE: usize = 64;

/// The cluster as this node sees it (set when the node runs in a cluster).
pub trait ClusterView: Send + Sync {
    /// Node statuses for a scrape.
    fn metrics(&self) -> crate::metrics::ClusterSnapshot;
    /// The map and node states for `health`.
    fn health(&self) -> serde_json::Value;
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
    pub reloader: std::sync::OnceLock<Arc<reload::Reloader>>,
    /// The cluster's state (set at start when the node runs in a cluster).
    pub cluster: std::sync::OnceLock<Arc<dyn ClusterView>>,
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
            cluster: std::sync::OnceLock::new(),
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

    /// A duplicate of shard `shard`'s doorbell (an eventfd), for its ring
    /// to poll: a command ends the shard's wait there.
    pub fn doorbell_fd(&self, shard: usize) -> Option<std::os::fd::OwnedFd> {
        self.doorbells.get(shard)?.dup()
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
        let mut snapshot = MetricsSnapshot::merge(&self.node_id, &self.zone, shards, self.bridge.snapshot());
        snapshot.cluster = self.cluster.get().map(|c| c.metrics());
        snapshot
    }
}

/// A shard's command loop: runs until `stop` completes.
pub async fn serve_shard(
    shard: std::rc::Rc<Shard>,
    control: Arc<ControlPlane>,
    stop: impl Future<Output = ()>,
) {
    let bell = control.doorbells[shard.id()].listener();
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
        while let Some(command) = control.queues[shard.id()].pop() {
            match command {
                // A full copy takes a while: its own task, so that the
                // commands behind it (replicated writes, verdicts) run.
                crate::shard::ShardCommand::Copy {
                    target,
                    epoch,
                    copy,
                    rate,
                } => {
                    let shard = shard.clone();
                    glommio::spawn_local(async move { shard.copy_chunked(target, epoch, copy, rate).await })
                        .detach();
                }
                command => shard.run_command(command).await,
            }
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

    /// A duplicate of the eventfd, for a ring to poll.
    fn dup(&self) -> Option<std::os::fd::OwnedFd> {
        self.0.as_ref()?.try_clone().ok()
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
