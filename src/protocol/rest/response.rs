//! `CacheResponse`s → JSON bodies and HTTP statuses (ICD 2.1.3 and 8.2).
//!
//! A value is shown as `"data"` with a `"data_encoding"`: `json` when the
//! stored bytes are one JSON value without surrounding whitespace (embedded
//! verbatim, so the body holds the stored bytes exactly), else `utf8` (a
//! JSON string of the text), else `base64`. `?encoding=base64` asks for
//! base64 always. Keys are `"key"` when UTF-8, else `"key_base64"`.

use serde::Serialize;
use serde_json::value::RawValue;

use super::request::BASE64;
use crate::ops::OpKind;
use crate::proto::{CacheResponse, Metadata};
use crate::time::rfc3339_from_unix_ms;
use crate::Status;
use base64::Engine;

/// The HTTP status of an ICD status (docs/rest.md, "Errors").
pub fn http_status(status: Status) -> u16 {
    match status {
        Status::Ok => 200,
        Status::NotFound => 404,
        Status::Expired => 410,
        Status::StorageFull => 507,
        Status::InvalidKey | Status::Malformed | Status::UnknownOperation | Status::Handshake => 400,
        Status::Timeout => 504,
        Status::FrameTooLarge | Status::BatchTooLarge => 413,
        Status::TooManyConnections | Status::Unavailable => 503,
        Status::InvalidCredentials => 401,
        Status::Forbidden => 403,
        // With a Location header naming the owner node (docs/cluster.md).
        Status::Moved => 307,
    }
}

/// A stored value as JSON.
#[derive(Serialize)]
#[serde(untagged)]
pub enum DataJson<'a> {
    Raw(&'a RawValue),
    Text(&'a str),
    Owned(String),
}

/// Shows `bytes` as `(data, data_encoding)`.
pub fn value_json(bytes: &[u8], force_base64: bool) -> (DataJson<'_>, &'static str) {
    if !force_base64 {
        if let Ok(raw) = serde_json::from_slice::<&RawValue>(bytes) {
            if raw.get().len() == bytes.len() {
                return (DataJson::Raw(raw), "json");
            }
        }
        if let Ok(text) = std::str::from_utf8(bytes) {
            return (DataJson::Text(text), "utf8");
        }
    }
    (DataJson::Owned(BASE64.encode(bytes)), "base64")
}

/// A key as the members `key` or `key_base64`.
#[derive(Serialize)]
pub struct KeyJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
}

impl<'a> KeyJson<'a> {
    pub fn of(key: &'a [u8]) -> Self {
        match std::str::from_utf8(key) {
            Ok(key) => KeyJson {
                key: Some(key),
                key_base64: None,
            },
            Err(_) => KeyJson {
                key: None,
                key_base64: Some(BASE64.encode(key)),
            },
        }
    }
}

/// `metadata` with RFC 3339 times; `expires_at` is null for "never".
#[derive(Serialize)]
pub struct MetadataJson {
    created_at: String,
    expires_at: Option<String>,
    version: String,
}

impl MetadataJson {
    pub fn of(m: &Metadata) -> Self {
        MetadataJson {
            created_at: rfc3339_from_unix_ms(m.created_at),
            expires_at: (m.expires_at != 0).then(|| rfc3339_from_unix_ms(m.expires_at)),
            version: m.version.to_string(),
        }
    }
}

/// The `cache_response` member of a success.
#[derive(Serialize)]
pub struct CacheResponseJson<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataJson>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    cache_response: CacheResponseJson<'a>,
}

/// The body of a successful single-key or admin operation. `get` shows the
/// value; `stats`, `health` and `flush` embed their JSON document.
pub fn success_body(kind: OpKind, resp: &CacheResponse, force_base64: bool) -> Vec<u8> {
    let (data, data_encoding) = match kind {
        OpKind::Get => {
            let (data, encoding) = value_json(&resp.data, force_base64);
            (Some(data), Some(encoding))
        }
        OpKind::Stats | OpKind::Health | OpKind::Flush => (
            serde_json::from_slice::<&RawValue>(&resp.data)
                .ok()
                .map(DataJson::Raw),
            None,
        ),
        _ => (None, None),
    };
    let body = Envelope {
        cache_response: CacheResponseJson {
            status: "OK",
            data,
            data_encoding,
            metadata: resp.metadata.as_ref().map(MetadataJson::of),
        },
    };
    serde_json::to_vec(&body).expect("serialisable")
}

/// A success whose `data` is the given JSON value (pattern, reload).
pub fn success_with(data: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "cache_response": { "status": "OK", "data": data } }))
        .expect("serialisable")
}

