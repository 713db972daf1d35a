//! Heartbeats, and handing a slot's lead over (docs/cluster.md, "Leases").
//!
//! A node serves strong requests only while it holds a lease: until
//! [`FAILURE_TIMEOUT`] minus a margin after a heartbeat that a map read
//! then showed changed nothing (the others cannot have moved its slots by
//! failover before). A planned move (a swap of roles to balance the load)
//! does not wait for that: the slot's old primary may still run the map
//! before it for a moment, and serve strong reads of it under its lease.
//! So a node that gains the lead of slots from a live node (a *giver*)
//! takes no lease before every giver has shown, in a heartbeat, that it
//! runs the new map, or [`FAILURE_TIMEOUT`] has passed since the map was
//! installed (a giver's lease has then run out). A failover has no giver:
//! the dead node is out of the new map, silent for longer than its lease. A node announces each map
//! it installs in a heartbeat sent at once.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Agent, FAILURE_TIMEOUT, HEARTBEAT_INTERVAL};
use crate::cluster::slots::{NodeInfo, SlotMap, SLOTS};

/// What a node publishes every [`HEARTBEAT_INTERVAL`], and at once when it
/// installs a map.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Heartbeat {
    pub node: NodeInfo,
    /// Epoch of the map the node runs with (0: none yet).
    pub epoch: u64,
    /// Whether it holds every item of the slots it replicates.
    #[serde(default)]
    pub synced: bool,
}

/// The heartbeat the agent's heartbeat task sends, kept current by the
/// agent, and when the task last sent it. Heartbeats have a task of their
/// own: a tick that waits on JetStream (its map read, seconds after
/// nats-server restarted) must not silence the node (its peers took it for
/// dead and moved its slots).
pub(super) struct Beat {
    pub heartbeat: std::sync::Mutex<Heartbeat>,
    /// Unix µs of the last heartbeat sent (0: none).
    pub sent_at_us: std::sync::atomic::AtomicU64,
    /// Rung to send the heartbeat now.
    pub now: tokio::sync::Notify,
}

