//! `infalign train-scorer`: trains a CD prefix scorer (CD-FUDGE or CD-Q) from scored rollouts,
//! on the raw reward, the calibrated reward, or a transform of it. A fraction of the prompts is
//! held out; the scorer's value of their complete rollouts is checked as a classifier (the CD
//! paper's Table 1): the pairwise accuracy over same-prompt pairs with different rewards, and
//! the mean squared error against the reward, in `summary.json`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use infalign_core::Device;
use infalign_models::{LoadedModel, PrefixScorer, ScorerLayout};
use infalign_rewards::{RewardTransform, Transform};
use infalign_rl::{ScorerMethod, ScorerRollout, ScorerTrainConfig, classifier_check, train_scorer};

use super::common::{TrainRunArgs, TransformArgs, held_out_prompts};
use super::samples::{SampleRow, calibrator_of, read_samples, rewards_by_prompt};

/// The prefix-scorer objectives by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectiveName {
    /// CD-FUDGE: every prefix regresses onto the final reward (on-policy rollouts).
    Fudge,
    /// CD-Q: a Bellman target under stop-gradient.
    Q,
}

impl ObjectiveName {
    /// The name as `--objective` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fudge => "fudge",
            Self::Q => "q",
        }
    }
}

/// Flags of `infalign train-scorer`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::common::ModelArgs,
    /// Scored rollouts (JSONL with prompt, completion, reward; tokens and finish if present).
    #[arg(long)]
    pub rollouts: PathBuf,
    /// The scorer's training objective (`--method` is an older spelling).
    #[arg(long, value_enum, default_value = "q", alias = "method")]
    pub objective: ObjectiveName,
    /// Train on the calibrated reward (the rollouts serve as their own reference,
    /// leave-one-out) instead of the raw one.
    #[arg(long)]
    pub calibrate: bool,
    /// Train on Φ(Ĉ) (implies --calibrate).
    #[command(flatten)]
    pub transform: TransformArgs,
    /// Fraction of the prompts held out for the pairwise-accuracy check (0: none).
    #[arg(long, default_value_t = 0.1, value_parser = super::common::holdout_fraction)]
    pub holdout: f64,
    /// More held-out rollouts for the pairwise-accuracy check: a rollouts file (same format as
    /// --rollouts) of prompts that --rollouts does not contain, several rollouts per prompt.
    #[arg(long)]
    pub heldout_rollouts: Option<PathBuf>,
    #[command(flatten)]
    pub run: TrainRunArgs,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let _claim = a.run.claim()?;
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let settings = serde_json::json!({
        "model": path(&a.model.model), "rollouts": a.rollouts.display().to_string(),
        "heldout_rollouts": path(&a.heldout_rollouts), "method": a.objective.name(),
        "calibrate": a.calibrate, "transform": a.transform.transform.map(|t| t.name()), "t": a.transform.t, "holdout": a.holdout,
    });
    a.run.check_settings(&settings)?;
    let mut cfg: ScorerTrainConfig = infalign_core::config::load_config(None, &a.run.set)?;
    cfg.method = match a.objective {
        ObjectiveName::Fudge => ScorerMethod::Fudge,
        ObjectiveName::Q => ScorerMethod::Q,
    };
    let lm = a.model.load(device)?;
    let rows = read_samples(&a.rollouts, true)?;
    let transform = a.transform.parametric()?;
    let shaped = a.calibrate || transform.is_some();
    let all = scorer_rollouts(&rows, &a.rollouts, shaped, transform.as_ref(), &lm)?;
    let held_set = held_out_prompts(rows.iter().map(|r| r.prompt()), a.holdout, 0);
    let (mut data, mut held) = (Vec::with_capacity(all.len()), Vec::new());
    for (prompt, rollout) in all {
        if held_set.contains(&prompt) {
            held.push(rollout);
        } else {
            data.push(rollout);
        }
    }
    // Rollouts of prompts never trained on, scored the same way (calibrated against their own
    // prompt's rollouts).
    let mut heldout_prompts = held_set.len();
    if let Some(path) = &a.heldout_rollouts {
        let extra = read_samples(path, true)?;
        let trained: std::collections::HashSet<&str> = rows.iter().map(|r| r.prompt()).collect();
        if let Some(r) = extra.iter().find(|r| trained.contains(r.prompt())) {
            bail!(
                "{}: prompt {:?} is also in {}: held-out rollouts must come from other prompts",
                path.display(),
                r.prompt(),
                a.rollouts.display()
            );
        }
        heldout_prompts += rewards_by_prompt(&extra).len();
        held.extend(
            scorer_rollouts(&extra, path, shaped, transform.as_ref(), &lm)?
                .into_iter()
                .map(|(_, r)| r),
        );
    }
    let ad = device.clone().autodiff();
    let backbone = LoadedModel::load(&lm.dir, &ad)
        .with_context(|| format!("loading {} for training", lm.dir.display()))?;
    // Every value starts at `value_prior` (0), or at the mean reward (`value_prior_from_data`),
    // or at the largest (`value_prior_from_max`).
    let prior = cfg.prior(&data)?;
    let init = PrefixScorer::from_base_with_prior(
        backbone.model,
        ScorerLayout::VocabWide,
        prior as f32,
        &ad,
    )?;
    let files = a.run.files(&lm.tokenizer);
    let progress = super::common::Progress::new(2);
    let scorer = a.run.with_settings_recorded(&settings, || {
        Ok(train_scorer(
            &cfg,
            &lm.model,
            init,
            &data,
            lm.pad_id,
            device,
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
    let what = format!(
        "{:?} on {} ({})",
        cfg.method,
        a.rollouts.display(),
        match (&transform, shaped) {
            (Some(t), _) => format!("transformed {t:?}"),
            (None, true) => "calibrated".into(),
            _ => "raw reward".into(),
        }
    );
    scorer.save(&a.run.out, &lm.tokenizer, &what)?;
    infalign_core::io::write_json_atomic(a.run.out.join("train_config.json"), &cfg)?;
    let check = classifier_check(&scorer, &held, lm.pad_id, device)?;
    // Each held-out rollout's target and value, to see where the scorer errs.
    let lines: Vec<serde_json::Value> = held
        .iter()
        .zip(&check.values)
        .map(|(r, v)| {
            serde_json::json!({
                "prompt": lm.tokenizer.decode(&r.prompt_ids).unwrap_or_default(),
                "completion_tokens": r.tokens.len(),
                "ends_with_eos": r.tokens.last().is_some_and(|t| lm.eos_ids.contains(t)),
                "target": r.reward,
                "value": v,
            })
        })
        .collect();
    infalign_core::io::write_jsonl_atomic(a.run.out.join("heldout-values.jsonl"), &lines)?;
    let summary = serde_json::json!({
        "value_prior": prior,
        "heldout_prompts": heldout_prompts, "heldout_rollouts": held.len(),
        "heldout_pairs": check.pairs, "heldout_pairwise_accuracy": check.pairwise_accuracy,
        "heldout_pairwise_accuracy_interval": check.pairwise_accuracy_interval,
        "heldout_mse": check.mse,
    });
    infalign_core::io::write_json_atomic(a.run.out.join("summary.json"), &summary)?;
    println!("{summary}");
    eprintln!("wrote prefix scorer to {}", a.run.out.display());
    Ok(())
}

/// Each row of `rows` (read from `path`) as a scorer rollout with its prompt, its reward raw or
/// (with `shaped`) calibrated leave-one-out against the other rollouts of its prompt and then
/// transformed. Rows with an empty completion are skipped with a warning.
fn scorer_rollouts(
    rows: &[SampleRow],
    path: &std::path::Path,
    shaped: bool,
    transform: Option<&Transform>,
    lm: &LoadedModel,
) -> Result<Vec<(String, ScorerRollout)>> {
    let calibrator = if shaped {
        if let Some((prompt, _)) = rewards_by_prompt(rows)
            .into_iter()
            .find(|(_, r)| r.len() < 2)
        {
            bail!(
                "{}: prompt {prompt:?} has one rollout; calibration needs several per prompt",
                path.display()
            );
        }
        Some(calibrator_of(rows, transform, false)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut reward = r.reward().expect("checked on read");
        if let Some(cal) = &calibrator {
            reward = cal.calibrate_leave_one_out(r.prompt(), reward)?;
            if let Some(t) = transform {
                reward = t.apply(reward);
            }
        }
        let (prompt_ids, tokens) = r.model_ids(path, lm)?;
        if tokens.is_empty() {
            tracing::warn!(file = %path.display(), line = r.line, "skipping a rollout with an empty completion");
            continue;
        }
        // Truncated rollouts are treated as ending where they stop.
        let rollout = ScorerRollout {
            prompt_ids,
            tokens,
            reward,
            terminal: true,
        };
        out.push((r.prompt().to_string(), rollout));
    }
    Ok(out)
}
