//! Replication over NATS (docs/cluster.md, "Replication"): the agent
//! drains its shards' replication queues, sends each replica node its
//! records on `dnd.repl.<cluster>.<node>` (one message per drain, split at
//! [`MAX_MESSAGE`]), with the source node, the map epoch and a sequence
//! number per (source, target) stream; the replica's agent checks them,
//! hands the records to the shards that own their keys, and acknowledges
//! the sequence on `dnd.repl.<cluster>.ack.<source>`. The oldest
//! unacknowledged message of a stream is the replication lag.
//!
//! - **Strong writes.** A handover that carries one is tracked until every
//!   message holding its records is acknowledged (verdict `true` to its
//!   shard), refused, or [`STRONG_TIMEOUT`] passes (`false`).
//! - **Epochs.** A replica refuses (and answers `refused` to) the records
//!   of a message written under an older map whose writer was not the
//!   slot's primary under that map: a paused old primary cannot complete a
//!   write after its replacement took over.
//! - **Catch-up.** A replica that gains slots of a primary (a new map, a
//!   restart) or sees a sequence gap asks that primary for a full copy of
//!   the slots it replicates (`dnd.repl.<cluster>.sync.<primary>`). The
//!   primary's shards stream their items into the same ordered stream as
//!   live writes and end with a marker; the replica is in sync with that
//!   primary once every shard's marker arrived.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use tracing::warn;

use super::slots::{slot_of, SlotMap, NO_NODE};
use crate::control::ControlPlane;
use crate::key::key_hash;
use crate::shard::replication::{records, ReplQueue, ReplRecord, OP_COPY_DONE, OP_FLUSH, STRONG_TIMEOUT};

mod acks;
mod backlog;
mod catchup;
mod flush;
mod receive;

/// Header of a replication message: the sending node's id.
const SOURCE: &str = "Dnd-Source";
/// Header: the epoch of the sender's map.
const EPOCH: &str = "Dnd-Epoch";
/// Header: the message's sequence number in its (source, target) stream.
const SEQ: &str = "Dnd-Seq";
/// Header: which stream the sequence counts in (the source's run and a
/// counter of the streams it opened): a new stream starts again at 1.
const STREAM: &str = "Dnd-Stream";

/// Largest message body (below NATS' default 1 MiB `max_payload`); a
/// drain's records for one target are split at record boundaries.
pub const MAX_MESSAGE: usize = 512 << 10;

/// How long the replica's agent keeps trying to queue records for a busy
/// shard before it gives up (records lost: a gap, then a full copy).
const SHARD_QUEUE_PATIENCE: Duration = Duration::from_secs(2);

/// A full copy asked for and not finished within this is asked again.
const COPY_RETRY: Duration = Duration::from_secs(20);

/// Where records go: the target node and the epoch they were written under.
type Dest = (String, u64);

/// Maps kept to read handovers written under an older map than the agent's.
const KEPT_MAPS: usize = 8;

/// Bytes of handovers one drain takes from each shard at most; the rest
/// waits for the next drain (a millisecond later), so that a full copy in
/// flight never holds the agent for long.
const DRAIN_BYTES_PER_SHARD: usize = 4 << 20;

/// See [`Replicator::unacked_bytes`].
const UNACKED_FORGOTTEN: Duration = Duration::from_secs(3);

/// One outgoing stream (to a replica node).
#[derive(Default)]
struct Outgoing {
    /// This stream's id ([`STREAM`]).
    id: String,
    next: u64,
    /// Sequences sent and not acknowledged yet, with when they were sent
    /// and their bytes.
    unacked: VecDeque<(u64, Instant, usize)>,
    /// The last messages sent, for a replica that missed some
    /// ([`backlog`]): sequence, epoch, body.
    kept: VecDeque<(u64, u64, Bytes)>,
    kept_bytes: usize,
    /// When the oldest unacknowledged message was last sent again.
    retransmitted: Option<Instant>,
}

/// One incoming stream (from a primary node).
#[derive(Default)]
struct Incoming {
    /// The source's stream ([`STREAM`]) that `last` counts in.
    stream: String,
    last: u64,
    /// Messages were missed from this sequence on and asked again, when.
    resend: Option<(u64, Instant)>,
    /// Holds every item of the slots it replicates for this source.
    synced: bool,
    /// The full copy in progress: id, shard markers seen, when asked.
    copy: Option<(u64, usize, Instant)>,
}

