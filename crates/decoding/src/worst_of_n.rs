//! Worst-of-N (InfAlign, docs/ALGORITHMS.md B.1): draw N samples, return the one with the lowest
//! reward (the first on ties). It models best-of-N jailbreaking: an adversary samples N times
//! and keeps the worst response, so an aligned model's worst-of-N response should still win.

use infalign_core::Seed;
use infalign_rewards::Reward;

use crate::best_of_n::{Pick, select};
use crate::generate::{GenerationConfig, Generator};
use crate::strategy::DecodingStrategy;
use crate::{DecodingError, Sample};

/// Worst of `n` by `reward`.
pub struct WorstOfN<'r> {
    /// Samples per prompt.
    pub n: usize,
    /// The reward that ranks them.
    pub reward: &'r dyn Reward,
}

impl std::fmt::Debug for WorstOfN<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WorstOfN(n = {}, reward = {})",
            self.n,
            self.reward.name()
        )
    }
}

impl DecodingStrategy for WorstOfN<'_> {
    /// One sample per prompt, with its reward.
    fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        select(
            generator,
            prompts,
            self.n,
            cfg,
            self.reward,
            seed,
            Pick::Worst,
        )
    }
}
