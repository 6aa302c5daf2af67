//! The prefix scorer of Controlled Decoding (Mudgal et al. 2024, §3; docs/ALGORITHMS.md A.4): a
//! language-model backbone (initialised from the base model) with a value head.
//!
//! Two layouts behind one type:
//! - [`ScorerLayout::VocabWide`]: the head maps the hidden state after a prefix to a vector over
//!   the vocabulary, `head(h_t)[z] ≈ V([x, y^t, z])`: one forward pass gives the value of every
//!   next token (what tokenwise CD and the CD-Q target need). The value of a prefix ending in
//!   token `y_t` is read at the previous position: `V([x, y^t]) = head(h_{t-1})[y_t]`.
//! - [`ScorerLayout::Scalar`]: the head maps `h_t` to `V([x, y^t])` directly; scoring all next
//!   tokens then costs one pass per candidate.
//!
//! Invariants: the head starts at zero, so a fresh scorer values everything at 0 and tokenwise
//! CD with it reproduces the base model; a scorer directory is a model directory (the backbone,
//! loadable by transformers) plus `value_head.safetensors` and `scorer.json`.

use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::cache::KvCache;
use crate::checkpoint::{LoadedModel, save_model_dir};
use crate::lm::{CausalLm, TokenBatch};
use crate::tokenizer::Tokenizer;
use crate::weights::{Exporter, HfLayout, Init, SafetensorsSource, WeightSource, linear};
use crate::{ModelError, Result};

/// File of the value head inside a scorer directory.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";
/// File describing the scorer inside a scorer directory.
pub const SCORER_FILE: &str = "scorer.json";

/// How the value head is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScorerLayout {
    /// `V(prefix + z)` for every next token z in one pass (CD-Q's layout).
    #[default]
    VocabWide,
    /// `V(prefix)` only.
    Scalar,
}

/// What `scorer.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerInfo {
    /// The head's layout.
    pub layout: ScorerLayout,
    /// What the scorer was trained for (free text: method, reward, transform).
    #[serde(default)]
    pub trained_for: String,
}

/// A backbone plus a value head.
#[derive(Module, Debug)]
pub struct PrefixScorer {
    backbone: CausalLm,
    head: Linear,
    #[module(skip)]
    layout: ScorerLayout,
}

/// A fresh head: zero weights, every bias entry `prior`, so that every value starts at `prior`.
struct ConstantHead {
    prior: f32,
}

impl WeightSource for ConstantHead {
    fn take(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        let fill = if name.ends_with(".bias") {
            self.prior
        } else {
            0.0
        };
        Ok(vec![fill; shape.iter().product()])
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
}

impl PrefixScorer {
    /// A scorer whose backbone is a copy of `base` and whose head is zero.
    pub fn from_base(base: CausalLm, layout: ScorerLayout, device: &Device) -> Result<Self> {
        Self::from_base_with_prior(base, layout, 0.0, device)
    }

    /// A scorer whose backbone is a copy of `base` and whose every value starts at `prior` (zero
    /// head weights, bias `prior`). A constant cancels in tokenwise CD's softmax and in
    /// blockwise CD's argmax, so a fresh scorer decodes as the base model whatever `prior` is.
    ///
    /// With a vocabulary-wide head the choice still matters after training: the row of a token
    /// that never follows a prefix in the training rollouts gets no gradient and keeps `prior`,
    /// CD-Q's bootstrap target `Σ_z π_ref(z) V(prefix + z)` averages such rows in, and a rollout
    /// cut at the token budget is valued through the row of its last token, which few rollouts
    /// train. Measured (held-out pairwise accuracy, CD-Q, 300 steps): on the calibrated
    /// sentiment reward, 0.467 with `prior` 0 against 0.521 with the mean reward (both near
    /// chance, 1,779 pairs); on the length reward `ln(T/32)`, 0.970 with 0 (the reward of a
    /// completion that reaches the budget) against 0.803 with the mean, and blockwise CD's win
    /// rate 0.674 against 0.540. On the calibrated length reward, 0.49–0.56 with 0, 0.79–0.82
    /// with the mean and 0.88–0.94 with its maximum 1: a start at the largest reward (an
    /// optimistic one) is what lets such a scorer learn.
    pub fn from_base_with_prior(
        base: CausalLm,
        layout: ScorerLayout,
        prior: f32,
        device: &Device,
    ) -> Result<Self> {
        Self::init(base, layout, &mut ConstantHead { prior }, device)
    }

    /// A scorer over `backbone` whose head (`value_head.weight`, `value_head.bias`) comes from
    /// `head` (for example a seeded `RandomInit` in tests).
    pub fn init(
        base: CausalLm,
        layout: ScorerLayout,
        head: &mut dyn WeightSource,
        device: &Device,
    ) -> Result<Self> {
        let config = base.config();
        let out = match layout {
            ScorerLayout::VocabWide => config.vocab_size(),
            ScorerLayout::Scalar => 1,
        };
        let head = linear(
            head,
            "value_head",
            [config.d_model(), out],
            true,
            HfLayout::Linear,
            0.02,
            device,
        )?;
        Ok(Self {
            backbone: base,
            head,
            layout,
        })
    }

    /// The head's layout.
    pub fn layout(&self) -> ScorerLayout {
        self.layout
    }

    /// The backbone.
    pub fn backbone(&self) -> &CausalLm {
        &self.backbone
    }

