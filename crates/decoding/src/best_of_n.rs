//! Best-of-N (docs/ALGORITHMS.md A.5.2, B.1): draw N samples from the policy, return the one with
//! the highest reward (the first on ties). Its KL to the policy is at most ln N − (N−1)/N and
//! its win rate against one policy sample at most N/(N+1) (Beirami et al. 2024).

use infalign_core::Seed;
use infalign_rewards::Reward;

use crate::candidates::{reward_of, scored_candidates};
use crate::generate::{GenerationConfig, Generator};
use crate::strategy::DecodingStrategy;
use crate::{DecodingError, Sample};

/// Best of `n` by `reward`.
pub struct BestOfN<'r> {
    /// Samples per prompt.
    pub n: usize,
    /// The reward that ranks them.
    pub reward: &'r dyn Reward,
}

impl std::fmt::Debug for BestOfN<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BestOfN(n = {}, reward = {})",
            self.n,
            self.reward.name()
        )
    }
}

impl DecodingStrategy for BestOfN<'_> {
    /// One sample per prompt, with its reward.
    fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        check_n(self.n)?;
        let groups = scored_candidates(generator, prompts, self.n, cfg, self.reward, seed)?;
        Ok(groups.into_iter().map(|g| pick(g, Pick::Best)).collect())
    }
}

/// Which end of the reward ranking a selection keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The highest reward (best-of-N).
    Best,
    /// The lowest reward (worst-of-N).
    Worst,
}

/// The first sample with the highest (`Best`) or lowest (`Worst`) reward.
pub(crate) fn pick(group: Vec<Sample>, which: Pick) -> Sample {
    let better = |a: f64, b: f64| match which {
        Pick::Best => a > b,
        Pick::Worst => a < b,
    };
    let mut chosen = 0;
    for (i, s) in group.iter().enumerate() {
        if better(reward_of(s), reward_of(&group[chosen])) {
            chosen = i;
        }
    }
    group.into_iter().nth(chosen).expect("n >= 1")
}

pub(crate) fn check_n(n: usize) -> Result<(), DecodingError> {
    crate::strategy::at_least_one("n", n)
}
