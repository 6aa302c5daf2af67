//! Bradley-Terry reward-model training (docs/ALGORITHMS.md A.7, B.9): for a preference
//! `(x, y_w ≻ y_l)`, minimise `−log σ(r(x, y_w) − r(x, y_l))` (cross-entropy against the label);
//! report pairwise accuracy on held-out pairs. The loop, checkpoints and resume are
//! `rm_train.rs`'s.
//!
//! Invariant: a batch scores its chosen rows first, then its rejected rows, so the margin of
//! pair i is `score[i] − score[n + i]`.

use burn::tensor::Tensor;
use burn::tensor::activation::softplus;
use infalign_models::{PrefixScorer, RunFiles};
use serde::{Deserialize, Serialize};

use crate::RewardError;
use crate::rm_train::{RmObjective, train_reward_model};
pub use crate::rm_train::{RmTrainConfig as BradleyTerryConfig, RmTrainState as BradleyTerryState};

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

/// An encoded preference pair.
#[derive(Debug, Clone)]
pub struct EncodedPair {
    /// prompt + chosen.
    pub chosen: Vec<u32>,
    /// prompt + rejected.
    pub rejected: Vec<u32>,
}

/// The Bradley-Terry objective over encoded pairs.
#[derive(Debug, Clone, Copy)]
pub struct BradleyTerry<'a>(pub &'a [EncodedPair]);

impl RmObjective for BradleyTerry<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn rows(&self, picked: &[usize]) -> Vec<Vec<u32>> {
        picked
            .iter()
            .map(|&i| self.0[i].chosen.clone())
            .chain(picked.iter().map(|&i| self.0[i].rejected.clone()))
            .collect()
    }

    fn loss(&self, picked: &[usize], scores: Tensor<1>) -> Tensor<1> {
        let n = picked.len();
        let margin = scores.clone().narrow(0, 0, n) - scores.narrow(0, n, n);
        softplus(margin.neg(), 1.0).mean()
    }

    fn metric(&self) -> &'static str {
        "rm/loss"
    }
}

/// Trains `net` (scalar head, on an autodiff device) on preference `pairs` (see
/// [`train_reward_model`] for `files`, resume and `on_step`).
pub fn train_bradley_terry(
    cfg: &BradleyTerryConfig,
    net: PrefixScorer,
    pairs: &[EncodedPair],
    pad_id: u32,
    files: Option<RunFiles<'_>>,
    on_step: impl FnMut(&infalign_models::StepReport<'_>),
) -> Result<PrefixScorer, RewardError> {
    if pairs.is_empty() {
        return Err(RewardError::InvalidParameter {
            field: "preferences",
            message: "no pairs to train on".into(),
        });
    }
    train_reward_model(cfg, net, &BradleyTerry(pairs), pad_id, files, on_step)
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
