//! Flags shared by the commands that sample: where prompts come from, and how tokens are drawn.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use infalign_decoding::SamplingConfig;
use infalign_models::{RunFiles, Tokenizer};
use serde::Deserialize;

/// `--model DIR`, the one spelling of the model a command reads.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json); default: the shipped
    /// base model.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl ModelArgs {
    /// The model, loaded onto `device`, with an error naming its directory.
    pub fn load(&self, device: &infalign_core::Device) -> Result<infalign_models::LoadedModel> {
        crate::load_model(self.model.clone(), device)
    }
}

/// The model, the prompts and the sampling flags of every command that decodes.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeInputs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompts: PromptArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `--prompt` (repeatable) and `--prompts FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct PromptArgs {
    /// A prompt (repeatable).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// JSONL file of `{"prompt": ...}` rows.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PromptRow {
    prompt: String,
}

impl PromptArgs {
    /// The prompts, inline ones first.
    pub fn collect(&self) -> Result<Vec<String>> {
        let mut prompts = self.prompt.clone();
        if let Some(path) = &self.prompts {
            let rows: Vec<PromptRow> = infalign_core::io::read_jsonl(path)?;
            prompts.extend(rows.into_iter().map(|r| r.prompt));
        }
        if prompts.is_empty() {
            bail!("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE.jsonl");
        }
        Ok(prompts)
    }
}

/// Next-token sampling and length flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// New tokens per completion at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Prompts prefilled together (each with its `--n` samples); on the CPU, batches run in
    /// parallel, one per core.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Seed of all randomness.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A string that ends a completion where it appears (repeatable); the completion is cut
    /// before it.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The sampler these flags describe.
    pub fn sampling(&self, greedy: bool) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            greedy,
        }
    }
}

/// The prompts held out for evaluation: `round(fraction · n)` of the distinct prompts (at least
/// `min` while one is left for training), chosen by a hash of their text so that the split
/// is the same on every run and machine.
pub fn held_out_prompts<'a>(
    prompts: impl IntoIterator<Item = &'a str>,
    fraction: f64,
    min: usize,
) -> HashSet<String> {
    let mut distinct: Vec<&str> = prompts.into_iter().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let n = distinct.len();
    let want = ((n as f64 * fraction).round() as usize).max(min);
    let n_held = if n < 2 { 0 } else { want.min(n - 1) };
    let mut by_hash: Vec<(u64, &str)> = distinct
        .iter()
        .map(|p| {
            let h = p.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            (h, *p)
        })
        .collect();
    by_hash.sort_unstable();
    by_hash
        .into_iter()
        .take(n_held)
        .map(|(_, p)| p.to_string())
        .collect()
}

/// `--set`, `--out` and `--resume` of the training commands.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainRunArgs {
    /// Override a key of the trainer's config, e.g. `--set steps=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory: the trained model, metrics.jsonl, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from `OUT/checkpoint` (written every `save_every` steps and at the end); ends
    /// with the weights an uninterrupted run would have.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start over in an `OUT` that already holds files (an earlier run's checkpoint is removed
    /// first, so that a later `--resume` cannot pick it up; its other outputs are replaced as
    /// the new run writes them). Without it, or `--resume`, such an `OUT` is refused.
    #[arg(long)]
    pub overwrite: bool,
}

impl TrainRunArgs {
    /// The trainer's run files: `--out`, continued with `--resume`.
    pub fn files<'a>(&'a self, tokenizer: &'a Tokenizer) -> RunFiles<'a> {
        RunFiles {
            dir: &self.out,
            tokenizer,
            resume: self.resume,
        }
    }

    /// Claims `--out` for this run ([`claim_run_dir`]).
    pub fn claim(&self) -> Result<RunDirLock> {
        claim_run_dir(&self.out, self.resume, self.overwrite)
    }

