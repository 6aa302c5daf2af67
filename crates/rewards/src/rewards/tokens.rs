//! The completion's token count T as a reward, linear (CD's `length` is its logarithm). On its
//! own it rewards length without bound; in a sum it shapes one, e.g. `length(t_max=12) -
//! 0.0833*tokens` = ln(T/12) − T/12, which peaks at T = 12 and falls on either side: a gold
//! reward whose optimum lies inside the base model's range, so that a proxy learned from base
//! samples can be over-optimised past it.
//!
//! Invariants: exactly T (the tokenizer's count, EOS included when the completion ended on it).

use crate::RewardError;
use crate::reward::{Reward, RewardInput};

/// `T`, the number of completion tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TokenCount;

impl Reward for TokenCount {
    fn name(&self) -> String {
        "tokens".into()
    }

    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        Ok(input.tokens as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward_from_spec;

    #[test]
    fn counts_tokens_and_shapes_a_peaked_length_in_a_sum() {
        let input = |t| RewardInput {
            prompt: "",
            completion: "",
            tokens: t,
            ids: &[],
        };
        assert_eq!(TokenCount.score(&input(7)).unwrap(), 7.0);
        // ln(T/12) − T/12: the largest value over T = 1..=40 is at T = 12, and it is −1 there.
        let gold = reward_from_spec("length(t_max=12) - 0.083333333333*tokens").unwrap();
        let values: Vec<f64> = (1..=40).map(|t| gold.score(&input(t)).unwrap()).collect();
        let best = (0..values.len()).fold(0, |b, i| if values[i] > values[b] { i } else { b });
        assert_eq!(best + 1, 12);
        assert!((values[11] + 1.0).abs() < 1e-9, "{}", values[11]);
    }
}
