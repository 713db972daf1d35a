//! The body of each `cache.item.updated` (docs/events.md), written straight
//! into one shared buffer: the bridge publishes one message per write, so
//! building a body must cost tens of nanoseconds, not a dozen allocations.
//! Strings go through `serde_json`'s escaper; the structure around them is
//! fixed. The unit tests compare every body with the same fields built as
//! a `serde_json::Value`.

use std::io::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::envelope::{rfc3339_ms, EVENT_VERSION};
use crate::shard::events::ItemEventRef;
use crate::shard::policy::CacheType;

/// Subject and `event` of item events.
pub const SUBJECT_ITEM_UPDATED: &str = "cache.item.updated";

/// TTL in the envelope of item events (seconds).
pub const ITEM_EVENT_TTL_S: u32 = 60;
const ITEM_EVENT_TTL_TEXT: &str = "60";

/// The arena is refilled in chunks of this size; a body is a slice of it.
const ARENA_CHUNK: usize = 64 * 1024;

/// Writes item event bodies. One per bridge.
pub struct ItemMessages {
    arena: BytesMut,
    /// `,"source":"…","environment":"…"`, already escaped.
    source_field: String,
    /// The RFC 3339 form of `stamp_ms` (events of one millisecond share it).
    stamp_ms: u64,
    stamp: String,
    /// Correlation ids for writes that carried none: a random prefix and a
    /// sequence number.
    id_prefix: String,
    id_seq: u64,
    id: String,
}

/// One body and the envelope fields a header copy needs.
pub struct ItemMessage<'a> {
    pub body: Bytes,
    pub correlation_id: &'a str,
    pub timestamp: &'a str,
}

impl ItemMessages {
    pub fn new(source: &str, environment: &str, id_prefix: &str) -> ItemMessages {
        let text = |s: &str| serde_json::to_string(s).expect("strings serialise");
        ItemMessages {
            arena: BytesMut::with_capacity(ARENA_CHUNK),
            source_field: format!(
                ",\"source\":{},\"environment\":{}",
                text(source),
                text(environment)
            ),
            stamp_ms: u64::MAX,
            stamp: String::new(),
            id_prefix: id_prefix.to_string(),
            id_seq: 0,
            id: String::new(),
        }
    }

    /// The next generated correlation id.
    pub fn next_correlation_id(&mut self) -> String {
        self.generate_id();
        self.id.clone()
    }

    fn generate_id(&mut self) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.id_seq += 1;
        let mut digits = [0u8; 16];
        for (i, d) in digits.iter_mut().enumerate() {
            *d = HEX[(self.id_seq >> ((15 - i) * 4)) as usize & 15];
        }
        self.id.clear();
        self.id.push_str(&self.id_prefix);
        self.id
            .push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
    }

    /// The body of `event`; `coalesced` earlier events of its key were
    /// folded into it.
    pub fn write(&mut self, event: &ItemEventRef<'_>, coalesced: u64) -> ItemMessage<'_> {
        if event.at_ms != self.stamp_ms {
            self.stamp_ms = event.at_ms;
            self.stamp = rfc3339_ms(event.at_ms);
        }
        match std::str::from_utf8(event.correlation_id) {
            Ok(c) if !c.is_empty() => {
                self.id.clear();
                self.id.push_str(c);
            }
            _ => self.generate_id(),
        }
        let correlation_id = &self.id;
        if self.arena.capacity() < 1024 + 4 * event.key.len() {
            self.arena.reserve(ARENA_CHUNK);
        }
        let out = &mut self.arena;
        out.put_slice(b"{\"event\":\"");
        out.put_slice(SUBJECT_ITEM_UPDATED.as_bytes());
        out.put_slice(b"\",\"version\":\"");
        out.put_slice(EVENT_VERSION.as_bytes());
        out.put_slice(b"\",\"correlation_id\":");
        json_str(out, correlation_id);
        out.put_slice(self.source_field.as_bytes());
        out.put_slice(b",\"timestamp\":\"");
        out.put_slice(self.stamp.as_bytes());
        out.put_slice(b"\",\"ttl\":");
        out.put_slice(ITEM_EVENT_TTL_TEXT.as_bytes());
        out.put_slice(b",\"data\":{\"key\":");
        json_bytes(out, event.key);
        out.put_slice(b",\"operation\":\"");
        out.put_slice(event.op.name().as_bytes());
        out.put_slice(b"\",\"timestamp\":\"");
        out.put_slice(self.stamp.as_bytes());
        out.put_slice(b"\",\"service_id\":");
        json_bytes(out, event.service);
        if let Some(t) = CacheType::of_key(event.key) {
            out.put_slice(b",\"cache_type\":\"");
            out.put_slice(t.name().as_bytes());
            out.put_u8(b'"');
        }
        if coalesced > 0 {
            out.put_slice(b",\"coalesced\":");
            put_u64(out, coalesced);
        }
        out.put_slice(b"}}");
        ItemMessage {
            body: self.arena.split().freeze(),
            correlation_id,
            timestamp: &self.stamp,
        }
    }
}

