//! `infalign init`: a randomly initialised model directory from a config and a tokenizer.

use std::path::PathBuf;

use anyhow::Result;
use infalign_core::{Device, Seed};
use infalign_models::weights::RandomInit;
use infalign_models::{CausalLm, ModelConfig, Tokenizer, check_vocab, save_model_dir};

/// Flags of `infalign init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face style config.json (model_type gpt2, llama or qwen2).
    #[arg(long)]
    pub config: PathBuf,
    /// tokenizer.json to pair with the model.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory (refused if it already holds files, unless `--overwrite`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` entirely if it already holds files.
    #[arg(long)]
    pub overwrite: bool,
    /// Initialisation seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multiplies the standard deviation of every normal initialiser (1 = GPT-2's 0.02).
    #[arg(long, default_value_t = 1.0)]
    pub init_scale: f32,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    if !a.overwrite && std::fs::read_dir(&a.out).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!(
            "{} already holds files: pass --overwrite to replace it with the new model",
            a.out.display()
        );
    }
    let config = ModelConfig::load(&a.config)?;
    let tokenizer = Tokenizer::from_file(&a.tokenizer)?;
    check_vocab(&tokenizer, &config)?;
    let mut src = RandomInit::with_scale(Seed(a.seed).stream("init"), a.init_scale);
    let model = CausalLm::init(&config, &mut src, device)?;
    // Whole or absent: the directory is written beside `--out` and renamed into place.
    infalign_core::io::write_dir_atomic(&a.out, |dir| save_model_dir(dir, &model, &tokenizer))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
