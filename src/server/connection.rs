//! One binary-protocol connection: the handshake, then cycles of
//! read → decode → route (execute here or batch for the owner) → forward →
//! assemble answers in request order → one write.

use std::rc::Rc;
use std::time::Duration;

use super::uring::UringStream;
use futures_lite::AsyncWriteExt;
use prost::Message;
use tracing::debug;

use super::assemble::{self, Job};
use super::handshake::{self, HandshakeOutcome};
use super::inbuf::InBuf;
use super::tls::Transport;
use super::ShardRuntime;
use crate::auth::Grant;
use crate::error::Status;
use crate::key::{is_valid_key, key_hash, owner_of};
use crate::metrics::{observe_cycle, ConnIdentity, CycleRecord};
use crate::ops::{OpKind, Reach};
use crate::protocol::binary::{decode_operation, OpView, ResponseEncoder};
use crate::protocol::frame::{check_frame, FrameError, FrameStatus, FRAME_HEADER_BYTES};
use crate::router::ForwardError;
use crate::shard::clock::unix_now_us;
use crate::shard::Shard;

/// Most requests handled per read cycle, and the output size after which a
/// cycle stops taking new requests: together they bound what a connection
/// buffers for a client that sends faster than it reads.
const MAX_OPS_PER_CYCLE: usize = 1024;
const OUT_SOFT_CAP: usize = 4 << 20;

/// A write that makes no progress for this long closes the connection.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one request's answer comes from, in request order.
#[derive(Clone, Copy)]
enum Step {
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
    /// Metrics and events of the cycle (src/metrics).
    record: CycleRecord,
    identity: ConnIdentity,
}

pub async fn serve(rt: Rc<ShardRuntime>, stream: UringStream) {
    match rt.server.tls.clone() {
        None => serve_stream(rt, stream).await,
        Some(config) => {
            if let Some(tls) = super::tls::accept(&config, stream).await {
                serve_stream(rt, tls).await
            }
        }
    }
}

