//! Φ(u) = log(u + eps). The policy `π ∝ π_ref · u^(1/β)` it induces is, for `1/β = N - 1`,
//! exactly the best-of-N policy (docs/ALGORITHMS.md B.4, verified numerically in B.5): the
//! transform behind best-of-N distillation (BoNBoN, BOND, vBoN). `eps` keeps Φ(0) finite.

use serde::{Deserialize, Serialize};

use super::RewardTransform;

/// `log(u + eps)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// Added before the logarithm.
    pub eps: f64,
}

impl RewardTransform for Log {
    fn apply(&self, u: f64) -> f64 {
        (u + self.eps).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log() {
        let l = Log { eps: 1e-6 };
        assert!((l.apply(1.0) - (1.0f64 + 1e-6).ln()).abs() < 1e-15);
        assert!(l.apply(0.0).is_finite());
        super::super::assert_monotone(&l);
    }
}
