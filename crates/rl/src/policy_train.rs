//! KL-regularised policy optimisation against a frozen reference (InfAlign-CTRL, Algorithm 1;
//! docs/ALGORITHMS.md B.4): sample from the policy, score with the reward, calibrate against the
//! reference rollouts of each prompt (Ĉ), transform (Φ), and take a policy-gradient step on
//! `Φ(Ĉ(r)) − β · KL`. Without a calibrator the raw reward is used (the standard RLHF baseline).
//!
//! The reward of a completion is placed on its terminal token (never on padding). The KL enters
//! either the reward, per sequence with the k1 estimator (default), or the loss, per token with
//! k3. β is fixed or adaptive (Ziegler et al. 2019: β is scaled to keep the measured KL near a
//! target).
//!
//! The loop reads in one sitting: each step gathers a [`StepBatch`] (online samples of the
//! policy, `rollout.rs`, or offline preference pairs, `preference_pairs.rs`), hands it to the
//! objective (`PolicyObjective`: `rloo.rs`, `ppo.rs`, DPO / IPO in `preference_pairs.rs`),
//! adapts β, logs, checkpoints (`policy_checkpoint.rs`) and snapshots. Settings:
//! `policy_config.rs`.
//!
//! Invariants: the sampling of step s uses `seed.derive("policy-samples", s)`, the prompt order
//! `seed.derive("policy-prompts", s)`: a run is reproducible on the CPU. A checkpoint
//! (`checkpoint/` of the run directory, every `save_every` steps and at the end) holds the policy, its AdamW
//! state, PPO's value network and its AdamW state, the step and the adaptive β: nothing else
//! carries over from one step to the next, so a run killed after its last checkpoint and
//! resumed ends with the weights of an uninterrupted run (CPU, same seed), and `metrics.jsonl`
//! keeps one row per step.

use burn::module::Module;
use burn::tensor::Device;
use infalign_models::{CausalLm, LoadedModel, RunFiles, StepReport, save_model_dir};

use crate::RlError;
use crate::policy_checkpoint::{
    PolicyTrainState, adamw, load_policy_checkpoint, save_policy_checkpoint,
};
use crate::policy_config::{Algo, PolicyTrainConfig, SNAPSHOT_DIR};
use crate::policy_objective::{PolicyObjective, StepMetrics};
use crate::ppo::Ppo;
use crate::preference_pairs::PairLoss;
use crate::rloo::Rloo;
use crate::rollout::RewardPipeline;

