//! Recording one read cycle of a connection: which operation each request
//! was, then, once the answers are ready, their statuses, the cycle's
//! latency, and the write events they cause.

use crate::frame::{next_frame, FRAME_HEADER_BYTES};
use crate::metrics::{op_slot, ServiceIndex, INVALID_OP};
use crate::ops::OpKind;
use crate::protocol::binary::decode_operation;
use crate::protocol::wire::{WireReader, WIRE_LEN, WIRE_VARINT};
use crate::shard::events::{ItemEventRef, ItemOp};
use crate::shard::Shard;
use crate::time::unix_now_us;

/// Who a connection's requests are from: interned once per connection.
pub struct ConnIdentity {
    pub service: ServiceIndex,
    pub service_id: Box<str>,
    /// The handshake's correlation id, used for requests that carry none.
    pub correlation_id: Box<[u8]>,
}

impl ConnIdentity {
    pub fn new(shard: &Shard, service_id: &str, correlation_id: &[u8]) -> ConnIdentity {
        ConnIdentity {
            service: shard.metrics_mut().intern(service_id),
            service_id: service_id.into(),
            correlation_id: correlation_id.into(),
        }
    }

    /// A connection that named no service (counted as `other`).
    pub fn anonymous() -> ConnIdentity {
        ConnIdentity {
            service: 0,
            service_id: "".into(),
            correlation_id: Box::default(),
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    op: u8,
    /// The request frame's place in the cycle's input.
    start: u32,
    len: u32,
    /// Its key's and correlation id's places, from the frame's start (so a
    /// write's event needs no second decode).
    key: Span,
    correlation: Span,
}

#[derive(Clone, Copy, Default)]
struct Span {
    at: u32,
    len: u32,
}

impl Span {
    /// Where `field` lies in `frame`; empty when it is not inside.
    fn within(frame: &[u8], field: &[u8]) -> Span {
        let at = (field.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
        if field.is_empty() || at.checked_add(field.len()).is_none_or(|end| end > frame.len()) {
            return Span::default();
        }
        Span {
            at: at as u32,
            len: field.len() as u32,
        }
    }

    fn of<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let at = self.at as usize;
        frame.get(at..at + self.len as usize).unwrap_or_default()
    }
}

/// The requests of one cycle, in order: one entry per answer frame.
#[derive(Default)]
pub struct CycleRecord {
    entries: Vec<Entry>,
    started_us: u64,
}

impl CycleRecord {
    /// Starts a cycle (keeps the buffer).
    #[inline]
    pub fn begin(&mut self, now_us: u64) {
        self.entries.clear();
        self.started_us = now_us;
    }

    /// A request frame at `input[start..start + len]` that will get one
    /// answer; its operation is unknown until [`CycleRecord::set_op`].
    #[inline]
    pub fn push(&mut self, start: usize, len: usize) {
        self.entries.push(Entry {
            op: INVALID_OP,
            start: start as u32,
            len: len as u32,
            key: Span::default(),
            correlation: Span::default(),
        });
    }

    /// The operation of the request pushed last, and where its key and
    /// correlation id lie in its `frame`.
    #[inline]
    pub fn set_op(&mut self, kind: OpKind, frame: &[u8], key: &[u8], correlation_id: &[u8]) {
        if let Some(e) = self.entries.last_mut() {
            e.op = op_slot(kind);
            e.key = Span::within(frame, key);
            e.correlation = Span::within(frame, correlation_id);
        }
    }

    /// The correlation id of the `index`th request of the cycle, read from
    /// `input` (what the requests were read from); empty when it had none
    /// or its operation was never recognised.
    pub fn correlation_id<'a>(&self, index: usize, input: &'a [u8]) -> &'a [u8] {
        let Some(e) = self.entries.get(index) else {
            return &[];
        };
        let (start, len) = (e.start as usize, e.len as usize);
        input
            .get(start..start + len)
            .map_or(&[], |frame| e.correlation.of(frame))
    }

