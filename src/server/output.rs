//! Answers waiting for a client that does not read them (docs/memory.md,
//! "Answers waiting for slow readers").
//!
//! A connection reads no request while answers of its are unsent, and one
//! cycle produces about `--max-output-bytes` of answers (at least one):
//! that bounds what a client that sends and never reads can make the
//! server hold. While a write waits for the client, its bytes and the
//! connection are counted on the shard (`cache_memory_usage{type="output"}`,
//! `cache_output_paused_connections`); a client that has not taken them
//! all within `--output-stall-timeout` loses its connection
//! (`cache_output_stall_closes_total`).

use std::io;
use std::time::Duration;

use futures_lite::{AsyncWrite, AsyncWriteExt};

use crate::shard::stats::Tally;
use crate::shard::Shard;

/// What one connection may hold for its client, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct OutputSettings {
    /// Answer bytes after which a cycle takes no new request.
    pub max_bytes: usize,
    /// How long a write may wait for the client before the connection closes.
    pub stall_timeout: Duration,
}

/// Counts a connection as paused, with the bytes it holds, until dropped.
struct Paused<'a> {
    shard: &'a Shard,
    bytes: u64,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.shard.tally(Tally::OutputResumed(self.bytes));
    }
}

/// Writes `answers` whole. When the socket cannot take them at once, the
/// connection counts as paused until it can; past `settings.stall_timeout`
/// the write fails with `TimedOut` (the caller closes the connection).
pub async fn send_answers<S: AsyncWrite + Unpin>(
    shard: &Shard,
    settings: &OutputSettings,
    stream: &mut S,
    answers: &[u8],
) -> io::Result<()> {
    let mut write = stream.write_all(answers);
    if let Some(done) = futures_lite::future::poll_once(&mut write).await {
        return done;
    }
    let bytes = answers.len() as u64;
    shard.tally(Tally::OutputPaused(bytes));
    let _paused = Paused { shard, bytes };
    let stall = async {
        glommio::timer::sleep(settings.stall_timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read its answers",
        ))
    };
    let result = futures_lite::future::or(write, stall).await;
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::TimedOut) {
        shard.tally(Tally::OutputStallClose);
    }
    result
}
