//! One pipelined client connection: any number of requests in flight, their
//! answers matched in order.
//!
//! A writer task sends frames (coalescing whatever is queued into one
//! write); before each frame it hands the request's answer slot to the
//! reader task, so the reader always knows whose answer comes next.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use dnd_cache_proto::frame::{declared_len, encode_frame, FRAME_HEADER_BYTES};
use dnd_cache_proto::pb as proto;

type Answer = oneshot::Sender<Result<proto::CacheResponse, ClientError>>;

struct Request {
    frame: Vec<u8>,
    answer: Answer,
}

/// Requests queued for the writer before callers wait for room.
const QUEUE_DEPTH: usize = 4096;

/// A live connection after a successful handshake.
pub struct Connection {
    requests: mpsc::Sender<Request>,
    pub handshake: proto::Handshake,
}

impl Connection {
    /// Connects, sends the `CacheConnection`, and checks the answer.
    pub async fn open(
        address: &str,
        hello: &proto::CacheConnection,
        connect_timeout: Duration,
        max_frame_bytes: usize,
    ) -> Result<Connection, ClientError> {
        let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout)??;
        stream.set_nodelay(true)?;
        stream.write_all(&encode(hello)).await?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let answer = tokio::time::timeout(
            connect_timeout,
            read_frame(&mut stream, &mut buf, max_frame_bytes),
        )
        .await
        .map_err(|_| ClientError::Timeout)??
        .ok_or(ClientError::Closed)?;
        super::check_status(&answer)?;
        let handshake = answer
            .handshake
            .ok_or_else(|| ClientError::Protocol("handshake answer without shard map".into()))?;
        let (read_half, write_half) = stream.into_split();
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let (waiting_tx, waiting_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write_half, queue, waiting_tx));
        tokio::spawn(read_loop(read_half, buf, waiting_rx, max_frame_bytes));
        Ok(Connection { requests, handshake })
    }

    /// Whether the connection can still carry requests.
    pub fn is_open(&self) -> bool {
        !self.requests.is_closed()
    }

    /// Sends one operation and waits for its answer.
    pub async fn call(
        &self,
        op: &proto::CacheOperation,
        timeout: Duration,
    ) -> Result<proto::CacheResponse, ClientError> {
        let (answer, rx) = oneshot::channel();
        self.requests
            .send(Request {
                frame: encode(op),
                answer,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(result)) => result,
        }
    }
}

fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + msg.encoded_len());
    encode_frame(msg, &mut out);
    out
}

async fn write_loop(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<Request>,
    waiting: mpsc::UnboundedSender<Answer>,
) {
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(req) = next {
            out.extend_from_slice(&req.frame);
            if waiting.send(req.answer).is_err() {
                return;
            }
            next = if out.len() < 256 * 1024 {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

async fn read_loop(
    mut stream: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    mut waiting: mpsc::UnboundedReceiver<Answer>,
    max_frame_bytes: usize,
) {
    loop {
        match read_frame(&mut stream, &mut buf, max_frame_bytes).await {
            Ok(Some(resp)) => match waiting.recv().await {
                Some(answer) => {
                    let _ = answer.send(Ok(resp));
                }
                None => return,
            },
            Ok(None) | Err(_) => {
                // Everyone still waiting learns the connection is gone.
                waiting.close();
                while let Ok(answer) = waiting.try_recv() {
                    let _ = answer.send(Err(ClientError::Closed));
                }
                return;
            }
        }
    }
}

/// Reads one response frame; `None` at a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<proto::CacheResponse>, ClientError> {
    loop {
        if let Some(len) = declared_len(buf) {
            // Batch answers may exceed the request limit; allow generous room.
            if len > max_frame_bytes.saturating_mul(64) {
                return Err(ClientError::Protocol(format!("answer frame of {len} bytes")));
            }
            if buf.len() >= FRAME_HEADER_BYTES + len {
                buf.advance(FRAME_HEADER_BYTES);
                let body = buf.split_to(len).freeze();
                return proto::CacheResponse::decode(body)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(format!("undecodable answer: {e}")));
            }
            buf.reserve(FRAME_HEADER_BYTES + len - buf.len());
        } else {
            buf.reserve(64 * 1024);
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ClientError::Closed)
            };
        }
    }
}
