//! One HTTP/1.x connection of the REST API: read requests under size
//! limits and deadlines, answer them (the [`handler`](super::handler) runs
//! them through the same dispatcher as the binary protocol), repeat while
//! the client keeps the connection alive. Every whole request a read
//! brought is answered in one cycle and one write, in request order
//! ([`Pipeline`]); a request whose body has not all arrived yet ends the
//! cycle and is read on its own.
//!
//! Deadlines: a connection waiting for its next request closes after
//! `idle_timeout`; a request must arrive whole within `request_timeout` of
//! its first byte, plus one second per MiB of body, else 408 and close. A
//! dribbling client cannot hold a connection longer than that.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::batch::stream_batch;
use super::handler::{self as rest, Outcome, Reply};
use super::key::{prepare, Prepared};
use super::pipeline::{write_reply, Answer, Pipeline};
use crate::hub::new_correlation_id;
use crate::protocol::http::{BodyFraming, ChunkedDecoder, HeadReader, HttpError, RequestHead};
use crate::protocol::rest::status_for_http_error;
use crate::server::dispatch::Dispatcher;
use crate::server::inbuf::InBuf;
use crate::server::output::{send_answers, OutputSettings};
use crate::server::shutdown::Wait;
use crate::server::tls::Transport;
use crate::server::uring::UringStream;
use crate::server::ShardRuntime;
use crate::Status;

/// Limits and deadlines of HTTP connections.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
}

/// Most requests answered in one cycle (one write). With the output
/// budget (`--max-output-bytes`) it bounds what one read makes the
/// connection hold; the requests after it wait for the next cycle.
const MAX_REQUESTS_PER_CYCLE: usize = 256;

enum Read {
    Data,
    Closed,
    TimedOut,
    Shutdown,
}

pub(super) struct Conn<S> {
    stream: S,
    inbuf: InBuf,
    shutdown: Wait,
    /// The shard and limits answers are counted against while the client
    /// does not read them (none for a refused connection).
    output: Option<(Rc<ShardRuntime>, OutputSettings)>,
}

impl<S: Transport> Conn<S> {
    /// Reads once (room for `want` buffered bytes), unless `deadline`
    /// passes or the shard shuts down first.
    async fn read(&mut self, want: usize, deadline: Instant) -> Read {
        let left = deadline.saturating_duration_since(Instant::now());
        let Conn {
            stream,
            inbuf,
            shutdown,
            ..
        } = self;
        let read = async {
            match inbuf.read_from(stream, want).await {
                Ok(0) | Err(_) => Read::Closed,
                Ok(_) => Read::Data,
            }
        };
        let timer = async {
            glommio::timer::sleep(left).await;
            Read::TimedOut
        };
        let stop = async {
            shutdown.await;
            Read::Shutdown
        };
        futures_lite::future::or(read, futures_lite::future::or(timer, stop)).await
    }

    /// Sends an error answer, then closes without resetting the connection
    /// on the client (unread bytes are drained for a moment first).
    async fn fail(&mut self, minor_version: u8, correlation_id: &str, e: HttpError) {
        let status = status_for_http_error(e.status);
        let reply = rest::error_reply(e.status, status, &e.message, None, "");
        let _ = self.send(&reply, minor_version, correlation_id).await;
        self.linger_close().await;
    }

    async fn send(&mut self, reply: &Reply, minor_version: u8, correlation_id: &str) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(256 + reply.body.len());
        let answer = Answer {
            minor_version,
            correlation_id,
            keep_alive: false,
            head_only: false,
        };
        write_reply(&mut out, reply, &answer);
        self.write_answers(&out).await
    }

    /// Writes answer bytes, counted while the client does not take them
    /// and closed past the stall deadline ([`send_answers`]).
    pub(super) async fn write_answers(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &self.output {
            Some((rt, settings)) => send_answers(&rt.shard, settings, &mut self.stream, bytes).await,
            None => self.stream.write_all(bytes).await,
        }
    }

    async fn linger_close(&mut self) {
        // Ends our half (glommio's close is shutdown(Write); over TLS a
        // close_notify goes first).
        let _ = self.stream.close().await;
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut sink = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let read = async { self.stream.read(&mut sink).await.unwrap_or(0) };
            let timer = async {
                glommio::timer::sleep(left).await;
                0
            };
            if futures_lite::future::or(read, timer).await == 0 {
                break;
            }
        }
        let _ = self.stream.close().await;
    }
}

