//! `infalign pretrain`: next-token pretraining (or fine-tuning with `init_from`) from a TOML
//! config with `--set key=value` overrides.

use std::path::PathBuf;

use anyhow::Result;
use infalign_core::Device;
use infalign_models::training::pretrain::{PretrainConfig, pretrain};

/// Flags of `infalign pretrain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML config (keys of `PretrainConfig`); defaults train the shipped corpus.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set steps=2000 --set lr=1e-3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue from `out_dir/checkpoint`.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start over in an `out_dir` that already holds files (its checkpoint is removed first);
    /// without it, or `--resume`, such a directory is refused.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let mut cfg: PretrainConfig = infalign_core::config::load_config(a.config.as_deref(), &a.set)?;
    // The defaults name the shipped corpus, tokenizer and config as `assets/...`: found from
    // any working directory, as the other commands find the shipped model.
    for path in [
        &mut cfg.train_data,
        &mut cfg.valid_data,
        &mut cfg.tokenizer,
        &mut cfg.model_config,
    ] {
        *path = crate::shipped_asset(path);
    }
    let _claim = super::common::claim_run_dir(&cfg.out_dir, a.resume, a.overwrite)?;
    let progress = super::common::Progress::new(2);
    let summary = pretrain(&cfg, device, a.resume, |r| progress.on_step(r))?;
    drop(progress);
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