/// A strong handover waiting for its acknowledgements.
struct StrongWait {
    shard: usize,
    seq: u64,
    /// (target node, message sequence) still to be acknowledged.
    waiting: Vec<(String, u64)>,
    deadline: Instant,
}

/// The replication streams of one node, both directions.
pub struct Replicator {
    /// Acknowledgements, copy requests: the agent's connection, shared
    /// with heartbeats and the map.
    client: Client,
    /// Records and flushes: a connection of their own, so that a full copy
    /// in flight never delays a heartbeat or an acknowledgement.
    data: Client,
    name: String,
    me: String,
    /// This run of the node ([`super::slots::NodeInfo::incarnation`]).
    incarnation: u64,
    queues: Vec<ReplQueue>,
    control: Arc<ControlPlane>,
    outgoing: HashMap<String, Outgoing>,
    incoming: HashMap<String, Incoming>,
    strong: Vec<StrongWait>,
    /// Verdicts to hand to each shard.
    verdicts: Vec<Vec<(u64, bool)>>,
    next_copy: u64,
    /// A map was followed (before that, nothing says what it replicates).
    followed: bool,
    /// The epoch of the map followed last.
    followed_epoch: u64,
    /// Full copies asked under a map newer than this node's, kept until it
    /// installs that map.
    deferred_copies: Vec<Vec<u8>>,
    /// Full copies being sent, per replica node: the copy's id and the
    /// shards whose end marker has not been sent yet.
    feeding: HashMap<String, (u64, usize)>,
    /// Nodes whose last full copy was sent whole: from then on, strong
    /// writes of the slots they learn wait for them too
    /// (docs/cluster.md, "Consistency").
    fed: std::collections::HashSet<String>,
    /// The last few maps, newest last: handovers name nodes by their index
    /// in the map they were written under.
    maps: VecDeque<Arc<SlotMap>>,
    /// Recent flushes (markers received, flushes run and announced).
    flush_log: flush::Flushes,
    /// Messages refused for an older epoch, sequence gaps seen, full copies
    /// served to replicas and received.
    pub stale_refused: u64,
    pub gaps: u64,
    pub copies_served: u64,
    pub copies_received: u64,
    /// Gaps repaired from a primary's backlog, and resends served.
    pub resends_received: u64,
    pub resends_served: u64,
    /// Outgoing streams opened (numbers their ids).
    streams_opened: u64,
    /// Bytes per second a full copy this node serves may send (0: unpaced).
    catchup_rate: u64,
    /// Microseconds from sending a message to its acknowledgement (the
    /// replication lag as each message saw it; `health` shows quantiles).
    acked_after_us: hdrhistogram::Histogram<u64>,
}