    /// `OUT/run.json`: what a run learns from beyond its trainer config (model, reward, data,
    /// shaping), so that `--resume` with other settings refuses instead of continuing a
    /// different run.
    fn settings_file(&self) -> PathBuf {
        self.out.join("run.json")
    }

    /// On `--resume`, refuses when `settings` differ from those recorded in `OUT/run.json`,
    /// naming the keys that changed (a run without a record is not checked, with a warning).
    pub fn check_settings(&self, settings: &serde_json::Value) -> Result<()> {
        if !self.resume {
            return Ok(());
        }
        let file = self.settings_file();
        let Ok(text) = std::fs::read_to_string(&file) else {
            tracing::warn!(file = %file.display(), "no record of the run's settings: not checked");
            return Ok(());
        };
        let saved: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
        let changed: Vec<&str> = settings
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| saved.get(k.as_str()).unwrap_or(&serde_json::Value::Null) != *v)
            .map(|(k, _)| k.as_str())
            .collect();
        if !changed.is_empty() {
            bail!(
                "--resume: {} was trained with other settings ({} changed; recorded in {}): \
                 resume with the same flags, or start over with --overwrite",
                self.out.display(),
                changed.join(", "),
                file.display()
            );
        }
        Ok(())
    }

    /// Runs `train` with `settings` recorded in `OUT/run.json` for a fresh run; if training
    /// stops before its first checkpoint (a refused setting), the record goes too, so that the
    /// directory is as the command found it.
    pub fn with_settings_recorded<T>(
        &self,
        settings: &serde_json::Value,
        train: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let file = self.settings_file();
        if !self.resume {
            infalign_core::io::write_json_atomic(&file, settings)?;
        }
        let out = train();
        let checkpoint = self
            .out
            .join(infalign_models::training::run::CHECKPOINT_DIR)
            .join("state.json");
        if out.is_err() && !self.resume && !checkpoint.is_file() {
            let _ = std::fs::remove_file(&file);
        }
        out
    }
}

/// The lock file inside a run directory: a command writing to the directory holds an OS lock on
/// it (`flock`), which the system releases when the process ends, however it ends.
pub const LOCK_FILE: &str = ".lock";

/// A claimed run directory: the open, locked [`LOCK_FILE`]; dropping it releases the lock.
#[derive(Debug)]
pub struct RunDirLock {
    _file: std::fs::File,
}

/// Claims `out` for a training run before anything is read or written there:
/// - a second command writing to the same directory is refused while the first runs (an OS
///   lock on [`LOCK_FILE`], released by the system when a process ends, even killed, so no lock
///   is ever stale); the file names the holder's process id, for people;
/// - without `resume` or `overwrite`, a directory that already holds files is refused, so an
///   earlier run is never mixed with a new one; with `overwrite`, its checkpoint is removed
///   first.
pub fn claim_run_dir(out: &Path, resume: bool, overwrite: bool) -> Result<RunDirLock> {
    if resume && overwrite {
        bail!(
            "--resume continues the run in {} and --overwrite starts over: choose one",
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("cannot create the run directory {}: {e}", out.display()))?;
    let path = out.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another command (process {}) is writing to {}: wait for it to finish",
                holder.trim(),
                out.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            bail!("cannot lock the run directory ({}): {e}", path.display())
        }
    }
    {
        use std::io::{Seek, Write};
        file.set_len(0)
            .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    let lock = RunDirLock { _file: file };
    if !resume {
        let mut held: Vec<String> = std::fs::read_dir(out)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", out.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect();
        held.sort();
        if !held.is_empty() && !overwrite {
            let shown: Vec<&str> = held.iter().take(4).map(String::as_str).collect();
            bail!(
                "{} already holds an earlier run's files ({}{}): pass --resume to continue it or \
                 --overwrite to start over",
                out.display(),
                shown.join(", "),
                if held.len() > 4 { ", ..." } else { "" }
            );
        }
        if overwrite {
            let checkpoint = out.join(infalign_models::training::run::CHECKPOINT_DIR);
            for dir in [checkpoint.clone()]
                .into_iter()
                .chain(["tmp", "ready", "old"].map(|s| {
                    out.join(format!(
                        ".{}.{s}",
                        infalign_models::training::run::CHECKPOINT_DIR
                    ))
                }))
            {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
                }
            }
        }
    }
    Ok(lock)
}

