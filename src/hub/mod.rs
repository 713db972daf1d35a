//! The Message Hub (NATS) bridge: NATS only.
//!
//! Shards never talk to NATS. Each shard hands its item events to the
//! bridge through its own bounded lock-free queue
//! ([`crate::shard::events`]) and never
//! waits: a full queue drops the event and the shard counts it. The bridge
//! is one thread (optionally pinned, `--hub-cpu`) running a Tokio
//! current-thread runtime with `async-nats`: it drains the queues every
//! [`bridge::DRAIN_INTERVAL`], coalesces and publishes `cache.item.updated`,
//! publishes `cache.health.status`, and applies `config.cache.update` and
//! `control.cache.action` by sending commands into the shards through the
//! [`crate::control`] plane. The message format is in docs/events.md.

mod bridge;
pub(crate) mod envelope;
mod item_message;

/// Correlation ids for requests that bring none (REST uses it too).
pub(crate) use envelope::new_correlation_id;

use std::sync::Arc;

use crate::config::HubConfig;
use crate::control::ControlPlane;
use crate::shard::events::EventQueue;
use crate::shard::policy::Policy;

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
