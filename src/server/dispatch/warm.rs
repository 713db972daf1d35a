//! Warming lookups: the memory loads of a read cycle's local single-key
//! lookups started together, before the requests run one by one.

use std::rc::Rc;

use super::route::owner_of_key;
use crate::frame::{check_frame, next_frame, FrameStatus};
use crate::ops::{OpKind, Reach};
use crate::protocol::binary::decode_operation;
use crate::server::ShardRuntime;
use crate::shard::store::{head_span, READ_SPAN};
use crate::shard::Shard;

/// Requests of a read cycle whose lookups are warmed together.
const WARM_AHEAD: usize = 32;

/// Starts the memory loads of the local single-key lookups among the first
/// frames of `input`, in two passes (index headers, then the records the
/// index points at), so that their cache misses overlap before the frames
/// run one by one. Only worth it for two frames or more.
pub(super) fn warm_lookups(rt: &ShardRuntime, input: &[u8]) {
    let shard = &rt.shard;
    let mut lookups = [(0u64, 0u32); WARM_AHEAD];
    let mut count = 0;
    let whole = local_lookups(shard, input, WARM_AHEAD, false, |hash, span| {
        lookups[count] = (hash, span);
        count += 1;
    });
    if !whole || count < 2 {
        return;
    }
    for &(hash, _) in &lookups[..count] {
        shard.prefetch_index(hash);
    }
    for &(hash, span) in &lookups[..count] {
        shard.prefetch_records(hash, span as usize);
    }
}

/// Bytes of each record a request of `kind` reads: a `get` copies the
/// value, a `set` or a `delete` reads only the key and the header of the
/// record it replaces.
fn span_of(kind: OpKind, key_len: usize) -> u32 {
    match kind {
        OpKind::Get => READ_SPAN as u32,
        _ => head_span(key_len) as u32,
    }
}

/// Calls `found` with the key hash of each local single-key request among
/// the first `max` whole frames of `input`, and the bytes of a record it
/// reads ([`span_of`]). Returns false, having looked at nothing, when
/// `input` holds one frame and `lone` is false.
fn local_lookups(
    shard: &Shard,
    input: &[u8],
    max: usize,
    lone: bool,
    mut found: impl FnMut(u64, u32),
) -> bool {
    let mut count = 0;
    let mut at = 0;
    while count < max {
        let Ok(FrameStatus::Complete { .. }) = check_frame(&input[at..], shard.limits().max_frame_bytes)
        else {
            break;
        };
        let Some(body) = next_frame(input, &mut at) else {
            break;
        };
        if at == input.len() && count == 0 && !lone {
            return false;
        }
        let Ok(op) = decode_operation(body) else { continue };
        let Some(kind) = OpKind::parse(op.operation).filter(|k| k.reach() == Reach::SingleKey) else {
            continue;
        };
        let (hash, owner) = owner_of_key(shard, op.key);
        if owner == shard.id() {
            found(hash, span_of(kind, op.key.len()));
            count += 1;
        }
    }
    true
}

/// Warms lookups across the connections one turn of the shard's ring
/// brought data for (the driver calls it; see [`crate::server::uring::Warm`]).
pub struct ShardWarm(pub Rc<Shard>);

impl crate::server::uring::Warm for ShardWarm {
    fn index(&self, input: &[u8], hashes: &mut Vec<(u64, u32)>) {
        // Only lone requests: a connection that sent several warms them
        // itself, just before it runs them (`warm_lookups`).
        let max_frame = self.0.limits().max_frame_bytes;
        match check_frame(input, max_frame) {
            Ok(FrameStatus::Complete { len }) if crate::frame::FRAME_HEADER_BYTES + len == input.len() => {}
            _ => return,
        }
        let room = hashes.capacity().saturating_sub(hashes.len());
        local_lookups(&self.0, input, room.min(WARM_AHEAD), true, |hash, span| {
            self.0.prefetch_index(hash);
            hashes.push((hash, span));
        });
    }

    fn records(&self, hash: u64, span: u32) {
        self.0.prefetch_records(hash, span as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use crate::key::{key_hash, owner_of};
    use crate::proto::CacheOperation;
    use crate::server::uring::Warm;

    fn shard(id: usize, count: usize) -> Rc<Shard> {
        Rc::new(crate::shard::test_shard(id, count))
    }

    fn frame(operation: &str, key: &str) -> Vec<u8> {
        let op = CacheOperation {
            operation: operation.into(),
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        encode_frame(&op, &mut out);
        out
    }

    fn warmed(warm: &ShardWarm, input: &[u8]) -> Vec<(u64, u32)> {
        let mut hashes = Vec::with_capacity(64);
        warm.index(input, &mut hashes);
        hashes
    }

    #[test]
    fn a_lone_local_lookup_is_warmed_by_its_key_hash_and_what_it_reads() {
        let s = shard(0, 1);
        let warm = ShardWarm(s.clone());
        assert_eq!(
            warmed(&warm, &frame("get", "user:1")),
            vec![(key_hash(b"user:1", s.seed()), READ_SPAN as u32)],
            "a read copies the value: three lines"
        );
        // A write reads the frame, the key and the header's numbers of the
        // record it replaces: 2 + 6 + 8 bytes.
        assert_eq!(
            warmed(&warm, &frame("set", "user:2")),
            vec![(key_hash(b"user:2", s.seed()), 16)]
        );
        assert_eq!(
            warmed(&warm, &frame("delete", "user:33")),
            vec![(key_hash(b"user:33", s.seed()), 17)]
        );
    }

    #[test]
    fn only_whole_lone_single_key_local_requests_are_warmed() {
        let s = shard(0, 2);
        let warm = ShardWarm(s.clone());
        let key = |owner: usize| {
            (0..)
                .map(|i| format!("k{i}"))
                .find(|k| owner_of(key_hash(k.as_bytes(), s.seed()), 2) == owner)
                .unwrap()
        };
        let (mine, theirs) = (key(0), key(1));
        assert_eq!(warmed(&warm, &frame("get", &mine)).len(), 1);
        assert!(
            warmed(&warm, &frame("get", &theirs)).is_empty(),
            "another shard's key"
        );
        assert!(
            warmed(&warm, &frame("flush", "")).is_empty(),
            "not a single-key operation"
        );
        let two = [frame("get", &mine), frame("get", &mine)].concat();
        assert!(
            warmed(&warm, &two).is_empty(),
            "several frames: the connection warms them"
        );
        let whole = frame("get", &mine);
        assert!(
            warmed(&warm, &whole[..whole.len() - 1]).is_empty(),
            "a partial frame"
        );
        assert!(warmed(&warm, b"GET / HTTP/1.1\r\n\r\n").is_empty(), "not a frame");
    }
}
