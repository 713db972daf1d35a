//! The binary protocol's connections: the handshake ([`handshake`]) and the
//! read → dispatch → write loop ([`conn`]).

pub(super) mod conn;
pub(super) mod handshake;
