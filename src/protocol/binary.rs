//! Frames ↔ operations for the binary protocol, without copies: a decoded
//! [`OpView`] borrows the read buffer, and responses are encoded straight
//! into the connection's output buffer.
//!
//! The prost types in [`crate::proto`] describe the same messages; property
//! tests check that both agree.

use super::wire::{
    bytes_field_len, put_bytes_field, put_tag, put_varint, put_varint_field, varint_field_len, varint_len,
    WireError, WireReader, WIRE_LEN, WIRE_VARINT,
};
use crate::frame::FrameSlot;
use crate::{RequestError, Status};

/// Metadata of a stored item, in the units of the wire (`Metadata`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub created_at_ms: u64,
    /// 0 = never expires.
    pub expires_at_ms: u64,
    pub version: u64,
}

/// `Options` of a request, borrowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionsView<'a> {
    pub compression: bool,
    pub encryption: bool,
    pub consistency: &'a [u8],
}

/// One `CacheOperation`, borrowed from the frame it was read from.
#[derive(Clone, Debug, Default)]
pub struct OpView<'a> {
    pub operation: &'a [u8],
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub ttl: u32,
    pub options: OptionsView<'a>,
    pub correlation_id: &'a [u8],
    pub limit: u32,
    pub with_values: bool,
    /// Number of `keys` (field 6).
    pub key_count: usize,
    /// Number of `entries` (field 7).
    pub entry_count: usize,
    message: &'a [u8],
}

/// One `Entry` of `set_many`, borrowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryView<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub ttl: u32,
}

/// Decodes a `CacheOperation` body (the frame without its length prefix).
pub fn decode_operation(body: &[u8]) -> Result<OpView<'_>, WireError> {
    let mut op = OpView {
        message: body,
        ..OpView::default()
    };
    let mut r = WireReader::new(body);
    while !r.is_empty() {
        let (field, wt) = r.read_tag()?;
        match field {
            1 => op.operation = len_field(&mut r, field, wt)?,
            2 => op.key = len_field(&mut r, field, wt)?,
            3 => op.value = len_field(&mut r, field, wt)?,
            4 => op.ttl = varint_field(&mut r, field, wt)? as u32,
            5 => merge_options(&mut op.options, len_field(&mut r, field, wt)?)?,
            6 => {
                len_field(&mut r, field, wt)?;
                op.key_count += 1;
            }
            7 => {
                decode_entry(len_field(&mut r, field, wt)?)?;
                op.entry_count += 1;
            }
            8 => op.correlation_id = utf8(len_field(&mut r, field, wt)?)?,
            9 => op.limit = varint_field(&mut r, field, wt)? as u32,
            10 => op.with_values = varint_field(&mut r, field, wt)? != 0,
            _ => r.skip(wt)?,
        }
    }
    Ok(op)
}

impl<'a> OpView<'a> {
    /// The `keys` of `get_many` / `delete_many`, in order.
    pub fn keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        repeated_field(self.message, 6)
    }

    /// The encoded `entries` of `set_many`, in order, as they came.
    pub fn raw_entries(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        repeated_field(self.message, 7)
    }

    /// The `entries` of `set_many`, in order. They were validated by
    /// [`decode_operation`].
    pub fn entries(&self) -> impl Iterator<Item = EntryView<'a>> + 'a {
        repeated_field(self.message, 7).map(|b| decode_entry(b).unwrap_or_default())
    }
}

/// Every occurrence of length-delimited field `field` of a message that
/// already decoded once without error.
fn repeated_field(message: &[u8], field: u32) -> impl Iterator<Item = &[u8]> {
    let mut r = WireReader::new(message);
    std::iter::from_fn(move || {
        while !r.is_empty() {
            let (f, wt) = r.read_tag().ok()?;
            if f == field && wt == WIRE_LEN {
                return r.read_bytes().ok();
            }
            r.skip(wt).ok()?;
        }
        None
    })
}

