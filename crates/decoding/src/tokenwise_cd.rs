//! Tokenwise controlled decoding (Mudgal et al. 2024, eq. 6; docs/ALGORITHMS.md A.5.1):
//! `π_θ(z | [x, y^t]) ∝ π_ref(z | [x, y^t]) · exp(λ · V_θ([x, y^t, z]))`, the unique maximiser of
//! the tokenwise KL-regularised objective (Theorem 2.1). In log space: `log p + λ V`, then
//! normalise and sample.
//!
//! By default every token of the vocabulary is scored, as in the paper. `top_k` restricts the
//! candidates to the base model's k most likely tokens before adding `λ V` (a common
//! engineering shortcut of reimplementations, **not the paper's**: it renormalises over the kept
//! set and so changes the target distribution). A scalar scorer (V of one prefix per forward
//! pass) needs that restriction: each step it runs one look-ahead pass over the k candidates of
//! every row, on a copy of its cache.
//!
//! Invariants: λ = 0 reproduces base sampling token for token under the same seed (the base
//! log-probs are used untouched); sampling flags (temperature, top-k/top-p of the sampler) apply
//! to the CD distribution.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use infalign_core::Seed;

use crate::generate::{GenerationConfig, Generator, Steer};
use crate::scorer_mix::ScorerMix;
use crate::strategy::DecodingStrategy;
use crate::{DecodingError, Sample};

/// Tokenwise CD over a (possibly multi-objective) prefix scorer.
#[derive(Debug)]
pub struct TokenwiseCd<'a> {
    /// Strength λ of the value term (1/λ plays the role of RLHF's β).
    pub lambda: f32,
    /// Restrict to the base model's top-k tokens (not the paper's; `None` scores all).
    pub top_k: Option<usize>,
    /// The scorers.
    pub mix: ScorerMix<'a>,
    /// With scalar scorers: this step's candidate tokens and their values, per row.
    candidates: Vec<(Vec<u32>, Vec<f32>)>,
}

/// The `k` most likely tokens of `logp`, most likely first (ties: lowest id first); a
/// selection, not a sort of the whole vocabulary.
fn top_k_ids(logp: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(logp.len());
    let cmp = |a: &usize, b: &usize| logp[*b].total_cmp(&logp[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..logp.len()).collect();
    if k == 0 {
        return Vec::new();
    }
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, cmp);
        order.truncate(k);
    }
    order.sort_by(cmp);
    order.into_iter().map(|i| i as u32).collect()
}

/// Log-softmax in place.
fn normalise(mut logits: Vec<f32>) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|&x| f64::from(x - m).exp())
        .sum::<f64>()
        .ln() as f32;
    logits.iter_mut().for_each(|x| *x -= lse);
    logits
}

impl DecodingStrategy for TokenwiseCd<'_> {
    /// Decodes `cfg.n` samples of every prompt.
    fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        generator.generate_steered(prompts, cfg, seed, Some(self))
    }
}

impl<'a> TokenwiseCd<'a> {
    /// Tokenwise CD with strength `lambda` over `mix`; the scorers must be vocabulary-wide.
    pub fn new(
        lambda: f32,
        top_k: Option<usize>,
        mix: ScorerMix<'a>,
    ) -> Result<Self, DecodingError> {
        crate::strategy::finite("lambda", f64::from(lambda))?;
        if !mix.is_vocab_wide() && top_k.is_none() {
            return Err(DecodingError::InvalidParameter {
                field: "scorer",
                message: "tokenwise CD with a scalar scorer needs a candidate restriction \
                          (--cd-top-k K): it runs the scorer on K candidate tokens per step"
                    .into(),
            });
        }
        top_k.map_or(Ok(()), |k| crate::strategy::at_least_one("cd-top-k", k))?;
        Ok(Self {
            lambda,
            top_k,
            mix,
            candidates: Vec::new(),
        })
    }

    /// The CD log-probs of one row given the base log-probs.
    pub fn cd_logprobs(&self, base_logp: &[f32], values: &[f32]) -> Vec<f32> {
        match self.top_k {
            None => normalise(
                base_logp
                    .iter()
                    .zip(values)
                    .map(|(&l, &v)| l + self.lambda * v)
                    .collect(),
            ),
            Some(k) => {
                let ids = top_k_ids(base_logp, k);
                let v: Vec<f32> = ids.iter().map(|&z| values[z as usize]).collect();
                self.on_candidates(base_logp, &ids, &v)
            }
        }
    }

    /// CD log-probs restricted to the candidates `ids`, whose values are `values`.
    fn on_candidates(&self, base_logp: &[f32], ids: &[u32], values: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NEG_INFINITY; base_logp.len()];
        for (&z, &v) in ids.iter().zip(values) {
            out[z as usize] = base_logp[z as usize] + self.lambda * v;
        }
        normalise(out)
    }
}

impl Steer for TokenwiseCd<'_> {
    fn prefill(
        &mut self,
        ids: &[Vec<u32>],
        repeat: usize,
        pad_id: u32,
    ) -> Result<(), DecodingError> {
        self.mix.prefill(ids, repeat, pad_id)
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<(), DecodingError> {
        self.mix.feed(tokens)
    }

    fn prepare(&mut self, base_logp: &[f32], vocab: usize) -> Result<(), DecodingError> {
        if self.mix.is_vocab_wide() {
            return Ok(());
        }
        // `new` refuses a scalar scorer without one, but `top_k` is a public field.
        let k = self.top_k.ok_or_else(|| DecodingError::InvalidParameter {
            field: "cd-top-k",
            message: "tokenwise CD with a scalar scorer needs a candidate restriction".into(),
        })?;
        let ids: Vec<Vec<u32>> = base_logp.chunks(vocab).map(|r| top_k_ids(r, k)).collect();
        let values = self.mix.candidate_values(&ids)?;
        self.candidates = ids.into_iter().zip(values).collect();
        Ok(())
    }

    fn adjust(&self, row: usize, base_logp: &[f32]) -> Result<Vec<f32>, DecodingError> {
        if self.lambda == 0.0 && self.top_k.is_none() {
            return Ok(base_logp.to_vec());
        }
        if self.mix.is_vocab_wide() {
            return Ok(self.cd_logprobs(base_logp, &self.mix.next_values(row)?));
        }
        // Scalar scorers: the candidates and values `prepare` found for this step.
        let (ids, values) = &self.candidates[row];
        Ok(self.on_candidates(base_logp, ids, values))
    }

    fn select(&mut self, keep: &[usize]) {
        self.mix.select(keep);
    }

    /// On the device: vocabulary-wide scorers without a candidate restriction (the paper's
    /// tokenwise CD); a top-k restriction or scalar scorers adjust on the host.
    fn use_device(&mut self, yes: bool) -> bool {
        let able = self.top_k.is_none() && self.mix.is_vocab_wide();
        self.mix.keep_values_on_device(yes && able);
        yes && able
    }

    /// `log_softmax(log p + λ Σ_i w_i V_i)` over every row at once: [`TokenwiseCd::cd_logprobs`]
    /// on the device (λ = 0 returns the base log-probs themselves, as on the host).
    fn adjust_on_device(&self, base_logp: Tensor<2>) -> Result<Tensor<2>, DecodingError> {
        if self.lambda == 0.0 {
            return Ok(base_logp);
        }
        let values = self.mix.next_values_on_device()?;
        Ok(log_softmax(base_logp + values * self.lambda, 1))
    }
}