    /// An empty cache for the backbone.
    pub fn new_cache(&self) -> KvCache {
        self.backbone.new_cache()
    }

    /// Head outputs at every new position: `[B, L, vocab]` (vocab-wide) or `[B, L, 1]`.
    pub fn forward(&self, batch: &TokenBatch, cache: &mut KvCache) -> Tensor<3> {
        let hidden = self.backbone.forward_hidden(batch, cache);
        crate::layers::linear(&self.head, hidden)
    }

    /// Head output after the last new position, `[B, vocab]` or `[B, 1]`. Only the last
    /// position goes through the head.
    pub fn forward_last(&self, batch: &TokenBatch, cache: &mut KvCache) -> Tensor<2> {
        self.head_outputs(self.last_hidden(batch, cache))
    }

    /// The backbone's hidden state after the last new position, `[B, d]`; appends to `cache`.
    pub fn last_hidden(&self, batch: &TokenBatch, cache: &mut KvCache) -> Tensor<2> {
        let hidden = self.backbone.forward_hidden(batch, cache);
        let [b, l, d] = hidden.dims();
        hidden.narrow(1, l - 1, 1).reshape([b, d])
    }

    /// The head applied to hidden states `[N, d]`: `[N, vocab]` or `[N, 1]`.
    pub fn head_outputs(&self, hidden: Tensor<2>) -> Tensor<2> {
        let [n, d] = hidden.dims();
        let out = crate::layers::linear(&self.head, hidden.reshape([1, n, d]));
        let w = out.dims()[2];
        out.reshape([n, w])
    }

    /// One entry of the vocabulary-wide head per row, `head(h_r)[z_r]` for hidden states
    /// `[N, d]` and tokens `[N]`: `h_r · W[:, z_r] + b[z_r]`, without the rest of the
    /// vocabulary (the value of each row's prefix extended by its token). Equals
    /// `head(hidden)` gathered at `tokens`, up to the order of summation.
    pub fn token_values(&self, hidden: Tensor<2>, tokens: Tensor<1, Int>) -> Tensor<1> {
        let n = hidden.dims()[0];
        let columns = self.head.weight.val().transpose().select(0, tokens.clone());
        let dot = (hidden * columns).sum_dim(1).reshape([n]);
        match &self.head.bias {
            Some(b) => dot + b.val().select(0, tokens),
            None => dot,
        }
    }

    /// `V([x, y^t])` for every prefix ending at each new position from the second one on:
    /// `[B, L - 1]`, entry t being the value of the prefix through `tokens[:, t + 1]`. With the
    /// vocab-wide layout this reads `head(h_t)[y_{t+1}]`; with the scalar layout `head(h_{t+1})`.
    pub fn prefix_values(&self, batch: &TokenBatch, cache: &mut KvCache) -> Tensor<2> {
        let out = self.forward(batch, cache);
        let [b, l, _] = out.dims();
        match self.layout {
            ScorerLayout::VocabWide => batch.at_next_tokens(out),
            ScorerLayout::Scalar => out.narrow(1, 1, l - 1).reshape([b, l - 1]),
        }
    }

    /// Writes the scorer directory: backbone model directory, value head, `scorer.json`.
    pub fn save(
        &self,
        dir: impl AsRef<Path>,
        tokenizer: &Tokenizer,
        trained_for: &str,
    ) -> Result<()> {
        let dir = dir.as_ref();
        save_model_dir(dir, &self.backbone, tokenizer)?;
        let mut out = Exporter::default();
        out.linear("value_head", &self.head, HfLayout::Linear)?;
        out.write_safetensors(dir.join(VALUE_HEAD_FILE))?;
        let info = ScorerInfo {
            layout: self.layout,
            trained_for: trained_for.into(),
        };
        Ok(infalign_core::io::write_json_atomic(
            dir.join(SCORER_FILE),
            &info,
        )?)
    }

    /// Loads a scorer directory; returns the scorer, its tokenizer and its description.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<(Self, Tokenizer, ScorerInfo)> {
        let dir = dir.as_ref();
        let info_path = dir.join(SCORER_FILE);
        let text = infalign_core::io::read_to_string(&info_path)?;
        let info: ScorerInfo = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: info_path.clone(),
            message: e.to_string(),
        })?;
        let lm = LoadedModel::load(dir, device)?;
        let config = lm.model.config();
        let out = match info.layout {
            ScorerLayout::VocabWide => config.vocab_size(),
            ScorerLayout::Scalar => 1,
        };
        let mut src = SafetensorsSource::open(&[dir.join(VALUE_HEAD_FILE)])?;
        let head = linear(
            &mut src,
            "value_head",
            [config.d_model(), out],
            true,
            HfLayout::Linear,
            0.0,
            device,
        )?;
        let scorer = Self {
            backbone: lm.model,
            head,
            layout: info.layout,
        };
        Ok((scorer, lm.tokenizer, info))
    }
}

/// Values the scorer assigns, read back to the host.
pub fn values_to_host(values: Tensor<2>) -> Result<Vec<f32>> {
    crate::weights::read_f32(values)
}

/// A one-row batch of `ids` (helper for scoring single sequences).
pub fn single_row(ids: &[u32], device: &Device) -> TokenBatch {
    let v: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    TokenBatch {
        tokens: Tensor::from_data(TensorData::new(v, [1, ids.len()]), device),
        mask: Tensor::ones([1, ids.len()], device),
        pad_left: vec![0],
    }
}
