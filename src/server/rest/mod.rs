//! The REST API's connections: HTTP/1.1 reading and writing under limits
//! ([`conn`]), and requests turned into operations and answers ([`handler`]).

pub(super) mod conn;
pub(super) mod handler;
