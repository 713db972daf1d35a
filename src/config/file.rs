//! The YAML configuration file (ICD 9.1 shape, extended), turned into the
//! same flags the command line takes.
//!
//! Every setting has exactly one flag; the file is a second way to write
//! flags. Loading a file yields a list of arguments that go in front of the
//! command line's, and clap parses both with "last one wins", so flags
//! override the file without a second set of rules. A key the table below
//! does not know, or a value of the wrong shape, is refused with its path.

use std::ffi::OsString;
use std::path::Path;

use serde_json::Value;

/// How a YAML value becomes arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A scalar: `--flag VALUE`.
    Value,
    /// `true` gives `--flag`, `false` nothing.
    Switch,
    /// `false` gives `--flag`, `true` nothing (e.g. `pin: false` → `--no-pin`).
    InvertedSwitch,
    /// A list of CPUs or a CPU list string: `--flag 0,1,2`.
    JoinedList,
    /// Describes the deployment but sets nothing on this node.
    Informational,
    /// A mapping of cache type → `{ttl: SECS}`: `--flag TYPE=SECS` each.
    TypeTtls,
    /// A list (or one value): `--flag A --flag B`.
    List,
}

/// Every key the file may hold: its path, the flag it sets, its shape.
const KEYS: &[(&str, &str, Shape)] = &[
    ("config.service.id", "--service-id", Shape::Value),
    ("config.service.version", "", Shape::Informational),
    ("config.service.environment", "--environment", Shape::Value),
    ("config.cluster.nodes", "--cluster-nodes", Shape::Value),
    ("config.cluster.zones", "--cluster-zones", Shape::JoinedList),
    ("config.cluster.replication", "--replication", Shape::Value),
    ("config.cluster.name", "--cluster-name", Shape::Value),
    ("config.cluster.catchup_rate", "--catchup-rate", Shape::Value),
    ("config.cluster.nats_replicas", "--nats-replicas", Shape::Value),
    ("config.policies.eviction", "--eviction", Shape::Value),
    ("config.policies.ttl_default", "--ttl-default", Shape::Value),
    ("config.policies.max_memory", "--max-memory", Shape::Value),
    ("config.policies.max_item_bytes", "--max-item-bytes", Shape::Value),
    ("config.listeners.bind", "--bind", Shape::Value),
    ("config.listeners.port", "--port", Shape::Value),
    (
        "config.listeners.shard_port_base",
        "--shard-port-base",
        Shape::Value,
    ),
    ("config.listeners.http_port", "--http-port", Shape::Value),
    (
        "config.listeners.max_connections",
        "--max-connections",
        Shape::Value,
    ),
    (
        "config.listeners.max_output_bytes",
        "--max-output-bytes",
        Shape::Value,
    ),
    (
        "config.listeners.output_stall_timeout",
        "--output-stall-timeout",
        Shape::Value,
    ),
    (
        "config.listeners.max_frame_bytes",
        "--max-frame-bytes",
        Shape::Value,
    ),
    ("config.shards.count", "--shards", Shape::Value),
    ("config.shards.cpus", "--cpus", Shape::JoinedList),
    ("config.shards.pin", "--no-pin", Shape::InvertedSwitch),
    ("config.node.id", "--node-id", Shape::Value),
    ("config.node.zone", "--zone", Shape::Value),
    ("config.node.advertise_addr", "--advertise-addr", Shape::Value),
    ("config.nats.url", "--nats-url", Shape::Value),
    ("config.nats.health_interval", "--health-interval", Shape::Value),
    ("config.nats.hub_cpu", "--hub-cpu", Shape::Value),
    ("config.nats.event_queue", "--event-queue", Shape::Value),
    ("config.nats.event_headers", "--event-headers", Shape::Switch),
    (
        "config.nats.event_coalesce_ms",
        "--event-coalesce-ms",
        Shape::Value,
    ),
    ("config.nats.no_events_for", "--no-events-for", Shape::JoinedList),
    ("config.cache_types", "--cache-type-ttl", Shape::TypeTtls),
    (
        "config.auth.hs256_secret_file",
        "--auth-hs256-secret-file",
        Shape::Value,
    ),
    (
        "config.auth.public_key_files",
        "--auth-public-key-file",
        Shape::List,
    ),
    ("config.auth.issuer", "--auth-issuer", Shape::Value),
    ("config.auth.audience", "--auth-audience", Shape::Value),
    (
        "config.auth.insecure_no_auth",
        "--insecure-no-auth",
        Shape::Switch,
    ),
    ("config.tls.cert", "--tls-cert", Shape::Value),
    ("config.tls.key", "--tls-key", Shape::Value),
    (
        "config.encryption.key_file",
        "--encryption-key-file",
        Shape::Value,
    ),
    ("config.encryption.prefixes", "--encrypt-prefix", Shape::List),
    ("config.compression.mode", "--compression", Shape::Value),
    (
        "config.compression.threshold",
        "--compression-threshold",
        Shape::Value,
    ),
];

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not valid YAML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{path}: unknown key {key}")]
    UnknownKey { path: String, key: String },
    #[error("{path}: {key}: {reason}")]
    BadValue {
        path: String,
        key: String,
        reason: String,
    },
}

