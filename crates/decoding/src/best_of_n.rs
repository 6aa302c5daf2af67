//! Best-of-N (docs/ALGORITHMS.md A.5.2, B.1): draw N samples from the policy, return the one with
//! the highest reward (the first on ties). Its KL to the policy is at most ln N − (N−1)/N and
//! its win rate against one policy sample at most N/(N+1) (Beirami et al. 2024).

use infalign_core::Seed;
use infalign_rewards::Reward;

use crate::candidates::{STREAM_ROWS, for_each_candidate, reward_of, scored_candidates};
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
        select(
            generator,
            prompts,
            self.n,
            cfg,
            self.reward,
            seed,
            Pick::Best,
        )
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

/// The best or worst of `n` samples of every prompt: all candidates at once, or, past
/// [`STREAM_ROWS`] rows, block by block keeping each prompt's current choice. Either way the
/// first of equals.
pub(crate) fn select(
    generator: &Generator<'_>,
    prompts: &[String],
    n: usize,
    cfg: &GenerationConfig,
    reward: &dyn Reward,
    seed: Seed,
    which: Pick,
) -> Result<Vec<Sample>, DecodingError> {
    check_n(n)?;
    if prompts.len().saturating_mul(n) <= STREAM_ROWS {
        let groups = scored_candidates(generator, prompts, n, cfg, reward, seed)?;
        return Ok(groups.into_iter().map(|g| pick(g, which)).collect());
    }
    let mut chosen: Vec<Option<Sample>> = vec![None; prompts.len()];
    for_each_candidate(
        generator,
        prompts,
        n,
        cfg,
        Some(reward),
        seed,
        &mut |s, _| {
            let p = s.prompt_index;
            let slot = &mut chosen[p];
            let replace = slot
                .as_ref()
                .is_none_or(|c| better(which, reward_of(&s), reward_of(c)));
            if replace {
                *slot = Some(s);
            }
        },
    )?;
    Ok(chosen.into_iter().flatten().collect())
}

/// Whether reward `a` beats `b` for `which` (strictly: the first of equals stays).
fn better(which: Pick, a: f64, b: f64) -> bool {
    match which {
        Pick::Best => a > b,
        Pick::Worst => a < b,
    }
}

/// The first sample with the highest (`Best`) or lowest (`Worst`) reward.
pub(crate) fn pick(group: Vec<Sample>, which: Pick) -> Sample {
    let mut chosen = 0;
    for (i, s) in group.iter().enumerate() {
        if better(which, reward_of(s), reward_of(&group[chosen])) {
            chosen = i;
        }
    }
    group.into_iter().nth(chosen).expect("n >= 1")
}

pub(crate) fn check_n(n: usize) -> Result<(), DecodingError> {
    crate::strategy::at_least_one("n", n)
}
