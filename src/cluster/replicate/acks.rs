//! Acknowledgements, primary side (docs/cluster.md, "Consistency"):
//! strong handovers waiting for their replicas, verdicts to the shards,
//! the replication lag, and the bytes in flight.

use std::time::Instant;

use super::{Replicator, UNACKED_FORGOTTEN};
use crate::cluster::slots::SlotMap;
use crate::shard::ShardCommand;

impl Replicator {
    /// Nothing waits for an acknowledgement (no message in flight, no
    /// strong write): the agent may stop its drain tick.
    pub fn settled(&self) -> bool {
        self.strong.is_empty() && self.outgoing.values().all(|s| s.unacked.is_empty())
    }

    /// An acknowledgement (or refusal) from a replica.
    pub fn acked(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let mut parts = text.split(' ');
        let (Some(from), Some(Ok(seq))) = (parts.next(), parts.next().map(str::parse::<u64>)) else {
            return;
        };
        let verdict = parts.next();
        let refused = verdict == Some("refused");
        if let Some(stream) = self.outgoing.get_mut(from) {
            let now = Instant::now();
            while let Some(&(s, at, _)) = stream.unacked.front().filter(|m| m.0 <= seq) {
                stream.unacked.pop_front();
                if s == seq {
                    let us = now.duration_since(at).as_micros() as u64;
                    self.acked_after_us.saturating_record(us.max(1));
                }
            }
        }
        if verdict == Some("again") {
            // A message it had already applied (or refused): no verdict
            // for a strong write, which then times out (CACHE_005).
            return;
        }
        let mut i = 0;
        while i < self.strong.len() {
            let w = &mut self.strong[i];
            let before = w.waiting.len();
            w.waiting.retain(|(node, s)| !(node == from && *s == seq));
            let hit = w.waiting.len() != before;
            if hit && refused {
                let w = self.strong.swap_remove(i);
                self.verdicts[w.shard].push((w.seq, false));
                continue;
            }
            if w.waiting.is_empty() {
                let w = self.strong.swap_remove(i);
                self.verdicts[w.shard].push((w.seq, true));
                continue;
            }
            i += 1;
        }
        self.deliver_verdicts();
    }

    /// Strong handovers past their deadline fail.
    pub fn expire(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.strong.len() {
            if self.strong[i].deadline <= now {
                let w = self.strong.swap_remove(i);
                self.verdicts[w.shard].push((w.seq, false));
            } else {
                i += 1;
            }
        }
        self.deliver_verdicts();
    }

    pub(super) fn deliver_verdicts(&mut self) {
        for (shard, verdicts) in self.verdicts.iter_mut().enumerate() {
            if !verdicts.is_empty() {
                let batch = std::mem::take(verdicts);
                // A full queue means a stuck shard: its waiters time out.
                let _ = self.control.send(shard, ShardCommand::ReplDone(batch));
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
            .map(|(target, stream)| {
                let behind = stream
                    .unacked
                    .front()
                    .map_or(0.0, |&(_, at, _)| now.duration_since(at).as_secs_f64());
                (target.clone(), behind)
            })
            .collect();
        lag.sort_by(|a, b| a.0.cmp(&b.0));
        lag
    }

    /// Forgets the outgoing streams to nodes no longer in the map.
    /// Strong writes waiting on such a node fail now (CACHE_005): it will
    /// not acknowledge them, and the client's retry then runs under the
    /// new map instead of after [`STRONG_TIMEOUT`] (the slow failovers of
    /// the chaos run: a retry sent just before the map moved waited its
    /// whole second for the dead replica).
    pub fn prune(&mut self, map: &SlotMap) {
        self.outgoing.retain(|id, _| map.index_of(id).is_some());
        self.fed.retain(|id| map.index_of(id).is_some());
        self.feeding.retain(|id, _| map.index_of(id).is_some());
        let mut i = 0;
        while i < self.strong.len() {
            if self.strong[i]
                .waiting
                .iter()
                .any(|(node, _)| map.index_of(node).is_none())
            {
                let w = self.strong.swap_remove(i);
                self.verdicts[w.shard].push((w.seq, false));
            } else {
                i += 1;
            }
        }
        self.deliver_verdicts();
    }

    /// Bytes sent and not acknowledged, over every replica. A message
    /// never acknowledged (lost on the way, or with a replica that died)
    /// stops counting after [`UNACKED_FORGOTTEN`], so that it cannot stop
    /// the copies that would repair it.
    pub fn unacked_bytes(&self) -> u64 {
        let now = Instant::now();
        self.outgoing
            .values()
            .flat_map(|s| s.unacked.iter())
            .filter(|&&(_, at, _)| now.duration_since(at) < UNACKED_FORGOTTEN)
            .map(|&(_, _, bytes)| bytes as u64)
            .sum()
    }
}