/// Arguments equivalent to the file at `path`.
pub fn load(path: &Path) -> Result<Vec<OsString>, ConfigFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    to_args(&text, &shown)
}

/// Arguments equivalent to YAML `text` (`origin` names it in errors).
pub fn to_args(text: &str, origin: &str) -> Result<Vec<OsString>, ConfigFileError> {
    let doc: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(text).map_err(|e| ConfigFileError::Syntax {
            path: origin.into(),
            reason: e.to_string(),
        })?
    };
    let mut args = Vec::new();
    match &doc {
        Value::Null => {}
        Value::Object(_) => walk(&doc, "", origin, &mut args)?,
        _ => {
            return Err(ConfigFileError::BadValue {
                path: origin.into(),
                key: "(top level)".into(),
                reason: "must be a mapping with a `config` key".into(),
            })
        }
    }
    Ok(args)
}

/// The effective configuration as YAML, in the file's shape (what
/// `--print-config` shows).
pub fn render(config: &crate::config::ServerConfig) -> String {
    let cpus: Vec<String> = config.cpus.iter().map(usize::to_string).collect();
    let policy = config.start_policy();
    let mut nats = serde_json::json!({
        "health_interval": config.hub.health_interval.as_secs(),
        "event_queue": config.hub.event_queue,
        "event_headers": config.hub.item_headers,
        "event_coalesce_ms": policy.coalesce_ms,
    });
    if let Some(url) = &config.hub.nats_url {
        nats["url"] = crate::config::nats_url::redacted(url).into();
    }
    if let Some(cpu) = config.hub.cpu {
        nats["hub_cpu"] = cpu.into();
    }
    let mut quiet: Vec<&str> = crate::shard::policy::CacheType::ALL
        .iter()
        .filter(|t| !policy.of(**t).events)
        .map(|t| t.name())
        .collect();
    if !policy.default_events {
        quiet.push("default");
    }
    if !quiet.is_empty() {
        nats["no_events_for"] = quiet.into();
    }
    let cache_types: serde_json::Map<String, serde_json::Value> = crate::shard::policy::CacheType::ALL
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                serde_json::json!({ "ttl": policy.of(*t).ttl_s }),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "config": {
            "service": { "id": config.service_id, "version": crate::SERVER_VERSION, "environment": config.environment },
            "cluster": {
                "nodes": config.cluster.nodes,
                "zones": config.cluster.zones,
                "replication": config.cluster.replication,
                "name": config.cluster.name,
                "catchup_rate": config.cluster.catchup_rate_mib,
                "nats_replicas": config.cluster.nats_replicas,
            },
            "policies": {
                "eviction": config.eviction.name(),
                "ttl_default": config.ttl_default_s,
                "max_memory": config.max_memory_bytes,
                "max_item_bytes": config.max_item_bytes,
            },
            "listeners": {
                "bind": config.bind.to_string(),
                "port": config.port,
                "shard_port_base": config.shard_port_base,
                "http_port": config.http_port,
                "max_connections": config.max_connections,
                "max_frame_bytes": config.max_frame_bytes,
                "max_output_bytes": config.max_output_bytes,
                "output_stall_timeout": config.output_stall_timeout.as_secs(),
            },
            "shards": { "cpus": cpus.join(","), "pin": config.pin },
            "node": { "id": config.hub.node_id, "zone": config.hub.zone, "advertise_addr": config.cluster.advertise_host },
            "nats": nats,
            "cache_types": cache_types,
        }
    });
    serde_saphyr::to_string(&doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// The file key that sets `flag`, for error messages.
pub fn key_of_flag(flag: &str) -> Option<&'static str> {
    KEYS.iter().find(|(_, f, _)| *f == flag).map(|(k, _, _)| *k)
}