/// Serves one HTTP connection until the client closes it, a deadline
/// passes, an unrecoverable request arrives, or the shard shuts down.
pub async fn serve(rt: Rc<ShardRuntime>, stream: UringStream) {
    match rt.server.tls.clone() {
        None => serve_stream(rt, stream).await,
        Some(config) => {
            if let Some(tls) = crate::server::tls::accept(&config, stream).await {
                serve_stream(rt, tls).await
            }
        }
    }
}

async fn serve_stream<S: Transport>(rt: Rc<ShardRuntime>, stream: S) {
    let settings = rt.server.http.clone();
    let mut conn = Conn {
        stream,
        inbuf: InBuf::new(),
        shutdown: rt.shutdown.wait(),
        output: Some((rt.clone(), rt.server.output)),
    };
    let mut reader = HeadReader::new();
    let mut dispatcher = Dispatcher::new(rt.shard.count());
    dispatcher.set_max_output(rt.server.output.max_bytes);
    let mut pipeline = Pipeline::new(rt.server.output.max_bytes);
    let mut cycle = Cycle {
        rt: &rt,
        d: &mut dispatcher,
        conn: &mut conn,
        pipeline: &mut pipeline,
    };
    // When the connection last had no request in progress, and when the
    // bytes of the request being read began to arrive.
    let mut idle_since = Instant::now();
    let mut started: Option<Instant> = None;
    loop {
        if started.is_none() && !cycle.conn.inbuf.data().is_empty() {
            started = Some(Instant::now());
        }
        let (next, taken) = cycle.answer_buffered(&mut reader, &settings).await;
        if taken > 0 {
            idle_since = Instant::now();
            started = None;
        }
        match next {
            Next::More => continue,
            Next::Close => break,
            Next::Fail(e) => return cycle.fail_after(e).await,
            Next::Read => {}
            Next::Body(mut head) => {
                let started = started.take().unwrap_or_else(Instant::now);
                // ICD 1.1: every request has a correlation id, the client's
                // or ours; its operations and events carry it and the
                // answer returns it.
                let correlation_id = head.correlation_id.get_or_insert_with(new_correlation_id).clone();
                let mut body = match read_body(cycle.conn, &head, started, &settings).await {
                    Ok(body) => body,
                    Err(None) => return,
                    Err(Some(e)) => return cycle.fail(head.minor_version, &correlation_id, e).await,
                };
                head.keep_alive &= !rt.shard.is_draining();
                let keep_alive = cycle.answer(head, Body::Read(&body)).await;
                let sent = cycle.pipeline.finish(cycle.rt, cycle.d, cycle.conn).await;
                if cycle.pipeline.take_secret() {
                    zeroize::Zeroize::zeroize(&mut body);
                }
                idle_since = Instant::now();
                if !matches!((keep_alive, sent), (Ok(true), Ok(()))) || rt.shard.is_draining() {
                    break;
                }
                continue;
            }
        }
        cycle.conn.inbuf.shrink_if_idle();
        // No whole request is buffered: read more.
        if started.is_none() && !cycle.conn.inbuf.data().is_empty() {
            started = Some(Instant::now());
        }
        let deadline = match started {
            Some(t) => t + settings.request_timeout,
            None => idle_since + settings.idle_timeout,
        };
        let want = cycle.conn.inbuf.data().len() + 1;
        match cycle.conn.read(want, deadline).await {
            Read::Data => {}
            Read::TimedOut if started.is_some() => {
                let e = HttpError::new(408, "request head not received in time");
                return cycle.fail_after(e).await;
            }
            Read::TimedOut | Read::Closed | Read::Shutdown => return,
        }
    }
    let _ = conn.stream.close().await;
}

