//! The `infalign` binary: one subcommand per stage of the pipeline.

mod commands;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use infalign_core::{Device, DeviceSpec};

/// Inference-aware alignment and controlled decoding of language models.
#[derive(Debug, Parser)]
#[command(name = "infalign", version, about)]
struct Cli {
    /// Compute device: cpu (default), ndarray, wgpu, cuda, cuda:N. Checked for every command,
    /// also those that compute on no device: a typo is an error, not ignored.
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceSpec,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample completions of prompts.
    Generate(commands::generate::Args),
    /// Decode with a strategy: sampling, best/worst/soft best-of-N, tokenwise or blockwise CD.
    Decode(commands::decode::Args),
    /// Per-token log-probs of a text under a model, as one JSON object.
    Logprobs(commands::logprobs::Args),
    /// Tokenizer utilities.
    #[command(subcommand)]
    Tokenizer(commands::tokenizer::Command),
    /// Create a randomly initialised model directory from a config.json and a tokenizer.
    Init(commands::init::Args),
    /// Base samples of each prompt with their rewards (reference rollouts).
    Rollouts(commands::rollouts::Args),
    /// Add calibrated (and transformed) rewards to samples against reference rollouts.
    Calibrate(commands::calibrate::Args),
    /// Train a CD prefix scorer (CD-FUDGE or CD-Q) from scored rollouts.
    TrainScorer(commands::train_scorer::Args),
    /// KL-regularised RL with a calibrated, transformed reward (InfAlign-CTRL) or the raw one.
    Align(commands::align::Args),
    /// Synthetic preferences labelled by a gold reward with Bradley-Terry noise.
    Preferences(commands::preferences::Args),
    /// Train a Bradley-Terry reward model on preference pairs.
    TrainRm(commands::train_rm::Args),
    /// Pretrain (or fine-tune) a language model on free text.
    Pretrain(commands::pretrain::Args),
    /// Evaluate a policy against the base: win rates (standard, best-of-N, worst-of-N) and KL.
    Eval(commands::eval::Args),
    /// Decode at several values of one parameter and evaluate each against the base.
    Sweep(commands::sweep::Args),
    /// Gather every evaluated point under a run directory into report.md and report.html.
    Report(commands::report::Args),
    /// Calibrated-space analytic tool: KL and win rates of a transform, no model needed.
    Analytic(commands::analytic::Args),
    /// Decoding and training throughput (use `cargo xtask bench` for a release build).
    Bench(commands::bench::Args),
}

fn main() {
    infalign_kernels::keep_freed_memory();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let spec = cli.device;
    let device = || -> Result<Device> { Ok(spec.device()?) };
    match cli.command {
        Command::Generate(a) => commands::generate::run(a, &device()?),
        Command::Decode(a) => commands::decode::run(a, &device()?),
        Command::Logprobs(a) => commands::logprobs::run(a, &device()?),
        Command::Tokenizer(c) => commands::tokenizer::run(c),
        Command::Init(a) => commands::init::run(a, &device()?),
        Command::Rollouts(a) => commands::rollouts::run(a, &device()?),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::TrainScorer(a) => commands::train_scorer::run(a, &device()?),
        Command::Align(a) => commands::align::run(a, &device()?),
        Command::Preferences(a) => commands::preferences::run(a),
        Command::TrainRm(a) => commands::train_rm::run(a, &device()?),
        Command::Pretrain(a) => commands::pretrain::run(a, &device()?),
        Command::Eval(a) => commands::eval::run(a, &device()?),
        Command::Sweep(a) => commands::sweep::run(a, &device()?),
        Command::Report(a) => commands::report::run(a),
        Command::Analytic(a) => commands::analytic::run(a),
        Command::Bench(a) => {
            let compiles_kernels = matches!(spec, DeviceSpec::Wgpu | DeviceSpec::Cuda(_));
            commands::bench::run(a, &device()?, compiles_kernels)
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The model directory to use: `--model`, else the shipped base model.
pub(crate) fn model_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let shipped = shipped_model_dir();
    if shipped.join(infalign_models::CONFIG_FILE).exists() {
        return Ok(shipped);
    }
    anyhow::bail!(
        "no --model given and no shipped base model at {}: pass --model DIR (a directory with \
         config.json, model.safetensors and tokenizer.json)",
        shipped.display()
    )
}

/// The shipped assets: `$INFALIGN_ASSETS`, else `assets/` of the repository the binary was built
/// in, else (a binary moved or built elsewhere) `assets/` of the working directory when that
/// holds the base model; errors then name the repository's path.
pub(crate) fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("INFALIGN_ASSETS") {
        return PathBuf::from(dir);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let here = PathBuf::from("assets");
    if !built.exists() && here.join("base-model").exists() {
        return here;
    }
    built
}

/// `assets/base-model` of the repository, or `$INFALIGN_ASSETS/base-model`.
pub(crate) fn shipped_model_dir() -> PathBuf {
    assets_dir().join("base-model")
}

/// A path into the shipped assets as configs write it (`assets/...`, relative to the
/// repository), found from any working directory: as given when it exists there, else under
/// [`assets_dir`]. Other paths are returned unchanged.
pub(crate) fn shipped_asset(path: &std::path::Path) -> PathBuf {
    match path.strip_prefix("assets") {
        Ok(rest) if path.is_relative() && !path.exists() => assets_dir().join(rest),
        _ => path.to_path_buf(),
    }
}

/// Loads a model directory with a message that names it.
pub(crate) fn load_model(
    given: Option<PathBuf>,
    device: &Device,
) -> Result<infalign_models::LoadedModel> {
    let dir = model_dir(given)?;
    infalign_models::LoadedModel::load(&dir, device)
        .with_context(|| format!("loading model directory {}", dir.display()))
}
