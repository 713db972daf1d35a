//! The Prometheus exposition of a real server: traffic over real TCP, a
//! scrape through the control plane (every shard's snapshot, merged), the
//! text checked by the `prometheus-parse` parser and by a strict checker of
//! the text format rules.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clap::Parser;
use common::{get, keys_op, op, set, Raw};
use dnd_cache::config::{Cli, ServerConfig};
use dnd_cache::metrics::{render_prometheus, MetricsSnapshot};
use prometheus_parse::{Scrape, Value};

fn start_in_process() -> dnd_cache::server::RunningServer {
    let cli = Cli::parse_from([
        "cache-server",
        "--port",
        "0",
        "--shard-port-base",
        "0",
        "--no-pin",
        "--shards",
        "2",
        "--max-memory",
        "64MiB",
        "--node-id",
        "test-node",
        "--zone",
        "zone-a",
    ]);
    let config = ServerConfig::from_cli(&cli).unwrap();
    dnd_cache::server::start(&config).unwrap()
}

fn scrape(server: &dnd_cache::server::RunningServer) -> MetricsSnapshot {
    let control = server.control();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { control.gather(tokio::time::sleep(Duration::from_secs(5))).await })
}

#[test]
fn exposition_of_real_traffic_parses_and_counts_right() {
    let server = start_in_process();
    let mut a = Raw::open(server.binary_addr);
    assert_eq!(a.handshake("character_service").status, 0);
    let mut b = Raw::open(server.binary_addr);
    assert_eq!(b.handshake("campaign_service").status, 0);

    for i in 0..20 {
        assert_eq!(
            a.call(&set(format!("character:{i}").as_bytes(), b"v", 0)).status,
            0
        );
    }
    for i in 0..30 {
        // 20 hits, 10 misses.
        a.call(&get(format!("character:{i}").as_bytes()));
    }
    let keys: Vec<Vec<u8>> = (0..4).map(|i| format!("character:{i}").into_bytes()).collect();
    b.call(&keys_op("get_many", &keys));
    b.call(&keys_op("get_many", &[b"absent".to_vec()]));
    assert_eq!(b.call(&op("get", b"bad key")).status, 4);
    b.call(&op("frobnicate", b"k"));

    let snapshot = scrape(&server);
    assert!(snapshot.all_shards_up());
    let text = render_prometheus(&snapshot);
    strict_check(&text);

    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let find = |metric: &str, labels: &[(&str, &str)]| -> Option<Value> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
    };
    let num = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        match find(metric, labels) {
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => v,
            other => panic!("{metric} {labels:?}: {other:?}\n{text}"),
        }
    };
    let character = ("service", "character_service");
    let campaign = ("service", "campaign_service");
    assert_eq!(
        num("cache_requests_total", &[character, ("operation", "set")]),
        20.0
    );
    assert_eq!(
        num("cache_requests_total", &[character, ("operation", "get")]),
        30.0
    );
    assert_eq!(num("cache_hits_total", &[character, ("operation", "get")]), 20.0);
    assert_eq!(
        num("cache_misses_total", &[character, ("operation", "get")]),
        10.0
    );
    let rate = num("cache_hit_rate", &[character, ("operation", "get")]);
    assert!((rate - 20.0 / 30.0).abs() < 1e-9, "{rate}");
    assert_eq!(
        num("cache_hits_total", &[campaign, ("operation", "get_many")]),
        4.0
    );
    assert_eq!(
        num("cache_misses_total", &[campaign, ("operation", "get_many")]),
        1.0
    );
    assert_eq!(
        num(
            "cache_errors_total",
            &[character, ("operation", "get"), ("code", "CACHE_001")]
        ),
        10.0
    );
    assert_eq!(
        num(
            "cache_errors_total",
            &[campaign, ("operation", "get"), ("code", "CACHE_004")]
        ),
        1.0
    );
    assert_eq!(
        num(
            "cache_errors_total",
            &[campaign, ("operation", "invalid"), ("code", "CACHE_007")]
        ),
        1.0
    );
    assert_eq!(
        num("cache_node_status", &[("node", "test-node"), ("zone", "zone-a")]),
        1.0
    );
    assert_eq!(num("cache_replication_lag", &[("node", "test-node")]), 0.0);
    assert!(num("cache_memory_usage", &[("node", "test-node"), ("type", "used")]) > 0.0);
    assert_eq!(
        num("cache_memory_usage", &[("node", "test-node"), ("type", "limit")]),
        (64 << 20) as f64
    );
    let items: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "cache_items")
        .map(|s| match s.value {
            Value::Gauge(v) => v,
            _ => panic!("cache_items is a gauge"),
        })
        .sum();
    assert_eq!(items, 20.0);
    assert_eq!(
        num("cache_build_info", &[("version", dnd_cache::SERVER_VERSION)]),
        1.0
    );
    assert_eq!(num("cache_hub_enabled", &[]), 0.0);
    match find("cache_latency", &[character, ("operation", "get")]) {
        Some(Value::Histogram(buckets)) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert_eq!(inf.count, 30.0);
            assert!(buckets.len() >= 16);
        }
        other => panic!("cache_latency is not a histogram: {other:?}"),
    }
    assert_eq!(
        num("cache_latency_count", &[character, ("operation", "get")]),
        30.0
    );

    server.stop_handle().stop();
    server.wait();
}

/// A strict reading of the text format (version 0.0.4): every line is a
/// HELP, a TYPE or a sample; samples follow their family's TYPE; names and
/// label names are valid; no series twice; counters end in `_total`;
/// histogram buckets are cumulative and end with `+Inf` = `_count`.
fn strict_check(text: &str) {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen = HashSet::new();
    let mut buckets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(valid_name(name), "{line}");
        let mut le = None;
        let mut other_labels = Vec::new();
        for pair in split_labels(labels) {
            let (k, v) = pair.split_once('=').expect("label=value");
            assert!(valid_label(k), "{line}");
            assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "{line}");
            if k == "le" {
                le = Some(v.trim_matches('"').to_string());
            } else {
                other_labels.push(pair);
            }
        }
        assert!(seen.insert(series.to_string()), "series twice: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        let key = format!("{family}{{{}}}", other_labels.join(","));
        if name.ends_with("_bucket") && family != name {
            let le = le.expect("bucket without le");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            buckets.entry(key).or_default().push((bound, value));
        } else if name.ends_with("_count") && family != name {
            counts.insert(key, value);
        }
    }
    assert!(!buckets.is_empty());
    for (key, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key}: {b:?}"
        );
        let last = b.last().unwrap();
        assert!(last.0.is_infinite(), "{key} lacks +Inf");
        assert_eq!(Some(&last.1), counts.get(key), "{key}: +Inf bucket != _count");
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits `a="x",b="y,z"` at commas outside quotes.
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        out.push(&labels[start..]);
    }
    out
}

#[test]
fn strict_checker_rejects_broken_text() {
    let broken = [
        "# TYPE x_total counter\nx_total 1\nx_total 2\n",
        "y 1\n",
        "# TYPE z counter\nz 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 4\nh_count 4\n",
    ];
    for text in broken {
        let result = std::panic::catch_unwind(|| strict_check(text));
        assert!(result.is_err(), "accepted: {text}");
    }
}
