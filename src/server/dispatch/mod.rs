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

use tracing::debug;

use assemble::{assemble_answers, Cycle, Job};
use forward::ForwardError;
use observe::{observe_cycle, ConnIdentity, CycleRecord};

/// `--max-output-bytes` by default.
pub const DEFAULT_MAX_OUTPUT: usize = 4 << 20;
use route::owner_of_key;
use warm::warm_lookups;

use super::ShardRuntime;
use crate::auth::Grant;
use crate::frame::{check_frame, FrameError, FrameStatus, FRAME_HEADER_BYTES};
use crate::ops::{OpKind, Reach};
use crate::protocol::binary::{decode_operation, ResponseEncoder};
use crate::shard::stats::Tally;
use crate::time::unix_now_us;
use crate::validate::{check_consistency, check_key, check_pattern, RequestError};
use crate::Status;

/// Most requests handled per read cycle. With `--max-output-bytes` (after
/// which a cycle takes no new request, and an owner shard runs no more of a
/// forwarded batch) it bounds what a connection holds for a client that
/// sends faster than it reads (docs/memory.md).
const MAX_OPS_PER_CYCLE: usize = 1024;

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
    /// Owner shards' answers of the cycle being assembled.
    replies: Vec<Option<Result<assemble::ReplyCursor, ForwardError>>>,
    /// The output is `assembled` (the cycle forwarded requests).
    assembling: bool,
    /// The first step of the cycle whose answer is not in the output yet;
    /// below `steps.len()`, an owner stopped at its answer budget and the
    /// cycle goes on with [`Dispatcher::resume`] once the output is written.
    next_step: usize,
    /// Unsent-answer bytes after which a cycle takes no new request.
    max_output: usize,
    now_us: u64,
}

