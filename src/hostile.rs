//! The bodies of the fuzz targets (`fuzz/`, cargo-fuzz on nightly) and of
//! the property tests that run them on random input in stable CI
//! (`tests/hostile_input.rs`): every parser that sees bytes from the
//! network, fed anything. Each function must return without panicking and
//! checks the invariants its parser promises.

use prost::Message;

use crate::auth::verifier::{AuthSettings, Verifier};
use crate::codec::{CodecSettings, CompressionMode, EncryptionKey, ValueCodec};
use crate::frame::{check_frame, FrameStatus, FRAME_HEADER_BYTES, HANDSHAKE_MAX_FRAME_BYTES};
use crate::protocol::binary::decode_operation;
use crate::protocol::http::{ChunkedDecoder, HeadReader};

/// Largest frame or body the targets allow (small, so that inputs reach
/// the limits).
pub const MAX_BYTES: usize = 64 * 1024;

/// Binary protocol: frames, then each body as a `CacheConnection` (prost,
/// as the handshake decodes it) and as a `CacheOperation` (the zero-copy
/// decoder, with its lazy iterators walked).
pub fn binary_frames(data: &[u8]) {
    let mut rest = data;
    let mut first = true;
    loop {
        let max = if first {
            HANDSHAKE_MAX_FRAME_BYTES
        } else {
            MAX_BYTES
        };
        match check_frame(rest, max) {
            Ok(FrameStatus::Complete { len }) => {
                assert!(len <= max && FRAME_HEADER_BYTES + len <= rest.len());
                let body = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
                let _ = crate::proto::CacheConnection::decode(body);
                if let Ok(op) = decode_operation(body) {
                    assert_eq!(op.keys().count(), op.key_count);
                    assert_eq!(op.entries().count(), op.entry_count);
                    let _ = crate::ops::OpKind::parse(op.operation);
                }
                rest = &rest[FRAME_HEADER_BYTES + len..];
                first = false;
            }
            Ok(FrameStatus::Incomplete { needed }) => {
                assert!(needed.is_none_or(|n| n > rest.len() && n <= FRAME_HEADER_BYTES + max));
                return;
            }
            Err(_) => return,
        }
    }
}

/// REST: request heads (pipelined) and chunked bodies.
pub fn http_requests(data: &[u8]) {
    let mut rest = data;
    let mut reader = HeadReader::new();
    while let Ok(Some((head, len))) = reader.poll(rest, MAX_BYTES) {
        assert!(len > 0 && len <= rest.len());
        rest = &rest[len..];
        reader = HeadReader::new();
        if let Some(token) = &head.bearer {
            assert_eq!(token.trim(), token.as_str());
        }
        match head.body {
            crate::protocol::http::BodyFraming::Length(n) => {
                assert!(n <= MAX_BYTES);
                rest = &rest[n.min(rest.len())..];
            }
            crate::protocol::http::BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(MAX_BYTES);
                let mut body = Vec::new();
                match decoder.decode(rest, &mut body) {
                    Ok(used) => {
                        assert!(used <= rest.len() && body.len() <= MAX_BYTES);
                        rest = &rest[used..];
                    }
                    Err(_) => return,
                }
            }
            crate::protocol::http::BodyFraming::None => {}
        }
    }
}

/// JWT: the token as it arrives in a handshake or a Bearer header.
pub fn jwt(data: &[u8]) {
    thread_local! {
        static VERIFIER: Verifier = Verifier::with_hs256_secret(
            &[0x42; 32],
            &AuthSettings {
                issuer: Some("auth-service".into()),
                audience: Some("cache".into()),
                ..AuthSettings::default()
            },
        );
    }
    VERIFIER.with(|v| {
        // Random input is never a token signed with this secret.
        assert!(v.verify(data, Some("fuzz")).is_err());
    });
}

/// Value codec: stored bytes with any codec flags (first byte).
pub fn value_codec(data: &[u8]) {
    thread_local! {
        static CODEC: std::cell::RefCell<ValueCodec> = std::cell::RefCell::new(ValueCodec::new(
            &CodecSettings {
                key: Some(std::sync::Arc::new(EncryptionKey::from_bytes([7; 32]))),
                encrypt_prefixes: Vec::new(),
                compression: CompressionMode::Requested,
                compression_threshold: 0,
            },
            MAX_BYTES,
        ));
        static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    let Some((&flags, stored)) = data.split_first() else {
        return;
    };
    CODEC.with(|c| {
        let mut c = c.borrow_mut();
        if let Ok(value) = c.decode(b"fuzz:key", u32::from(flags & 3), stored) {
            assert!(value.len() <= MAX_BYTES.max(stored.len()));
        }
        // The buffers are kept between calls: bound them by the largest
        // input seen so far, not this one (a growth at most doubles).
        let largest = LARGEST.with(|l| {
            l.set(l.get().max(data.len()));
            l.get()
        });
        assert!(c.scratch_capacity() <= 2 * MAX_BYTES + 2 * largest);
    });
}

/// Message Hub: a `config.cache.update` or `control.cache.action` payload,
/// read as the bridge reads it: JSON, the envelope (`Incoming::read`), the
/// `data` object; the policy change applied to a start policy; an
/// `invalidate` target checked as a key or a pattern and matched.
pub fn hub_message(data: &[u8]) {
    use crate::hub::envelope::Incoming;
    use crate::shard::policy::{CacheType, Policy};
    use serde_json::Value;

    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let incoming = Incoming::read(&body, None);
    let fields = [&incoming.correlation_id, &incoming.source, &incoming.event];
    assert!(fields.into_iter().flatten().all(|s| !s.is_empty()));
    let Some(data) = body.get("data").filter(|d| d.is_object()) else {
        return;
    };
    let mut policy = Policy::new(3600, 0);
    match policy.apply(data) {
        Ok(_) => {
            assert_eq!(policy.version, 1);
            assert!(policy.coalesce_ms <= 60_000);
            if let Some(memory) = &policy.max_memory {
                assert!(crate::size::parse_memory(memory).is_ok());
            }
            for t in CacheType::ALL {
                let _ = policy.resolve_ttl(t.prefix(), 0);
            }
            // The bridge answers with the policy as JSON.
            assert!(serde_json::to_vec(&policy).is_ok());
        }
        Err(_) => assert_eq!(policy.version, 0),
    }
    let target = data.get("target").and_then(Value::as_str).unwrap_or("");
    let pattern = data
        .get("parameters")
        .and_then(|p| p.get("pattern"))
        .and_then(Value::as_bool)
        .unwrap_or_else(|| target.contains(['*', '?', '[']));
    if pattern && crate::pattern::is_valid_pattern(target.as_bytes()) {
        let _ = crate::pattern::glob_match(target.as_bytes(), b"character:1234");
        let _ = crate::pattern::glob_match(target.as_bytes(), target.as_bytes());
    } else if !pattern && crate::key::is_valid_key(target.as_bytes()) {
        assert!(!target.is_empty() && target.len() <= 250);
    }
}

/// YAML configuration file: the file becomes flags (`config_file::to_args`),
/// and clap parses them as `--config FILE` would.
pub fn config_file(data: &[u8]) {
    use clap::Parser;

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(args) = crate::config::file::to_args(text, "fuzz.yaml") else {
        return;
    };
    // Every argument list starts with a flag the file is allowed to set.
    if let Some(first) = args.first() {
        let flag = first.to_str().unwrap_or_default();
        assert!(crate::config::file::key_of_flag(flag).is_some(), "{flag}");
    }
    let _ = crate::config::Cli::try_parse_from(std::iter::once("cache-server".into()).chain(args));
}