/// The `data` of a pattern answer: matching keys with their metadata.
pub fn pattern_data(resp: &CacheResponse) -> serde_json::Value {
    let items: Vec<serde_json::Value> = resp
        .items
        .iter()
        .map(|item| {
            let mut v = serde_json::to_value(KeyJson::of(&item.key)).expect("serialisable");
            if let Some(m) = &item.metadata {
                v["metadata"] = serde_json::to_value(MetadataJson::of(m)).expect("serialisable");
            }
            v
        })
        .collect();
    serde_json::json!({ "count": items.len(), "truncated": resp.truncated, "items": items })
}

#[derive(Serialize)]
struct ErrorDetails<'a> {
    #[serde(flatten)]
    key: Option<KeyJson<'a>>,
    operation: &'a str,
    timestamp: String,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    code: &'static str,
    message: &'a str,
    details: ErrorDetails<'a>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorJson<'a>,
}

/// An ICD 8.2 error body.
pub fn error_body(
    status: Status,
    message: &str,
    key: Option<&[u8]>,
    operation: &str,
    now_ms: u64,
) -> Vec<u8> {
    let message = if message.is_empty() {
        status.description()
    } else {
        message
    };
    let body = ErrorEnvelope {
        error: ErrorJson {
            code: status.code(),
            message,
            details: ErrorDetails {
                key: key.map(KeyJson::of),
                operation,
                timestamp: rfc3339_from_unix_ms(now_ms),
            },
        },
    };
    serde_json::to_vec(&body).expect("serialisable")
}

#[derive(Serialize)]
struct BatchResult<'a> {
    op: &'static str,
    #[serde(flatten)]
    key: KeyJson<'a>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BatchError<'a>>,
}

#[derive(Serialize)]
struct BatchError<'a> {
    code: &'static str,
    message: std::borrow::Cow<'a, str>,
}

/// Appends one element of a batch answer's `results` array.
pub fn write_batch_result(
    out: &mut Vec<u8>,
    kind: OpKind,
    key: &[u8],
    resp: &CacheResponse,
    force_base64: bool,
) {
    let status = Status::from_u32(resp.status).unwrap_or(Status::Unavailable);
    let ok = status == Status::Ok;
    let (data, data_encoding) = if ok && kind == OpKind::Get {
        let (d, e) = value_json(&resp.data, force_base64);
        (Some(d), Some(e))
    } else {
        (None, None)
    };
    let error = (!ok).then(|| BatchError {
        code: status.code(),
        message: if resp.data.is_empty() {
            status.description().into()
        } else {
            String::from_utf8_lossy(&resp.data)
        },
    });
    let result = BatchResult {
        op: kind.name(),
        key: KeyJson::of(key),
        status: if ok { "OK" } else { status.code() },
        data,
        data_encoding,
        metadata: resp.metadata.as_ref().filter(|_| ok).map(MetadataJson::of),
        error,
    };
    serde_json::to_writer(out, &result).expect("serialisable");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(bytes: &[u8]) -> String {
        let (data, enc) = value_json(bytes, false);
        format!("{enc}:{}", serde_json::to_string(&data).unwrap())
    }

    #[test]
    fn values_are_shown_exactly() {
        assert_eq!(encoded(br#"{"a" : 1}"#), r#"json:{"a" : 1}"#);
        assert_eq!(encoded(b"12"), "json:12");
        assert_eq!(encoded(b" 12"), r#"utf8:" 12""#);
        assert_eq!(encoded(b"hello"), r#"utf8:"hello""#);
        assert_eq!(encoded(b""), r#"utf8:"""#);
        assert_eq!(encoded(b"\x00\xff"), r#"base64:"AP8=""#);
        let (data, enc) = value_json(b"12", true);
        assert_eq!(
            (serde_json::to_string(&data).unwrap(), enc),
            (r#""MTI=""#.into(), "base64")
        );
    }

    #[test]
    fn errors_follow_icd_8_2() {
        let body = error_body(Status::NotFound, "", Some(b"k\xff"), "get", 0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "CACHE_001");
        assert_eq!(v["error"]["message"], "Key not found");
        assert_eq!(v["error"]["details"]["key_base64"], "a/8=");
        assert_eq!(v["error"]["details"]["operation"], "get");
        assert_eq!(v["error"]["details"]["timestamp"], "1970-01-01T00:00:00.000Z");
        for s in Status::ALL {
            assert!(http_status(s) >= 200 && http_status(s) < 600);
        }
        assert_eq!(http_status(Status::Expired), 410);
        assert_eq!(http_status(Status::StorageFull), 507);
    }

    #[test]
    fn metadata_uses_rfc3339() {
        let m = MetadataJson::of(&Metadata {
            created_at: 1_700_000_000_123,
            expires_at: 0,
            version: 7,
        });
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.123Z");
        assert!(v["expires_at"].is_null());
        assert_eq!(v["version"], "7");
    }
}
