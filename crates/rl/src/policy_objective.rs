//! The objective of one policy-optimisation step, behind one trait ([`PolicyObjective`]) that
//! the training loop calls: RLOO (`rloo.rs`), PPO (`ppo.rs`), DPO and IPO
//! (`preference_pairs.rs`). The loop gathers a [`StepBatch`] (online samples or offline pairs),
//! hands it to the objective, and writes [`StepMetrics`]; an objective with state of its own
//! (PPO's value network) saves it into the checkpoint.
//!
//! Invariant: objective files depend on this one and on the batch types, never on the loop.

use std::path::Path;

use burn::optim::ModuleOptimizer;
use infalign_models::{CausalLm, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::RlError;
use crate::policy_config::PolicyTrainConfig;
use crate::token_table::TokenTable;

/// One optimisation step of a policy on a batch.
pub(crate) trait PolicyObjective {
    /// Updates `policy` on `batch` with KL weight `beta`; returns the new policy and the loss.
    /// Objective-specific metrics go into `m`.
    fn step(
        &mut self,
        policy: CausalLm,
        optim: &mut ModuleOptimizer,
        batch: &StepBatch,
        cfg: &PolicyTrainConfig,
        beta: f64,
        m: &mut StepMetrics,
    ) -> Result<(CausalLm, f64), RlError>;

    /// Writes the objective's own state into the checkpoint directory being filled.
    fn save(&self, _dir: &Path, _tokenizer: &Tokenizer) -> infalign_models::Result<()> {
        Ok(())
    }

    /// Metrics of its own for `metrics.jsonl`, beyond the shared ones.
    fn metric_columns(&self, _m: &StepMetrics) -> Vec<(&'static str, f64)> {
        Vec::new()
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
    /// PPO: fraction of tokens whose ratio was clipped.
    pub clipfrac: f64,
    /// PPO: value loss.
    pub value_loss: f64,
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
