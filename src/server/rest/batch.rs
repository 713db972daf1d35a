//! `POST /api/v2/cache/batch`: the answer streamed as the batch runs.

use super::conn::Conn;
use super::handler::{self as rest, BatchJob};
use super::pipeline::CORRELATION_HEADER;
use crate::protocol::http::{write_chunk, write_response_head, RequestHead, ResponseLength, LAST_CHUNK};
use crate::protocol::rest::response::write_batch_result;
use crate::server::dispatch::Dispatcher;
use crate::server::tls::Transport;
use crate::server::ShardRuntime;
use crate::Status;

/// Batch answers are written in pieces of about this size.
const STREAM_CHUNK_BYTES: usize = 256 * 1024;

/// Runs a batch through the dispatcher cycle by cycle, writing its answer
/// as it goes (chunked for HTTP/1.1, until close for HTTP/1.0), so that a
/// batch of large values is never held whole in memory. Returns whether
/// the batch wrote or read the plaintext of an encrypted value.
pub async fn stream_batch<S: Transport>(
    rt: &ShardRuntime,
    d: &mut Dispatcher,
    conn: &mut Conn<S>,
    head: &RequestHead,
    keep_alive: bool,
    job: BatchJob,
) -> std::io::Result<bool> {
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
    // Any round held a secret: the answer buffers are zeroed at the end.
    let mut secret = false;
    while pos < job.frames.len() {
        d.clear_output();
        let input = &job.frames[pos..];
        let used = d.run(rt, input).await;
        if used == 0 {
            break;
        }
        pos += used;
        loop {
            secret |= d.held_secret();
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
    secret |= d.held_secret();
    if secret {
        zeroize::Zeroize::zeroize(&mut body);
        zeroize::Zeroize::zeroize(&mut out);
        d.clear_output();
    }
    sent?;
    if chunked {
        conn.write_answers(LAST_CHUNK).await?;
    }
    Ok(secret)
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
