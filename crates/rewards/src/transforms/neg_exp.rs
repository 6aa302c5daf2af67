//! Φ(u) = -exp(-t·u), t > 0: InfAlign's transform for worst-of-N (best-of-N jailbreaking,
//! docs/ALGORITHMS.md B.4). It is concave and penalises the bottom quantiles most, matching the
//! shape `-(1-c)^(2N-1)` of the optimal worst-of-N transform near the base policy.

use serde::{Deserialize, Serialize};

use super::RewardTransform;

/// `-exp(-t u)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NegExp {
    /// The exponent's scale.
    pub t: f64,
}

impl RewardTransform for NegExp {
    fn apply(&self, u: f64) -> f64 {
        -(-self.t * u).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_exp() {
        let e = NegExp { t: 2.0 };
        assert!((e.apply(0.25) + (-0.5f64).exp()).abs() < 1e-12);
        assert_eq!(e.apply(0.0), -1.0);
        super::super::assert_monotone(&e);
    }
}