impl Replicator {
    /// The streams of node `me` (its run `incarnation`), over the agent's
    /// connection and a `data` connection of their own.
    pub fn new(
        (client, data): (Client, Client),
        config: &crate::config::ClusterConfig,
        me: &str,
        incarnation: u64,
        queues: Vec<ReplQueue>,
        control: Arc<ControlPlane>,
    ) -> Self {
        let shards = queues.len();
        Replicator {
            client,
            data,
            name: config.name.clone(),
            me: me.to_string(),
            incarnation,
            queues,
            control,
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            strong: Vec::new(),
            verdicts: vec![Vec::new(); shards],
            next_copy: crate::time::unix_now_us(),
            followed: false,
            maps: VecDeque::new(),
            flush_log: flush::Flushes::default(),
            followed_epoch: 0,
            deferred_copies: Vec::new(),
            feeding: HashMap::new(),
            fed: Default::default(),
            stale_refused: 0,
            gaps: 0,
            copies_served: 0,
            copies_received: 0,
            resends_received: 0,
            resends_served: 0,
            streams_opened: 0,
            catchup_rate: config.catchup_rate_mib << 20,
            acked_after_us: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                .expect("valid histogram bounds"),
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

    /// The subject replicas ask this node for full copies on.
    pub fn sync_requests(&self) -> String {
        format!("dnd.repl.{}.sync.{}", self.name, self.me)
    }

    /// Sends what the shards queued, one message (or more, split at
    /// [`MAX_MESSAGE`]) per target node; tracks strong handovers.
    /// Returns whether a shard had handed anything over.
    pub async fn drain(&mut self, map: &Arc<SlotMap>) -> bool {
        self.remember(map);
        // Per destination: the records.
        let mut per_target: HashMap<Dest, Vec<u8>> = HashMap::new();
        let mut strong: Vec<(usize, u64, Vec<Dest>)> = Vec::new();
        let mut announce = Vec::new();
        let mut lost = false;
        let mut took = false;
        // Out of `self` while drained (put back below), so that a copy's end
        // marker can mark its node fed before the next handover is read.
        let queues = std::mem::take(&mut self.queues);
        for (shard, queue) in queues.iter().enumerate() {
            let mut taken = 0;
            while taken < DRAIN_BYTES_PER_SHARD {
                let Some(handover) = queue.pop() else { break };
                took = true;
                taken += handover.records.len();
                lost |= handover.after_loss;
                let mut targets = Vec::new();
                // Indexes name nodes of the map the shard wrote under.
                let Some(written) = self
                    .maps
                    .iter()
                    .rev()
                    .find(|m| m.epoch == handover.epoch)
                    .cloned()
                else {
                    warn!(
                        shard,
                        epoch = handover.epoch,
                        "replication: records of a map long gone; dropped"
                    );
                    if handover.strong {
                        self.verdicts[shard].push((handover.seq, false));
                    }
                    continue;
                };
                let me = written.index_of(&self.me).map(|i| i as u16);
                // Learners get a copy of their slots' writes (strong writes
                // wait for a learner too once its full copy was sent whole).
                let learners = written.learner.iter().any(|&l| l != NO_NODE);
                for r in records(&handover.records) {
                    if r.op == OP_FLUSH {
                        // A shard flushed: its marker goes to every node
                        // that copies this node's slots, in order.
                        let Some(m) = flush::marker(&r) else { continue };
                        if m.origin.is_empty() && !announce.contains(&m.id) {
                            announce.push(m.id);
                        }
                        for t in self.marker_targets(&written) {
                            if let Some(node) = written.nodes.get(t as usize) {
                                let copy = ReplRecord { target: t, ..r };
                                copy.encode(per_target.entry((node.id.clone(), handover.epoch)).or_default());
                            }
                        }
                        continue;
                    }
                    let Some(node) = written.nodes.get(r.target as usize) else {
                        continue;
                    };
                    let key = (node.id.clone(), handover.epoch);
                    r.encode(per_target.entry(key.clone()).or_default());
                    if r.op == OP_COPY_DONE {
                        self.copy_sent(&node.id, r.key);
                    }
                    if learners && r.op != OP_COPY_DONE {
                        let learner = written.learner_of(slot_of(key_hash(r.key, written.seed)));
                        if learner != NO_NODE && learner != r.target && Some(learner) != me {
                            if let Some(l) = written.nodes.get(learner as usize) {
                                let mut copy = r;
                                copy.target = learner;
                                let lkey = (l.id.clone(), handover.epoch);
                                copy.encode(per_target.entry(lkey.clone()).or_default());
                                // A learner filled whole acknowledges the
                                // strong writes of its slots from now on:
                                // when it becomes the replica, it holds
                                // every strong write acknowledged before.
                                if handover.strong && self.fed.contains(&l.id) && !targets.contains(&lkey) {
                                    targets.push(lkey);
                                }
                            }
                        }
                    }
                    if handover.strong && !targets.contains(&key) {
                        targets.push(key);
                    }
                }
                if handover.strong {
                    strong.push((shard, handover.seq, targets));
                }
            }
        }
        self.queues = queues;
        if lost {
            // A shard dropped records (its queue was full): every replica
            // of this node sees a sequence gap and asks for a full copy.
            warn!("replication: a shard's queue overflowed; replicas resync");
            for stream in self.outgoing.values_mut() {
                stream.next += 1;
            }
        }
        for id in announce {
            if self.announce(id) {
                self.publish_flush(id).await;
            }
        }
        // Per target: the sequences sent this drain, or None if sending failed.
        let mut sent: HashMap<Dest, Option<Vec<u64>>> = HashMap::new();
        for ((node, epoch), body) in per_target {
            let mut seqs = Some(Vec::new());
            for chunk in split_records(&body, MAX_MESSAGE) {
                match self.publish(&node, epoch, Bytes::copy_from_slice(chunk)).await {
                    Some(seq) => {
                        if let Some(s) = seqs.as_mut() {
                            s.push(seq)
                        }
                    }
                    None => seqs = None,
                }
            }
            sent.insert((node, epoch), seqs);
        }
        let deadline = Instant::now() + STRONG_TIMEOUT;
        for (shard, seq, targets) in strong {
            let mut waiting = Vec::new();
            let mut ok = true;
            for t in targets {
                match sent.get(&t) {
                    Some(Some(seqs)) => waiting.extend(seqs.iter().map(|&s| (t.0.clone(), s))),
                    _ => ok = false,
                }
            }
            if ok {
                self.strong.push(StrongWait {
                    shard,
                    seq,
                    waiting,
                    deadline,
                });
            } else {
                self.verdicts[shard].push((seq, false));
            }
        }
        self.deliver_verdicts();
        took
    }

    /// A shard sent the end marker of copy `id` (its record key) to `node`;
    /// once every shard's is sent, the node is fed.
    fn copy_sent(&mut self, node: &str, id: &[u8]) {
        let Ok(id) = <[u8; 8]>::try_from(id).map(u64::from_le_bytes) else {
            return;
        };
        if let Some((copy, left)) = self.feeding.get_mut(node) {
            if *copy == id {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.feeding.remove(node);
                    self.fed.insert(node.to_string());
                }
            }
        }
    }

    /// Keeps `map` among the maps that name the nodes of handovers and of
    /// messages written under it (every map installed, not only those a
    /// shard wrote under: a replica judges a primary's late messages by
    /// the map they were written under).
    pub fn remember(&mut self, map: &Arc<SlotMap>) {
        if self.maps.iter().any(|m| m.epoch == map.epoch) {
            return;
        }
        let at = self
            .maps
            .iter()
            .position(|m| m.epoch > map.epoch)
            .unwrap_or(self.maps.len());
        self.maps.insert(at, map.clone());
        if self.maps.len() > KEPT_MAPS {
            self.maps.pop_front();
        }
    }

    /// Publishes one message to `node`; its sequence, or None on failure.
    async fn publish(&mut self, node: &str, epoch: u64, body: Bytes) -> Option<u64> {
        if !self.outgoing.contains_key(node) {
            self.streams_opened += 1;
            let id = format!("{}-{}", self.incarnation, self.streams_opened);
            let stream = Outgoing {
                id,
                next: 1,
                ..Default::default()
            };
            self.outgoing.insert(node.to_string(), stream);
        }
        let stream = self.outgoing.get_mut(node).expect("inserted above");
        let seq = stream.next;
        stream.next += 1;
        // Kept whether or not it leaves: a message lost on the way, or
        // never sent (NATS down), is resent from here.
        stream.keep(seq, epoch, body.clone());
        let headers = headers(&self.me, &stream.id, epoch, seq);
        let subject = format!("dnd.repl.{}.{}", self.name, node);
        let bytes = body.len();
        match self.data.publish_with_headers(subject, headers, body).await {
            Ok(()) => {
                stream.unacked.push_back((seq, Instant::now(), bytes));
                Some(seq)
            }
            Err(e) => {
                warn!(error = %e, target = %node, "replication: publish failed");
                None
            }
        }
    }
}

/// The headers of a replication message.
fn headers(me: &str, stream: &str, epoch: u64, seq: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(SOURCE, me);
    headers.insert(STREAM, stream);
    headers.insert(EPOCH, epoch.to_string().as_str());
    headers.insert(SEQ, seq.to_string().as_str());
    headers
}

/// `body` cut at record boundaries into pieces of at most `max` bytes (a
/// record larger than `max` travels alone).
fn split_records(body: &[u8], max: usize) -> Vec<&[u8]> {
    if body.len() <= max {
        return vec![body];
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for r in records(body) {
        let len = r.encoded_len();
        if at > start && at + len - start > max {
            pieces.push(&body[start..at]);
            start = at;
        }
        at += len;
    }
    if at > start {
        pieces.push(&body[start..at]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::replication::{ReplRecord, OP_SET};

    #[test]
    fn split_keeps_records_whole_and_in_order() {
        let mut body = Vec::new();
        for i in 0..100u32 {
            let key = format!("k{i}");
            ReplRecord {
                target: 1,
                op: OP_SET,
                options: 0,
                ttl_s: 0,
                version: u64::from(i),
                key: key.as_bytes(),
                value: &[7u8; 50],
            }
            .encode(&mut body);
        }
        let pieces = split_records(&body, 300);
        assert!(pieces.len() > 10);
        assert!(pieces.iter().all(|p| p.len() <= 300));
        let versions: Vec<u64> = pieces
            .iter()
            .flat_map(|p| records(p).map(|r| r.version))
            .collect();
        assert_eq!(versions, (0..100).collect::<Vec<_>>());
        assert_eq!(split_records(&body, 1 << 20), vec![&body[..]]);
    }
}
