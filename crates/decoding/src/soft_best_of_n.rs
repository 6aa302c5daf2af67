//! Soft best-of-N (Verdun et al. 2025; docs/ALGORITHMS.md C): draw N samples, then return sample i
//! with probability `exp(r_i / τ) / Σ_j exp(r_j / τ)`. τ → 0 recovers best-of-N, τ → ∞ plain
//! sampling. The draw uses the seeded stream `seed.derive("soft-bon", prompt_index)`.

use infalign_core::Seed;
use infalign_rewards::Reward;
use rand::Rng;

use crate::best_of_n::check_n;
use crate::candidates::{reward_of, scored_candidates};
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
        let groups = scored_candidates(generator, prompts, self.n, cfg, self.reward, seed)?;
        Ok(groups
            .into_iter()
            .map(|g| {
                let idx = g[0].prompt_index as u64;
                let mut rng = seed.derive("soft-bon", idx).stream("soft-bon");
                let logits: Vec<f64> = g.iter().map(|s| reward_of(s) / self.tau).collect();
                let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let u = rng.random::<f64>() * w.iter().sum::<f64>();
                let mut acc = 0.0;
                let mut pick = w.len() - 1;
                for (i, wi) in w.iter().enumerate() {
                    acc += wi;
                    if u < acc {
                        pick = i;
                        break;
                    }
                }
                g.into_iter().nth(pick).expect("n >= 1")
            })
            .collect())
    }
}
