//! RLOO (REINFORCE leave-one-out; Kool et al. 2019, Ahmadian et al. 2024): k samples per
//! prompt, each one's baseline the mean score of the other k − 1, one on-policy gradient step
//! per batch: `loss = −mean_i A_i · log π_θ(y_i | x)`, `A_i = s_i − mean_{j≠i} s_j`.
//!
//! With the KL in the reward (`s = R − β · (log π − log π_ref)`, the k1 estimator) this is an
//! unbiased gradient of the KL-regularised objective `E[R] − β KL(π ‖ π_ref)`, whose maximiser
//! is `π_ref · exp(R/β) / Z` (tested on a one-step bandit).
//!
//! Invariant: advantages sum to zero within each prompt's group.

use burn::optim::ModuleOptimizer;
use infalign_models::CausalLm;
use infalign_models::training::optim::{SHARDS, descend_sharded, shard_rows};

use crate::RlError;
use crate::policy_config::{KlMode, PolicyTrainConfig};
use crate::policy_objective::{PolicyObjective, StepBatch, StepMetrics};
use crate::token_table::TokenTable;

/// The RLOO objective: leave-one-out advantages of each prompt's k scores, one REINFORCE step.
pub(crate) struct Rloo;

impl PolicyObjective for Rloo {
    fn step(
        &mut self,
        policy: CausalLm,
        optim: &mut ModuleOptimizer,
        batch: &StepBatch,
        cfg: &PolicyTrainConfig,
        beta: f64,
        _m: &mut StepMetrics,
    ) -> Result<(CausalLm, f64), RlError> {
        let [b, _] = batch.table.batch.tokens.dims();
        let cols = batch.table.cols;
        let adv = advantages(&batch.scores, cfg.k)?;
        let adv_tok: Vec<f64> = (0..b * cols).map(|x| adv[x / cols]).collect();
        policy_gradient_step(policy, optim, &batch.table, &adv_tok, cfg, beta)
    }
}

/// Leave-one-out advantages of `scores`, grouped in consecutive runs of `k`.
pub fn advantages(scores: &[f64], k: usize) -> Result<Vec<f64>, RlError> {
    if k < 2 || !scores.len().is_multiple_of(k) {
        return Err(RlError::InvalidParameter {
            field: "k",
            message: format!(
                "RLOO needs k >= 2 samples per prompt and whole groups; got k = {k} for {} scores",
                scores.len()
            ),
        });
    }
    Ok(scores
        .chunks(k)
        .flat_map(|g| {
            let sum: f64 = g.iter().sum();
            g.iter().map(move |&s| s - (sum - s) / (k - 1) as f64)
        })
        .collect())
}

/// One REINFORCE step `−Σ A_t log π(y_t) / B` (+ β k3), with per-token advantages; the rows
/// are split into [`SHARDS`] shards whose gradients add up to the batch's.
fn policy_gradient_step(
    policy: CausalLm,
    optim: &mut ModuleOptimizer,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out() {
        let a = advantages(&[1.0, 2.0, 3.0, 10.0, 10.0, 10.0], 3).unwrap();
        assert_eq!(a, vec![1.0 - 2.5, 2.0 - 2.0, 3.0 - 1.5, 0.0, 0.0, 0.0]);
        assert!(a[..3].iter().sum::<f64>().abs() < 1e-12);
        assert!(advantages(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(advantages(&[1.0], 1).is_err());
    }
}
