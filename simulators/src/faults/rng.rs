//! Reproducible randomness without a random number generator's state.
//!
//! Every random decision the simulator makes is a pure function of `(seed, rule id, match
//! index, draw number)`: the n-th request that matches a rule gets the same draws whichever
//! request it is and however concurrent requests interleave, so two runs with the same seed make
//! the same sequence of decisions. The mixer is splitmix64's finaliser; normal variates come from
//! Box–Muller over two uniform draws.

/// The splitmix64 finaliser: a cheap, well-distributed 64-bit mix.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a over bytes: a stable hash of a rule id (std's hasher is randomly keyed per process).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// The draws for one match of one rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Draws {
    base: u64,
}

impl Draws {
    /// Draws for the `index`-th match of rule `rule_id` under `seed`.
    pub(crate) fn new(seed: u64, rule_id: &str, index: u64) -> Self {
        Self { base: mix(mix(seed ^ fnv1a(rule_id.as_bytes())) ^ index) }
    }

    /// The k-th uniform draw in `[0, 1)`.
    pub(crate) fn uniform(&self, k: u64) -> f64 {
        // 53 random bits, exactly representable as f64.
        (mix(self.base ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal variate from uniform draws `k` and `k + 1` (Box–Muller).
    pub(crate) fn standard_normal(&self, k: u64) -> f64 {
        let u1 = 1.0 - self.uniform(k); // (0, 1]: ln is finite
        let u2 = self.uniform(k + 1);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A deterministic identifier: `prefix` and 16 hex digits derived from `(seed, counter)`.
pub(crate) fn token(prefix: &str, seed: u64, counter: u64) -> String {
    format!("{prefix}{:016x}", mix(mix(seed) ^ counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_only_on_seed_rule_and_index() {
        let a = Draws::new(7, "bucket-errors", 3);
        let b = Draws::new(7, "bucket-errors", 3);
        assert_eq!(a.uniform(0).to_bits(), b.uniform(0).to_bits());
        assert_ne!(a.uniform(0), Draws::new(8, "bucket-errors", 3).uniform(0));
        assert_ne!(a.uniform(0), Draws::new(7, "bucket-errors", 4).uniform(0));
        assert_ne!(a.uniform(0), Draws::new(7, "karma-errors", 3).uniform(0));
        assert_ne!(a.uniform(0), a.uniform(1));
    }

    #[test]
    fn uniform_draws_are_spread_over_the_unit_interval() {
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|i| Draws::new(1, "r", i).uniform(0)).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let below_tenth = draws.iter().filter(|u| **u < 0.1).count() as f64 / n as f64;
        assert!((below_tenth - 0.1).abs() < 0.01, "P(u<0.1) = {below_tenth}");
    }

    #[test]
    fn box_muller_gives_a_standard_normal() {
        let n = 20_000;
        let z: Vec<f64> = (0..n).map(|i| Draws::new(3, "n", i).standard_normal(1)).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
