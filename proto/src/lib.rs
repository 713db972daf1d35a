//! dnd-cache's wire contract, shared by the server and every Rust client:
//! the protobuf messages of `cache.proto` ([`pb`]), the framing of the
//! binary protocol ([`frame`], the only code that reads or writes a length
//! prefix), response statuses with their ICD codes ([`Status`]), the key
//! rules and the key → owner hash ([`key`]), and the request limits both
//! ends check ([`validate`]).
//!
//! Goals: no I/O, no runtime, nothing but what both ends must agree on, so
//! a client builds without the server's dependencies.

pub mod frame;
pub mod key;
mod status;
pub mod validate;

pub use status::Status;
pub use validate::RequestError;

/// Messages generated from `cache.proto` by prost. The server's hot path
/// uses its own zero-copy codec; these types serve clients, tests and cold
/// paths, and the server's codec is checked against them by property tests.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/dnd.cache.v1.rs"));
}
