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
//! Invariants: the sampling of step s uses `seed.derive("policy-samples", s)`, the prompt order
//! `seed.derive("policy-prompts", s)`: a run is reproducible on the CPU. A checkpoint
//! (`out_dir/checkpoint`, every `save_every` steps and at the end) holds the policy, its AdamW
//! state, PPO's value network and its AdamW state, the step and the adaptive β: nothing else
//! carries over from one step to the next, so a run killed after its last checkpoint and
//! resumed ends with the weights of an uninterrupted run (CPU, same seed), and `metrics.jsonl`
//! keeps one row per step.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use infalign_core::{MetricsWriter, Seed};
use infalign_decoding::{GenerationConfig, Generator};
use infalign_models::optim::{SHARDS, descend_sharded, shard_rows};
use infalign_models::train_checkpoint::{
    CHECKPOINT_DIR, OPTIMIZER_FILE, STATE_FILE, load_optimizer, open_metrics, read_state,
    save_optimizer, warn_on_config_change, write_checkpoint,
};
use infalign_models::{
    CausalLm, LoadedModel, PrefixScorer, ScorerLayout, TokenBatch, save_model_dir,
};
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

/// The policy-gradient algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    /// REINFORCE leave-one-out over k samples per prompt.
    #[default]
    Rloo,
    /// PPO with a learned value head, GAE and clipped ratios.
    Ppo,
    /// Online DPO: the best and the worst of k samples per prompt as a preference pair, the
    /// DPO loss against the frozen reference with β as its KL weight (`crate::dpo`).
    Dpo,
    /// Online IPO: the same pairs, the IPO loss with β as its τ (`crate::ipo`).
    Ipo,
}

/// PPO's own hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Optimisation epochs over each batch of rollouts.
    pub epochs: usize,
    /// Ratio clip ε.
    pub clip: f64,
    /// Value clip around the old values.
    pub value_clip: f64,
    /// GAE λ.
    pub gae_lambda: f64,
    /// Discount γ.
    pub gamma: f64,
    /// Learning rate of the value head's network.
    pub value_lr: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            epochs: 2,
            clip: 0.2,
            value_clip: 0.2,
            gae_lambda: 0.95,
            gamma: 1.0,
            value_lr: 1e-4,
        }
    }
}

/// Hyperparameters of policy optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyTrainConfig {
    /// RLOO or PPO.
    pub algo: Algo,
    /// PPO's settings (ignored by RLOO).
    pub ppo: PpoConfig,
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
    /// Adaptive β: gain K_β of the proportional controller, `β ← β·(1 + K_β·e)` with the
    /// relative KL error `e` clipped to ±0.2 (Ziegler et al. 2019 use 0.1).
    pub kl_gain: f64,
    /// Where the KL goes.
    pub kl_mode: KlMode,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Seed of sampling and prompt order.
    pub seed: u64,
    /// Run directory (metrics.jsonl, checkpoint/, final/); empty: no files.
    pub out_dir: PathBuf,
    /// Checkpoint every N steps (0: only at the end); needs `out_dir`.
    #[serde(alias = "checkpoint_every")]
    pub save_every: u64,
    /// Keep a model directory `out_dir/snapshots/step-N` every N steps (0: none), to evaluate
    /// the policy along its KL path.
    pub snapshot_every: u64,
    /// Stop after this step as if the process were killed (tests of resumption); 0 = never.
    pub halt_after: u64,
}

impl Default for PolicyTrainConfig {
    fn default() -> Self {
        Self {
            algo: Algo::Rloo,
            ppo: PpoConfig::default(),
            steps: 100,
            prompts_per_step: 8,
            k: 4,
            max_new_tokens: 32,
            lr: 1e-5,
            beta: 0.05,
            target_kl: 0.0,
            kl_gain: 0.1,
            kl_mode: KlMode::RewardK1,
            grad_clip: 1.0,
            seed: 0,
            out_dir: PathBuf::new(),
            save_every: 0,
            snapshot_every: 0,
            halt_after: 0,
        }
    }
}

/// Where policy snapshots go inside the run directory (`snapshot_every`).
pub const SNAPSHOT_DIR: &str = "snapshots";

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

impl PolicyTrainConfig {
    /// Whether a run with this config stops at `halt_after` before its last step.
    pub fn halts_early(&self) -> bool {
        self.halt_after > 0 && self.halt_after < self.steps
    }
}

/// What `checkpoint/state.json` of a policy run records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyTrainState {
    /// Last completed step.
    pub step: u64,
    /// β for the next step (the adaptive controller's state).
    pub beta: f64,
    /// `beta`'s bits, restored exactly (JSON's decimal form may lose the last bit).
    pub beta_bits: u64,
    /// The config of the run that wrote it.
    pub config: PolicyTrainConfig,
}

