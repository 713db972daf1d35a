//! What to send: which key, which value size, get or set. Everything here is
//! decided per request from the worker's own `Rng`, without allocation.

use crate::rng::Rng;
use crate::zipf::Zipf;

/// The longest key we format: the protocols' common limit (memcached: 250).
pub const MAX_KEY_LEN: usize = 250;

/// How key indices are drawn.
#[derive(Debug, Clone)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Key index `rank - 1`, rank drawn with P(k) ∝ k^-skew.
    Zipf(Zipf),
}

/// The key space: `count` keys named `prefix` + a zero-padded decimal index.
///
/// Fixed-width names make every item the same size, so memory per item is
/// comparable between servers.
#[derive(Debug, Clone)]
pub struct KeySpace {
    count: u64,
    prefix: Vec<u8>,
    width: usize,
    dist: KeyDist,
}

impl KeySpace {
    /// `count` keys (at least 1); `zipf_skew` `None` for uniform.
    pub fn new(count: u64, prefix: &str, zipf_skew: Option<f64>) -> anyhow::Result<Self> {
        anyhow::ensure!(count >= 1, "--keys must be at least 1");
        let width = (count - 1).max(1).ilog10() as usize + 1;
        anyhow::ensure!(prefix.len() + width <= MAX_KEY_LEN, "key prefix too long");
        anyhow::ensure!(
            !prefix.bytes().any(|b| b <= b' ' || b == 0x7f),
            "key prefix must not contain spaces or control characters"
        );
        let dist = match zipf_skew {
            None => KeyDist::Uniform,
            Some(s) => {
                anyhow::ensure!(s > 0.0 && s.is_finite(), "zipf skew must be > 0");
                KeyDist::Zipf(Zipf::new(count, s))
            }
        };
        Ok(KeySpace {
            count,
            prefix: prefix.as_bytes().to_vec(),
            width,
            dist,
        })
    }

    /// Number of keys.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// A key index drawn from the distribution.
    #[inline]
    pub fn pick(&self, rng: &mut Rng) -> u64 {
        match &self.dist {
            KeyDist::Uniform => rng.below(self.count),
            KeyDist::Zipf(z) => z.sample(rng) - 1,
        }
    }

    /// The bytes every key name starts with.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Digits of the index in every key name (names are fixed width).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Writes the name of key `index` into `out`; returns its length.
    #[inline]
    pub fn format(&self, index: u64, out: &mut [u8; MAX_KEY_LEN]) -> usize {
        let p = self.prefix.len();
        out[..p].copy_from_slice(&self.prefix);
        self.write_digits(index, &mut out[p..p + self.width]);
        p + self.width
    }

    /// Writes the zero-padded index part of key `index`'s name into `out`
    /// (`width()` bytes).
    #[inline]
    pub fn write_digits(&self, index: u64, out: &mut [u8]) {
        let mut v = index;
        for d in out[..self.width].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
}

/// Value sizes: fixed or uniform in an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSize {
    /// Smallest size in bytes.
    pub min: usize,
    /// Largest size in bytes.
    pub max: usize,
}

impl ValueSize {
    /// Parses `100` or `100-1000`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parse_one = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|e| format!("bad size {t:?}: {e}"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse_one(a)?, parse_one(b)?),
            None => {
                let v = parse_one(s)?;
                (v, v)
            }
        };
        if min > max {
            return Err(format!("value size range {s:?} is reversed"));
        }
        if max > 64 << 20 {
            return Err("value size above 64 MiB".into());
        }
        Ok(ValueSize { min, max })
    }

    /// A size for the next set.
    #[inline]
    pub fn pick(&self, rng: &mut Rng) -> usize {
        if self.min == self.max {
            self.min
        } else {
            self.min + rng.below((self.max - self.min + 1) as u64) as usize
        }
    }
}

/// The get:set mix, as the probability that a request is a get.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// Parts of gets.
    pub get: u32,
    /// Parts of sets.
    pub set: u32,
}

