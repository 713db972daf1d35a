//! Circuit breaker (ICD 9.2 `circuit_breaker`), one per node of a cluster
//! (one in all for a lone server), so a dead node opens only its own.
//!
//! Closed: requests flow and their outcomes are counted in one-second
//! buckets over a sliding `window`. Once at least `min_requests` outcomes
//! are in the window and the failed share reaches `threshold`, the breaker
//! opens: requests to that node fail at once with
//! [`crate::ClientError::CircuitOpen`]. After `cooldown` one probe request
//! is let through (half-open): its success closes the breaker with an empty
//! window, its failure opens it again for another cool-down.
//!
//! Only failures that say the node is unreachable or overloaded count
//! (connection errors, timeouts, CACHE_009, CACHE_011); a miss, an invalid
//! key or a redirection is a healthy answer. The same rules as the Python
//! and Go clients.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's settings; defaults are ICD 9.2's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Failed share of the window that opens the breaker.
    pub threshold: f64,
    pub window: Duration,
    /// Outcomes needed in the window before the share is judged.
    pub min_requests: u32,
    /// How long an open breaker refuses before letting a probe through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            threshold: 0.5,
            window: Duration::from_secs(60),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
        }
    }
}

/// What a breaker is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    /// Cool-down over: the next request is a probe.
    HalfOpen,
}

/// One node's breaker. Its lock is held for a few arithmetic steps per
/// request, never across a wait.
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    state: BreakerState,
    opened_at: Instant,
    probe_in_flight: bool,
    /// (second since `origin`, successes, failures), oldest first.
    buckets: VecDeque<(u64, u32, u32)>,
    origin: Instant,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Breaker {
        let now = Instant::now();
        Breaker {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                opened_at: now,
                probe_in_flight: false,
                buckets: VecDeque::new(),
                origin: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    fn state_at(&self, now: Instant) -> BreakerState {
        let b = self.lock();
        if b.state == BreakerState::Open && now.duration_since(b.opened_at) >= self.config.cooldown {
            return BreakerState::HalfOpen;
        }
        b.state
    }

    /// Whether a request may be sent now (takes the probe when half-open).
    pub(crate) fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut b = self.lock();
        match b.state {
            BreakerState::Closed => return true,
            BreakerState::Open => {
                if now.duration_since(b.opened_at) < self.config.cooldown {
                    return false;
                }
                b.state = BreakerState::HalfOpen;
                b.probe_in_flight = false;
            }
            BreakerState::HalfOpen => {}
        }
        if b.probe_in_flight {
            return false;
        }
        b.probe_in_flight = true;
        true
    }

    /// Counts the outcome of a request that [`Breaker::allow`] let through.
    pub(crate) fn record(&self, success: bool) {
        self.record_at(success, Instant::now());
    }

    fn record_at(&self, success: bool, now: Instant) {
        let mut b = self.lock();
        match b.state {
            BreakerState::HalfOpen => {
                b.probe_in_flight = false;
                if success {
                    b.state = BreakerState::Closed;
                    b.buckets.clear();
                } else {
                    open(&mut b, now);
                }
                return;
            }
            // A request sent before the breaker opened.
            BreakerState::Open => return,
            BreakerState::Closed => {}
        }
        let second = now.duration_since(b.origin).as_secs();
        match b.buckets.back_mut() {
            Some(last) if last.0 == second => {
                if success {
                    last.1 += 1
                } else {
                    last.2 += 1
                }
            }
            _ => b
                .buckets
                .push_back((second, u32::from(success), u32::from(!success))),
        }
        let window = self.config.window.as_secs().max(1);
        while b.buckets.front().is_some_and(|f| f.0 + window <= second) {
            b.buckets.pop_front();
        }
        let (ok, failed) = b
            .buckets
            .iter()
            .fold((0u64, 0u64), |(o, f), x| (o + u64::from(x.1), f + u64::from(x.2)));
        let total = ok + failed;
        if total >= u64::from(self.config.min_requests)
            && failed as f64 >= self.config.threshold * total as f64
        {
            open(&mut b, now);
        }
    }

    /// A request let through ended without an outcome (refused before it
    /// reached the node): frees the probe without counting anything.
    pub(crate) fn abandon(&self) {
        self.lock().probe_in_flight = false;
    }
}

fn open(b: &mut Inner, now: Instant) {
    b.state = BreakerState::Open;
    b.opened_at = now;
    b.buckets.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BreakerConfig {
        BreakerConfig {
            threshold: 0.5,
            window: Duration::from_secs(60),
            min_requests: 4,
            cooldown: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_at_the_threshold_once_enough_requests_were_seen() {
        let b = Breaker::new(small());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(b.allow_at(t));
            b.record_at(false, t);
        }
        // Three failures are below min_requests: still closed.
        assert_eq!(b.state_at(t), BreakerState::Closed);
        b.record_at(true, t);
        // 3 of 4 failed >= 0.5.
        assert_eq!(b.state_at(t), BreakerState::Open);
        assert!(!b.allow_at(t + Duration::from_secs(1)));
    }

    #[test]
    fn a_healthy_share_keeps_it_closed() {
        let b = Breaker::new(small());
        let t = Instant::now();
        for i in 0..40 {
            b.record_at(i % 3 == 0, t);
            b.record_at(true, t);
        }
        assert_eq!(b.state_at(t), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_outcome_decides() {
        let b = Breaker::new(small());
        let t = Instant::now();
        for _ in 0..4 {
            b.record_at(false, t);
        }
        let later = t + Duration::from_secs(5);
        assert_eq!(b.state_at(later), BreakerState::HalfOpen);
        assert!(b.allow_at(later));
        assert!(!b.allow_at(later), "one probe at a time");
        b.record_at(false, later);
        assert_eq!(b.state_at(later), BreakerState::Open);
        let again = later + Duration::from_secs(5);
        assert!(b.allow_at(again));
        b.record_at(true, again);
        assert_eq!(b.state_at(again), BreakerState::Closed);
        assert!(b.allow_at(again));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new(BreakerConfig {
            window: Duration::from_secs(10),
            ..small()
        });
        let t = Instant::now();
        for _ in 0..3 {
            b.record_at(false, t);
        }
        // Eleven seconds on, the three failures are gone: 1 failure of 4.
        let later = t + Duration::from_secs(11);
        b.record_at(false, later);
        for _ in 0..3 {
            b.record_at(true, later);
        }
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let b = Breaker::new(small());
        let t = Instant::now();
        for _ in 0..4 {
            b.record_at(false, t);
        }
        let later = t + Duration::from_secs(6);
        assert!(b.allow_at(later));
        b.abandon();
        assert!(b.allow_at(later));
    }
}