/// Refuses an output path that names one of the command's input files (the same file, by any
/// path: a link or `..` included), before anything is read: writing the output would destroy
/// the input it is computed from.
pub fn refuse_output_over_input(
    out_flag: &str,
    out: &Path,
    inputs: &[(&str, Option<&Path>)],
) -> Result<()> {
    let Ok(out_real) = std::fs::canonicalize(out) else {
        return Ok(()); // a new path is no input
    };
    for (flag, input) in inputs {
        if let Some(input) = input
            && std::fs::canonicalize(input).is_ok_and(|i| i == out_real)
        {
            anyhow::bail!(
                "{out_flag} {} is the {flag} input: refusing to overwrite an input; choose \
                 another {out_flag}",
                out.display()
            );
        }
    }
    Ok(())
}

/// `--holdout`: a finite fraction in [0, 1) (1 would hold out everything).
pub fn holdout_fraction(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction in [0, 1)"))
    }
}

/// A count of at least 1 (samples per prompt).
pub fn positive_count(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// A finite number of at least 0 (λ, a KL).
pub fn finite_non_negative(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number of at least 0"))
    }
}

/// A progress bar on stderr fed by a trainer's `on_step` reports: position, and the first
/// `shown` metrics of each step. Finished (or left at a halted step) when dropped.
pub struct Progress {
    bar: indicatif::ProgressBar,
    shown: usize,
}

impl Progress {
    /// A bar that shows the first `shown` metrics of each report.
    pub fn new(shown: usize) -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self { bar, shown }
    }

    /// Draws one step's report.
    pub fn on_step(&self, r: &infalign_models::StepReport<'_>) {
        self.bar.set_length(r.steps);
        self.bar.set_position(r.step);
        let shown: Vec<String> = r
            .metrics
            .iter()
            .take(self.shown)
            .map(|(name, v)| format!("{} {v:.4}", name.rsplit('/').next().unwrap_or(name)))
            .collect();
        self.bar.set_message(shown.join(" "));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.bar.position() < self.bar.length().unwrap_or(0) {
            self.bar.abandon();
        } else {
            self.bar.finish();
        }
    }
}

/// The inference-time procedures by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProcedureName {
    /// One sample: the standard win rate.
    Standard,
    /// Best-of-N.
    Bon,
    /// Worst-of-N.
    Won,
}

impl ProcedureName {
    /// The name as `--procedure` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Bon => "bon",
            Self::Won => "won",
        }
    }
}

/// The reward transforms Φ by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransformName {
    /// Φ(u) = u: the calibrated reward itself.
    Identity,
    /// Φ(u) = log(u + ε): the best-of-N policy's transform (`--t` is ε).
    Log,
    /// Φ(u) = exp(t·u): for best-of-N.
    Exp,
    /// Φ(u) = −exp(−t·u): for worst-of-N.
    #[value(name = "negexp", alias = "neg_exp")]
    NegExp,
    /// Φ(u) = u^k (`--t` is k).
    Power,
    /// The optimal transform for `--procedure` at λ = 1/β, tabulated (analytic, align,
    /// calibrate).
    Optimal,
}

impl TransformName {
    /// The name as `--transform` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Log => "log",
            Self::Exp => "exp",
            Self::NegExp => "negexp",
            Self::Power => "power",
            Self::Optimal => "optimal",
        }
    }
}

