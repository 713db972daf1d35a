//! The answers of one read. A client that pipelines sends several requests
//! before reading an answer; the connection takes every whole request the
//! read brought ([`super::conn`]), queues the operations of the single-key
//! ones here and runs them as one dispatcher cycle, as the binary protocol
//! runs a read's frames (lookups warmed together, one batch per owner
//! shard); any other request runs alone in its turn. Every answer is
//! appended, in request order, to one buffer that leaves in one write.
//!
//! Measured (docs/perf/rest-pipelining.md): one shard, 50 connections,
//! 16 requests in flight each.

use std::io;

use super::conn::Conn;
use super::handler::{response_frames, Reply};
use super::key::{key_answer, queue_frame, KeyRequest};
use crate::auth::Grant;
use crate::proto::{CacheOperation, CacheResponse};
use crate::protocol::http::{write_response_head, Method, RequestHead, ResponseLength};
use crate::server::dispatch::Dispatcher;
use crate::server::tls::Transport;
use crate::server::ShardRuntime;
use crate::Status;

/// The header that carries a request's correlation id (ICD 1.1), read and
/// answered on every request.
pub const CORRELATION_HEADER: &str = "X-Correlation-ID";

/// A queue whose frames outgrew this keeps its memory no longer than its cycle.
const FRAMES_KEPT_BYTES: usize = 64 * 1024;

/// One read's single-key requests waiting for their cycle, and the answers
/// of the read so far.
pub struct Pipeline {
    /// Operation frames of the queued requests, in order.
    frames: Vec<u8>,
    queued: Vec<(RequestHead, KeyRequest)>,
    /// The grant every queued request runs under.
    grant: Grant,
    /// Answers not yet written, in request order.
    out: Vec<u8>,
    /// Answers after which they are written before the cycle goes on.
    max_output: usize,
    /// A request or answer since the last write carried the plaintext of
    /// an encrypted value: buffers are zeroed, not just cleared (issue 19).
    secret: bool,
}

impl Pipeline {
    pub fn new(max_output: usize) -> Self {
        Pipeline {
            frames: Vec::new(),
            queued: Vec::new(),
            grant: Grant::NONE,
            out: Vec::with_capacity(4096),
            max_output: max_output.max(1),
            secret: false,
        }
    }

    /// Whether a request of `grant` may join the queue (one cycle runs
    /// under one grant).
    pub fn accepts(&self, grant: Grant) -> bool {
        self.queued.is_empty() || self.grant == grant
    }

    /// Queues a single-key request; its answer comes when the queue runs.
    pub fn queue(&mut self, head: RequestHead, request: KeyRequest, op: &CacheOperation) {
        queue_frame(op, &mut self.frames);
        self.grant = request.grant;
        self.queued.push((head, request));
    }

    /// Whether the answers not yet written reached the output budget.
    pub fn output_full(&self) -> bool {
        self.out.len() >= self.max_output
    }

    /// Appends the answer of `head`'s request.
    pub fn push(&mut self, reply: &Reply, head: &RequestHead) {
        let correlation_id = head.correlation_id.as_deref().unwrap_or_default();
        let answer = Answer {
            minor_version: head.minor_version,
            correlation_id,
            keep_alive: head.keep_alive,
            head_only: head.method == Method::Head,
        };
        write_reply(&mut self.out, reply, &answer);
    }

    /// Notes that the request or answer just handled carried a secret.
    pub fn mark_secret(&mut self) {
        self.secret = true;
    }

    /// Whether anything since the last call carried a secret (the caller
    /// then zeroes the request bytes it consumed); resets the mark.
    pub fn take_secret(&mut self) -> bool {
        std::mem::take(&mut self.secret)
    }

