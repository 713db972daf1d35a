//! Single-key requests (`GET`, `HEAD`, `PUT`, `DELETE` on
//! `/api/v2/cache/{key}`), the bulk of REST traffic: the operation of a
//! request and the answer of its response. The connection queues the
//! operations of every such request one read brought and runs them as one
//! dispatcher cycle ([`super::pipeline`]).

use crate::auth::Grant;
use crate::frame::{encode_frame, FRAME_HEADER_BYTES};
use crate::ops::OpKind;
use crate::proto::{CacheOperation, CacheResponse};
use crate::protocol::http::{Method, RequestHead};
use crate::protocol::rest::request;
use crate::protocol::rest::{routes, Query, RestError, Route};
use crate::server::ShardRuntime;
use crate::Status;

use super::handler::{answer, failure_reply, grant_for, wipe_response, Failure, Reply, OCTETS};

/// A single-key request whose operation frame is queued.
pub struct KeyRequest {
    pub kind: OpKind,
    pub key: Vec<u8>,
    /// `?encoding=base64`: values as base64 even when they are JSON.
    pub force_base64: bool,
    /// What the request's credentials allow; one dispatcher cycle runs
    /// requests of one grant.
    pub grant: Grant,
}

/// What became of a request offered to the queue.
pub enum Prepared {
    /// A single-key request and its operation, to queue.
    Queued(KeyRequest, CacheOperation),
    /// Refused before reaching the dispatcher (bad query, credentials,
    /// body or size): this is its answer.
    Answered(Reply),
    /// Another endpoint: [`super::handler::handle`] runs it alone.
    Other,
}

/// The operation of a single-key request, or why there is none.
pub fn prepare(rt: &ShardRuntime, head: &RequestHead, body: &[u8]) -> Prepared {
    let Ok(route @ Route::Key(_)) = routes::resolve(&head.method, &head.path) else {
        return Prepared::Other;
    };
    let grant = match grant_for(rt, head, &route) {
        Ok(grant) => grant,
        Err(reply) => return Prepared::Answered(reply),
    };
    let Route::Key(key) = route else {
        return Prepared::Other;
    };
    let refused = |failure: Failure| Prepared::Answered(failure_reply(head, failure));
    let query = match Query::parse(head.query.as_deref()) {
        Ok(query) => query,
        Err(e) => return refused((e, None, "")),
    };
    let force_base64 = match query.force_base64() {
        Ok(force) => force,
        Err(e) => return refused((e, None, "")),
    };
    let (kind, op) = match key_operation(head, body, &key, &query) {
        Ok(op) => op,
        Err(failure) => return refused(failure),
    };
    let op = CacheOperation {
        correlation_id: head.correlation_id.clone().unwrap_or_default(),
        ..op
    };
    let max = rt.shard.limits().max_frame_bytes;
    if prost::Message::encoded_len(&op) > max {
        let e = RestError::of(
            Status::FrameTooLarge,
            format!("an operation is larger than {max} bytes"),
        );
        return refused((e, Some(key), kind.name()));
    }
    let request = KeyRequest {
        kind,
        key,
        force_base64,
        grant,
    };
    Prepared::Queued(request, op)
}

/// Appends the frame of `op` to `frames`.
pub fn queue_frame(op: &CacheOperation, frames: &mut Vec<u8>) {
    frames.reserve(prost::Message::encoded_len(op) + FRAME_HEADER_BYTES);
    encode_frame(op, frames);
}

/// The operation of a single-key request: `set` for PUT, `delete` for
/// DELETE, `get` for GET and HEAD.
pub fn key_operation(
    head: &RequestHead,
    body: &[u8],
    key: &[u8],
    query: &Query,
) -> Result<(OpKind, CacheOperation), Failure> {
    Ok(match head.method {
        Method::Put => {
            let op = request::put_operation(key, body, head.content_type.as_deref(), query)
                .map_err(|e| (e, Some(key.to_vec()), "set"))?;
            (OpKind::Set, op)
        }
        Method::Delete => (OpKind::Delete, request::key_operation(OpKind::Delete, key)),
        _ => (OpKind::Get, request::key_operation(OpKind::Get, key)),
    })
}

/// The answer to a single-key request. `secret`: the response holds the
/// plaintext of an encrypted value, zeroed once rendered.
pub fn key_answer(request: &KeyRequest, head: &RequestHead, resp: CacheResponse, secret: bool) -> Reply {
    let wants_octets = head.accept.as_deref().is_some_and(|a| a.contains(OCTETS));
    let reply = if request.kind == OpKind::Get && resp.status == 0 && wants_octets {
        Reply {
            status: 200,
            content_type: OCTETS,
            body: resp.data.to_vec(),
            header: None,
        }
    } else {
        match answer(request.kind, &resp, request.force_base64, Some(&request.key)) {
            Ok(reply) => reply,
            Err(failure) => failure_reply(head, failure),
        }
    };
    if secret {
        wipe_response(resp);
    }
    reply
}
