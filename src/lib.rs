//! dnd-cache: a thread-per-core cache server speaking a binary protobuf
//! protocol and REST, with events on the Message Hub (NATS).
//!
//! The request path reads top to bottom: socket ([`server`]) → frame
//! ([`frame`], from the `dnd-cache-proto` crate) → operation
//! ([`protocol`]) → the dispatcher's owner decision and cross-shard
//! transport (`server/dispatch/`) → the owner [`shard`] → answer → one
//! write. `docs/architecture.md` maps every file.
//!
//! Layers, each using only those above it in this list (checked in CI by
//! `tests/tools/module_cycles.py`):
//! - the wire contract, shared with clients: [`proto`], [`frame`], [`key`],
//!   [`validate`], [`Status`] (crate `dnd-cache-proto`);
//! - plain building blocks: [`ops`], [`pattern`], [`time`], [`size`];
//! - codecs and security: [`protocol`] (binary, HTTP, REST JSON), [`codec`]
//!   (values at rest), [`auth`];
//! - storage: [`slab`] (the allocator), [`metrics`] (counters), [`shard`]
//!   (one core's partition, reached through named operations);
//! - settings: [`config`];
//! - the control plane: [`control`] (commands to shards, reload);
//! - the cluster over NATS JetStream: [`cluster`]; the Message Hub bridge:
//!   `hub`;
//! - the server: [`server`] (listeners, connections, dispatch).

mod auth;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod hostile;
mod hub;
pub mod metrics;
pub mod ops;
mod pattern;
pub mod protocol;
pub mod server;
pub mod shard;
mod size;
pub mod slab;
mod time;

pub use dnd_cache_client as client;
pub use dnd_cache_client::{CacheClient, ClientConfig, ClientError};
pub use dnd_cache_proto::pb as proto;
pub use dnd_cache_proto::{frame, key, validate, RequestError, Status};

/// Version reported in the handshake and by `--version`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
