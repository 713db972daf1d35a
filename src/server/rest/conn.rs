//! One HTTP/1.x connection of the REST API: read a request head and body
//! under size limits and deadlines, answer it (the [`handler`](super::handler)
//! runs it through the same dispatcher as the binary protocol),
//! repeat while the client keeps the connection alive. Pipelined requests
//! are answered one after another, so in order.
//!
//! Deadlines: a connection waiting for its next request closes after
//! `idle_timeout`; a request must arrive whole within `request_timeout` of
//! its first byte, plus one second per MiB of body, else 408 and close. A
//! dribbling client cannot hold a connection longer than that.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::handler::{self as rest, BatchJob, Outcome, Reply};
use crate::hub::new_correlation_id;
use crate::protocol::http::{
    write_chunk, write_response_head, BodyFraming, ChunkedDecoder, HeadReader, HttpError, Method,
    RequestHead, ResponseLength, LAST_CHUNK,
};
use crate::protocol::rest::response::write_batch_result;
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

/// The header that carries a request's correlation id (ICD 1.1), read and
/// answered on every request.
pub const CORRELATION_HEADER: &str = "X-Correlation-ID";

/// Batch answers are written in pieces of about this size.
const STREAM_CHUNK_BYTES: usize = 256 * 1024;

enum Read {
    Data,
    Closed,
    TimedOut,
    Shutdown,
}

struct Conn<S> {
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
    async fn fail(mut self, minor_version: u8, correlation_id: &str, e: HttpError) {
        let status = status_for_http_error(e.status);
        let reply = rest::error_reply(e.status, status, &e.message, None, "");
        let _ = self
            .send(&reply, minor_version, correlation_id, false, false)
            .await;
        self.linger_close().await;
    }

