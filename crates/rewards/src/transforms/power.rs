//! Φ(u) = u^k, k > 0: a one-parameter family between the identity (k = 1) and the
//! top-quantile-seeking shapes of best-of-N (k = 2N - 1 matches the optimal best-of-N transform
//! near the base policy, docs/ALGORITHMS.md B.4).

use serde::{Deserialize, Serialize};

use super::RewardTransform;

/// `u^k`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// The exponent.
    pub k: f64,
}

impl RewardTransform for Power {
    fn apply(&self, u: f64) -> f64 {
        u.max(0.0).powf(self.k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power() {
        let p = Power { k: 3.0 };
        assert!((p.apply(0.5) - 0.125).abs() < 1e-15);
        super::super::assert_monotone(&p);
    }
}