impl Ratio {
    /// Parses `GET:SET`, e.g. `9:1`, `1:0` (only gets), `0:1` (only sets).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (g, st) = s
            .split_once(':')
            .ok_or_else(|| format!("ratio {s:?} is not GET:SET"))?;
        let get = g
            .trim()
            .parse::<u32>()
            .map_err(|e| format!("bad ratio {s:?}: {e}"))?;
        let set = st
            .trim()
            .parse::<u32>()
            .map_err(|e| format!("bad ratio {s:?}: {e}"))?;
        if get == 0 && set == 0 {
            return Err("ratio 0:0 sends nothing".into());
        }
        Ok(Ratio { get, set })
    }

    /// True when the next request should be a get.
    #[inline]
    pub fn is_get(&self, rng: &mut Rng) -> bool {
        match (self.get, self.set) {
            (_, 0) => true,
            (0, _) => false,
            (g, s) => rng.below((g + s) as u64) < g as u64,
        }
    }
}

/// One filled buffer of value bytes; sets send a prefix of it.
pub fn value_bytes(max: usize) -> Vec<u8> {
    // Printable and not all equal, so a server that compresses still works.
    (0..max).map(|i| b'a' + (i % 26) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_with_prefix() {
        let ks = KeySpace::new(1000, "character:", None).unwrap();
        let mut buf = [0u8; MAX_KEY_LEN];
        let n = ks.format(7, &mut buf);
        assert_eq!(&buf[..n], b"character:007");
        let n = ks.format(999, &mut buf);
        assert_eq!(&buf[..n], b"character:999");
        let one = KeySpace::new(1, "k", None).unwrap();
        let n = one.format(0, &mut buf);
        assert_eq!(&buf[..n], b"k0");
        let ten = KeySpace::new(10, "", None).unwrap();
        let n = ten.format(9, &mut buf);
        assert_eq!(&buf[..n], b"9");
        let eleven = KeySpace::new(11, "", None).unwrap();
        let n = eleven.format(10, &mut buf);
        assert_eq!(&buf[..n], b"10");
    }

    #[test]
    fn bad_prefix_and_empty_space_are_refused() {
        assert!(KeySpace::new(0, "k", None).is_err());
        assert!(KeySpace::new(10, "a b", None).is_err());
        assert!(KeySpace::new(10, &"x".repeat(250), None).is_err());
        assert!(KeySpace::new(10, "k", Some(0.0)).is_err());
    }

    #[test]
    fn picks_stay_inside_the_space() {
        let mut rng = Rng::new(5);
        for skew in [None, Some(0.99)] {
            let ks = KeySpace::new(37, "k", skew).unwrap();
            assert!((0..10_000).all(|_| ks.pick(&mut rng) < 37));
        }
    }

    #[test]
    fn value_size_parsing() {
        assert_eq!(ValueSize::parse("100"), Ok(ValueSize { min: 100, max: 100 }));
        assert_eq!(
            ValueSize::parse("100-1000"),
            Ok(ValueSize { min: 100, max: 1000 })
        );
        assert!(ValueSize::parse("1000-100").is_err());
        assert!(ValueSize::parse("abc").is_err());
        let vs = ValueSize::parse("10-12").unwrap();
        let mut rng = Rng::new(2);
        let mut seen = [false; 3];
        for _ in 0..1000 {
            let v = vs.pick(&mut rng);
            assert!((10..=12).contains(&v));
            seen[v - 10] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn ratio_parsing_and_mix() {
        assert_eq!(Ratio::parse("9:1"), Ok(Ratio { get: 9, set: 1 }));
        assert!(Ratio::parse("0:0").is_err());
        assert!(Ratio::parse("9").is_err());
        let mut rng = Rng::new(9);
        let r = Ratio::parse("9:1").unwrap();
        let gets = (0..100_000).filter(|_| r.is_get(&mut rng)).count();
        assert!((89_000..91_000).contains(&gets), "{gets} gets of 100000");
        let only_sets = Ratio::parse("0:1").unwrap();
        assert!((0..100).all(|_| !only_sets.is_get(&mut rng)));
    }
}