    /// Runs the queued requests as one dispatcher cycle and appends their
    /// answers in order; writes what is pending whenever it reaches the
    /// output budget.
    pub async fn run<S: Transport>(
        &mut self,
        rt: &ShardRuntime,
        d: &mut Dispatcher,
        conn: &mut Conn<S>,
    ) -> io::Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        d.set_grant(self.grant);
        let mut queued = std::mem::take(&mut self.queued);
        let mut frames = std::mem::take(&mut self.frames);
        let result = self.run_queue(rt, d, conn, &frames, &queued).await;
        queued.clear();
        self.queued = queued;
        if self.secret {
            zeroize::Zeroize::zeroize(&mut frames);
        }
        frames.clear();
        if frames.capacity() <= FRAMES_KEPT_BYTES {
            self.frames = frames;
        }
        result
    }

    async fn run_queue<S: Transport>(
        &mut self,
        rt: &ShardRuntime,
        d: &mut Dispatcher,
        conn: &mut Conn<S>,
        frames: &[u8],
        queued: &[(RequestHead, KeyRequest)],
    ) -> io::Result<()> {
        let mut requests = queued.iter();
        let mut pos = 0;
        while pos < frames.len() {
            d.clear_output();
            let input = &frames[pos..];
            let used = d.run(rt, input).await;
            if used == 0 {
                break;
            }
            pos += used;
            loop {
                let secret = d.held_secret();
                self.secret |= secret;
                for resp in response_frames(d.output()) {
                    let Some((head, request)) = requests.next() else {
                        break;
                    };
                    let mut reply = key_answer(request, head, resp, secret);
                    self.push(&reply, head);
                    if secret {
                        zeroize::Zeroize::zeroize(&mut reply.body);
                    }
                }
                if self.output_full() {
                    self.write(conn).await?;
                }
                // An owner shard stopped at the answer budget: the rest of
                // the cycle comes once what came before is on its way.
                if !d.has_more() {
                    break;
                }
                d.clear_output();
                d.resume(rt, input).await;
            }
        }
        d.clear_output();
        // Requests the dispatcher did not answer (it never stops early today).
        for (head, request) in requests {
            let resp = CacheResponse {
                status: Status::Unavailable.code_number(),
                data: "not executed".into(),
                ..Default::default()
            };
            let reply = key_answer(request, head, resp, false);
            self.push(&reply, head);
        }
        Ok(())
    }

    /// Writes the answers not yet written: counted while the client does
    /// not take them, closed past the stall deadline.
    pub async fn write<S: Transport>(&mut self, conn: &mut Conn<S>) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let sent = conn.write_answers(&self.out).await;
        // The answers may hold the plaintext of an encrypted value.
        if self.secret {
            zeroize::Zeroize::zeroize(&mut self.out);
        }
        self.out.clear();
        if self.out.capacity() > 2 * self.max_output {
            self.out = Vec::with_capacity(4096);
        }
        sent
    }

    /// Ends a read's cycle: runs what is queued, then writes every answer.
    pub async fn finish<S: Transport>(
        &mut self,
        rt: &ShardRuntime,
        d: &mut Dispatcher,
        conn: &mut Conn<S>,
    ) -> io::Result<()> {
        let ran = self.run(rt, d, conn).await;
        let sent = self.write(conn).await;
        ran.and(sent)
    }
}

impl Drop for Pipeline {
    /// A connection that ends mid-cycle leaves no plaintext in freed memory.
    fn drop(&mut self) {
        if self.secret {
            zeroize::Zeroize::zeroize(&mut self.out);
            zeroize::Zeroize::zeroize(&mut self.frames);
        }
    }
}

/// How an answer is framed: the request's HTTP version and correlation
/// id, whether the connection stays open, whether the body is left out
/// (HEAD).
pub struct Answer<'a> {
    pub minor_version: u8,
    pub correlation_id: &'a str,
    pub keep_alive: bool,
    pub head_only: bool,
}

/// Appends `reply` framed as `answer` says.
pub fn write_reply(out: &mut Vec<u8>, reply: &Reply, answer: &Answer<'_>) {
    let correlation = (CORRELATION_HEADER, answer.correlation_id);
    let with_header;
    let extra: &[(&str, &str)] = match &reply.header {
        Some((name, value)) => {
            with_header = [correlation, (*name, value.as_str())];
            &with_header
        }
        None => std::slice::from_ref(&correlation),
    };
    write_response_head(
        out,
        answer.minor_version,
        reply.status,
        Some(reply.content_type),
        ResponseLength::Known(reply.body.len()),
        answer.keep_alive,
        extra,
    );
    if !answer.head_only {
        out.extend_from_slice(&reply.body);
    }
}
