//! The owner decision: which shard of this node runs a key's requests.
//! Every request's key is hashed once, here; the hash then serves both
//! this choice and the owner's index lookup. A batch operation is split
//! by owner ([`Dispatcher::route_multi`]).

use super::assemble::{self, Job};
use super::{Dispatcher, ShardRuntime, Step};
use crate::frame::FRAME_HEADER_BYTES;
use crate::key::{key_hash, owner_of};
use crate::ops::OpKind;
use crate::protocol::binary::{decode_operation, OpView, ResponseEncoder};
use crate::shard::stats::Tally;
use crate::shard::Shard;
use crate::validate::check_batch;
use crate::Status;

/// The key's hash and the shard that owns it.
#[inline]
pub fn owner_of_key(shard: &Shard, key: &[u8]) -> (u64, usize) {
    let hash = key_hash(key, shard.seed());
    (hash, owner_of(hash, shard.count()))
}

impl Dispatcher {
    /// Splits a batch operation by owner: one sub-operation per owner, the
    /// local one run now, the others forwarded; merged in key order later.
    pub(super) fn route_multi(
        &mut self,
        rt: &ShardRuntime,
        op: &OpView<'_>,
        kind: OpKind,
        now_us: u64,
        start: usize,
    ) {
        let shard = &rt.shard;
        let count = if kind == OpKind::SetMany {
            op.entry_count
        } else {
            op.key_count
        };
        if let Err(e) = check_batch(count) {
            return self.refuse(e, op.correlation_id, start);
        }
        let owners = assemble::owners_of_items(op, kind, shard.seed(), shard.count(), shard.id());
        if owners.iter().all(|&o| o as usize == shard.id()) {
            shard.execute_local(op, kind, now_us, &mut self.out);
            return self.push_local(start);
        }
        let mut local_reply = None;
        for owner in 0..shard.count() {
            if !owners.iter().any(|&o| o as usize == owner) {
                continue;
            }
            if owner == shard.id() {
                let mut sub = Vec::new();
                assemble::encode_sub_operation(op, kind, &owners, owner, &mut sub);
                let mut reply = Vec::new();
                match decode_operation(&sub[FRAME_HEADER_BYTES..]) {
                    Ok(sub_op) => shard.execute_local(&sub_op, kind, now_us, &mut reply),
                    Err(_) => ResponseEncoder::error(&mut reply, Status::Malformed, "malformed request", b""),
                }
                local_reply = Some(reply);
            } else {
                assemble::encode_sub_operation(op, kind, &owners, owner, &mut self.forward[owner]);
            }
        }
        self.jobs.push(Job::multi_key(
            shard.limits().max_frame_bytes,
            kind,
            op,
            owners,
            local_reply,
        ));
        self.steps.push(Step::Job {
            index: (self.jobs.len() - 1) as u32,
        });
        self.needs_assembly = true;
        shard.tally(Tally::ForwardedOp);
    }
}
