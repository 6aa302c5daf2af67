//! CD's length reward (Mudgal et al. 2024, §4, App. A): `r([x, y^T]) = ln(T / T_max)`, with T
//! the number of completion tokens. The paper uses `T_max = 1024`.
//!
//! Invariants: increasing in T; 0 at `T = T_max`; an empty completion counts as one token, so
//! the reward is always finite.

use crate::RewardError;
use crate::reward::{Reward, RewardInput};

/// `ln(T / T_max)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthReward {
    /// The normalising length.
    pub t_max: usize,
}

impl Default for LengthReward {
    fn default() -> Self {
        Self { t_max: 1024 }
    }
}

impl LengthReward {
    /// A length reward normalised by `t_max` tokens.
    pub fn new(t_max: usize) -> Result<Self, RewardError> {
        if t_max == 0 {
            return Err(RewardError::InvalidParameter {
                field: "t_max",
                message: "must be at least 1".into(),
            });
        }
        Ok(Self { t_max })
    }
}

impl Reward for LengthReward {
    fn name(&self) -> String {
        "length".into()
    }

    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        Ok((input.tokens.max(1) as f64 / self.t_max as f64).ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form() {
        let r = LengthReward::new(64).unwrap();
        let at = |t| {
            r.score(&RewardInput {
                prompt: "",
                completion: "",
                tokens: t,
                ids: &[],
            })
            .unwrap()
        };
        assert_eq!(at(64), 0.0);
        assert!((at(16) - (0.25f64).ln()).abs() < 1e-12);
        assert_eq!(at(0), at(1));
        assert!(LengthReward::new(0).is_err());
    }
}
