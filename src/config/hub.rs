//! Settings of the Message Hub bridge.

use std::time::Duration;

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
    /// Source service id in every envelope (`--service-id`).
    pub source: String,
    /// Deployment environment in every envelope (`--environment`).
    pub environment: String,
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
            environment: "production".into(),
            node_id: "cache-node".into(),
            zone: "default".into(),
        }
    }
}
