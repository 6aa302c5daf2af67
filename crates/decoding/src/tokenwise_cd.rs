//! Tokenwise controlled decoding (Mudgal et al. 2024, eq. 6; ALGORITHMS.md A.5.1):
//! `π_θ(z | [x, y^t]) ∝ π_ref(z | [x, y^t]) · exp(λ · V_θ([x, y^t, z]))`, the unique maximiser of
//! the tokenwise KL-regularised objective (Theorem 2.1). In log space: `log p + λ V`, then
//! normalise and sample.
//!
//! By default every token of the vocabulary is scored, as in the paper. `top_k` restricts the
//! candidates to the base model's k most likely tokens before adding `λ V` (a common
//! engineering shortcut of reimplementations, **not the paper's**: it renormalises over the kept
//! set and so changes the target distribution).
//!
//! Invariants: λ = 0 reproduces base sampling token for token under the same seed (the base
//! log-probs are used untouched); sampling flags (temperature, top-k/top-p of the sampler) apply
//! to the CD distribution.

use infalign_core::Seed;

use crate::generate::{GenerationConfig, Generator, Steer};
use crate::scorer_mix::ScorerMix;
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
}

impl<'a> TokenwiseCd<'a> {
    /// Tokenwise CD with strength `lambda` over `mix`; the scorers must be vocabulary-wide.
    pub fn new(
        lambda: f32,
        top_k: Option<usize>,
        mix: ScorerMix<'a>,
    ) -> Result<Self, DecodingError> {
        if !lambda.is_finite() {
            return Err(DecodingError::InvalidParameter {
                field: "lambda",
                message: format!("{lambda} is not finite"),
            });
        }
        if !mix.is_vocab_wide() {
            return Err(DecodingError::InvalidParameter {
                field: "scorer",
                message: "tokenwise CD needs vocabulary-wide scorers (scalar scorers work with \
                          blockwise CD)"
                    .into(),
            });
        }
        if top_k == Some(0) {
            return Err(DecodingError::InvalidParameter {
                field: "cd-top-k",
                message: "must be at least 1".into(),
            });
        }
        Ok(Self { lambda, top_k, mix })
    }

    /// Decodes `cfg.n` samples of every prompt.
    pub fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        generator.generate_steered(prompts, cfg, seed, Some(self))
    }

    /// The CD log-probs of one row given the base log-probs.
    pub fn cd_logprobs(&self, base_logp: &[f32], values: &[f32]) -> Vec<f32> {
        let mut out: Vec<f32> = match self.top_k {
            None => base_logp
                .iter()
                .zip(values)
                .map(|(&l, &v)| l + self.lambda * v)
                .collect(),
            Some(k) => {
                let mut order: Vec<usize> = (0..base_logp.len()).collect();
                order.sort_by(|&a, &b| base_logp[b].total_cmp(&base_logp[a]).then(a.cmp(&b)));
                let mut out = vec![f32::NEG_INFINITY; base_logp.len()];
                for &i in order.iter().take(k) {
                    out[i] = base_logp[i] + self.lambda * values[i];
                }
                out
            }
        };
        let m = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + out
            .iter()
            .map(|&x| f64::from(x - m).exp())
            .sum::<f64>()
            .ln() as f32;
        out.iter_mut().for_each(|x| *x -= lse);
        out
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

    fn adjust(&self, row: usize, base_logp: &[f32]) -> Vec<f32> {
        if self.lambda == 0.0 && self.top_k.is_none() {
            return base_logp.to_vec();
        }
        self.cd_logprobs(base_logp, &self.mix.next_values(row))
    }
}
