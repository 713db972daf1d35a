//! A client's flush across the cluster (docs/cluster.md, "Flush").
//!
//! A flush has an id (the µs time of the request cycle that ran it, the
//! same on every shard of its node) and an origin node. The origin's shards
//! flush at once; its agent tells every other node
//! (`dnd.repl.<cluster>.flush`, body `<origin> <id>`), and each of them
//! flushes too. Every shard that flushes puts a marker into its node's
//! replication streams, after the writes it applied before the flush. A
//! replica that reaches a primary's marker removes its copies of that
//! primary shard's slots: a write the primary applied before it flushed
//! but that reached the replica after the replica flushed is removed there
//! too, and a write after the primary's flush (after the marker) is kept.
//!
//! When a primary's marker arrives before the flush message itself, the
//! replica's own flush spares that primary shard's copies (they already
//! hold only writes made after it).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{info, warn};

use super::Replicator;
use crate::cluster::slots::SlotMap;
use crate::shard::replication::ReplRecord;
use crate::shard::{FlushRule, ShardCommand};

/// Flushes remembered (markers received, flushes run).
const KEPT_FLUSHES: usize = 64;

/// A flush marker of a primary's shard.
pub(super) struct Marker<'a> {
    pub id: u64,
    /// The node whose client flushed (empty: the marker's sender).
    pub origin: &'a [u8],
    pub shard: u16,
    pub shards: u16,
}

/// Reads a flush marker (see `Shard::push_flush_marker`).
pub(super) fn marker<'a>(r: &ReplRecord<'a>) -> Option<Marker<'a>> {
    if r.key.len() < 8 || r.value.len() < 4 {
        return None;
    }
    Some(Marker {
        id: u64::from_le_bytes(r.key[..8].try_into().ok()?),
        origin: &r.key[8..],
        shard: u16::from_le_bytes([r.value[0], r.value[1]]),
        shards: u16::from_le_bytes([r.value[2], r.value[3]]),
    })
}

/// A flush: its origin node and id.
type FlushId = (String, u64);

/// A primary shard's marker received: the primary, its shard, its shard
/// count.
type MarkerSeen = (String, u16, u16);

/// What a node remembers of recent flushes.
#[derive(Default)]
pub(super) struct Flushes {
    /// (origin, id) → markers received for it: (primary, shard, shards).
    markers: VecDeque<(FlushId, Vec<MarkerSeen>)>,
    /// Flushes of other nodes this node ran.
    ran: VecDeque<FlushId>,
    /// Flushes of this node's clients already announced.
    announced: VecDeque<u64>,
}

fn remember<T: PartialEq>(list: &mut VecDeque<T>, item: T) -> bool {
    if list.contains(&item) {
        return false;
    }
    if list.len() == KEPT_FLUSHES {
        list.pop_front();
    }
    list.push_back(item);
    true
}

/// Slots whose primary is node `index` of `map`.
fn slots_of(map: &SlotMap, index: Option<usize>) -> Vec<bool> {
    map.primary
        .iter()
        .map(|&p| index.is_some_and(|i| usize::from(p) == i))
        .collect()
}

impl Replicator {
    /// Where a node that ran a client's flush tells the others to flush.
    pub fn flushes(&self) -> String {
        format!("dnd.repl.{}.flush", self.name)
    }

    /// A flush of this node's clients, seen in a shard's handover: whether
    /// to announce it to the other nodes (once per flush).
    pub(super) fn announce(&mut self, id: u64) -> bool {
        remember(&mut self.flush_log.announced, id)
    }

    /// Tells the other nodes that this node's clients flushed (`id`).
    pub(super) async fn publish_flush(&self, id: u64) {
        let body = Bytes::from(format!("{} {id}", self.me));
        if let Err(e) = self.data.publish(self.flushes(), body).await {
            warn!(error = %e, "replication: could not tell the other nodes to flush");
        }
    }

    /// The nodes that get this node's writes for some slot under `map`
    /// (replicas and learners): where its shards' flush markers go.
    pub(super) fn marker_targets(&self, map: &SlotMap) -> Vec<u16> {
        let Some(me) = map.index_of(&self.me).map(|i| i as u16) else {
            return Vec::new();
        };
        let mut targets = Vec::new();
        for slot in 0..map.primary.len() {
            if map.primary[slot] != me {
                continue;
            }
            for t in [map.replica[slot], map.learner_of(slot)] {
                if t != super::NO_NODE && t != me && !targets.contains(&t) {
                    targets.push(t);
                }
            }
        }
        targets
    }

    /// Another node's client flushed the cluster: every shard flushes,
    /// sparing the copies whose primary's marker for this flush came
    /// already, and marks its streams.
    pub async fn flush_here(&mut self, payload: &[u8], map: Option<&SlotMap>) {
        let text = String::from_utf8_lossy(payload);
        let mut words = text.split(' ');
        let (Some(origin), Some(Ok(id))) = (words.next(), words.next().map(str::parse::<u64>)) else {
            warn!(%text, "replication: a flush message of an unknown form");
            return;
        };
        if origin == self.me || !remember(&mut self.flush_log.ran, (origin.to_string(), id)) {
            return;
        }
        let key = (origin.to_string(), id);
        let spare: Vec<FlushRule> = match (map, self.flush_log.markers.iter().find(|(k, _)| *k == key)) {
            (Some(map), Some((_, seen))) => seen
                .iter()
                .map(|(primary, shard, shards)| FlushRule {
                    slots: Arc::new(slots_of(map, map.index_of(primary))),
                    shard: *shard,
                    shards: *shards,
                })
                .collect(),
            _ => Vec::new(),
        };
        info!(%origin, id, spared = spare.len(), "replication: flushing at another node's flush");
        for shard in 0..self.control.shard_count() {
            let command = ShardCommand::FlushCluster {
                origin: origin.to_string(),
                id,
                spare: spare.clone(),
            };
            if !self.queue_for_shard(shard, command).await {
                warn!(
                    shard,
                    "replication: a shard's queue stayed full; it did not flush"
                );
            }
        }
    }

    /// A primary's (`source`) flush marker, in a message written under
    /// `written` (the current `map` when not stale): the rule that removes
    /// its copies here, and remembers it for the flush message.
    pub(super) fn marker_rule(
        &mut self,
        source: &str,
        m: &Marker<'_>,
        written: &SlotMap,
        map: &SlotMap,
    ) -> FlushRule {
        let origin = if m.origin.is_empty() {
            source.to_string()
        } else {
            String::from_utf8_lossy(m.origin).into_owned()
        };
        let key = (origin, m.id);
        match self.flush_log.markers.iter_mut().find(|(k, _)| *k == key) {
            Some((_, seen)) => seen.push((source.to_string(), m.shard, m.shards)),
            None => {
                if self.flush_log.markers.len() == KEPT_FLUSHES {
                    self.flush_log.markers.pop_front();
                }
                self.flush_log
                    .markers
                    .push_back((key, vec![(source.to_string(), m.shard, m.shards)]));
            }
        }
        // The slots the source was primary of when it wrote, and still is:
        // a slot that moved since is its new primary's business.
        let then = slots_of(written, written.index_of(source));
        let now = slots_of(map, map.index_of(source));
        FlushRule {
            slots: Arc::new(then.iter().zip(&now).map(|(a, b)| *a && *b).collect()),
            shard: m.shard,
            shards: m.shards,
        }
    }
}