/// Decodes one encoded `Entry`.
pub fn decode_entry(body: &[u8]) -> Result<EntryView<'_>, WireError> {
    let mut e = EntryView::default();
    let mut r = WireReader::new(body);
    while !r.is_empty() {
        let (field, wt) = r.read_tag()?;
        match field {
            1 => e.key = len_field(&mut r, field, wt)?,
            2 => e.value = len_field(&mut r, field, wt)?,
            3 => e.ttl = varint_field(&mut r, field, wt)? as u32,
            _ => r.skip(wt)?,
        }
    }
    Ok(e)
}

/// Embedded messages that occur more than once are merged (protobuf rules).
fn merge_options<'a>(opts: &mut OptionsView<'a>, body: &'a [u8]) -> Result<(), WireError> {
    let mut r = WireReader::new(body);
    while !r.is_empty() {
        let (field, wt) = r.read_tag()?;
        match field {
            1 => opts.compression = varint_field(&mut r, field, wt)? != 0,
            2 => opts.encryption = varint_field(&mut r, field, wt)? != 0,
            3 => opts.consistency = utf8(len_field(&mut r, field, wt)?)?,
            _ => r.skip(wt)?,
        }
    }
    Ok(())
}

#[inline]
fn len_field<'a>(r: &mut WireReader<'a>, field: u32, wt: u8) -> Result<&'a [u8], WireError> {
    if wt != WIRE_LEN {
        return Err(WireError::WrongWireType(field));
    }
    r.read_bytes()
}

#[inline]
fn varint_field(r: &mut WireReader<'_>, field: u32, wt: u8) -> Result<u64, WireError> {
    if wt != WIRE_VARINT {
        return Err(WireError::WrongWireType(field));
    }
    r.read_varint()
}

#[inline]
fn utf8(bytes: &[u8]) -> Result<&[u8], WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8)?;
    Ok(bytes)
}

/// Writes `CacheResponse` frames into an output buffer.
pub struct ResponseEncoder;

impl ResponseEncoder {
    /// A whole response: status, data, optional metadata, echoed
    /// correlation id.
    #[inline]
    pub fn simple(
        out: &mut Vec<u8>,
        status: Status,
        data: &[u8],
        meta: Option<&Meta>,
        correlation_id: &[u8],
    ) {
        let frame = Self::begin(out);
        put_varint_field(out, 1, u64::from(status.code_number()));
        put_bytes_field(out, 2, data);
        if let Some(meta) = meta {
            put_meta(out, 3, meta);
        }
        put_bytes_field(out, 7, correlation_id);
        Self::finish(out, frame);
    }

    /// The answer to a request refused by [`crate::validate`].
    #[inline]
    pub fn refuse(out: &mut Vec<u8>, error: RequestError, correlation_id: &[u8]) {
        Self::error(out, error.status(), error.message(), correlation_id);
    }

    /// An error response whose `data` is a short message.
    #[inline]
    pub fn error(out: &mut Vec<u8>, status: Status, message: &str, correlation_id: &[u8]) {
        Self::simple(out, status, message.as_bytes(), None, correlation_id);
    }

    /// Starts a frame; append fields with the `put_*` methods.
    #[inline]
    pub fn begin(out: &mut Vec<u8>) -> FrameSlot {
        FrameSlot::open(out)
    }

    /// Appends the top-level `status`, `correlation_id` and `truncated`.
    pub fn put_summary(out: &mut Vec<u8>, status: Status, correlation_id: &[u8], truncated: bool) {
        put_varint_field(out, 1, u64::from(status.code_number()));
        put_bytes_field(out, 7, correlation_id);
        put_varint_field(out, 9, u64::from(truncated));
    }

    /// Appends one `ItemResult` (field 6).
    pub fn put_item(out: &mut Vec<u8>, key: &[u8], status: Status, data: &[u8], meta: Option<&Meta>) {
        let status = u64::from(status.code_number());
        let meta_len = meta.map_or(0, |m| {
            let n = meta_body_len(m);
            varint_len(4 << 3) + varint_len(n as u64) + n
        });
        let len = bytes_field_len(1, key.len())
            + varint_field_len(2, status)
            + bytes_field_len(3, data.len())
            + meta_len;
        put_tag(out, 6, WIRE_LEN);
        put_varint(out, len as u64);
        put_bytes_field(out, 1, key);
        put_varint_field(out, 2, status);
        put_bytes_field(out, 3, data);
        if let Some(meta) = meta {
            put_meta(out, 4, meta);
        }
    }

