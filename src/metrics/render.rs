//! The Prometheus text exposition (format 0.0.4) of a [`MetricsSnapshot`].
//!
//! Names follow the ICD (section 6.1: `cache_hit_rate`, `cache_latency`,
//! `cache_memory_usage`, `cache_node_status`, `cache_replication_lag`) and,
//! for everything else, the redis_exporter / memcached_exporter habits:
//! `_total` counters, base units (seconds, bytes), a `_build_info` gauge.

use std::fmt::Write;

use super::snapshot::{BridgeSnapshot, MetricsSnapshot, OpSnapshot, ShardSnapshot};

/// Upper bounds of the `cache_latency` buckets, in microseconds (10 µs to
/// 1 s; `+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A family with one sample per shard.
struct ShardFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ShardSnapshot) -> u64,
}

/// Per-shard families, in exposition order.
const SHARD_FAMILIES: &[ShardFamily] = &[
    ShardFamily {
        name: "cache_items",
        kind: "gauge",
        help: "Items held (expired ones not yet reclaimed included).",
        value: |s| s.items,
    },
    ShardFamily {
        name: "cache_evicted_total",
        kind: "counter",
        help: "Items evicted to make room.",
        value: |s| s.evictions,
    },
    ShardFamily {
        name: "cache_expired_total",
        kind: "counter",
        help: "Items removed because their TTL passed.",
        value: |s| s.expirations,
    },
    ShardFamily {
        name: "cache_flushed_total",
        kind: "counter",
        help: "Items removed by flush.",
        value: |s| s.flushed,
    },
    ShardFamily {
        name: "cache_rejected_writes_total",
        kind: "counter",
        help: "Writes refused (storage full or item too large).",
        value: |s| s.rejected_writes,
    },
    ShardFamily {
        name: "cache_connections_open",
        kind: "gauge",
        help: "Client connections open.",
        value: |s| s.connections_open,
    },
    ShardFamily {
        name: "cache_connections_accepted_total",
        kind: "counter",
        help: "Client connections accepted.",
        value: |s| s.connections_accepted,
    },
    ShardFamily {
        name: "cache_connections_refused_total",
        kind: "counter",
        help: "Connections refused over --max-connections.",
        value: |s| s.connections_refused,
    },
    ShardFamily {
        name: "cache_output_paused_connections",
        kind: "gauge",
        help: "Connections reading no requests until their client reads the answers they hold.",
        value: |s| s.output_paused,
    },
    ShardFamily {
        name: "cache_output_stall_closes_total",
        kind: "counter",
        help: "Connections closed because their client read no answer within --output-stall-timeout.",
        value: |s| s.output_stall_closes,
    },
    ShardFamily {
        name: "cache_forwarded_ops_total",
        kind: "counter",
        help: "Operations forwarded to their owner shard.",
        value: |s| s.forwarded_ops,
    },
    ShardFamily {
        name: "cache_protocol_errors_total",
        kind: "counter",
        help: "Frames that could not be decoded.",
        value: |s| s.protocol_errors,
    },
    ShardFamily {
        name: "cache_events_enqueued_total",
        kind: "counter",
        help: "Item events handed to the Message Hub bridge.",
        value: |s| s.events_queued,
    },
    ShardFamily {
        name: "cache_events_dropped_total",
        kind: "counter",
        help: "Item events dropped because the bridge queue was full.",
        value: |s| s.events_dropped,
    },
];

/// A family with one sample per (service, operation) of lookups.
struct LookupFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&OpSnapshot) -> f64,
}

/// Lookup families (operations with at least one hit or miss), in order.
const LOOKUP_FAMILIES: &[LookupFamily] = &[
    LookupFamily {
        name: "cache_hits_total",
        kind: "counter",
        help: "Lookups that found their key.",
        value: |op| op.hits as f64,
    },
    LookupFamily {
        name: "cache_misses_total",
        kind: "counter",
        help: "Lookups that did not find their key (absent or expired).",
        value: |op| op.misses as f64,
    },
    LookupFamily {
        name: "cache_hit_rate",
        kind: "gauge",
        help: "Hits / (hits + misses) since start.",
        value: |op| op.hits as f64 / (op.hits + op.misses) as f64,
    },
];

/// Reads one counter of the Message Hub bridge.
type BridgeRead = fn(&BridgeSnapshot) -> u64;

/// A counter of the Message Hub bridge: (name, help, value).
type BridgeCounter = (&'static str, &'static str, BridgeRead);

/// Renders a merged snapshot as Prometheus text. The REST front end serves
/// this at `/health/metrics` with content type
/// `text/plain; version=0.0.4`.
pub fn render_prometheus(m: &MetricsSnapshot) -> String {
    let mut out = String::with_capacity(8192);
    render_node(&mut out, m);
    for f in SHARD_FAMILIES {
        family(&mut out, f.name, f.kind, f.help);
        for s in m.shards.iter().flatten() {
            sample(
                &mut out,
                f.name,
                &[("shard", &s.shard.to_string())],
                (f.value)(s) as f64,
            );
        }
    }
    render_requests(&mut out, m);
    render_latency(&mut out, m);
    render_bridge(&mut out, &m.bridge);
    out
}

