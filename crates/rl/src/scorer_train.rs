//! The prefix-scorer training loop shared by CD-FUDGE and CD-Q: batches of scored rollouts,
//! AdamW with global gradient clipping, metrics, and an optional periodically synchronised
//! target network for CD-Q (**not the paper's**: the paper bootstraps from the network being
//! trained, under stop-gradient; `target_sync_every = 0` keeps that default).
//!
//! Rollouts are (prompt ids, completion ids, reward, terminal) with the reward computed once per
//! full sequence. Prefixes counted in the loss are those ending inside the completion.
//!
//! Invariant: batches are drawn from `seed.derive("scorer-data", step)`, so a run is
//! reproducible on the CPU.

use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::{Device, Tensor, TensorData};
use infalign_core::{MetricsWriter, Seed};
use infalign_models::optim::descend;
use infalign_models::{CausalLm, PrefixScorer, TokenBatch};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::RlError;

/// Which objective trains the scorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScorerMethod {
    /// CD-FUDGE: every prefix regresses onto the final reward (on-policy rollouts).
    Fudge,
    /// CD-Q: Bellman target `Σ_z π_ref(z|prefix) V(prefix + z)` under stop-gradient.
    #[default]
    Q,
}

/// A rollout with its sequence-level reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerRollout {
    /// Prompt token ids.
    pub prompt_ids: Vec<u32>,
    /// Completion token ids.
    pub tokens: Vec<u32>,
    /// `r([x, y])` (raw, calibrated or transformed).
    pub reward: f64,
    /// Whether the last token ends the episode (EOS, or truncation treated as the end).
    pub terminal: bool,
}

/// Hyperparameters of scorer training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerTrainConfig {
    /// The objective.
    pub method: ScorerMethod,
    /// Optimizer steps.
    pub steps: u64,
    /// Rollouts per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// CD-Q only: copy the scorer into a frozen target network every N steps (0: no target
    /// network, the paper's choice).
    pub target_sync_every: u64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Write a metrics row every N steps.
    pub log_every: u64,
}

impl Default for ScorerTrainConfig {
    fn default() -> Self {
        Self {
            method: ScorerMethod::Q,
            steps: 500,
            batch_size: 16,
            lr: 1e-3,
            weight_decay: 0.0,
            grad_clip: 1.0,
            target_sync_every: 0,
            seed: 0,
            log_every: 10,
        }
    }
}

/// One training batch, left-padded, with what the losses need on the host side.
pub(crate) struct ScorerBatch {
    /// Prompt + completion ids, left-padded.
    pub batch: TokenBatch,
    /// `[B, L - 1]`: 1 where column j (the prefix through token j + 1) ends inside the
    /// completion.
    pub weight: Tensor<2>,
    /// `[B, L - 1]`: 1 where that prefix is terminal.
    pub terminal: Tensor<2>,
    /// `[B, L - 1]`: the row's reward, broadcast.
    pub reward: Tensor<2>,
}

impl ScorerBatch {
    pub fn new(rows: &[&ScorerRollout], pad_id: u32, device: &Device) -> Result<Self, RlError> {
        let seqs: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.prompt_ids.iter().chain(&r.tokens).copied().collect())
            .collect();
        let batch = TokenBatch::left_padded(&seqs, pad_id, device)?;
        let [b, l] = batch.tokens.dims();
        let (mut w, mut term, mut rew) = (
            vec![0f32; b * (l - 1)],
            vec![0f32; b * (l - 1)],
            vec![0f32; b * (l - 1)],
        );
        for (i, r) in rows.iter().enumerate() {
            let start = batch.pad_left[i] + r.prompt_ids.len(); // index of the first completion token
            for tok in start..l {
                let col = i * (l - 1) + tok - 1;
                w[col] = 1.0;
                rew[col] = r.reward as f32;
                if tok == l - 1 && r.terminal {
                    term[col] = 1.0;
                }
            }
        }
        let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [b, l - 1]), device);
        Ok(Self {
            batch,
            weight: t(w),
            terminal: t(term),
            reward: t(rew),
        })
    }
}

/// Trains `scorer` (on an autodiff device) against `base` (frozen, on a plain device) with the
/// configured objective; returns the trained scorer (without autodiff).
pub fn train_scorer(
    cfg: &ScorerTrainConfig,
    base: &CausalLm,
    mut scorer: PrefixScorer,
    data: &[ScorerRollout],
    pad_id: u32,
    device: &Device,
    mut metrics: Option<&mut MetricsWriter>,
) -> Result<PrefixScorer, RlError> {
    if data.is_empty() {
        return Err(RlError::InvalidParameter {
            field: "rollouts",
            message: "no rollouts to train on".into(),
        });
    }
    if let Some(r) = data
        .iter()
        .find(|r| !r.reward.is_finite() || r.tokens.is_empty())
    {
        return Err(RlError::InvalidParameter {
            field: "rollouts",
            message: format!(
                "a rollout has reward {} and {} tokens: rewards must be finite and completions non-empty",
                r.reward,
                r.tokens.len()
            ),
        });
    }
    let ad = device.clone().autodiff();
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .init();
    let mut target: Option<PrefixScorer> = None;
    let seed = Seed(cfg.seed);
    for step in 1..=cfg.steps {
        if cfg.method == ScorerMethod::Q
            && cfg.target_sync_every > 0
            && (step - 1) % cfg.target_sync_every == 0
        {
            target = Some(scorer.valid());
        }
        let mut rng = seed.derive("scorer-data", step).stream("data");
        let rows: Vec<&ScorerRollout> = (0..cfg.batch_size.min(data.len()).max(1))
            .map(|_| &data[rng.random_range(0..data.len())])
            .collect();
        let b = ScorerBatch::new(&rows, pad_id, &ad)?;
        let loss = match cfg.method {
            ScorerMethod::Fudge => crate::cd_fudge::loss(&scorer, &b),
            ScorerMethod::Q => crate::cd_q::loss(&scorer, target.as_ref(), base, &b, device)?,
        };
        let (updated, loss_value, grad_norm) =
            descend(scorer, &mut optim, loss, cfg.lr, cfg.grad_clip)?;
        scorer = updated;
        if let Some(m) = metrics.as_deref_mut()
            && (step % cfg.log_every.max(1) == 0 || step == cfg.steps)
        {
            m.log(
                step,
                &[("scorer/loss", loss_value), ("scorer/grad_norm", grad_norm)],
            )?;
        }
    }
    Ok(scorer.valid())
}

/// Uploads host log-probs as probabilities on `device`, `[B, L, V]`.
pub(crate) fn probs_on(values: Vec<f32>, dims: [usize; 3], device: &Device) -> Tensor<3> {
    let p: Vec<f32> = values.into_iter().map(f32::exp).collect();
    Tensor::from_data(TensorData::new(p, dims), device)
}
