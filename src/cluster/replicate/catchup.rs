//! Catch-up, replica side (docs/cluster.md, "Catch-up"): which primaries
//! a node asks for a full copy after a new map, and serving such a copy
//! as a primary (the shards stream it: `crate::shard::catchup`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use super::{Replicator, COPY_RETRY};
use crate::cluster::slots::{SlotMap, SLOTS};
use crate::shard::{FlushRule, ShardCommand};

impl Replicator {
    /// After a new map: the primaries this node now replicates slots of,
    /// and which it has not copied since it gained them, are asked for a
    /// full copy; streams from nodes it no longer replicates are dropped.
    pub async fn follow_map(&mut self, prev: Option<&SlotMap>, map: &SlotMap) {
        // A map naming an earlier run of this node (restarted, empty)
        // gives this run nothing to follow yet; the coordinator re-adds it.
        self.followed_epoch = map.epoch;
        let Some(me) = map.index_of_run(&self.me, self.incarnation) else {
            // Out of the map (or named as an earlier run): it replicates
            // nothing now, and what it held goes stale.
            self.incoming.clear();
            self.followed = false;
            return;
        };
        self.followed = true;
        self.drop_stale_slots(prev, map, me).await;
        let sources = replicated_sources(map, me);
        self.incoming.retain(|id, _| sources.iter().any(|(s, _)| s == id));
        for (source, slots) in sources {
            // A slot it replicated for the same primary, or was primary
            // of itself (a swap of roles), needs no copy.
            // Only from the map just before this one: across a skipped
            // epoch this node may have been out of the map (paused, cut
            // off) and missed writes no sequence gap shows.
            let continuous = prev.filter(|p| p.epoch + 1 == map.epoch);
            let gained = match continuous
                .and_then(|p| p.index_of_run(&self.me, self.incarnation).map(|m| (p, m)))
            {
                Some((p, pm)) => slots.iter().any(|&slot| {
                    let was_primary = p.primary[slot] as usize == pm;
                    let same_stream = (p.replica[slot] as usize == pm || p.learner_of(slot) as usize == pm)
                        && p.nodes.get(p.primary[slot] as usize).map(|n| &n.id) == Some(&source);
                    !(was_primary || same_stream)
                }),
                None => true,
            };
            let stream = self.incoming.entry(source.clone()).or_default();
            if gained {
                stream.synced = false;
            }
            if !stream.synced {
                // A primary stops a full copy when its map changes: ask
                // again under this map now rather than after COPY_RETRY.
                stream.copy = None;
            }
        }
        self.ask_for_copies().await;
    }

    /// Removes this node's items of the slots it now copies but did not
    /// hold under the map before (it kept them from an earlier time it
    /// held the slot, or from a late message): a full copy adds items and
    /// never removes one, so a key deleted meanwhile would come back with
    /// them. Removed before the copy is asked for (the shards' queues are
    /// ordered), and only where nothing rests on them: slots it gains as a
    /// learner (the replica holds the slot meanwhile), and, when the map
    /// before is the one just before this (no epoch skipped), any slot it
    /// held no copy of there.
    async fn drop_stale_slots(&mut self, prev: Option<&SlotMap>, map: &SlotMap, me: usize) {
        let before = prev
            .filter(|p| p.epoch + 1 == map.epoch)
            .map(|p| (p, p.index_of_run(&self.me, self.incarnation)));
        let mut stale = vec![false; SLOTS];
        let mut any = false;
        for (slot, flag) in stale.iter_mut().enumerate() {
            let learner = map.learner_of(slot) as usize == me;
            if !(learner || map.replica[slot] as usize == me) {
                continue;
            }
            *flag = match before {
                Some((p, Some(pm))) => !p.has_copy(slot, &p.nodes[pm].id),
                Some((_, None)) => true,
                None => learner,
            };
            any |= *flag;
        }
        if !any {
            return;
        }
        let stale = Arc::new(stale);
        let shards = self.control.shard_count();
        for shard in 0..shards {
            let rule = FlushRule {
                slots: stale.clone(),
                shard: shard as u16,
                shards: shards as u16,
            };
            if !self
                .queue_for_shard(shard, ShardCommand::FlushSlots(vec![rule]))
                .await
            {
                warn!(
                    shard,
                    "replication: could not drop the stale items of slots gained"
                );
            }
        }
    }

