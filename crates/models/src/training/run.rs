//! What every trainer (pretraining, policy optimisation, prefix-scorer and reward-model
//! training) shares: its run directory ([`RunFiles`]), the report it gives after each step
//! ([`StepReport`], to an `on_step` callback: the binary draws progress from it, the libraries
//! print nothing), and its checkpoints.
//!
//! A checkpoint is a directory: whatever model files the trainer needs (a model directory at the
//! root, sub-directories for extra networks), one `*.bpk` file per optimizer (burn's
//! `ModuleOptimizer::into_bytes`), and `state.json` (the step, the trainer's own state and the
//! config of the run that wrote it). It is written into a temporary sibling directory that then
//! replaces the previous checkpoint, so a run killed at any moment leaves either the old or the
//! new checkpoint, never a mix.
//!
//! Invariants: parameter ids are derived from tensor names, so an optimizer state saved against
//! a module applies to the same module reloaded from its files; save-then-load of weights and
//! optimizer state is bit-exact. A missing, truncated or corrupt file is an error naming it.

use std::path::Path;

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::checkpoint::{LoadedModel, save_model_dir};
use crate::lm::CausalLm;
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};

/// The optimizer file of a checkpoint (the main network's optimizer).
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The trainer's state inside a checkpoint.
pub const STATE_FILE: &str = "state.json";
/// The checkpoint directory inside a run directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// Where a trainer writes its files (metrics, checkpoints) and whether it continues from the
/// last checkpoint there.
#[derive(Debug, Clone, Copy)]
pub struct RunFiles<'a> {
    /// The run directory: `metrics.jsonl` and `checkpoint/` go here.
    pub dir: &'a Path,
    /// The tokenizer written into every checkpoint (checkpoints are model directories).
    pub tokenizer: &'a Tokenizer,
    /// Continue from `dir/checkpoint` instead of starting afresh.
    pub resume: bool,
}

impl RunFiles<'_> {
    /// `dir/checkpoint`.
    pub fn checkpoint(&self) -> std::path::PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }

    /// `dir/metrics.jsonl`.
    pub fn metrics(&self) -> std::path::PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// `dir/final`: the trained model, written whole once the run ends.
    pub fn final_dir(&self) -> std::path::PathBuf {
        self.dir.join("final")
    }

    /// The metrics writer of the run: truncated to `last_step` when resuming, emptied when
    /// starting afresh (so a run never shows two rows for one step).
    pub fn metrics_writer(&self, last_step: u64) -> Result<infalign_core::MetricsWriter> {
        open_metrics(&self.metrics(), self.resume, last_step)
    }
}

/// What a trainer reports after each step to its `on_step` callback.
#[derive(Debug, Clone, Copy)]
pub struct StepReport<'a> {
    /// The step just completed (1-based).
    pub step: u64,
    /// The run's last step.
    pub steps: u64,
    /// The step's metrics, named as in `metrics.jsonl`.
    pub metrics: &'a [(&'static str, f64)],
}

impl StepReport<'_> {
    /// The metric called `name`, if the step reported it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }
}

/// Opens `path` for a run: on resume, rows after `last_step` are dropped (they are replayed);
/// on a fresh start the file is emptied.
pub fn open_metrics(
    path: &Path,
    resume: bool,
    last_step: u64,
) -> Result<infalign_core::MetricsWriter> {
    if resume {
        return Ok(infalign_core::MetricsWriter::resume(path, last_step)?);
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| io(path, e))?;
    }
    Ok(infalign_core::MetricsWriter::append(path)?)
}

fn io(p: &Path, e: std::io::Error) -> ModelError {
    ModelError::Core(infalign_core::CoreError::io(p, e))
}

/// Writes a checkpoint atomically ([`infalign_core::io::write_dir_atomic`]): `fill` writes the
/// trainer's files into a fresh temporary directory, `state.json` is added, and the directory
/// replaces `dir`. A crash at any instant leaves the previous checkpoint or the new one, whole
/// ([`require_checkpoint`] completes an interrupted swap).
pub fn write_checkpoint(
    dir: &Path,
    state: &impl Serialize,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    infalign_core::io::write_dir_atomic(dir, |tmp| {
        fill(tmp)?;
        infalign_core::io::write_json_atomic(tmp.join(STATE_FILE), state)?;
        Ok(())
    })
}

