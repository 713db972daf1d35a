//! Errors a client sees.

pub use dnd_cache_proto::Status;

/// An error seen by a client of the binary protocol.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Server { status: Status, message: String },
    /// The server answered with a status this client does not know.
    #[error("unknown status {0}")]
    UnknownStatus(u32),
    /// Connecting, reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The operation or the connect did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The server sent something that is not a valid frame or message.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection is closed (the server went away or closed it).
    #[error("connection closed")]
    Closed,
    /// The request was refused before it was sent (e.g. an invalid key).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The circuit breaker of the node at this address is open: requests to
    /// it fail at once until its cool-down ends (ICD 9.2).
    #[error("circuit breaker open for {0}: the node is failing")]
    CircuitOpen(String),
    /// The client's configuration cannot be used (e.g. an address that is
    /// not `host:port`).
    #[error("configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The protocol status behind this error, if the server sent one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}
