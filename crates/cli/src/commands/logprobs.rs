//! `infalign logprobs`: per-token log-probs of a text, as one JSON object.

use anyhow::{Result, bail};
use infalign_core::Device;

/// Flags of `infalign logprobs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::common::ModelArgs,
    /// The text to score (tokenized with no special tokens added).
    #[arg(long)]
    pub text: String,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let lm = a.model.load(device)?;
    let ids = lm.tokenizer.encode(&a.text)?;
    if ids.is_empty() {
        bail!("--text encodes to no tokens");
    }
    let logprobs = lm
        .model
        .sequence_logprobs(std::slice::from_ref(&ids), lm.pad_id, device)?
        .remove(0);
    let out = serde_json::json!({ "token_ids": ids, "token_logprobs": logprobs });
    println!("{out}");
    Ok(())
}
