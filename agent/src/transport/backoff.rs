//! Reconnect delays: exponential, capped, with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[0, min(max, base · 2ⁿ)]`. Full
//! jitter spreads the reconnects of a whole fleet of agents after a recommender restart instead
//! of having them all knock at the same instants.

use std::time::Duration;

/// The delay schedule between connection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A schedule from `base` doubling up to `max`; `seed` drives the jitter.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
            rng: seed,
        }
    }

    /// The upper bound of the next delay: `min(max, base · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay (random in `[0, ceiling]`), and one attempt further.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        // Uniform enough for jitter: the modulo bias is below 2^-20 for ceilings under 2^44 ns.
        Duration::from_nanos(self.random() % nanos.saturating_add(1))
    }

    /// Back to the first delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// splitmix64: small and good enough to de-correlate agents; not for secrets.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_from_base_to_max_and_reset() {
        let mut b = Backoff::new(100 * MS, 30_000 * MS, 1);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(
            ceilings,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), 30_000 * MS, "no overflow after many attempts");
        b.reset();
        assert_eq!(b.ceiling(), 100 * MS);
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut b = Backoff::new(100 * MS, 30_000 * MS, 7);
        let mut at_cap = Vec::new();
        for _ in 0..200 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            if ceiling == 30_000 * MS {
                at_cap.push(d);
            }
        }
        // Full jitter: the capped delays spread over the whole range, not near the cap.
        let min = at_cap.iter().min().copied().unwrap_or_default();
        let max = at_cap.iter().max().copied().unwrap_or_default();
        assert!(min < 5_000 * MS && max > 25_000 * MS, "{min:?}..{max:?}");
        // Different seeds (agents) give different schedules.
        let mut x = Backoff::new(100 * MS, 30_000 * MS, 1);
        let mut y = Backoff::new(100 * MS, 30_000 * MS, 2);
        let xs: Vec<_> = (0..8).map(|_| x.next_delay()).collect();
        let ys: Vec<_> = (0..8).map(|_| y.next_delay()).collect();
        assert_ne!(xs, ys);
    }
}
