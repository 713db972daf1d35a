//! The body of `GET /health/metrics`: Prometheus text format (0.0.4).
//!
//! For now this renders the counters of the `stats` operation (summed over
//! shards) as `cache_*` metrics. The observability work (src/metrics.rs)
//! replaces this one function with its per-shard histograms and counters.

use std::fmt::Write;

use serde_json::Value;

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// (stats field, metric name, type, help) of every metric rendered.
const METRICS: &[(&str, &str, &str, &str)] = &[
    ("items", "cache_items", "gauge", "Items stored."),
    (
        "bytes",
        "cache_memory_used_bytes",
        "gauge",
        "Bytes used by stored items.",
    ),
    (
        "memory_limit_bytes",
        "cache_memory_limit_bytes",
        "gauge",
        "Memory budget for items.",
    ),
    (
        "hits",
        "cache_hits_total",
        "counter",
        "Reads that found their key.",
    ),
    (
        "misses",
        "cache_misses_total",
        "counter",
        "Reads that did not find their key.",
    ),
    ("sets", "cache_sets_total", "counter", "Writes stored."),
    ("deletes", "cache_deletes_total", "counter", "Keys deleted."),
    (
        "evictions",
        "cache_evicted_total",
        "counter",
        "Items evicted to make room.",
    ),
    (
        "expirations",
        "cache_expired_total",
        "counter",
        "Items removed at expiry.",
    ),
    (
        "rejected_writes",
        "cache_rejected_writes_total",
        "counter",
        "Writes refused (full or too large).",
    ),
    (
        "flushed",
        "cache_flushed_total",
        "counter",
        "Items removed by flush.",
    ),
    (
        "connections_open",
        "cache_connections_open",
        "gauge",
        "Client connections open.",
    ),
    (
        "connections_accepted",
        "cache_connections_accepted_total",
        "counter",
        "Client connections accepted.",
    ),
    (
        "connections_refused",
        "cache_connections_refused_total",
        "counter",
        "Connections refused over the limit.",
    ),
    (
        "requests",
        "cache_requests_total",
        "counter",
        "Operations received.",
    ),
    (
        "forwarded_ops",
        "cache_forwarded_ops_total",
        "counter",
        "Operations forwarded to their owner shard.",
    ),
    (
        "forwarded_batches",
        "cache_forwarded_batches_total",
        "counter",
        "Batches of forwarded operations.",
    ),
    (
        "protocol_errors",
        "cache_protocol_errors_total",
        "counter",
        "Malformed requests.",
    ),
];

/// Renders the merged answer of a `stats` operation (its `total` object and
/// `shard_count`) as Prometheus text.
pub fn render(stats: &Value) -> String {
    let mut out = String::new();
    let total = &stats["total"];
    for (field, name, kind, help) in METRICS {
        if let Some(v) = total[field].as_u64() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
    if let Some(n) = stats["shard_count"].as_u64() {
        let _ = writeln!(
            out,
            "# HELP cache_shards Shards serving.\n# TYPE cache_shards gauge\ncache_shards {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP cache_build_info Build of the server.\n# TYPE cache_build_info gauge\ncache_build_info{{version=\"{}\"}} 1",
        crate::SERVER_VERSION
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_type() {
        let stats = serde_json::json!({"shard_count": 2, "total": {"items": 3, "hits": 5, "unknown": 1}});
        let text = render(&stats);
        assert!(text.contains("# TYPE cache_items gauge\ncache_items 3\n"));
        assert!(text.contains("# HELP cache_hits_total "));
        assert!(text.contains("cache_hits_total 5\n"));
        assert!(text.contains("cache_shards 2\n"));
        assert!(!text.contains("unknown"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
