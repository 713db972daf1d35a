//! The REST API (ICD 2.1 and 6.2): which path and method mean which
//! operation, JSON bodies → `CacheOperation`s, and `CacheResponse`s → JSON.
//! Pure translation: no storage knowledge and no I/O (the server's
//! `http` module runs the operations through the same dispatcher as the
//! binary protocol). The contract is docs/rest.md and docs/openapi.yaml.

pub mod request;
pub mod response;
pub mod routes;

use crate::Status;

pub use routes::{resolve, Route, RouteError, ROUTES};

/// A request the API refuses, with its HTTP status and ICD code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{http_status} {}: {message}", status.code())]
pub struct RestError {
    pub http_status: u16,
    pub status: Status,
    pub message: String,
}

impl RestError {
    /// An error whose HTTP status follows from its ICD status.
    pub fn of(status: Status, message: impl Into<String>) -> Self {
        RestError {
            http_status: response::http_status(status),
            status,
            message: message.into(),
        }
    }

    /// A malformed request (400, CACHE_006).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::of(Status::Malformed, message)
    }
}

/// The ICD status that goes with an HTTP-level error status (malformed
/// HTTP, size limits, timeouts), for the `error.code` of its body.
pub fn status_for_http_error(http_status: u16) -> Status {
    match http_status {
        404 | 405 => Status::UnknownOperation,
        408 => Status::Timeout,
        413 | 414 | 431 => Status::FrameTooLarge,
        503 => Status::Unavailable,
        _ => Status::Malformed,
    }
}

/// Decoded query parameters (`a=1&b=x`), percent-decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Query, RestError> {
        let mut pairs = Vec::new();
        for part in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| {
                crate::protocol::http::percent_decode(s).map_err(|e| RestError::malformed(e.message))
            };
            let name = String::from_utf8(decode(name)?)
                .map_err(|_| RestError::malformed("query parameter names must be UTF-8"))?;
            pairs.push((name, decode(value)?));
        }
        Ok(Query { pairs })
    }

    /// The last value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Parameter `name` as an unsigned number, if present.
    pub fn number(&self, name: &str) -> Result<Option<u32>, RestError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| RestError::malformed(format!("{name} must be a number from 0 to 4294967295"))),
        }
    }

    /// Whether values are to be shown as base64 (`encoding=base64`) rather
    /// than as JSON or text when possible (`encoding=auto`, the default).
    pub fn force_base64(&self) -> Result<bool, RestError> {
        match self.get("encoding") {
            None | Some(b"auto") => Ok(false),
            Some(b"base64") => Ok(true),
            Some(_) => Err(RestError::malformed("encoding must be auto or base64")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = Query::parse(Some("limit=5&ttl=10&x&encoding=base64&limit=7")).unwrap();
        assert_eq!(q.number("limit").unwrap(), Some(7));
        assert_eq!(q.number("ttl").unwrap(), Some(10));
        assert_eq!(q.number("none").unwrap(), None);
        assert!(q.force_base64().unwrap());
        assert!(Query::parse(Some("limit=-1")).unwrap().number("limit").is_err());
        assert!(Query::parse(Some("limit=99999999999"))
            .unwrap()
            .number("limit")
            .is_err());
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("encoding=hex"))
            .unwrap()
            .force_base64()
            .is_err());
        assert_eq!(Query::parse(None).unwrap(), Query::default());
    }
}