/// Trains `policy` (on an autodiff device) with RLOO, PPO, or online DPO / IPO against the
/// reference `lm.model` (plain device), sampling from the current policy on `prompts` and scoring
/// with `pipeline`; `lm` also supplies the tokenizer and special ids. With `files`, metrics,
/// checkpoints and snapshots go to its directory, and with `files.resume` the policy,
/// optimizers, value network, β and step come from its checkpoint instead (`policy` is
/// then unused). Returns the trained policy (no autodiff); after `halt_after` steps, the policy
/// of that step.
#[allow(clippy::too_many_arguments)]
pub fn train_policy(
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    policy: CausalLm,
    prompts: &[String],
    pipeline: &RewardPipeline<'_>,
    device: &Device,
    files: Option<RunFiles<'_>>,
    on_step: impl FnMut(&StepReport<'_>),
) -> Result<CausalLm, RlError> {
    if prompts.is_empty() {
        return Err(RlError::InvalidParameter {
            field: "prompts",
            message: "no prompts".into(),
        });
    }
    let source = Source::Online { prompts, pipeline };
    train(cfg, lm, policy, &source, device, files, on_step)
}

/// Offline DPO or IPO (`cfg.algo`) on preference pairs, TRL's `prompt` / `chosen` / `rejected`
/// data: each step takes `prompts_per_step` pairs, drawn with replacement from the seeded stream
/// of that step. Otherwise as [`train_policy`] (checkpoints, resume, metrics).
pub fn train_policy_on_pairs(
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    policy: CausalLm,
    pairs: &[crate::preference_pairs::OfflinePair],
    device: &Device,
    files: Option<RunFiles<'_>>,
    on_step: impl FnMut(&StepReport<'_>),
) -> Result<CausalLm, RlError> {
    if !matches!(cfg.algo, Algo::Dpo | Algo::Ipo) {
        return Err(RlError::InvalidParameter {
            field: "algo",
            message: format!(
                "{:?} learns from its own samples; preference pairs need dpo or ipo",
                cfg.algo
            ),
        });
    }
    if pairs.is_empty() {
        return Err(RlError::InvalidParameter {
            field: "pairs",
            message: "no preference pairs".into(),
        });
    }
    train(
        cfg,
        lm,
        policy,
        &Source::Offline { pairs },
        device,
        files,
        on_step,
    )
}

/// Where a step's experience comes from.
enum Source<'a> {
    /// Samples of the current policy on these prompts, scored by the pipeline.
    Online {
        prompts: &'a [String],
        pipeline: &'a RewardPipeline<'a>,
    },
    /// Fixed preference pairs.
    Offline {
        pairs: &'a [crate::preference_pairs::OfflinePair],
    },
}

/// The objective of `cfg.algo`; PPO's value network is fresh (from `policy`) or, resuming,
/// the checkpoint's in `resume_from`.
fn objective(
    cfg: &PolicyTrainConfig,
    policy: &CausalLm,
    resume_from: Option<&std::path::Path>,
    ad: &Device,
) -> Result<Box<dyn PolicyObjective>, RlError> {
    Ok(match cfg.algo {
        Algo::Rloo => Box::new(Rloo),
        Algo::Dpo => Box::new(PairLoss::Dpo),
        Algo::Ipo => Box::new(PairLoss::Ipo),
        Algo::Ppo => Box::new(match resume_from {
            Some(dir) => Ppo::resume(dir, ad)?,
            None => Ppo::new(policy, ad)?,
        }),
    })
}

/// The training loop behind [`train_policy`] and [`train_policy_on_pairs`].
fn train(
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    policy: CausalLm,
    source: &Source<'_>,
    device: &Device,
    files: Option<RunFiles<'_>>,
    mut on_step: impl FnMut(&StepReport<'_>),
) -> Result<CausalLm, RlError> {
    if !(cfg.beta >= 0.0 && cfg.beta.is_finite()) {
        return Err(RlError::InvalidParameter {
            field: "beta",
            message: format!("{} must be non-negative", cfg.beta),
        });
    }
    // DPO's β and IPO's τ scale the loss (β = 0: no gradient; τ = 0: an infinite target).
    if matches!(cfg.algo, Algo::Dpo | Algo::Ipo) && cfg.beta <= 0.0 {
        return Err(RlError::InvalidParameter {
            field: "beta",
            message: format!("{:?} needs β > 0 (got {})", cfg.algo, cfg.beta),
        });
    }
    if matches!(source, Source::Offline { .. }) && cfg.target_kl > 0.0 {
        return Err(RlError::InvalidParameter {
            field: "target_kl",
            message: "offline training measures no KL of its own samples to adapt β to: \
                      use a fixed β (target_kl = 0)"
                .into(),
        });
    }
    // Checked before any work, naming the config key (the sampler would name its own `n`).
    let least_k = if cfg.algo == Algo::Ppo { 1 } else { 2 };
    if matches!(source, Source::Online { .. }) && cfg.k < least_k {
        return Err(RlError::InvalidParameter {
            field: "k",
            message: format!(
                "{} samples per prompt: {:?} needs at least {least_k}",
                cfg.k, cfg.algo
            ),
        });
    }
    if cfg.prompts_per_step == 0 {
        return Err(RlError::InvalidParameter {
            field: "prompts_per_step",
            message: "must be at least 1".into(),
        });
    }
    let gain_ok = (0.0..=5.0).contains(&cfg.kl_gain) && cfg.kl_gain > 0.0;
    if !gain_ok || cfg.target_kl.is_nan() || cfg.target_kl < 0.0 {
        return Err(RlError::InvalidParameter {
            field: "kl_gain",
            message: format!(
                "kl_gain {} must be in (0, 5] and target_kl {} non-negative",
                cfg.kl_gain, cfg.target_kl
            ),
        });
    }
    let ad = device.clone().autodiff();
    let (mut policy, mut optim, mut beta, start, mut objective) = match files {
        Some(f) if f.resume => {
            let dir = f.checkpoint();
            let r = load_policy_checkpoint(&dir, cfg, &ad)?;
            tracing::info!(step = r.step, beta = r.beta, "resuming policy training");
            let objective = objective(cfg, &r.policy, Some(&dir), &ad)?;
            (r.policy, r.optim, r.beta, r.step, objective)
        }
        _ => {
            let objective = objective(cfg, &policy, None, &ad)?;
            (policy, adamw(), cfg.beta, 0, objective)
        }
    };
    let mut metrics = files.map(|f| f.metrics_writer(start)).transpose()?;
    for step in start + 1..=cfg.steps {
        let mut m = StepMetrics {
            beta,
            ..Default::default()
        };
        let batch = match source {
            Source::Online { prompts, pipeline } => crate::rollout::online_batch(
                cfg, lm, &policy, prompts, pipeline, device, step, beta, &mut m,
            )?,
            Source::Offline { pairs } => {
                crate::preference_pairs::offline_batch(cfg, lm, pairs, device, step, &mut m)?
            }
        };
        let (new_policy, loss) = objective
            .step(policy, &mut optim, &batch, cfg, beta, &mut m)
            .map_err(RlError::at_step(step))?;
        policy = new_policy;
        m.loss = loss;
        if cfg.target_kl > 0.0 {
            // Ziegler et al.'s proportional controller: the error is clipped to ±0.2.
            let err = ((m.kl - cfg.target_kl) / cfg.target_kl).clamp(-0.2, 0.2);
            beta *= 1.0 + cfg.kl_gain * err;
            if matches!(cfg.algo, Algo::Dpo | Algo::Ipo) {
                // At kl_gain 5 the factor can reach 0; these losses need β > 0.
                beta = beta.max(1e-6);
            }
        }
        let mut row = vec![
            ("objective/kl", m.kl),
            ("objective/scores", m.scores),
            ("objective/raw_reward", m.raw_reward),
            ("objective/entropy", m.entropy),
            ("objective/rlhf_reward", m.rlhf_reward),
            ("objective/beta", m.beta),
            ("loss/policy", m.loss),
            ("response_length", m.response_length),
            ("eos_rate", m.eos_rate),
        ];
        row.extend(objective.metric_columns(&m));
        if let Some(w) = metrics.as_mut() {
            w.log(step, &row)?;
        }
        on_step(&StepReport {
            step,
            steps: cfg.steps,
            metrics: &row,
        });
        let save_now = (cfg.save_every > 0 && step % cfg.save_every == 0) || step == cfg.steps;
        if let Some(f) = files
            && save_now
        {
            let state = PolicyTrainState {
                step,
                beta,
                beta_bits: beta.to_bits(),
                config: cfg.clone(),
            };
            save_policy_checkpoint(
                &f.checkpoint(),
                &policy,
                &optim,
                objective.as_ref(),
                &lm.tokenizer,
                &state,
            )?;
        }
        if let Some(f) = files
            && cfg.snapshot_every > 0
            && step % cfg.snapshot_every == 0
        {
            let dir = f.dir.join(SNAPSHOT_DIR).join(format!("step-{step}"));
            save_model_dir(&dir, &policy, &lm.tokenizer)?;
        }
        if cfg.halt_after > 0 && step >= cfg.halt_after && step < cfg.steps {
            tracing::info!(step, "halting (halt_after)");
            break;
        }
    }
    Ok(policy.valid())
}
