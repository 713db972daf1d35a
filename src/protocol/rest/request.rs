//! REST requests → `CacheOperation`s (the same messages the binary protocol
//! carries, so both protocols share one execution path).
//!
//! Values: a JSON value in a body is stored as its JSON text exactly as the
//! client wrote it (leading and trailing whitespace dropped);
//! `"value_encoding": "utf8"` stores a JSON string's characters without the
//! quotes, `"base64"` stores the bytes a base64 string decodes to; a
//! `Content-Type: application/octet-stream` body is stored as is.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{Query, RestError};
use crate::ops::OpKind;
use crate::proto::{CacheOperation, Options};
use crate::Status;

/// Standard base64 with padding (RFC 4648 §4), for values and keys.
pub const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The options object of a request (ICD 2.1.3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsJson {
    #[serde(default)]
    consistency: String,
    #[serde(default)]
    compression: bool,
    #[serde(default)]
    encryption: bool,
}

/// `{"cache_request": {...}}` of a PUT.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutEnvelope<'a> {
    #[serde(borrow)]
    cache_request: ItemJson<'a>,
}

/// One item: the `cache_request` of a PUT, or one operation of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemJson<'a> {
    /// Batch only: get, set or delete.
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default, borrow, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default)]
    value_encoding: Option<String>,
    #[serde(default)]
    ttl: Option<u32>,
    #[serde(default)]
    options: Option<OptionsJson>,
}

/// A present `value` is `Some`, even when it is JSON `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchJson<'a> {
    #[serde(borrow)]
    operations: Vec<ItemJson<'a>>,
}

fn operation(kind: OpKind, key: &[u8]) -> CacheOperation {
    CacheOperation {
        operation: kind.name().into(),
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    }
}

/// `get` or `delete` of one key.
pub fn key_operation(kind: OpKind, key: &[u8]) -> CacheOperation {
    operation(kind, key)
}

/// An operation with no key: `flush`, `stats`, `health`.
pub fn admin_operation(kind: OpKind) -> CacheOperation {
    operation(kind, b"")
}

/// `pattern` with the query's `limit` (0 or absent: 1,000).
pub fn pattern_operation(pattern: &[u8], query: &Query) -> Result<CacheOperation, RestError> {
    Ok(CacheOperation {
        limit: query.number("limit")?.unwrap_or(0),
        ..operation(OpKind::Pattern, pattern)
    })
}

/// The `set` of a PUT on `key`: the body is a `cache_request` envelope, a
/// bare JSON value, or (octet-stream) the raw value. `?ttl=` gives the TTL
/// unless the envelope does.
pub fn put_operation(
    key: &[u8],
    body: &[u8],
    content_type: Option<&str>,
    query: &Query,
) -> Result<CacheOperation, RestError> {
    let query_ttl = query.number("ttl")?.unwrap_or(0);
    if content_type == Some("application/octet-stream") {
        return Ok(CacheOperation {
            value: Bytes::copy_from_slice(body),
            ttl: query_ttl,
            ..operation(OpKind::Set, key)
        });
    }
    let raw: &RawValue = serde_json::from_slice(body).map_err(|e| bad_json(&e))?;
    if !is_envelope(raw) {
        return Ok(CacheOperation {
            value: Bytes::copy_from_slice(raw.get().as_bytes()),
            ttl: query_ttl,
            ..operation(OpKind::Set, key)
        });
    }
    let envelope: PutEnvelope<'_> = serde_json::from_str(raw.get()).map_err(|e| bad_json(&e))?;
    let item = envelope.cache_request;
    if item.op.is_some() {
        return Err(RestError::malformed("cache_request has no field op"));
    }
    if let Some(named) = item_key(&item)? {
        if named != key {
            return Err(RestError::malformed(
                "the key in the body differs from the key in the path",
            ));
        }
    }
    let mut op = set_operation(key, &item)?;
    if item.ttl.is_none() {
        op.ttl = query_ttl;
    }
    Ok(op)
}

/// Whether a JSON body is `{"cache_request": ...}` (its only member).
fn is_envelope(raw: &RawValue) -> bool {
    if !raw.get().starts_with('{') {
        return false;
    }
    match serde_json::from_str::<std::collections::BTreeMap<String, &RawValue>>(raw.get()) {
        Ok(members) => members.len() == 1 && members.contains_key("cache_request"),
        Err(_) => false,
    }
}

/// Refuses options whose `consistency` is not `""`, `strong` or `eventual`
/// (as the binary protocol does), so that a batch with such an operation
/// is refused whole before anything runs.
fn check_options(item: &ItemJson<'_>) -> Result<(), RestError> {
    match item.options.as_ref().map(|o| o.consistency.as_str()) {
        None | Some("" | "strong" | "eventual") => Ok(()),
        Some(_) => Err(RestError::malformed(
            "options.consistency must be \"strong\" or \"eventual\"",
        )),
    }
}

