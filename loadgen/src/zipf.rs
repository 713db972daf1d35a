//! Zipfian key ranks by rejection-inversion (Hörmann and Derflinger, "Rejection-
//! inversion to generate variates from monotone discrete distributions", 1996).
//!
//! Chosen over YCSB's Gray et al. generator because setup is O(1) instead of an
//! O(n) zeta sum (a 100M-key space starts at once) and any skew `s > 0` works,
//! including `s = 1` and `s > 1`, where Gray's formula breaks down.
//! P(rank = k) is proportional to `1 / k^s` for k in 1..=n.

use crate::rng::Rng;

/// Samples ranks `1..=n` with P(k) ∝ k^-s.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s_div: f64,
}

impl Zipf {
    /// `n` elements (at least 1) with exponent `s` (greater than 0).
    pub fn new(n: u64, s: f64) -> Self {
        assert!(n >= 1, "zipf needs at least one element");
        assert!(s > 0.0 && s.is_finite(), "zipf exponent must be > 0");
        let mut z = Zipf {
            n: n as f64,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s_div: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.s_div = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// One rank in `1..=n`.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            // The first test accepts most samples without evaluating h.
            if k - x <= self.s_div || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws `samples` ranks and compares each rank's frequency with the exact
    /// probability, by a chi-square statistic over all `n` ranks.
    fn chi_square(n: u64, s: f64, samples: u64) -> f64 {
        let z = Zipf::new(n, s);
        let mut rng = Rng::new(42);
        let mut counts = vec![0u64; n as usize];
        for _ in 0..samples {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} out of 1..={n}");
            counts[(k - 1) as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let expected = samples as f64 * ((i + 1) as f64).powf(-s) / norm;
                (c as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    #[test]
    fn frequencies_follow_the_power_law_for_several_skews() {
        // 49 degrees of freedom: the 99.9% quantile of chi-square is about 85.
        for s in [0.5, 0.99, 1.0, 1.2, 2.0] {
            let chi = chi_square(50, s, 400_000);
            assert!(chi < 85.0, "skew {s}: chi-square {chi}");
        }
    }

    #[test]
    fn a_wrong_exponent_is_detected() {
        // Guards the test above: samples with s = 0.99 must not pass for s = 0.7.
        let z = Zipf::new(50, 0.99);
        let mut rng = Rng::new(1);
        let mut counts = [0u64; 50];
        for _ in 0..400_000 {
            counts[(z.sample(&mut rng) - 1) as usize] += 1;
        }
        let norm: f64 = (1..=50).map(|k| (k as f64).powf(-0.7)).sum();
        let chi: f64 = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let e = 400_000.0 * ((i + 1) as f64).powf(-0.7) / norm;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi > 1000.0, "chi-square {chi}");
    }

    #[test]
    fn large_key_space_starts_at_once_and_stays_in_range() {
        let z = Zipf::new(100_000_000, 0.99);
        let mut rng = Rng::new(3);
        let mut ones = 0;
        for _ in 0..100_000 {
            let k = z.sample(&mut rng);
            assert!((1..=100_000_000).contains(&k));
            ones += (k == 1) as u32;
        }
        // P(1) = 1 / H(1e8, 0.99) ≈ 0.051.
        assert!((4000..6300).contains(&ones), "rank 1 drawn {ones} times");
    }

    #[test]
    fn single_element() {
        let z = Zipf::new(1, 0.99);
        let mut rng = Rng::new(0);
        assert!((0..100).all(|_| z.sample(&mut rng) == 1));
    }
}
