//! Splitting batch and every-shard operations across shards, and merging
//! the shards' answers into the one response the client gets. This is the
//! cold path (batch and admin operations): clarity over cycles.

use prost::Message;
use serde_json::{json, Map, Value};

use super::forward::ForwardError;
use super::observe::CycleRecord;
use super::Step;
use crate::frame::{FrameSlot, FRAME_HEADER_BYTES};
use crate::key::{is_valid_key, key_hash, owner_of};
use crate::ops::OpKind;
use crate::proto;
use crate::protocol::binary::{decode_entry, OpView, ResponseEncoder};
use crate::protocol::wire::{put_bytes_field, put_repeated_bytes, put_varint_field};
use crate::shard::execute::meta_of;
use crate::validate::pattern_limit;
use crate::Status;

/// Reads response frames one after another out of an owner's reply batch.
pub struct ReplyCursor {
    buf: Vec<u8>,
    pos: usize,
}

impl ReplyCursor {
    pub fn new(buf: Vec<u8>) -> Self {
        ReplyCursor { buf, pos: 0 }
    }

    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Whether a whole answer is left to read.
    pub fn has_next(&self) -> bool {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        crate::frame::declared_len(rest).is_some_and(|len| rest.len() >= FRAME_HEADER_BYTES + len)
    }

    fn next_frame(&mut self) -> Option<&[u8]> {
        let len = crate::frame::declared_len(self.buf.get(self.pos..)?)?;
        let end = self.pos + FRAME_HEADER_BYTES + len;
        let frame = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(frame)
    }
}

/// The next whole response frame from an owner, or why there is none.
pub fn next_reply(reply: &mut Option<Result<ReplyCursor, ForwardError>>) -> Result<&[u8], ForwardError> {
    match reply {
        Some(Ok(cursor)) => cursor.next_frame().ok_or(ForwardError::Unavailable),
        Some(Err(e)) => Err(*e),
        None => Err(ForwardError::Unavailable),
    }
}

/// The owner shard of each item of a batch operation; invalid keys stay on
/// this shard, which answers CACHE_004 for them.
pub fn owners_of_items(op: &OpView<'_>, kind: OpKind, seed: u64, shards: usize, here: usize) -> Vec<u16> {
    let owner = |key: &[u8]| {
        if is_valid_key(key) {
            owner_of(key_hash(key, seed), shards) as u16
        } else {
            here as u16
        }
    };
    if kind == OpKind::SetMany {
        op.raw_entries()
            .map(|e| owner(decode_entry(e).map(|e| e.key).unwrap_or_default()))
            .collect()
    } else {
        op.keys().map(owner).collect()
    }
}

/// Appends, as one frame, the part of batch operation `op` that `owner`
/// holds: the same operation with only that owner's keys or entries.
pub fn encode_sub_operation(op: &OpView<'_>, kind: OpKind, owners: &[u16], owner: usize, out: &mut Vec<u8>) {
    let slot = FrameSlot::open(out);
    put_bytes_field(out, 1, kind.name().as_bytes());
    put_varint_field(out, 4, u64::from(op.ttl));
    crate::codec::put_write_options(
        out,
        op.options.compression,
        op.options.encryption,
        op.options.consistency,
    );
    let mine = owners.iter().map(|&o| o as usize == owner);
    if kind == OpKind::SetMany {
        for (entry, mine) in op.raw_entries().zip(mine) {
            if mine {
                put_repeated_bytes(out, 7, entry);
            }
        }
    } else {
        for (key, mine) in op.keys().zip(mine) {
            if mine {
                put_repeated_bytes(out, 6, key);
            }
        }
    }
    slot.close(out);
}

/// A request answered by several shards, or by the server as a whole.
pub enum Job {
    /// `reload`: its report once run.
    Reload {
        correlation_id: Vec<u8>,
        report: Option<serde_json::Value>,
    },
    MultiKey {
        max_frame: usize,
        correlation_id: Vec<u8>,
        keys: Vec<Vec<u8>>,
        owners: Vec<u16>,
        local_reply: Option<Vec<u8>>,
    },
    EveryShard {
        max_frame: usize,
        kind: OpKind,
        correlation_id: Vec<u8>,
        limit: usize,
        local_reply: Vec<u8>,
        /// `health`: the cluster's state as this node sees it.
        cluster: Option<Value>,
    },
}

