//! One binary-protocol connection: the handshake, then cycles of
//! read whole frames → [`Dispatcher::run`] → one write of the answers.

use std::rc::Rc;

use futures_lite::AsyncWriteExt;

use super::handshake::{self, HandshakeOutcome};
use crate::frame::{check_frame, FrameStatus, FRAME_HEADER_BYTES};
use crate::server::dispatch::observe::ConnIdentity;
use crate::server::dispatch::Dispatcher;
use crate::server::inbuf::InBuf;
use crate::server::output::send_answers;
use crate::server::tls::Transport;
use crate::server::uring::UringStream;
use crate::server::ShardRuntime;

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

    let mut cycle = Dispatcher::with_output(rt.shard.count(), out);
    let output = rt.server.output;
    cycle.set_max_output(output.max_bytes);
    cycle.set_grant(session.grant);
    cycle.set_write_options(session.compression, session.encryption);
    cycle.set_consistency(session.consistency);
    cycle.set_identity(ConnIdentity::new(
        &rt.shard,
        &session.service_id,
        session.correlation_id.as_bytes(),
    ));
    let mut shutdown = rt.shutdown.wait();
    let max_frame = rt.shard.limits().max_frame_bytes;
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
        // No read until every answer is written: a client that does not
        // read holds one cycle's answers, about `--max-output-bytes`.
        let consumed = cycle.run(&rt, inbuf.data()).await;
        let mut secret = cycle.held_secret();
        let mut sent = true;
        loop {
            if send_answers(&rt.shard, &output, &mut stream, cycle.output())
                .await
                .is_err()
            {
                sent = false;
                break;
            }
            cycle.written();
            if !cycle.has_more() {
                break;
            }
            cycle.resume(&rt, inbuf.data()).await;
            secret |= cycle.held_secret();
        }
        if secret {
            inbuf.wipe_front(consumed);
        }
        inbuf.consume(consumed);
        if !sent {
            break;
        }
        inbuf.shrink_if_idle();
        if cycle.must_close() || rt.shard.is_draining() {
            break;
        }
    }
    let _ = stream.close().await;
}
