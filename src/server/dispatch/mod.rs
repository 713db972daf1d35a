//! The dispatcher, heart of the request path for both protocols: request
//! frames → decode → auth → validate → route (run here, or batch for the
//! owner shard) → forward → assemble the answers in request order.
//!
//! - [`route`]: the owner decision;
//! - [`forward`]: the cross-shard transport (glommio's channel mesh);
//! - [`assemble`]: batch and every-shard operations split and merged;
//! - [`warm`]: lookups warmed before a cycle's requests run;
//! - [`observe`]: metrics and item events of each cycle.

pub mod assemble;
pub mod forward;
pub mod observe;
pub mod route;
pub mod strong;
pub mod warm;

use std::time::Duration;

use tracing::debug;

use assemble::{assemble_answers, Cycle, Job};
use forward::ForwardError;
use observe::{observe_cycle, ConnIdentity, CycleRecord};
use route::owner_of_key;
use warm::warm_lookups;

use super::ShardRuntime;
use crate::auth::Grant;
use crate::frame::{check_frame, FrameError, FrameStatus, FRAME_HEADER_BYTES};
use crate::ops::{OpKind, Reach};
use crate::protocol::binary::{decode_operation, OpView, ResponseEncoder};
use crate::shard::stats::Tally;
use crate::time::unix_now_us;
use crate::validate::{check_batch, check_consistency, check_key, check_pattern, RequestError};
use crate::Status;

/// Most requests handled per read cycle, and the output size after which a
/// cycle stops taking new requests: together they bound what a connection
/// buffers for a client that sends faster than it reads.
const MAX_OPS_PER_CYCLE: usize = 1024;
const OUT_SOFT_CAP: usize = 4 << 20;

/// A write that makes no progress for this long closes the connection.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one request's answer comes from, in request order.
#[derive(Clone, Copy)]
pub(super) enum Step {
    /// Already encoded in `out[start..end]`.
    Local { start: u32, end: u32 },
    /// The next answer in the owner's reply batch.
    Remote { owner: u16 },
    /// A batch or every-shard operation, merged from several shards.
    Job { index: u32 },
}

/// Turns request frames into response frames, in order: runs what this
/// shard owns, forwards the rest, merges. One per connection (binary or
/// REST), its buffers reused from one cycle to the next.
pub struct Dispatcher {
    out: Vec<u8>,
    assembled: Vec<u8>,
    steps: Vec<Step>,
    /// Request frames for each owner shard.
    forward: Vec<Vec<u8>>,
    jobs: Vec<Job>,
    needs_assembly: bool,
    close_after_write: bool,
    /// What the connection's credentials allow (checked per request).
    grant: Grant,
    /// Codec options the handshake set for every write.
    write_compression: bool,
    write_encryption: bool,
    /// The handshake's consistency, for requests that give none.
    consistency: &'static [u8],
    /// Metrics and events of the cycle (src/metrics).
    record: CycleRecord,
    identity: ConnIdentity,
    /// The output (or the input consumed) since the last write held the
    /// plaintext of an encrypted value: it is zeroed, not just cleared.
    secret: bool,
}

impl Drop for Dispatcher {
    /// A connection that ends right after an encrypted value's answer
    /// leaves no plaintext in freed memory.
    fn drop(&mut self) {
        self.forget_output();
    }
}

impl Dispatcher {
    pub fn new(shards: usize) -> Self {
        Dispatcher {
            out: Vec::with_capacity(4096),
            assembled: Vec::new(),
            steps: Vec::with_capacity(64),
            forward: (0..shards).map(|_| Vec::new()).collect(),
            jobs: Vec::new(),
            needs_assembly: false,
            close_after_write: false,
            grant: Grant::NONE,
            write_compression: false,
            write_encryption: false,
            consistency: b"",
            record: CycleRecord::default(),
            identity: ConnIdentity::anonymous(),
            secret: false,
        }
    }

    /// Whether the requests or answers since the last write carried the
    /// plaintext of an encrypted value: the connection then zeroes the
    /// input it consumed (issue 19).
    pub fn held_secret(&self) -> bool {
        self.secret
    }

