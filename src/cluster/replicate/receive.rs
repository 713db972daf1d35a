//! Replication, replica side (docs/cluster.md, "Replication"): a
//! primary's message is checked (epoch, sequence), its records handed to
//! the shards that own their keys, and acknowledged or refused.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::backlog::GONE;
use super::{Replicator, EPOCH, SEQ, SHARD_QUEUE_PATIENCE, SOURCE, STREAM};
use crate::cluster::slots::{slot_of, SlotMap};
use crate::key::{key_hash, owner_of};
use crate::shard::replication::{records, OP_COPY_DONE, OP_FLUSH};
use crate::shard::ShardCommand;

impl Replicator {
    /// Applies a message of a primary: checks epoch and sequence, hands the
    /// records to their shards, acknowledges (or refuses).
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
        let stream_id = header(STREAM).unwrap_or_default();
        if header(GONE).is_some() {
            // The primary no longer holds the messages asked again.
            let asked = self
                .incoming
                .get(&source)
                .is_some_and(|s| s.stream == stream_id && s.resend.is_some_and(|(from, _)| from == seq));
            if asked {
                self.fall_back(&source).await;
            }
            return;
        }
        let Some(map) = map else { return };
        // Written under an older map: a record is applied only where its
        // writer was the slot's primary under that map (the newest map
        // kept that is not newer); others are dropped. Applied records
        // never replace newer items (Shard::apply_replicated), so a write
        // in flight from a slot's previous primary is kept, and a deposed
        // primary's old writes cannot undo its successor's.
        //
        // The message is acknowledged only if, under this node's map, its
        // writer still leads every slot it wrote and this node still holds
        // a copy of each (replica or learner). Otherwise it is refused,
        // and its strong writes fail (CACHE_005): a primary that has not
        // yet heard of the map that moved its slot cannot complete a
        // strong write this node acknowledged after that map, which the
        // slot's new primary, or its new replica, may not hold.
        let stale = epoch < map.epoch;
        let source_now = map.index_of(&source).map(|i| i as u16);
        let me_now = map.index_of_run(&self.me, self.incarnation).map(|i| i as u16);
        let written = if stale {
            self.maps.iter().rev().find(|m| m.epoch <= epoch).cloned()
        } else {
            None
        };
        let source_index = written
            .as_ref()
            .and_then(|m| m.index_of(&source))
            .map(|i| i as u16);
        let stream = self.incoming.entry(source.clone()).or_default();
        if stream.stream != stream_id {
            // A new stream of this source (it restarted, or this node left
            // its map and came back): it counts from 1 again. Whether this
            // node holds the slots is the map's business (follow_map).
            stream.stream = stream_id.clone();
            stream.last = 0;
            stream.resend = None;
        }
        if stream.last != 0 && seq <= stream.last {
            // Already applied or refused (sent again: its acknowledgement
            // was lost, or a resend overlapped what arrived).
            self.answer_again(&source, seq).await;
            return;
        }
        if stream.last != 0 && seq != stream.last + 1 {
            // Missed messages: nothing past them is applied until they are
            // resent (in order, then what followed); asked once.
            if stream.resend.is_none() {
                self.gaps += 1;
                let from = stream.last + 1;
                stream.resend = Some((from, Instant::now()));
                self.ask_resend(&source, &stream_id, from).await;
            }
            return;
        }
        if stream.resend.take().is_some() {
            self.resends_received += 1;
            info!(%source, seq, "replication: the missed messages arrive again");
        }
        stream.last = seq;
        let shards = self.control.shard_count();
        let mut per_shard: Vec<Vec<u8>> = vec![Vec::new(); shards];
        // Commands per shard, in stream order (records, flush markers).
        let mut commands: Vec<Vec<ShardCommand>> = (0..shards).map(|_| Vec::new()).collect();
        let mut markers = 0;
        let now_us = crate::time::unix_now_us();
        let mut dropped = 0usize;
        let mut moved = 0usize;
        let copy_id = stream.copy.map(|(id, _, _)| id);
        for r in records(&msg.payload) {
            if r.op == OP_FLUSH {
                let Some(m) = super::flush::marker(&r) else {
                    continue;
                };
                let rule = self.marker_rule(&source, &m, written.as_deref().unwrap_or(map), map);
                for (shard, body) in per_shard.iter_mut().enumerate() {
                    if !body.is_empty() {
                        commands[shard].push(ShardCommand::Replicated(std::mem::take(body)));
                    }
                    commands[shard].push(ShardCommand::FlushSlots(vec![rule.clone()]));
                }
                continue;
            }
            if r.op == OP_COPY_DONE {
                if r.key.len() == 8
                    && Some(u64::from_le_bytes(r.key.try_into().unwrap_or_default())) == copy_id
                {
                    markers += 1;
                }
                continue;
            }
            let hash = key_hash(r.key, map.seed);
            let slot = slot_of(hash);
            let writer = written.as_ref().map(|m| m.primary[slot]);
            if stale && (writer.is_none() || writer != source_index) {
                dropped += 1;
                continue;
            }
            if stale && !still_copied(map, slot, source_now, me_now) {
                moved += 1;
                // Kept only when fresh (a write in flight across a move):
                // a deposed primary resumed after a pause must not bring
                // back a key its successor deleted since (deletes leave
                // no tombstone for the version check to see).
                if now_us.saturating_sub(r.version) > LATE_WRITE_US {
                    continue;
                }
            }
            let shard = owner_of(hash, shards);
            r.encode(&mut per_shard[shard]);
        }
        let mut queued = true;
        for (shard, body) in per_shard.into_iter().enumerate() {
            if !body.is_empty() {
                commands[shard].push(ShardCommand::Replicated(body));
            }
        }
        for (shard, list) in commands.into_iter().enumerate() {
            for command in list {
                queued &= self.queue_for_shard(shard, command).await;
            }
        }
        if !queued {
            warn!(%source, "replication: a shard's queue stayed full; records lost (asking for a full copy)");
            self.gaps += 1;
            if let Some(s) = self.incoming.get_mut(&source) {
                s.synced = false;
                s.copy = None;
            }
            self.answer(&source, seq, false).await;
            return;
        }
        if markers > 0 {
            let expected = map
                .index_of(&source)
                .map_or(usize::MAX, |i| map.nodes[i].shard_ports.len().max(1));
            if let Some(s) = self.incoming.get_mut(&source) {
                if let Some((id, seen, asked)) = s.copy {
                    let seen = seen + markers;
                    if seen >= expected {
                        info!(%source, copy = id, took_ms = asked.elapsed().as_millis() as u64, "replication: full copy received; in sync");
                        s.copy = None;
                        s.synced = true;
                        self.copies_received += 1;
                    } else {
                        s.copy = Some((id, seen, asked));
                    }
                }
            }
        }
        if dropped + moved > 0 {
            self.stale_refused += 1;
        }
        self.answer(&source, seq, dropped + moved == 0).await;
    }

    /// Queues a command for a shard, waiting (a little) while its queue is
    /// full rather than losing the records.
    pub(super) async fn queue_for_shard(&self, shard: usize, mut command: ShardCommand) -> bool {
        let give_up = Instant::now() + SHARD_QUEUE_PATIENCE;
        loop {
            match self.control.send(shard, command) {
                Ok(()) => return true,
                Err(back) if Instant::now() < give_up => {
                    command = back;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                Err(_) => return false,
            }
        }
    }

    async fn answer_again(&self, source: &str, seq: u64) {
        let subject = format!("dnd.repl.{}.ack.{source}", self.name);
        let body = format!("{} {seq} again", self.me);
        let _ = self.client.publish(subject, Bytes::from(body)).await;
    }

    async fn answer(&self, source: &str, seq: u64, ok: bool) {
        let body = if ok {
            format!("{} {seq}", self.me)
        } else {
            format!("{} {seq} refused", self.me)
        };
        let subject = format!("dnd.repl.{}.ack.{source}", self.name);
        let _ = self.client.publish(subject, Bytes::from(body)).await;
    }
}

