//! `infalign align`: KL-regularised RL of the base model (InfAlign-CTRL, Algorithm 1): the
//! reward is calibrated against reference rollouts and transformed (`--transform`), or used raw
//! (`--raw`, the standard RLHF baseline). Writes the aligned model to `OUT/final`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use infalign_core::Device;
use infalign_models::{CausalLm, LoadedModel, RunFiles, StepReport, save_model_dir};
use infalign_rewards::Transform;
use infalign_rewards::bradley_terry::Preference;
use infalign_rl::{
    Algo, OfflinePair, PolicyTrainConfig, RewardPipeline, RlError, train_policy,
    train_policy_on_pairs,
};

use super::common::{PromptArgs, TrainRunArgs, TransformArgs, TransformName};
use super::samples::{calibrator_of, read_samples};

/// The policy-optimisation algorithms by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlgoName {
    /// REINFORCE leave-one-out.
    Rloo,
    /// PPO with a value network.
    Ppo,
    /// Online (or, with --preferences, offline) DPO.
    Dpo,
    /// Online (or offline) IPO.
    Ipo,
}

/// Flags of `infalign align`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::common::ModelArgs,
    #[command(flatten)]
    pub prompts: PromptArgs,
    /// Reward spec (e.g. `sentiment`).
    #[arg(long, required_unless_present = "preferences")]
    pub reward: Option<String>,
    /// Offline DPO or IPO (`--algo dpo|ipo`) on a preference file with TRL's keys (`prompt`,
    /// `chosen`, `rejected`, one pair per line) instead of samples of the policy: no reward,
    /// prompts or reference rollouts.
    #[arg(long, conflicts_with_all = ["reward", "reference", "raw", "calibrated_reward", "prompt", "prompts"])]
    pub preferences: Option<PathBuf>,
    /// Reference rollouts of the base model (from `infalign rollouts`) for calibration.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Use the raw reward (no calibration): the standard RLHF baseline.
    #[arg(long, conflicts_with_all = ["reference", "calibrated_reward"])]
    pub raw: bool,
    /// The reward is already calibrated (`rm(path=DIR)` of a calibrated reward model from
    /// `train-rm --rollouts`): apply --transform to it, no reference rollouts needed.
    #[arg(long, conflicts_with = "reference")]
    pub calibrated_reward: bool,
    /// The transform of the calibrated reward (default: identity).
    #[command(flatten)]
    pub transform: TransformArgs,
    /// KL weight β (default 0.05; `--set beta=B` works too, the flag wins when both are given).
    #[arg(long)]
    pub beta: Option<f64>,
    /// Best-of-N distillation (BoNBoN, BOND, vBoN): the `log` transform of the calibrated reward
    /// with β = 1/(N − 1), whose KL-regularised optimum is the best-of-N policy itself (KL
    /// `ln N − (N−1)/N`). Sets `--transform log` and `--beta`.
    #[arg(long, value_name = "N", conflicts_with_all = ["transform", "t", "beta", "raw", "preferences"])]
    pub bon_distill: Option<u32>,
    /// Policy-optimisation algorithm: rloo (default), ppo, or online dpo / ipo (the best and the
    /// worst of `k` samples per prompt as a preference pair; β is DPO's KL weight, IPO's τ)
    /// (`--set algo=ppo` works too).
    #[arg(long, value_enum)]
    pub algo: Option<AlgoName>,
    #[command(flatten)]
    pub run: TrainRunArgs,
}

/// What a run learns from, beyond its trainer config: kept in `OUT/run.json` so that `--resume`
/// with another model, reward, shaping or data refuses instead of continuing a different run.
fn run_identity(a: &Args) -> serde_json::Value {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let mut identity = serde_json::json!({
        "model": path(&a.model.model),
        "reward": a.reward,
        "reference": path(&a.reference),
        "raw": a.raw,
        "calibrated_reward": a.calibrated_reward,
        "transform": if a.raw {
            None
        } else {
            Some(a.transform.transform.unwrap_or(TransformName::Identity).name())
        },
        "t": a.transform.t,
        "bon_distill": a.bon_distill,
        "preferences": path(&a.preferences),
    });
    // The procedure an optimal transform is solved for (recorded only then, so that runs of
    // other transforms keep their identity).
    if a.transform.transform == Some(TransformName::Optimal) {
        identity["procedure"] = a.transform.procedure.name().into();
        identity["n"] = a.transform.n.into();
        // The table is solved at λ = 1/β: another β is another reward.
        identity["beta"] = a.beta.into();
    }
    identity
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let _claim = a.run.claim()?;
    a.run.check_settings(&run_identity(&a))?;
    let mut cfg: PolicyTrainConfig = infalign_core::config::load_config(None, &a.run.set)?;
    // Flags override the config (and its `--set` keys) only when given.
    if let Some(algo) = a.algo {
        cfg.algo = match algo {
            AlgoName::Rloo => Algo::Rloo,
            AlgoName::Ppo => Algo::Ppo,
            AlgoName::Dpo => Algo::Dpo,
            AlgoName::Ipo => Algo::Ipo,
        };
    }
    if let Some(beta) = a.beta {
        cfg.beta = beta;
    }
    if let Some(n) = a.bon_distill {
        if n < 2 {
            bail!("--bon-distill {n}: N must be at least 2 (β = 1/(N − 1))");
        }
        cfg.beta = 1.0 / f64::from(n - 1);
    }
    if let Some(path) = &a.preferences {
        return offline(&a, path, &cfg, device);
    }
    let prompts = a.prompts.collect()?;
    let spec = a
        .reward
        .as_deref()
        .context("--reward is required without --preferences")?;
    let reward = infalign_rewards::reward_from_spec_on(spec, device)?;
    let transform = if a.raw {
        None
    } else {
        match a.bon_distill {
            // log(u) exactly: ε = 0, the calibration is smoothed away from 0.
            Some(_) => Some(Transform::log(0.0)),
            // The optimal transform is solved at λ = 1/β (the KL weight it trains with).
            None => Some(match a.transform.resolve(Some(optimal_lambda(&cfg)?))? {
                Some(t) => t,
                None => Transform::from_name("identity", None)?,
            }),
        }
    };
    let calibrator = if a.raw || a.calibrated_reward {
        None
    } else {
        let Some(path) = &a.reference else {
            bail!(
                "calibration needs --reference ROLLOUTS.jsonl (from `infalign rollouts`); or pass \
                 --calibrated-reward with a calibrated reward model, or --raw"
            );
        };
        let cal = calibrator_of(&read_samples(path, true)?, transform.as_ref(), false)?;
        if let Some(p) = prompts.iter().find(|p| cal.reference(p).is_none()) {
            bail!(
                "{}: no reference rollouts for training prompt {p:?}",
                path.display()
            );
        }
        Some(cal)
    };
    let lm = a.model.load(device)?;
    let pipeline = RewardPipeline {
        reward: reward.as_ref(),
        calibrator: calibrator.as_ref(),
        transform,
    };
    train_and_finish(&a, &cfg, &lm, device, |policy, files, on_step| {
        train_policy(
            &cfg, &lm, policy, &prompts, &pipeline, device, files, on_step,
        )
    })
}