async fn serve_stream<S: Transport>(rt: Rc<ShardRuntime>, mut stream: S) {
    let mut inbuf = InBuf::new();
    let mut out = Vec::with_capacity(4096);
    let session = match handshake::run(&rt, &mut stream, &mut inbuf, &mut out).await {
        HandshakeOutcome::Accepted(session) => session,
        HandshakeOutcome::Refused => {
            let _ = stream.write_all(&out).await;
            let _ = stream.close().await;
            return;
        }
        HandshakeOutcome::Gone => return,
    };
    if stream.write_all(&out).await.is_err() {
        return;
    }
    out.clear();

    let mut cycle = Dispatcher::new(rt.shard.count);
    cycle.out = out;
    cycle.set_grant(session.grant);
    cycle.set_write_options(session.compression, session.encryption);
    cycle.set_identity(ConnIdentity::new(
        &rt.shard,
        &session.service_id,
        session.correlation_id.as_bytes(),
    ));
    let mut shutdown = rt.shutdown.wait();
    let max_frame = rt.shard.limits.max_frame_bytes;
    loop {
        // Read until at least one whole frame (or an error to report) is here.
        let want = match check_frame(inbuf.data(), max_frame) {
            Ok(FrameStatus::Complete { .. }) | Err(_) => None,
            Ok(FrameStatus::Incomplete { needed }) => Some(needed.unwrap_or(FRAME_HEADER_BYTES)),
        };
        if let Some(want) = want {
            if rt.shutdown.is_fired() {
                break;
            }
            let read = inbuf.read_from(&mut stream, want);
            let stop = async {
                (&mut shutdown).await;
                Ok(0)
            };
            match futures_lite::future::or(read, stop).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let consumed = cycle.run(&rt, inbuf.data()).await;
        inbuf.consume(consumed);
        if stream.write_all(&cycle.out).await.is_err() {
            break;
        }
        cycle.out.clear();
        if cycle.out.capacity() > 2 * OUT_SOFT_CAP {
            cycle.out = Vec::with_capacity(4096);
        }
        inbuf.shrink_if_idle();
        if cycle.close_after_write || rt.shard.draining.get() {
            break;
        }
    }
    let _ = stream.close().await;
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
            record: CycleRecord::default(),
            identity: ConnIdentity::anonymous(),
        }
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

    /// The response frames of the last [`Dispatcher::run`], in order.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the output (keeping its buffer).
    pub fn clear_output(&mut self) {
        self.out.clear();
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
        let max_frame = rt.shard.limits.max_frame_bytes;
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
                    rt.shard.counters.borrow_mut().protocol_errors += 1;
                    self.close_after_write = true;
                    consumed = input.len();
                    break;
                }
            }
        }
        rt.shard.counters.borrow_mut().requests += ops as u64;
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
        self.steps.clear();
        self.jobs.clear();
        self.needs_assembly = false;
        consumed
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
                shard.counters.borrow_mut().protocol_errors += 1;
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
        let conn_options = self.write_compression | self.write_encryption;
        if conn_options {
            op.options.compression |= self.write_compression;
            op.options.encryption |= self.write_encryption;
        }
        // ---- end of security ----
        if !matches!(op.options.consistency, b"" | b"strong" | b"eventual") {
            let message = "options.consistency must be \"strong\" or \"eventual\"";
            ResponseEncoder::error(&mut self.out, Status::Malformed, message, op.correlation_id);
            return self.push_local(start);
        }
        match kind.reach() {
            Reach::SingleKey => {
                if !is_valid_key(op.key) {
                    let message = crate::shard::execute::INVALID_KEY_MESSAGE;
                    ResponseEncoder::error(&mut self.out, Status::InvalidKey, message, op.correlation_id);
                    return self.push_local(start);
                }
                let hash = key_hash(op.key, shard.seed);
                let owner = owner_of(hash, shard.count);
                if owner == shard.id {
                    shard.execute_single(&op, kind, hash, now_us, &mut self.out);
                    self.push_local(start);
                } else {
                    if conn_options && kind == OpKind::Set {
                        let (c, e) = (op.options.compression, op.options.encryption);
                        crate::codec::append_frame_with_options(frame, c, e, &mut self.forward[owner]);
                    } else {
                        self.forward[owner].extend_from_slice(frame);
                    }
                    self.steps.push(Step::Remote { owner: owner as u16 });
                    self.needs_assembly = true;
                    shard.counters.borrow_mut().forwarded_ops += 1;
                }
            }
            Reach::Server => {
                self.jobs.push(Job::reload(&op));
                self.steps.push(Step::Job {
                    index: (self.jobs.len() - 1) as u32,
                });
                self.needs_assembly = true;
            }
            Reach::MultiKey if shard.count > 1 => self.route_multi(rt, &op, kind, now_us, start),
            Reach::EveryShard if kind == OpKind::Pattern && !crate::pattern::is_valid_pattern(op.key) => {
                let message = "pattern must be 1-1024 bytes";
                ResponseEncoder::error(&mut self.out, Status::InvalidKey, message, op.correlation_id);
                self.push_local(start);
            }
            Reach::EveryShard => {
                for (owner, frames) in self.forward.iter_mut().enumerate() {
                    if owner != shard.id {
                        frames.extend_from_slice(frame);
                    }
                }
                let mut local = Vec::new();
                shard.execute_local(&op, kind, now_us, &mut local);
                self.jobs
                    .push(Job::every_shard(shard.limits.max_frame_bytes, kind, &op, local));
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
        if count > crate::shard::MAX_BATCH_KEYS {
            ResponseEncoder::error(
                &mut self.out,
                Status::BatchTooLarge,
                "more than 10000 keys",
                op.correlation_id,
            );
            return self.push_local(start);
        }
        let owners = assemble::owners_of_items(op, kind, shard.seed, shard.count, shard.id);
        if owners.iter().all(|&o| o as usize == shard.id) {
            shard.execute_local(op, kind, now_us, &mut self.out);
            return self.push_local(start);
        }
        let mut local_reply = None;
        for owner in 0..shard.count {
            if !owners.iter().any(|&o| o as usize == owner) {
                continue;
            }
            if owner == shard.id {
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
            shard.limits.max_frame_bytes,
            kind,
            op,
            owners,
            local_reply,
        ));
        self.steps.push(Step::Job {
            index: (self.jobs.len() - 1) as u32,
        });
        self.needs_assembly = true;
        shard.counters.borrow_mut().forwarded_ops += 1;
    }

    /// Sends every owner its batch, waits for all, and rebuilds `out` with
    /// every answer in request order.
    async fn forward_and_assemble(&mut self, rt: &ShardRuntime, input: &[u8], now_us: u64) {
        for job in &mut self.jobs {
            job.run_server_wide(rt).await;
        }
        let router = &rt.router;
        let mut pending = Vec::with_capacity(rt.shard.count);
        for owner in 0..rt.shard.count {
            if !self.forward[owner].is_empty() {
                let frames = std::mem::replace(&mut self.forward[owner], router.take_buffer());
                pending.push((owner, router.start_forward(owner, frames, now_us).await));
            }
        }
        let mut replies: Vec<Option<Result<assemble::ReplyCursor, ForwardError>>> =
            (0..rt.shard.count).map(|_| None).collect();
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
            rt.shard.id,
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
        debug!(shard = rt.shard.id, "assembled forwarded answers");
    }
}