impl Drop for Dispatcher {
    /// A connection that ends right after an encrypted value's answer
    /// leaves no plaintext in freed memory.
    fn drop(&mut self) {
        // A cycle cut short is over too.
        self.steps.clear();
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
            replies: (0..shards).map(|_| None).collect(),
            assembling: false,
            next_step: 0,
            max_output: DEFAULT_MAX_OUTPUT,
            now_us: 0,
        }
    }

    /// Unsent-answer bytes after which a cycle takes no new request
    /// (`--max-output-bytes`); one answer always goes through.
    pub fn set_max_output(&mut self, bytes: usize) {
        self.max_output = bytes.max(1);
    }

    /// Whether the cycle has answers still to come: write the output, then
    /// call [`Dispatcher::resume`] with the same input.
    pub fn has_more(&self) -> bool {
        self.next_step < self.steps.len()
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

    /// Who the requests are from (metrics `service` label, events); by
    /// default `other`.
    pub fn set_identity(&mut self, identity: ConnIdentity) {
        self.identity = identity;
    }

    /// The response frames of the last [`Dispatcher::run`] or
    /// [`Dispatcher::resume`], in order.
    pub fn output(&self) -> &[u8] {
        if self.assembling {
            &self.assembled
        } else {
            &self.out
        }
    }

    /// Forgets the output (keeping its buffer; zeroed if it held a secret).
    pub fn clear_output(&mut self) {
        self.forget_output();
    }

    fn forget_output(&mut self) {
        if self.has_more() {
            // Later rounds still read `out` and `forward`: only the
            // assembled part is done with.
            if self.secret {
                zeroize::Zeroize::zeroize(&mut self.assembled);
            }
            self.assembled.clear();
            return;
        }
        if std::mem::take(&mut self.secret) {
            zeroize::Zeroize::zeroize(&mut self.out);
            zeroize::Zeroize::zeroize(&mut self.assembled);
            for frames in &mut self.forward {
                zeroize::Zeroize::zeroize(frames);
            }
        }
        self.out.clear();
        self.assembled.clear();
        self.assembling = false;
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
        if self.has_more() {
            return;
        }
        if self.out.capacity() > 2 * self.max_output {
            self.out = Vec::with_capacity(4096);
        }
        if self.assembled.capacity() > 2 * self.max_output {
            self.assembled = Vec::new();
        }
    }

    /// Whether the input had a framing error after which the stream must be
    /// closed (the error answer is the last frame of the output).
    pub fn must_close(&self) -> bool {
        self.close_after_write
    }

    /// Handles the whole frames at the start of `input` (within the cycle's
    /// bounds), appends their answers in order to the output, and returns
    /// the number of input bytes consumed. When [`Dispatcher::has_more`]
    /// says so afterwards, the output holds the first answers only.
    pub async fn run(&mut self, rt: &ShardRuntime, input: &[u8]) -> usize {
        debug_assert!(!self.has_more(), "a cycle runs after the last one is whole");
        let now_us = unix_now_us();
        self.now_us = now_us;
        self.record.begin(now_us);
        let out_start = self.out.len();
        let max_frame = rt.shard.limits().max_frame_bytes;
        let mut ops = 0usize;
        let mut consumed = 0usize;
        warm_lookups(rt, input);
        while ops < MAX_OPS_PER_CYCLE && self.out.len() < self.max_output {
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
        // Taken before any wait, so that no other cycle of this shard (a
        // forwarded batch, another connection) takes it for its own.
        self.secret |= rt.shard.take_secret();
        self.settle_strong(rt).await;
        if self.needs_assembly {
            for job in &mut self.jobs {
                job.run_server_wide(rt).await;
            }
            self.assembling = true;
            self.next_step = 0;
            self.forward_round(rt, input).await;
        } else {
            observe_cycle(
                &rt.shard,
                &self.identity,
                &self.record,
                0,
                input,
                &self.out[out_start..],
            );
            self.end_cycle(rt);
        }
        consumed
    }

    /// Goes on with a cycle an owner shard cut short (its answers reached
    /// their budget): forwards what it has not run, and puts the answers
    /// that follow in the output. `input` is what [`Dispatcher::run`] read.
    pub async fn resume(&mut self, rt: &ShardRuntime, input: &[u8]) {
        if self.has_more() {
            self.forward_round(rt, input).await;
        }
    }

    fn end_cycle(&mut self, rt: &ShardRuntime) {
        strong::end_cycle(&rt.shard);
        self.secret |= rt.shard.take_secret();
        self.steps.clear();
        self.jobs.clear();
        self.needs_assembly = false;
        self.next_step = 0;
        for reply in self.replies.iter_mut() {
            if let Some(Ok(cursor)) = reply.take() {
                rt.router.give_buffer_wiped(cursor.into_buffer(), self.secret);
            }
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

    /// One round trip to the owner shards: sends each owner whose answers
    /// so far are used up the frames it has not run, with a share of the
    /// output budget, waits for all, and appends to `assembled` the answers
    /// that are whole in request order from `next_step` on.
    async fn forward_round(&mut self, rt: &ShardRuntime, input: &[u8]) {
        let router = &rt.router;
        let here = rt.shard.id();
        let used_up = |reply: &Option<Result<assemble::ReplyCursor, ForwardError>>| match reply {
            Some(Ok(cursor)) => !cursor.has_next(),
            Some(Err(_)) => false,
            None => true,
        };
        let sending: Vec<usize> = (0..rt.shard.count())
            .filter(|&o| o != here && !self.forward[o].is_empty() && used_up(&self.replies[o]))
            .collect();
        // Local answers held for this cycle count against the budget, down
        // to a quarter of it, so that a cycle is not cut in a round per answer.
        let room = self
            .max_output
            .saturating_sub(self.out.len())
            .max(self.max_output / 4);
        let budget = room / sending.len().max(1);
        let mut pending = Vec::with_capacity(sending.len());
        for &owner in &sending {
            let frames = std::mem::replace(&mut self.forward[owner], router.take_buffer());
            pending.push((
                owner,
                router.start_forward(owner, frames, self.now_us, budget).await,
            ));
        }
        for (owner, started) in pending {
            let result = match started {
                Ok(p) => p.wait().await,
                Err(e) => Err(e),
            };
            let reply = match result {
                Ok(answered) => {
                    self.secret |= answered.secret;
                    router.give_buffer_wiped(
                        std::mem::replace(&mut self.forward[owner], answered.left),
                        self.secret,
                    );
                    Ok(assemble::ReplyCursor::new(answered.replies))
                }
                // Whatever was still to run for this owner is answered with
                // the error.
                Err(e) => {
                    self.forward[owner].clear();
                    Err(e)
                }
            };
            if let Some(Ok(old)) = self.replies[owner].replace(reply) {
                router.give_buffer_wiped(old.into_buffer(), self.secret);
            }
        }

        let waiting: Vec<bool> = self.forward.iter().map(|f| !f.is_empty()).collect();
        let from = self.next_step;
        let start = self.assembled.len();
        self.next_step = assemble_answers(
            &Cycle {
                steps: &self.steps,
                out: &self.out,
                record: &self.record,
                input,
            },
            from,
            &mut self.jobs,
            here,
            &mut self.replies,
            &waiting,
            &mut self.assembled,
        );
        let answers = &self.assembled[start..];
        observe_cycle(&rt.shard, &self.identity, &self.record, from, input, answers);
        // Replies read to the end go back now: a connection waiting for its
        // client holds its assembled answers only.
        for reply in self.replies.iter_mut() {
            if matches!(reply, Some(Ok(cursor)) if !cursor.has_next()) {
                if let Some(Ok(cursor)) = reply.take() {
                    router.give_buffer_wiped(cursor.into_buffer(), self.secret);
                }
            }
        }
        if !self.has_more() {
            self.end_cycle(rt);
        }
        debug!(shard = here, "assembled forwarded answers");
    }
}