/// The value network's directory inside a PPO checkpoint (a scorer directory).
pub const VALUE_DIR: &str = "value";
/// The value network's optimizer state inside a PPO checkpoint.
pub const VALUE_OPTIMIZER_FILE: &str = "value_optimizer.bpk";

fn adamw() -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(0.0).init()
}

/// Everything that carries over from one step to the next.
struct Carry {
    policy: CausalLm,
    optim: ModuleOptimizer,
    value_net: Option<PrefixScorer>,
    value_optim: ModuleOptimizer,
    beta: f64,
}

/// Writes the checkpoint: the policy as a model directory at the root with `optimizer.bpk`;
/// for PPO the value network in `value/` with `value_optimizer.bpk`; `state.json`.
fn save_policy_checkpoint(
    dir: &Path,
    policy: &CausalLm,
    optim: &ModuleOptimizer,
    value: Option<(&PrefixScorer, &ModuleOptimizer)>,
    tokenizer: &infalign_models::Tokenizer,
    state: &PolicyTrainState,
) -> Result<(), RlError> {
    Ok(write_checkpoint(dir, state, |tmp| {
        save_model_dir(tmp, policy, tokenizer)?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), optim)?;
        if let Some((net, opt)) = value {
            net.save(tmp.join(VALUE_DIR), tokenizer, "PPO value network")?;
            save_optimizer(&tmp.join(VALUE_OPTIMIZER_FILE), opt)?;
        }
        Ok(())
    })?)
}

/// Loads a checkpoint written by [`save_policy_checkpoint`] onto the autodiff device `ad`.
fn load_policy_checkpoint(
    dir: &Path,
    cfg: &PolicyTrainConfig,
    ad: &Device,
) -> Result<(Carry, u64), RlError> {
    let state: PolicyTrainState = read_state(dir)?;
    // A different objective cannot continue this run: its state (PPO's value network) and its
    // meaning differ. Other changes only warn.
    let objective = [
        ("algo", state.config.algo != cfg.algo),
        ("kl_mode", state.config.kl_mode != cfg.kl_mode),
    ];
    let changed: Vec<&str> = objective
        .iter()
        .filter(|(_, c)| *c)
        .map(|(k, _)| *k)
        .collect();
    if !changed.is_empty() {
        return Err(RlError::InvalidParameter {
            field: "resume",
            message: format!(
                "{} holds a run with {} {:?} / {:?}; this run asks for {:?} / {:?} ({} changed): \
                 resume with the run's settings, or start over with --overwrite",
                dir.display(),
                "algo / kl_mode",
                state.config.algo,
                state.config.kl_mode,
                cfg.algo,
                cfg.kl_mode,
                changed.join(", ")
            ),
        });
    }
    warn_on_config_change(
        &state.config,
        cfg,
        &[
            "steps",
            "halt_after",
            "save_every",
            "snapshot_every",
            "out_dir",
        ],
    );
    let beta = f64::from_bits(state.beta_bits);
    let policy = LoadedModel::load(dir, ad)?.model;
    let optim = load_optimizer(&dir.join(OPTIMIZER_FILE), adamw())?;
    let (value_net, value_optim) = match cfg.algo {
        Algo::Ppo => {
            let (v, _, _) = PrefixScorer::load(dir.join(VALUE_DIR), ad)?;
            let o = load_optimizer(&dir.join(VALUE_OPTIMIZER_FILE), adamw())?;
            (Some(v), o)
        }
        Algo::Rloo | Algo::Dpo | Algo::Ipo => (None, adamw()),
    };
    if !(beta >= 0.0 && beta.is_finite()) || (beta - state.beta).abs() > 1e-9 * beta.abs() {
        return Err(RlError::InvalidParameter {
            field: "beta",
            message: format!(
                "{}: β = {} (bits {:#x}) is corrupt",
                dir.join(STATE_FILE).display(),
                state.beta,
                state.beta_bits
            ),
        });
    }
    let carry = Carry {
        policy,
        optim,
        value_net,
        value_optim,
        beta,
    };
    Ok((carry, state.step))
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
    /// PPO: fraction of tokens whose ratio was clipped.
    pub clipfrac: f64,
    /// PPO: value loss.
    pub value_loss: f64,
}

