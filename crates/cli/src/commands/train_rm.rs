//! `infalign train-rm`: a reward model initialised from the base model, either
//! - Bradley-Terry on preference JSONL (`--data`, `{"prompt","chosen","rejected"}`, TRL's keys),
//!   reporting pairwise accuracy on held-out pairs; or
//! - a calibrated reward model on scored rollouts (`--rollouts`, from `infalign rollouts`): it
//!   learns Ĉ(x, y), so prompts without reference rollouts get calibrated rewards; it reports the
//!   mean absolute error of its Ĉ on held-out prompts (against a constant ½ for scale).
//!
//! The result scores as `--reward rm(path=OUT)`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use infalign_core::Device;
use infalign_models::{LoadedModel, PrefixScorer, ScorerLayout};
use infalign_rewards::bradley_terry::{BradleyTerry, EncodedPair, Preference, pairwise_accuracy};
use infalign_rewards::calibrated_reward_model::{
    CalibratedExample, CalibratedRegression, calibrated_targets,
};
use infalign_rewards::rm_train::{RmObjective, RmTrainConfig, train_reward_model};
use infalign_rewards::{RewardModel, RewardModelOutput};

use super::common::{TrainRunArgs, held_out_prompts};
use super::samples::read_samples;

/// Flags of `infalign train-rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::common::ModelArgs,
    /// Preference JSONL: train a Bradley-Terry reward model.
    #[arg(
        long,
        conflicts_with = "rollouts",
        required_unless_present = "rollouts"
    )]
    pub data: Option<PathBuf>,
    /// Scored rollouts (two or more per prompt): train a calibrated reward model that predicts
    /// Ĉ.
    #[arg(long)]
    pub rollouts: Option<PathBuf>,
    /// Fraction of prompts held out, with all their pairs or rollouts (a file whose pairs all
    /// share one prompt holds out that fraction of its pairs).
    #[arg(long, default_value_t = 0.1, value_parser = super::common::holdout_fraction)]
    pub holdout: f64,
    #[command(flatten)]
    pub run: TrainRunArgs,
}

/// Training data, encoded, with its held-out part.
enum Data {
    Pairs {
        train: Vec<EncodedPair>,
        held: Vec<EncodedPair>,
        held_prompts: usize,
    },
    Calibrated {
        train: Vec<CalibratedExample>,
        held: Vec<CalibratedExample>,
        held_prompts: usize,
    },
}

