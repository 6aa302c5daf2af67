//! Best-of-N (docs/ALGORITHMS.md A.5.2, B.1): draw N samples from the policy, return the one with
//! the highest reward (the first on ties). Its KL to the policy is at most ln N − (N−1)/N and
//! its win rate against one policy sample at most N/(N+1) (Beirami et al. 2024).

use infalign_core::Seed;
use infalign_rewards::Reward;

use crate::candidates::{reward_of, scored_candidates};
use crate::generate::{GenerationConfig, Generator};
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

impl BestOfN<'_> {
    /// One sample per prompt, with its reward.
    pub fn decode(
        &self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        check_n(self.n)?;
        let groups = scored_candidates(generator, prompts, self.n, cfg, self.reward, seed)?;
        Ok(groups.into_iter().map(|g| pick_best(g, 1.0)).collect())
    }
}

/// The first sample with the highest `sign * reward`.
pub(crate) fn pick_best(group: Vec<Sample>, sign: f64) -> Sample {
    let mut best = 0;
    for (i, s) in group.iter().enumerate() {
        if sign * reward_of(s) > sign * reward_of(&group[best]) {
            best = i;
        }
    }
    group.into_iter().nth(best).expect("n >= 1")
}

pub(crate) fn check_n(n: usize) -> Result<(), DecodingError> {
    if n == 0 {
        return Err(DecodingError::InvalidParameter {
            field: "n",
            message: "must be at least 1".into(),
        });
    }
    Ok(())
}