/// Trains `policy` (on an autodiff device) with RLOO, PPO, or online DPO / IPO against the
/// reference `lm.model` (plain device), sampling from the current policy on `prompts` and scoring
/// with `pipeline`; `lm` also supplies the tokenizer and special ids. With `resume`, the policy,
/// optimizers, value network, β and step come from `out_dir/checkpoint` instead (`policy` is
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
    resume: bool,
    on_step: impl FnMut(u64, &StepMetrics),
) -> Result<CausalLm, RlError> {
    if prompts.is_empty() {
        return Err(RlError::InvalidParameter {
            field: "prompts",
            message: "no prompts".into(),
        });
    }
    let source = Source::Online { prompts, pipeline };
    train(cfg, lm, policy, &source, device, resume, on_step)
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
    resume: bool,
    on_step: impl FnMut(u64, &StepMetrics),
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
        resume,
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

/// The training loop behind [`train_policy`] and [`train_policy_on_pairs`].
fn train(
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    policy: CausalLm,
    source: &Source<'_>,
    device: &Device,
    resume: bool,
    mut on_step: impl FnMut(u64, &StepMetrics),
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
    let files = !cfg.out_dir.as_os_str().is_empty();
    if resume && !files {
        return Err(RlError::InvalidParameter {
            field: "out_dir",
            message: "resuming needs the run directory that holds the checkpoint".into(),
        });
    }
    let ad = device.clone().autodiff();
    let ckpt_dir = cfg.out_dir.join(CHECKPOINT_DIR);
    let (carry, start) = if resume {
        let (carry, start) = load_policy_checkpoint(&ckpt_dir, cfg, &ad)?;
        tracing::info!(step = start, beta = carry.beta, "resuming policy training");
        (carry, start)
    } else {
        let value_net = match cfg.algo {
            Algo::Ppo => Some(PrefixScorer::from_base(
                policy.clone(),
                ScorerLayout::Scalar,
                &ad,
            )?),
            Algo::Rloo | Algo::Dpo | Algo::Ipo => None,
        };
        let carry = Carry {
            policy,
            optim: adamw(),
            value_net,
            value_optim: adamw(),
            beta: cfg.beta,
        };
        (carry, 0)
    };
    let Carry {
        mut policy,
        mut optim,
        mut value_net,
        mut value_optim,
        mut beta,
    } = carry;
    let mut metrics: Option<MetricsWriter> = if files {
        Some(open_metrics(
            &cfg.out_dir.join("metrics.jsonl"),
            resume,
            start,
        )?)
    } else {
        None
    };
    for step in start + 1..=cfg.steps {
        let mut m = StepMetrics {
            beta,
            ..Default::default()
        };
        let StepBatch {
            table,
            scores,
            shaped_scores,
            ref_seq,
            pairs,
        } = match source {
            Source::Online { prompts, pipeline } => online_batch(
                cfg, lm, &policy, prompts, pipeline, device, step, beta, &mut m,
            )?,
            Source::Offline { pairs } => {
                crate::preference_pairs::offline_batch(cfg, lm, pairs, device, step, &mut m)?
            }
        };
        let [b, _] = table.batch.tokens.dims();
        let cols = table.cols;
        let (new_policy, loss) = match cfg.algo {
            Algo::Rloo => {
                let adv = crate::rloo::advantages(&scores, cfg.k)?;
                let adv_tok: Vec<f64> = (0..b * cols).map(|x| adv[x / cols]).collect();
                let (p, loss) =
                    policy_gradient_step(policy, &mut optim, &table, &adv_tok, cfg, beta)
                        .map_err(RlError::at_step(step))?;
                (p, loss)
            }
            Algo::Dpo | Algo::Ipo => crate::preference_pairs::step(
                policy, &mut optim, &table, &pairs, &ref_seq, cfg, beta,
            )
            .map_err(RlError::at_step(step))?,
            Algo::Ppo => {
                let vnet = value_net.take().expect("PPO has a value network");
                let (p, v, ppo_m) = crate::ppo::update(
                    policy,
                    vnet,
                    &mut optim,
                    &mut value_optim,
                    &table,
                    &shaped_scores,
                    cfg,
                    beta,
                )
                .map_err(RlError::at_step(step))?;
                value_net = Some(v);
                m.clipfrac = ppo_m.clipfrac;
                m.value_loss = ppo_m.value_loss;
                (p, ppo_m.loss)
            }
        };
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
        if let Some(w) = metrics.as_mut() {
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
            if cfg.algo == Algo::Ppo {
                row.extend([
                    ("policy/clipfrac", m.clipfrac),
                    ("loss/value", m.value_loss),
                ]);
            }
            w.log(step, &row)?;
        }
        on_step(step, &m);
        let save_now = (cfg.save_every > 0 && step % cfg.save_every == 0) || step == cfg.steps;
        if files && save_now {
            let state = PolicyTrainState {
                step,
                beta,
                beta_bits: beta.to_bits(),
                config: cfg.clone(),
            };
            save_policy_checkpoint(
                &ckpt_dir,
                &policy,
                &optim,
                value_net.as_ref().map(|v| (v, &value_optim)),
                &lm.tokenizer,
                &state,
            )?;
        }
        if files && cfg.snapshot_every > 0 && step % cfg.snapshot_every == 0 {
            let dir = cfg.out_dir.join(SNAPSHOT_DIR).join(format!("step-{step}"));
            save_model_dir(&dir, &policy, &lm.tokenizer)?;
        }
        if cfg.halt_after > 0 && step >= cfg.halt_after && step < cfg.steps {
            tracing::info!(step, "halting (halt_after)");
            break;
        }
    }
    Ok(policy.valid())
}

/// What one step learns from: the token table of its rows, and what each objective needs.
pub(crate) struct StepBatch {
    /// The rows (prompt + completion) with their completion columns.
    pub table: TokenTable,
    /// The objective's per-row scores (RLOO: the shaped reward minus β·KL with k1 in the reward).
    pub scores: Vec<f64>,
    /// The shaped reward of each row (PPO).
    pub shaped_scores: Vec<f64>,
    /// The reference's log-prob of each row's completion (DPO, IPO).
    pub ref_seq: Vec<f64>,
    /// Preference pairs of rows (DPO, IPO): from the scores online, from the file offline.
    pub pairs: Vec<(usize, usize)>,
}

/// An online step's batch: k completions of each of `prompts_per_step` prompts sampled from the
/// current policy, scored, with their reference log-probs and KL; `m` gets the step's reward
/// and KL metrics.
#[allow(clippy::too_many_arguments)]
fn online_batch(
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
        let ref_sum: f64 = rlp[n_prompt - 1..].iter().map(|&x| f64::from(x)).sum();
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

/// The completion tokens of a batch of rollouts, column-aligned with the model's predictions
/// (column c predicts token c + 1).
pub(crate) struct TokenTable {
    /// Prompt + completion ids, left-padded, on the autodiff device.
    pub batch: TokenBatch,
    /// Number of prediction columns, `L - 1`.
    pub cols: usize,
    /// 1 on completion columns.
    pub weight: Vec<f32>,
    /// Log-probs of the sampled tokens under the sampling policy.
    pub old_lp: Vec<f32>,
    /// Log-probs of the sampled tokens under the reference.
    pub ref_cols: Vec<f32>,
    /// Per row, the completion's columns `first..end`.
    pub spans: Vec<(usize, usize)>,
}

impl TokenTable {
    /// The table of `rows` (prompt + completion ids; `prompt_lens[i]` of row i are the prompt),
    /// left-padded on the device `ad`, with the reference's per-position log-probs `ref_lp` (as
    /// `sequence_logprobs` returns them) and the sampling policy's completion log-probs `old`
    /// (zeros when `None`: rows the policy did not sample).
    pub(crate) fn new(
        rows: &[Vec<u32>],
        prompt_lens: &[usize],
        old: Option<&[&[f32]]>,
        ref_lp: &[Vec<f32>],
        pad_id: u32,
        ad: &Device,
    ) -> Result<Self, RlError> {
        let batch = TokenBatch::left_padded(rows, pad_id, ad)?;
        let [b, l] = batch.tokens.dims();
        let cols = l - 1;
        let mut weight = vec![0f32; b * cols];
        let mut old_lp = vec![0f32; b * cols];
        let mut ref_cols = vec![0f32; b * cols];
        let mut spans = Vec::with_capacity(b);
        for (i, &n_prompt) in prompt_lens.iter().enumerate() {
            let pad = batch.pad_left[i];
            let first = pad + n_prompt - 1; // column predicting the first completion token
            for (j, c) in (first..cols).enumerate() {
                weight[i * cols + c] = 1.0;
                if let Some(old) = old {
                    old_lp[i * cols + c] = old[i][j];
                }
            }
            for (e, &x) in ref_lp[i].iter().enumerate() {
                ref_cols[i * cols + pad + e] = x;
            }
            spans.push((first, cols));
        }
        Ok(TokenTable {
            batch,
            cols,
            weight,
            old_lp,
            ref_cols,
            spans,
        })
    }

    pub(crate) fn tensor(&self, values: &[f32]) -> Tensor<2> {
        let b = self.spans.len();
        Tensor::from_data(
            TensorData::new(values.to_vec(), [b, self.cols]),
            &self.batch.tokens.device(),
        )
    }

    /// Log-probs of the sampled tokens under `policy`, with gradient, `[B, L - 1]`.
    pub(crate) fn token_logprobs(&self, policy: &CausalLm) -> Tensor<2> {
        let b = self.spans.len();
        let l = self.cols + 1;
        let logp = policy.forward(&self.batch, &mut policy.new_cache());
        let next = self
            .batch
            .tokens
            .clone()
            .narrow(1, 1, l - 1)
            .unsqueeze_dim::<3>(2);
        logp.narrow(1, 0, l - 1).gather(2, next).reshape([b, l - 1])
    }

    /// `β · Σ k3 / tokens` over this table's completion tokens (the KL-in-the-loss term),
    /// given the policy's token log-probs; `tokens` is the completion-token count of the whole
    /// batch, so that the terms of a batch's shards add up to the batch's mean.
    pub(crate) fn k3_penalty(&self, tok_lp: Tensor<2>, beta: f64, tokens: f64) -> Tensor<1> {
        let weight = self.tensor(&self.weight);
        let log_ratio = self.tensor(&self.ref_cols) - tok_lp;
        let k3 = log_ratio.clone().exp() - 1.0 - log_ratio;
        (k3 * weight).sum() * beta / tokens.max(1.0)
    }

    /// Completion tokens in the table.
    pub(crate) fn completion_tokens(&self) -> f64 {
        self.weight.iter().filter(|&&w| w > 0.0).count() as f64
    }

    /// The rows `rows` (in that order, repeats allowed) as a table of their own.
    pub(crate) fn select(&self, rows: &[usize]) -> TokenTable {
        let c = self.cols;
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &self.batch.tokens.device(),
        );
        let pick = |v: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| v[r * c..(r + 1) * c].iter().copied())
                .collect()
        };
        TokenTable {
            batch: TokenBatch {
                tokens: self.batch.tokens.clone().select(0, idx.clone()),
                mask: self.batch.mask.clone().select(0, idx),
                pad_left: rows.iter().map(|&r| self.batch.pad_left[r]).collect(),
            },
            cols: c,
            weight: pick(&self.weight),
            old_lp: pick(&self.old_lp),
            ref_cols: pick(&self.ref_cols),
            spans: rows.iter().map(|&r| self.spans[r]).collect(),
        }
    }

    /// The rows `lo..hi` as a table of their own (same columns).
    pub(crate) fn rows(&self, lo: usize, hi: usize) -> TokenTable {
        let (c, n) = (self.cols, hi - lo);
        TokenTable {
            batch: TokenBatch {
                tokens: self.batch.tokens.clone().narrow(0, lo, n),
                mask: self.batch.mask.clone().narrow(0, lo, n),
                pad_left: self.batch.pad_left[lo..hi].to_vec(),
            },
            cols: c,
            weight: self.weight[lo * c..hi * c].to_vec(),
            old_lp: self.old_lp[lo * c..hi * c].to_vec(),
            ref_cols: self.ref_cols[lo * c..hi * c].to_vec(),
            spans: self.spans[lo..hi].to_vec(),
        }
    }
}

