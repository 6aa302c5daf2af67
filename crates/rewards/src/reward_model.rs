//! A learned reward model: a language-model backbone with a scalar head read at the last token
//! of `prompt + completion` (the prefix scorer's scalar layout), trained with the Bradley-Terry
//! pairwise loss (`bradley_terry.rs`). Used for the Anthropic HH and TL;DR reward models of both
//! papers; here for the proxy reward model of the reward-hacking setup.
//!
//! Invariant: a reward-model directory is a scorer directory (`scorer.json` says `scalar`), so
//! the same files load as a [`RewardModel`] or as a blockwise-CD scorer.

use std::path::Path;

use burn::tensor::Device;
use infalign_models::{PrefixScorer, ScorerLayout, TokenBatch, Tokenizer, weights::read_f32};

use crate::RewardError;
use crate::reward::{Reward, RewardInput, finite};

/// What a reward model's scalar head means, recorded in `reward_model.json` beside its
/// weights (absent: a score).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardModelOutput {
    /// A Bradley-Terry score, used as it is.
    #[default]
    Score,
    /// The logit of a calibrated reward: the reward is σ(s) ∈ (0, 1).
    Calibrated,
    /// The logit of a classifier: the reward is its log-probability log σ(s) (CD's
    /// log-probability-of-classifier reward).
    LogProbability,
}

impl std::str::FromStr for RewardModelOutput {
    type Err = RewardError;

    fn from_str(s: &str) -> Result<Self, RewardError> {
        match s {
            "score" => Ok(Self::Score),
            "calibrated" => Ok(Self::Calibrated),
            "log_probability" => Ok(Self::LogProbability),
            other => Err(RewardError::InvalidParameter {
                field: "reward model output",
                message: format!("`{other}`: expected score, calibrated or log_probability"),
            }),
        }
    }
}

/// The file that records a reward model's [`RewardModelOutput`].
pub const REWARD_MODEL_FILE: &str = "reward_model.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct RewardModelInfo {
    output: RewardModelOutput,
}

/// A learned reward model.
#[derive(Debug)]
pub struct RewardModel {
    net: PrefixScorer,
    tokenizer: Tokenizer,
    pad_id: u32,
    device: Device,
    output: RewardModelOutput,
}

impl RewardModel {
    /// Wraps a scalar-head network.
    pub fn new(
        net: PrefixScorer,
        tokenizer: Tokenizer,
        device: Device,
    ) -> Result<Self, RewardError> {
        if net.layout() != ScorerLayout::Scalar {
            return Err(RewardError::InvalidParameter {
                field: "reward model",
                message: "a reward model needs the scalar head layout".into(),
            });
        }
        let pad_id = tokenizer.pad_id().unwrap_or(0);
        Ok(Self {
            net,
            tokenizer,
            pad_id,
            device,
            output: RewardModelOutput::Score,
        })
    }

    /// The same model with its head read as `output`.
    pub fn with_output(mut self, output: RewardModelOutput) -> Self {
        self.output = output;
        self
    }

    /// How the head is read.
    pub fn output(&self) -> RewardModelOutput {
        self.output
    }

    /// Loads a reward-model directory (`reward_model.json`, when present, says how its head
    /// is read).
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self, RewardError> {
        let dir = dir.as_ref();
        let (net, tokenizer, _) = PrefixScorer::load(dir, device).map_err(model_err)?;
        let info = dir.join(REWARD_MODEL_FILE);
        let output = if info.exists() {
            let text = infalign_core::io::read_to_string(&info)?;
            serde_json::from_str::<RewardModelInfo>(&text)
                .map_err(|e| RewardError::InvalidParameter {
                    field: "reward model",
                    message: format!("{}: {e}", info.display()),
                })?
                .output
        } else {
            RewardModelOutput::Score
        };
        Ok(Self::new(net, tokenizer, device.clone())?.with_output(output))
    }

    /// Writes the network, tokenizer and `reward_model.json` into `dir`.
    pub fn save(&self, dir: impl AsRef<Path>, what: &str) -> Result<(), RewardError> {
        let dir = dir.as_ref();
        self.net.save(dir, &self.tokenizer, what)?;
        infalign_core::io::write_json_atomic(
            dir.join(REWARD_MODEL_FILE),
            &RewardModelInfo {
                output: self.output,
            },
        )?;
        Ok(())
    }

    /// Token ids of prompt and completion, concatenated.
    pub fn encode(&self, prompt: &str, completion: &str) -> Result<Vec<u32>, RewardError> {
        let mut ids = self.tokenizer.encode(prompt).map_err(model_err)?;
        ids.extend(self.tokenizer.encode(completion).map_err(model_err)?);
        if ids.is_empty() {
            ids.push(self.pad_id);
        }
        Ok(ids)
    }

    /// Scores of already-encoded sequences.
    pub fn score_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<f64>, RewardError> {
        let batch = TokenBatch::left_padded(rows, self.pad_id, &self.device).map_err(model_err)?;
        let out = read_f32(self.net.forward_last(&batch, &mut self.net.new_cache()))
            .map_err(model_err)?;
        out.into_iter()
            .map(|x| {
                let s = f64::from(x);
                finite(
                    "reward model",
                    match self.output {
                        RewardModelOutput::Score => s,
                        RewardModelOutput::Calibrated => 1.0 / (1.0 + (-s).exp()),
                        // log σ(s) = −softplus(−s), stable for large |s|.
                        RewardModelOutput::LogProbability => {
                            -((-s).max(0.0) + (-s.abs()).exp().ln_1p())
                        }
                    },
                )
            })
            .collect()
    }

    /// The network (for training).
    pub fn net(&self) -> &PrefixScorer {
        &self.net
    }
}

pub(crate) fn model_err(e: infalign_models::ModelError) -> RewardError {
    RewardError::InvalidParameter {
        field: "reward model",
        message: e.to_string(),
    }
}

impl Reward for RewardModel {
    fn name(&self) -> String {
        "reward_model".into()
    }

    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        Ok(self.score_batch(std::slice::from_ref(input))?[0])
    }

    fn score_batch(&self, inputs: &[RewardInput<'_>]) -> Result<Vec<f64>, RewardError> {
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(32) {
            let rows = chunk
                .iter()
                .map(|i| self.encode(i.prompt, i.completion))
                .collect::<Result<Vec<_>, _>>()?;
            out.extend(self.score_ids(&rows)?);
        }
        Ok(out)
    }
}