/// Fails with a message naming `dir` when there is no checkpoint to resume from, after
/// completing a checkpoint swap that a crash interrupted.
pub fn require_checkpoint(dir: &Path) -> Result<()> {
    infalign_core::io::recover_dir(dir)?;
    if dir.join(STATE_FILE).is_file() {
        return Ok(());
    }
    Err(ModelError::Input(format!(
        "cannot resume: no checkpoint at {} ({} is missing); run without --resume to start afresh",
        dir.display(),
        dir.join(STATE_FILE).display()
    )))
}

/// Reads `state.json` of a checkpoint.
pub fn read_state<S: DeserializeOwned>(dir: &Path) -> Result<S> {
    require_checkpoint(dir)?;
    let path = dir.join(STATE_FILE);
    let text = infalign_core::io::read_to_string(&path)?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path,
        message: format!("corrupt checkpoint state: {e}"),
    })
}

/// The top-level keys of two configs that differ, ignoring `ignore` (for example the number of
/// steps, which a resumed run may change). Numbers are compared with a relative tolerance of
/// 1e-12, as serde_json's float parsing is not exact to the last bit.
pub fn config_changes(
    saved: &impl Serialize,
    now: &impl Serialize,
    ignore: &[&str],
) -> Vec<String> {
    use serde_json::Value;
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => x == y,
            },
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
            }
            _ => a == b,
        }
    }
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(saved), serde_json::to_value(now))
    else {
        return vec!["<config>".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !ignore.contains(&k.as_str()))
        .filter(|k| match (a.get(*k), b.get(*k)) {
            (Some(x), Some(y)) => !same(x, y),
            _ => true,
        })
        .cloned()
        .collect()
}

/// Logs a warning when a resumed run's config differs from the checkpoint's in more than the
/// `ignore`d keys: such a run does not reproduce an uninterrupted one.
pub fn warn_on_config_change(saved: &impl Serialize, now: &impl Serialize, ignore: &[&str]) {
    let changed = config_changes(saved, now, ignore);
    if !changed.is_empty() {
        tracing::warn!(
            ?changed,
            "resuming with settings that differ from those of the run that wrote the checkpoint"
        );
    }
}

/// Writes an optimizer's state to `path` (atomically).
pub fn save_optimizer(path: &Path, optim: &ModuleOptimizer) -> Result<()> {
    let bytes = optim.into_bytes().map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: format!("serializing the optimizer state: {e:?}"),
    })?;
    Ok(infalign_core::io::write_atomic(path, &bytes)?)
}

/// Restores an optimizer's state from `path` into `optim` (a fresh optimizer of the same
/// kind); a missing, truncated or corrupt file is an error naming it.
pub fn load_optimizer(path: &Path, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let corrupt = |detail: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: format!("the optimizer state is corrupt{detail}"),
    };
    // burn panics on some malformed inputs instead of returning an error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        optim.from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
    }))
    .map_err(|_| corrupt(String::new()))?
    .map_err(|e| corrupt(format!(": {e:?}")))
}

/// Writes a language-model checkpoint (model directory + `optimizer.bpk` + `state.json`)
/// atomically: into a temporary directory that then replaces the previous checkpoint.
pub fn save_checkpoint(
    dir: &Path,
    model: &CausalLm,
    tokenizer: &Tokenizer,
    optim: &ModuleOptimizer,
    state: &impl Serialize,
) -> Result<()> {
    write_checkpoint(dir, state, |tmp| {
        save_model_dir(tmp, model, tokenizer)?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), optim)
    })
}

/// Reads a checkpoint written by [`save_checkpoint`]; a missing, corrupt or truncated one is an
/// error naming the file.
pub fn load_checkpoint<S: DeserializeOwned>(
    dir: &Path,
    device: &Device,
    optim: ModuleOptimizer,
) -> Result<(LoadedModel, ModuleOptimizer, S)> {
    let state = read_state(dir)?;
    let lm = LoadedModel::load(dir, device)?;
    let optim = load_optimizer(&dir.join(OPTIMIZER_FILE), optim)?;
    Ok((lm, optim, state))
}