fn set_operation(key: &[u8], item: &ItemJson<'_>) -> Result<CacheOperation, RestError> {
    check_options(item)?;
    let value = item
        .value
        .ok_or_else(|| RestError::malformed("a set needs a value"))?;
    let value = decode_value(value, item.value_encoding.as_deref())?;
    let options = item.options.as_ref().map(|o| Options {
        consistency: o.consistency.clone(),
        compression: o.compression,
        encryption: o.encryption,
    });
    Ok(CacheOperation {
        value: value.into(),
        ttl: item.ttl.unwrap_or(0),
        options,
        ..operation(OpKind::Set, key)
    })
}

fn decode_value(value: &RawValue, encoding: Option<&str>) -> Result<Vec<u8>, RestError> {
    let string = || {
        serde_json::from_str::<String>(value.get())
            .map_err(|_| RestError::malformed("value must be a JSON string with this value_encoding"))
    };
    match encoding {
        None | Some("json") => Ok(value.get().as_bytes().to_vec()),
        Some("utf8") => Ok(string()?.into_bytes()),
        Some("base64") => BASE64
            .decode(string()?)
            .map_err(|e| RestError::malformed(format!("value is not valid base64: {e}"))),
        Some(other) => Err(RestError::malformed(format!(
            "value_encoding {other:?} is not json, utf8 or base64"
        ))),
    }
}

/// The key an item names, from `key` or `key_base64` (not both).
fn item_key(item: &ItemJson<'_>) -> Result<Option<Vec<u8>>, RestError> {
    match (&item.key, &item.key_base64) {
        (Some(_), Some(_)) => Err(RestError::malformed("give key or key_base64, not both")),
        (Some(k), None) => Ok(Some(k.as_bytes().to_vec())),
        (None, Some(b)) => BASE64
            .decode(b)
            .map(Some)
            .map_err(|e| RestError::malformed(format!("key_base64 is not valid base64: {e}"))),
        (None, None) => Ok(None),
    }
}

/// One operation of a batch, as it will be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub kind: OpKind,
    pub key: Vec<u8>,
}

/// Parses a batch body into its items and their operation frames (each a
/// 4-byte length and a `CacheOperation`, ready for the dispatcher). The
/// whole batch is refused (400) if any operation is malformed; invalid keys
/// are answered per item (CACHE_004). Every operation carries the request's
/// `correlation_id`.
pub fn batch_operations(body: &[u8], correlation_id: &str) -> Result<(Vec<BatchItem>, Vec<u8>), RestError> {
    let batch: BatchJson<'_> = serde_json::from_slice(body).map_err(|e| bad_json(&e))?;
    if batch.operations.len() > crate::validate::MAX_BATCH_KEYS {
        return Err(RestError::of(
            Status::BatchTooLarge,
            format!("more than {} operations", crate::validate::MAX_BATCH_KEYS),
        ));
    }
    let mut items = Vec::with_capacity(batch.operations.len());
    let mut frames = Vec::new();
    for (i, item) in batch.operations.iter().enumerate() {
        let at = |message: &str| RestError::malformed(format!("operations[{i}]: {message}"));
        let key = item_key(item)
            .map_err(|e| at(&e.message))?
            .ok_or_else(|| at("key or key_base64 is required"))?;
        let kind = match item.op.as_deref() {
            Some("get") => OpKind::Get,
            Some("set") => OpKind::Set,
            Some("delete") => OpKind::Delete,
            _ => return Err(at("op must be get, set or delete")),
        };
        let op = if kind == OpKind::Set {
            set_operation(&key, item).map_err(|e| at(&e.message))?
        } else {
            if item.value.is_some() || item.ttl.is_some() || item.value_encoding.is_some() {
                return Err(at("only a set takes value, value_encoding and ttl"));
            }
            check_options(item).map_err(|e| at(&e.message))?;
            operation(kind, &key)
        };
        let op = CacheOperation {
            correlation_id: correlation_id.into(),
            ..op
        };
        crate::frame::write_frame(&mut frames, &prost::Message::encode_to_vec(&op));
        items.push(BatchItem { kind, key });
    }
    Ok((items, frames))
}

