//! REST requests → operations → the connection's [`Dispatcher`] (the same
//! routing, forwarding and merging as the binary protocol) → answers.

use prost::Message;
use serde_json::json;

use super::key::{key_answer, key_operation, KeyRequest};
use crate::frame::{declared_len, encode_frame, FRAME_HEADER_BYTES};
use crate::ops::OpKind;
use crate::proto::{CacheOperation, CacheResponse};
use crate::protocol::http::RequestHead;
use crate::protocol::rest::request::{self, BatchItem};
use crate::protocol::rest::response;
use crate::protocol::rest::{routes, Query, RestError, Route};
use crate::server::dispatch::Dispatcher;
use crate::server::{ShardRuntime, StopHandle};
use crate::time::unix_now_us;
use crate::Status;

pub const JSON: &str = "application/json";
pub(super) const OCTETS: &str = "application/octet-stream";

/// A whole answer.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// One more header: `Allow` of a 405, `Location` of a 307.
    pub header: Option<(&'static str, String)>,
}

/// What the connection sends back.
pub enum Outcome {
    Reply(Reply),
    /// A batch: the connection streams its answer, cycle by cycle.
    Batch(BatchJob),
}

/// A parsed batch, ready to run.
pub struct BatchJob {
    pub items: Vec<BatchItem>,
    /// One operation frame per item.
    pub frames: Vec<u8>,
    pub force_base64: bool,
}

fn now_ms() -> u64 {
    unix_now_us() / 1000
}

/// An ICD 8.2 error answer.
pub fn error_reply(http: u16, status: Status, message: &str, key: Option<&[u8]>, operation: &str) -> Reply {
    Reply {
        status: http,
        content_type: JSON,
        body: response::error_body(status, message, key, operation, now_ms()),
        header: None,
    }
}

fn rest_error(e: RestError, key: Option<&[u8]>, operation: &str) -> Outcome {
    Outcome::Reply(error_reply(e.http_status, e.status, &e.message, key, operation))
}

fn json_reply(status: u16, body: Vec<u8>) -> Outcome {
    Outcome::Reply(Reply {
        status,
        content_type: JSON,
        body,
        header: None,
    })
}

/// Answers one request.
pub async fn handle(rt: &ShardRuntime, d: &mut Dispatcher, head: &RequestHead, body: &[u8]) -> Outcome {
    let route = match routes::resolve(&head.method, &head.path) {
        Ok(route) => route,
        Err(routes::RouteError::NotFound) => {
            let e = RestError::of(Status::UnknownOperation, format!("no endpoint {}", head.path));
            return rest_error(
                RestError {
                    http_status: 404,
                    ..e
                },
                None,
                "",
            );
        }
        Err(routes::RouteError::MethodNotAllowed { allow }) => {
            let message = format!("{} is not allowed here (allowed: {allow})", head.method.as_str());
            let mut reply = error_reply(405, Status::UnknownOperation, &message, None, "");
            reply.header = Some(("Allow", allow.to_string()));
            return Outcome::Reply(reply);
        }
        Err(routes::RouteError::BadEncoding(message)) => {
            return rest_error(RestError::malformed(message), None, "")
        }
    };
    let query = match Query::parse(head.query.as_deref()) {
        Ok(q) => q,
        Err(e) => return rest_error(e, None, ""),
    };
    if let Err(reply) = authorize(rt, d, head, &route) {
        return Outcome::Reply(reply);
    }
    match handle_route(rt, d, head, body, route, &query).await {
        Ok(outcome) => outcome,
        Err(failure) => Outcome::Reply(failure_reply(head, failure)),
    }
}