impl Job {
    pub fn multi_key(
        max_frame: usize,
        kind: OpKind,
        op: &OpView<'_>,
        owners: Vec<u16>,
        local_reply: Option<Vec<u8>>,
    ) -> Job {
        let keys = if kind == OpKind::SetMany {
            op.raw_entries()
                .map(|e| decode_entry(e).map(|e| e.key.to_vec()).unwrap_or_default())
                .collect()
        } else {
            op.keys().map(<[u8]>::to_vec).collect()
        };
        Job::MultiKey {
            max_frame,
            correlation_id: op.correlation_id.to_vec(),
            keys,
            owners,
            local_reply,
        }
    }

    pub fn reload(op: &OpView<'_>) -> Job {
        Job::Reload {
            correlation_id: op.correlation_id.to_vec(),
            report: None,
        }
    }

    /// This shard's part of a batch held a strong write its replica did
    /// not confirm: its answers say CACHE_005.
    pub fn fail_strong_local(&mut self) {
        if let Job::MultiKey {
            local_reply: Some(reply),
            ..
        } = self
        {
            super::strong::fail_answer(reply, 0);
        }
    }

    /// Whether merging this job takes an answer from `owner` (a shard
    /// other than `here`).
    fn needs(&self, owner: usize, here: usize) -> bool {
        match self {
            Job::Reload { .. } => false,
            Job::MultiKey { owners, .. } => owner != here && owners.iter().any(|&o| o as usize == owner),
            Job::EveryShard { .. } => owner != here,
        }
    }

    /// Runs the server-wide part of a job (a reload), before merging.
    pub async fn run_server_wide(&mut self, rt: &super::ShardRuntime) {
        if let Job::Reload { report, .. } = self {
            *report = Some(match rt.server.control.reloader.get() {
                Some(reloader) => serde_json::to_value(reloader.reload().await).unwrap_or_default(),
                None => json!({"errors": ["this server was started without a configuration to reload"]}),
            });
        }
    }

    pub fn every_shard(
        max_frame: usize,
        kind: OpKind,
        op: &OpView<'_>,
        local_reply: Vec<u8>,
        cluster: Option<Value>,
    ) -> Job {
        Job::EveryShard {
            max_frame,
            kind,
            correlation_id: op.correlation_id.to_vec(),
            limit: pattern_limit(op.limit),
            local_reply,
            cluster,
        }
    }

    /// Takes this job's answers from the shards' replies and appends the
    /// merged response frame to `out`.
    pub fn merge(
        &self,
        here: usize,
        replies: &mut [Option<Result<ReplyCursor, ForwardError>>],
        out: &mut Vec<u8>,
    ) {
        match self {
            Job::Reload {
                correlation_id,
                report,
            } => {
                let body = report.as_ref().map(|r| r.to_string()).unwrap_or_default();
                ResponseEncoder::simple(out, Status::Ok, body.as_bytes(), None, correlation_id);
            }
            Job::MultiKey {
                max_frame,
                correlation_id,
                keys,
                owners,
                local_reply,
            } => {
                let mut per_owner: Vec<Result<std::vec::IntoIter<proto::ItemResult>, ForwardError>> =
                    (0..replies.len()).map(|_| Ok(Vec::new().into_iter())).collect();
                for (owner, slot) in per_owner.iter_mut().enumerate() {
                    if !owners.iter().any(|&o| o as usize == owner) {
                        continue;
                    }
                    let frame = if owner == here {
                        local_reply.as_deref().ok_or(ForwardError::Unavailable)
                    } else {
                        next_reply(&mut replies[owner])
                    };
                    *slot = frame.map(|f| decode_response(f).items.into_iter());
                }
                let frame = ResponseEncoder::begin(out);
                for (key, &owner) in keys.iter().zip(owners) {
                    match &mut per_owner[owner as usize] {
                        Ok(items) => match items.next() {
                            Some(item)
                                if ResponseEncoder::written(out, &frame)
                                    + item.data.len()
                                    + key.len()
                                    + 64
                                    > *max_frame =>
                            {
                                let full = crate::shard::execute::RESPONSE_FULL;
                                ResponseEncoder::put_item(out, key, Status::BatchTooLarge, full, None);
                            }
                            Some(item) => {
                                let status = Status::from_u32(item.status).unwrap_or(Status::Unavailable);
                                let meta = meta_of(item.metadata.as_ref());
                                ResponseEncoder::put_item(out, &item.key, status, &item.data, meta.as_ref());
                            }
                            None => ResponseEncoder::put_item(
                                out,
                                key,
                                Status::Unavailable,
                                b"missing answer",
                                None,
                            ),
                        },
                        Err(e) => ResponseEncoder::put_item(
                            out,
                            key,
                            e.status(),
                            b"owner shard did not answer",
                            None,
                        ),
                    }
                }
                ResponseEncoder::put_summary(out, Status::Ok, correlation_id, false);
                ResponseEncoder::finish(out, frame);
            }
            Job::EveryShard {
                max_frame,
                kind,
                correlation_id,
                limit,
                local_reply,
                cluster,
            } => {
                let mut answers: Vec<(usize, Result<proto::CacheResponse, ForwardError>)> = Vec::new();
                for (shard, reply) in replies.iter_mut().enumerate() {
                    let answer = if shard == here {
                        Ok(decode_response(local_reply))
                    } else {
                        next_reply(reply).map(decode_response)
                    };
                    answers.push((shard, answer));
                }
                let cluster = cluster.as_ref();
                merge_every_shard(*kind, correlation_id, *limit, *max_frame, &answers, cluster, out);
            }
        }
    }
}

