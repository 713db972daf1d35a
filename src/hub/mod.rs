//! The Message Hub (NATS) bridge and the control plane it drives.
//!
//! Shards never talk to NATS. Each shard hands its item events to the
//! bridge through its own bounded lock-free queue ([`events`]) and never
//! waits: a full queue drops the event and the shard counts it. The bridge
//! is one thread (optionally pinned, `--hub-cpu`) running a Tokio
//! current-thread runtime with `async-nats`: it drains the queues every
//! [`bridge::DRAIN_INTERVAL`], coalesces and publishes `cache.item.updated`,
//! publishes `cache.health.status`, and applies `config.cache.update` and
//! `control.cache.action` by sending commands into the shards through the
//! [`control`] plane. The message format is in docs/events.md.

pub mod bridge;
pub mod control;
pub mod envelope;
pub mod events;
pub mod item_message;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use control::ControlPlane;
use events::EventQueue;
use policy::Policy;

/// Settings of the bridge (flags `--nats-url`, `--health-interval`, ...).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// NATS server to connect to; `None` = events off.
    pub nats_url: Option<String>,
    /// Period of `cache.health.status`.
    pub health_interval: Duration,
    /// CPU to pin the bridge thread to.
    pub cpu: Option<usize>,
    /// Capacity of each shard's event queue, in events.
    pub event_queue: usize,
    /// Whether item events repeat the envelope as NATS headers (the body
    /// always carries it).
    pub item_headers: bool,
    /// Source service id in every envelope.
    pub source: String,
    /// Server id (metrics `node` label, health events) and its zone.
    pub node_id: String,
    pub zone: String,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            nats_url: None,
            health_interval: Duration::from_secs(10),
            cpu: None,
            event_queue: 8192,
            item_headers: false,
            source: "cache_service".into(),
            node_id: "cache-node".into(),
            zone: "default".into(),
        }
    }
}

/// Starts the bridge thread. `stopping` turns true when the server stops;
/// the bridge then publishes what is queued (for at most a second) and
/// ends.
pub fn start(
    config: HubConfig,
    policy: Policy,
    control: Arc<ControlPlane>,
    queues: Vec<EventQueue>,
    stopping: Arc<dyn Fn() -> bool + Send + Sync>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("hub".into()).spawn(move || {
        if let Some(cpu) = config.cpu {
            pin_current_thread(cpu);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the bridge's Tokio runtime");
        runtime.block_on(bridge::run(config, policy, control, queues, stopping));
    })
}

fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0, ..) affects
    // only the calling thread.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !ok {
        tracing::warn!(cpu, "could not pin the hub thread");
    }
}
