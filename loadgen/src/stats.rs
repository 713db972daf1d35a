//! What a worker counts: requests by kind and outcome, errors by status, and
//! latency histograms. Each worker owns its `Stats` (no shared atomics on the
//! hot path); the runner merges them.

use hdrhistogram::Histogram;

use crate::protocol::{Kind, Outcome};

/// Longest latency kept exactly (60 s, in nanoseconds); longer ones saturate.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// A new latency histogram in nanoseconds with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("static histogram bounds are valid")
}

/// The name of an error status, stored inline so counting an error never
/// allocates (a server may answer every request with one).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrLabel {
    len: u8,
    bytes: [u8; 31],
}

impl ErrLabel {
    /// A label from the first 31 bytes of `text`.
    pub fn new(text: &[u8]) -> Self {
        let len = text.len().min(31);
        let mut bytes = [0u8; 31];
        bytes[..len].copy_from_slice(&text[..len]);
        ErrLabel {
            len: len as u8,
            bytes,
        }
    }

    /// The label as text (invalid UTF-8 shown as `?`).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

impl std::fmt::Debug for ErrLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Errors counted by label, in first-seen order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts(Vec<(ErrLabel, u64)>);

impl ErrorCounts {
    /// Adds `n` errors of `label`.
    pub fn add(&mut self, label: ErrLabel, n: u64) {
        match self.0.iter_mut().find(|(l, _)| *l == label) {
            Some((_, c)) => *c += n,
            None => self.0.push((label, n)),
        }
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, c)| c).sum()
    }

    /// `(label, count)` pairs, largest count first.
    pub fn sorted(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.0.iter().map(|(l, c)| (l.as_str().to_owned(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (l, c) in &other.0 {
            self.add(*l, *c);
        }
    }
}

/// Counters and latencies of one worker, or of several merged.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Gets answered (hits, misses and error answers).
    pub gets: u64,
    /// Sets answered.
    pub sets: u64,
    /// Gets that found their key.
    pub hits: u64,
    /// Gets whose key was absent.
    pub misses: u64,
    /// Requests that failed, by status; includes requests lost with a
    /// connection (`conn_closed`, `protocol`) that got no answer.
    pub errors: ErrorCounts,
    /// Latency of answered gets, nanoseconds.
    pub get_latency: Histogram<u64>,
    /// Latency of answered sets, nanoseconds.
    pub set_latency: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            gets: 0,
            sets: 0,
            hits: 0,
            misses: 0,
            errors: ErrorCounts::default(),
            get_latency: new_histogram(),
            set_latency: new_histogram(),
        }
    }
}

impl Stats {
    /// Counts one answered request with its latency (the worker batches
    /// equal latencies through `count` and `record_latency` instead).
    #[cfg(test)]
    pub fn record(&mut self, kind: Kind, outcome: Outcome, latency_ns: u64) {
        self.count(kind, outcome);
        self.record_latency(kind, latency_ns, 1);
    }

    /// Adds `n` answers of `kind` that took `latency_ns` each to the histogram
    /// (their counts go through `count`).
    #[inline]
    pub fn record_latency(&mut self, kind: Kind, latency_ns: u64, n: u64) {
        let hist = match kind {
            Kind::Get => &mut self.get_latency,
            Kind::Set => &mut self.set_latency,
        };
        let _ = hist.record_n(latency_ns.clamp(1, HIST_MAX_NS), n);
    }

    /// Counts one answered request, without its latency.
    #[inline]
    pub fn count(&mut self, kind: Kind, outcome: Outcome) {
        match kind {
            Kind::Get => self.gets += 1,
            Kind::Set => self.sets += 1,
        }
        match outcome {
            Outcome::Hit => self.hits += 1,
            Outcome::Miss => self.misses += 1,
            Outcome::Stored => {}
            Outcome::Error(label) => self.errors.add(label, 1),
        }
    }

    /// Answered requests.
    pub fn ops(&self) -> u64 {
        self.gets + self.sets
    }

    /// Hits over gets that were not errors; `None` without such gets.
    pub fn hit_rate(&self) -> Option<f64> {
        let looked_up = self.hits + self.misses;
        (looked_up > 0).then(|| self.hits as f64 / looked_up as f64)
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.gets += other.gets;
        self.sets += other.sets;
        self.hits += other.hits;
        self.misses += other.misses;
        self.errors.merge(&other.errors);
        self.get_latency
            .add(&other.get_latency)
            .expect("histograms share bounds");
        self.set_latency
            .add(&other.set_latency)
            .expect("histograms share bounds");
    }

    /// Gets and sets in one histogram.
    pub fn all_latency(&self) -> Histogram<u64> {
        let mut h = self.get_latency.clone();
        h.add(&self.set_latency).expect("histograms share bounds");
        h
    }

    /// Empties the counters, keeping the histograms' memory.
    pub fn reset(&mut self) {
        self.gets = 0;
        self.sets = 0;
        self.hits = 0;
        self.misses = 0;
        self.errors = ErrorCounts::default();
        self.get_latency.reset();
        self.set_latency.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_inline_and_truncated() {
        assert_eq!(ErrLabel::new(b"CACHE_003").as_str(), "CACHE_003");
        assert_eq!(ErrLabel::new(&[b'x'; 40]).as_str().len(), 31);
    }

    #[test]
    fn merging_adds_counts_and_latencies() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for i in 1..=1000u64 {
            a.record(Kind::Get, Outcome::Hit, i * 1000);
        }
        for i in 1001..=2000u64 {
            b.record(Kind::Get, Outcome::Miss, i * 1000);
        }
        b.record(Kind::Set, Outcome::Stored, 5_000);
        b.record(Kind::Set, Outcome::Error(ErrLabel::new(b"CACHE_003")), 7_000);
        a.record(Kind::Set, Outcome::Error(ErrLabel::new(b"CACHE_003")), 7_000);
        a.errors.add(ErrLabel::new(b"conn_closed"), 3);
        a.merge(&b);
        assert_eq!((a.gets, a.sets, a.hits, a.misses), (2000, 3, 1000, 1000));
        assert_eq!(a.ops(), 2003);
        assert_eq!(a.hit_rate(), Some(0.5));
        assert_eq!(
            a.errors.sorted(),
            vec![("conn_closed".into(), 3), ("CACHE_003".into(), 2)]
        );
        assert_eq!(a.errors.total(), 5);
        assert_eq!(a.get_latency.len(), 2000);
        // The median of 1..=2000 µs is 1000 µs; histograms keep 3 digits.
        let p50 = a.get_latency.value_at_quantile(0.5) as f64;
        assert!((p50 - 1_000_000.0).abs() < 1_000.0, "p50 {p50}");
        let p99 = a.get_latency.value_at_quantile(0.99) as f64;
        assert!((p99 - 1_980_000.0).abs() < 2_000.0, "p99 {p99}");
        let all = a.all_latency();
        assert_eq!(all.len(), 2003);
        assert!(all.min() <= 5_000);
        a.reset();
        assert_eq!((a.ops(), a.errors.total(), a.get_latency.len()), (0, 0, 0));
        assert_eq!(a.hit_rate(), None);
    }

    #[test]
    fn out_of_range_latencies_saturate_instead_of_vanishing() {
        let mut s = Stats::default();
        s.record(Kind::Get, Outcome::Hit, 0);
        s.record(Kind::Get, Outcome::Hit, u64::MAX);
        assert_eq!(s.get_latency.len(), 2);
    }
}
