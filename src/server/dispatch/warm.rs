//! Warming lookups: the memory loads of a read cycle's local single-key
//! lookups started together, before the requests run one by one.

use std::rc::Rc;

use super::route::owner_of_key;
use crate::frame::{check_frame, next_frame, FrameStatus};
use crate::ops::{OpKind, Reach};
use crate::protocol::binary::decode_operation;
use crate::server::ShardRuntime;
use crate::shard::Shard;

/// Requests of a read cycle whose lookups are warmed together.
const WARM_AHEAD: usize = 32;

/// Starts the memory loads of the local single-key lookups among the first
/// frames of `input`, in two passes (index headers, then the records the
/// index points at), so that their cache misses overlap before the frames
/// run one by one. Only worth it for two frames or more.
pub(super) fn warm_lookups(rt: &ShardRuntime, input: &[u8]) {
    let shard = &rt.shard;
    let mut hashes = [0u64; WARM_AHEAD];
    let mut count = 0;
    let whole = local_lookups(shard, input, WARM_AHEAD, false, |hash| {
        hashes[count] = hash;
        count += 1;
    });
    if !whole || count < 2 {
        return;
    }
    for &hash in &hashes[..count] {
        shard.prefetch_index(hash);
    }
    for &hash in &hashes[..count] {
        shard.prefetch_records(hash);
    }
}

/// Calls `found` with the key hash of each local single-key request among
/// the first `max` whole frames of `input`. Returns false, having looked at
/// nothing, when `input` holds one frame and `lone` is false.
fn local_lookups(shard: &Shard, input: &[u8], max: usize, lone: bool, mut found: impl FnMut(u64)) -> bool {
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
        if !OpKind::parse(op.operation).is_some_and(|k| k.reach() == Reach::SingleKey) {
            continue;
        }
        let (hash, owner) = owner_of_key(shard, op.key);
        if owner == shard.id() {
            found(hash);
            count += 1;
        }
    }
    true
}

/// Warms lookups across the connections one turn of the shard's ring
/// brought data for (the driver calls it; see [`crate::server::uring::Warm`]).
pub struct ShardWarm(pub Rc<Shard>);

impl crate::server::uring::Warm for ShardWarm {
    fn index(&self, input: &[u8], hashes: &mut Vec<u64>) {
        // Only lone requests: a connection that sent several warms them
        // itself, just before it runs them (`warm_lookups`).
        let max_frame = self.0.limits().max_frame_bytes;
        match check_frame(input, max_frame) {
            Ok(FrameStatus::Complete { len }) if crate::frame::FRAME_HEADER_BYTES + len == input.len() => {}
            _ => return,
        }
        let room = hashes.capacity().saturating_sub(hashes.len());
        local_lookups(&self.0, input, room.min(WARM_AHEAD), true, |hash| {
            self.0.prefetch_index(hash);
            hashes.push(hash);
        });
    }

    fn records(&self, hash: u64) {
        self.0.prefetch_records(hash);
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

    fn warmed(warm: &ShardWarm, input: &[u8]) -> Vec<u64> {
        let mut hashes = Vec::with_capacity(64);
        warm.index(input, &mut hashes);
        hashes
    }

    #[test]
    fn a_lone_local_lookup_is_warmed_by_its_key_hash() {
        let s = shard(0, 1);
        let warm = ShardWarm(s.clone());
        assert_eq!(
            warmed(&warm, &frame("get", "user:1")),
            vec![key_hash(b"user:1", s.seed())]
        );
        assert_eq!(
            warmed(&warm, &frame("set", "user:2")),
            vec![key_hash(b"user:2", s.seed())]
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
