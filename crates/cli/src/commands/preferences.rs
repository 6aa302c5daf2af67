//! `infalign preferences`: synthetic preference pairs labelled by a gold reward with
//! Bradley-Terry noise, from samples with two or more completions per prompt.

use std::path::PathBuf;

use anyhow::Result;
use infalign_core::Seed;
use infalign_rewards::preferences::label_pairs;
use infalign_rewards::{RewardInput, reward_from_spec};

use super::samples::read_samples;

/// Flags of `infalign preferences`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Samples JSONL (for example from `infalign rollouts`); consecutive completions of the
    /// same prompt are paired.
    #[arg(long)]
    pub samples: PathBuf,
    /// The gold reward spec.
    #[arg(long)]
    pub reward: String,
    /// Bradley-Terry temperature of the synthetic labels (0: noiseless; `--temperature` is an
    /// older spelling).
    #[arg(
        long = "label-temperature",
        alias = "temperature",
        default_value_t = 1.0
    )]
    pub temperature: f64,
    /// Leave out pairs whose gold rewards are equal: their label is a coin flip whatever the
    /// temperature, noise a proxy cannot learn from (with a sparse reward, most pairs).
    #[arg(long)]
    pub skip_ties: bool,
    /// Seed of the labels.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output JSONL (`prompt`, `chosen`, `rejected`).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    super::common::refuse_output_over_input("--out", &a.out, &[("--samples", Some(&a.samples))])?;
    let gold = reward_from_spec(&a.reward)?;
    let rows = read_samples(&a.samples, false)?;
    let mut pairs = Vec::new();
    for w in rows.chunks(2) {
        if let [x, y] = w
            && x.prompt() == y.prompt()
        {
            // The gold reward reads the row's token ids where the samples have them (as
            // `rollouts` writes them), else counts words.
            let score = |row: &super::samples::SampleRow| -> Result<f64> {
                let ids = row
                    .tokens()
                    .map_err(anyhow::Error::msg)?
                    .unwrap_or_default();
                let c = row.completion();
                let tokens = if ids.is_empty() {
                    c.split_whitespace().count()
                } else {
                    ids.len()
                };
                Ok(gold.score(&RewardInput {
                    prompt: x.prompt(),
                    completion: c,
                    tokens,
                    ids: &ids,
                })?)
            };
            pairs.push((
                x.prompt().to_string(),
                x.completion().to_string(),
                score(x)?,
                y.completion().to_string(),
                score(y)?,
            ));
        }
    }
    anyhow::ensure!(
        !pairs.is_empty(),
        "{}: no two consecutive samples share a prompt",
        a.samples.display()
    );
    if a.skip_ties {
        let all = pairs.len();
        pairs.retain(|(_, _, ra, _, rb)| ra != rb);
        eprintln!(
            "left out {} of {all} pairs with equal gold rewards",
            all - pairs.len()
        );
        anyhow::ensure!(
            !pairs.is_empty(),
            "{}: every pair has equal gold rewards",
            a.samples.display()
        );
    }
    let prefs = label_pairs(&pairs, a.temperature, Seed(a.seed))?;
    infalign_core::io::write_jsonl_atomic(&a.out, &prefs)?;
    eprintln!(
        "wrote {} preference pairs to {}",
        prefs.len(),
        a.out.display()
    );
    Ok(())
}
