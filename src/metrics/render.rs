//! The Prometheus text exposition (format 0.0.4) of a [`MetricsSnapshot`].
//!
//! Names follow the ICD (section 6.1: `cache_hit_rate`, `cache_latency`,
//! `cache_memory_usage`, `cache_node_status`, `cache_replication_lag`) and,
//! for everything else, the redis_exporter / memcached_exporter habits:
//! `_total` counters, base units (seconds, bytes), a `_build_info` gauge.

use std::fmt::Write;

use super::snapshot::{MetricsSnapshot, ShardSnapshot};

/// Upper bounds of the `cache_latency` buckets, in microseconds (10 µs to
/// 1 s; `+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Renders a merged snapshot as Prometheus text. The REST front end serves
/// this at `/health/metrics` with content type
/// `text/plain; version=0.0.4`.
pub fn render_prometheus(m: &MetricsSnapshot) -> String {
    let mut out = String::with_capacity(8192);
    let o = &mut out;
    let node = escape(&m.node);

    family(o, "cache_build_info", "gauge", "Build of the server; always 1.");
    sample(
        o,
        "cache_build_info",
        &[("version", &escape(&m.version)), ("node", &node)],
        1.0,
    );

    family(
        o,
        "cache_node_status",
        "gauge",
        "1 when every shard of the node answered the scrape, else 0.",
    );
    let up = f64::from(u8::from(m.all_shards_up()));
    sample(
        o,
        "cache_node_status",
        &[("node", &node), ("zone", &escape(&m.zone))],
        up,
    );

    family(
        o,
        "cache_shard_up",
        "gauge",
        "1 when the shard answered the scrape.",
    );
    for (i, s) in m.shards.iter().enumerate() {
        sample(
            o,
            "cache_shard_up",
            &[("shard", &i.to_string())],
            f64::from(u8::from(s.is_some())),
        );
    }

    family(
        o,
        "cache_replication_lag",
        "gauge",
        "Replication lag in seconds (no replication yet: 0).",
    );
    sample(
        o,
        "cache_replication_lag",
        &[("node", &node), ("target", "none")],
        0.0,
    );

    family(
        o,
        "cache_memory_usage",
        "gauge",
        "Item memory of the node in bytes, used and limit.",
    );
    let used = m.total(|s| s.used_bytes) as f64;
    let limit = m.total(|s| s.limit_bytes) as f64;
    sample(
        o,
        "cache_memory_usage",
        &[("node", &node), ("type", "used")],
        used,
    );
    sample(
        o,
        "cache_memory_usage",
        &[("node", &node), ("type", "limit")],
        limit,
    );

    family(
        o,
        "cache_shard_memory_bytes",
        "gauge",
        "Item memory of each shard in bytes, used and limit.",
    );
    for s in m.shards.iter().flatten() {
        let shard = s.shard.to_string();
        sample(
            o,
            "cache_shard_memory_bytes",
            &[("shard", &shard), ("type", "used")],
            s.used_bytes as f64,
        );
        sample(
            o,
            "cache_shard_memory_bytes",
            &[("shard", &shard), ("type", "limit")],
            s.limit_bytes as f64,
        );
    }

    per_shard(
        o,
        m,
        "cache_items",
        "gauge",
        "Items held (expired ones not yet reclaimed included).",
        |s| s.items,
    );
    per_shard(
        o,
        m,
        "cache_evicted_total",
        "counter",
        "Items evicted to make room.",
        |s| s.evictions,
    );
    per_shard(
        o,
        m,
        "cache_expired_total",
        "counter",
        "Items removed because their TTL passed.",
        |s| s.expirations,
    );
    per_shard(
        o,
        m,
        "cache_flushed_total",
        "counter",
        "Items removed by flush.",
        |s| s.flushed,
    );
    per_shard(
        o,
        m,
        "cache_rejected_writes_total",
        "counter",
        "Writes refused (storage full or item too large).",
        |s| s.rejected_writes,
    );
    per_shard(
        o,
        m,
        "cache_connections_open",
        "gauge",
        "Client connections open.",
        |s| s.connections_open,
    );
    per_shard(
        o,
        m,
        "cache_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        |s| s.connections_accepted,
    );
    per_shard(
        o,
        m,
        "cache_connections_refused_total",
        "counter",
        "Connections refused over --max-connections.",
        |s| s.connections_refused,
    );
    per_shard(
        o,
        m,
        "cache_forwarded_ops_total",
        "counter",
        "Operations forwarded to their owner shard.",
        |s| s.forwarded_ops,
    );
    per_shard(
        o,
        m,
        "cache_protocol_errors_total",
        "counter",
        "Frames that could not be decoded.",
        |s| s.protocol_errors,
    );
    per_shard(
        o,
        m,
        "cache_events_enqueued_total",
        "counter",
        "Item events handed to the Message Hub bridge.",
        |s| s.events_queued,
    );
    per_shard(
        o,
        m,
        "cache_events_dropped_total",
        "counter",
        "Item events dropped because the bridge queue was full.",
        |s| s.events_dropped,
    );

    family(
        o,
        "cache_requests_total",
        "counter",
        "Requests answered, by caller service and operation.",
    );
    for op in &m.ops {
        sample(
            o,
            "cache_requests_total",
            &[("service", &escape(&op.service)), ("operation", op.operation)],
            op.requests as f64,
        );
    }
    family(
        o,
        "cache_errors_total",
        "counter",
        "Answers with an error status, by ICD code (a get miss is CACHE_001).",
    );
    for op in &m.ops {
        let service = escape(&op.service);
        for &(code, n) in &op.errors {
            sample(
                o,
                "cache_errors_total",
                &[("service", &service), ("operation", op.operation), ("code", code)],
                n as f64,
            );
        }
    }
    let lookups = || m.ops.iter().filter(|op| op.hits + op.misses > 0);
    family(o, "cache_hits_total", "counter", "Lookups that found their key.");
    for op in lookups() {
        sample(
            o,
            "cache_hits_total",
            &[("service", &escape(&op.service)), ("operation", op.operation)],
            op.hits as f64,
        );
    }
    family(
        o,
        "cache_misses_total",
        "counter",
        "Lookups that did not find their key (absent or expired).",
    );
    for op in lookups() {
        sample(
            o,
            "cache_misses_total",
            &[("service", &escape(&op.service)), ("operation", op.operation)],
            op.misses as f64,
        );
    }
    family(
        o,
        "cache_hit_rate",
        "gauge",
        "Hits / (hits + misses) since start.",
    );
    for op in lookups() {
        let rate = op.hits as f64 / (op.hits + op.misses) as f64;
        sample(
            o,
            "cache_hit_rate",
            &[("service", &escape(&op.service)), ("operation", op.operation)],
            rate,
        );
    }

    family(
        o,
        "cache_latency",
        "histogram",
        "Server time per request in seconds: from its read cycle's start to the answer being ready.",
    );
    for op in &m.ops {
        let service = escape(&op.service);
        for &le_us in &LATENCY_BUCKETS_US {
            let n = op.latency.count_between(0, le_us);
            let le = format!("{}", le_us as f64 / 1e6);
            sample(
                o,
                "cache_latency_bucket",
                &[("service", &service), ("operation", op.operation), ("le", &le)],
                n as f64,
            );
        }
        let labels = [("service", service.as_str()), ("operation", op.operation)];
        let count = op.latency.len();
        sample(
            o,
            "cache_latency_bucket",
            &[labels[0], labels[1], ("le", "+Inf")],
            count as f64,
        );
        sample(o, "cache_latency_sum", &labels, op.latency_sum_us as f64 / 1e6);
        sample(o, "cache_latency_count", &labels, count as f64);
    }

    let b = &m.bridge;
    family(
        o,
        "cache_hub_enabled",
        "gauge",
        "1 when the Message Hub bridge is configured (--nats-url).",
    );
    sample(o, "cache_hub_enabled", &[], f64::from(u8::from(b.enabled)));
    family(
        o,
        "cache_hub_connected",
        "gauge",
        "1 while the bridge is connected to NATS.",
    );
    sample(o, "cache_hub_connected", &[], f64::from(u8::from(b.connected)));
    counter(
        o,
        "cache_hub_reconnects_total",
        "Connections to NATS re-established.",
        b.reconnects,
    );
    family(
        o,
        "cache_events_published_total",
        "counter",
        "Events published to the Message Hub, by event.",
    );
    sample(
        o,
        "cache_events_published_total",
        &[("event", "cache.item.updated")],
        b.published_item_events as f64,
    );
    sample(
        o,
        "cache_events_published_total",
        &[("event", "cache.health.status")],
        b.published_health_events as f64,
    );
    counter(
        o,
        "cache_events_publish_failures_total",
        "Publishes that failed or timed out (the event is lost).",
        b.publish_failures,
    );
    counter(
        o,
        "cache_events_coalesced_total",
        "Item events merged into a later event on the same key.",
        b.coalesced,
    );
    family(
        o,
        "cache_hub_messages_received_total",
        "counter",
        "Messages received from the Message Hub, by subject.",
    );
    sample(
        o,
        "cache_hub_messages_received_total",
        &[("subject", "config.cache.update")],
        b.received_config as f64,
    );
    sample(
        o,
        "cache_hub_messages_received_total",
        &[("subject", "control.cache.action")],
        b.received_control as f64,
    );
    counter(
        o,
        "cache_hub_invalid_messages_total",
        "Received messages refused as invalid.",
        b.invalid_messages,
    );
    out
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn counter(o: &mut String, name: &str, help: &str, value: u64) {
    family(o, name, "counter", help);
    sample(o, name, &[], value as f64);
}

fn per_shard(
    o: &mut String,
    m: &MetricsSnapshot,
    name: &str,
    kind: &str,
    help: &str,
    f: impl Fn(&ShardSnapshot) -> u64,
) {
    family(o, name, kind, help);
    for s in m.shards.iter().flatten() {
        sample(o, name, &[("shard", &s.shard.to_string())], f(s) as f64);
    }
}

/// One sample line; label values must already be escaped.
fn sample(o: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    o.push_str(name);
    if !labels.is_empty() {
        o.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{k}=\"{v}\"");
        }
        o.push('}');
    }
    let _ = writeln!(o, " {value}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}
