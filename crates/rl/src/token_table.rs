//! The completion tokens of a batch of rollouts as the policy-gradient objectives read them:
//! prompt + completion ids left-padded on the autodiff device, and per prediction column its
//! weight (1 on completion tokens), the sampling policy's and the reference's log-probs.
//!
//! Invariant: column c predicts token c + 1; only completion columns carry weight, so prompt and
//! padding never enter a loss.

use burn::tensor::{Device, Tensor, TensorData};
use infalign_models::{CausalLm, TokenBatch};

use crate::RlError;

/// The completion tokens of a batch of rollouts, column-aligned with the model's predictions
/// (column c predicts token c + 1).
pub(crate) struct TokenTable {
    /// Prompt + completion ids, left-padded, on the autodiff device.
    pub batch: TokenBatch,
    /// Number of prediction columns, `L - 1`.
    pub cols: usize,
    /// 1 on completion columns.
    pub weight: Vec<f32>,
    /// Log-probs of the sampled tokens under the sampling policy.
    pub old_lp: Vec<f32>,
    /// Log-probs of the sampled tokens under the reference.
    pub ref_cols: Vec<f32>,
    /// Per row, the completion's columns `first..end`.
    pub spans: Vec<(usize, usize)>,
}

impl TokenTable {
    /// The table of `rows` (prompt + completion ids; `prompt_lens[i]` of row i are the prompt),
    /// left-padded on the device `ad`, with the reference's per-position log-probs `ref_lp` (as
    /// `sequence_logprobs` returns them) and the sampling policy's completion log-probs `old`
    /// (zeros when `None`: rows the policy did not sample).
    pub(crate) fn new(
        rows: &[Vec<u32>],
        prompt_lens: &[usize],
        old: Option<&[&[f32]]>,
        ref_lp: &[Vec<f32>],
        pad_id: u32,
        ad: &Device,
    ) -> Result<Self, RlError> {
        let batch = TokenBatch::left_padded(rows, pad_id, ad)?;
        let [b, l] = batch.tokens.dims();
        let cols = l - 1;
        let mut weight = vec![0f32; b * cols];
        let mut old_lp = vec![0f32; b * cols];
        let mut ref_cols = vec![0f32; b * cols];
        let mut spans = Vec::with_capacity(b);
        for (i, &n_prompt) in prompt_lens.iter().enumerate() {
            let pad = batch.pad_left[i];
            let first = pad + n_prompt - 1; // column predicting the first completion token
            for (j, c) in (first..cols).enumerate() {
                weight[i * cols + c] = 1.0;
                if let Some(old) = old {
                    old_lp[i * cols + c] = old[i][j];
                }
            }
            for (e, &x) in ref_lp[i].iter().enumerate() {
                ref_cols[i * cols + pad + e] = x;
            }
            spans.push((first, cols));
        }
        Ok(TokenTable {
            batch,
            cols,
            weight,
            old_lp,
            ref_cols,
            spans,
        })
    }

    pub(crate) fn tensor(&self, values: &[f32]) -> Tensor<2> {
        let b = self.spans.len();
        Tensor::from_data(
            TensorData::new(values.to_vec(), [b, self.cols]),
            &self.batch.tokens.device(),
        )
    }

    /// Log-probs of the sampled tokens under `policy`, with gradient, `[B, L - 1]`.
    pub(crate) fn token_logprobs(&self, policy: &CausalLm) -> Tensor<2> {
        self.batch
            .at_next_tokens(policy.forward(&self.batch, &mut policy.new_cache()))
    }

    /// `β · Σ k3 / tokens` over this table's completion tokens (the KL-in-the-loss term),
    /// given the policy's token log-probs; `tokens` is the completion-token count of the whole
    /// batch, so that the terms of a batch's shards add up to the batch's mean.
    pub(crate) fn k3_penalty(&self, tok_lp: Tensor<2>, beta: f64, tokens: f64) -> Tensor<1> {
        let weight = self.tensor(&self.weight);
        let log_ratio = self.tensor(&self.ref_cols) - tok_lp;
        let k3 = log_ratio.clone().exp() - 1.0 - log_ratio;
        (k3 * weight).sum() * beta / tokens.max(1.0)
    }

    /// Completion tokens in the table.
    pub(crate) fn completion_tokens(&self) -> f64 {
        self.weight.iter().filter(|&&w| w > 0.0).count() as f64
    }

    /// The rows `rows` (in that order, repeats allowed) as a table of their own.
    pub(crate) fn select(&self, rows: &[usize]) -> TokenTable {
        let c = self.cols;
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &self.batch.tokens.device(),
        );
        let pick = |v: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| v[r * c..(r + 1) * c].iter().copied())
                .collect()
        };
        TokenTable {
            batch: TokenBatch {
                tokens: self.batch.tokens.clone().select(0, idx.clone()),
                mask: self.batch.mask.clone().select(0, idx),
                pad_left: rows.iter().map(|&r| self.batch.pad_left[r]).collect(),
            },
            cols: c,
            weight: pick(&self.weight),
            old_lp: pick(&self.old_lp),
            ref_cols: pick(&self.ref_cols),
            spans: rows.iter().map(|&r| self.spans[r]).collect(),
        }
    }

    /// The rows `lo..hi` as a table of their own (same columns).
    pub(crate) fn rows(&self, lo: usize, hi: usize) -> TokenTable {
        let (c, n) = (self.cols, hi - lo);
        TokenTable {
            batch: TokenBatch {
                tokens: self.batch.tokens.clone().narrow(0, lo, n),
                mask: self.batch.mask.clone().narrow(0, lo, n),
                pad_left: self.batch.pad_left[lo..hi].to_vec(),
            },
            cols: c,
            weight: self.weight[lo * c..hi * c].to_vec(),
            old_lp: self.old_lp[lo * c..hi * c].to_vec(),
            ref_cols: self.ref_cols[lo * c..hi * c].to_vec(),
            spans: self.spans[lo..hi].to_vec(),
        }
    }
}
