//! What prefix-scorer training reads: rollouts with their sequence-level reward
//! ([`ScorerRollout`]) and a step's batch of them as the objectives need it ([`ScorerBatch`]):
//! left-padded ids, and per prefix column whether it lies in the completion, whether it is
//! terminal, and the row's reward.
//!
//! Invariant: only prefixes ending inside the completion carry weight; the loss's sum over them
//! is divided by the whole step's prefix count, so the shards of a batch add up to the batch.

use burn::tensor::{Device, Tensor, TensorData};
use infalign_models::TokenBatch;
use serde::{Deserialize, Serialize};

use crate::RlError;

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
    /// What the loss's sum over prefixes is divided by: the number of completion prefixes of
    /// the whole step's batch (of which this may be a shard), at least 1.
    pub prefixes: f64,
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
        let prefixes = w.iter().filter(|&&x| x > 0.0).count().max(1) as f64;
        Ok(Self {
            prefixes,
            batch,
            weight: t(w),
            terminal: t(term),
            reward: t(rew),
        })
    }
}
