//! Open-loop schedule (wrk2's method). Request `i` of a connection is due at
//! `start + i * period`, whether or not the server kept up. Latency is taken
//! from that intended time, so a stalled server is charged for every request
//! it delayed, not only the one it was working on (no coordinated omission).

/// The send schedule of one connection.
#[derive(Debug, Clone)]
pub struct Pacer {
    start_ns: u64,
    period_ns: f64,
    issued: u64,
}

impl Pacer {
    /// `rate` requests per second from `start_ns`.
    pub fn new(start_ns: u64, rate: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "pacing rate must be positive");
        Pacer {
            start_ns,
            period_ns: 1e9 / rate,
            issued: 0,
        }
    }

    /// Connection `index` of `total` sharing `total_rate`: each gets an equal
    /// share, phase-shifted so that the sends of all connections interleave
    /// evenly instead of bursting together.
    pub fn for_connection(start_ns: u64, total_rate: f64, index: usize, total: usize) -> Self {
        let share = total_rate / total as f64;
        let offset = (index as f64 * 1e9 / total_rate) as u64;
        Pacer::new(start_ns + offset, share)
    }

    /// Intended send time of the next request.
    #[inline]
    pub fn next_due_ns(&self) -> u64 {
        self.start_ns + (self.issued as f64 * self.period_ns) as u64
    }

    /// If the next request is due at `now_ns`, takes it and returns its
    /// intended send time.
    #[inline]
    pub fn take_due(&mut self, now_ns: u64) -> Option<u64> {
        let due = self.next_due_ns();
        (due <= now_ns).then(|| {
            self.issued += 1;
            due
        })
    }

    /// Requests due by `now_ns` and not yet taken (the client-side backlog).
    pub fn backlog(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let due = ((now_ns - self.start_ns) as f64 / self.period_ns).floor() as u64 + 1;
        due.saturating_sub(self.issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_from_the_start() {
        let mut p = Pacer::new(1_000, 1000.0); // one per millisecond
        assert_eq!(p.take_due(999), None);
        assert_eq!(p.take_due(1_000), Some(1_000));
        assert_eq!(p.take_due(1_000), None);
        assert_eq!(p.next_due_ns(), 1_001_000);
        assert_eq!(p.take_due(1_000_999), None);
        assert_eq!(p.take_due(1_001_000), Some(1_001_000));
    }

    #[test]
    fn a_late_sender_catches_up_with_original_send_times() {
        // The sender wakes 5 ms late: five requests are due, each keeps its
        // own intended time, so their latency includes the wait.
        let mut p = Pacer::new(0, 1000.0);
        assert_eq!(p.backlog(4_500_000), 5);
        let due: Vec<u64> = std::iter::from_fn(|| p.take_due(4_500_000)).collect();
        assert_eq!(due, vec![0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]);
        assert_eq!(p.backlog(4_500_000), 0);
    }

    #[test]
    fn one_second_at_a_fractional_rate_sends_the_rate() {
        let mut p = Pacer::new(0, 333.3);
        let mut n = 0;
        let mut t = 0;
        while t < 1_000_000_000 {
            while p.take_due(t).is_some() {
                n += 1;
            }
            t += 250_000;
        }
        assert_eq!(n, 334); // requests at 0, 3.0003 ms, ... up to 999.9 ms
    }

    #[test]
    fn connections_interleave_to_the_total_rate() {
        // 4 connections sharing 4000/s: together one request every 250 µs.
        let mut pacers: Vec<Pacer> = (0..4).map(|i| Pacer::for_connection(0, 4000.0, i, 4)).collect();
        let mut times: Vec<u64> = Vec::new();
        for p in &mut pacers {
            while let Some(t) = p.take_due(10_000_000 - 1) {
                times.push(t);
            }
        }
        times.sort_unstable();
        assert_eq!(times.len(), 40);
        for (i, t) in times.iter().enumerate() {
            assert_eq!(*t, i as u64 * 250_000);
        }
    }
}
