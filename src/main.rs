//! `cache-server`: flags → config → start the shards → wait for a signal.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use std::sync::Arc;

use dnd_cache::config::{Cli, ServerConfig};
use dnd_cache::control::reload::Reloader;

/// Exit status for an unusable configuration (sysexits EX_CONFIG); the
/// systemd unit does not restart on it.
const EXIT_CONFIG: i32 = 78;

fn main() -> anyhow::Result<()> {
    let cli = match Cli::parse_with_file(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(exit) if !exit.is_error => {
            print!("{}", exit.message);
            return Ok(());
        }
        Err(exit) => {
            eprintln!("cache-server: {}", exit.message.trim_end());
            std::process::exit(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match ServerConfig::from_cli(&cli) {
        Ok(config) => config,
        Err(e) => {
            match (&cli.config, dnd_cache::config::file::key_of_flag(e.flag)) {
                (Some(file), Some(key)) => eprintln!(
                    "cache-server: {e} (set by {} or by {key} in {})",
                    e.flag,
                    file.display()
                ),
                _ => eprintln!("cache-server: {e}"),
            }
            std::process::exit(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        print!("{}", dnd_cache::config::file::render(&config));
        return Ok(());
    }
    // Register before starting so a signal during start is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let server = dnd_cache::server::start(&config)?;
    let line = server.listening_line();
    info!("{line}");
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let control = server.control();
    let reloader = Arc::new(Reloader::new(
        std::env::args_os().collect(),
        config.clone(),
        &control,
    ));
    // Security (issue 5): with auth on, every reload also re-reads the JWT
    // key files.
    let auth = server.auth_hub();
    if auth.enabled() {
        reloader.add_extra("auth_keys", Box::new(move || auth.reload().map(|_| ())));
    }
    let _ = control.reloader.set(reloader.clone());
    let stop = server.stop_handle();
    start_watchdog(stop.clone());
    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                let report = futures_lite::future::block_on(reloader.reload());
                info!(?report, "SIGHUP: reload");
            }
            _ => {
                info!(signal, "stopping: finishing requests in flight");
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                stop.stop();
                break;
            }
        }
    }
    server.wait();
    info!("stopped");
    Ok(())
}

/// When systemd asks for a watchdog, pings it at half the interval, but only
/// while every shard's executor is alive: a stuck shard gets the service
/// restarted.
fn start_watchdog(server: dnd_cache::server::StopHandle) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec / 2);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            if server.all_shards_alive(interval) {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                warn!("a shard stopped answering: withholding the watchdog ping");
            }
            std::thread::sleep(interval);
        })
        .expect("spawn watchdog thread");
}
