//! [`CausalLm`]: one type over every architecture, with the contract every consumer relies on:
//! token ids `[B, L]` plus a cache in, next-token **log-probs** out.
//!
//! Invariants: batched prompts are left-padded and their positions come from the attention
//! mask, so a padded row gives the same log-probs as the same row alone; decoding one token at a
//! time with the cache gives the same log-probs as recomputing the whole sequence.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use infalign_core::Seed;

use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::gpt2::Gpt2;
use crate::llama::Llama;
use crate::weights::{Exporter, RandomInit, WeightSource, read_f32};
use crate::{ModelError, Result};

/// A decoder-only causal language model of any supported architecture.
#[derive(Module, Debug)]
pub enum CausalLm {
    /// GPT-2 family.
    Gpt2(Gpt2),
    /// Llama family and Qwen2.
    Llama(Llama),
}

/// Token ids and their attention mask, ready for the model.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[B, L]` token ids (padding positions hold the pad id).
    pub tokens: Tensor<2, Int>,
    /// `[B, L]`: 1.0 for real tokens, 0.0 for padding.
    pub mask: Tensor<2>,
    /// Number of padding positions at the left of each row.
    pub pad_left: Vec<usize>,
}

impl TokenBatch {
    /// The same tokens, mask and padding on `device`, through the host: a plain tensor on a
    /// plain device even from an autodiff one (burn's `to_device` keeps a tensor's autodiff
    /// tracking, so a frozen network would run on the autodiff backend, off the fast kernels).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let [b, l] = self.tokens.dims();
        let ids = crate::weights::read_i64(self.tokens.clone())?;
        let mask = crate::weights::read_f32(self.mask.clone())?;
        Ok(Self {
            tokens: Tensor::from_data(TensorData::new(ids, [b, l]), device),
            mask: Tensor::from_data(TensorData::new(mask, [b, l]), device),
            pad_left: self.pad_left.clone(),
        })
    }

    /// From per-position scores of every vocabulary entry, `[B, L, V]`, the score of each
    /// position's next token, `[B, L - 1]`: entry i is `per_token[:, i, tokens[:, i + 1]]` (the
    /// log-prob of the sequence's own next token, or a vocabulary-wide value head's value of
    /// it). `L ≥ 2`.
    pub fn at_next_tokens(&self, per_token: Tensor<3>) -> Tensor<2> {
        let [b, l] = self.tokens.dims();
        let next = self
            .tokens
            .clone()
            .narrow(1, 1, l - 1)
            .unsqueeze_dim::<3>(2);
        per_token
            .narrow(1, 0, l - 1)
            .gather(2, next)
            .reshape([b, l - 1])
    }

    /// Left-pads `rows` to a common length with `pad_id`.
    pub fn left_padded(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || width == 0 {
            return Err(ModelError::Input(
                "a batch needs at least one row with at least one token".into(),
            ));
        }
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        let mut pad_left = Vec::with_capacity(rows.len());
        for row in rows {
            let pad = width - row.len();
            pad_left.push(pad);
            ids.extend(std::iter::repeat_n(i64::from(pad_id), pad));
            ids.extend(row.iter().map(|&t| i64::from(t)));
            mask.extend(std::iter::repeat_n(0.0f32, pad));
            mask.extend(std::iter::repeat_n(1.0f32, row.len()));
        }
        Ok(Self {
            tokens: Tensor::from_data(TensorData::new(ids, [rows.len(), width]), device),
            mask: Tensor::from_data(TensorData::new(mask, [rows.len(), width]), device),
            pad_left,
        })
    }

    /// One new token per row (a decoding step), all real.
    pub fn step(ids: &[u32], device: &Device) -> Self {
        let v: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        Self {
            tokens: Tensor::from_data(TensorData::new(v, [ids.len(), 1]), device),
            mask: Tensor::ones([ids.len(), 1], device),
            pad_left: vec![0; ids.len()],
        }
    }
}

impl CausalLm {
    /// Builds the architecture `config` names, with parameters from `src`.
    pub fn init(config: &ModelConfig, src: &mut dyn WeightSource, device: &Device) -> Result<Self> {
        config.validate()?;
        Ok(match config {
            ModelConfig::Gpt2(c) => Self::Gpt2(Gpt2::init(c, src, device)?),
            ModelConfig::Llama(c, flavor) => Self::Llama(Llama::init(c, *flavor, src, device)?),
        })
    }

    /// A randomly initialised model; the weights depend only on `seed`, not on the device.
    pub fn random(config: &ModelConfig, seed: Seed, device: &Device) -> Result<Self> {
        Self::init(config, &mut RandomInit::new(seed.stream("init")), device)
    }

    /// The model's config.
    pub fn config(&self) -> ModelConfig {
        match self {
            Self::Gpt2(m) => ModelConfig::Gpt2(m.config().clone()),
            Self::Llama(m) => {
                let (c, f) = m.config();
                ModelConfig::Llama(c.clone(), f)
            }
        }
    }

