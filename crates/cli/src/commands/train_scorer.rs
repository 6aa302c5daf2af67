//! `infalign train-scorer`: trains a CD prefix scorer (CD-FUDGE or CD-Q) from scored rollouts,
//! on the raw reward, the calibrated reward, or a transform of it. A fraction of the prompts is
//! held out; the scorer's value of their complete rollouts is checked as a classifier (the CD
//! paper's Table 1): the pairwise accuracy over same-prompt pairs with different rewards, and
//! the mean squared error against the reward, in `summary.json`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use infalign_core::Device;
use infalign_models::{LoadedModel, PrefixScorer, RunFiles, ScorerLayout};
use infalign_rewards::{Calibrator, RewardTransform, Transform};
use infalign_rl::{ScorerMethod, ScorerRollout, ScorerTrainConfig, classifier_check, train_scorer};

use super::common::{TrainRunArgs, held_out_prompts};
use super::samples::{read_samples, rewards_by_prompt};

/// Flags of `infalign train-scorer`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base model directory; default: the shipped one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Scored rollouts (JSONL with prompt, completion, reward; tokens and finish if present).
    #[arg(long)]
    pub rollouts: PathBuf,
    /// fudge (CD-FUDGE, on-policy rollouts) or q (CD-Q).
    #[arg(long, default_value = "q")]
    pub method: String,
    /// Train on the calibrated reward (the rollouts serve as their own reference,
    /// leave-one-out) instead of the raw one.
    #[arg(long)]
    pub calibrate: bool,
    /// Train on Φ(Ĉ): identity, log, exp, negexp or power (implies --calibrate).
    #[arg(long)]
    pub transform: Option<String>,
    /// Parameter of the transform.
    #[arg(long)]
    pub t: Option<f64>,
    /// Fraction of the prompts held out for the pairwise-accuracy check (0: none).
    #[arg(long, default_value_t = 0.1)]
    pub holdout: f64,
    #[command(flatten)]
    pub run: TrainRunArgs,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let mut cfg: ScorerTrainConfig = infalign_core::config::load_config(None, &a.run.set)?;
    cfg.method = match a.method.as_str() {
        "fudge" => ScorerMethod::Fudge,
        "q" => ScorerMethod::Q,
        other => bail!("--method `{other}`: expected fudge or q"),
    };
    let lm = crate::load_model(a.model, device)?;
    let rows = read_samples(&a.rollouts, true)?;
    let transform = a
        .transform
        .as_deref()
        .map(|n| Transform::from_name(n, a.t))
        .transpose()?;
    let calibrator = if a.calibrate || transform.is_some() {
        let mut cal = Calibrator::default();
        for (prompt, rewards) in rewards_by_prompt(&rows) {
            if rewards.len() < 2 {
                bail!(
                    "{}: prompt {prompt:?} has one rollout; calibration needs several per prompt",
                    a.rollouts.display()
                );
            }
            cal.insert(&prompt, rewards)?;
        }
        Some(cal)
    } else {
        None
    };
    let held_set = held_out_prompts(rows.iter().map(|r| r.prompt()), a.holdout, 0);
    let (mut data, mut held) = (Vec::with_capacity(rows.len()), Vec::new());
    for (i, r) in rows.iter().enumerate() {
        let mut reward = r.reward().expect("checked on read");
        if let Some(cal) = &calibrator {
            reward = cal.calibrate_leave_one_out(r.prompt(), reward)?;
            if let Some(t) = &transform {
                reward = t.apply(reward);
            }
        }
        let prompt_ids = lm.tokenizer.encode(r.prompt())?;
        let tokens = match r.tokens() {
            Some(t) => t,
            None => lm.tokenizer.encode(r.completion())?,
        };
        if tokens.is_empty() {
            tracing::warn!(line = i + 1, "skipping a rollout with an empty completion");
            continue;
        }
        // Truncated rollouts are treated as ending where they stop.
        let rollout = ScorerRollout {
            prompt_ids,
            tokens,
            reward,
            terminal: true,
        };
        if held_set.contains(r.prompt()) {
            held.push(rollout);
        } else {
            data.push(rollout);
        }
    }
    let ad = device.clone().autodiff();
    let backbone = LoadedModel::load(&lm.dir, &ad)
        .with_context(|| format!("loading {} for training", lm.dir.display()))?;
    let init = PrefixScorer::from_base(backbone.model, ScorerLayout::VocabWide, &ad)?;
    let files = RunFiles {
        dir: &a.run.out,
        tokenizer: &lm.tokenizer,
        resume: a.run.resume,
    };
    let scorer = train_scorer(&cfg, &lm.model, init, &data, lm.pad_id, device, Some(files))?;
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
        match (&transform, &calibrator) {
            (Some(t), _) => format!("transformed {t:?}"),
            (None, Some(_)) => "calibrated".into(),
            _ => "raw reward".into(),
        }
    );
    scorer.save(&a.run.out, &lm.tokenizer, &what)?;
    infalign_core::io::write_json_atomic(a.run.out.join("train_config.json"), &cfg)?;
    let check = classifier_check(&scorer, &held, lm.pad_id, device)?;
    let summary = serde_json::json!({
        "heldout_prompts": held_set.len(), "heldout_rollouts": held.len(),
        "heldout_pairs": check.pairs, "heldout_pairwise_accuracy": check.pairwise_accuracy,
        "heldout_mse": check.mse,
    });
    infalign_core::io::write_json_atomic(a.run.out.join("summary.json"), &summary)?;
    println!("{summary}");
    eprintln!("wrote prefix scorer to {}", a.run.out.display());
    Ok(())
}
