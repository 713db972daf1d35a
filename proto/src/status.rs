//! Status codes of the wire protocol (ICD section 8.1 plus our additions).

use std::fmt;

/// A response status: 0 is success, everything else carries an ICD code.
///
/// The numeric values are part of the wire contract (docs/protocol.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    /// CACHE_001 Key not found.
    NotFound = 1,
    /// CACHE_002 Key expired.
    Expired = 2,
    /// CACHE_003 Storage full (or the item is larger than allowed).
    StorageFull = 3,
    /// CACHE_004 Invalid key format.
    InvalidKey = 4,
    /// CACHE_005 Operation timeout.
    Timeout = 5,
    /// CACHE_006 Malformed request.
    Malformed = 6,
    /// CACHE_007 Unknown operation.
    UnknownOperation = 7,
    /// CACHE_008 Frame too large, or not a frame at all.
    FrameTooLarge = 8,
    /// CACHE_009 Too many connections.
    TooManyConnections = 9,
    /// CACHE_010 Handshake required, invalid or too late.
    Handshake = 10,
    /// CACHE_011 Server shutting down or shard unavailable.
    Unavailable = 11,
    /// CACHE_012 Batch too large.
    BatchTooLarge = 12,
    /// CACHE_013 The key's slot belongs to another node of the cluster;
    /// `data` is JSON `{"moved": {"slot", "node", "address", "http",
    /// "epoch"}}` naming it.
    Moved = 13,
    /// AUTH_001 Invalid credentials.
    InvalidCredentials = 101,
    /// AUTH_002 Insufficient permissions.
    Forbidden = 102,
}

impl Status {
    /// Every status, for tables and tests.
    pub const ALL: [Status; 16] = [
        Status::Ok,
        Status::NotFound,
        Status::Expired,
        Status::StorageFull,
        Status::InvalidKey,
        Status::Timeout,
        Status::Malformed,
        Status::UnknownOperation,
        Status::FrameTooLarge,
        Status::TooManyConnections,
        Status::Handshake,
        Status::Unavailable,
        Status::BatchTooLarge,
        Status::Moved,
        Status::InvalidCredentials,
        Status::Forbidden,
    ];

    /// The wire value.
    pub const fn code_number(self) -> u32 {
        self as u32
    }

    /// Parses a wire value; unknown values are `None`.
    pub fn from_u32(value: u32) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as u32 == value)
    }

    /// The ICD code string, e.g. `"CACHE_001"`; `"OK"` for success.
    pub const fn code(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NotFound => "CACHE_001",
            Status::Expired => "CACHE_002",
            Status::StorageFull => "CACHE_003",
            Status::InvalidKey => "CACHE_004",
            Status::Timeout => "CACHE_005",
            Status::Malformed => "CACHE_006",
            Status::UnknownOperation => "CACHE_007",
            Status::FrameTooLarge => "CACHE_008",
            Status::TooManyConnections => "CACHE_009",
            Status::Handshake => "CACHE_010",
            Status::Unavailable => "CACHE_011",
            Status::BatchTooLarge => "CACHE_012",
            Status::Moved => "CACHE_013",
            Status::InvalidCredentials => "AUTH_001",
            Status::Forbidden => "AUTH_002",
        }
    }

    /// The ICD description.
    pub const fn description(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::NotFound => "Key not found",
            Status::Expired => "Key expired",
            Status::StorageFull => "Storage full",
            Status::InvalidKey => "Invalid key format",
            Status::Timeout => "Operation timeout",
            Status::Malformed => "Malformed request",
            Status::UnknownOperation => "Unknown operation",
            Status::FrameTooLarge => "Frame too large",
            Status::TooManyConnections => "Too many connections",
            Status::Handshake => "Handshake required",
            Status::Unavailable => "Service unavailable",
            Status::BatchTooLarge => "Batch too large",
            Status::Moved => "Key owned by another node",
            Status::InvalidCredentials => "Invalid credentials",
            Status::Forbidden => "Insufficient permissions",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_number() {
        for s in Status::ALL {
            assert_eq!(Status::from_u32(s.code_number()), Some(s));
        }
        assert_eq!(Status::from_u32(14), None);
        assert_eq!(Status::NotFound.code(), "CACHE_001");
        assert_eq!(Status::Forbidden.code(), "AUTH_002");
    }
}
