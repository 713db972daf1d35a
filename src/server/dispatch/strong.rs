//! Strong writes (docs/cluster.md, "Consistency"): the answer of a write
//! whose consistency is `strong` leaves only once its slot's replica
//! applied it. The dispatcher (or the owner shard serving a forwarded
//! batch) ends its cycle after such a write, hands the cycle's records to
//! the cluster agent and waits for the verdict; a write the replica did
//! not confirm within the timeout, or refused (its map moved on), is
//! answered CACHE_005.

use prost::Message;

use super::{Dispatcher, ShardRuntime, Step};
use crate::frame::{encode_frame, FRAME_HEADER_BYTES};
use crate::proto;
use crate::shard::Shard;
use crate::Status;

/// The message of a strong write its replica did not confirm.
pub const STRONG_FAILED: &str = "strong write not confirmed by the replica in time (or refused: the cluster map moved on); it may or may not be applied: retry";

/// Rewrites the one response frame at `out[start..]` so that what it
/// answered OK now answers CACHE_005 (a batch: each OK item; otherwise
/// the answer), keeping its correlation id and other items.
pub fn fail_answer(out: &mut Vec<u8>, start: usize) {
    let Some(body) = out.get(start + FRAME_HEADER_BYTES..) else {
        return;
    };
    let Ok(mut response) = proto::CacheResponse::decode(body) else {
        return;
    };
    if response.items.is_empty() {
        response.status = Status::Timeout.code_number();
        response.data = STRONG_FAILED.as_bytes().to_vec().into();
        response.metadata = None;
    } else {
        for item in &mut response.items {
            if item.status == Status::Ok.code_number() || item.status == Status::NotFound.code_number() {
                item.status = Status::Timeout.code_number();
                item.data = STRONG_FAILED.as_bytes().to_vec().into();
                item.metadata = None;
            }
        }
    }
    out.truncate(start);
    encode_frame(&response, out);
}

impl Dispatcher {
    /// The consistency of every request that gives none (the handshake's
    /// `options.consistency`).
    pub fn set_consistency(&mut self, consistency: &'static [u8]) {
        self.consistency = consistency;
    }

    /// When this cycle's last request was a strong write: hands the
    /// cycle's writes to the replicas and waits for the verdict; a write
    /// the replica did not confirm is answered CACHE_005 instead.
    pub(super) async fn settle_strong(&mut self, rt: &ShardRuntime) {
        let Some(seq) = rt.shard.end_cycle() else { return };
        if rt.shard.replicated(seq).await {
            return;
        }
        match self.steps.last_mut() {
            Some(Step::Local { start, end }) => {
                fail_answer(&mut self.out, *start as usize);
                *end = self.out.len() as u32;
            }
            Some(Step::Job { index }) => self.jobs[*index as usize].fail_strong_local(),
            _ => {}
        }
    }
}

/// The end of a cycle without a strong write pending (those were settled
/// before): hands the cycle's writes to the replicas.
pub fn end_cycle(shard: &Shard) {
    let strong = shard.end_cycle();
    debug_assert!(
        strong.is_none(),
        "a strong write's handover was settled in its cycle"
    );
    if let Some(seq) = strong {
        // Never reached (see above); were it, the waiter is dropped.
        shard.forget_strong(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_single_answer_says_cache_005_and_keeps_its_correlation() {
        let mut out = b"prefix".to_vec();
        let ok = proto::CacheResponse {
            status: 0,
            correlation_id: "c-1".into(),
            ..Default::default()
        };
        encode_frame(&ok, &mut out);
        fail_answer(&mut out, 6);
        assert_eq!(&out[..6], b"prefix");
        let back = proto::CacheResponse::decode(&out[6 + FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!(back.status, Status::Timeout.code_number());
        assert_eq!(back.correlation_id, "c-1");
        assert_eq!(crate::frame::declared_len(&out[6..]).unwrap(), out.len() - 6 - 4);
    }

    #[test]
    fn a_failed_batch_fails_only_its_confirmed_items() {
        let item = |key: &[u8], status: Status| proto::ItemResult {
            key: key.to_vec().into(),
            status: status.code_number(),
            ..Default::default()
        };
        let batch = proto::CacheResponse {
            items: vec![item(b"a", Status::Ok), item(b"b", Status::InvalidKey)],
            ..Default::default()
        };
        let mut out = Vec::new();
        encode_frame(&batch, &mut out);
        fail_answer(&mut out, 0);
        let back = proto::CacheResponse::decode(&out[FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!(back.items[0].status, Status::Timeout.code_number());
        assert_eq!(back.items[1].status, Status::InvalidKey.code_number());
    }
}