/// `--transform NAME [--t T]`: the reward transform Φ of the calibrated reward, in every command
/// that shapes a reward (align, calibrate, train-scorer) and in the analytic tool. Without
/// `--transform` each command says what it does (align: identity; calibrate, train-scorer: no
/// transformed reward).
#[derive(Debug, Clone, clap::Args)]
pub struct TransformArgs {
    /// Φ of the calibrated reward. With `log`, the calibrated reward is smoothed to
    /// `(K·Ĉ + ½)/(K + 1)` (K reference rollouts) so that Ĉ = 0 stays finite.
    #[arg(long, value_enum)]
    pub transform: Option<TransformName>,
    /// Parameter of the transform: t of exp and negexp, k of power, ε of log.
    #[arg(long, requires = "transform", allow_negative_numbers = true)]
    pub t: Option<f64>,
    /// The inference-time procedure `--transform optimal` is optimal for (and, in `analytic`,
    /// the one its win rate is taken under).
    #[arg(long, value_enum, default_value = "standard")]
    pub procedure: ProcedureName,
    /// N of the procedure's best-of-N or worst-of-N.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
}

impl TransformArgs {
    /// `--procedure` with `--n`.
    pub fn procedure(&self) -> infalign_eval::analytic::Procedure {
        use infalign_eval::analytic::Procedure;
        match self.procedure {
            ProcedureName::Standard => Procedure::Standard,
            ProcedureName::Bon => Procedure::BestOfN { n: self.n },
            ProcedureName::Won => Procedure::WorstOfN { n: self.n },
        }
    }

    /// The transform named, if any. `optimal` is the analytic tool's fixed point for
    /// `--procedure` at `lambda` = 1/β, tabulated on 201 points of [0, 1] (InfAlign's optimal
    /// transform, so CTRL can train on it); it needs a λ.
    pub fn resolve(&self, lambda: Option<f64>) -> Result<Option<infalign_rewards::Transform>> {
        if self.transform != Some(TransformName::Optimal) {
            return self.parametric();
        }
        let Some(lambda) = lambda else {
            bail!(
                "--transform optimal is solved at a λ = 1/β: `align` takes it from --beta, \
                 `calibrate` from --lambda"
            );
        };
        let table = infalign_eval::analytic::optimal_transform(self.procedure(), lambda, 201)?;
        Ok(Some(infalign_rewards::Transform::Tabulated(table)))
    }

    /// The transform named, if any, when it is a closed form (every one but `optimal`).
    pub fn parametric(&self) -> Result<Option<infalign_rewards::Transform>> {
        match self.transform {
            None => Ok(None),
            Some(TransformName::Optimal) => bail!(
                "--transform optimal is a table solved for one procedure and λ: give the λ \
                 (`align` takes 1/β; `calibrate --lambda`)"
            ),
            Some(name) => Ok(Some(infalign_rewards::Transform::from_name(
                name.name(),
                self.t,
            )?)),
        }
    }
}

/// `--measure SPEC` (repeatable): further rewards whose means over a point's samples are
/// recorded beside the judged one (a proxy's score beside the gold reward, a length beside a
/// sentiment).
pub struct Measures(Vec<(String, Box<dyn infalign_rewards::Reward>)>);

impl Measures {
    /// Loads every spec.
    pub fn load(specs: &[String], device: &infalign_core::Device) -> Result<Self> {
        Ok(Self(
            specs
                .iter()
                .map(|m| Ok((m.clone(), infalign_rewards::reward_from_spec_on(m, device)?)))
                .collect::<Result<Vec<_>>>()?,
        ))
    }

    /// Each measure's mean over `samples`, into `point.measures`.
    pub fn record(
        &self,
        samples: &[infalign_decoding::Sample],
        point: &mut infalign_eval::curve::CurvePoint,
    ) -> Result<()> {
        for (spec, r) in &self.0 {
            let v = infalign_decoding::score_samples(samples, r.as_ref())?;
            point
                .measures
                .insert(spec.clone(), v.iter().sum::<f64>() / v.len().max(1) as f64);
        }
        Ok(())
    }
}
