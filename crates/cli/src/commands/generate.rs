//! `infalign generate`: sample completions of prompts.

use std::path::PathBuf;

use anyhow::Result;
use infalign_core::{Device, Seed};
use infalign_decoding::{GenerationConfig, Generator};

use super::common::DecodeInputs;

/// Flags of `infalign generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub input: DecodeInputs,
    /// Always take the most likely token.
    #[arg(long)]
    pub greedy: bool,
    /// Completions per prompt (`--n` is an older spelling).
    #[arg(long = "samples", alias = "n", default_value_t = 1)]
    pub n: usize,
    /// Write samples as JSONL here instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    if let Some(out) = &a.out {
        super::common::refuse_output_over_input(
            "--out",
            out,
            &[("--prompts", a.input.prompts.prompts.as_deref())],
        )?;
    }
    let prompts = a.input.prompts.collect()?;
    let lm = a.input.model.load(device)?;
    let cfg = GenerationConfig {
        max_new_tokens: a.input.sampling.max_new_tokens,
        n: a.n,
        sampling: a.input.sampling.sampling(a.greedy),
        stop: a.input.sampling.stop.clone(),
        prompt_batch: a.input.sampling.batch,
        max_rows: 0,
    };
    let samples = Generator::new(&lm, device.clone()).generate(
        &prompts,
        &cfg,
        Seed(a.input.sampling.seed),
    )?;
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