/// Sends the heartbeat every [`HEARTBEAT_INTERVAL`], and when rung.
pub(super) async fn send_heartbeats(client: async_nats::Client, subject: String, beat: Arc<Beat>) {
    let mut every = tokio::time::interval(HEARTBEAT_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = beat.now.notified() => {}
        }
        let body = serde_json::to_vec(&*beat.heartbeat.lock().unwrap_or_else(|e| e.into_inner()));
        let sent_at_us = crate::time::unix_now_us();
        if let Ok(body) = body {
            if client.publish(subject.clone(), body.into()).await.is_ok() {
                beat.sent_at_us
                    .store(sent_at_us, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// The nodes this node took slots' lead from, not yet known to run the map
/// that moved them.
pub(super) struct Handover {
    givers: Vec<String>,
    /// When the map that moved them was installed.
    since: Instant,
    /// The lease a renewal would have granted meanwhile (Unix µs).
    withheld: Option<u64>,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            givers: Vec::new(),
            since: Instant::now(),
            withheld: None,
        }
    }
}

/// The nodes other than `me` that led, in `old`, slots that `me` leads in
/// `new`, and that `new` still names as the same run.
pub(super) fn givers(old: &SlotMap, new: &SlotMap, me: &str, incarnation: u64) -> Vec<String> {
    let Some(mine) = new.index_of_run(me, incarnation) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for slot in 0..SLOTS {
        if new.primary[slot] as usize != mine {
            continue;
        }
        if let Some(was) = old.nodes.get(old.primary[slot] as usize) {
            // A giver the new map dropped (dead: silent past the failure
            // timeout, so its lease is over) or names as another run
            // (restarted: empty, no lease on the old map) serves nothing.
            let lives_on = new.index_of_run(&was.id, was.incarnation).is_some();
            if was.id != me && lives_on && !out.contains(&was.id) {
                out.push(was.id.clone());
            }
        }
    }
    out
}

impl Agent {
    /// Before `map` is installed: the nodes it takes leads from; no lease
    /// until they run it.
    pub(super) fn note_givers(&mut self, map: &SlotMap) {
        let Some((old, _)) = self.current.as_ref() else {
            return;
        };
        let me = &self.state.me;
        let givers = givers(old, map, &me.id, me.incarnation);
        if !givers.is_empty() {
            // The lease held is withheld, not lost: it still says that the
            // others heard this node lately; it lacked only the givers'
            // word, and is given back as soon as they have shown it (a
            // few milliseconds), not at the next map read.
            let held = self.shared.lease_until();
            self.shared.revoke_lease();
            let withheld = self.handover.withheld.take().into_iter().chain([held]).max();
            self.handover = Handover {
                givers,
                since: Instant::now(),
                withheld: withheld.filter(|&until| until > 0),
            };
        }
    }

    /// Whether every giver runs the current map (or its lease ran out).
    pub(super) fn handed_over(&mut self) -> bool {
        if self.handover.givers.is_empty() {
            return true;
        }
        let epoch = self.current.as_ref().map_or(0, |(m, _)| m.epoch);
        let live = &self.live;
        self.handover
            .givers
            .retain(|g| live.epoch_of(g).is_none_or(|e| e < epoch));
        if self.handover.since.elapsed() >= FAILURE_TIMEOUT {
            self.handover.givers.clear();
        }
        self.handover.givers.is_empty()
    }

    /// Grants the lease (Unix µs), or keeps it until the handover is done.
    pub(super) fn grant_lease(&mut self, until_us: u64) {
        if self.handed_over() {
            self.handover.withheld = None;
            self.shared.set_lease_until(until_us);
        } else {
            self.handover.withheld = Some(until_us);
        }
    }

    /// A heartbeat was heard: the lease withheld for a handover, if that
    /// heartbeat completed it.
    pub(super) fn maybe_grant_withheld(&mut self) {
        if self.handover.withheld.is_some() && self.handed_over() {
            if let Some(until) = self.handover.withheld.take() {
                self.shared.set_lease_until(until);
            }
        }
    }

    /// Sends a heartbeat now with the map in force and whether this node is
    /// in sync under it.
    pub(super) fn announce(&self) {
        let epoch = self.current.as_ref().map_or(0, |(m, _)| m.epoch);
        let synced = self.repl.as_ref().is_none_or(|r| r.in_sync());
        {
            let mut hb = self.beat.heartbeat.lock().unwrap_or_else(|e| e.into_inner());
            hb.epoch = epoch;
            hb.synced = synced;
        }
        self.beat.now.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::slots::{plan, test_node as node};

    #[test]
    fn givers_are_the_old_primaries_of_the_slots_gained() {
        let nodes = [node("a", "z1"), node("b", "z2"), node("c", "z1")];
        let old = plan(None, &nodes, 2, 0, &|_, _| true, &|_, _| true);
        assert!(givers(&old, &old, "a", 0).is_empty(), "nothing moved");
        // b takes a slot of a's and one of c's.
        let mut new = old.clone();
        let b = new.index_of("b").unwrap() as u16;
        let of = |n: &str| {
            (0..SLOTS)
                .find(|&s| old.primary[s] as usize == old.index_of(n).unwrap())
                .unwrap()
        };
        new.primary[of("a")] = b;
        new.primary[of("c")] = b;
        let mut g = givers(&old, &new, "b", 0);
        g.sort();
        assert_eq!(g, vec!["a".to_string(), "c".to_string()]);
        assert!(givers(&old, &new, "a", 0).is_empty(), "a gained nothing");
        assert!(givers(&old, &new, "b", 9).is_empty(), "another run of b");
        // A giver the new map dropped, or names as a new run, is no giver.
        let mut restarted = new.clone();
        let a = restarted.index_of("a").unwrap();
        restarted.nodes[a].incarnation = 7;
        assert_eq!(givers(&old, &restarted, "b", 0), vec!["c".to_string()]);
    }
}
