//! Model directories: `config.json` + `model.safetensors` (or sharded, with
//! `model.safetensors.index.json`) + `tokenizer.json`, the layout Hugging Face uses, read and
//! written by the same code for the project's own checkpoints.
//!
//! Invariants: every file is written to a temporary name and renamed; loading checks that the
//! tokenizer's ids fit the model's embedding table before anything runs.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::config::ModelConfig;
use crate::lm::CausalLm;
use crate::tokenizer::Tokenizer;
use crate::weights::SafetensorsSource;
use crate::{ModelError, Result};

/// File names inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// Weights file name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Tokenizer file name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A model with its tokenizer and the ids decoding needs.
#[derive(Debug)]
pub struct LoadedModel {
    /// The network.
    pub model: CausalLm,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Ids that end a sequence (from the config, else the tokenizer).
    pub eos_ids: Vec<u32>,
    /// Id used to left-pad batches.
    pub pad_id: u32,
    /// The directory it came from.
    pub dir: PathBuf,
}

impl LoadedModel {
    /// Loads a model directory onto `device`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::load(dir.join(CONFIG_FILE))?;
        let tokenizer = Tokenizer::from_file(dir.join(TOKENIZER_FILE))?;
        check_vocab(&tokenizer, &config)?;
        let mut src = SafetensorsSource::open_dir(dir)?;
        let model = CausalLm::init(&config, &mut src, device)?;
        let unused = src.unused();
        if let Some(name) = unused
            .iter()
            .find(|name| layer_index(name).is_some_and(|i| i >= config.n_layers()))
        {
            return Err(ModelError::ExtraLayers {
                file: dir.join(WEIGHTS_FILE).display().to_string(),
                name: name.clone(),
                layers: config.n_layers(),
            });
        }
        if !unused.is_empty() {
            tracing::debug!(
                ?unused,
                "tensors in the checkpoint that the model does not use"
            );
        }
        Ok(Self::assemble(model, tokenizer, dir))
    }

    /// Wraps a model and tokenizer already in memory.
    pub fn assemble(model: CausalLm, tokenizer: Tokenizer, dir: &Path) -> Self {
        let mut eos_ids = model.config().eos_token_ids();
        if eos_ids.is_empty() {
            eos_ids.extend(tokenizer.eos_id());
        }
        let pad_id = tokenizer
            .pad_id()
            .or_else(|| eos_ids.first().copied())
            .unwrap_or(0);
        Self {
            model,
            tokenizer,
            eos_ids,
            pad_id,
            dir: dir.to_path_buf(),
        }
    }

    /// Refuses `other` unless it has the same tokenizer (the same vocabulary, added tokens
    /// included): models that exchange token ids (a policy and its base, a scorer and the model
    /// it steers) must mean the same text by them.
    pub fn check_same_tokenizer(&self, other: &LoadedModel) -> Result<()> {
        if self.tokenizer.same_vocab(&other.tokenizer) {
            Ok(())
        } else {
            Err(ModelError::TokenizerMismatch {
                first: self.dir.clone(),
                second: other.dir.clone(),
            })
        }
    }

    /// Writes the directory (each file atomically).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_model_dir(dir, &self.model, &self.tokenizer)
    }
}

/// Writes `config.json`, `model.safetensors` and `tokenizer.json` into `dir`.
pub fn save_model_dir(
    dir: impl AsRef<Path>,
    model: &CausalLm,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir)
        .map_err(|e| ModelError::Core(infalign_core::CoreError::io(dir, e)))?;
    model.export()?.write_safetensors(dir.join(WEIGHTS_FILE))?;
    tokenizer.save(dir.join(TOKENIZER_FILE))?;
    model.config().save(dir.join(CONFIG_FILE))
}

/// The layer a Hugging Face tensor name belongs to: the number after a `h` (GPT-2) or `layers`
/// (Llama) component, as in `transformer.h.3.attn.c_attn.weight`.
fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "h" || w[0] == "layers")
        .and_then(|w| w[1].parse().ok())
}

/// A model may pad its vocabulary beyond its tokenizer's, but not to twice its size: checkpoints
/// round it up to a multiple of 64 or 128 (Qwen2 by 0.2%, Phi-2 by 1.8%), and a tokenizer with
/// fewer than half the model's ids is another model's (500 tokens for 4,096 ids: most sampled
/// ids would have no text).
const MAX_VOCAB_PADDING: f64 = 0.5;

/// The tokenizer's ids must index the model's embedding table, and the model's ids must mostly
/// have text: a tokenizer much smaller than the vocabulary is another model's.
pub fn check_vocab(tokenizer: &Tokenizer, config: &ModelConfig) -> Result<()> {
    let (t, m) = (tokenizer.vocab_size(), config.vocab_size());
    if t > m {
        return Err(ModelError::VocabMismatch {
            tokenizer: t,
            model: m,
        });
    }
    if (t as f64) < (m as f64) * (1.0 - MAX_VOCAB_PADDING) {
        return Err(ModelError::VocabTooSmall {
            tokenizer: t,
            model: m,
        });
    }
    Ok(())
}
