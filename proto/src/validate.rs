//! Request limits and key rules: one check per rule, shared by the binary
//! protocol, REST and the clients, each failure an [`RequestError`] that
//! carries its ICD status and its one message.

use crate::key::is_valid_key;
use crate::Status;

/// Largest number of keys (or entries, or REST batch operations) in one
/// batch operation.
pub const MAX_BATCH_KEYS: usize = 10_000;

/// Default `limit` of a pattern operation (0 asks for it).
pub const DEFAULT_PATTERN_LIMIT: usize = 1_000;

/// Largest `limit` of a pattern operation; larger ones are clamped.
pub const MAX_PATTERN_LIMIT: usize = 100_000;

/// Longest glob of a pattern operation, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// Why a request is refused before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// CACHE_004: the key breaks the key rules ([`crate::key`]).
    #[error("key must be 1-250 bytes without control characters or spaces")]
    InvalidKey,
    /// CACHE_004: the glob of a pattern operation is empty or too long.
    #[error("pattern must be 1-1024 bytes")]
    InvalidPattern,
    /// CACHE_012: more than [`MAX_BATCH_KEYS`] keys in one batch.
    #[error("more than 10000 keys")]
    BatchTooLarge,
    /// CACHE_006: an unknown consistency level.
    #[error("options.consistency must be \"strong\" or \"eventual\"")]
    Consistency,
}

impl RequestError {
    /// The status a response carries for this error.
    pub fn status(self) -> Status {
        match self {
            RequestError::InvalidKey | RequestError::InvalidPattern => Status::InvalidKey,
            RequestError::BatchTooLarge => Status::BatchTooLarge,
            RequestError::Consistency => Status::Malformed,
        }
    }

    /// The message a response carries for this error (static: answering an
    /// invalid request allocates nothing).
    pub fn message(self) -> &'static str {
        match self {
            RequestError::InvalidKey => "key must be 1-250 bytes without control characters or spaces",
            RequestError::InvalidPattern => "pattern must be 1-1024 bytes",
            RequestError::BatchTooLarge => "more than 10000 keys",
            RequestError::Consistency => "options.consistency must be \"strong\" or \"eventual\"",
        }
    }
}

/// A key of any operation.
#[inline]
pub fn check_key(key: &[u8]) -> Result<(), RequestError> {
    if is_valid_key(key) {
        Ok(())
    } else {
        Err(RequestError::InvalidKey)
    }
}

/// The number of keys or entries of a batch operation.
#[inline]
pub fn check_batch(count: usize) -> Result<(), RequestError> {
    if count <= MAX_BATCH_KEYS {
        Ok(())
    } else {
        Err(RequestError::BatchTooLarge)
    }
}

/// The glob of a pattern operation.
#[inline]
pub fn check_pattern(pattern: &[u8]) -> Result<(), RequestError> {
    if !pattern.is_empty() && pattern.len() <= MAX_PATTERN_BYTES {
        Ok(())
    } else {
        Err(RequestError::InvalidPattern)
    }
}

/// `options.consistency`: empty (the default), `strong` or `eventual`.
#[inline]
pub fn check_consistency(consistency: &[u8]) -> Result<(), RequestError> {
    match consistency {
        b"" | b"strong" | b"eventual" => Ok(()),
        _ => Err(RequestError::Consistency),
    }
}

/// The `limit` of a pattern request, defaulted and clamped.
pub fn pattern_limit(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PATTERN_LIMIT,
        n => n.min(MAX_PATTERN_LIMIT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_its_message() {
        for e in [
            RequestError::InvalidKey,
            RequestError::InvalidPattern,
            RequestError::BatchTooLarge,
            RequestError::Consistency,
        ] {
            assert_eq!(e.to_string(), e.message());
        }
        assert_eq!(RequestError::BatchTooLarge.status(), Status::BatchTooLarge);
        assert_eq!(RequestError::Consistency.status(), Status::Malformed);
        assert_eq!(RequestError::InvalidPattern.status(), Status::InvalidKey);
    }

    #[test]
    fn limits() {
        assert_eq!(check_key(b"character:1"), Ok(()));
        assert_eq!(check_key(b"a b"), Err(RequestError::InvalidKey));
        assert_eq!(check_batch(MAX_BATCH_KEYS), Ok(()));
        assert_eq!(check_batch(MAX_BATCH_KEYS + 1), Err(RequestError::BatchTooLarge));
        assert_eq!(check_pattern(b""), Err(RequestError::InvalidPattern));
        assert_eq!(check_pattern(&[b'*'; MAX_PATTERN_BYTES]), Ok(()));
        assert_eq!(
            check_pattern(&[b'*'; MAX_PATTERN_BYTES + 1]),
            Err(RequestError::InvalidPattern)
        );
        assert_eq!(check_consistency(b"strong"), Ok(()));
        assert_eq!(check_consistency(b"weak"), Err(RequestError::Consistency));
        assert_eq!(pattern_limit(0), DEFAULT_PATTERN_LIMIT);
        assert_eq!(pattern_limit(u32::MAX), MAX_PATTERN_LIMIT);
        assert_eq!(pattern_limit(7), 7);
    }
}