/// A write of a slot's previous primary older than this (µs) reaching
/// this node after the slot moved is dropped: the failure timeout, past
/// which that primary was declared dead.
const LATE_WRITE_US: u64 = crate::cluster::agent::FAILURE_TIMEOUT.as_micros() as u64;

/// Whether, under `map`, node `source` still leads `slot` and node `me`
/// still holds a copy of it (replica or learner): a late message of an
/// older map is acknowledged only then.
fn still_copied(map: &SlotMap, slot: usize, source: Option<u16>, me: Option<u16>) -> bool {
    let copy_here = me.is_some_and(|me| map.replica[slot] == me || map.learner_of(slot) == me);
    source == Some(map.primary[slot]) && copy_here
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::slots::{plan, test_node as node, NO_NODE, SLOTS};

    #[test]
    fn a_late_message_counts_only_while_its_writer_leads_and_this_node_copies() {
        let nodes = [node("a", "z1"), node("b", "z2"), node("c", "z1")];
        let map = plan(None, &nodes, 2, 0, &|_, _| true, &|_, _| true);
        for slot in 0..SLOTS {
            let (p, r) = (map.primary[slot], map.replica[slot]);
            let other = (0..3u16).find(|&i| i != p && i != r).unwrap();
            assert!(still_copied(&map, slot, Some(p), Some(r)), "slot {slot}");
            // Its primary moved (to the replica, or elsewhere): refused.
            assert!(!still_copied(&map, slot, Some(r), Some(p)));
            assert!(!still_copied(&map, slot, Some(other), Some(r)));
            // This node no longer copies the slot, or left the map.
            assert!(!still_copied(&map, slot, Some(p), Some(other)));
            assert!(!still_copied(&map, slot, Some(p), None));
            // The writer left the map.
            assert!(!still_copied(&map, slot, None, Some(r)));
        }
        // A learner of the slot holds a copy.
        let mut learning = map.clone();
        learning.learner = vec![NO_NODE; SLOTS];
        let slot = 7;
        let (p, r) = (map.primary[slot], map.replica[slot]);
        let other = (0..3u16).find(|&i| i != p && i != r).unwrap();
        learning.learner[slot] = other;
        assert!(still_copied(&learning, slot, Some(p), Some(other)));
    }
}