fn walk(node: &Value, prefix: &str, origin: &str, args: &mut Vec<OsString>) -> Result<(), ConfigFileError> {
    let Value::Object(map) = node else {
        unreachable!("walk is called on mappings")
    };
    for (name, value) in map {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match KEYS.iter().find(|(k, _, _)| *k == path) {
            Some(&(_, flag, shape)) => emit(&path, flag, shape, value, origin, args)?,
            None if value.is_object() && KEYS.iter().any(|(k, _, _)| k.starts_with(&format!("{path}."))) => {
                walk(value, &path, origin, args)?
            }
            None if value.is_null() && KEYS.iter().any(|(k, _, _)| k.starts_with(&format!("{path}."))) => {}
            None => {
                return Err(ConfigFileError::UnknownKey {
                    path: origin.into(),
                    key: path,
                })
            }
        }
    }
    Ok(())
}

fn emit(
    path: &str,
    flag: &str,
    shape: Shape,
    value: &Value,
    origin: &str,
    args: &mut Vec<OsString>,
) -> Result<(), ConfigFileError> {
    let bad = |reason: &str| ConfigFileError::BadValue {
        path: origin.into(),
        key: path.into(),
        reason: reason.into(),
    };
    match shape {
        Shape::Informational => {
            if value.is_object() {
                return Err(bad("expected a value or a list, not a mapping"));
            }
        }
        Shape::Value => {
            let text = scalar(value).ok_or_else(|| bad("expected a single value"))?;
            args.push(flag.into());
            args.push(text.into());
        }
        Shape::Switch | Shape::InvertedSwitch => {
            let on = value.as_bool().ok_or_else(|| bad("expected true or false"))?;
            if on == (shape == Shape::Switch) {
                args.push(flag.into());
            }
        }
        Shape::TypeTtls => {
            let Value::Object(types) = value else {
                return Err(bad("expected a mapping of cache type to {ttl: SECS}"));
            };
            for (name, settings) in types {
                let ttl = settings
                    .get("ttl")
                    .and_then(scalar)
                    .filter(|_| {
                        settings
                            .as_object()
                            .is_some_and(|m| m.keys().all(|k| k == "ttl" || k == "consistency"))
                    })
                    .ok_or_else(|| {
                        bad(&format!(
                            "{name}: expected {{ttl: SECS}} (and optionally consistency)"
                        ))
                    })?;
                args.push(flag.into());
                args.push(format!("{name}={ttl}").into());
            }
        }
        Shape::List => {
            let items = list(value).ok_or_else(|| bad("expected a value or a list of values"))?;
            for item in items {
                args.push(flag.into());
                args.push(item.into());
            }
        }
        Shape::JoinedList => {
            let items = list(value).ok_or_else(|| bad("expected a list or a string such as \"0-3,8\""))?;
            args.push(flag.into());
            args.push(items.join(",").into());
        }
    }
    Ok(())
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Array(items) => items.iter().map(scalar).collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        to_args(text, "test.yaml")
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn icd_shape_becomes_flags() {
        let a = args(
            "config:\n  service:\n    id: cache_service\n    version: \"2.0.0\"\n    environment: production\n  \
             cluster:\n    nodes: 3\n    zones: [\"us-east-1a\", \"us-east-1b\"]\n    replication: 2\n  \
             policies:\n    eviction: lru\n    ttl_default: 3600\n    max_memory: \"75%\"\n",
        );
        let mut pairs: Vec<(String, String)> = a.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
        pairs.sort();
        let expected = [
            ("--cluster-nodes", "3"),
            ("--cluster-zones", "us-east-1a,us-east-1b"),
            ("--environment", "production"),
            ("--eviction", "lru"),
            ("--max-memory", "75%"),
            ("--replication", "2"),
            ("--service-id", "cache_service"),
            ("--ttl-default", "3600"),
        ];
        assert_eq!(pairs, expected.map(|(f, v)| (f.to_string(), v.to_string())));
    }

    #[test]
    fn lists_switches_and_empty_sections() {
        let a = args("config:\n  shards:\n    cpus: [0, 1, 3]\n    pin: false\n  listeners:\n");
        assert_eq!(a, ["--cpus", "0,1,3", "--no-pin"]);
        assert_eq!(
            args("config:\n  shards:\n    cpus: \"0-3\"\n    pin: true\n"),
            ["--cpus", "0-3"]
        );
        assert!(args("").is_empty());
    }

    #[test]
    fn hub_and_cache_type_sections() {
        let a = args(
            "config:\n  nats:\n    url: nats://127.0.0.1:4222\n    no_events_for: [image_metadata, default]\n  \
             cache_types:\n    character_data:\n      ttl: 600\n      consistency: strong\n",
        );
        assert_eq!(
            a,
            [
                "--cache-type-ttl",
                "character_data=600",
                "--no-events-for",
                "image_metadata,default",
                "--nats-url",
                "nats://127.0.0.1:4222"
            ]
        );
        assert!(to_args("config:\n  cache_types:\n    character_data: 5\n", "f").is_err());
    }

    #[test]
    fn event_headers_is_a_switch() {
        let on = args("config:\n  nats:\n    event_headers: true\n");
        assert_eq!(on, ["--event-headers"]);
        assert!(args("config:\n  nats:\n    event_headers: false\n").is_empty());
    }

    #[test]
    fn security_section() {
        let a = args(
            "config:\n  auth:\n    public_key_files: [\"k1=/etc/a.pem\", \"/etc/b.pem\"]\n    insecure_no_auth: false\n",
        );
        assert_eq!(
            a,
            [
                "--auth-public-key-file",
                "k1=/etc/a.pem",
                "--auth-public-key-file",
                "/etc/b.pem"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_shapes_name_their_path() {
        let e = to_args("config:\n  policies:\n    evicton: lru\n", "f.yaml").unwrap_err();
        assert_eq!(e.to_string(), "f.yaml: unknown key config.policies.evicton");
        let e = to_args("config:\n  listeners:\n    port: [1, 2]\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("config.listeners.port"), "{e}");
        let e = to_args("config:\n  shards:\n    pin: maybe\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("config.shards.pin"), "{e}");
        let e = to_args("- a\n- b\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("top level"), "{e}");
        assert!(matches!(
            to_args("config: [", "f.yaml"),
            Err(ConfigFileError::Syntax { .. })
        ));
        assert!(matches!(
            to_args("other: 1\n", "f.yaml"),
            Err(ConfigFileError::UnknownKey { .. })
        ));
    }

    #[test]
    fn rendered_config_loads_back_to_the_same_settings() {
        use clap::Parser;
        let cli = crate::config::Cli::parse_from([
            "cache-server",
            "--shards",
            "2",
            "--max-memory",
            "64MiB",
            "--port",
            "7001",
        ]);
        let config = crate::config::ServerConfig::from_cli(&cli).unwrap();
        let yaml = render(&config);
        let mut argv = vec![OsString::from("cache-server")];
        argv.extend(to_args(&yaml, "rendered").unwrap());
        let again = crate::config::ServerConfig::from_cli(&crate::config::Cli::parse_from(argv)).unwrap();
        assert_eq!(render(&again), yaml);
        assert_eq!(again.port, 7001);
        assert_eq!(again.max_memory_bytes, 64 << 20);
    }

    #[test]
    fn every_key_maps_to_a_flag_of_the_command_line() {
        use clap::CommandFactory;
        let cmd = crate::config::Cli::command();
        for (key, flag, shape) in KEYS {
            if *shape == Shape::Informational {
                continue;
            }
            let long = flag.trim_start_matches("--");
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(long)),
                "{key} → {flag} is not a flag"
            );
        }
    }
}