fn held_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let _claim = a.run.claim()?;
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let settings = serde_json::json!({
        "model": path(&a.model.model), "data": path(&a.data), "rollouts": path(&a.rollouts),
        "holdout": a.holdout,
    });
    a.run.check_settings(&settings)?;
    let cfg: RmTrainConfig = infalign_core::config::load_config(None, &a.run.set)?;
    let lm = a.model.load(device)?;
    // Prompt and completion as one row of ids, checked against the model's vocabulary and
    // context (an error naming the file and line, not a panic in the embedding lookup).
    let join = |prompt: &str, completion: &str, path: &Path, line: usize| -> Result<Vec<u32>> {
        let mut ids = lm.tokenizer.encode(prompt)?;
        ids.extend(lm.tokenizer.encode(completion)?);
        lm.model
            .check_ids(&ids, ids.len())
            .with_context(|| format!("{}:{line}", path.display()))?;
        Ok(ids)
    };
    let (data, source) = match (&a.data, &a.rollouts) {
        (Some(path), _) => {
            let prefs: Vec<(usize, Preference)> = infalign_core::io::read_jsonl_numbered(path)?;
            anyhow::ensure!(
                prefs.len() >= 2,
                "{}: need at least two preference pairs",
                path.display()
            );
            // Held out by prompt, so that no prompt of the held-out pairs was trained on; with
            // a single prompt, by position (and said so).
            let held_set =
                held_out_prompts(prefs.iter().map(|(_, p)| p.prompt.as_str()), a.holdout, 1);
            let n_held = if held_set.is_empty() {
                tracing::warn!(
                    "{}: every pair has the same prompt; the held-out pairs share it",
                    path.display()
                );
                held_count(prefs.len(), a.holdout)
            } else {
                0
            };
            let (mut train, mut held) = (Vec::new(), Vec::new());
            for (i, (line, p)) in prefs.iter().enumerate() {
                let pair = EncodedPair {
                    chosen: join(&p.prompt, &p.chosen, path, *line)?,
                    rejected: join(&p.prompt, &p.rejected, path, *line)?,
                };
                if held_set.contains(&p.prompt) || i < n_held {
                    held.push(pair);
                } else {
                    train.push(pair);
                }
            }
            let held_prompts = held_set.len();
            (
                Data::Pairs {
                    train,
                    held,
                    held_prompts,
                },
                path,
            )
        }
        (None, Some(path)) => {
            let rows = read_samples(path, true)?;
            let scored: Vec<(String, f64)> = rows
                .iter()
                .map(|r| (r.prompt().to_string(), r.reward().unwrap_or_default()))
                .collect();
            let targets = calibrated_targets(&scored)
                .with_context(|| format!("calibrating {}", path.display()))?;
            let held_set = held_out_prompts(rows.iter().map(|r| r.prompt()), a.holdout, 1);
            if held_set.is_empty() {
                bail!("{}: need rollouts of at least two prompts", path.display());
            }
            let n_held = held_set.len();
            let (mut train, mut held) = (Vec::new(), Vec::new());
            for (r, t) in rows.iter().zip(targets) {
                let ex = CalibratedExample {
                    ids: join(r.prompt(), r.completion(), path, r.line)?,
                    target: t,
                };
                if held_set.contains(r.prompt()) {
                    held.push(ex);
                } else {
                    train.push(ex);
                }
            }
            let data = Data::Calibrated {
                train,
                held,
                held_prompts: n_held,
            };
            (data, path)
        }
        (None, None) => bail!("pass --data PREFERENCES.jsonl or --rollouts ROLLOUTS.jsonl"),
    };
    let ad = device.clone().autodiff();
    let backbone =
        LoadedModel::load(&lm.dir, &ad).with_context(|| format!("loading {}", lm.dir.display()))?;
    let net = PrefixScorer::from_base(backbone.model, ScorerLayout::Scalar, &ad)?;
    let files = a.run.files(&lm.tokenizer);
    let (objective, output): (Box<dyn RmObjective + '_>, _) = match &data {
        Data::Pairs { train, .. } => (Box::new(BradleyTerry(train)), RewardModelOutput::Score),
        Data::Calibrated { train, .. } => (
            Box::new(CalibratedRegression(train)),
            RewardModelOutput::Calibrated,
        ),
    };
    let progress = super::common::Progress::new(1);
    let net = a.run.with_settings_recorded(&settings, || {
        Ok(train_reward_model(
            &cfg,
            net,
            objective.as_ref(),
            lm.pad_id,
            Some(files),
            |r| progress.on_step(r),
        )?)
    })?;
    if cfg.halts_early() {
        eprintln!(
            "halted after step {}; continue with --resume",
            cfg.halt_after
        );
        return Ok(());
    }
    let rm = RewardModel::new(net, lm.tokenizer.clone(), device.clone())?.with_output(output);
    let summary = match &data {
        Data::Pairs {
            train,
            held,
            held_prompts,
        } => {
            let ids = |f: fn(&EncodedPair) -> &Vec<u32>| -> Vec<Vec<u32>> {
                held.iter().map(|p| f(p).clone()).collect()
            };
            let chosen = rm.score_ids(&ids(|p| &p.chosen))?;
            let rejected = rm.score_ids(&ids(|p| &p.rejected))?;
            serde_json::json!({
                "objective": "bradley_terry", "train_pairs": train.len(),
                "heldout_pairs": held.len(), "heldout_prompts": held_prompts,
                "heldout_accuracy": pairwise_accuracy(&chosen, &rejected),
            })
        }
        Data::Calibrated {
            train,
            held,
            held_prompts,
        } => {
            let pred = rm.score_ids(&held.iter().map(|e| e.ids.clone()).collect::<Vec<_>>())?;
            let n = held.len().max(1) as f64;
            let mae = pred
                .iter()
                .zip(held)
                .map(|(p, e)| (p - e.target).abs())
                .sum::<f64>()
                / n;
            let constant = held.iter().map(|e| (0.5 - e.target).abs()).sum::<f64>() / n;
            serde_json::json!({
                "objective": "calibrated", "train_rollouts": train.len(),
                "heldout_prompts": held_prompts, "heldout_rollouts": held.len(),
                "heldout_mae": mae, "heldout_mae_of_constant_half": constant,
            })
        }
    };
    rm.save(
        &a.run.out,
        &format!("reward model trained on {}", source.display()),
    )?;
    infalign_core::io::write_json_atomic(a.run.out.join("summary.json"), &summary)?;
    println!("{summary}");
    Ok(())
}