/// One REINFORCE step `−Σ A_t log π(y_t) / B` (+ β k3), with per-token advantages; the rows
/// are split into [`SHARDS`] shards whose gradients add up to the batch's.
fn policy_gradient_step(
    policy: CausalLm,
    optim: &mut burn::optim::ModuleOptimizer,
    table: &TokenTable,
    adv_tok: &[f64],
    cfg: &PolicyTrainConfig,
    beta: f64,
) -> Result<(CausalLm, f64), RlError> {
    let b = table.spans.len();
    let adv: Vec<f32> = adv_tok
        .iter()
        .zip(&table.weight)
        .map(|(a, w)| (*a as f32) * w)
        .collect();
    let tokens = table.completion_tokens();
    let shards = SHARDS.min(b);
    let loss_of = |p: &CausalLm, s: usize| {
        let (lo, hi) = shard_rows(b, shards, s);
        let part = table.rows(lo, hi);
        let tok_lp = part.token_logprobs(p);
        let adv = part.tensor(&adv[lo * table.cols..hi * table.cols]);
        let mut loss = (tok_lp.clone() * adv).sum().neg() / b as f64;
        if cfg.kl_mode == KlMode::LossK3 && beta > 0.0 {
            loss = loss + part.k3_penalty(tok_lp, beta, tokens);
        }
        Ok::<_, RlError>(loss)
    };
    let (policy, value, _) =
        descend_sharded(policy, optim, shards, loss_of, cfg.lr, cfg.grad_clip)?;
    Ok((policy, value))
}
