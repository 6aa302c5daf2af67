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
    score_candidates(&mut samples, reward)?;
    let mut groups = Vec::with_capacity(prompts.len());
    let mut it = samples.into_iter();
    for _ in 0..prompts.len() {
        groups.push(it.by_ref().take(n).collect());
    }
    Ok(groups)
}

/// Sets each candidate's reward, scored in one batch, and clears its per-step KLs: a candidate
/// is served only through a selection, which is not a tokenwise distribution, so its KL is
/// bounded, not summed per step.
fn score_candidates(samples: &mut [Sample], reward: &dyn Reward) -> Result<(), DecodingError> {
    let rewards = score_samples(samples, reward)?;
    for (s, r) in samples.iter_mut().zip(rewards) {
        s.reward = Some(r);
        s.step_kl.clear();
    }
    Ok(())
}

/// Above this many candidate rows in all (prompts × N), selections decode and score their
/// candidates block by block and keep only what they choose ([`for_each_candidate`]): memory
/// stays bounded whatever N is. Below it, all candidates are decoded and scored at once.
pub(crate) const STREAM_ROWS: usize = 4096;

/// Every candidate of every prompt (`n` per prompt), decoded block by block and handed to `f`
/// with its index among its prompt's candidates, prompt-major; nothing is kept. With a reward,
/// each is scored (`reward` set) with its per-step KLs cleared, as [`scored_candidates`] leaves
/// them; without, only decoded (a second pass whose rewards are known).
pub(crate) fn for_each_candidate(
    generator: &Generator<'_>,
    prompts: &[String],
    n: usize,
    cfg: &GenerationConfig,
    reward: Option<&dyn Reward>,
    seed: Seed,
    f: &mut dyn FnMut(Sample, usize),
) -> Result<(), DecodingError> {
    let cfg = GenerationConfig { n, ..cfg.clone() };
    let mut seen = vec![0usize; prompts.len()];
    generator.generate_each(prompts, &cfg, seed, &mut |mut block| {
        if let Some(reward) = reward {
            score_candidates(&mut block, reward)?;
        }
        for s in block {
            let j = seen[s.prompt_index];
            seen[s.prompt_index] += 1;
            f(s, j);
        }
        Ok(())
    })
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
