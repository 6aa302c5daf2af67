//! A policy run's checkpoint (`OUT/checkpoint`): the policy as a model directory with its AdamW
//! state (`optimizer.bpk`), the objective's own state (PPO: the value network in `value/` with
//! `value_optimizer.bpk`), and `state.json` (the step, the adaptive β to the bit, the config).
//!
//! Invariants: nothing else carries over from one step to the next, so a run killed after its
//! last checkpoint and resumed ends with the weights of an uninterrupted run (CPU, same seed);
//! resuming with another `algo` or `kl_mode` is refused, naming what changed; a corrupt β is
//! refused.

use std::path::Path;

use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use infalign_models::training::run::{
    OPTIMIZER_FILE, STATE_FILE, load_optimizer, read_state, save_optimizer, warn_on_config_change,
    write_checkpoint,
};
use infalign_models::{CausalLm, LoadedModel, save_model_dir};
use serde::{Deserialize, Serialize};

use crate::RlError;
use crate::policy_config::PolicyTrainConfig;
use crate::policy_objective::PolicyObjective;

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

/// The optimizer of the policy (and of PPO's value network): AdamW without weight decay.
pub(crate) fn adamw() -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(0.0).init()
}

/// What a checkpoint restores: the policy, its optimizer, β and the last completed step.
pub(crate) struct Resumed {
    pub policy: CausalLm,
    pub optim: ModuleOptimizer,
    pub beta: f64,
    pub step: u64,
}

/// Writes the checkpoint: the policy as a model directory at the root with `optimizer.bpk`,
/// the objective's own state, and `state.json`.
pub(crate) fn save_policy_checkpoint(
    dir: &Path,
    policy: &CausalLm,
    optim: &ModuleOptimizer,
    objective: &dyn PolicyObjective,
    tokenizer: &infalign_models::Tokenizer,
    state: &PolicyTrainState,
) -> Result<(), RlError> {
    Ok(write_checkpoint(dir, state, |tmp| {
        save_model_dir(tmp, policy, tokenizer)?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), optim)?;
        objective.save(tmp, tokenizer)
    })?)
}

/// Loads the policy, its optimizer, β and step of a checkpoint written by
/// [`save_policy_checkpoint`] onto the autodiff device `ad` (the objective loads its own state).
pub(crate) fn load_policy_checkpoint(
    dir: &Path,
    cfg: &PolicyTrainConfig,
    ad: &Device,
) -> Result<Resumed, RlError> {
    // Checkpoints written before the run directory left the config carry `out_dir`: dropped.
    let mut raw: serde_json::Value = read_state(dir)?;
    if let Some(config) = raw.get_mut("config").and_then(|c| c.as_object_mut()) {
        config.remove("out_dir");
    }
    let state: PolicyTrainState =
        serde_json::from_value(raw).map_err(|e| RlError::InvalidParameter {
            field: "resume",
            message: format!("{}: {e}", dir.join(STATE_FILE).display()),
        })?;
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
        &["steps", "halt_after", "save_every", "snapshot_every"],
    );
    let beta = f64::from_bits(state.beta_bits);
    let policy = LoadedModel::load(dir, ad)?.model;
    let optim = load_optimizer(&dir.join(OPTIMIZER_FILE), adamw())?;
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
    Ok(Resumed {
        policy,
        optim,
        beta,
        step: state.step,
    })
}