/// One read cycle as routed: `steps[i]` says where the answer to the
/// request `record` holds at index `i` comes from.
struct Cycle<'a> {
    steps: &'a [Step],
    /// Answers encoded here, which `Step::Local` points into.
    out: &'a [u8],
    record: &'a CycleRecord,
    /// What the requests were read from.
    input: &'a [u8],
}

/// Writes the cycle's answers to `assembled` in request order: local ones
/// from `out`, forwarded ones from their owners' replies, merged ones from
/// their jobs. A forwarded request whose owner did not answer gets CACHE_005
/// or CACHE_011 with its own correlation id.
fn assemble_answers(
    cycle: &Cycle<'_>,
    jobs: &mut [Job],
    shard_id: usize,
    replies: &mut [Option<Result<assemble::ReplyCursor, ForwardError>>],
    assembled: &mut Vec<u8>,
) {
    debug_assert_eq!(cycle.steps.len(), cycle.record.len(), "one step per request");
    for (index, step) in cycle.steps.iter().enumerate() {
        match *step {
            Step::Local { start, end } => {
                assembled.extend_from_slice(&cycle.out[start as usize..end as usize])
            }
            Step::Remote { owner } => match assemble::next_reply(&mut replies[owner as usize]) {
                Ok(frame) => assembled.extend_from_slice(frame),
                Err(e) => ResponseEncoder::error(
                    assembled,
                    e.status(),
                    "owner shard did not answer",
                    cycle.record.correlation_id(index, cycle.input),
                ),
            },
            Step::Job { index } => jobs[index as usize].merge(shard_id, replies, assembled),
        }
    }
}

/// Encodes a prost message as one frame.
/// Requests of a read cycle whose lookups are warmed together.
const WARM_AHEAD: usize = 32;

/// Starts the memory loads of the local single-key lookups among the first
/// frames of `input`, in two passes (index headers, then the records the
/// index points at), so that their cache misses overlap before the frames
/// run one by one. Only worth it for two frames or more.
fn warm_lookups(rt: &ShardRuntime, input: &[u8]) {
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
    let store = shard.store.borrow();
    for &hash in &hashes[..count] {
        store.prefetch_index(hash);
    }
    for &hash in &hashes[..count] {
        store.prefetch_records(hash);
    }
}

/// Calls `found` with the key hash of each local single-key request among
/// the first `max` whole frames of `input`. Returns false, having looked at
/// nothing, when `input` holds one frame and `lone` is false.
fn local_lookups(shard: &Shard, input: &[u8], max: usize, lone: bool, mut found: impl FnMut(u64)) -> bool {
    let mut count = 0;
    let mut at = 0;
    while count < max {
        let Ok(FrameStatus::Complete { len }) = check_frame(&input[at..], shard.limits.max_frame_bytes)
        else {
            break;
        };
        let body = &input[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len];
        at += FRAME_HEADER_BYTES + len;
        if at == input.len() && count == 0 && !lone {
            return false;
        }
        let Ok(op) = decode_operation(body) else { continue };
        if !OpKind::parse(op.operation).is_some_and(|k| k.reach() == Reach::SingleKey) {
            continue;
        }
        let hash = key_hash(op.key, shard.seed);
        if owner_of(hash, shard.count) == shard.id {
            found(hash);
            count += 1;
        }
    }
    true
}

