//! One generated completion and everything later stages need to know about it.

use serde::{Deserialize, Serialize};

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model emitted an end-of-sequence token (kept as the last token).
    Eos,
    /// The token budget ran out (truncation).
    Length,
    /// A stop string appeared in the text.
    Stop,
}

/// A completion of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The prompt text.
    pub prompt: String,
    /// Index of the prompt in the request.
    pub prompt_index: usize,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// Generated token ids, including the final EOS when `finish` is `Eos`.
    pub tokens: Vec<u32>,
    /// Decoded completion (special tokens skipped; cut before a stop string).
    pub completion: String,
    /// How it ended.
    pub finish: Finish,
    /// Index in `tokens` of the terminal token (EOS, or the last token on truncation).
    pub terminal_index: Option<usize>,
    /// Per-token log-probs under the policy that drew them (after temperature/top-k/top-p).
    pub policy_logprobs: Vec<f32>,
    /// Per-token log-probs under the unprocessed base model.
    pub base_logprobs: Vec<f32>,
    /// Per step, the exact KL(π(· | prefix) ‖ π_ref(· | prefix)) between the distribution the
    /// token was drawn from and the base model's (zero for plain sampling with temperature 1
    /// and no top-k/top-p); empty when no tokenwise distribution drew the completion
    /// (best-of-N, blockwise CD: use their bounds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_kl: Vec<f32>,
    /// The reward a strategy scored it with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
}

impl Sample {
    /// Sum of policy log-probs: `log π(y | x)`.
    pub fn policy_logprob(&self) -> f64 {
        self.policy_logprobs.iter().map(|&x| f64::from(x)).sum()
    }

    /// The exact per-token KL summed along this path, `Σ_t KL(π(· | y<t) ‖ π_ref(· | y<t))`:
    /// its mean over samples is an unbiased, low-variance estimate of the sequence KL
    /// (docs/ALGORITHMS.md A.6). `None` when the strategy records no per-step distributions.
    pub fn path_kl(&self) -> Option<f64> {
        if self.step_kl.len() != self.tokens.len() {
            return None;
        }
        Some(self.step_kl.iter().map(|&x| f64::from(x)).sum())
    }

    /// Sum of base log-probs: `log π_ref(y | x)`.
    pub fn base_logprob(&self) -> f64 {
        self.base_logprobs.iter().map(|&x| f64::from(x)).sum()
    }

    /// What a reward reads of this sample.
    pub fn reward_input(&self) -> infalign_rewards::RewardInput<'_> {
        infalign_rewards::RewardInput {
            prompt: &self.prompt,
            completion: &self.completion,
            tokens: self.tokens.len(),
            ids: &self.tokens,
        }
    }
}

/// Sequences scored per forward pass in [`completion_logprobs`]: bounds its memory (the
/// log-softmax is rows × length × vocabulary) whatever the number of samples.
const SCORE_ROWS: usize = 64;

/// `log π(y | x)` of each sample's completion under `lm`, a model other than the one that
/// decoded it (the reference of a KL, or a policy a decoder steered). The prompt ids must be
/// `lm`'s: the models share a tokenizer.
pub fn completion_logprobs(
    lm: &infalign_models::LoadedModel,
    samples: &[Sample],
    device: &infalign_core::Device,
) -> Result<Vec<f64>, crate::DecodingError> {
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(SCORE_ROWS) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|s| s.prompt_ids.iter().chain(&s.tokens).copied().collect())
            .collect();
        let lp = lm.model.sequence_logprobs(&rows, lm.pad_id, device)?;
        out.extend(
            chunk
                .iter()
                .zip(&lp)
                .map(|(s, r)| infalign_models::CausalLm::completion_logprob(r, s.prompt_ids.len())),
        );
    }
    Ok(out)
}