    /// What the requests that follow may do (after a handshake, or per REST
    /// request). A new dispatcher allows only open operations.
    pub fn set_grant(&mut self, grant: Grant) {
        self.grant = grant;
    }

    /// The grant in force.
    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// Codec options applied to every write that follows, on top of each
    /// request's own `options`.
    pub fn set_write_options(&mut self, compression: bool, encryption: bool) {
        self.write_compression = compression;
        self.write_encryption = encryption;
    }

    /// The consistency of every request that gives none (the handshake's
    /// `options.consistency`).
    pub fn set_consistency(&mut self, consistency: &'static [u8]) {
        self.consistency = consistency;
    }

    /// Who the requests are from (metrics `service` label, events); by
    /// default `other`.
    pub fn set_identity(&mut self, identity: ConnIdentity) {
        self.identity = identity;
    }

    /// The response frames of the last [`Dispatcher::run`], in order.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the output (keeping its buffer; zeroed if it held a secret).
    pub fn clear_output(&mut self) {
        self.forget_output();
    }

    fn forget_output(&mut self) {
        if std::mem::take(&mut self.secret) {
            zeroize::Zeroize::zeroize(&mut self.out);
            zeroize::Zeroize::zeroize(&mut self.assembled);
            for frames in &mut self.forward {
                zeroize::Zeroize::zeroize(frames);
            }
        }
        self.out.clear();
    }

    /// A dispatcher whose output starts in `out` (the handshake's buffer,
    /// reused).
    pub fn with_output(shards: usize, mut out: Vec<u8>) -> Self {
        out.clear();
        let mut d = Dispatcher::new(shards);
        d.out = out;
        d
    }

    /// The output was written: forget it, and give back a buffer that a
    /// burst made large.
    pub fn written(&mut self) {
        self.forget_output();
        if self.out.capacity() > 2 * OUT_SOFT_CAP {
            self.out = Vec::with_capacity(4096);
        }
    }

    /// Whether the input had a framing error after which the stream must be
    /// closed (the error answer is the last frame of the output).
    pub fn must_close(&self) -> bool {
        self.close_after_write
    }

    /// Handles the whole frames at the start of `input` (within the cycle's
    /// bounds), appends their answers in order to the output, and returns
    /// the number of input bytes consumed.
    pub async fn run(&mut self, rt: &ShardRuntime, input: &[u8]) -> usize {
        let now_us = unix_now_us();
        self.record.begin(now_us);
        let out_start = self.out.len();
        let max_frame = rt.shard.limits().max_frame_bytes;
        let mut ops = 0usize;
        let mut consumed = 0usize;
        warm_lookups(rt, input);
        while ops < MAX_OPS_PER_CYCLE && self.out.len() < OUT_SOFT_CAP {
            let data = &input[consumed..];
            match check_frame(data, max_frame) {
                Ok(FrameStatus::Complete { len }) => {
                    let frame = &data[..FRAME_HEADER_BYTES + len];
                    self.record.push(consumed, frame.len());
                    self.route(rt, frame, now_us);
                    consumed += FRAME_HEADER_BYTES + len;
                    ops += 1;
                    if rt.shard.strong_pending() {
                        // A strong write's answer waits for its replica:
                        // the cycle ends with it.
                        break;
                    }
                }
                Ok(FrameStatus::Incomplete { .. }) => break,
                Err(e) => {
                    // The stream cannot be resynchronised: answer and close.
                    let start = self.out.len();
                    let message = match e {
                        FrameError::LooksLikeHttp => {
                            "an HTTP request was sent to the binary port".to_string()
                        }
                        e => e.to_string(),
                    };
                    ResponseEncoder::error(&mut self.out, Status::FrameTooLarge, &message, b"");
                    self.record.push(consumed, 0);
                    self.push_local(start);
                    rt.shard.tally(Tally::ProtocolError);
                    self.close_after_write = true;
                    consumed = input.len();
                    break;
                }
            }
        }
        rt.shard.tally(Tally::Requests(ops as u64));
        self.settle_strong(rt).await;
        let assembled = self.needs_assembly;
        if assembled {
            self.forward_and_assemble(rt, input, now_us).await;
        }
        // Assembly rebuilds `out` with this cycle's answers only.
        let answers = if assembled {
            &self.out[..]
        } else {
            &self.out[out_start..]
        };
        observe_cycle(&rt.shard, &self.identity, &self.record, input, answers);
        strong::end_cycle(&rt.shard);
        self.secret |= rt.shard.take_secret();
        self.steps.clear();
        self.jobs.clear();
        self.needs_assembly = false;
        consumed
    }

