//! PPO (Schulman et al. 2017) for language models as in Ziegler et al. 2019 and TRL: a value
//! network (the base backbone with a scalar head), per-token rewards `−β (log π_old − log π_ref)`
//! with the sequence's (calibrated, transformed) score added on its terminal token, GAE
//! advantages (whitened), and `epochs` passes of the clipped surrogate
//! `max(−A ρ, −A clip(ρ, 1 ± ε))` plus the clipped value loss.
//!
//! Invariant: rewards and advantages exist only on completion tokens (never on prompt or
//! padding); the terminal token of each completion carries its score.

use std::sync::Mutex;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Tensor;
use infalign_models::optim::{SHARDS, descend, shard_rows};
use infalign_models::weights::read_f32;
use infalign_models::{CausalLm, PrefixScorer};

use crate::RlError;
use crate::policy_train::{KlMode, PolicyTrainConfig, TokenTable};

/// What one PPO update reports.
pub(crate) struct PpoMetrics {
    pub loss: f64,
    pub clipfrac: f64,
    pub value_loss: f64,
}

/// Values of the state before each predicted token, `[B, L - 1]`.
fn values(net: &PrefixScorer, table: &TokenTable) -> Tensor<2> {
    let out = net.forward(&table.batch, &mut net.new_cache());
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
pub(crate) fn update(
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
    let parts = infalign_core::run_on_workers(&plain_device, shards, |s| {
        let (lo, hi) = shard_rows(rows, shards, s);
        read_f32(values(&frozen, &TokenTableOn::plain(&table.rows(lo, hi))))
    })?;
    let mut old_v = Vec::with_capacity(rows * cols);
    for p in parts {
        old_v.extend(p?);
    }
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
    let weight = table.tensor(&table.weight);
    let adv_t = table.tensor(&to32(&adv));
    let ret_t = table.tensor(&to32(&ret));
    let old_lp_t = table.tensor(&table.old_lp);
    let old_v_t = table.tensor(&old_v);
    let denom = count;
    let mut metrics = PpoMetrics {
        loss: 0.0,
        clipfrac: 0.0,
        value_loss: 0.0,
    };
    // The policy's and the value network's updates of an epoch are independent: on the CPU
    // they run at once, one per core.
    let device = table.batch.tokens.device();
    let policy_step = |policy: CausalLm, optim: &mut ModuleOptimizer| {
        let tok_lp = table.token_logprobs(&policy);
        let ratio = (tok_lp.clone() - old_lp_t.clone()).exp();
        let unclipped = adv_t.clone() * ratio.clone();
        let clipped = adv_t.clone() * ratio.clone().clamp(1.0 - p.clip, 1.0 + p.clip);
        let surrogate = unclipped.clone().min_pair(clipped.clone());
        let mut loss = (surrogate * weight.clone()).sum().neg() / denom;
        if cfg.kl_mode == KlMode::LossK3 && beta > 0.0 {
            loss = loss + table.k3_penalty(tok_lp, beta, denom);
        }
        let ratio_host = read_f32(ratio)?;
        let clipfrac = ratio_host
            .iter()
            .zip(&table.weight)
            .filter(|(r, w)| **w > 0.0 && (f64::from(**r) - 1.0).abs() > p.clip)
            .count() as f64
            / denom;
        let (updated, value, _) = descend(policy, optim, loss, cfg.lr, cfg.grad_clip)?;
        Ok::<_, RlError>((updated, value, clipfrac))
    };
    let value_step = |value_net: PrefixScorer, value_optim: &mut ModuleOptimizer| {
        // A fork: its own autodiff leaves (the same parameter ids), so that its graph never
        // merges with the policy's, whose backward runs at the same time.
        let value_net = value_net.fork(&device);
        let v = values(&value_net, table);
        let v_clipped =
            old_v_t.clone() + (v.clone() - old_v_t.clone()).clamp(-p.value_clip, p.value_clip);
        let l1 = (v - ret_t.clone()).square();
        let l2 = (v_clipped - ret_t.clone()).square();
        let vloss = (l1.max_pair(l2) * weight.clone()).sum() * 0.5 / denom;
        Ok::<_, RlError>(descend(
            value_net,
            value_optim,
            vloss,
            p.value_lr,
            cfg.grad_clip,
        )?)
    };
    for _ in 0..p.epochs.max(1) {
        let slots = (
            Mutex::new(Some((policy, &mut *optim))),
            Mutex::new(Some((value_net, &mut *value_optim))),
        );
        let done = infalign_core::run_on_workers(&device, 2, |job| {
            Ok::<_, RlError>(if job == 0 {
                let (policy, optim) = taken(&slots.0).expect("job 0 runs once");
                Updated::Policy(policy_step(policy, optim)?)
            } else {
                let (value_net, value_optim) = taken(&slots.1).expect("job 1 runs once");
                Updated::Value(value_step(value_net, value_optim)?)
            })
        })?;
        let (mut new_policy, mut new_value) = (None, None);
        for d in done {
            match d? {
                Updated::Policy(x) => new_policy = Some(x),
                Updated::Value(x) => new_value = Some(x),
            }
        }
        let ((p_new, loss, clipfrac), (v_new, value_loss, _)) = new_policy
            .zip(new_value)
            .expect("each job returned its module");
        (policy, value_net) = (p_new, v_new);
        metrics.loss = loss;
        metrics.clipfrac = clipfrac;
        metrics.value_loss = value_loss;
    }
    Ok((policy, value_net, metrics))
}

/// What a job finds in its slot (each slot is taken by one job, once).
fn taken<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().ok().and_then(|mut g| g.take())
}

/// What one job of a PPO epoch returns.
enum Updated {
    Policy((CausalLm, f64, f64)),
    Value((PrefixScorer, f64, f64)),
}

/// The table's batch on the plain device (for the no-gradient value pass).
struct TokenTableOn;

impl TokenTableOn {
    fn plain(table: &TokenTable) -> TokenTable {
        let device = table.batch.tokens.device().without_autodiff();
        let batch = infalign_models::TokenBatch {
            tokens: table.batch.tokens.clone().to_device(&device),
            mask: table.batch.mask.clone().to_device(&device),
            pad_left: table.batch.pad_left.clone(),
        };
        TokenTable {
            batch,
            cols: table.cols,
            weight: Vec::new(),
            old_lp: Vec::new(),
            ref_cols: Vec::new(),
            spans: table.spans.clone(),
        }
    }
}
