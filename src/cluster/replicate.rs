//! Replication over NATS (docs/cluster.md, "Replication"): the agent
//! drains its shards' replication queues, sends each replica node its
//! records as one message per drain on `dnd.repl.<cluster>.<node>`, with
//! the source node, the map epoch and a sequence number per (source,
//! target) stream; the replica's agent checks them, hands the records to
//! the shards that own their keys, and acknowledges the sequence on
//! `dnd.repl.<cluster>.ack.<source>`. The oldest unacknowledged message
//! of a stream is the replication lag.
//!
//! A replica refuses a message of an older epoch than its map's (a paused
//! old primary cannot write into the new one) and counts a sequence gap
//! (records were lost: the replica is out of sync until a full copy,
//! stage 3 of issue 17).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use tracing::warn;

use super::slots::SlotMap;
use crate::control::ControlPlane;
use crate::key::{key_hash, owner_of};
use crate::shard::replication::{records, ReplQueue};
use crate::shard::ShardCommand;

/// Header of a replication message: the sending node's id.
const SOURCE: &str = "Dnd-Source";
/// Header: the epoch of the sender's map.
const EPOCH: &str = "Dnd-Epoch";
/// Header: the message's sequence number in its (source, target) stream.
const SEQ: &str = "Dnd-Seq";

/// The replication streams of one node, both directions.
pub struct Replicator {
    client: Client,
    name: String,
    me: String,
    queues: Vec<ReplQueue>,
    control: Arc<ControlPlane>,
    /// Per target node: the next sequence number and what it has not
    /// acknowledged yet (sequence, sent at).
    outgoing: HashMap<String, (u64, VecDeque<(u64, Instant)>)>,
    /// Per source node: the last sequence applied.
    incoming: HashMap<String, u64>,
    /// Messages refused for an older epoch, and sequence gaps seen.
    pub stale_refused: u64,
    pub gaps: u64,
}

impl Replicator {
    pub fn new(
        client: Client,
        name: &str,
        me: &str,
        queues: Vec<ReplQueue>,
        control: Arc<ControlPlane>,
    ) -> Self {
        Replicator {
            client,
            name: name.to_string(),
            me: me.to_string(),
            queues,
            control,
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            stale_refused: 0,
            gaps: 0,
        }
    }

    /// The subject this node receives its primaries' writes on.
    pub fn inbox(&self) -> String {
        format!("dnd.repl.{}.{}", self.name, self.me)
    }

    /// The subject this node receives acknowledgements on.
    pub fn acks(&self) -> String {
        format!("dnd.repl.{}.ack.{}", self.name, self.me)
    }

    /// Sends what the shards queued, one message per target node.
    pub async fn drain(&mut self, map: &SlotMap) {
        let mut per_target: HashMap<u16, Vec<u8>> = HashMap::new();
        for queue in &self.queues {
            while let Some(buffer) = queue.pop() {
                for r in records(&buffer) {
                    r.encode(per_target.entry(r.target).or_default());
                }
            }
        }
        for (target, body) in per_target {
            let Some(node) = map.nodes.get(target as usize) else {
                continue;
            };
            let (next, unacked) = self
                .outgoing
                .entry(node.id.clone())
                .or_insert((1, VecDeque::new()));
            let seq = *next;
            *next += 1;
            let mut headers = HeaderMap::new();
            headers.insert(SOURCE, self.me.as_str());
            headers.insert(EPOCH, map.epoch.to_string().as_str());
            headers.insert(SEQ, seq.to_string().as_str());
            let subject = format!("dnd.repl.{}.{}", self.name, node.id);
            match self
                .client
                .publish_with_headers(subject, headers, Bytes::from(body))
                .await
            {
                Ok(()) => unacked.push_back((seq, Instant::now())),
                Err(e) => warn!(error = %e, target = %node.id, "replication: publish failed"),
            }
        }
    }

    /// Applies a message of a primary: checks epoch and sequence, hands the
    /// records to their shards, acknowledges.
    pub async fn receive(&mut self, msg: &async_nats::Message, map: Option<&SlotMap>) {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let (Some(source), Some(epoch), Some(seq)) = (header(SOURCE), header(EPOCH), header(SEQ)) else {
            warn!("replication: a message without its headers");
            return;
        };
        let (Ok(epoch), Ok(seq)) = (epoch.parse::<u64>(), seq.parse::<u64>()) else {
            return;
        };
        let Some(map) = map else { return };
        if epoch < map.epoch {
            // An old primary's write after the map moved on: refused, and
            // not acknowledged.
            self.stale_refused += 1;
            return;
        }
        let last = self
            .incoming
            .entry(source.clone())
            .or_insert(seq.saturating_sub(1));
        if seq != *last + 1 {
            self.gaps += 1;
            warn!(%source, expected = *last + 1, seq, "replication: sequence gap (replica out of sync)");
        }
        *last = seq;
        let shards = self.control.shard_count();
        let mut per_shard: Vec<Vec<u8>> = vec![Vec::new(); shards];
        for r in records(&msg.payload) {
            let shard = owner_of(key_hash(r.key, map.seed), shards);
            r.encode(&mut per_shard[shard]);
        }
        for (shard, body) in per_shard.into_iter().enumerate() {
            if !body.is_empty() && self.control.send(shard, ShardCommand::Replicated(body)).is_err() {
                warn!(
                    shard,
                    "replication: shard queue full, records lost (replica out of sync)"
                );
                self.gaps += 1;
            }
        }
        let ack = format!("{} {seq}", self.me);
        let subject = format!("dnd.repl.{}.ack.{source}", self.name);
        let _ = self.client.publish(subject, Bytes::from(ack)).await;
    }

    /// An acknowledgement from a replica.
    pub fn acked(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let Some((from, seq)) = text.split_once(' ') else {
            return;
        };
        let Ok(seq) = seq.parse::<u64>() else { return };
        if let Some((_, unacked)) = self.outgoing.get_mut(from) {
            while unacked.front().is_some_and(|&(s, _)| s <= seq) {
                unacked.pop_front();
            }
        }
    }

    /// Seconds behind, per target node: the age of the oldest message it
    /// has not acknowledged (0 when it has them all).
    pub fn lag(&self) -> Vec<(String, f64)> {
        let now = Instant::now();
        let mut lag: Vec<(String, f64)> = self
            .outgoing
            .iter()
            .map(|(target, (_, unacked))| {
                let behind = unacked
                    .front()
                    .map_or(0.0, |&(_, at)| now.duration_since(at).as_secs_f64());
                (target.clone(), behind)
            })
            .collect();
        lag.sort_by(|a, b| a.0.cmp(&b.0));
        lag
    }
}
