//! Maps from peers (docs/cluster.md, "Membership"). A node installs maps
//! from the KV bucket: a subscription to the key's subject brings each new
//! one, and a read every tick covers a missed message. While JetStream
//! elects a new leader for the bucket (one server of a NATS cluster down),
//! reads fail for seconds, and a node whose subscription missed the last
//! map (its connection was to the server that died) kept running an older
//! one: it answered CACHE_013 naming the old owner, which sent the client
//! back. So a node that hears a heartbeat naming a newer epoch than its own
//! asks that peer, on `dnd.cluster.<name>.map.<peer>`, for the map it runs,
//! and installs it (a map is only ever installed over a lower epoch). A
//! map from a peer renews no lease: only a read of the bucket does.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;

use super::Agent;

/// Header of a map's answer: the KV revision the peer holds it at (for the
/// next compare-and-set).
const REVISION: &str = "Dnd-Revision";

/// At most one ask per this.
const ASK_EVERY: Duration = Duration::from_millis(200);

/// An ask unanswered within this is dropped (the next heartbeat asks again).
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// A peer's answer: its map (JSON) and revision.
pub(super) struct Relayed {
    pub body: Bytes,
    pub revision: u64,
}

/// The subject node `node` of cluster `name` answers map asks on.
pub(super) fn subject(name: &str, node: &str) -> String {
    format!("dnd.cluster.{name}.map.{node}")
}

impl Agent {
    /// A peer asks for the map this node runs.
    pub(super) async fn serve_map(&self, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let Some((map, revision)) = self.current.as_ref() else {
            return;
        };
        let Ok(body) = serde_json::to_vec(&**map) else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(REVISION, revision.to_string().as_str());
        let _ = self
            .client
            .publish_with_headers(reply, headers, Bytes::from(body))
            .await;
    }

    /// A heartbeat of `peer` named map `epoch`: if that is newer than this
    /// node's, asks the peer for it (in a task; the answer comes back to
    /// [`Agent::relayed`]).
    pub(super) fn ask_peer_for_map(&mut self, peer: &str, epoch: u64) {
        let mine = self.current.as_ref().map_or(0, |(m, _)| m.epoch);
        if epoch <= mine || self.relay_asked.is_some_and(|at| at.elapsed() < ASK_EVERY) {
            return;
        }
        self.relay_asked = Some(Instant::now());
        let client = self.client.clone();
        let subject = subject(&self.config.name, peer);
        let answers = self.relays.clone();
        tokio::spawn(async move {
            if let Ok(Ok(msg)) =
                tokio::time::timeout(ASK_TIMEOUT, client.request(subject, Bytes::new())).await
            {
                let revision = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(REVISION))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                let _ = answers.send(Relayed {
                    body: msg.payload,
                    revision,
                });
            }
        });
    }

    /// A peer's map: installed if newer.
    pub(super) async fn relayed(&mut self, relayed: Relayed) {
        self.seen(&relayed.body, relayed.revision);
        self.follow().await;
    }
}