fn bad_json(e: &serde_json::Error) -> RestError {
    RestError::malformed(format!("invalid JSON body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(body: &str) -> Result<CacheOperation, RestError> {
        put_operation(b"k", body.as_bytes(), Some("application/json"), &Query::default())
    }

    #[test]
    fn put_bodies() {
        let op = put(" {\"hp\": 12}\n").unwrap();
        assert_eq!(&op.value[..], b"{\"hp\": 12}", "bare JSON kept verbatim");
        let op = put(r#"{"cache_request": {"key": "k", "value": {"a" : [1, 2]}, "ttl": 60, "options": {"consistency": "strong"}}}"#).unwrap();
        assert_eq!(&op.value[..], br#"{"a" : [1, 2]}"#);
        assert_eq!(op.ttl, 60);
        assert_eq!(op.options.unwrap().consistency, "strong");
        let op = put(r#"{"cache_request": {"value": "AP8=", "value_encoding": "base64"}}"#).unwrap();
        assert_eq!(&op.value[..], b"\x00\xff");
        let op = put(r#"{"cache_request": {"value": "héllo", "value_encoding": "utf8"}}"#).unwrap();
        assert_eq!(&op.value[..], "héllo".as_bytes());
        let op = put(r#"{"cache_request": {"value": null}}"#).unwrap();
        assert_eq!(&op.value[..], b"null");
        let op = put(r#"{"cache_request": 1, "other": 2}"#).unwrap();
        assert_eq!(
            &op.value[..],
            br#"{"cache_request": 1, "other": 2}"#,
            "not an envelope"
        );
        let q = Query::parse(Some("ttl=5")).unwrap();
        let op = put_operation(b"k", b"\x00\x01", Some("application/octet-stream"), &q).unwrap();
        assert_eq!((&op.value[..], op.ttl), (&b"\x00\x01"[..], 5));

        for bad in [
            "",
            "{",
            "nope",
            r#"{"cache_request": {"key": "other", "value": 1}}"#,
            r#"{"cache_request": {"ttl": 1}}"#,
            r#"{"cache_request": {"value": 1, "ttl": -1}}"#,
            r#"{"cache_request": {"value": 1, "extra": 1}}"#,
            r#"{"cache_request": {"value": 1, "value_encoding": "base64"}}"#,
            r#"{"cache_request": {"value": "!!", "value_encoding": "base64"}}"#,
            r#"{"cache_request": {"value": 1, "value_encoding": "rot13"}}"#,
        ] {
            let e = put(bad).expect_err(bad);
            assert_eq!((e.http_status, e.status), (400, Status::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_batch_with_a_bad_consistency_is_refused_whole() {
        for op in [
            r#""op": "set", "value": 1"#,
            r#""op": "get""#,
            r#""op": "delete""#,
        ] {
            let body = format!(
                r#"{{"operations": [{{"op": "get", "key": "a"}}, {{{op}, "key": "b", "options": {{"consistency": "sometimes"}}}}]}}"#
            );
            let e = batch_operations(body.as_bytes(), "").unwrap_err();
            assert_eq!(e.http_status, 400, "{body}");
            assert!(e.message.contains("operations[1]"), "{}", e.message);
        }
    }

    #[test]
    fn batches() {
        let body = br#"{"operations": [
            {"op": "set", "key": "a", "value": {"x": 1}, "ttl": 9},
            {"op": "get", "key_base64": "/w=="},
            {"op": "delete", "key": "a"}
        ]}"#;
        let (items, frames) = batch_operations(body, "c-1").unwrap();
        assert_eq!(
            items,
            vec![
                BatchItem {
                    kind: OpKind::Set,
                    key: b"a".to_vec()
                },
                BatchItem {
                    kind: OpKind::Get,
                    key: vec![0xff]
                },
                BatchItem {
                    kind: OpKind::Delete,
                    key: b"a".to_vec()
                },
            ]
        );
        let first = crate::frame::Frames::new(&frames).next().unwrap();
        let first: CacheOperation = prost::Message::decode(first).unwrap();
        assert_eq!((&first.value[..], first.ttl), (&br#"{"x": 1}"#[..], 9));

        for bad in [
            r#"{"operations": [{"op": "get"}]}"#,
            r#"{"operations": [{"op": "frobnicate", "key": "a"}]}"#,
            r#"{"operations": [{"op": "get", "key": "a", "value": 1}]}"#,
            r#"{"operations": [{"op": "set", "key": "a"}]}"#,
            r#"{"operations": [{"op": "get", "key": "a", "key_base64": "YQ=="}]}"#,
            r#"{"ops": []}"#,
        ] {
            assert_eq!(
                batch_operations(bad.as_bytes(), "").unwrap_err().http_status,
                400,
                "{bad}"
            );
        }
        let many = format!(
            "{{\"operations\": [{}]}}",
            vec![r#"{"op":"get","key":"k"}"#; 10_001].join(",")
        );
        assert_eq!(
            batch_operations(many.as_bytes(), "").unwrap_err().status,
            Status::BatchTooLarge
        );
    }
}