    /// When this cycle's last request was a strong write: hands the
    /// cycle's writes to the replicas and waits for the verdict; a write
    /// the replica did not confirm is answered CACHE_005 instead.
    async fn settle_strong(&mut self, rt: &ShardRuntime) {
        let Some(seq) = rt.shard.end_cycle() else { return };
        if rt.shard.replicated(seq).await {
            return;
        }
        match self.steps.last_mut() {
            Some(Step::Local { start, end }) => {
                strong::fail_answer(&mut self.out, *start as usize);
                *end = self.out.len() as u32;
            }
            Some(Step::Job { index }) => self.jobs[*index as usize].fail_strong_local(),
            _ => {}
        }
    }

    /// Answers a request that breaks a limit or a key rule.
    fn refuse(&mut self, error: RequestError, correlation_id: &[u8], start: usize) {
        ResponseEncoder::refuse(&mut self.out, error, correlation_id);
        self.push_local(start)
    }

    #[inline]
    fn push_local(&mut self, start: usize) {
        self.steps.push(Step::Local {
            start: start as u32,
            end: self.out.len() as u32,
        });
    }

    /// Decides where one request runs; runs it now if that is here.
    fn route(&mut self, rt: &ShardRuntime, frame: &[u8], now_us: u64) {
        let shard = &rt.shard;
        let start = self.out.len();
        let mut op = match decode_operation(&frame[FRAME_HEADER_BYTES..]) {
            Ok(op) => op,
            Err(e) => {
                shard.tally(Tally::ProtocolError);
                let message = format!("not a valid CacheOperation: {e}");
                ResponseEncoder::error(&mut self.out, Status::Malformed, &message, b"");
                return self.push_local(start);
            }
        };
        let kind = OpKind::parse(op.operation);
        if let Some(kind) = kind {
            self.record.set_op(kind, frame, op.key, op.correlation_id);
        }
        let Some(kind) = kind else {
            let message = format!("unknown operation {:?}", String::from_utf8_lossy(op.operation));
            ResponseEncoder::error(
                &mut self.out,
                Status::UnknownOperation,
                &message,
                op.correlation_id,
            );
            return self.push_local(start);
        };
        // ---- security: permission (and token expiry), one branch ----
        let need = crate::auth::required(kind);
        if !self.grant.allows(need, now_us) {
            let (status, message) = self.grant.refusal(need, now_us);
            ResponseEncoder::error(&mut self.out, status, message, op.correlation_id);
            return self.push_local(start);
        }
        let mut conn_options = self.write_compression | self.write_encryption;
        if conn_options {
            op.options.compression |= self.write_compression;
            op.options.encryption |= self.write_encryption;
        }
        if op.options.consistency.is_empty() && !self.consistency.is_empty() {
            op.options.consistency = self.consistency;
            conn_options = true;
        }
        // ---- end of security ----
        if let Err(e) = check_consistency(op.options.consistency) {
            return self.refuse(e, op.correlation_id, start);
        }
        match kind.reach() {
            Reach::SingleKey => {
                if let Err(e) = check_key(op.key) {
                    return self.refuse(e, op.correlation_id, start);
                }
                let (hash, owner) = owner_of_key(shard, op.key);
                if let Some(moved) = shard.moved(hash) {
                    ResponseEncoder::error(&mut self.out, Status::Moved, &moved, op.correlation_id);
                    return self.push_local(start);
                }
                if owner == shard.id() {
                    shard.execute_single(&op, kind, hash, now_us, &mut self.out);
                    self.push_local(start);
                } else {
                    if conn_options {
                        let (c, e) = (op.options.compression, op.options.encryption);
                        let consistency = op.options.consistency;
                        crate::codec::append_frame_with_options(
                            frame,
                            c,
                            e,
                            consistency,
                            &mut self.forward[owner],
                        );
                    } else {
                        self.forward[owner].extend_from_slice(frame);
                    }
                    self.steps.push(Step::Remote { owner: owner as u16 });
                    self.needs_assembly = true;
                    shard.tally(Tally::ForwardedOp);
                }
            }
            Reach::Server => {
                self.jobs.push(Job::reload(&op));
                self.steps.push(Step::Job {
                    index: (self.jobs.len() - 1) as u32,
                });
                self.needs_assembly = true;
            }
            Reach::MultiKey if shard.count() > 1 => self.route_multi(rt, &op, kind, now_us, start),
            Reach::EveryShard if kind == OpKind::Pattern && check_pattern(op.key).is_err() => {
                self.refuse(RequestError::InvalidPattern, op.correlation_id, start)
            }
            Reach::EveryShard => {
                for (owner, frames) in self.forward.iter_mut().enumerate() {
                    if owner != shard.id() {
                        frames.extend_from_slice(frame);
                    }
                }
                let mut local = Vec::new();
                shard.execute_local(&op, kind, now_us, &mut local);
                let cluster = match kind {
                    OpKind::Health => rt.server.control.cluster.get().map(|c| c.health()),
                    _ => None,
                };
                let max_frame = shard.limits().max_frame_bytes;
                self.jobs
                    .push(Job::every_shard(max_frame, kind, &op, local, cluster));
                self.steps.push(Step::Job {
                    index: (self.jobs.len() - 1) as u32,
                });
                self.needs_assembly = true;
            }
            Reach::MultiKey => {
                shard.execute_local(&op, kind, now_us, &mut self.out);
                self.push_local(start);
            }
        }
    }

