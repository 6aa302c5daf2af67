//! Bradley-Terry reward-model training (ALGORITHMS.md A.7, B.9): for a preference
//! `(x, y_w ≻ y_l)`, minimise `−log σ(r(x, y_w) − r(x, y_l))` (cross-entropy against the label),
//! with AdamW; report pairwise accuracy on held-out pairs.
//!
//! Invariant: batches are drawn from `seed.derive("rm-data", step)`; the same data and seed give
//! the same model on the CPU.

use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use burn::tensor::activation::softplus;
use infalign_core::Seed;
use infalign_models::optim::descend;
use infalign_models::{PrefixScorer, TokenBatch};
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
}

impl Default for BradleyTerryConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 16,
            lr: 1e-4,
            grad_clip: 1.0,
            seed: 0,
        }
    }
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
pub fn train_bradley_terry(
    cfg: &BradleyTerryConfig,
    mut net: PrefixScorer,
    pairs: &[EncodedPair],
    pad_id: u32,
    mut on_step: impl FnMut(u64, f64),
) -> Result<PrefixScorer, RewardError> {
    if pairs.is_empty() {
        return Err(RewardError::InvalidParameter {
            field: "preferences",
            message: "no pairs to train on".into(),
        });
    }
    let device: Device = net.backbone().head_weight().device();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let seed = Seed(cfg.seed);
    for step in 1..=cfg.steps {
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
        on_step(step, value);
    }
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
