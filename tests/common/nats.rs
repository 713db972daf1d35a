//! A real `nats-server` for tests, on a free loopback port (with JetStream
//! when asked). Without the binary, tests that need it print a note and
//! pass, unless `DND_REQUIRE_NATS` is set (tests/run-all.sh and 25-nats.sh set
//! it), in which case they fail.

use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn nats_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// The nats-server binary; `None` (with a note) when absent and not required.
pub fn require_nats() -> Option<PathBuf> {
    match nats_binary() {
        Some(bin) => Some(bin),
        None if std::env::var_os("DND_REQUIRE_NATS").is_some() => {
            panic!("DND_REQUIRE_NATS is set but no nats-server binary was found")
        }
        None => {
            eprintln!("note: nats-server not installed; skipping (apt-get install nats-server)");
            None
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Nats {
    child: Child,
    bin: PathBuf,
    port: u16,
    /// JetStream's store folder (`-js`), removed on drop.
    store: Option<PathBuf>,
    /// A configuration file (`-c`), removed on drop.
    config: Option<PathBuf>,
}

impl Nats {
    pub fn start(bin: PathBuf) -> Nats {
        let port = free_port();
        let mut nats = Nats {
            child: spawn_nats(&bin, port, None, None),
            bin,
            port,
            store: None,
            config: None,
        };
        nats.wait_ready();
        nats
    }

    /// A nats-server with JetStream on (`-js`), its store in a fresh folder.
    pub fn start_js(bin: PathBuf) -> Nats {
        Nats::start_js_with(bin, None)
    }

    /// As [`Nats::start_js`], with a configuration file of `config`'s text.
    pub fn start_js_with(bin: PathBuf, config: Option<&str>) -> Nats {
        let port = free_port();
        let store = std::env::temp_dir().join(format!("dnd-nats-js-{}-{port}", std::process::id()));
        let config = config.map(|text| {
            let path = std::env::temp_dir().join(format!("dnd-nats-{}-{port}.conf", std::process::id()));
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut nats = Nats {
            child: spawn_nats(&bin, port, Some(&store), config.as_deref()),
            bin,
            port,
            store: Some(store),
            config,
        };
        nats.wait_ready();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = spawn_nats(
            &self.bin,
            self.port,
            self.store.as_deref(),
            self.config.as_deref(),
        );
        self.wait_ready();
    }

    /// Whether the nats-server process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while StdTcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(self.child.try_wait().unwrap().is_none(), "nats-server exited");
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn_nats(bin: &Path, port: u16, store: Option<&Path>, config: Option<&Path>) -> Child {
    let mut command = Command::new(bin);
    if let Some(config) = config {
        command.arg("-c").arg(config);
    }
    command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(store) = store {
        command.arg("-js").arg("-sd").arg(store);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server")
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        if let Some(store) = &self.store {
            let _ = std::fs::remove_dir_all(store);
        }
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}
