//! Φ(u) = exp(t·u), t > 0: InfAlign's transform for best-of-N (docs/ALGORITHMS.md B.4). It is
//! convex and concentrates reward on the top quantiles, matching the shape `c^(2N-1)` of the
//! optimal best-of-N transform near the base policy; a larger N wants a larger t.

use serde::{Deserialize, Serialize};

use super::RewardTransform;

/// `exp(t u)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exp {
    /// The exponent's scale.
    pub t: f64,
}

impl RewardTransform for Exp {
    fn apply(&self, u: f64) -> f64 {
        (self.t * u).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp() {
        let e = Exp { t: 3.0 };
        assert!((e.apply(0.5) - 1.5f64.exp()).abs() < 1e-12);
        assert_eq!(e.apply(0.0), 1.0);
        super::super::assert_monotone(&e);
    }
}
