//! PPO (Schulman et al. 2017) for language models as in Ziegler et al. 2019 and TRL: a value
//! network (the base backbone with a scalar head), per-token rewards `−β (log π_old − log π_ref)`
//! with the sequence's (calibrated, transformed) score added on its terminal token, GAE
//! advantages (whitened), and `epochs` passes of the clipped surrogate
//! `max(−A ρ, −A clip(ρ, 1 ± ε))` plus the clipped value loss.
//!
//! Invariant: rewards and advantages exist only on completion tokens (never on prompt or
//! padding); the terminal token of each completion carries its score.

use std::path::Path;
use std::sync::Mutex;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor};
use infalign_models::training::optim::{SHARDS, descend_sharded, shard_rows};
use infalign_models::training::run::{load_optimizer, save_optimizer};
use infalign_models::weights::read_f32;
use infalign_models::{CausalLm, PrefixScorer, ScorerLayout, Tokenizer};

use crate::RlError;
use crate::policy_checkpoint::adamw;
use crate::policy_config::{KlMode, PolicyTrainConfig};
use crate::policy_objective::{PolicyObjective, StepBatch, StepMetrics};
use crate::token_table::TokenTable;

/// The value network's directory inside a PPO checkpoint (a scorer directory).
pub const VALUE_DIR: &str = "value";
/// The value network's optimizer state inside a PPO checkpoint.
pub const VALUE_OPTIMIZER_FILE: &str = "value_optimizer.bpk";

/// The PPO objective with its state: the value network and its optimizer.
pub(crate) struct Ppo {
    /// `None` only while an update holds it.
    value_net: Option<PrefixScorer>,
    value_optim: ModuleOptimizer,
}

impl Ppo {
    /// A fresh value network: the policy's backbone with a scalar head, on the autodiff device.
    pub(crate) fn new(policy: &CausalLm, ad: &Device) -> Result<Self, RlError> {
        Ok(Self {
            value_net: Some(PrefixScorer::from_base(
                policy.clone(),
                ScorerLayout::Scalar,
                ad,
            )?),
            value_optim: adamw(),
        })
    }

    /// The value network and its optimizer of the checkpoint in `dir`.
    pub(crate) fn resume(dir: &Path, ad: &Device) -> Result<Self, RlError> {
        let (v, _, _) = PrefixScorer::load(dir.join(VALUE_DIR), ad)?;
        let o = load_optimizer(&dir.join(VALUE_OPTIMIZER_FILE), adamw())?;
        Ok(Self {
            value_net: Some(v),
            value_optim: o,
        })
    }
}

impl PolicyObjective for Ppo {
    fn step(
        &mut self,
        policy: CausalLm,
        optim: &mut ModuleOptimizer,
        batch: &StepBatch,
        cfg: &PolicyTrainConfig,
        beta: f64,
        m: &mut StepMetrics,
    ) -> Result<(CausalLm, f64), RlError> {
        let vnet = self.value_net.take().expect("PPO has a value network");
        let (p, v, ppo_m) = update(
            policy,
            vnet,
            optim,
            &mut self.value_optim,
            &batch.table,
            &batch.shaped_scores,
            cfg,
            beta,
        )?;
        self.value_net = Some(v);
        m.clipfrac = ppo_m.clipfrac;
        m.value_loss = ppo_m.value_loss;
        Ok((p, ppo_m.loss))
    }

    fn save(&self, dir: &Path, tokenizer: &Tokenizer) -> infalign_models::Result<()> {
        if let Some(net) = &self.value_net {
            net.save(dir.join(VALUE_DIR), tokenizer, "PPO value network")?;
            save_optimizer(&dir.join(VALUE_OPTIMIZER_FILE), &self.value_optim)?;
        }
        Ok(())
    }

    fn metric_columns(&self, m: &StepMetrics) -> Vec<(&'static str, f64)> {
        vec![
            ("policy/clipfrac", m.clipfrac),
            ("loss/value", m.value_loss),
        ]
    }
}

/// What one PPO update reports.
struct PpoMetrics {
    pub loss: f64,
    pub clipfrac: f64,
    pub value_loss: f64,
}

/// Values of the state before each predicted token, `[B, L - 1]`.
fn values(net: &PrefixScorer, batch: &infalign_models::TokenBatch) -> Tensor<2> {
    let out = net.forward(batch, &mut net.new_cache());
    let [b, l, _] = out.dims();
    out.narrow(1, 0, l - 1).reshape([b, l - 1])
}

/// GAE over each row's completion columns; returns (advantages, returns), both `B × cols`.
fn gae(
    table: &TokenTable,
    rewards: &[f64],
    old_v: &[f32],
    gamma: f64,
    lambda: f64,
) -> (Vec<f64>, Vec<f64>) {
    let cols = table.cols;
    let mut adv = vec![0.0; rewards.len()];
    let mut ret = vec![0.0; rewards.len()];
    for (i, &(first, end)) in table.spans.iter().enumerate() {
        let mut next_v = 0.0;
        let mut acc = 0.0;
        for c in (first..end).rev() {
            let k = i * cols + c;
            let v = f64::from(old_v[k]);
            let delta = rewards[k] + gamma * next_v - v;
            acc = delta + gamma * lambda * acc;
            adv[k] = acc;
            ret[k] = acc + v;
            next_v = v;
        }
    }
    (adv, ret)
}

