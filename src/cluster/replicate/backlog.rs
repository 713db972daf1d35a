//! The backlog (docs/cluster.md, "Backlog"): a primary keeps the last
//! [`BACKLOG_BYTES`] of messages it sent each replica. A replica that sees
//! a sequence gap (messages lost while NATS was down, or while the
//! replica's connection was cut off as a slow consumer) asks for the
//! missing messages on `dnd.repl.<cluster>.resend.<primary>`, applies
//! nothing past the gap meanwhile, and gets them again, in order, on its
//! inbox. Only when the primary no longer holds all of them (it answers a
//! message with the [`GONE`] header), or nothing comes within
//! [`RESEND_PATIENCE`], does the replica fall back to a full copy.
//!
//! A gap shows only with the next message; so that the tail of a stream
//! lost before a quiet spell is not missed until the next write, a primary
//! whose oldest unacknowledged message waited over [`RETRANSMIT_AFTER`]
//! sends its newest message again (one message: cheap towards a dead
//! replica). The replica sees the gap and asks for the rest, or applies
//! it (it missed only that one), or, holding it already (only the
//! acknowledgements were lost), acknowledges it as `again`: that clears
//! every older message, and gives no verdict for a strong write, which
//! then fails CACHE_005, never a false success.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::{headers, Outgoing, Replicator};

/// Bytes of messages kept per replica target.
pub const BACKLOG_BYTES: usize = 32 << 20;

/// A resend asked for and not begun within this falls back to a full copy.
pub const RESEND_PATIENCE: Duration = Duration::from_secs(1);

/// The oldest unacknowledged message is sent again after this.
pub const RETRANSMIT_AFTER: Duration = Duration::from_millis(500);

/// Header of a primary's answer that the messages asked for are gone.
pub const GONE: &str = "Dnd-Gone";

impl Outgoing {
    /// Keeps a message sent, forgetting the oldest beyond [`BACKLOG_BYTES`].
    pub(super) fn keep(&mut self, seq: u64, epoch: u64, body: Bytes) {
        self.kept_bytes += body.len();
        self.kept.push_back((seq, epoch, body));
        while self.kept_bytes > BACKLOG_BYTES && self.kept.len() > 1 {
            if let Some((_, _, old)) = self.kept.pop_front() {
                self.kept_bytes -= old.len();
            }
        }
    }

    /// Every message from `from` to the last sent, if all are kept.
    fn since(&self, from: u64) -> Option<Vec<(u64, u64, Bytes)>> {
        let first = self.kept.front()?.0;
        if from < first || from >= self.next {
            return None;
        }
        let wanted: Vec<_> = self.kept.iter().filter(|m| m.0 >= from).cloned().collect();
        // A dropped shard buffer skips a sequence on purpose: not kept.
        let whole = wanted.iter().zip(from..).all(|(m, seq)| m.0 == seq)
            && wanted.last().map(|m| m.0 + 1) == Some(self.next);
        whole.then_some(wanted)
    }
}

impl Replicator {
    /// The subject replicas ask this node to resend on.
    pub fn resend_requests(&self) -> String {
        format!("dnd.repl.{}.resend.{}", self.name, self.me)
    }

    /// A replica missed messages of this node's stream `stream` from
    /// sequence `from`: resends them from the backlog, or answers that
    /// they are gone.
    pub async fn serve_resend(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let mut fields = text.split(' ');
        let (Some(to), Some(stream_id), Some(Ok(from))) =
            (fields.next(), fields.next(), fields.next().map(str::parse::<u64>))
        else {
            return;
        };
        let subject = format!("dnd.repl.{}.{to}", self.name);
        let kept = self
            .outgoing
            .get(to)
            .filter(|s| s.id == stream_id)
            .and_then(|s| s.since(from));
        let Some(kept) = kept else {
            info!(replica = %to, from, "replication: messages asked again are gone; the replica needs a full copy");
            let mut gone = headers(&self.me, stream_id, 0, from);
            gone.insert(GONE, "1");
            let _ = self.data.publish_with_headers(subject, gone, Bytes::new()).await;
            return;
        };
        info!(replica = %to, from, messages = kept.len(), "replication: resending from the backlog");
        self.resends_served += 1;
        for (seq, epoch, body) in kept {
            let headers = headers(&self.me, stream_id, epoch, seq);
            if let Err(e) = self
                .data
                .publish_with_headers(subject.clone(), headers, body)
                .await
            {
                warn!(error = %e, replica = %to, "replication: resend failed");
                return;
            }
        }
    }

