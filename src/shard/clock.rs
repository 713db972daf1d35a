//! Time as a shard sees it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current unix time in microseconds.
#[inline]
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A hybrid logical clock: the wall clock in microseconds, but strictly
/// increasing on each tick, so that two writes of a key never share a
/// version even within one microsecond or across a wall-clock step back.
#[derive(Debug, Default)]
pub struct HybridClock {
    last_us: u64,
}

impl HybridClock {
    /// The next version for a write happening at `now_us`.
    #[inline]
    pub fn tick(&mut self, now_us: u64) -> u64 {
        self.last_us = now_us.max(self.last_us + 1);
        self.last_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_strictly_increase() {
        let mut c = HybridClock::default();
        assert_eq!(c.tick(100), 100);
        assert_eq!(c.tick(100), 101);
        assert_eq!(c.tick(50), 102);
        assert_eq!(c.tick(200), 200);
    }
}
