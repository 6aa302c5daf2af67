//! KL-regularised policy optimisation against a frozen reference (InfAlign-CTRL, Algorithm 1;
//! ALGORITHMS.md B.4): sample from the policy, score with the reward, calibrate against the
//! reference rollouts of each prompt (Ĉ), transform (Φ), and take a policy-gradient step on
//! `Φ(Ĉ(r)) − β · KL`. Without a calibrator the raw reward is used (the standard RLHF baseline).
//!
//! The reward of a completion is placed on its terminal token (never on padding). The KL enters
//! either the reward, per sequence with the k1 estimator (default), or the loss, per token with
//! k3. β is fixed or adaptive (Ziegler et al. 2019: β is scaled to keep the measured KL near a
//! target).
//!
//! Invariant: the sampling of step s uses `seed.derive("policy-samples", s)`, the prompt order
//! `seed.derive("policy-prompts", s)`: a run is reproducible on the CPU.

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use infalign_core::{MetricsWriter, Seed};
use infalign_decoding::{GenerationConfig, Generator};
use infalign_models::optim::scale_and_clip;
use infalign_models::weights::read_f32;
use infalign_models::{CausalLm, LoadedModel, TokenBatch};
use infalign_rewards::{Calibrator, Reward, RewardInput, RewardTransform, Transform};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::RlError;

/// Where the KL penalty goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KlMode {
    /// In the reward, per sequence, with k1 = log π − log π_ref (TRL's default).
    #[default]
    RewardK1,
    /// In the loss, per token, with k3 = e^{−r} − 1 + r (GRPO-style). Its expected gradient is
    /// that of the forward KL(π_ref ‖ π), so the optimum is `β π_ref / (μ − R)`, not
    /// `π_ref e^{R/β} / Z` (both checked on a bandit in `tests/bandit.rs`).
    LossK3,
}

/// Hyperparameters of policy optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyTrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Prompts per step.
    pub prompts_per_step: usize,
    /// Samples per prompt (RLOO's k).
    pub k: usize,
    /// New tokens per sample at most.
    pub max_new_tokens: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// KL weight β (initial value when adaptive).
    pub beta: f64,
    /// Adaptive β: target KL per sequence (0: fixed β).
    pub target_kl: f64,
    /// Where the KL goes.
    pub kl_mode: KlMode,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Seed of sampling and prompt order.
    pub seed: u64,
    /// Run directory (metrics.jsonl, checkpoint/, final/); empty: no files.
    pub out_dir: PathBuf,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: u64,
}

impl Default for PolicyTrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            prompts_per_step: 8,
            k: 4,
            max_new_tokens: 32,
            lr: 1e-5,
            beta: 0.05,
            target_kl: 0.0,
            kl_mode: KlMode::RewardK1,
            grad_clip: 1.0,
            seed: 0,
            out_dir: PathBuf::new(),
            save_every: 0,
        }
    }
}

/// How rewards become the RL reward: raw, or Φ(Ĉ(r)).
pub struct RewardPipeline<'a> {
    /// The reward model or function r.
    pub reward: &'a dyn Reward,
    /// Reference rewards per prompt for Ĉ; `None` uses the raw reward.
    pub calibrator: Option<&'a Calibrator>,
    /// Φ applied to Ĉ (identity when `None`).
    pub transform: Option<Transform>,
}

impl RewardPipeline<'_> {
    /// `Φ(Ĉ(r))` (or `r`) of one completion, with the raw r.
    pub fn score(&self, input: &RewardInput<'_>) -> Result<(f64, f64), RlError> {
        let r = self.reward.score(input)?;
        let shaped = match self.calibrator {
            Some(cal) => {
                let c = cal.calibrate(input.prompt, r)?;
                self.transform.as_ref().map_or(c, |t| t.apply(c))
            }
            None => r,
        };
        Ok((r, shaped))
    }
}

/// Metrics of one step, with TRL's names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Mean sequence KL (k1) to the reference.
    pub kl: f64,
    /// Mean shaped reward Φ(Ĉ(r)).
    pub scores: f64,
    /// Mean raw reward r.
    pub raw_reward: f64,
    /// Mean per-token entropy estimate (−log π of sampled tokens).
    pub entropy: f64,
    /// Mean `scores − β · kl`.
    pub rlhf_reward: f64,
    /// Mean completion length.
    pub response_length: f64,
    /// Fraction of completions that ended with EOS.
    pub eos_rate: f64,
    /// β used.
    pub beta: f64,
    /// Loss value.
    pub loss: f64,
}

