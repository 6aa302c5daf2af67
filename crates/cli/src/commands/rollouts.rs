//! `infalign rollouts`: K base-policy samples per prompt, each scored by a reward: the
//! reference set for calibration and the data for prefix-scorer training.

use std::path::PathBuf;

use anyhow::Result;
use infalign_core::{Device, Seed};
use infalign_decoding::{GenerationConfig, Generator, SamplingConfig};
use infalign_rewards::reward_from_spec;

use super::common::PromptArgs;

/// Flags of `infalign rollouts`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::common::ModelArgs,
    #[command(flatten)]
    pub prompts: PromptArgs,
    /// Samples per prompt (`--k` is an older spelling).
    #[arg(long = "samples", alias = "k", default_value_t = 16)]
    pub k: usize,
    /// Reward spec (e.g. `sentiment`, `length(t_max=64)`).
    #[arg(long)]
    pub reward: String,
    /// New tokens per sample at most.
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Prompts prefilled together.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output JSONL.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    super::common::refuse_output_over_input(
        "--out",
        &a.out,
        &[("--prompts", a.prompts.prompts.as_deref())],
    )?;
    let prompts = a.prompts.collect()?;
    let reward = reward_from_spec(&a.reward)?;
    let lm = a.model.load(device)?;
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        n: a.k,
        sampling: SamplingConfig::default(),
        stop: Vec::new(),
        prompt_batch: a.batch,
        max_rows: 0,
    };
    let samples = Generator::new(&lm, device.clone()).generate(&prompts, &cfg, Seed(a.seed))?;
    let mut rows = Vec::with_capacity(samples.len());
    for s in &samples {
        let r = reward.score(&s.reward_input())?;
        rows.push(serde_json::json!({
            "prompt": s.prompt, "completion": s.completion, "reward": r, "tokens": s.tokens,
            "finish": s.finish, "logprob": s.policy_logprob(),
        }));
    }
    infalign_core::io::write_jsonl_atomic(&a.out, &rows)?;
    eprintln!(
        "wrote {} rollouts ({} per prompt) to {}",
        rows.len(),
        a.k,
        a.out.display()
    );
    Ok(())
}
