//! Pretraining and supervised fine-tuning of a causal LM on free text: next-token
//! cross-entropy, AdamW, linear warmup then cosine decay, global gradient-norm clipping,
//! gradient accumulation, periodic validation loss and perplexity, metrics JSONL, a checkpoint
//! every N steps, and exact resumption.
//!
//! Data: every document of a `{"text"}` JSONL file is tokenized, followed by EOS, and the
//! documents are concatenated into one token stream. Micro-batch `m` of step `s` takes windows
//! at offsets drawn from `seed.derive("data", s * accum + m)`; validation uses fixed,
//! non-overlapping windows of the validation stream.
//!
//! Invariants: the batch of a step depends only on the seed and the step number, and the
//! checkpoint holds the weights, the optimizer state and the step; so a run killed after its
//! last checkpoint and resumed with `--resume` ends with the same weights as an uninterrupted
//! run (CPU, same seed). Checkpoints are written to a temporary directory and renamed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use infalign_core::Seed;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{LoadedModel, save_model_dir};
use crate::config::ModelConfig;
use crate::lm::{CausalLm, TokenBatch};
use crate::tokenizer::Tokenizer;
use crate::training::optim::{LrSchedule, scale_and_clip};
use crate::training::run::{CHECKPOINT_DIR, RunFiles, StepReport};
pub use crate::training::run::{load_checkpoint, save_checkpoint};
use crate::weights::read_f32;
use crate::{ModelError, Result};

/// Everything a pretraining run needs; a TOML file with `--set` overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Training documents, JSONL with a `text` key.
    pub train_data: PathBuf,
    /// Validation documents, JSONL with a `text` key.
    pub valid_data: PathBuf,
    /// `tokenizer.json` (ignored when `init_from` is set: the model's own is used).
    pub tokenizer: PathBuf,
    /// A Hugging Face style `config.json` for a fresh model (ignored with `init_from`).
    pub model_config: PathBuf,
    /// Continue from an existing model directory instead (fine-tuning); empty for none.
    pub init_from: PathBuf,
    /// Run directory: metrics.jsonl, checkpoint/, final/.
    pub out_dir: PathBuf,
    /// Tokens per training window (the model sees `seq_len + 1` tokens per row).
    pub seq_len: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// AdamW beta2.
    pub beta2: f32,
    /// Clip the global gradient norm to this (0 disables).
    pub grad_clip: f64,
    /// Validate every N steps (and at the end).
    pub eval_every: u64,
    /// Validation windows at most.
    pub eval_windows: usize,
    /// Checkpoint every N steps (and at the end).
    pub save_every: u64,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Stop after this step as if the process were killed (tests of resumption); 0 = never.
    pub halt_after: u64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            train_data: "assets/corpus/train.jsonl".into(),
            valid_data: "assets/corpus/valid.jsonl".into(),
            tokenizer: "assets/base-model/tokenizer.json".into(),
            model_config: "assets/base-model.config.json".into(),
            init_from: PathBuf::new(),
            out_dir: "runs/pretrain".into(),
            seq_len: 128,
            batch_size: 16,
            grad_accum: 1,
            steps: 1000,
            lr: 2e-3,
            warmup_steps: 50,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta2: 0.99,
            grad_clip: 1.0,
            eval_every: 100,
            eval_windows: 64,
            save_every: 100,
            seed: 0,
            halt_after: 0,
        }
    }
}