/// What the connection does once the requests it had buffered are answered.
enum Next {
    /// No whole request is buffered: read.
    Read,
    /// The cycle's bounds stopped it: more requests may be buffered.
    More,
    /// A request head whose body is still to come (the head is consumed).
    Body(RequestHead),
    /// A request that cannot be answered: answer the error and close.
    Fail(HttpError),
    /// `Connection: close`, a failed write, or the shard is stopping.
    Close,
}

/// A request's body: where the connection's buffer holds it, or read apart.
enum Body<'a> {
    Buffered(std::ops::Range<usize>),
    Read(&'a [u8]),
}

/// What one connection's cycles work with.
struct Cycle<'a, S> {
    rt: &'a ShardRuntime,
    d: &'a mut Dispatcher,
    conn: &'a mut Conn<S>,
    pipeline: &'a mut Pipeline,
}

impl<S: Transport> Cycle<'_, S> {
    /// Answers every whole request buffered (within the cycle's bounds) in
    /// one cycle and one write; returns what comes next and how many
    /// requests were taken.
    async fn answer_buffered(&mut self, reader: &mut HeadReader, settings: &HttpSettings) -> (Next, usize) {
        let mut pos = 0;
        let mut taken = 0;
        let next = loop {
            if taken == MAX_REQUESTS_PER_CYCLE || self.pipeline.output_full() {
                break Next::More;
            }
            let data = &self.conn.inbuf.data()[pos..];
            let (mut head, head_len) = match reader.poll(data, settings.max_body_bytes) {
                Ok(Some(found)) => found,
                Ok(None) => break Next::Read,
                Err(e) => break Next::Fail(e),
            };
            let body_len = match head.body {
                BodyFraming::None => 0,
                BodyFraming::Length(n) if data.len() - head_len >= n => n,
                // The rest of the body, or a chunked one, is read apart.
                _ => {
                    pos += head_len;
                    break Next::Body(head);
                }
            };
            head.correlation_id.get_or_insert_with(new_correlation_id);
            head.keep_alive &= !self.rt.shard.is_draining();
            let body = pos + head_len..pos + head_len + body_len;
            pos = body.end;
            taken += 1;
            match self.answer(head, Body::Buffered(body)).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break Next::Close,
            }
        };
        let sent = self.pipeline.finish(self.rt, self.d, self.conn).await;
        if self.pipeline.take_secret() {
            self.conn.inbuf.wipe_front(pos);
        }
        self.conn.inbuf.consume(pos);
        match sent {
            Ok(()) => (next, taken),
            Err(_) => (Next::Close, taken),
        }
    }

    /// Answers one request: a single-key one joins the queue, any other
    /// runs now, after the queue. Returns whether the connection stays open.
    async fn answer(&mut self, head: RequestHead, body: Body<'_>) -> std::io::Result<bool> {
        let rt = self.rt;
        let bytes = match &body {
            Body::Buffered(range) => &self.conn.inbuf.data()[range.clone()],
            Body::Read(bytes) => bytes,
        };
        match prepare(rt, &head, bytes) {
            Prepared::Queued(request, op) => {
                if !self.pipeline.accepts(request.grant) {
                    self.pipeline.run(rt, self.d, self.conn).await?;
                }
                let keep_alive = head.keep_alive;
                self.pipeline.queue(head, request, &op);
                Ok(keep_alive)
            }
            Prepared::Answered(reply) => {
                self.pipeline.run(rt, self.d, self.conn).await?;
                self.pipeline.push(&reply, &head);
                Ok(head.keep_alive)
            }
            Prepared::Other => {
                let mut bytes = bytes.to_vec();
                self.pipeline.run(rt, self.d, self.conn).await?;
                let outcome = rest::handle(rt, self.d, &head, &bytes).await;
                let keep_alive = match outcome {
                    Outcome::Reply(mut reply) => {
                        self.pipeline.push(&reply, &head);
                        if self.d.held_secret() {
                            zeroize::Zeroize::zeroize(&mut reply.body);
                            self.d.clear_output();
                            self.pipeline.mark_secret();
                        }
                        head.keep_alive
                    }
                    Outcome::Batch(job) => {
                        // HTTP/1.0 has no chunked encoding: the close ends the body.
                        let keep_alive = head.keep_alive && head.minor_version == 1;
                        // The answers before it go first.
                        self.pipeline.write(self.conn).await?;
                        if stream_batch(rt, self.d, self.conn, &head, keep_alive, job).await? {
                            self.pipeline.mark_secret();
                        }
                        keep_alive
                    }
                };
                // The body may hold the plaintext of values to encrypt.
                zeroize::Zeroize::zeroize(&mut bytes);
                Ok(keep_alive)
            }
        }
    }

    /// Sends the error answer of a request that cannot be read, then closes.
    async fn fail(&mut self, minor_version: u8, correlation_id: &str, e: HttpError) {
        self.conn.fail(minor_version, correlation_id, e).await
    }

    /// [`Cycle::fail`] for a request whose head could not be read.
    async fn fail_after(&mut self, e: HttpError) {
        self.fail(1, &new_correlation_id(), e).await
    }
}

