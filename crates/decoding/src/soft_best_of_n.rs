//! Soft best-of-N (Verdun et al. 2025; docs/ALGORITHMS.md C): draw N samples, then return sample i
//! with probability `exp(r_i / τ) / Σ_j exp(r_j / τ)`. τ → 0 recovers best-of-N, τ → ∞ plain
//! sampling. The draw uses the seeded stream `seed.derive("soft-bon", prompt_index)`.

use infalign_core::Seed;
use infalign_rewards::Reward;
use rand::Rng;

use crate::best_of_n::check_n;
use crate::candidates::{STREAM_ROWS, for_each_candidate, reward_of, scored_candidates};
use crate::generate::{GenerationConfig, Generator};
use crate::strategy::DecodingStrategy;
use crate::{DecodingError, Sample};

/// Soft best-of-`n` at temperature `tau`.
pub struct SoftBestOfN<'r> {
    /// Samples per prompt.
    pub n: usize,
    /// Temperature τ > 0 of the selection.
    pub tau: f64,
    /// The reward.
    pub reward: &'r dyn Reward,
}

impl std::fmt::Debug for SoftBestOfN<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SoftBestOfN(n = {}, tau = {}, reward = {})",
            self.n,
            self.tau,
            self.reward.name()
        )
    }
}

impl DecodingStrategy for SoftBestOfN<'_> {
    /// One sample per prompt, with its reward.
    fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        check_n(self.n)?;
        crate::strategy::positive("tau", self.tau)?;
        // Which of a prompt's candidates to return, from their rewards: the draw of the
        // prompt's own stream against the cumulative weights exp((r − max r)/τ).
        let choose = |prompt: usize, rewards: &[f64]| -> usize {
            let mut rng = seed.derive("soft-bon", prompt as u64).stream("soft-bon");
            let logits: Vec<f64> = rewards.iter().map(|r| r / self.tau).collect();
            let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let u = rng.random::<f64>() * w.iter().sum::<f64>();
            let mut acc = 0.0;
            for (i, wi) in w.iter().enumerate() {
                acc += wi;
                if u < acc {
                    return i;
                }
            }
            w.len() - 1
        };
        if prompts.len().saturating_mul(self.n) <= STREAM_ROWS {
            let groups = scored_candidates(generator, prompts, self.n, cfg, self.reward, seed)?;
            return Ok(groups
                .into_iter()
                .map(|g| {
                    let rewards: Vec<f64> = g.iter().map(reward_of).collect();
                    let pick = choose(g[0].prompt_index, &rewards);
                    g.into_iter().nth(pick).expect("n >= 1")
                })
                .collect());
        }
        // Past STREAM_ROWS: the rewards first, then the candidates decoded again without scoring
        // (each sample has its own random stream, so the second pass decodes the same ones),
        // keeping the chosen ones with the rewards of the first pass.
        let mut rewards = vec![Vec::with_capacity(self.n); prompts.len()];
        let (reward, n) = (self.reward, self.n);
        for_each_candidate(
            generator,
            prompts,
            n,
            cfg,
            Some(reward),
            seed,
            &mut |s, _| {
                rewards[s.prompt_index].push(reward_of(&s));
            },
        )?;
        let picks: Vec<usize> = rewards
            .iter()
            .enumerate()
            .map(|(p, r)| choose(p, r))
            .collect();
        let mut chosen: Vec<Option<Sample>> = vec![None; prompts.len()];
        for_each_candidate(generator, prompts, n, cfg, None, seed, &mut |mut s, j| {
            let p = s.prompt_index;
            if j == picks[p] {
                s.reward = Some(rewards[p][j]);
                s.step_kl.clear();
                chosen[p] = Some(s);
            }
        })?;
        Ok(chosen.into_iter().flatten().collect())
    }
}
