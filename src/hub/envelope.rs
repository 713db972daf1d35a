//! The Message Hub envelope (ICD 1.3): correlation id, source service,
//! event type and version, timestamp and TTL, carried both as NATS headers
//! and as top-level JSON fields of the payload (docs/events.md).

use serde::Serialize;
use serde_json::{Map, Value};

/// Version of every event this server publishes.
pub const EVENT_VERSION: &str = "1.0";

/// Header names.
pub const H_CORRELATION_ID: &str = "Correlation-Id";
pub const H_SOURCE: &str = "Source-Service";
pub const H_ENVIRONMENT: &str = "Environment";
pub const H_EVENT_TYPE: &str = "Event-Type";
pub const H_EVENT_VERSION: &str = "Event-Version";
pub const H_TIMESTAMP: &str = "Timestamp";
pub const H_TTL: &str = "Ttl";

/// The envelope of one outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub correlation_id: String,
    pub source: String,
    /// The deployment environment (`--environment`): an addition to ICD 1.3.
    pub environment: String,
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
            environment: &'a str,
            timestamp: &'a str,
            ttl: u32,
            data: &'a T,
        }
        let body = Body {
            event: self.event,
            version: self.version,
            correlation_id: &self.correlation_id,
            source: &self.source,
            environment: &self.environment,
            timestamp: &self.timestamp,
            ttl: self.ttl_s,
            data,
        };
        serde_json::to_vec(&body).expect("event bodies serialise")
    }

    /// A reply's body: the envelope fields, then `status` and `member`
    /// (`data` of an answer, `error` of a refusal).
    pub fn reply(&self, status: &str, member: &str, value: Value) -> Vec<u8> {
        let mut body = Map::new();
        body.insert("event".into(), self.event.into());
        body.insert("version".into(), self.version.into());
        body.insert("correlation_id".into(), self.correlation_id.as_str().into());
        body.insert("source".into(), self.source.as_str().into());
        body.insert("environment".into(), self.environment.as_str().into());
        body.insert("timestamp".into(), self.timestamp.as_str().into());
        body.insert("ttl".into(), self.ttl_s.into());
        body.insert("status".into(), status.into());
        body.insert(member.into(), value);
        serde_json::to_vec(&Value::Object(body)).expect("reply bodies serialise")
    }

    /// The same fields as NATS headers.
    pub fn headers(&self) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(H_CORRELATION_ID, self.correlation_id.as_str());
        h.insert(H_SOURCE, self.source.as_str());
        h.insert(H_ENVIRONMENT, self.environment.as_str());
        h.insert(H_EVENT_TYPE, self.event);
        h.insert(H_EVENT_VERSION, self.version);
        h.insert(H_TIMESTAMP, self.timestamp.as_str());
        h.insert(H_TTL, self.ttl_s.to_string().as_str());
        h
    }
}

/// Major version of the envelope this server understands: a message of
/// version `1.x` is read, any other is refused.
pub const SUPPORTED_MAJOR: &str = "1";

/// How far in the future an incoming timestamp may lie (clock skew between
/// services) before the message is refused.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// The envelope of an incoming message: taken from the JSON fields, else
/// the headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub correlation_id: Option<String>,
    pub source: Option<String>,
    pub event: Option<String>,
    pub version: Option<String>,
    pub timestamp: Option<String>,
    /// Seconds after `timestamp` when the message is stale.
    pub ttl_s: Option<u64>,
}

/// Why an incoming message is refused (ICD 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An envelope field is missing or unreadable.
    Envelope,
    /// Past its TTL, or dated too far in the future.
    Stale,
    /// A major version other than [`SUPPORTED_MAJOR`].
    Version,
}