/// Reads the body `head` announces. `Err(None)`: the client went away or
/// the server is stopping; `Err(Some(e))`: answer `e` and close.
async fn read_body<S: Transport>(
    conn: &mut Conn<S>,
    head: &RequestHead,
    started: Instant,
    settings: &HttpSettings,
) -> Result<Vec<u8>, Option<HttpError>> {
    let deadline =
        |bytes: usize| started + settings.request_timeout + Duration::from_secs((bytes >> 20) as u64);
    let timed_out = || Some(HttpError::new(408, "request body not received in time"));
    match head.body {
        BodyFraming::None => Ok(Vec::new()),
        BodyFraming::Length(n) => {
            if conn.inbuf.data().len() < n {
                send_continue(conn, head).await?;
            }
            while conn.inbuf.data().len() < n {
                match conn.read(n, deadline(n)).await {
                    Read::Data => {}
                    Read::TimedOut => return Err(timed_out()),
                    Read::Closed | Read::Shutdown => return Err(None),
                }
            }
            let body = conn.inbuf.data()[..n].to_vec();
            conn.inbuf.consume(n);
            Ok(body)
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(settings.max_body_bytes);
            let mut body = Vec::new();
            if conn.inbuf.data().is_empty() {
                send_continue(conn, head).await?;
            }
            loop {
                let used = decoder.decode(conn.inbuf.data(), &mut body).map_err(Some)?;
                conn.inbuf.consume(used);
                if decoder.is_done() {
                    return Ok(body);
                }
                match conn.read(conn.inbuf.data().len() + 1, deadline(body.len())).await {
                    Read::Data => {}
                    Read::TimedOut => return Err(timed_out()),
                    Read::Closed | Read::Shutdown => return Err(None),
                }
            }
        }
    }
}

/// Tells a client that sent `Expect: 100-continue` to send its body.
async fn send_continue<S: Transport>(
    conn: &mut Conn<S>,
    head: &RequestHead,
) -> Result<(), Option<HttpError>> {
    if head.expect_continue {
        let line = format!("HTTP/1.{} 100 Continue\r\n\r\n", head.minor_version);
        conn.stream.write_all(line.as_bytes()).await.map_err(|_| None)?;
    }
    Ok(())
}

/// Answers a connection over the limit with 503 (CACHE_009) and closes.
pub async fn refuse(stream: TcpStream) {
    let mut conn = Conn {
        stream,
        inbuf: InBuf::new(),
        shutdown: crate::server::shutdown::ShutdownSignal::default().wait(),
        output: None,
    };
    let reply = rest::error_reply(503, Status::TooManyConnections, "too many connections", None, "");
    let _ = conn.send(&reply, 1, &new_correlation_id()).await;
    conn.linger_close().await;
}
