//! `cache.health.status`: the node's state every `--health-interval`.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Bridge, SUBJECT_HEALTH};
use crate::metrics::BridgeCounters;

impl Bridge {
    /// Publishes the node's health: status, hit and request rates, memory,
    /// and in a cluster the node's view of it.
    pub(super) async fn publish_health(&mut self) {
        let control = self.control.clone();
        let snapshot = control.gather(tokio::time::sleep(Duration::from_secs(1))).await;
        let now = Instant::now();
        let requests = snapshot.total(|s| s.requests);
        let hits = snapshot.total(|s| s.hits);
        let misses = snapshot.total(|s| s.misses);
        let (hit_rate, ops_rate) = match self.last_health {
            Some((at, r0, h0, m0)) => {
                let secs = now.duration_since(at).as_secs_f64().max(0.001);
                let (dh, dm) = (hits.saturating_sub(h0), misses.saturating_sub(m0));
                let rate = if dh + dm == 0 {
                    0.0
                } else {
                    dh as f64 / (dh + dm) as f64
                };
                (rate, (requests.saturating_sub(r0) as f64 / secs).round() as u64)
            }
            None => {
                let rate = if hits + misses == 0 {
                    0.0
                } else {
                    hits as f64 / (hits + misses) as f64
                };
                (rate, 0)
            }
        };
        self.last_health = Some((now, requests, hits, misses));
        let used = snapshot.total(|s| s.used_bytes);
        let limit = snapshot.total(|s| s.limit_bytes).max(1);
        let memory_usage = used as f64 / limit as f64;
        let up = snapshot.shards.iter().filter(|s| s.is_some()).count();
        let status = if up < snapshot.shards.len() {
            "degraded"
        } else if memory_usage >= 0.95 {
            "warning"
        } else {
            "healthy"
        };
        let data = json!({
            "status": status,
            "metrics": {
                "hit_rate": hit_rate,
                "memory_usage": memory_usage,
                "ops_rate": ops_rate,
            },
            "node": snapshot.node,
            "zone": snapshot.zone,
            "shards": snapshot.shards.len(),
            "shards_up": up,
            "items": snapshot.total(|s| s.items),
            "memory_used_bytes": used,
            "events_dropped": snapshot.total(|s| s.events_dropped),
        });
        let mut data = data;
        if let Some(cluster) = self.control.cluster.get() {
            // The node's view of the cluster: epoch, members, their states
            // and slots (docs/cluster.md).
            data["cluster"] = cluster.health();
        }
        if !self.connected() {
            return;
        }
        let ttl_s = (self.config.health_interval.as_secs() as u32)
            .saturating_mul(3)
            .max(1);
        let envelope = self.envelope(SUBJECT_HEALTH, None, ttl_s);
        if self
            .publish(SUBJECT_HEALTH, &envelope, envelope.payload(&data))
            .await
        {
            BridgeCounters::add(&self.counters().published_health_events, 1);
        }
    }
}
