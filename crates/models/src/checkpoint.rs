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

/// The tokenizer's ids must index the model's embedding table.
pub fn check_vocab(tokenizer: &Tokenizer, config: &ModelConfig) -> Result<()> {
    if tokenizer.vocab_size() > config.vocab_size() {
        return Err(ModelError::VocabMismatch {
            tokenizer: tokenizer.vocab_size(),
            model: config.vocab_size(),
        });
    }
    Ok(())
}
