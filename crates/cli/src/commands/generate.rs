//! `infalign generate`: sample completions of prompts.

use std::path::PathBuf;

use anyhow::{Result, bail};
use infalign_core::{Device, Seed};
use infalign_decoding::{GenerationConfig, Generator, SamplingConfig};
use serde::Deserialize;

/// Flags of `infalign generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory (config.json, model.safetensors, tokenizer.json); default: the shipped one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A prompt (repeatable).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// JSONL file of `{"prompt": ...}` rows.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Always take the most likely token.
    #[arg(long)]
    pub greedy: bool,
    /// New tokens per completion at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Completions per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Prompts prefilled together.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Seed of all randomness.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write samples as JSONL here instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PromptRow {
    prompt: String,
}

/// Reads `--prompt` and `--prompts` into one list.
pub fn collect_prompts(inline: &[String], file: Option<&PathBuf>) -> Result<Vec<String>> {
    let mut prompts = inline.to_vec();
    if let Some(path) = file {
        let rows: Vec<PromptRow> = infalign_core::io::read_jsonl(path)?;
        prompts.extend(rows.into_iter().map(|r| r.prompt));
    }
    if prompts.is_empty() {
        bail!("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE.jsonl");
    }
    Ok(prompts)
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let prompts = collect_prompts(&a.prompt, a.prompts.as_ref())?;
    let lm = crate::load_model(a.model, device)?;
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        n: a.n,
        sampling: SamplingConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            greedy: a.greedy,
        },
        stop: a.stop,
        prompt_batch: a.batch,
    };
    let samples = Generator::new(&lm, device.clone()).generate(&prompts, &cfg, Seed(a.seed))?;
    match a.out {
        Some(path) => {
            let rows: Vec<serde_json::Value> = samples
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "prompt": s.prompt,
                        "completion": s.completion,
                        "tokens": s.tokens,
                        "finish": s.finish,
                        "logprob": s.policy_logprob(),
                        "base_logprob": s.base_logprob(),
                    })
                })
                .collect();
            infalign_core::io::write_jsonl_atomic(&path, &rows)?;
            eprintln!("wrote {} samples to {}", rows.len(), path.display());
        }
        None => {
            for s in &samples {
                println!("{}{}", s.prompt, s.completion);
                println!("---");
            }
        }
    }
    Ok(())
}
