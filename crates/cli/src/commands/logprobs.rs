//! `infalign logprobs`: per-token log-probs of a text, as one JSON object.

use std::path::PathBuf;

use anyhow::{Result, bail};
use infalign_core::Device;

/// Flags of `infalign logprobs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory; default: the shipped one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The text to score (tokenized with no special tokens added).
    #[arg(long)]
    pub text: String,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let lm = crate::load_model(a.model, device)?;
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