    /// Splits a batch operation by owner: one sub-operation per owner, the
    /// local one run now, the others forwarded; merged in key order later.
    fn route_multi(&mut self, rt: &ShardRuntime, op: &OpView<'_>, kind: OpKind, now_us: u64, start: usize) {
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

    /// Sends every owner its batch, waits for all, and rebuilds `out` with
    /// every answer in request order.
    async fn forward_and_assemble(&mut self, rt: &ShardRuntime, input: &[u8], now_us: u64) {
        for job in &mut self.jobs {
            job.run_server_wide(rt).await;
        }
        let router = &rt.router;
        let mut pending = Vec::with_capacity(rt.shard.count());
        for owner in 0..rt.shard.count() {
            if !self.forward[owner].is_empty() {
                let frames = std::mem::replace(&mut self.forward[owner], router.take_buffer());
                pending.push((owner, router.start_forward(owner, frames, now_us).await));
            }
        }
        let mut replies: Vec<Option<Result<assemble::ReplyCursor, ForwardError>>> =
            (0..rt.shard.count()).map(|_| None).collect();
        for (owner, started) in pending {
            let result = match started {
                Ok(p) => p.wait().await.map(assemble::ReplyCursor::new),
                Err(e) => Err(e),
            };
            replies[owner] = Some(result);
        }

        self.assembled.clear();
        assemble_answers(
            &Cycle {
                steps: &self.steps,
                out: &self.out,
                record: &self.record,
                input,
            },
            &mut self.jobs,
            rt.shard.id(),
            &mut replies,
            &mut self.assembled,
        );
        std::mem::swap(&mut self.out, &mut self.assembled);
        for reply in replies.into_iter().flatten().flatten() {
            router.give_buffer(reply.into_buffer());
        }
        if self.assembled.capacity() > 2 * OUT_SOFT_CAP {
            self.assembled = Vec::new();
        }
        debug!(shard = rt.shard.id(), "assembled forwarded answers");
    }
}