/// One PPO update on a batch of rollouts.
#[allow(clippy::too_many_arguments)]
fn update(
    mut policy: CausalLm,
    mut value_net: PrefixScorer,
    optim: &mut ModuleOptimizer,
    value_optim: &mut ModuleOptimizer,
    table: &TokenTable,
    scores: &[f64],
    cfg: &PolicyTrainConfig,
    beta: f64,
) -> Result<(CausalLm, PrefixScorer, PpoMetrics), RlError> {
    let p = &cfg.ppo;
    let cols = table.cols;
    let n = table.weight.len();
    // Per-token rewards.
    let mut rewards = vec![0.0; n];
    for (i, &(first, end)) in table.spans.iter().enumerate() {
        for c in first..end {
            let k = i * cols + c;
            if cfg.kl_mode == KlMode::RewardK1 {
                rewards[k] = -beta * f64::from(table.old_lp[k] - table.ref_cols[k]);
            }
        }
        if end > first {
            rewards[i * cols + end - 1] += scores[i];
        }
    }
    // The value network's estimates before the update, row shards on separate cores.
    let frozen = value_net.valid();
    let rows = table.spans.len();
    let shards = SHARDS.min(rows).max(1);
    let plain_device = table.batch.tokens.device().without_autodiff();
    let old_v = infalign_core::run_on_workers(&plain_device, shards, |s| {
        let (lo, hi) = shard_rows(rows, shards, s);
        // burn's `to_device` keeps autodiff tracking, so this pass runs on the autodiff
        // backend. Through the host (`TokenBatch::to_device`) it would reach the fast kernels,
        // but a value network loaded from a checkpoint then rounds differently from the one
        // trained in memory and `--resume` is no longer exact (ARCHITECTURE.md, open problems).
        let part = table.rows(lo, hi).batch;
        let tracked = infalign_models::TokenBatch {
            tokens: part.tokens.to_device(&plain_device),
            mask: part.mask.to_device(&plain_device),
            pad_left: part.pad_left,
        };
        read_f32(values(&frozen, &tracked))
    })?
    .concat();
    let (mut adv, ret) = gae(table, &rewards, &old_v, p.gamma, p.gae_lambda);
    // Whiten the advantages over completion tokens.
    let count = table.weight.iter().filter(|&&w| w > 0.0).count().max(1) as f64;
    let mean = adv
        .iter()
        .zip(&table.weight)
        .map(|(a, &w)| a * f64::from(w))
        .sum::<f64>()
        / count;
    let var = adv
        .iter()
        .zip(&table.weight)
        .map(|(a, &w)| f64::from(w) * (a - mean).powi(2))
        .sum::<f64>()
        / count;
    let sd = var.sqrt().max(1e-8);
    for (a, &w) in adv.iter_mut().zip(&table.weight) {
        *a = if w > 0.0 { (*a - mean) / sd } else { 0.0 };
    }
    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    let (adv, ret) = (to32(&adv), to32(&ret));
    let denom = count;
    let mut metrics = PpoMetrics {
        loss: 0.0,
        clipfrac: 0.0,
        value_loss: 0.0,
    };
    // Each update runs on the batch's row shards, one per core (`descend_sharded`); every
    // shard's term is normalised by the whole batch's completion tokens.
    let rows = table.spans.len();
    let shards = SHARDS.min(rows).max(1);
    let shard = |s: usize| {
        let (lo, hi) = shard_rows(rows, shards, s);
        (table.rows(lo, hi), lo * cols..hi * cols)
    };
    for _ in 0..p.epochs.max(1) {
        let clipped_tokens = Mutex::new(0usize);
        let policy_loss = |policy: &CausalLm, s: usize| {
            let (part, span) = shard(s);
            let tok_lp = part.token_logprobs(policy);
            let ratio = (tok_lp.clone() - part.tensor(&part.old_lp)).exp();
            let adv_t = part.tensor(&adv[span]);
            let unclipped = adv_t.clone() * ratio.clone();
            let clipped = adv_t * ratio.clone().clamp(1.0 - p.clip, 1.0 + p.clip);
            let surrogate = unclipped.min_pair(clipped);
            let mut loss = (surrogate * part.tensor(&part.weight)).sum().neg() / denom;
            if cfg.kl_mode == KlMode::LossK3 && beta > 0.0 {
                loss = loss + part.k3_penalty(tok_lp, beta, denom);
            }
            let outside = read_f32(ratio)?
                .iter()
                .zip(&part.weight)
                .filter(|(r, w)| **w > 0.0 && (f64::from(**r) - 1.0).abs() > p.clip)
                .count();
            if let Ok(mut n) = clipped_tokens.lock() {
                *n += outside;
            }
            Ok::<_, RlError>(loss)
        };
        let (updated, loss, _) =
            descend_sharded(policy, optim, shards, policy_loss, cfg.lr, cfg.grad_clip)?;
        policy = updated;
        metrics.loss = loss;
        metrics.clipfrac = clipped_tokens.into_inner().unwrap_or(0) as f64 / denom;

        let value_loss = |value_net: &PrefixScorer, s: usize| {
            let (part, span) = shard(s);
            let (old_v_t, ret_t) = (part.tensor(&old_v[span.clone()]), part.tensor(&ret[span]));
            let v = values(value_net, &part.batch);
            let v_clipped =
                old_v_t.clone() + (v.clone() - old_v_t).clamp(-p.value_clip, p.value_clip);
            let l1 = (v - ret_t.clone()).square();
            let l2 = (v_clipped - ret_t).square();
            Ok::<_, RlError>((l1.max_pair(l2) * part.tensor(&part.weight)).sum() * 0.5 / denom)
        };
        let (updated, value_loss, _) = descend_sharded(
            value_net,
            value_optim,
            shards,
            value_loss,
            p.value_lr,
            cfg.grad_clip,
        )?;
        value_net = updated;
        metrics.value_loss = value_loss;
    }
    Ok((policy, value_net, metrics))
}
