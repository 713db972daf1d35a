//! dnd-cache: a thread-per-core cache server speaking a binary protobuf
//! protocol, and its Rust client.
//!
//! The request path reads top to bottom: socket ([`server`]) → frame decoder
//! ([`protocol`]) → [`ops::Op`] → [`router`] → shard store ([`shard`]) →
//! response encoder ([`protocol`]).

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod error;
#[doc(hidden)]
pub mod hostile;
pub mod hub;
pub mod key;
pub mod metrics;
pub mod ops;
pub mod pattern;
pub mod protocol;
pub mod reload;
pub mod rest;
pub mod router;
pub mod security;
pub mod server;
pub mod shard;
pub mod slab;

/// Messages generated from `proto/cache.proto` by prost. The server's hot
/// path uses the hand-written zero-copy codec in [`protocol::binary`]; these
/// types serve the client, tests and cold paths, and the codec is checked
/// against them by property tests.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/dnd.cache.v1.rs"));
}

pub use client::{CacheClient, ClientConfig};
pub use error::{ClientError, Status};

/// Version reported in the handshake and by `--version`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