fn json_str(out: &mut BytesMut, s: &str) {
    serde_json::to_writer(out.writer(), s).expect("writing to memory cannot fail");
}

/// Bytes as a JSON string: as they are when UTF-8 (the usual case, checked
/// without the lossy decoder's per-chunk walk), else with U+FFFD for what
/// is not.
fn json_bytes(out: &mut BytesMut, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => json_str(out, s),
        Err(_) => json_str(out, &String::from_utf8_lossy(b)),
    }
}

fn put_u64(out: &mut BytesMut, n: u64) {
    let _ = write!(out.writer(), "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::events::ItemOp;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn expected(event: &ItemEventRef<'_>, correlation_id: &str, coalesced: u64) -> Value {
        let stamp = rfc3339_ms(event.at_ms);
        let mut data = json!({
            "key": String::from_utf8_lossy(event.key),
            "operation": event.op.name(),
            "timestamp": stamp,
            "service_id": String::from_utf8_lossy(event.service),
        });
        if let Some(t) = CacheType::of_key(event.key) {
            data["cache_type"] = json!(t.name());
        }
        if coalesced > 0 {
            data["coalesced"] = json!(coalesced);
        }
        json!({
            "event": "cache.item.updated",
            "version": "1.0",
            "correlation_id": correlation_id,
            "source": "cache \"svc\"",
            "environment": "staging",
            "timestamp": stamp,
            "ttl": 60,
            "data": data,
        })
    }

    #[test]
    fn a_body_names_its_write() {
        let mut m = ItemMessages::new("cache \"svc\"", "staging", "p");
        let e = ItemEventRef::new(ItemOp::Set, 1_756_555_200_123, b"character:7", b"char", b"c-1");
        let msg = m.write(&e, 0);
        assert_eq!(msg.correlation_id, "c-1");
        assert_eq!(msg.timestamp, "2025-08-30T12:00:00.123Z");
        let body: Value = serde_json::from_slice(&msg.body).unwrap();
        assert_eq!(body, expected(&e, "c-1", 0));
        assert_eq!(body["data"]["cache_type"], "character_data");
    }

    #[test]
    fn the_ttl_text_is_the_ttl() {
        assert_eq!(ITEM_EVENT_TTL_TEXT, ITEM_EVENT_TTL_S.to_string());
    }

    #[test]
    fn writes_without_a_correlation_id_get_fresh_ones() {
        let mut m = ItemMessages::new("s", "e", "ab");
        let e = ItemEventRef::new(ItemOp::Delete, 0, b"k", b"s", b"");
        let first = m.write(&e, 0).correlation_id.to_string();
        let second = m.write(&e, 0).correlation_id.to_string();
        assert_eq!(first, "ab0000000000000001");
        assert_eq!(second, "ab0000000000000002");
        m.id_seq = 0x0123_4567_89ab_cdee;
        assert_eq!(m.next_correlation_id(), "ab0123456789abcdef");
    }

    #[test]
    fn bodies_stay_whole_as_the_arena_refills() {
        let mut m = ItemMessages::new("s", "e", "p");
        let key = vec![b'k'; 250];
        let mut bodies = Vec::new();
        for i in 0..2_000u64 {
            let e = ItemEventRef::new(ItemOp::Set, i, &key, b"svc", b"c");
            bodies.push((i, m.write(&e, i).body));
        }
        for (i, body) in bodies {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v["data"]["coalesced"],
                if i == 0 { Value::Null } else { json!(i) }
            );
        }
    }

    proptest! {
        #[test]
        fn every_body_is_the_json_of_its_fields(
            key in proptest::collection::vec(any::<u8>(), 1..250),
            service in ".{0,40}",
            corr in proptest::collection::vec(any::<u8>(), 0..64),
            at_ms in 0u64..8_000_000_000_000,
            coalesced in 0u64..5,
            op in 0usize..6,
        ) {
            let ops = [ItemOp::Set, ItemOp::Delete, ItemOp::SetMany, ItemOp::DeleteMany, ItemOp::Flush, ItemOp::Invalidate];
            let mut m = ItemMessages::new("cache \"svc\"", "staging", "p");
            let e = ItemEventRef::new(ops[op], at_ms, &key, service.as_bytes(), &corr);
            let msg = m.write(&e, coalesced);
            let corr_id = msg.correlation_id.to_string();
            let body: Value = serde_json::from_slice(&msg.body).unwrap();
            prop_assert_eq!(body, expected(&e, &corr_id, coalesced));
        }
    }
}