    async fn send(
        &mut self,
        reply: &Reply,
        minor: u8,
        correlation_id: &str,
        keep_alive: bool,
        head_only: bool,
    ) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(256 + reply.body.len());
        let correlation = (CORRELATION_HEADER, correlation_id);
        let with_header;
        let extra: &[(&str, &str)] = match &reply.header {
            Some((name, value)) => {
                with_header = [correlation, (*name, value.as_str())];
                &with_header
            }
            None => std::slice::from_ref(&correlation),
        };
        write_response_head(
            &mut out,
            minor,
            reply.status,
            Some(reply.content_type),
            ResponseLength::Known(reply.body.len()),
            keep_alive,
            extra,
        );
        if !head_only {
            out.extend_from_slice(&reply.body);
        }
        let sent = self.write_answers(&out).await;
        // The body may be the plaintext of an encrypted value (issue 19).
        zeroize::Zeroize::zeroize(&mut out);
        sent
    }

    /// Writes answer bytes, counted while the client does not take them
    /// and closed past the stall deadline ([`send_answers`]).
    async fn write_answers(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &self.output {
            Some((rt, settings)) => send_answers(&rt.shard, settings, &mut self.stream, bytes).await,
            None => self.stream.write_all(bytes).await,
        }
    }

    async fn linger_close(mut self) {
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
    loop {
        // The request head.
        let idle_since = Instant::now();
        let mut started: Option<Instant> = None;
        let head = loop {
            if started.is_none() && !conn.inbuf.data().is_empty() {
                started = Some(Instant::now());
            }
            match reader.poll(conn.inbuf.data(), settings.max_body_bytes) {
                Ok(Some((head, len))) => {
                    conn.inbuf.consume(len);
                    break head;
                }
                Ok(None) => {}
                Err(e) => return conn.fail(1, &new_correlation_id(), e).await,
            }
            let deadline = match started {
                Some(t) => t + settings.request_timeout,
                None => idle_since + settings.idle_timeout,
            };
            match conn.read(conn.inbuf.data().len() + 1, deadline).await {
                Read::Data => {}
                Read::TimedOut if started.is_some() => {
                    return conn
                        .fail(
                            1,
                            &new_correlation_id(),
                            HttpError::new(408, "request head not received in time"),
                        )
                        .await
                }
                Read::TimedOut | Read::Closed | Read::Shutdown => return,
            }
        };
        let started = started.unwrap_or_else(Instant::now);
        // ICD 1.1: every request has a correlation id, the client's or ours;
        // its operations and events carry it and the answer returns it.
        let mut head = head;
        let correlation_id = head.correlation_id.get_or_insert_with(new_correlation_id).clone();
        let body = match read_body(&mut conn, &head, started, &settings).await {
            Ok(body) => body,
            Err(None) => return,
            Err(Some(e)) => return conn.fail(head.minor_version, &correlation_id, e).await,
        };

        let mut keep_alive = head.keep_alive && !rt.shard.is_draining();
        let sent = match rest::handle(&rt, &mut dispatcher, &head, &body).await {
            Outcome::Reply(mut reply) => {
                let head_only = head.method == Method::Head;
                let sent = conn
                    .send(&reply, head.minor_version, &correlation_id, keep_alive, head_only)
                    .await;
                if dispatcher.held_secret() {
                    zeroize::Zeroize::zeroize(&mut reply.body);
                    dispatcher.clear_output();
                }
                sent
            }
            Outcome::Batch(job) => {
                // HTTP/1.0 has no chunked encoding: the close ends the body.
                keep_alive &= head.minor_version == 1;
                stream_batch(&rt, &mut dispatcher, &mut conn, &head, keep_alive, job).await
            }
        };
        conn.inbuf.shrink_if_idle();
        if sent.is_err() || !keep_alive || rt.shard.is_draining() {
            break;
        }
    }
    let _ = conn.stream.close().await;
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

/// Runs a batch through the dispatcher cycle by cycle, writing its answer
/// as it goes (chunked for HTTP/1.1, until close for HTTP/1.0), so that a
/// batch of large values is never held whole in memory.
async fn stream_batch<S: Transport>(
    rt: &ShardRuntime,
    d: &mut Dispatcher,
    conn: &mut Conn<S>,
    head: &RequestHead,
    keep_alive: bool,
    job: BatchJob,
) -> std::io::Result<()> {
    let chunked = head.minor_version == 1;
    let length = if chunked {
        ResponseLength::Chunked
    } else {
        ResponseLength::UntilClose
    };
    let mut out = Vec::with_capacity(STREAM_CHUNK_BYTES + 1024);
    write_response_head(
        &mut out,
        head.minor_version,
        200,
        Some(rest::JSON),
        length,
        keep_alive,
        &[(CORRELATION_HEADER, head.correlation_id.as_deref().unwrap_or(""))],
    );
    conn.write_answers(&out).await?;
    out.clear();
    let mut body = b"{\"results\":[".to_vec();
    let mut items = job.items.iter();
    let mut first = true;
    let mut pos = 0;
    while pos < job.frames.len() {
        d.clear_output();
        let input = &job.frames[pos..];
        let used = d.run(rt, input).await;
        if used == 0 {
            break;
        }
        pos += used;
        loop {
            for resp in rest::response_frames(d.output()) {
                let Some(item) = items.next() else { break };
                if !first {
                    body.push(b',');
                }
                first = false;
                write_batch_result(&mut body, item.kind, &item.key, &resp, job.force_base64);
                if d.held_secret() {
                    rest::wipe_response(resp);
                }
                if body.len() >= STREAM_CHUNK_BYTES {
                    send_piece(conn, &mut out, &body, chunked).await?;
                    body.clear();
                }
            }
            // An owner shard stopped at the answer budget: the rest of the
            // cycle comes once what came before is on its way.
            if !d.has_more() {
                break;
            }
            d.clear_output();
            d.resume(rt, input).await;
        }
    }
    // Items the dispatcher could not answer (it never stops early today).
    for item in items {
        if !first {
            body.push(b',');
        }
        first = false;
        let resp = crate::proto::CacheResponse {
            status: Status::Unavailable.code_number(),
            data: "not executed".into(),
            ..Default::default()
        };
        write_batch_result(&mut body, item.kind, &item.key, &resp, job.force_base64);
    }
    body.extend_from_slice(b"]}");
    let sent = send_piece(conn, &mut out, &body, chunked).await;
    if d.held_secret() {
        zeroize::Zeroize::zeroize(&mut body);
        zeroize::Zeroize::zeroize(&mut out);
        d.clear_output();
    }
    sent?;
    if chunked {
        conn.write_answers(LAST_CHUNK).await?;
    }
    Ok(())
}

async fn send_piece<S: Transport>(
    conn: &mut Conn<S>,
    out: &mut Vec<u8>,
    piece: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    if !chunked {
        return conn.write_answers(piece).await;
    }
    out.clear();
    write_chunk(out, piece);
    conn.write_answers(out).await
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
    let _ = conn.send(&reply, 1, &new_correlation_id(), false, false).await;
    conn.linger_close().await;
}
