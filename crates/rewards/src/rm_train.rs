//! The training loop shared by reward models (docs/ALGORITHMS.md A.7): a scalar-head network
//! read at the last token, AdamW, global-norm clipping, metrics, checkpoints and exact resume.
//! What is learned is an [`RmObjective`]: Bradley-Terry on preference pairs (`bradley_terry.rs`)
//! or regression onto calibrated rewards (`calibrated_reward_model.rs`).
//!
//! Invariants: the examples of step `s` are drawn from `seed.derive("rm-data", s)`; the same
//! data and seed give the same model on the CPU. A checkpoint (`checkpoint/` of the run
//! directory, every `save_every` steps and at the end) holds the network, its AdamW state and
//! the step, all that carries over between steps: a run killed after its last checkpoint and
//! resumed ends with the weights of an uninterrupted run, and `metrics.jsonl` keeps one row per
//! step.

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use infalign_core::Seed;
use infalign_models::training::optim::descend;
use infalign_models::training::run::{
    OPTIMIZER_FILE, StepReport, load_optimizer, read_state, save_optimizer, warn_on_config_change,
    write_checkpoint,
};
use infalign_models::{PrefixScorer, RunFiles, TokenBatch, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::RewardError;
use crate::reward_model::model_err;

/// What a reward model learns from: examples, the token rows each needs scored, and a loss on
/// those scores.
pub trait RmObjective {
    /// Number of training examples.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The token rows to score for a batch of example indices.
    fn rows(&self, picked: &[usize]) -> Vec<Vec<u32>>;
    /// The mean loss of the batch from the scores of its rows (in `rows` order).
    fn loss(&self, picked: &[usize], scores: Tensor<1>) -> Tensor<1>;
    /// Name of the loss in `metrics.jsonl`.
    fn metric(&self) -> &'static str;
}

/// Hyperparameters of reward-model training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmTrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end); needs a run directory.
    #[serde(alias = "checkpoint_every")]
    pub save_every: u64,
    /// Stop after this step as if the process were killed (tests of resumption); 0 = never.
    pub halt_after: u64,
}

impl Default for RmTrainConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 16,
            lr: 1e-4,
            grad_clip: 1.0,
            seed: 0,
            save_every: 0,
            halt_after: 0,
        }
    }
}

impl RmTrainConfig {
    /// Whether a run with this config stops at `halt_after` before its last step.
    pub fn halts_early(&self) -> bool {
        self.halt_after > 0 && self.halt_after < self.steps
    }
}

/// What `checkpoint/state.json` of a reward-model run records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RmTrainState {
    /// Last completed step.
    pub step: u64,
    /// The config of the run that wrote it.
    pub config: RmTrainConfig,
}

fn optimizer() -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(0.0).init()
}

fn save_rm_checkpoint(
    dir: &Path,
    net: &PrefixScorer,
    optim: &ModuleOptimizer,
    tokenizer: &Tokenizer,
    state: &RmTrainState,
) -> Result<(), RewardError> {
    Ok(write_checkpoint(dir, state, |tmp| {
        net.save(tmp, tokenizer, "checkpoint")?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), optim)
    })?)
}

fn load_rm_checkpoint(
    dir: &Path,
    cfg: &RmTrainConfig,
    device: &Device,
) -> Result<(PrefixScorer, ModuleOptimizer, u64), RewardError> {
    let state: RmTrainState = read_state(dir)?;
    warn_on_config_change(&state.config, cfg, &["steps", "halt_after", "save_every"]);
    let (net, _, _) = PrefixScorer::load(dir, device)?;
    let optim = load_optimizer(&dir.join(OPTIMIZER_FILE), optimizer())?;
    Ok((net, optim, state.step))
}

/// Trains `net` (scalar head, on an autodiff device) on `objective`; calls `on_step` after each
/// step with the objective's loss. With `files`, metrics and checkpoints go to its directory, and
/// `files.resume` continues from the checkpoint there (`net` then only supplies the device).
/// After `halt_after` steps, returns the network of that step.
pub fn train_reward_model(
    cfg: &RmTrainConfig,
    net: PrefixScorer,
    objective: &dyn RmObjective,
    pad_id: u32,
    files: Option<RunFiles<'_>>,
    mut on_step: impl FnMut(&StepReport<'_>),
) -> Result<PrefixScorer, RewardError> {
    if objective.is_empty() {
        return Err(RewardError::InvalidParameter {
            field: "training data",
            message: "no examples to train on".into(),
        });
    }
    let device: Device = net.backbone().head_weight().device();
    let (mut net, mut optim, start) = match files {
        Some(f) if f.resume => {
            let r = load_rm_checkpoint(&f.checkpoint(), cfg, &device)?;
            tracing::info!(step = r.2, "resuming reward-model training");
            r
        }
        _ => (net, optimizer(), 0),
    };
    let mut metrics = files.map(|f| f.metrics_writer(start)).transpose()?;
    let seed = Seed(cfg.seed);
    for step in start + 1..=cfg.steps {
        let mut rng = seed.derive("rm-data", step).stream("data");
        let picked: Vec<usize> = (0..cfg.batch_size.max(1))
            .map(|_| rng.random_range(0..objective.len()))
            .collect();
        let rows = objective.rows(&picked);
        let batch = TokenBatch::left_padded(&rows, pad_id, &device).map_err(model_err)?;
        let scores = net
            .forward_last(&batch, &mut net.new_cache())
            .reshape([rows.len()]);
        let loss = objective.loss(&picked, scores);
        let (updated, value, _) =
            descend(net, &mut optim, loss, cfg.lr, cfg.grad_clip).map_err(model_err)?;
        net = updated;
        let row = [(objective.metric(), value)];
        if let Some(m) = metrics.as_mut() {
            m.log(step, &row)?;
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
            let state = RmTrainState {
                step,
                config: cfg.clone(),
            };
            save_rm_checkpoint(&f.checkpoint(), &net, &optim, f.tokenizer, &state)?;
        }
        if cfg.halt_after > 0 && step >= cfg.halt_after && step < cfg.steps {
            return Ok(net.valid());
        }
    }
    Ok(net.valid())
}
