//! An online step's experience: `prompts_per_step` prompts drawn from the seeded stream of the
//! step, k completions of each sampled from the current policy, scored by the reward pipeline
//! (raw r, or Φ(Ĉ(r)): InfAlign-CTRL's calibrate-and-transform, docs/ALGORITHMS.md B.4), with
//! their reference log-probs, sequence KL and the step's reward metrics.
//!
//! Invariants: the sampling of step s uses `seed.derive("policy-samples", s)`, the prompt draw
//! `seed.derive("policy-prompts", s)`; a non-finite reward or transformed reward stops the run
//! naming the step.

use burn::module::Module;
use burn::tensor::Device;
use infalign_core::Seed;
use infalign_decoding::{GenerationConfig, Generator};
use infalign_models::{CausalLm, LoadedModel};
use infalign_rewards::{Calibrator, Reward, RewardInput, RewardTransform, Transform};
use rand::Rng;

use crate::RlError;
use crate::policy_config::{Algo, KlMode, PolicyTrainConfig};
use crate::policy_objective::{StepBatch, StepMetrics};
use crate::token_table::TokenTable;

/// How rewards become the RL reward: raw, or Φ(Ĉ(r)).
pub struct RewardPipeline<'a> {
    /// The reward model or function r.
    pub reward: &'a dyn Reward,
    /// Reference rewards per prompt for Ĉ; `None`: the reward is used as it is (raw, or
    /// already calibrated by a calibrated reward model).
    pub calibrator: Option<&'a Calibrator>,
    /// Φ applied to Ĉ, or to the reward when there is no calibrator (identity when `None`).
    pub transform: Option<Transform>,
}

impl RewardPipeline<'_> {
    /// `Φ(Ĉ(r))` (or `r`) of each completion, with the raw r; the reward scores them all in
    /// one batch (one forward pass for a reward model).
    pub fn score(&self, inputs: &[RewardInput<'_>]) -> Result<Vec<(f64, f64)>, RlError> {
        let raw = self.reward.score_batch(inputs)?;
        inputs
            .iter()
            .zip(raw)
            .map(|(input, r)| {
                // Φ applies to Ĉ, or to r itself when r is already calibrated (a calibrated
                // reward model); with neither, r is used raw.
                let c = match self.calibrator {
                    Some(cal) => cal.calibrate(input.prompt, r)?,
                    None => r,
                };
                Ok((r, self.transform.as_ref().map_or(c, |t| t.apply(c))))
            })
            .collect()
    }
}

/// An online step's batch: k completions of each of `prompts_per_step` prompts sampled from the
/// current policy, scored, with their reference log-probs and KL; `m` gets the step's reward
/// and KL metrics.
#[allow(clippy::too_many_arguments)]
pub(crate) fn online_batch(
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    policy: &CausalLm,
    prompts: &[String],
    pipeline: &RewardPipeline<'_>,
    device: &Device,
    step: u64,
    beta: f64,
    m: &mut StepMetrics,
) -> Result<StepBatch, RlError> {
    let ad = device.clone().autodiff();
    let seed = Seed(cfg.seed);
    // 1. Sample k completions of each prompt from the current policy.
    let mut rng = seed.derive("policy-prompts", step).stream("prompts");
    let batch_prompts: Vec<String> = (0..cfg.prompts_per_step)
        .map(|_| prompts[rng.random_range(0..prompts.len())].clone())
        .collect();
    let current = LoadedModel::assemble(policy.valid(), lm.tokenizer.clone(), &lm.dir);
    let gen_cfg = GenerationConfig {
        max_new_tokens: cfg.max_new_tokens,
        n: cfg.k,
        // One prompt (its k samples) per chunk: chunks decode in parallel on the CPU.
        prompt_batch: 1,
        ..Default::default()
    };
    let samples = Generator::new(&current, device.clone()).generate(
        &batch_prompts,
        &gen_cfg,
        seed.derive("policy-samples", step),
    )?;
    // 2. Rewards, reference log-probs, KL.
    let rows: Vec<Vec<u32>> = samples
        .iter()
        .map(|s| s.prompt_ids.iter().chain(&s.tokens).copied().collect())
        .collect();
    let ref_lp = lm.model.sequence_logprobs(&rows, lm.pad_id, device)?;
    let mut scores = Vec::with_capacity(samples.len());
    let mut shaped_scores = Vec::with_capacity(samples.len());
    let mut ref_seq = Vec::with_capacity(samples.len());
    let inputs: Vec<RewardInput<'_>> = samples
        .iter()
        .map(infalign_decoding::Sample::reward_input)
        .collect();
    let scored = pipeline.score(&inputs)?;
    for &(raw, shaped) in &scored {
        for (quantity, value) in [("reward", raw), ("transformed reward", shaped)] {
            if !value.is_finite() {
                return Err(RlError::NonFinite {
                    step,
                    quantity,
                    value,
                });
            }
        }
    }
    for ((s, rlp), (raw, shaped)) in samples.iter().zip(&ref_lp).zip(scored) {
        let n_prompt = s.prompt_ids.len();
        let ref_sum = CausalLm::completion_logprob(rlp, n_prompt);
        let kl = s.policy_logprob() - ref_sum;
        ref_seq.push(ref_sum);
        let score = match cfg.kl_mode {
            KlMode::RewardK1 => shaped - beta * kl,
            KlMode::LossK3 => shaped,
        };
        scores.push(score);
        shaped_scores.push(shaped);
        let n = samples.len() as f64;
        m.kl += kl / n;
        m.scores += shaped / n;
        m.raw_reward += raw / n;
        m.entropy += -s.policy_logprob() / s.tokens.len().max(1) as f64 / n;
        m.response_length += s.tokens.len() as f64 / n;
        m.eos_rate += f64::from(u8::from(s.finish == infalign_decoding::Finish::Eos)) / n;
    }
    m.rlhf_reward = m.scores - beta * m.kl;
    // 3. The token table: which columns are completion tokens, old and reference log-probs.
    let prompt_lens: Vec<usize> = samples.iter().map(|s| s.prompt_ids.len()).collect();
    let old: Vec<&[f32]> = samples
        .iter()
        .map(|s| s.policy_logprobs.as_slice())
        .collect();
    let table = TokenTable::new(&rows, &prompt_lens, Some(&old), &ref_lp, lm.pad_id, &ad)?;
    let pairs = match cfg.algo {
        Algo::Dpo | Algo::Ipo => crate::preference_pairs::pairs_by_score(&shaped_scores, cfg.k),
        _ => Vec::new(),
    };
    Ok(StepBatch {
        table,
        scores,
        shaped_scores,
        ref_seq,
        pairs,
    })
}