    /// Asks every primary this node is out of sync with, and not already
    /// copying from, for a full copy.
    pub async fn ask_for_copies(&mut self) {
        let now = Instant::now();
        let mut asks = Vec::new();
        for (source, stream) in self.incoming.iter_mut() {
            let stale = stream
                .copy
                .is_some_and(|(_, _, at)| now.duration_since(at) > COPY_RETRY);
            if !stream.synced && (stream.copy.is_none() || stale) {
                self.next_copy += 1;
                stream.copy = Some((self.next_copy, 0, now));
                asks.push((source.clone(), self.next_copy));
            }
        }
        for (source, id) in asks {
            info!(%source, copy = id, "replication: asking for a full copy");
            let subject = format!("dnd.repl.{}.sync.{source}", self.name);
            // With the epoch of the map it follows: a primary that has not
            // installed that map yet serves the copy once it has.
            let body = format!("{} {id} {}", self.me, self.followed_epoch);
            let _ = self.client.publish(subject, Bytes::from(body)).await;
        }
    }

    /// A replica asks this node for a full copy: every shard streams the
    /// items of the slots that replica holds for this node.
    pub async fn serve_copy(&mut self, payload: &[u8], map: &SlotMap) {
        let text = String::from_utf8_lossy(payload);
        let mut fields = text.split(' ');
        let (Some(from), Some(id)) = (fields.next(), fields.next()) else {
            return;
        };
        let asked_under = fields.next().and_then(|e| e.parse::<u64>().ok()).unwrap_or(0);
        if asked_under > map.epoch {
            // Its copy would stop as soon as this node installs that map.
            self.defer_copy(payload);
            return;
        }
        let (Some(target), Ok(id)) = (map.index_of(from), id.parse::<u64>()) else {
            return;
        };
        info!(replica = %from, copy = id, "replication: serving a full copy");
        self.copies_served += 1;
        // It misses items until this copy is sent whole.
        self.fed.remove(from);
        self.feeding
            .insert(from.to_string(), (id, self.control.shard_count()));
        for shard in 0..self.control.shard_count() {
            let command = ShardCommand::Copy {
                target: target as u16,
                epoch: map.epoch,
                copy: id,
                rate: self.catchup_rate / self.control.shard_count().max(1) as u64,
            };
            if !self.queue_for_shard(shard, command).await {
                warn!(
                    shard,
                    "replication: could not start a full copy (shard queue full)"
                );
            }
        }
    }

    /// Keeps an ask for a full copy until this node installs the map it
    /// was asked under (a few kept: the replica asks again after
    /// COPY_RETRY).
    pub fn defer_copy(&mut self, payload: &[u8]) {
        if self.deferred_copies.len() < 64 {
            self.deferred_copies.push(payload.to_vec());
        }
    }

    /// Serves the copies asked under a map this node has now installed.
    pub async fn serve_deferred(&mut self, map: &SlotMap) {
        for payload in std::mem::take(&mut self.deferred_copies) {
            self.serve_copy(&payload, map).await;
        }
    }

    /// Whether this node holds every item of the slots it replicates.
    pub fn in_sync(&self) -> bool {
        self.followed && self.incoming.values().all(|s| s.synced)
    }
}

/// The primaries of the slots node `me` replicates in `map`, with those
/// slots.
fn replicated_sources(map: &SlotMap, me: usize) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for slot in 0..map.replica.len() {
        if map.replica[slot] as usize != me && map.learner_of(slot) as usize != me {
            continue;
        }
        let Some(p) = map.nodes.get(map.primary[slot] as usize) else {
            continue;
        };
        match out.iter_mut().find(|(id, _)| id == &p.id) {
            Some((_, slots)) => slots.push(slot),
            None => out.push((p.id.clone(), vec![slot])),
        }
    }
    out
}
