//! The REST API's connections: HTTP/1.1 reading and writing under limits
//! ([`conn`]), a read's pipelined requests answered as one cycle
//! ([`pipeline`]), single-key requests ([`key`]), the other endpoints
//! ([`handler`]) and streamed batch answers ([`batch`]).

mod batch;
pub(super) mod conn;
pub(super) mod handler;
mod key;
mod peers;
mod pipeline;
