//! The requests in flight on one socket, oldest first. Requests written
//! together share their send time, so the queue holds runs of equal
//! entries: a pipeline of 16 gets is one entry to write and to read back,
//! not 16. The queue is touched at every answer, right after the kernel's
//! TCP work has gone over the caches, so fewer lines touched is CPU saved.

use std::collections::VecDeque;

use crate::protocol::Kind;

/// A request in flight: when it was sent (or intended to be) and whether it
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub kind: Kind,
    pub sent_ns: u64,
    pub measured: bool,
}

/// Requests in flight, as runs of equal `Pending`s, oldest first.
#[derive(Debug, Default)]
pub struct InflightQueue {
    runs: VecDeque<(Pending, u32)>,
}

impl InflightQueue {
    /// An empty queue with room for `runs` runs before it allocates.
    pub fn with_capacity(runs: usize) -> Self {
        InflightQueue {
            runs: VecDeque::with_capacity(runs),
        }
    }

    /// Adds the newest request.
    #[inline]
    pub fn push(&mut self, p: Pending) {
        if let Some((last, n)) = self.runs.back_mut() {
            if *last == p {
                *n += 1;
                return;
            }
        }
        self.runs.push_back((p, 1));
    }

    /// The oldest request.
    #[inline]
    pub fn front(&self) -> Option<Pending> {
        self.runs.front().map(|&(p, _)| p)
    }

    /// Removes the oldest request.
    #[inline]
    pub fn pop_front(&mut self) -> Option<Pending> {
        let (p, n) = self.runs.front_mut()?;
        let p = *p;
        if *n == 1 {
            self.runs.pop_front();
        } else {
            *n -= 1;
        }
        Some(p)
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Removes everything, as `(request, how many)` runs oldest first.
    pub fn drain_runs(&mut self) -> impl Iterator<Item = (Pending, u32)> + '_ {
        self.runs.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: Kind, sent_ns: u64, measured: bool) -> Pending {
        Pending {
            kind,
            sent_ns,
            measured,
        }
    }

    #[test]
    fn equal_requests_share_a_run_and_come_back_in_order() {
        let mut q = InflightQueue::with_capacity(4);
        let sent = [
            p(Kind::Get, 10, true),
            p(Kind::Get, 10, true),
            p(Kind::Set, 10, true),
            p(Kind::Get, 10, true),
            p(Kind::Get, 20, true),
            p(Kind::Get, 20, false),
            p(Kind::Get, 20, false),
        ];
        for s in sent {
            q.push(s);
        }
        assert_eq!(q.runs.len(), 5);
        let mut got = Vec::new();
        while let Some(front) = q.front() {
            assert_eq!(q.pop_front(), Some(front));
            got.push(front);
        }
        assert_eq!(got, sent);
        assert!(q.is_empty());
        assert_eq!(q.pop_front(), None);
    }

    #[test]
    fn draining_returns_every_request_once() {
        let mut q = InflightQueue::default();
        for i in 0..10 {
            q.push(p(Kind::Get, i / 4, i % 2 == 0 || i < 4));
        }
        q.pop_front();
        let total: u32 = q.drain_runs().map(|(_, n)| n).sum();
        assert_eq!(total, 9);
        assert!(q.is_empty());
    }
}
