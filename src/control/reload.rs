//! `reload`: re-reads the configuration (the command line again, with its
//! `--config` file) and applies what can change while the server runs:
//! TTLs, cache-type policies, event switches, the eviction policy and the
//! memory budget, plus any registered extras (such as auth keys). What
//! needs a restart is reported, not applied. SIGHUP, the REST and binary
//! `reload` operations and the `control.cache.action` event all end here.

use std::ffi::OsString;
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Cli, ServerConfig};
use crate::control::ControlPlane;
use crate::shard::policy::Policy;

/// A setting reloaded by a callback registered by its owner.
type Extra = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings now in force with their new values.
    pub reloaded: Vec<String>,
    /// Settings that changed in the configuration but need a restart.
    pub requires_restart: Vec<String>,
    /// Why (part of) the reload failed; the previous settings stay.
    pub errors: Vec<String>,
    /// Shards that applied the new policy.
    pub shards_applied: usize,
}

/// Re-reads and applies the configuration.
pub struct Reloader {
    argv: Vec<OsString>,
    current: Mutex<ServerConfig>,
    control: Weak<ControlPlane>,
    extras: Mutex<Vec<(String, Extra)>>,
}

impl Reloader {
    /// `argv` is the command line the server started with; `config` what
    /// it made of it.
    pub fn new(argv: Vec<OsString>, config: ServerConfig, control: &Arc<ControlPlane>) -> Reloader {
        Reloader {
            argv,
            current: Mutex::new(config),
            control: Arc::downgrade(control),
            extras: Mutex::default(),
        }
    }

    /// Registers another setting to reload (`name` appears in reports).
    pub fn add_extra(&self, name: &str, reload: Extra) {
        self.extras
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.into(), reload));
    }

    /// Re-reads the configuration and applies what can change at runtime.
    /// Runs on any executor (it awaits only channel answers).
    pub async fn reload(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let parsed = Cli::parse_with_file(self.argv.clone())
            .map_err(|e| e.message.trim_end().to_string())
            .and_then(|cli| ServerConfig::from_cli(&cli).map_err(|e| e.to_string()));
        let waits = match parsed {
            Err(e) => {
                report.errors.push(format!("configuration not reloaded: {e}"));
                Vec::new()
            }
            Ok(new) => self.apply(new, &mut report),
        };
        for rx in waits {
            if rx.await.is_ok() {
                report.shards_applied += 1;
            }
        }
        for (name, reload) in self.extras.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            match reload() {
                Ok(()) => report.reloaded.push(name.clone()),
                Err(e) => report.errors.push(format!("{name}: {e}")),
            }
        }
        if report.errors.is_empty() {
            info!(reloaded = ?report.reloaded, requires_restart = ?report.requires_restart, "configuration reloaded");
        } else {
            warn!(errors = ?report.errors, "reload incomplete");
        }
        report
    }

    /// Compares `new` with what runs, sends the runtime part to the shards
    /// and records the rest as needing a restart.
    fn apply(&self, new: ServerConfig, report: &mut ReloadReport) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let restart_only: [(&str, bool); 15] = [
            ("bind", current.bind != new.bind),
            ("port", current.port != new.port),
            ("shard_port_base", current.shard_port_base != new.shard_port_base),
            ("http_port", current.http_port != new.http_port),
            ("shards", current.cpus != new.cpus || current.pin != new.pin),
            ("max_frame_bytes", current.max_frame_bytes != new.max_frame_bytes),
            ("max_item_bytes", current.max_item_bytes != new.max_item_bytes),
            ("max_connections", current.max_connections != new.max_connections),
            (
                "max_output_bytes",
                current.max_output_bytes != new.max_output_bytes,
            ),
            (
                "output_stall_timeout",
                current.output_stall_timeout != new.output_stall_timeout,
            ),
            ("service_id", current.service_id != new.service_id),
            ("environment", current.environment != new.environment),
            ("nats", format!("{:?}", current.hub) != format!("{:?}", new.hub)),
            (
                "http_timeouts",
                current.http_request_timeout != new.http_request_timeout,
            ),
            (
                "http_idle_timeout",
                current.http_idle_timeout != new.http_idle_timeout,
            ),
        ];
        report.requires_restart = restart_only
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(n, _)| n.to_string())
            .collect();

        let Some(control) = self.control.upgrade() else {
            report.errors.push("the server is stopping".into());
            return Vec::new();
        };
        let mut start = new.start_policy();
        start.max_memory = Some(new.max_memory_bytes.to_string());
        let old = control.current_policy();
        let changes = [
            ("ttl_default", old.default_ttl_s != start.default_ttl_s),
            ("cache_types", old.types != start.types),
            (
                "events",
                old.default_events != start.default_events || old.coalesce_ms != start.coalesce_ms,
            ),
            ("eviction", old.eviction != start.eviction),
            ("max_memory", current.max_memory_bytes != new.max_memory_bytes),
        ];
        report.reloaded = changes
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(n, _)| n.to_string())
            .collect();
        let waits = match control.update_policy(|policy| {
            *policy = Policy {
                version: policy.version,
                ..start
            };
            Ok(())
        }) {
            Ok(((), waits)) => waits,
            Err(e) => {
                report.errors.push(e);
                return Vec::new();
            }
        };
        // Keep what needs a restart as it runs, so that later reloads still
        // report it.
        let keep = current.clone();
        *current = ServerConfig {
            bind: keep.bind,
            port: keep.port,
            shard_port_base: keep.shard_port_base,
            http_port: keep.http_port,
            cpus: keep.cpus,
            pin: keep.pin,
            max_frame_bytes: keep.max_frame_bytes,
            max_item_bytes: keep.max_item_bytes,
            max_connections: keep.max_connections,
            max_output_bytes: keep.max_output_bytes,
            output_stall_timeout: keep.output_stall_timeout,
            service_id: keep.service_id,
            environment: keep.environment,
            hub: keep.hub,
            http_request_timeout: keep.http_request_timeout,
            http_idle_timeout: keep.http_idle_timeout,
            ..new
        };
        waits
    }
}