    /// A gap in `source`'s stream: ask for the messages from `from` on.
    pub(super) async fn ask_resend(&mut self, source: &str, stream: &str, from: u64) {
        warn!(%source, from, "replication: sequence gap; asking the primary to resend");
        let subject = format!("dnd.repl.{}.resend.{source}", self.name);
        let body = format!("{} {stream} {from}", self.me);
        let _ = self.client.publish(subject, Bytes::from(body)).await;
    }

    /// The missed messages of `source` cannot be had: a full copy instead;
    /// the stream goes on from its next message.
    pub(super) async fn fall_back(&mut self, source: &str) {
        if let Some(s) = self.incoming.get_mut(source) {
            warn!(%source, "replication: the gap cannot be resent; asking for a full copy");
            s.resend = None;
            s.last = 0;
            s.synced = false;
            s.copy = None;
        }
        self.ask_for_copies().await;
    }

    /// What `health` shows of the streams.
    pub fn counters(&self) -> serde_json::Value {
        let h = &self.acked_after_us;
        serde_json::json!({
            "gaps": self.gaps,
            "resends_received": self.resends_received,
            "resends_served": self.resends_served,
            "copies_received": self.copies_received,
            "copies_served": self.copies_served,
            "stale_refused": self.stale_refused,
            // Send to acknowledgement, per message, since the start.
            "acked_messages": h.len(),
            "ack_p50_us": h.value_at_quantile(0.5),
            "ack_p99_us": h.value_at_quantile(0.99),
            "ack_max_us": h.max(),
        })
    }

    /// Sends again the newest message of each stream whose oldest
    /// unacknowledged one waited over [`RETRANSMIT_AFTER`].
    pub async fn retransmit(&mut self, now: Instant) {
        let mut again = Vec::new();
        for (node, s) in self.outgoing.iter_mut() {
            let Some(&(_, at, _)) = s.unacked.front() else {
                s.retransmitted = None;
                continue;
            };
            let last = s.retransmitted.unwrap_or(at);
            if now.duration_since(at) < RETRANSMIT_AFTER || now.duration_since(last) < RETRANSMIT_AFTER {
                continue;
            }
            if let Some((seq, epoch, body)) = s.kept.back() {
                s.retransmitted = Some(now);
                info!(replica = %node, seq, "replication: no acknowledgement for a while; sending the newest message again");
                again.push((node.clone(), headers(&self.me, &s.id, *epoch, *seq), body.clone()));
            }
        }
        for (node, headers, body) in again {
            let subject = format!("dnd.repl.{}.{node}", self.name);
            let _ = self.data.publish_with_headers(subject, headers, body).await;
        }
    }

    /// Resends asked for that never began fall back to full copies.
    pub async fn check_resends(&mut self, now: Instant) {
        let late: Vec<String> = self
            .incoming
            .iter()
            .filter(|(_, s)| {
                s.resend
                    .is_some_and(|(_, at)| now.duration_since(at) > RESEND_PATIENCE)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for source in late {
            self.fall_back(&source).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(stream: &mut Outgoing, bytes: usize) -> u64 {
        let seq = stream.next;
        stream.next += 1;
        stream.keep(seq, 1, Bytes::from(vec![0u8; bytes]));
        seq
    }

    #[test]
    fn a_resend_needs_every_message_since() {
        let mut s = Outgoing {
            next: 1,
            ..Default::default()
        };
        for _ in 0..10 {
            sent(&mut s, 1000);
        }
        let seqs = |v: Option<Vec<(u64, u64, Bytes)>>| v.map(|v| v.iter().map(|m| m.0).collect::<Vec<_>>());
        assert_eq!(seqs(s.since(8)), Some(vec![8, 9, 10]));
        assert_eq!(seqs(s.since(1)), Some((1..=10).collect()));
        assert_eq!(s.since(11), None, "nothing sent from there");
        // A dropped shard buffer skips a sequence: what follows it cannot
        // be resent as a whole, what precedes it neither.
        s.next += 1;
        sent(&mut s, 1000);
        assert_eq!(s.since(12), Some(vec![(12, 1, Bytes::from(vec![0u8; 1000]))]));
        assert_eq!(s.since(9), None);
    }

    #[test]
    fn the_backlog_keeps_its_bound() {
        let mut s = Outgoing {
            next: 1,
            ..Default::default()
        };
        let chunk = BACKLOG_BYTES / 4;
        for _ in 0..6 {
            sent(&mut s, chunk);
        }
        assert!(s.kept_bytes <= BACKLOG_BYTES);
        assert_eq!(s.kept.front().map(|m| m.0), Some(3));
        assert_eq!(s.since(2), None, "forgotten");
        assert!(s.since(3).is_some());
        // One message larger than the bound is still kept, alone.
        sent(&mut s, BACKLOG_BYTES + 1);
        assert_eq!(s.kept.len(), 1);
    }
}