    /// Requests recorded this cycle.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Records the answered requests of a cycle: `input` is what the requests
/// were read from, `answers` holds the answer frames of its requests from
/// the `from`th on, in order (all of them, or those of one round).
pub fn observe_cycle(
    shard: &Shard,
    who: &ConnIdentity,
    record: &CycleRecord,
    from: usize,
    input: &[u8],
    answers: &[u8],
) {
    let now_us = unix_now_us();
    let latency_us = now_us.saturating_sub(record.started_us);
    let mut metrics = shard.metrics_mut();
    let mut pos = 0;
    for e in record.entries.iter().skip(from) {
        let Some(body) = next_frame(answers, &mut pos) else {
            break;
        };
        let status = response_status(body);
        metrics.record(who.service, e.op, status, latency_us);
        if e.op == op_slot(OpKind::Get) {
            let hit = u64::from(status == 0);
            let miss = u64::from(matches!(status, 1 | 2));
            metrics.record_lookups(who.service, e.op, hit, miss);
        } else if e.op == op_slot(OpKind::GetMany) && status == 0 {
            let (mut hits, mut misses) = (0, 0);
            for_each_item(body, |_, s| match s {
                0 => hits += 1,
                1 | 2 => misses += 1,
                _ => {}
            });
            metrics.record_lookups(who.service, e.op, hits, misses);
        }
        let Some(sink) = shard.events() else {
            continue;
        };
        let Some(op) = write_op(e.op) else {
            continue;
        };
        if status != 0 {
            continue;
        }
        let start = e.start as usize;
        let frame = &input[start..start + e.len as usize];
        let at_ms = now_us / 1000;
        let policy = shard.policy();
        let mut offer = |key: &[u8], corr: &[u8]| {
            let corr = if corr.is_empty() {
                &who.correlation_id[..]
            } else {
                corr
            };
            let event = ItemEventRef::new(op, at_ms, key, who.service_id.as_bytes(), corr);
            let handed = sink.offer(&event);
            metrics.events_queued += handed.queued;
            metrics.events_dropped += handed.dropped;
        };
        if let ItemOp::Set | ItemOp::Delete = op {
            // The key was found when the request ran.
            let key = e.key.of(frame);
            if policy.events_for(key) {
                offer(key, e.correlation.of(frame));
            }
            continue;
        }
        let Ok(request) = decode_operation(&frame[FRAME_HEADER_BYTES..]) else {
            continue;
        };
        match op {
            ItemOp::Flush => {
                if policy.default_events {
                    offer(b"*", request.correlation_id);
                }
            }
            _ => for_each_item(body, |key, s| {
                if s == 0 && policy.events_for(key) {
                    offer(key, request.correlation_id);
                }
            }),
        }
    }
    if let Some(sink) = shard.events() {
        let handed = sink.hand_over();
        metrics.events_queued += handed.queued;
        metrics.events_dropped += handed.dropped;
    }
}

fn write_op(slot: u8) -> Option<ItemOp> {
    const SET: u8 = op_slot(OpKind::Set);
    const DELETE: u8 = op_slot(OpKind::Delete);
    const SET_MANY: u8 = op_slot(OpKind::SetMany);
    const DELETE_MANY: u8 = op_slot(OpKind::DeleteMany);
    const FLUSH: u8 = op_slot(OpKind::Flush);
    Some(match slot {
        SET => ItemOp::Set,
        DELETE => ItemOp::Delete,
        SET_MANY => ItemOp::SetMany,
        DELETE_MANY => ItemOp::DeleteMany,
        FLUSH => ItemOp::Flush,
        _ => return None,
    })
}

/// `CacheResponse.status` of an encoded response (0 when absent).
#[inline]
pub(crate) fn response_status(body: &[u8]) -> u32 {
    // Simple answers put a non-zero status first: one byte compare.
    if body.first() == Some(&0x08) {
        if let Some(&b) = body.get(1) {
            if b < 0x80 {
                return u32::from(b);
            }
        }
    }
    let mut r = WireReader::new(body);
    while !r.is_empty() {
        let Ok((field, wire)) = r.read_tag() else {
            return 0;
        };
        if field == 1 && wire == WIRE_VARINT {
            return r.read_varint().map_or(0, |v| v as u32);
        }
        if r.skip(wire).is_err() {
            return 0;
        }
    }
    0
}

/// Calls `f(key, status)` for each `ItemResult` of a batch answer.
fn for_each_item(body: &[u8], mut f: impl FnMut(&[u8], u32)) {
    let mut r = WireReader::new(body);
    while !r.is_empty() {
        let Ok((field, wire)) = r.read_tag() else {
            return;
        };
        if field != 6 || wire != WIRE_LEN {
            if r.skip(wire).is_err() {
                return;
            }
            continue;
        }
        let Ok(item) = r.read_bytes() else {
            return;
        };
        let (mut key, mut status) = (&[][..], 0u32);
        let mut ir = WireReader::new(item);
        while !ir.is_empty() {
            let Ok((f2, w2)) = ir.read_tag() else {
                break;
            };
            match (f2, w2) {
                (1, WIRE_LEN) => key = ir.read_bytes().unwrap_or_default(),
                (2, WIRE_VARINT) => status = ir.read_varint().unwrap_or(0) as u32,
                _ => {
                    if ir.skip(w2).is_err() {
                        break;
                    }
                }
            }
        }
        f(key, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::binary::ResponseEncoder;
    use crate::Status;

    #[test]
    fn statuses_are_read_from_answers() {
        let mut out = Vec::new();
        ResponseEncoder::simple(&mut out, Status::Ok, b"value", None, b"c1");
        ResponseEncoder::error(&mut out, Status::Forbidden, "no", b"");
        let frame = ResponseEncoder::begin(&mut out);
        ResponseEncoder::put_item(&mut out, b"a", Status::Ok, b"", None);
        ResponseEncoder::put_item(&mut out, b"b", Status::NotFound, b"", None);
        ResponseEncoder::put_summary(&mut out, Status::BatchTooLarge, b"", false);
        ResponseEncoder::finish(&mut out, frame);
        let mut pos = 0;
        let mut statuses = Vec::new();
        let mut items = Vec::new();
        while let Some(body) = next_frame(&out, &mut pos) {
            statuses.push(response_status(body));
            for_each_item(body, |k, s| items.push((k.to_vec(), s)));
        }
        assert_eq!(statuses, vec![0, 102, 12]);
        assert_eq!(items, vec![(b"a".to_vec(), 0), (b"b".to_vec(), 1)]);
    }

    #[test]
    fn correlation_ids_are_read_back_by_request_index() {
        // Two "frames": the field slices must lie inside their own frame.
        let input = b"....key1:id-1....junk".to_vec();
        let mut record = CycleRecord::default();
        record.begin(0);
        record.push(0, 13);
        record.set_op(OpKind::Get, &input[0..13], &input[4..8], &input[9..13]);
        record.push(13, 8);
        // A field outside the frame is not recorded.
        record.set_op(OpKind::Get, &input[13..21], &input[4..8], &input[0..4]);
        record.push(21, 0);
        assert_eq!(record.correlation_id(0, &input), b"id-1");
        assert_eq!(record.correlation_id(1, &input), b"");
        assert_eq!(record.correlation_id(2, &input), b"", "an unrecognised request");
        assert_eq!(record.correlation_id(3, &input), b"", "past the cycle");
        assert_eq!(
            record.correlation_id(0, &input[..5]),
            b"",
            "input shorter than the frame"
        );
        assert_eq!(record.len(), 3);
    }
}