    /// Bytes written to a frame so far (header included).
    #[inline]
    pub fn written(out: &[u8], frame: &FrameSlot) -> usize {
        frame.written(out)
    }

    /// Patches the length of a frame started with [`ResponseEncoder::begin`].
    #[inline]
    pub fn finish(out: &mut [u8], frame: FrameSlot) {
        frame.close(out);
    }
}

#[inline]
fn meta_body_len(m: &Meta) -> usize {
    varint_field_len(1, m.created_at_ms)
        + varint_field_len(2, m.expires_at_ms)
        + varint_field_len(3, m.version)
}

#[inline]
fn put_meta(out: &mut Vec<u8>, field: u32, m: &Meta) {
    put_tag(out, field, WIRE_LEN);
    put_varint(out, meta_body_len(m) as u64);
    put_varint_field(out, 1, m.created_at_ms);
    put_varint_field(out, 2, m.expires_at_ms);
    put_varint_field(out, 3, m.version);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn arb_operation() -> impl Strategy<Value = proto::CacheOperation> {
        (
            "[a-z_]{0,12}",
            arb_bytes(40),
            arb_bytes(200),
            any::<u32>(),
            proptest::option::of((any::<bool>(), any::<bool>(), "[a-z]{0,8}")),
            proptest::collection::vec(arb_bytes(20), 0..5),
            proptest::collection::vec((arb_bytes(20), arb_bytes(40), any::<u32>()), 0..4),
            "[ -~]{0,20}",
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(
                |(operation, key, value, ttl, options, keys, entries, correlation_id, limit, with_values)| {
                    proto::CacheOperation {
                        operation,
                        key: key.into(),
                        value: value.into(),
                        ttl,
                        options: options.map(|(compression, encryption, consistency)| proto::Options {
                            compression,
                            encryption,
                            consistency,
                        }),
                        keys: keys.into_iter().map(Bytes::from).collect(),
                        entries: entries
                            .into_iter()
                            .map(|(k, v, ttl)| proto::Entry {
                                key: k.into(),
                                value: v.into(),
                                ttl,
                            })
                            .collect(),
                        correlation_id,
                        limit,
                        with_values,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn decodes_what_prost_encodes(op in arb_operation()) {
            let body = op.encode_to_vec();
            let view = decode_operation(&body).unwrap();
            prop_assert_eq!(view.operation, op.operation.as_bytes());
            prop_assert_eq!(view.key, &op.key[..]);
            prop_assert_eq!(view.value, &op.value[..]);
            prop_assert_eq!(view.ttl, op.ttl);
            let opts = op.options.clone().unwrap_or_default();
            prop_assert_eq!(view.options.compression, opts.compression);
            prop_assert_eq!(view.options.encryption, opts.encryption);
            prop_assert_eq!(view.options.consistency, opts.consistency.as_bytes());
            prop_assert_eq!(view.correlation_id, op.correlation_id.as_bytes());
            prop_assert_eq!(view.limit, op.limit);
            prop_assert_eq!(view.with_values, op.with_values);
            let keys: Vec<&[u8]> = view.keys().collect();
            let want: Vec<&[u8]> = op.keys.iter().map(|k| &k[..]).collect();
            prop_assert_eq!(keys, want);
            prop_assert_eq!(view.key_count, op.keys.len());
            let entries: Vec<EntryView> = view.entries().collect();
            prop_assert_eq!(entries.len(), op.entries.len());
            for (e, want) in entries.iter().zip(&op.entries) {
                prop_assert_eq!(e.key, &want.key[..]);
                prop_assert_eq!(e.value, &want.value[..]);
                prop_assert_eq!(e.ttl, want.ttl);
            }
        }

        #[test]
        fn garbage_is_an_error_or_agrees_with_prost(body in arb_bytes(128)) {
            // Never panics; whatever decodes must decode the same with prost.
            if let Ok(view) = decode_operation(&body) {
                if let Ok(op) = proto::CacheOperation::decode(&body[..]) {
                    prop_assert_eq!(view.key, &op.key[..]);
                    prop_assert_eq!(view.value, &op.value[..]);
                    prop_assert_eq!(view.ttl, op.ttl);
                    prop_assert_eq!(view.key_count, op.keys.len());
                }
            }
        }

        #[test]
        fn prost_decodes_what_we_encode(
            status in 0u32..13, data in arb_bytes(300), corr in "[ -~]{0,20}",
            meta in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())),
            items in proptest::collection::vec((arb_bytes(20), 0u32..6, arb_bytes(50),
                proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>()))), 0..5),
            truncated in any::<bool>())
        {
            let status = Status::from_u32(status).unwrap();
            let meta = meta.map(|(c, e, v)| Meta { created_at_ms: c, expires_at_ms: e, version: v });
            let mut out = Vec::new();
            ResponseEncoder::simple(&mut out, status, &data, meta.as_ref(), corr.as_bytes());
            let len = crate::frame::declared_len(&out).unwrap();
            prop_assert_eq!(len, out.len() - 4);
            let resp = proto::CacheResponse::decode(&out[4..]).unwrap();
            prop_assert_eq!(resp.status, status.code_number());
            prop_assert_eq!(&resp.data[..], &data[..]);
            prop_assert_eq!(&resp.correlation_id, &corr);
            match meta {
                Some(m) => {
                    let got = resp.metadata.unwrap();
                    prop_assert_eq!((got.created_at, got.expires_at, got.version),
                                    (m.created_at_ms, m.expires_at_ms, m.version));
                }
                None => prop_assert!(resp.metadata.is_none()),
            }

            let mut out = Vec::new();
            let frame = ResponseEncoder::begin(&mut out);
            for (key, st, data, meta) in &items {
                let meta = meta.map(|(c, e, v)| Meta { created_at_ms: c, expires_at_ms: e, version: v });
                ResponseEncoder::put_item(&mut out, key, Status::from_u32(*st).unwrap(), data, meta.as_ref());
            }
            ResponseEncoder::put_summary(&mut out, Status::Ok, corr.as_bytes(), truncated);
            ResponseEncoder::finish(&mut out, frame);
            let resp = proto::CacheResponse::decode(&out[4..]).unwrap();
            prop_assert_eq!(resp.items.len(), items.len());
            prop_assert_eq!(resp.truncated, truncated);
            for (got, (key, st, data, meta)) in resp.items.iter().zip(&items) {
                prop_assert_eq!(&got.key[..], &key[..]);
                prop_assert_eq!(got.status, *st);
                prop_assert_eq!(&got.data[..], &data[..]);
                prop_assert_eq!(got.metadata.as_ref().map(|m| (m.created_at, m.expires_at, m.version)), *meta);
            }
        }
    }

    #[test]
    fn documented_example_bytes() {
        let op = proto::CacheOperation {
            operation: "get".into(),
            key: Bytes::from_static(b"k1"),
            ..Default::default()
        };
        assert_eq!(
            op.encode_to_vec(),
            [0x0a, 0x03, b'g', b'e', b't', 0x12, 0x02, b'k', b'1']
        );
        let hs = proto::CacheConnection {
            service_id: "svc".into(),
            protocol_version: 1,
            ..Default::default()
        };
        assert_eq!(hs.encode_to_vec(), [0x0a, 0x03, b's', b'v', b'c', 0x30, 0x01]);
        let mut out = Vec::new();
        ResponseEncoder::simple(&mut out, Status::NotFound, b"", None, b"");
        assert_eq!(out, [0, 0, 0, 2, 0x08, 0x01]);
    }

    #[test]
    fn wrong_wire_type_is_an_error() {
        // field 2 (key) sent as a varint.
        assert_eq!(
            decode_operation(&[0x10, 0x01]).unwrap_err(),
            WireError::WrongWireType(2)
        );
        // truncated length.
        assert_eq!(
            decode_operation(&[0x12, 0x05, b'a']).unwrap_err(),
            WireError::Truncated
        );
        // invalid UTF-8 correlation id.
        assert_eq!(
            decode_operation(&[0x42, 0x01, 0xff]).unwrap_err(),
            WireError::InvalidUtf8
        );
    }
}