fn decode_response(frame: &[u8]) -> proto::CacheResponse {
    proto::CacheResponse::decode(frame.get(FRAME_HEADER_BYTES..).unwrap_or_default()).unwrap_or_else(|_| {
        proto::CacheResponse {
            status: Status::Unavailable.code_number(),
            data: "undecodable shard answer".into(),
            ..Default::default()
        }
    })
}

fn json_of(resp: &proto::CacheResponse) -> Value {
    serde_json::from_slice(&resp.data).unwrap_or(Value::Null)
}

fn merge_every_shard(
    kind: OpKind,
    corr: &[u8],
    limit: usize,
    max_frame: usize,
    answers: &[(usize, Result<proto::CacheResponse, ForwardError>)],
    cluster: Option<&Value>,
    out: &mut Vec<u8>,
) {
    let failed: Vec<(usize, ForwardError)> = answers
        .iter()
        .filter_map(|(s, a)| a.as_ref().err().map(|e| (*s, *e)))
        .collect();
    let ok = || answers.iter().filter_map(|(_, a)| a.as_ref().ok());
    match kind {
        OpKind::Pattern => {
            if let Some((shard, e)) = failed.first() {
                let msg = format!("shard {shard} did not answer");
                return ResponseEncoder::error(out, e.status(), &msg, corr);
            }
            if let Some(refused) = ok().find(|r| r.status != 0) {
                let status = Status::from_u32(refused.status).unwrap_or(Status::Unavailable);
                return ResponseEncoder::simple(out, status, &refused.data, None, corr);
            }
            let frame = ResponseEncoder::begin(out);
            let mut n = 0;
            let mut truncated = false;
            for resp in ok() {
                truncated |= resp.truncated;
                for item in &resp.items {
                    let size = ResponseEncoder::written(out, &frame) + item.key.len() + item.data.len() + 64;
                    if n == limit || size > max_frame {
                        truncated = true;
                        break;
                    }
                    let meta = meta_of(item.metadata.as_ref());
                    ResponseEncoder::put_item(out, &item.key, Status::Ok, &item.data, meta.as_ref());
                    n += 1;
                }
            }
            ResponseEncoder::put_summary(out, Status::Ok, corr, truncated);
            ResponseEncoder::finish(out, frame);
        }
        OpKind::Flush => {
            if let Some((shard, e)) = failed.first() {
                let msg = format!("shard {shard} did not answer; the other shards were flushed");
                return ResponseEncoder::error(out, e.status(), &msg, corr);
            }
            let flushed: u64 = ok().map(|r| json_of(r)["flushed"].as_u64().unwrap_or(0)).sum();
            let body = json!({ "flushed": flushed }).to_string();
            ResponseEncoder::simple(out, Status::Ok, body.as_bytes(), None, corr);
        }
        OpKind::Stats => {
            let mut shards = Vec::new();
            let mut total = Map::new();
            for (shard, answer) in answers {
                match answer {
                    Ok(resp) => {
                        let v = json_of(resp);
                        if let Value::Object(fields) = &v {
                            for (name, value) in fields {
                                if name == "shard" {
                                    continue;
                                }
                                if let Some(n) = value.as_u64() {
                                    let sum = total.get(name).and_then(Value::as_u64).unwrap_or(0) + n;
                                    total.insert(name.clone(), json!(sum));
                                }
                            }
                        }
                        shards.push(v);
                    }
                    Err(e) => shards.push(json!({ "shard": shard, "error": Status::from(*e).code() })),
                }
            }
            let body = json!({
                "server_version": crate::SERVER_VERSION,
                "shard_count": answers.len(),
                "total": total,
                "shards": shards,
            })
            .to_string();
            ResponseEncoder::simple(out, Status::Ok, body.as_bytes(), None, corr);
        }
        _ => {
            let healthy = ok().filter(|r| r.status == 0).count();
            let status = if healthy == answers.len() {
                "ok"
            } else {
                "degraded"
            };
            let mut body = json!({
                "status": status,
                "shards": answers.len(),
                "shards_ok": healthy,
                "server_version": crate::SERVER_VERSION,
            });
            if let Some(cluster) = cluster {
                body["cluster"] = cluster.clone();
            }
            let body = body.to_string();
            ResponseEncoder::simple(out, Status::Ok, body.as_bytes(), None, corr);
        }
    }
}