/// Trains `policy` (on an autodiff device) with RLOO against `reference` (plain device).
/// `lm` supplies the tokenizer and special ids. Returns the trained policy (no autodiff).
pub fn train_policy(
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    mut policy: CausalLm,
    prompts: &[String],
    pipeline: &RewardPipeline<'_>,
    device: &Device,
    mut on_step: impl FnMut(u64, &StepMetrics),
) -> Result<CausalLm, RlError> {
    if prompts.is_empty() {
        return Err(RlError::InvalidParameter {
            field: "prompts",
            message: "no prompts".into(),
        });
    }
    if !(cfg.beta >= 0.0 && cfg.beta.is_finite()) {
        return Err(RlError::InvalidParameter {
            field: "beta",
            message: format!("{} must be non-negative", cfg.beta),
        });
    }
    let ad = device.clone().autodiff();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut metrics = if cfg.out_dir.as_os_str().is_empty() {
        None
    } else {
        Some(MetricsWriter::append(cfg.out_dir.join("metrics.jsonl"))?)
    };
    let seed = Seed(cfg.seed);
    let mut beta = cfg.beta;
    for step in 1..=cfg.steps {
        // 1. Sample k completions of each prompt from the current policy.
        let mut rng = seed.derive("policy-prompts", step).stream("prompts");
        let batch_prompts: Vec<String> = (0..cfg.prompts_per_step)
            .map(|_| prompts[rng.random_range(0..prompts.len())].clone())
            .collect();
        let current = LoadedModel::assemble(policy.valid(), lm.tokenizer.clone(), &lm.dir);
        let gen_cfg = GenerationConfig {
            max_new_tokens: cfg.max_new_tokens,
            n: cfg.k,
            prompt_batch: cfg.prompts_per_step,
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
        let mut m = StepMetrics {
            beta,
            ..Default::default()
        };
        let mut scores = Vec::with_capacity(samples.len());
        for (s, rlp) in samples.iter().zip(&ref_lp) {
            let input = RewardInput {
                prompt: &s.prompt,
                completion: &s.completion,
                tokens: s.tokens.len(),
                ids: &s.tokens,
            };
            let (raw, shaped) = pipeline.score(&input)?;
            let n_prompt = s.prompt_ids.len();
            let ref_sum: f64 = rlp[n_prompt - 1..].iter().map(|&x| f64::from(x)).sum();
            let kl = s.policy_logprob() - ref_sum;
            let score = match cfg.kl_mode {
                KlMode::RewardK1 => shaped - beta * kl,
                KlMode::LossK3 => shaped,
            };
            scores.push(score);
            let n = samples.len() as f64;
            m.kl += kl / n;
            m.scores += shaped / n;
            m.raw_reward += raw / n;
            m.entropy += -s.policy_logprob() / s.tokens.len().max(1) as f64 / n;
            m.response_length += s.tokens.len() as f64 / n;
            m.eos_rate += f64::from(u8::from(s.finish == infalign_decoding::Finish::Eos)) / n;
        }
        m.rlhf_reward = m.scores - beta * m.kl;
        let adv = crate::rloo::advantages(&scores, cfg.k)?;
        // 3. Gradient of −mean A_i log π(y_i) (+ β k3 in the loss mode).
        let batch = TokenBatch::left_padded(&rows, lm.pad_id, &ad)?;
        let [b, l] = batch.tokens.dims();
        let mut weight = vec![0f32; b * (l - 1)];
        let mut adv_w = vec![0f32; b * (l - 1)];
        for (i, s) in samples.iter().enumerate() {
            let first = batch.pad_left[i] + s.prompt_ids.len(); // first completion token
            for tok in first..l {
                weight[i * (l - 1) + tok - 1] = 1.0;
                adv_w[i * (l - 1) + tok - 1] = adv[i] as f32;
            }
        }
        let weight_t = Tensor::<2>::from_data(TensorData::new(weight, [b, l - 1]), &ad);
        let adv_t = Tensor::<2>::from_data(TensorData::new(adv_w, [b, l - 1]), &ad);
        let logp = policy.forward(&batch, &mut policy.new_cache());
        let next = batch
            .tokens
            .clone()
            .narrow(1, 1, l - 1)
            .unsqueeze_dim::<3>(2);
        let tok_lp = logp.narrow(1, 0, l - 1).gather(2, next).reshape([b, l - 1]);
        let mut loss = (tok_lp.clone() * adv_t * weight_t.clone()).sum().neg() / b as f64;
        if cfg.kl_mode == KlMode::LossK3 && beta > 0.0 {
            let ref_flat: Vec<f32> = ref_lp
                .iter()
                .zip(&batch.pad_left)
                .flat_map(|(r, &pad)| {
                    let mut row = vec![0f32; pad];
                    row.extend(r);
                    row
                })
                .collect();
            let ref_t = Tensor::<2>::from_data(TensorData::new(ref_flat, [b, l - 1]), &ad);
            let log_ratio = ref_t - tok_lp; // log π_ref − log π
            let k3 = log_ratio.clone().exp() - 1.0 - log_ratio;
            loss = loss + (k3 * weight_t.clone()).sum() * beta / weight_t.sum().clamp_min(1.0);
        }
        m.loss = f64::from(read_f32(loss.clone())?[0]);
        let mut grads = GradientsParams::from_grads(loss.backward(), &policy);
        scale_and_clip(
            &policy,
            &mut grads,
            1.0,
            (cfg.grad_clip > 0.0).then_some(cfg.grad_clip),
        );
        policy = optim.step(cfg.lr, policy, grads);
        if cfg.target_kl > 0.0 {
            // Ziegler et al.'s proportional controller, clipped to ±20% per step.
            let err = ((m.kl - cfg.target_kl) / cfg.target_kl).clamp(-0.2, 0.2);
            beta *= 1.0 + err;
        }
        if let Some(w) = metrics.as_mut() {
            w.log(
                step,
                &[
                    ("objective/kl", m.kl),
                    ("objective/scores", m.scores),
                    ("objective/raw_reward", m.raw_reward),
                    ("objective/entropy", m.entropy),
                    ("objective/rlhf_reward", m.rlhf_reward),
                    ("objective/beta", m.beta),
                    ("loss/policy", m.loss),
                    ("response_length", m.response_length),
                    ("eos_rate", m.eos_rate),
                ],
            )?;
        }
        on_step(step, &m);
    }
    Ok(policy.valid())
}
