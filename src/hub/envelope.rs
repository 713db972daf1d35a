//! The Message Hub envelope (ICD 1.3): correlation id, source service,
//! event type and version, timestamp and TTL, carried both as NATS headers
//! and as top-level JSON fields of the payload (docs/events.md).

use serde::Serialize;
use serde_json::Value;

/// Version of every event this server publishes.
pub const EVENT_VERSION: &str = "1.0";

/// Header names.
pub const H_CORRELATION_ID: &str = "Correlation-Id";
pub const H_SOURCE: &str = "Source-Service";
pub const H_EVENT_TYPE: &str = "Event-Type";
pub const H_EVENT_VERSION: &str = "Event-Version";
pub const H_TIMESTAMP: &str = "Timestamp";
pub const H_TTL: &str = "Ttl";

/// The envelope of one outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub correlation_id: String,
    pub source: String,
    pub event: &'static str,
    pub version: &'static str,
    /// RFC 3339 ([`rfc3339_ms`]).
    pub timestamp: String,
    /// Seconds after `timestamp` when the message is stale.
    pub ttl_s: u32,
}

impl Envelope {
    /// The message body: the envelope fields, then `data`.
    pub fn payload<T: Serialize>(&self, data: &T) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a, T> {
            event: &'a str,
            version: &'a str,
            correlation_id: &'a str,
            source: &'a str,
            timestamp: &'a str,
            ttl: u32,
            data: &'a T,
        }
        let body = Body {
            event: self.event,
            version: self.version,
            correlation_id: &self.correlation_id,
            source: &self.source,
            timestamp: &self.timestamp,
            ttl: self.ttl_s,
            data,
        };
        serde_json::to_vec(&body).expect("event bodies serialise")
    }

    /// The same fields as NATS headers.
    pub fn headers(&self) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(H_CORRELATION_ID, self.correlation_id.as_str());
        h.insert(H_SOURCE, self.source.as_str());
        h.insert(H_EVENT_TYPE, self.event);
        h.insert(H_EVENT_VERSION, self.version);
        h.insert(H_TIMESTAMP, self.timestamp.as_str());
        h.insert(H_TTL, self.ttl_s.to_string().as_str());
        h
    }
}

/// What the bridge needs from an incoming message's envelope: taken from
/// the JSON fields, else the headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub correlation_id: Option<String>,
    pub source: Option<String>,
    pub event: Option<String>,
}

impl Incoming {
    pub fn read(body: &Value, headers: Option<&async_nats::HeaderMap>) -> Incoming {
        let field = |json_name: &str, header: &str| {
            body.get(json_name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    headers
                        .and_then(|h| h.get(header))
                        .map(|v| v.as_str().to_string())
                })
                .filter(|s| !s.is_empty())
        };
        Incoming {
            correlation_id: field("correlation_id", H_CORRELATION_ID),
            source: field("source", H_SOURCE),
            event: field("event", H_EVENT_TYPE),
        }
    }
}

/// A new correlation id for messages no request caused: 32 hex digits.
pub fn new_correlation_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::time::unix_now_us());
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

/// Unix milliseconds as RFC 3339 UTC, e.g. `2025-08-30T12:00:00.123Z`
/// (the same format as REST metadata).
pub fn rfc3339_ms(ms: u64) -> String {
    crate::time::rfc3339_from_unix_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_756_555_200_123), "2025-08-30T12:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn payload_and_headers_carry_the_envelope() {
        let e = Envelope {
            correlation_id: "c-1".into(),
            source: "cache_service".into(),
            event: "cache.item.updated",
            version: EVENT_VERSION,
            timestamp: rfc3339_ms(0),
            ttl_s: 60,
        };
        let body: Value = serde_json::from_slice(&e.payload(&json!({"key": "k"}))).unwrap();
        assert_eq!(body["correlation_id"], "c-1");
        assert_eq!(body["event"], "cache.item.updated");
        assert_eq!(body["ttl"], 60);
        assert_eq!(body["data"]["key"], "k");
        let h = e.headers();
        assert_eq!(h.get(H_SOURCE).unwrap().as_str(), "cache_service");
        assert_eq!(h.get(H_TTL).unwrap().as_str(), "60");
    }

    #[test]
    fn incoming_prefers_json_then_headers() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(H_CORRELATION_ID, "from-header");
        h.insert(H_SOURCE, "svc");
        let body = json!({"correlation_id": "from-json"});
        let i = Incoming::read(&body, Some(&h));
        assert_eq!(i.correlation_id.as_deref(), Some("from-json"));
        assert_eq!(i.source.as_deref(), Some("svc"));
        assert_eq!(new_correlation_id().len(), 32);
    }
}
