//! Wire codecs. Nothing here knows about storage: bytes in, operations out;
//! results in, bytes out. Framing itself lives in [`crate::frame`].
//!
//! - [`wire`]: protobuf primitives, borrowed from the input;
//! - [`binary`]: frames ↔ operations of the binary protocol, zero-copy;
//! - [`http`]: HTTP/1.1 messages ↔ bytes, under limits;
//! - [`rest`]: REST paths and JSON ↔ operations and answers.

pub mod binary;
pub(crate) mod http;
pub mod rest;
pub(crate) mod wire;

pub use binary::{decode_operation, OpView, ResponseEncoder};