/// λ = 1/β of the optimal transform: one fixed β > 0 (an adaptive β would leave the table
/// behind as it moves).
fn optimal_lambda(cfg: &PolicyTrainConfig) -> Result<f64> {
    if cfg.beta <= 0.0 || !cfg.beta.is_finite() {
        bail!(
            "--transform optimal is solved at λ = 1/β: give a β > 0 (got {})",
            cfg.beta
        );
    }
    if cfg.target_kl > 0.0 {
        bail!(
            "--transform optimal is solved at one λ = 1/β; an adaptive β (target_kl = {}) would \
             leave it behind: use a fixed β",
            cfg.target_kl
        );
    }
    Ok(1.0 / cfg.beta)
}

/// Offline DPO or IPO on the pairs of `path`.
fn offline(a: &Args, path: &Path, cfg: &PolicyTrainConfig, device: &Device) -> Result<()> {
    if !matches!(cfg.algo, Algo::Dpo | Algo::Ipo) {
        bail!("--preferences trains offline DPO or IPO: pass --algo dpo or --algo ipo");
    }
    let lm = a.model.load(device)?;
    let rows: Vec<(usize, Preference)> = infalign_core::io::read_jsonl_numbered(path)?;
    let mut pairs = Vec::with_capacity(rows.len());
    for (line, p) in rows {
        let at = || format!("{}:{line}", path.display());
        let prompt = lm.tokenizer.encode(&p.prompt)?;
        let chosen = lm.tokenizer.encode(&p.chosen)?;
        let rejected = lm.tokenizer.encode(&p.rejected)?;
        for completion in [&chosen, &rejected] {
            let all: Vec<u32> = prompt.iter().chain(completion).copied().collect();
            lm.model.check_ids(&all, all.len()).with_context(at)?;
        }
        if prompt.is_empty() {
            bail!("{}: empty prompt", at());
        }
        pairs.push(OfflinePair {
            prompt,
            chosen,
            rejected,
        });
    }
    train_and_finish(a, cfg, &lm, device, |policy, files, on_step| {
        train_policy_on_pairs(cfg, &lm, policy, &pairs, device, files, on_step)
    })
}

/// The one training scaffold of online and offline runs: the base model loaded as the policy
/// on the autodiff device, `train` run under the run's settings record with a progress bar,
/// and the result written ([`finish`]).
fn train_and_finish(
    a: &Args,
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    device: &Device,
    train: impl FnOnce(
        CausalLm,
        Option<RunFiles<'_>>,
        &mut dyn FnMut(&StepReport<'_>),
    ) -> Result<CausalLm, RlError>,
) -> Result<()> {
    let ad = device.clone().autodiff();
    let policy =
        LoadedModel::load(&lm.dir, &ad).with_context(|| format!("loading {}", lm.dir.display()))?;
    let progress = super::common::Progress::new(3);
    let trained = a.run.with_settings_recorded(&run_identity(a), || {
        Ok(train(
            policy.model,
            Some(a.run.files(&lm.tokenizer)),
            &mut |r| progress.on_step(r),
        )?)
    })?;
    drop(progress);
    finish(a, cfg, lm, trained)
}

/// Writes the final model (whole or absent) and the config, or stops after `halt_after`.
fn finish(a: &Args, cfg: &PolicyTrainConfig, lm: &LoadedModel, trained: CausalLm) -> Result<()> {
    if cfg.halts_early() {
        eprintln!(
            "halted after step {}; continue with --resume",
            cfg.halt_after
        );
        return Ok(());
    }
    // Whole or absent, even over the final model of an earlier run in this directory.
    infalign_core::io::write_dir_atomic(&a.run.out.join("final"), |dir| {
        save_model_dir(dir, &trained, &lm.tokenizer)
    })?;
    infalign_core::io::write_json_atomic(a.run.out.join("align_config.json"), cfg)?;
    eprintln!(
        "wrote the aligned model to {}",
        a.run.out.join("final").display()
    );
    Ok(())
}
