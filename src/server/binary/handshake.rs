//! The first frame of a connection: a `CacheConnection`, answered with the
//! shard map a shard-aware client needs.

use std::time::Duration;

use prost::Message;

use crate::auth::Grant;
use crate::frame::encode_frame;
use crate::frame::{check_frame, FrameError, FrameStatus, FRAME_HEADER_BYTES, HANDSHAKE_MAX_FRAME_BYTES};
use crate::ops::OpKind;
use crate::proto;
use crate::server::inbuf::InBuf;
use crate::server::tls::Transport;
use crate::server::ShardRuntime;
use crate::Status;

/// Time a client has, from connect, to send its `CacheConnection`.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Longest `service_id` accepted.
pub const MAX_SERVICE_ID_BYTES: usize = 128;

pub enum HandshakeOutcome {
    /// The answer is in `out`; go on serving.
    Accepted(Session),
    /// An error answer is in `out`; send it and close.
    Refused,
    /// The peer went away.
    Gone,
}

/// What the handshake settled for the rest of the connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// What the `auth_token` allows (everything when auth is off).
    pub grant: Grant,
    /// `options.compression` / `options.encryption` of the handshake:
    /// applied to every write of the connection.
    pub compression: bool,
    pub encryption: bool,
    /// `options.consistency` of the handshake (`b""`, `b"strong"` or
    /// `b"eventual"`): the consistency of every request that gives none.
    pub consistency: &'static [u8],
    /// The client's `service_id` and `correlation_id` (metrics labels and
    /// events).
    pub service_id: String,
    pub correlation_id: String,
}

/// Reads and checks the handshake, leaving the answer in `out`.
pub async fn run<S: Transport>(
    rt: &ShardRuntime,
    stream: &mut S,
    inbuf: &mut InBuf,
    out: &mut Vec<u8>,
) -> HandshakeOutcome {
    enum Read {
        Frame(usize),
        Gone,
        Late,
        Bad(FrameError),
    }
    let read_frame = async {
        loop {
            match check_frame(inbuf.data(), HANDSHAKE_MAX_FRAME_BYTES) {
                Ok(FrameStatus::Complete { len }) => return Read::Frame(len),
                Ok(FrameStatus::Incomplete { needed }) => {
                    match inbuf
                        .read_from(stream, needed.unwrap_or(FRAME_HEADER_BYTES))
                        .await
                    {
                        Ok(0) | Err(_) => return Read::Gone,
                        Ok(_) => {}
                    }
                }
                Err(e) => return Read::Bad(e),
            }
        }
    };
    let deadline = async {
        glommio::timer::sleep(HANDSHAKE_DEADLINE).await;
        Read::Late
    };
    let len = match futures_lite::future::or(read_frame, deadline).await {
        Read::Frame(len) => len,
        Read::Gone => return HandshakeOutcome::Gone,
        Read::Late => return refuse(out, Status::Handshake, "no CacheConnection within 5 seconds"),
        Read::Bad(FrameError::LooksLikeHttp) => {
            return refuse(
                out,
                Status::FrameTooLarge,
                "an HTTP request was sent to the binary port",
            );
        }
        Read::Bad(e) => {
            return refuse(
                out,
                Status::FrameTooLarge,
                &format!("handshake frame too large: {e}"),
            )
        }
    };
    let body = &inbuf.data()[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    let outcome = match proto::CacheConnection::decode(body) {
        Ok(hello) => answer(rt, &hello, out),
        Err(_) => refuse(
            out,
            Status::Handshake,
            "the first frame must be a CacheConnection",
        ),
    };
    inbuf.consume(FRAME_HEADER_BYTES + len);
    outcome
}

fn answer(rt: &ShardRuntime, hello: &proto::CacheConnection, out: &mut Vec<u8>) -> HandshakeOutcome {
    let id = hello.service_id.as_bytes();
    if OpKind::parse(id).is_some() {
        return refuse(
            out,
            Status::Handshake,
            "expected a CacheConnection first, got what looks like a CacheOperation",
        );
    }
    if id.is_empty()
        || id.len() > MAX_SERVICE_ID_BYTES
        || !id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(b))
    {
        return refuse(
            out,
            Status::Handshake,
            "service_id must be 1-128 characters of A-Z a-z 0-9 _ - . :",
        );
    }
    if hello.protocol_version > 1 {
        return refuse(
            out,
            Status::Handshake,
            "unsupported protocol_version (this server speaks 1)",
        );
    }
    if let Some(options) = &hello.options {
        if !matches!(options.consistency.as_str(), "" | "strong" | "eventual") {
            return refuse(
                out,
                Status::Handshake,
                "options.consistency must be \"strong\" or \"eventual\"",
            );
        }
    }
    // ---- security (issue 5): credentials and connection-wide codec options ----
    let (compression, encryption) = hello
        .options
        .as_ref()
        .map_or((false, false), |o| (o.compression, o.encryption));
    if encryption && !rt.shard.can_encrypt() {
        return refuse(out, Status::Malformed, crate::codec::CodecError::NoKey.message());
    }
    let grant = match rt
        .auth
        .authenticate(hello.auth_token.as_bytes(), Some(&hello.service_id))
    {
        Ok(grant) => grant,
        Err(e) => {
            return refuse(
                out,
                Status::InvalidCredentials,
                &format!("invalid credentials: {e}"),
            )
        }
    };
    // ---- end of security ----
    let info = &rt.server;
    let ownership = rt.shard.ownership();
    let response = proto::CacheResponse {
        status: 0,
        correlation_id: hello.correlation_id.clone(),
        handshake: Some(proto::Handshake {
            shard_id: rt.shard.id() as u32,
            shard_count: rt.shard.count() as u32,
            shard_ports: info.shard_ports.iter().map(|&p| u32::from(p)).collect(),
            hash: "xxh3_64".into(),
            hash_seed: rt.shard.seed(),
            server_version: crate::SERVER_VERSION.into(),
            max_frame_bytes: rt.shard.limits().max_frame_bytes as u32,
            max_item_bytes: rt.shard.limits().max_item_bytes as u32,
            cluster_epoch: ownership.as_ref().map_or(0, |o| o.epoch),
            nodes: ownership.as_ref().map(|o| o.nodes.clone()).unwrap_or_default(),
            node_index: ownership.as_ref().and_then(|o| o.me).map_or(0, u32::from),
            slot_primary: ownership
                .as_ref()
                .map(|o| o.primary.iter().map(|&p| u32::from(p)).collect())
                .unwrap_or_default(),
        }),
        ..Default::default()
    };
    encode_frame(&response, out);
    let consistency: &'static [u8] = match hello.options.as_ref().map(|o| o.consistency.as_str()) {
        Some("strong") => b"strong",
        Some("eventual") => b"eventual",
        _ => b"",
    };
    HandshakeOutcome::Accepted(Session {
        grant,
        compression,
        encryption,
        consistency,
        service_id: hello.service_id.clone(),
        correlation_id: hello.correlation_id.clone(),
    })
}

fn refuse(out: &mut Vec<u8>, status: Status, message: &str) -> HandshakeOutcome {
    let response = proto::CacheResponse {
        status: status.code_number(),
        data: message.as_bytes().to_vec().into(),
        ..Default::default()
    };
    encode_frame(&response, out);
    HandshakeOutcome::Refused
}