impl PretrainConfig {
    fn validate(&self) -> Result<()> {
        let bad = |field, message: &str| {
            Err(ModelError::InvalidConfig {
                field,
                message: message.into(),
            })
        };
        if self.seq_len < 2 {
            return bad("seq_len", "must be at least 2");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size", "batch_size and grad_accum must be positive");
        }
        if self.steps == 0 {
            return bad("steps", "must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if self.eval_every == 0 || self.save_every == 0 {
            return bad("eval_every", "eval_every and save_every must be positive");
        }
        Ok(())
    }
}

/// What `checkpoint/state.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Last completed optimizer step.
    pub step: u64,
    /// The config of the run that wrote it.
    pub config: PretrainConfig,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainSummary {
    /// Steps completed.
    pub steps: u64,
    /// Final validation loss (nats per token).
    pub valid_loss: f64,
    /// exp(valid_loss).
    pub valid_perplexity: f64,
    /// Where the final model directory is (empty if the run halted early).
    pub final_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
struct TextRow {
    text: String,
}

/// Reads `{"text"}` documents and returns one token stream with EOS after every document.
pub fn token_stream(path: &Path, tokenizer: &Tokenizer, eos: u32) -> Result<Vec<u32>> {
    let rows: Vec<TextRow> = infalign_core::io::read_jsonl(path)?;
    let mut stream = Vec::new();
    for row in rows {
        stream.extend(tokenizer.encode(&row.text)?);
        stream.push(eos);
    }
    Ok(stream)
}

fn windows_batch(rows: &[&[u32]], device: &Device) -> TokenBatch {
    let len = rows[0].len();
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&t| i64::from(t)))
        .collect();
    TokenBatch {
        tokens: Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device),
        mask: Tensor::ones([rows.len(), len], device),
        pad_left: vec![0; rows.len()],
    }
}

/// Mean next-token loss over fixed, non-overlapping windows of `stream`.
pub fn evaluate(
    model: &CausalLm,
    stream: &[u32],
    seq_len: usize,
    batch: usize,
    max_windows: usize,
    device: &Device,
) -> Result<f64> {
    let windows: Vec<&[u32]> = stream
        .chunks_exact(seq_len + 1)
        .take(max_windows.max(1))
        .collect();
    if windows.is_empty() {
        return Err(ModelError::Input(format!(
            "the validation data has {} tokens, fewer than one window of {}",
            stream.len(),
            seq_len + 1
        )));
    }
    let mut total = 0.0;
    for chunk in windows.chunks(batch.max(1)) {
        let loss = model.next_token_loss(&windows_batch(chunk, device));
        total += f64::from(read_f32(loss)?[0]) * chunk.len() as f64;
    }
    Ok(total / windows.len() as f64)
}

fn optimizer(cfg: &PretrainConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .with_beta_2(cfg.beta2)
        .init()
}