/// Build, node and shard status, replication, memory.
fn render_node(o: &mut String, m: &MetricsSnapshot) {
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
        "Per node: 0 down, 1 serving, 2 syncing (a node alone: 1 when every shard answered the scrape).",
    );
    match &m.cluster {
        None => {
            let up = f64::from(u8::from(m.all_shards_up()));
            sample(
                o,
                "cache_node_status",
                &[("node", &node), ("zone", &escape(&m.zone))],
                up,
            );
        }
        Some(cluster) => {
            for n in &cluster.nodes {
                // This node reports itself down when a shard is.
                let status = if n.node == m.node && !m.all_shards_up() {
                    0
                } else {
                    n.status
                };
                sample(
                    o,
                    "cache_node_status",
                    &[("node", &escape(&n.node)), ("zone", &escape(&n.zone))],
                    f64::from(status),
                );
            }
        }
    }
    family(
        o,
        "cache_shard_up",
        "gauge",
        "1 when the shard answered the scrape.",
    );
    for (i, s) in m.shards.iter().enumerate() {
        let up = f64::from(u8::from(s.is_some()));
        sample(o, "cache_shard_up", &[("shard", &i.to_string())], up);
    }
    family(
        o,
        "cache_replication_lag",
        "gauge",
        "Seconds the replica target is behind this node (its oldest unacknowledged write); target=\"none\" without replication.",
    );
    match m.cluster.as_ref().filter(|c| !c.lag.is_empty()) {
        Some(cluster) => {
            for (target, seconds) in &cluster.lag {
                let labels = [("node", node.as_str()), ("target", &escape(target))];
                sample(o, "cache_replication_lag", &labels, *seconds);
            }
        }
        None => sample(
            o,
            "cache_replication_lag",
            &[("node", &node), ("target", "none")],
            0.0,
        ),
    }
    family(
        o,
        "cache_memory_usage",
        "gauge",
        "Memory of the node in bytes: items (used, limit) and answers waiting for slow readers (output).",
    );
    let used = m.total(|s| s.used_bytes) as f64;
    let limit = m.total(|s| s.limit_bytes) as f64;
    let output = m.total(|s| s.output_bytes) as f64;
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
    sample(
        o,
        "cache_memory_usage",
        &[("node", &node), ("type", "output")],
        output,
    );
    family(
        o,
        "cache_shard_memory_bytes",
        "gauge",
        "Memory of each shard in bytes: items (used, limit) and answers waiting for slow readers (output).",
    );
    for s in m.shards.iter().flatten() {
        let shard = s.shard.to_string();
        let kinds = [
            ("used", s.used_bytes),
            ("limit", s.limit_bytes),
            ("output", s.output_bytes),
        ];
        for (kind, bytes) in kinds {
            sample(
                o,
                "cache_shard_memory_bytes",
                &[("shard", &shard), ("type", kind)],
                bytes as f64,
            );
        }
    }
}

/// Requests, errors and lookups by (service, operation).
fn render_requests(o: &mut String, m: &MetricsSnapshot) {
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
    for f in LOOKUP_FAMILIES {
        family(o, f.name, f.kind, f.help);
        for op in m.ops.iter().filter(|op| op.hits + op.misses > 0) {
            sample(
                o,
                f.name,
                &[("service", &escape(&op.service)), ("operation", op.operation)],
                (f.value)(op),
            );
        }
    }
}

/// The `cache_latency` histogram by (service, operation).
fn render_latency(o: &mut String, m: &MetricsSnapshot) {
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
}

/// The Message Hub bridge's state and counters.
fn render_bridge(o: &mut String, b: &BridgeSnapshot) {
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
    labelled(
        o,
        "cache_events_published_total",
        "Events published to the Message Hub, by event.",
        "event",
        &[
            ("cache.item.updated", |b| b.published_item_events),
            ("cache.health.status", |b| b.published_health_events),
        ],
        b,
    );
    const FAILURES: [BridgeCounter; 2] = [
        (
            "cache_events_publish_failures_total",
            "Publishes that failed or timed out (the event is lost).",
            |b| b.publish_failures,
        ),
        (
            "cache_events_coalesced_total",
            "Item events merged into a later event on the same key.",
            |b| b.coalesced,
        ),
    ];
    for (name, help, value) in FAILURES {
        counter(o, name, help, value(b));
    }
    labelled(
        o,
        "cache_hub_messages_received_total",
        "Messages received from the Message Hub, by subject.",
        "subject",
        &[
            ("config.cache.update", |b| b.received_config),
            ("control.cache.action", |b| b.received_control),
        ],
        b,
    );
    counter(
        o,
        "cache_hub_invalid_messages_total",
        "Received messages refused as invalid.",
        b.invalid_messages,
    );
}

/// A counter family with one sample per value of one label.
fn labelled(
    o: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, BridgeRead)],
    b: &BridgeSnapshot,
) {
    family(o, name, "counter", help);
    for (value, read) in samples {
        sample(o, name, &[(label, value)], read(b) as f64);
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn counter(o: &mut String, name: &str, help: &str, value: u64) {
    family(o, name, "counter", help);
    sample(o, name, &[], value as f64);
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
