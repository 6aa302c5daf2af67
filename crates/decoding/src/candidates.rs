//! N scored candidates per prompt: the common first stage of best-of-N, worst-of-N and soft
//! best-of-N. The N samples of a prompt share its prefill (one KV cache, broadcast).

use infalign_core::Seed;
use infalign_rewards::{Reward, RewardInput};

use crate::generate::{GenerationConfig, Generator};
use crate::{DecodingError, Sample};

/// `n` samples of every prompt, each with its reward set; grouped by prompt.
pub fn scored_candidates(
    generator: &Generator<'_>,
    prompts: &[String],
    n: usize,
    cfg: &GenerationConfig,
    reward: &dyn Reward,
    seed: Seed,
) -> Result<Vec<Vec<Sample>>, DecodingError> {
    let cfg = GenerationConfig { n, ..cfg.clone() };
    let mut samples = generator.generate(prompts, &cfg, seed)?;
    let rewards = score_samples(&samples, reward)?;
    for (s, r) in samples.iter_mut().zip(rewards) {
        s.reward = Some(r);
        // A candidate is served only through a selection, which is not a tokenwise
        // distribution: its KL is bounded, not summed per step.
        s.step_kl.clear();
    }
    let mut groups = Vec::with_capacity(prompts.len());
    let mut it = samples.into_iter();
    for _ in 0..prompts.len() {
        groups.push(it.by_ref().take(n).collect());
    }
    Ok(groups)
}

/// The reward of a scored sample.
pub(crate) fn reward_of(s: &Sample) -> f64 {
    s.reward.unwrap_or(f64::NEG_INFINITY)
}

/// The reward of every sample, scored in one batch.
pub fn score_samples(samples: &[Sample], reward: &dyn Reward) -> Result<Vec<f64>, DecodingError> {
    let inputs: Vec<RewardInput<'_>> = samples.iter().map(Sample::reward_input).collect();
    Ok(reward.score_batch(&inputs)?)
}
