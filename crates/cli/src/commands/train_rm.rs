//! `infalign train-rm`: a Bradley-Terry reward model from preference JSONL
//! (`{"prompt","chosen","rejected"}`, TRL's keys), initialised from the base model; reports
//! pairwise accuracy on a held-out split.

use std::path::PathBuf;

use anyhow::{Context, Result};
use infalign_core::Device;
use infalign_models::{LoadedModel, PrefixScorer, RunFiles, ScorerLayout};
use infalign_rewards::RewardModel;
use infalign_rewards::bradley_terry::{
    BradleyTerryConfig, EncodedPair, Preference, pairwise_accuracy, train_bradley_terry,
};

/// Flags of `infalign train-rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base model directory; default: the shipped one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Preference JSONL.
    #[arg(long)]
    pub data: PathBuf,
    /// Fraction of pairs held out for accuracy.
    #[arg(long, default_value_t = 0.1)]
    pub holdout: f64,
    /// Override a key of BradleyTerryConfig, e.g. `--set steps=500` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output directory (the reward model, metrics.jsonl, checkpoint/).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from `OUT/checkpoint` (written every `save_every` steps and at the end); ends
    /// with the weights an uninterrupted run would have.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let cfg: BradleyTerryConfig = infalign_core::config::load_config(None, &a.set)?;
    let prefs: Vec<Preference> = infalign_core::io::read_jsonl(&a.data)?;
    anyhow::ensure!(
        prefs.len() >= 2,
        "{}: need at least two preference pairs",
        a.data.display()
    );
    let lm = crate::load_model(a.model, device)?;
    let encode = |p: &Preference| -> Result<EncodedPair> {
        let prompt = lm.tokenizer.encode(&p.prompt)?;
        let join = |c: &str| -> Result<Vec<u32>> {
            let mut ids = prompt.clone();
            ids.extend(lm.tokenizer.encode(c)?);
            Ok(ids)
        };
        Ok(EncodedPair {
            chosen: join(&p.chosen)?,
            rejected: join(&p.rejected)?,
        })
    };
    let pairs = prefs.iter().map(encode).collect::<Result<Vec<_>>>()?;
    let n_hold = ((pairs.len() as f64 * a.holdout).round() as usize).clamp(1, pairs.len() - 1);
    let (held, train) = pairs.split_at(n_hold);
    let ad = device.clone().autodiff();
    let backbone =
        LoadedModel::load(&lm.dir, &ad).with_context(|| format!("loading {}", lm.dir.display()))?;
    let net = PrefixScorer::from_base(backbone.model, ScorerLayout::Scalar, &ad)?;
    let files = RunFiles {
        dir: &a.out,
        tokenizer: &lm.tokenizer,
        resume: a.resume,
    };
    let net = train_bradley_terry(&cfg, net, train, lm.pad_id, Some(files), |_, _| {})?;
    if cfg.halts_early() {
        eprintln!(
            "halted after step {}; continue with --resume",
            cfg.halt_after
        );
        return Ok(());
    }
    let rm = RewardModel::new(net, lm.tokenizer.clone(), device.clone())?;
    let chosen = rm.score_ids(&held.iter().map(|p| p.chosen.clone()).collect::<Vec<_>>())?;
    let rejected = rm.score_ids(&held.iter().map(|p| p.rejected.clone()).collect::<Vec<_>>())?;
    let acc = pairwise_accuracy(&chosen, &rejected);
    rm.net().save(
        &a.out,
        &lm.tokenizer,
        &format!("bradley-terry on {}", a.data.display()),
    )?;
    let summary = serde_json::json!({"heldout_pairs": held.len(), "heldout_accuracy": acc, "train_pairs": train.len()});
    infalign_core::io::write_json_atomic(a.out.join("summary.json"), &summary)?;
    println!("{summary}");
    Ok(())
}
