//! Time: the wall clock in unix microseconds, the hybrid logical clock
//! that versions writes, and RFC 3339 timestamps (UTC, millisecond
//! precision) from unix milliseconds, without a date crate: the conversion
//! is a dozen lines of civil-calendar arithmetic (H. Hinnant's
//! `civil_from_days`).

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

    /// A version made elsewhere (a replicated write): later ticks exceed it.
    #[inline]
    pub fn observe(&mut self, version_us: u64) {
        self.last_us = self.last_us.max(version_us);
    }
}

/// Formats unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_from_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_from_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_from_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_unix_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            rfc3339_from_unix_ms(4_107_542_399_999),
            "2100-02-28T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_from_unix_ms(1_735_689_599_000),
            "2024-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        // Walks 1970..2300 day by day: dates strictly increase, months and
        // days stay in range, and leap days appear exactly where they should.
        let mut prev = (1969, 12, 31);
        for d in 0..120_000i64 {
            let (y, m, day) = civil_from_days(d);
            assert!((1..=12).contains(&m) && (1..=31).contains(&day));
            assert!((y, m, day) > prev, "{d}");
            if m == 2 && day == 29 {
                assert!(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0), "{y}");
            }
            prev = (y, m, day);
        }
    }
}