    /// An empty cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config().n_layers())
    }

    /// Hidden states `[B, L, d]` of the new tokens; appends them to `cache`.
    pub fn forward_hidden(&self, batch: &TokenBatch, cache: &mut KvCache) -> Tensor<3> {
        let (t, m) = (batch.tokens.clone(), batch.mask.clone());
        match self {
            Self::Gpt2(g) => g.forward_hidden(t, m, cache),
            Self::Llama(l) => l.forward_hidden(t, m, cache),
        }
    }

    /// Output-head weight, `[vocab, d]`.
    pub fn head_weight(&self) -> Tensor<2> {
        match self {
            Self::Gpt2(g) => g.head_weight(),
            Self::Llama(l) => l.head_weight(),
        }
    }

    /// Logits `[B, L, vocab]` from hidden states `[B, L, d]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [b, l, d] = hidden.dims();
        let w = self.head_weight();
        let [v, _] = w.dims();
        crate::layers::matmul_head(hidden.reshape([b * l, d]), w).reshape([b, l, v])
    }

    /// Next-token log-probs at every new position, `[B, L, vocab]`; appends to `cache`.
    pub fn forward(&self, batch: &TokenBatch, cache: &mut KvCache) -> Tensor<3> {
        log_softmax(self.logits(self.forward_hidden(batch, cache)), 2)
    }

    /// Next-token log-probs after the last new position, `[B, vocab]`; appends to `cache`.
    /// Only the last position goes through the output head.
    pub fn next_token_logprobs(&self, batch: &TokenBatch, cache: &mut KvCache) -> Tensor<2> {
        let hidden = self.forward_hidden(batch, cache);
        let [b, l, _] = hidden.dims();
        let logits = self.logits(hidden.narrow(1, l - 1, 1));
        let [_, _, v] = logits.dims();
        log_softmax(logits.reshape([b, v]), 1)
    }

    /// Checks that `len` positions fit the context and every id fits the vocabulary.
    pub fn check_ids(&self, ids: &[u32], len: usize) -> Result<()> {
        let c = self.config();
        if len > c.max_positions() {
            return Err(ModelError::ContextOverflow {
                len,
                max: c.max_positions(),
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= c.vocab_size()) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: c.vocab_size(),
            });
        }
        Ok(())
    }

    /// For each row, `log p(row[i + 1] | row[..=i])` for every `i`: the per-token log-probs
    /// used for scoring and KL. The rows are split into [`crate::training::optim::SHARDS`] contiguous
    /// batches, each left-padded with `pad_id` (on the CPU, one per core).
    pub fn sequence_logprobs(
        &self,
        rows: &[Vec<u32>],
        pad_id: u32,
        device: &Device,
    ) -> Result<Vec<Vec<f32>>> {
        for row in rows {
            self.check_ids(row, row.len())?;
        }
        let shards = crate::training::optim::SHARDS.min(rows.len()).max(1);
        let parts = infalign_core::run_on_workers(device, shards, |s| {
            let (lo, hi) = crate::training::optim::shard_rows(rows.len(), shards, s);
            self.batch_logprobs(&rows[lo..hi], pad_id, device)
        })?;
        Ok(parts.concat())
    }

    /// `log p(completion | prompt)` of a row from its per-position log-probs as
    /// [`CausalLm::sequence_logprobs`] returns them: the sum from the prediction of the first
    /// completion token (position `prompt_len − 1`) on, in f64.
    pub fn completion_logprob(per_position: &[f32], prompt_len: usize) -> f64 {
        per_position[prompt_len.saturating_sub(1).min(per_position.len())..]
            .iter()
            .map(|&x| f64::from(x))
            .sum()
    }

    /// [`CausalLm::sequence_logprobs`] of rows left-padded into one batch.
    fn batch_logprobs(
        &self,
        rows: &[Vec<u32>],
        pad_id: u32,
        device: &Device,
    ) -> Result<Vec<Vec<f32>>> {
        let batch = TokenBatch::left_padded(rows, pad_id, device)?;
        let [b, l] = batch.tokens.dims();
        if l < 2 {
            return Ok(vec![Vec::new(); b]);
        }
        let picked = batch.at_next_tokens(self.forward(&batch, &mut self.new_cache()));
        let flat = read_f32(picked)?;
        Ok(rows
            .iter()
            .zip(batch.pad_left.iter())
            .enumerate()
            .map(|(r, (row, &pad))| {
                let start = r * (l - 1) + pad;
                flat[start..start + row.len().saturating_sub(1)].to_vec()
            })
            .collect())
    }

    /// Mean next-token cross-entropy over the positions whose input and target are both real
    /// tokens (the pretraining and SFT loss), as a one-element tensor for `backward`.
    pub fn next_token_loss(&self, batch: &TokenBatch) -> Tensor<1> {
        let [_, l] = batch.tokens.dims();
        let picked = batch.at_next_tokens(self.forward(batch, &mut self.new_cache()));
        let weight =
            batch.mask.clone().narrow(1, 0, l - 1) * batch.mask.clone().narrow(1, 1, l - 1);
        let total = weight.clone().sum();
        (picked * weight).sum().neg() / total.clamp_min(1.0)
    }

    /// Every parameter under its Hugging Face name and layout.
    pub fn export(&self) -> Result<Exporter> {
        let mut out = Exporter::default();
        match self {
            Self::Gpt2(g) => g.export(&mut out)?,
            Self::Llama(l) => l.export(&mut out)?,
        }
        Ok(out)
    }
}
