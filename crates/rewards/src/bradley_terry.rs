//! Bradley-Terry reward-model training (ALGORITHMS.md A.7, B.9): for a preference
//! `(x, y_w ≻ y_l)`, minimise `−log σ(r(x, y_w) − r(x, y_l))` (cross-entropy against the label),
//! with AdamW; report pairwise accuracy on held-out pairs.
//!
//! Invariants: batches are drawn from `seed.derive("rm-data", step)`; the same data and seed
//! give the same model on the CPU. A checkpoint (`checkpoint/` of the run directory, every
//! `save_every` steps and at the end) holds the network, its AdamW state and the step, all that
//! carries over between steps: a run killed after its last checkpoint and resumed ends with the
//! weights of an uninterrupted run, and `metrics.jsonl` keeps one row per step.

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use burn::tensor::activation::softplus;
use infalign_core::Seed;
use infalign_models::optim::descend;
use infalign_models::train_checkpoint::{
    OPTIMIZER_FILE, load_optimizer, progress_bar, read_state, save_optimizer,
    warn_on_config_change, write_checkpoint,
};
use infalign_models::{PrefixScorer, RunFiles, TokenBatch, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::RewardError;
use crate::reward_model::model_err;

/// A preference in TRL's format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preference {
    /// The prompt.
    pub prompt: String,
    /// The preferred completion.
    pub chosen: String,
    /// The other one.
    pub rejected: String,
}

/// Hyperparameters of Bradley-Terry training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BradleyTerryConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Pairs per step.
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

impl Default for BradleyTerryConfig {
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

impl BradleyTerryConfig {
    /// Whether a run with this config stops at `halt_after` before its last step.
    pub fn halts_early(&self) -> bool {
        self.halt_after > 0 && self.halt_after < self.steps
    }
}

/// What `checkpoint/state.json` of a reward-model run records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BradleyTerryState {
    /// Last completed step.
    pub step: u64,
    /// The config of the run that wrote it.
    pub config: BradleyTerryConfig,
}

fn optimizer() -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(0.0).init()
}

fn save_rm_checkpoint(
    dir: &Path,
    net: &PrefixScorer,
    optim: &ModuleOptimizer,
    tokenizer: &Tokenizer,
    state: &BradleyTerryState,
) -> Result<(), RewardError> {
    Ok(write_checkpoint(dir, state, |tmp| {
        net.save(tmp, tokenizer, "checkpoint")?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), optim)
    })?)
}

fn load_rm_checkpoint(
    dir: &Path,
    cfg: &BradleyTerryConfig,
    device: &Device,
) -> Result<(PrefixScorer, ModuleOptimizer, u64), RewardError> {
    let state: BradleyTerryState = read_state(dir)?;
    warn_on_config_change(&state.config, cfg, &["steps", "halt_after", "save_every"]);
    let (net, _, _) = PrefixScorer::load(dir, device)?;
    let optim = load_optimizer(&dir.join(OPTIMIZER_FILE), optimizer())?;
    Ok((net, optim, state.step))
}

/// An encoded preference pair.
#[derive(Debug, Clone)]
pub struct EncodedPair {
    /// prompt + chosen.
    pub chosen: Vec<u32>,
    /// prompt + rejected.
    pub rejected: Vec<u32>,
}

/// Trains `net` (scalar head, on an autodiff device) on `pairs`; calls `on_step(step, loss)`.
/// With `files`, metrics (`rm/loss`) and checkpoints go to its directory, and `files.resume`
/// continues from the checkpoint there (`net` then only supplies the device). After
/// `halt_after` steps, returns the network of that step.
pub fn train_bradley_terry(
    cfg: &BradleyTerryConfig,
    net: PrefixScorer,
    pairs: &[EncodedPair],
    pad_id: u32,
    files: Option<RunFiles<'_>>,
    mut on_step: impl FnMut(u64, f64),
) -> Result<PrefixScorer, RewardError> {
    if pairs.is_empty() {
        return Err(RewardError::InvalidParameter {
            field: "preferences",
            message: "no pairs to train on".into(),
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
    let bar = progress_bar(cfg.steps, start);
    let seed = Seed(cfg.seed);
    for step in start + 1..=cfg.steps {
        let mut rng = seed.derive("rm-data", step).stream("data");
        let picked: Vec<&EncodedPair> = (0..cfg.batch_size.max(1))
            .map(|_| &pairs[rng.random_range(0..pairs.len())])
            .collect();
        let n = picked.len();
        let rows: Vec<Vec<u32>> = picked
            .iter()
            .map(|p| p.chosen.clone())
            .chain(picked.iter().map(|p| p.rejected.clone()))
            .collect();
        let batch = TokenBatch::left_padded(&rows, pad_id, &device).map_err(model_err)?;
        let r = net
            .forward_last(&batch, &mut net.new_cache())
            .reshape([2 * n]);
        let margin = r.clone().narrow(0, 0, n) - r.narrow(0, n, n);
        let loss = softplus(margin.neg(), 1.0).mean();
        let (updated, value, _) =
            descend(net, &mut optim, loss, cfg.lr, cfg.grad_clip).map_err(model_err)?;
        net = updated;
        if let Some(m) = metrics.as_mut() {
            m.log(step, &[("rm/loss", value)])?;
        }
        bar.set_position(step);
        bar.set_message(format!("loss {value:.4}"));
        on_step(step, value);
        let save_now = (cfg.save_every > 0 && step % cfg.save_every == 0) || step == cfg.steps;
        if let Some(f) = files
            && save_now
        {
            let state = BradleyTerryState {
                step,
                config: cfg.clone(),
            };
            save_rm_checkpoint(&f.checkpoint(), &net, &optim, f.tokenizer, &state)?;
        }
        if cfg.halt_after > 0 && step >= cfg.halt_after && step < cfg.steps {
            bar.abandon_with_message(format!("halted after step {step}"));
            return Ok(net.valid());
        }
    }
    bar.finish();
    Ok(net.valid())
}

/// Fraction of pairs whose chosen side scores strictly higher (ties count ½).
pub fn pairwise_accuracy(scores_chosen: &[f64], scores_rejected: &[f64]) -> f64 {
    let n = scores_chosen.len().max(1) as f64;
    scores_chosen
        .iter()
        .zip(scores_rejected)
        .map(|(c, r)| {
            if c > r {
                1.0
            } else if c == r {
                0.5
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / n
}