impl Refusal {
    /// The `reason` label of `cache_hub_refused_messages_total`.
    pub const fn reason(self) -> &'static str {
        match self {
            Refusal::Envelope => "envelope",
            Refusal::Stale => "stale",
            Refusal::Version => "version",
        }
    }
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
        let ttl_s = match body.get("ttl") {
            Some(v) => v.as_u64(),
            None => headers
                .and_then(|h| h.get(H_TTL))
                .and_then(|v| v.as_str().trim().parse().ok()),
        };
        Incoming {
            correlation_id: field("correlation_id", H_CORRELATION_ID),
            source: field("source", H_SOURCE),
            event: field("event", H_EVENT_TYPE),
            version: field("version", H_EVENT_VERSION),
            timestamp: field("timestamp", H_TIMESTAMP),
            ttl_s,
        }
    }

    /// Checks the envelope of ICD 1.3 at `now_ms`: every field present,
    /// a version of the supported major, a timestamp no older than its TTL
    /// and not ahead of the clock by more than [`MAX_CLOCK_SKEW_MS`].
    pub fn check(&self, now_ms: u64) -> Result<(), (Refusal, String)> {
        let missing = [
            ("correlation_id", self.correlation_id.is_none()),
            ("source", self.source.is_none()),
            ("version", self.version.is_none()),
            ("timestamp", self.timestamp.is_none()),
            ("ttl", self.ttl_s.is_none()),
        ];
        if let Some((name, _)) = missing.iter().find(|(_, gone)| *gone) {
            let message = format!("envelope field {name} is missing (ICD 1.3: every message carries correlation_id, source, version, timestamp and ttl)");
            return Err((Refusal::Envelope, message));
        }
        let version = self.version.as_deref().unwrap_or_default();
        if version.split('.').next() != Some(SUPPORTED_MAJOR) {
            return Err((
                Refusal::Version,
                format!("version {version:?} is not supported (major version {SUPPORTED_MAJOR} only)"),
            ));
        }
        let timestamp = self.timestamp.as_deref().unwrap_or_default();
        let Some(sent_ms) = parse_rfc3339_ms(timestamp) else {
            return Err((
                Refusal::Envelope,
                format!("timestamp {timestamp:?} is not an RFC 3339 date-time"),
            ));
        };
        let ttl_s = self.ttl_s.unwrap_or_default();
        if ttl_s == 0 {
            return Err((Refusal::Envelope, "ttl must be at least 1 second".into()));
        }
        let stale_at = sent_ms.saturating_add(ttl_s.saturating_mul(1000));
        if now_ms >= stale_at {
            return Err((
                Refusal::Stale,
                format!("message expired: sent {timestamp} with ttl {ttl_s} s"),
            ));
        }
        if sent_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err((
                Refusal::Stale,
                format!(
                    "timestamp {timestamp} is more than {} s ahead of this server's clock",
                    MAX_CLOCK_SKEW_MS / 1000
                ),
            ));
        }
        Ok(())
    }
}

/// Unix milliseconds of an RFC 3339 date-time (`2025-08-30T12:00:00.123Z`,
/// `...+02:00`; fractions beyond milliseconds are cut), or `None`.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &b[start..i.min(start + 3)];
        millis =
            frac.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')) * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_s = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let m = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            let s = (h * 60 + m) * 60;
            if *sign == b'+' {
                s
            } else {
                -s
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
            environment: "production".into(),
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
    fn timestamps_parse_back() {
        for ms in [0, 951_782_400_000, 1_756_555_200_123, 4_107_542_399_999] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2025-08-30T14:00:00.5+02:00"),
            Some(1_756_555_200_500)
        );
        assert_eq!(parse_rfc3339_ms("2025-08-30T12:00:00Z"), Some(1_756_555_200_000));
        for bad in [
            "",
            "2025-08-30",
            "2025-13-01T00:00:00Z",
            "2025-08-30T12:00:00",
            "2025-08-30T12:00:00.Z",
            "x025-08-30T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    fn incoming(version: &str, timestamp_ms: u64, ttl_s: u64) -> Incoming {
        Incoming {
            correlation_id: Some("c".into()),
            source: Some("s".into()),
            event: None,
            version: Some(version.into()),
            timestamp: Some(rfc3339_ms(timestamp_ms)),
            ttl_s: Some(ttl_s),
        }
    }

    #[test]
    fn stale_unknown_major_and_incomplete_messages_are_refused() {
        let now = 1_756_555_200_000;
        assert_eq!(incoming("1.0", now - 29_999, 30).check(now), Ok(()));
        assert_eq!(incoming("1.4", now + 59_000, 30).check(now), Ok(()));
        let refused = |i: Incoming| i.check(now).unwrap_err().0;
        assert_eq!(refused(incoming("1.0", now - 30_000, 30)), Refusal::Stale);
        assert_eq!(refused(incoming("1.0", now + 61_000, 30)), Refusal::Stale);
        assert_eq!(refused(incoming("2.0", now, 30)), Refusal::Version);
        assert_eq!(refused(incoming("10", now, 30)), Refusal::Version);
        assert_eq!(refused(incoming("1.0", now, 0)), Refusal::Envelope);
        let mut no_source = incoming("1.0", now, 30);
        no_source.source = None;
        assert_eq!(refused(no_source), Refusal::Envelope);
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
