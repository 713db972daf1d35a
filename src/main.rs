//! `cache-server`: flags → config → start the shards → wait for a signal.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use dnd_cache::config::{Cli, ServerConfig};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
            eprintln!("cache-server: {e}");
            std::process::exit(2);
        }
    };
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

    let stop = server.stop_handle();
    for signal in signals.forever() {
        match signal {
            SIGHUP => warn!("SIGHUP: nothing to reload yet (configuration comes from flags)"),
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
