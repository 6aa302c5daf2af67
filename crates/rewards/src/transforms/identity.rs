//! Φ(u) = u. With calibrated rewards, KL-regularised RL on the identity transform solves the
//! standard win-rate objective exactly (docs/ALGORITHMS.md B.2): the "calibrated RLHF" baseline.

use serde::{Deserialize, Serialize};

use super::RewardTransform;

/// The identity transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity;

impl RewardTransform for Identity {
    fn apply(&self, u: f64) -> f64 {
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity() {
        assert_eq!(Identity.apply(0.3), 0.3);
        super::super::assert_monotone(&Identity);
    }
}
