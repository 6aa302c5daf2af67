//! The [`Reward`] trait: a scalar score of a (prompt, completion) pair.
//!
//! Invariant: a reward never returns NaN; implementations return
//! [`RewardError::NotFinite`] instead, and callers may rely on total ordering of scores.

use crate::RewardError;

/// What a reward sees of one sample.
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// The prompt text.
    pub prompt: &'a str,
    /// The completion text.
    pub completion: &'a str,
    /// Number of completion tokens (EOS included when the sample ended with it).
    pub tokens: usize,
    /// The completion's token ids, when the caller has them (empty otherwise).
    pub ids: &'a [u32],
}

/// A sequence-level reward `r(x, y)`.
pub trait Reward: Send + Sync {
    /// A short name for reports (`length`, `sentiment`, ...).
    fn name(&self) -> String;

    /// Scores one sample.
    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError>;

    /// Scores a batch (default: one at a time).
    fn score_batch(&self, inputs: &[RewardInput<'_>]) -> Result<Vec<f64>, RewardError> {
        inputs.iter().map(|i| self.score(i)).collect()
    }
}

/// Checks that a score is finite, naming the reward.
pub(crate) fn finite(name: &str, value: f64) -> Result<f64, RewardError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(RewardError::NotFinite {
            what: name.into(),
            value,
        })
    }
}