impl From<ForwardError> for Status {
    fn from(e: ForwardError) -> Status {
        e.status()
    }
}

/// One read cycle as routed: `steps[i]` says where the answer to the
/// request `record` holds at index `i` comes from.
pub(super) struct Cycle<'a> {
    pub steps: &'a [Step],
    /// Answers encoded here, which `Step::Local` points into.
    pub out: &'a [u8],
    pub record: &'a CycleRecord,
    /// What the requests were read from.
    pub input: &'a [u8],
}

/// Writes the cycle's answers to `assembled` in request order, from step
/// `from` on: local ones from `out`, forwarded ones from their owners'
/// replies, merged ones from their jobs. A forwarded request whose owner did
/// not answer gets CACHE_005 or CACHE_011 with its own correlation id.
///
/// `waiting[owner]`: that owner stopped at its answer budget with requests
/// still to run (docs/memory.md): a step that needs an answer of it not yet
/// here ends this round. Returns the first step not assembled
/// (`steps.len()` when the cycle is whole).
pub(super) fn assemble_answers(
    cycle: &Cycle<'_>,
    from: usize,
    jobs: &mut [Job],
    shard_id: usize,
    replies: &mut [Option<Result<ReplyCursor, ForwardError>>],
    waiting: &[bool],
    assembled: &mut Vec<u8>,
) -> usize {
    debug_assert_eq!(cycle.steps.len(), cycle.record.len(), "one step per request");
    let here_yet = |replies: &[Option<Result<ReplyCursor, ForwardError>>], owner: usize| {
        !waiting[owner] || matches!(&replies[owner], Some(Ok(cursor)) if cursor.has_next())
    };
    for (index, step) in cycle.steps.iter().enumerate().skip(from) {
        match *step {
            Step::Local { start, end } => {
                assembled.extend_from_slice(&cycle.out[start as usize..end as usize])
            }
            Step::Remote { owner } => {
                if !here_yet(replies, owner as usize) {
                    return index;
                }
                match next_reply(&mut replies[owner as usize]) {
                    Ok(frame) => assembled.extend_from_slice(frame),
                    Err(e) => ResponseEncoder::error(
                        assembled,
                        e.status(),
                        "owner shard did not answer",
                        cycle.record.correlation_id(index, cycle.input),
                    ),
                }
            }
            Step::Job { index: job } => {
                let job = &jobs[job as usize];
                if (0..replies.len()).any(|o| job.needs(o, shard_id) && !here_yet(replies, o)) {
                    return index;
                }
                job.merge(shard_id, replies, assembled)
            }
        }
    }
    cycle.steps.len()
}

#[cfg(test)]
#[path = "assemble_tests.rs"]
mod cycle_tests;