/// Runs (or, with `resume`, continues) pretraining in the run directory `out_dir`, calling
/// `on_step` after each step. Returns the summary; the final model directory is `out_dir/final`.
pub fn pretrain(
    cfg: &PretrainConfig,
    device: &Device,
    resume: bool,
    mut on_step: impl FnMut(&StepReport<'_>),
) -> Result<PretrainSummary> {
    cfg.validate()?;
    let device = device.clone().autodiff();
    let checkpoint = cfg.out_dir.join(CHECKPOINT_DIR);
    let (mut model, tokenizer, mut optim, start, eos) = if resume {
        let (lm, optim, state): (_, _, TrainState) =
            load_checkpoint(&checkpoint, &device, optimizer(cfg))?;
        let eos = lm.eos_ids.first().copied().unwrap_or(0);
        tracing::info!(step = state.step, "resuming");
        (lm.model, lm.tokenizer, optim, state.step, eos)
    } else if !cfg.init_from.as_os_str().is_empty() {
        let lm = LoadedModel::load(&cfg.init_from, &device)?;
        let eos = lm.eos_ids.first().copied().unwrap_or(0);
        (lm.model, lm.tokenizer, optimizer(cfg), 0, eos)
    } else {
        let config = ModelConfig::load(&cfg.model_config)?;
        let tokenizer = Tokenizer::from_file(&cfg.tokenizer)?;
        crate::checkpoint::check_vocab(&tokenizer, &config)?;
        let model = CausalLm::random(&config, Seed(cfg.seed), &device)?;
        let lm = LoadedModel::assemble(model, tokenizer, &cfg.out_dir);
        let eos = lm.eos_ids.first().copied().unwrap_or(0);
        (lm.model, lm.tokenizer, optimizer(cfg), 0, eos)
    };
    let max_pos = model.config().max_positions();
    if cfg.seq_len + 1 > max_pos {
        return Err(ModelError::InvalidConfig {
            field: "seq_len",
            message: format!(
                "seq_len + 1 = {} exceeds the model's context of {max_pos}",
                cfg.seq_len + 1
            ),
        });
    }
    let train = token_stream(&cfg.train_data, &tokenizer, eos)?;
    let valid = token_stream(&cfg.valid_data, &tokenizer, eos)?;
    if train.len() <= cfg.seq_len + 1 {
        return Err(ModelError::Input(format!(
            "{}: {} tokens, fewer than one window of {}",
            cfg.train_data.display(),
            train.len(),
            cfg.seq_len + 1
        )));
    }
    tracing::info!(
        train_tokens = train.len(),
        valid_tokens = valid.len(),
        "data"
    );
    // The tokenizer is known only now (a fresh run loads it from the config's file).
    let paths = RunFiles {
        dir: &cfg.out_dir,
        tokenizer: &tokenizer,
        resume,
    };
    let mut metrics = paths.metrics_writer(start)?;
    infalign_core::io::write_json_atomic(cfg.out_dir.join("config.json"), cfg)?;
    let schedule = LrSchedule {
        peak: cfg.lr,
        warmup: cfg.warmup_steps,
        total: cfg.steps,
        min_ratio: cfg.min_lr_ratio,
    };
    let tokens_per_step = (cfg.batch_size * cfg.grad_accum * cfg.seq_len) as f64;
    let seed = Seed(cfg.seed);
    let mut valid_loss = f64::NAN;
    let mut step = start;
    while step < cfg.steps {
        step += 1;
        let t0 = Instant::now();
        let mut accum = GradientsAccumulator::new();
        let mut loss_sum = 0.0;
        for m in 0..cfg.grad_accum {
            let mut rng = seed
                .derive("data", (step - 1) * cfg.grad_accum as u64 + m as u64)
                .stream("data");
            let rows: Vec<&[u32]> = (0..cfg.batch_size)
                .map(|_| {
                    let s = rng.random_range(0..train.len() - cfg.seq_len - 1);
                    &train[s..s + cfg.seq_len + 1]
                })
                .collect();
            let loss = model.next_token_loss(&windows_batch(&rows, &device));
            loss_sum += f64::from(read_f32(loss.clone())?[0]);
            accum.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let mut grads = accum.grads();
        let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
        let grad_norm = scale_and_clip(&model, &mut grads, 1.0 / cfg.grad_accum as f64, clip);
        let lr = schedule.at(step);
        model = optim.step(lr, model, grads);
        let loss = loss_sum / cfg.grad_accum as f64;
        let tps = tokens_per_step / t0.elapsed().as_secs_f64();
        let mut row = vec![
            ("train/loss", loss),
            ("train/lr", lr),
            ("train/grad_norm", grad_norm),
            ("train/tokens_per_s", tps),
        ];
        if step % cfg.eval_every == 0 || step == cfg.steps {
            valid_loss = evaluate(
                &model.valid(),
                &valid,
                cfg.seq_len,
                cfg.batch_size,
                cfg.eval_windows,
                &device.clone().without_autodiff(),
            )?;
            row.push(("valid/loss", valid_loss));
            row.push(("valid/perplexity", valid_loss.exp()));
        }
        metrics.log(step, &row)?;
        on_step(&StepReport {
            step,
            steps: cfg.steps,
            metrics: &row,
        });
        if step % cfg.save_every == 0 || step == cfg.steps {
            save_checkpoint(
                &checkpoint,
                &model,
                &tokenizer,
                &optim,
                &TrainState {
                    step,
                    config: cfg.clone(),
                },
            )?;
        }
        if cfg.halt_after > 0 && step >= cfg.halt_after && step < cfg.steps {
            return Ok(PretrainSummary {
                steps: step,
                valid_loss,
                valid_perplexity: valid_loss.exp(),
                final_dir: PathBuf::new(),
            });
        }
    }
    let trained = model.valid();
    infalign_core::io::write_dir_atomic(&paths.final_dir(), |dir| {
        save_model_dir(dir, &trained, &tokenizer)
    })?;
    let summary = PretrainSummary {
        steps: step,
        valid_loss,
        valid_perplexity: valid_loss.exp(),
        final_dir: paths.final_dir(),
    };
    infalign_core::io::write_json_atomic(cfg.out_dir.join("summary.json"), &summary)?;
    Ok(summary)
}