pub(super) type Failure = (RestError, Option<Vec<u8>>, &'static str);

/// The `limit` of a pattern request (already checked to be a number).
fn op_limit(query: &Query) -> u32 {
    query.number("limit").ok().flatten().unwrap_or(0)
}

/// Every other node's part of a REST `pattern` (their primary slots'
/// keys), asked at once; the first that fails fails the request.
async fn peer_patterns(head: &RequestHead, peers: Vec<String>) -> Result<Vec<serde_json::Value>, RestError> {
    let query = head.query.as_deref().map_or(String::new(), |q| format!("{q}&"));
    let target = format!("{}?{query}{}", head.path, super::peers::NODE_SCOPE);
    let asks: Vec<_> = peers
        .into_iter()
        .map(|addr| {
            let (target, bearer) = (target.clone(), head.bearer.clone());
            glommio::spawn_local(
                async move { super::peers::get_data(&addr, &target, bearer.as_deref()).await },
            )
        })
        .collect();
    let mut parts = Vec::with_capacity(asks.len());
    for ask in asks {
        parts.push(
            ask.await.map_err(|e| {
                RestError::of(Status::Unavailable, format!("pattern across the cluster: {e}"))
            })?,
        );
    }
    Ok(parts)
}

/// The ICD 8.2 answer of a failed request (307 for a key another node owns).
pub(super) fn failure_reply(head: &RequestHead, (e, key, op): Failure) -> Reply {
    if e.status == Status::Moved {
        return moved(&e, head, key.as_deref(), op);
    }
    error_reply(e.http_status, e.status, &e.message, key.as_deref(), op)
}

/// A key of another node's slot (docs/cluster.md): 307 to the same path
/// on that node's REST port, with the ICD 8.2 body naming CACHE_013.
fn moved(e: &RestError, head: &RequestHead, key: Option<&[u8]>, operation: &str) -> Reply {
    let target: serde_json::Value = serde_json::from_str(&e.message).unwrap_or_default();
    let mut reply = error_reply(307, Status::Moved, &e.message, key, operation);
    if let Some(http) = target["moved"]["http"].as_str() {
        let query = head.query.as_deref().map_or(String::new(), |q| format!("?{q}"));
        reply.header = Some(("Location", format!("http://{http}{}{query}", head.path)));
    }
    reply
}

// ---- security (issue 5): credentials of each request ----

/// Sets the dispatcher's grant from `Authorization: Bearer` ([`grant_for`]).
fn authorize(rt: &ShardRuntime, d: &mut Dispatcher, head: &RequestHead, route: &Route) -> Result<(), Reply> {
    let grant = grant_for(rt, head, route);
    d.set_grant(*grant.as_ref().unwrap_or(&crate::auth::Grant::NONE));
    grant.map(|_| ())
}

/// What a request may do. Health endpoints stay open; anything else needs
/// a valid token when auth is on (401 AUTH_001 without one); the permission
/// itself is checked where the operation is routed (403 AUTH_002).
pub(super) fn grant_for(
    rt: &ShardRuntime,
    head: &RequestHead,
    route: &Route,
) -> Result<crate::auth::Grant, Reply> {
    use crate::auth::Grant;
    if !rt.auth.enabled() {
        return Ok(Grant::UNRESTRICTED);
    }
    if matches!(route, Route::Live | Route::Ready | Route::CacheHealth) {
        return Ok(Grant::NONE);
    }
    let token = head.bearer.as_deref().unwrap_or_default();
    rt.auth.authenticate(token.as_bytes(), None).map_err(|e| {
        let message = format!("invalid credentials: {e}");
        error_reply(401, Status::InvalidCredentials, &message, None, "")
    })
}

/// Refuses an endpoint that does not go through the dispatcher (reload,
/// metrics) unless the request's grant has `need`.
fn require(d: &Dispatcher, need: crate::auth::Permissions, operation: &'static str) -> Result<(), Failure> {
    let grant = d.grant();
    let now = unix_now_us();
    if grant.allows(need, now) {
        return Ok(());
    }
    let (status, message) = grant.refusal(need, now);
    Err((RestError::of(status, message), None, operation))
}

// ---- end of security ----

async fn handle_route(
    rt: &ShardRuntime,
    d: &mut Dispatcher,
    head: &RequestHead,
    body: &[u8],
    route: Route,
    query: &Query,
) -> Result<Outcome, Failure> {
    let force_base64 = query.force_base64().map_err(|e| (e, None, ""))?;
    // The request's correlation id (ICD 1.1) goes with each of its
    // operations, into their answers and item events.
    let correlation_id = head.correlation_id.as_deref().unwrap_or_default();
    let with_id = |op: CacheOperation| CacheOperation {
        correlation_id: correlation_id.into(),
        ..op
    };
    match route {
        Route::Key(key) => {
            let (kind, op) = key_operation(head, body, &key, query)?;
            let resp = execute(rt, d, &with_id(op))
                .await
                .map_err(|e| (e, Some(key.clone()), kind.name()))?;
            let request = KeyRequest {
                kind,
                key,
                force_base64,
                grant: d.grant(),
            };
            Ok(Outcome::Reply(key_answer(&request, head, resp, d.held_secret())))
        }
        Route::Batch => {
            let (items, frames) =
                request::batch_operations(body, correlation_id).map_err(|e| (e, None, "batch"))?;
            check_frames(rt, &frames).map_err(|e| (e, None, "batch"))?;
            Ok(Outcome::Batch(BatchJob {
                items,
                frames,
                force_base64,
            }))
        }
        Route::Pattern(pattern) => {
            let node_only = match query.get("scope") {
                None => false,
                Some(b"node") => true,
                Some(_) => {
                    let e = RestError::malformed("scope must be node (or absent: the whole cluster)");
                    return Err((e, None, "pattern"));
                }
            };
            let op = request::pattern_operation(&pattern, query).map_err(|e| (e, None, "pattern"))?;
            let resp = execute(rt, d, &with_id(op))
                .await
                .map_err(|e| (e, None, "pattern"))?;
            if resp.status != 0 {
                return answer(OpKind::Pattern, &resp, false, Some(&pattern)).map(Outcome::Reply);
            }
            let mut data = response::pattern_data(&resp);
            if !node_only {
                if let Some(peers) = rt.shard.peer_http_addrs() {
                    let theirs = peer_patterns(head, peers)
                        .await
                        .map_err(|e| (e, None, "pattern"))?;
                    let limit = crate::validate::pattern_limit(op_limit(query));
                    super::peers::merge(&mut data, theirs, limit);
                }
            }
            Ok(json_reply(200, response::success_with(&data)))
        }
        Route::Flush | Route::Stats | Route::CacheHealth => {
            let kind = match route {
                Route::Flush => OpKind::Flush,
                Route::Stats => OpKind::Stats,
                _ => OpKind::Health,
            };
            let resp = execute(rt, d, &with_id(request::admin_operation(kind)))
                .await
                .map_err(|e| (e, None, kind.name()))?;
            let healthy =
                serde_json::from_slice::<serde_json::Value>(&resp.data).is_ok_and(|v| v["status"] == "ok");
            if kind == OpKind::Health && resp.status == 0 && !healthy {
                return Ok(json_reply(503, response::success_body(kind, &resp, false)));
            }
            answer(kind, &resp, false, None).map(Outcome::Reply)
        }
        Route::Reload => {
            require(d, crate::auth::CACHE_RELOAD, "reload")?;
            Ok(json_reply(200, response::success_with(&reload_report(rt).await)))
        }
        Route::Live => Ok(json_reply(
            200,
            json!({ "status": "live" }).to_string().into_bytes(),
        )),
        Route::Ready => Ok(readiness(rt)),
        Route::Metrics => {
            require(d, crate::auth::METRICS_READ, "stats")?;
            // Every shard's counters and histograms, merged; a shard that
            // does not answer within the deadline shows as down.
            let deadline = glommio::timer::sleep(METRICS_DEADLINE);
            let snapshot = rt.server.control.gather(deadline).await;
            Ok(Outcome::Reply(Reply {
                status: 200,
                content_type: METRICS_CONTENT_TYPE,
                body: crate::metrics::render_prometheus(&snapshot).into_bytes(),
                header: None,
            }))
        }
    }
}

/// A success body or the ICD error of `resp`.
pub(super) fn answer(
    kind: OpKind,
    resp: &CacheResponse,
    force_base64: bool,
    key: Option<&[u8]>,
) -> Result<Reply, Failure> {
    let status = Status::from_u32(resp.status).unwrap_or(Status::Unavailable);
    if status == Status::Ok {
        return Ok(Reply {
            status: 200,
            content_type: JSON,
            body: response::success_body(kind, resp, force_base64),
            header: None,
        });
    }
    let message = String::from_utf8_lossy(&resp.data);
    Err((
        RestError::of(status, message),
        key.map(<[u8]>::to_vec),
        kind.name(),
    ))
}

/// 200 once every shard serves (start() returns only then) and while the
/// server is not stopping and every shard's executor runs; else 503.
fn readiness(rt: &ShardRuntime) -> Outcome {
    use std::sync::atomic::Ordering;
    let stopping = rt.server.stopping.load(Ordering::Relaxed) || rt.shard.is_draining();
    let started = rt.server.started.load(Ordering::Acquire);
    let alive = StopHandle(rt.server.clone()).all_shards_alive(READY_HEARTBEAT_AGE);
    let (status, state) = match (started, stopping, alive) {
        (_, true, _) => (503, "draining"),
        (false, _, _) => (503, "starting"),
        (true, false, false) => (503, "shard_stalled"),
        (true, false, true) => (200, "ready"),
    };
    let body = json!({ "status": state, "shards": rt.shard.count() });
    json_reply(status, body.to_string().into_bytes())
}

/// A shard whose executor has not run for this long makes the server
/// not ready (heartbeats come every 50 ms).
const READY_HEARTBEAT_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Content type of the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the shards' snapshots.
const METRICS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /api/v2/cache/reload`: re-reads the configuration (see
/// [`crate::reload`]) and reports what changed and what needs a restart.
async fn reload_report(rt: &ShardRuntime) -> serde_json::Value {
    match rt.server.control.reloader.get() {
        Some(reloader) => serde_json::to_value(reloader.reload().await).unwrap_or_default(),
        None => json!({
            "reloaded": [],
            "requires_restart": [],
            "errors": ["this server was started without a configuration to reload"],
            "shards_applied": 0
        }),
    }
}

/// Refuses an operation frame the dispatcher would treat as a stream error.
fn check_frames(rt: &ShardRuntime, frames: &[u8]) -> Result<(), RestError> {
    let max = rt.shard.limits().max_frame_bytes;
    let mut pos = 0;
    while let Some(len) = frames.get(pos..).and_then(declared_len) {
        if len > max {
            return Err(RestError::of(
                Status::FrameTooLarge,
                format!("an operation is larger than {max} bytes"),
            ));
        }
        pos += FRAME_HEADER_BYTES + len;
    }
    Ok(())
}

/// Runs one operation through the dispatcher and decodes its answer.
pub async fn execute(
    rt: &ShardRuntime,
    d: &mut Dispatcher,
    op: &CacheOperation,
) -> Result<CacheResponse, RestError> {
    let mut frame = Vec::with_capacity(op.encoded_len() + FRAME_HEADER_BYTES);
    encode_frame(op, &mut frame);
    check_frames(rt, &frame)?;
    d.clear_output();
    d.run(rt, &frame).await;
    let answers = response_frames(d.output());
    let first = answers.into_iter().next();
    first.ok_or_else(|| RestError::of(Status::Unavailable, "no answer from the shard"))
}

/// Zeroes the value of an answer that held the plaintext of an encrypted
/// value, before its memory is freed (issue 19).
pub fn wipe_response(resp: CacheResponse) {
    if let Ok(mut data) = resp.data.try_into_mut() {
        zeroize::Zeroize::zeroize(data.as_mut());
    }
    for item in resp.items {
        if let Ok(mut data) = item.data.try_into_mut() {
            zeroize::Zeroize::zeroize(data.as_mut());
        }
    }
}

/// Decodes the response frames of a dispatcher's output.
pub fn response_frames(output: &[u8]) -> Vec<CacheResponse> {
    let mut answers = Vec::new();
    let mut pos = 0;
    while let Some(len) = output.get(pos..).and_then(declared_len) {
        let body = output.get(pos + FRAME_HEADER_BYTES..pos + FRAME_HEADER_BYTES + len);
        answers.push(
            body.and_then(|b| CacheResponse::decode(b).ok())
                .unwrap_or_else(|| CacheResponse {
                    status: Status::Unavailable.code_number(),
                    data: "undecodable answer".into(),
                    ..Default::default()
                }),
        );
        pos += FRAME_HEADER_BYTES + len;
    }
    answers
}