/// Warms lookups across the connections one turn of the shard's ring
/// brought data for (the driver calls it; see [`super::uring::Warm`]).
pub struct ShardWarm(pub Rc<Shard>);

impl super::uring::Warm for ShardWarm {
    fn index(&self, input: &[u8], hashes: &mut Vec<u64>) {
        // Only lone requests: a connection that sent several warms them
        // itself, just before it runs them (`warm_lookups`).
        let max_frame = self.0.limits.max_frame_bytes;
        match check_frame(input, max_frame) {
            Ok(FrameStatus::Complete { len }) if FRAME_HEADER_BYTES + len == input.len() => {}
            _ => return,
        }
        let store = self.0.store.borrow();
        let room = hashes.capacity().saturating_sub(hashes.len());
        local_lookups(&self.0, input, room.min(WARM_AHEAD), true, |hash| {
            store.prefetch_index(hash);
            hashes.push(hash);
        });
    }

    fn records(&self, hash: u64) {
        self.0.store.borrow().prefetch_records(hash);
    }
}

pub fn encode_frame<M: Message>(msg: &M, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(out).expect("Vec grows as needed");
}

#[cfg(test)]
mod tests {
    use super::*;
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
            vec![key_hash(b"user:1", s.seed)]
        );
        assert_eq!(
            warmed(&warm, &frame("set", "user:2")),
            vec![key_hash(b"user:2", s.seed)]
        );
    }

    #[test]
    fn only_whole_lone_single_key_local_requests_are_warmed() {
        let s = shard(0, 2);
        let warm = ShardWarm(s.clone());
        let key = |owner: usize| {
            (0..)
                .map(|i| format!("k{i}"))
                .find(|k| owner_of(key_hash(k.as_bytes(), s.seed), 2) == owner)
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

    fn frame_with_id(operation: &str, key: &str, correlation_id: &str) -> Vec<u8> {
        let op = CacheOperation {
            operation: operation.into(),
            key: key.as_bytes().to_vec().into(),
            correlation_id: correlation_id.into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        encode_frame(&op, &mut out);
        out
    }

    #[test]
    fn requests_whose_owner_did_not_answer_keep_their_own_correlation_ids() {
        use prost::Message as _;
        // A local request, then two forwarded to shard 1, which timed out.
        let frames = [
            frame_with_id("get", "here", "id-local"),
            frame_with_id("get", "there", "id-first"),
            frame_with_id("set", "there-too", "id-second"),
        ];
        let input = frames.concat();
        let mut record = CycleRecord::default();
        record.begin(0);
        let mut at = 0;
        for f in &frames {
            record.push(at, f.len());
            let frame = &input[at..at + f.len()];
            let op = decode_operation(&frame[FRAME_HEADER_BYTES..]).unwrap();
            record.set_op(
                OpKind::parse(op.operation).unwrap(),
                frame,
                op.key,
                op.correlation_id,
            );
            at += f.len();
        }
        let out = b"LOCAL-ANSWER".to_vec();
        let steps = [
            Step::Local {
                start: 0,
                end: out.len() as u32,
            },
            Step::Remote { owner: 1 },
            Step::Remote { owner: 1 },
        ];
        let mut replies = vec![None, Some(Err(ForwardError::Timeout))];
        let mut assembled = Vec::new();
        let cycle = Cycle {
            steps: &steps,
            out: &out,
            record: &record,
            input: &input,
        };
        assemble_answers(&cycle, &mut [], 0, &mut replies, &mut assembled);

        assert_eq!(&assembled[..out.len()], &out[..]);
        let mut rest = &assembled[out.len()..];
        for expected in ["id-first", "id-second"] {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let answer = crate::proto::CacheResponse::decode(&rest[4..4 + len]).unwrap();
            assert_eq!(answer.status, Status::Timeout.code_number());
            assert_eq!(answer.correlation_id, expected);
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty(), "one answer per request");
    }
}
