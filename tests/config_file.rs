//! The YAML configuration file: the shipped example loads, flags override
//! the file, and bad files are refused with the path of the bad key.

mod common;

use std::process::Command;

use common::*;

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with_contents(text)
}

/// A file removed on drop (no extra dependency).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);

    impl TempPath {
        pub fn with_contents(text: &str) -> TempPath {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "dnd-cache-config-{}-{}.yaml",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn refused(args: &[&str]) -> String {
    let out = Command::new(server_bin()).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "exit status for a bad configuration");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Free ports, no pinning, 64 MiB.
const EPHEMERAL: [&str; 9] = {
    let f = common::FREE_PORTS;
    [f[0], f[1], f[2], f[3], f[4], f[5], f[6], "--max-memory", "64MiB"]
};

#[test]
fn the_shipped_example_config_loads_and_serves() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/config.example.yaml");
    let mut args = vec!["--config", example, "--shards", "2"];
    args.extend(EPHEMERAL);
    let server = TestServer::start_with_args(&args);
    let mut c = server.connect();
    let stored = c.call(&set(b"k", b"v", 0));
    assert_eq!(stored.status, 0);
    let meta = stored.metadata.unwrap();
    assert_eq!(
        meta.expires_at - meta.created_at,
        3_600_000,
        "ttl_default from the file"
    );
}

#[test]
fn flags_override_the_file() {
    let file = write_config(
        "config:\n  policies:\n    ttl_default: 100\n    eviction: noeviction\n  shards:\n    count: 3\n",
    );
    let mut args = vec!["--config", file.as_str(), "--ttl-default", "200", "--cpus", "0"];
    args.extend(EPHEMERAL);
    let server = TestServer::start_with_args(&args);
    assert_eq!(
        server.shard_ports.len(),
        1,
        "--cpus on the command line replaces shards.count of the file"
    );
    let mut c = server.connect();
    let meta = c.call(&set(b"k", b"v", 0)).metadata.unwrap();
    assert_eq!(meta.expires_at - meta.created_at, 200_000);
    assert_eq!(
        stats(&mut c)["shards"][0]["eviction_policy"],
        "noeviction",
        "the rest of the file applies"
    );
}

#[test]
fn print_config_shows_the_effective_settings_as_loadable_yaml() {
    let file = write_config("config:\n  policies:\n    ttl_default: 42\n");
    let out = Command::new(server_bin())
        .args([
            "--config",
            file.as_str(),
            "--print-config",
            "--port",
            "7777",
            "--shards",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("ttl_default: 42"), "{yaml}");
    assert!(yaml.contains("port: 7777"), "{yaml}");
    // What it prints is itself a valid configuration file.
    let again = write_config(&yaml);
    let out = Command::new(server_bin())
        .args(["--config", again.as_str(), "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), yaml);
}

#[test]
fn bad_files_are_refused_with_the_key_and_why() {
    let cases = [
        (
            "config:\n  policies:\n    evicton: lru\n",
            "unknown key config.policies.evicton",
        ),
        (
            "config:\n  listeners:\n    port: banana\n",
            "config.listeners.port",
        ),
        (
            "config:\n  listeners:\n    port: [1, 2]\n",
            "config.listeners.port",
        ),
        (
            "config:\n  policies:\n    eviction: lfu\n",
            "config.policies.eviction",
        ),
        (
            "config:\n  policies:\n    max_memory: lots\n",
            "config.policies.max_memory",
        ),
        ("config:\n  shards:\n    pin: sometimes\n", "config.shards.pin"),
        ("config: [\n", "not valid YAML"),
    ];
    for (text, expected) in cases {
        let file = write_config(text);
        let stderr = refused(&["--config", file.as_str()]);
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
    }
    let stderr = refused(&["--config", "/nonexistent/dnd-cache.yaml"]);
    assert!(stderr.contains("cannot read"), "{stderr}");
    let stderr = refused(&["--eviction", "lfu"]);
    assert!(stderr.contains("--eviction"), "{stderr}");
}

fn ttl_of_a_new_write(c: &mut Raw, key: &[u8]) -> u64 {
    let meta = c.call(&set(key, b"v", 0)).metadata.unwrap();
    (meta.expires_at - meta.created_at) / 1000
}

#[test]
fn sighup_and_reload_apply_runtime_settings_and_name_the_rest() {
    let file = write_config("config:\n  policies:\n    ttl_default: 100\n");
    let mut args = vec!["--config", file.as_str(), "--shards", "2"];
    args.extend(EPHEMERAL);
    let server = TestServer::start_with_args(&args);
    let mut c = server.connect();
    assert_eq!(ttl_of_a_new_write(&mut c, b"a"), 100);

    // SIGHUP re-reads the file.
    std::fs::write(&file.0, "config:\n  policies:\n    ttl_default: 200\n").unwrap();
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ttl_of_a_new_write(&mut c, b"b") != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not change the default TTL"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The binary `reload` operation reports what it applied and what needs
    // a restart; a broken file changes nothing.
    // (--port on the command line still wins over the file's port.)
    let changed = "config:\n  policies:\n    ttl_default: 300\n    eviction: noeviction\n  listeners:\n    \
                   port: 1234\n    max_connections: 500\n";
    std::fs::write(&file.0, changed).unwrap();
    let answer = c.call(&op("reload", b""));
    assert_eq!(answer.status, 0);
    let report: serde_json::Value = serde_json::from_slice(&answer.data).unwrap();
    assert_eq!(report["shards_applied"], 2, "{report}");
    let reloaded: Vec<&str> = report["reloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        reloaded.contains(&"ttl_default") && reloaded.contains(&"eviction"),
        "{report}"
    );
    assert_eq!(
        report["requires_restart"],
        serde_json::json!(["max_connections"]),
        "{report}"
    );
    assert_eq!(ttl_of_a_new_write(&mut c, b"c"), 300);
    assert_eq!(stats(&mut c)["shards"][1]["eviction_policy"], "noeviction");

    std::fs::write(&file.0, "config:\n  policies:\n    ttl_default: nonsense\n").unwrap();
    let report: serde_json::Value = serde_json::from_slice(&c.call(&op("reload", b"")).data).unwrap();
    assert!(!report["errors"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(
        ttl_of_a_new_write(&mut c, b"d"),
        300,
        "a bad file keeps the settings in force"
    );
}
