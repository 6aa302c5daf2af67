//! `infalign decode`: one decoding strategy over prompts, samples written as JSONL with the
//! keys TRL uses (`prompt`, `completion`, `reward`) plus tokens, finish and log-probs.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use infalign_core::{Device, Seed};
use infalign_decoding::{
    BestOfN, BlockwiseCd, GenerationConfig, Generator, ScorerMix, SoftBestOfN, TieBreak,
    TokenwiseCd, WorstOfN,
};
use infalign_models::PrefixScorer;
use infalign_rewards::{Reward, RewardInput, reward_from_spec};

use super::common::{PromptArgs, SamplingArgs};

/// The strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Ancestral sampling.
    Sample,
    /// The most likely token each step.
    Greedy,
    /// Best of N by a reward.
    Bon,
    /// Worst of N by a reward.
    Won,
    /// Soft best-of-N: pick i with probability ∝ exp(r_i / tau).
    SoftBon,
    /// Tokenwise controlled decoding: p · exp(λ V).
    CdToken,
    /// Blockwise controlled decoding: best of K blocks of M tokens by V.
    CdBlock,
}

/// Flags of `infalign decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Decoding strategy.
    #[arg(long, value_enum, default_value = "sample")]
    pub strategy: Strategy,
    /// Model directory; default: the shipped one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Samples per prompt (sample, greedy, cd-token) or candidates (bon, won, soft-bon).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Reward spec, e.g. `sentiment`, `length(t_max=64)`, `sentiment - 0.05*length`. Scores
    /// every sample; required by bon, won and soft-bon.
    #[arg(long)]
    pub reward: Option<String>,
    /// Soft best-of-N temperature.
    #[arg(long, default_value_t = 1.0)]
    pub tau: f64,
    /// Tokenwise CD strength λ.
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f32,
    /// Tokenwise CD: restrict to the base model's top-k tokens (not the paper's default).
    #[arg(long)]
    pub cd_top_k: Option<usize>,
    /// Blockwise CD: candidates per block.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Blockwise CD: tokens per block.
    #[arg(long, default_value_t = 8)]
    pub m: usize,
    /// Blockwise CD: break ties at random instead of taking the first.
    #[arg(long)]
    pub random_ties: bool,
    /// Prefix scorer directory (repeatable; combined linearly with --weight).
    #[arg(long)]
    pub scorer: Vec<PathBuf>,
    /// Weight of each --scorer, in order (default 1 each; may be negative).
    #[arg(long, allow_negative_numbers = true)]
    pub weight: Vec<f32>,
    /// Output JSONL file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let prompts = a.prompts.collect()?;
    let needs_reward = matches!(
        a.strategy,
        Strategy::Bon | Strategy::Won | Strategy::SoftBon
    );
    let needs_scorer = matches!(a.strategy, Strategy::CdToken | Strategy::CdBlock);
    let reward: Option<Box<dyn Reward>> = a.reward.as_deref().map(reward_from_spec).transpose()?;
    if needs_reward && reward.is_none() {
        bail!(
            "--strategy {:?} needs --reward (for example --reward sentiment)",
            a.strategy
        );
    }
    if needs_scorer && a.scorer.is_empty() {
        bail!(
            "--strategy {:?} needs --scorer DIR (a prefix scorer from `infalign train-scorer`)",
            a.strategy
        );
    }
    if !a.weight.is_empty() && a.weight.len() != a.scorer.len() {
        bail!(
            "{} --weight values for {} --scorer directories",
            a.weight.len(),
            a.scorer.len()
        );
    }
    let lm = crate::load_model(a.model, device)?;
    let generator = Generator::new(&lm, device.clone());
    let cfg = GenerationConfig {
        max_new_tokens: a.sampling.max_new_tokens,
        n: a.n,
        sampling: a.sampling.sampling(a.strategy == Strategy::Greedy),
        stop: Vec::new(),
        prompt_batch: a.sampling.batch,
    };
    let scorers = a
        .scorer
        .iter()
        .map(|d| {
            PrefixScorer::load(d, device)
                .map(|(s, _, _)| s)
                .with_context(|| format!("loading prefix scorer {}", d.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let weights: Vec<f32> = if a.weight.is_empty() {
        vec![1.0; scorers.len()]
    } else {
        a.weight.clone()
    };
    let mix = || {
        ScorerMix::new(
            weights.iter().copied().zip(scorers.iter()).collect(),
            lm.model.config().vocab_size(),
            device.clone(),
        )
    };
    let seed = Seed(a.sampling.seed);
    let mut samples = match a.strategy {
        Strategy::Sample | Strategy::Greedy => generator.generate(&prompts, &cfg, seed)?,
        Strategy::Bon => BestOfN {
            n: a.n,
            reward: reward.as_deref().expect("checked"),
        }
        .decode(&generator, &prompts, &cfg, seed)?,
        Strategy::Won => WorstOfN {
            n: a.n,
            reward: reward.as_deref().expect("checked"),
        }
        .decode(&generator, &prompts, &cfg, seed)?,
        Strategy::SoftBon => SoftBestOfN {
            n: a.n,
            tau: a.tau,
            reward: reward.as_deref().expect("checked"),
        }
        .decode(&generator, &prompts, &cfg, seed)?,
        Strategy::CdToken => TokenwiseCd::new(a.lambda, a.cd_top_k, mix()?)?
            .decode(&generator, &prompts, &cfg, seed)?,
        Strategy::CdBlock => {
            let tie = if a.random_ties {
                TieBreak::Random
            } else {
                TieBreak::First
            };
            BlockwiseCd::new(a.k, a.m, tie, mix()?)?.decode(&generator, &prompts, &cfg, seed)?
        }
    };
    if let Some(r) = &reward {
        for s in samples.iter_mut().filter(|s| s.reward.is_none()) {
            s.reward = Some(r.score(&RewardInput {
                prompt: &s.prompt,
                completion: &s.completion,
                tokens: s.tokens.len(),
                ids: &s.tokens,
            })?);
        }
    }
    let rows: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| {
            serde_json::json!({
                "prompt": s.prompt,
                "completion": s.completion,
                "reward": s.reward,
                "tokens": s.tokens,
                "finish": s.finish,
                "logprob": s.policy_logprob(),
                "base_logprob": s.base_logprob(),
                "path_kl": s.path_kl(),
                "strategy": format!("{:?}", a.strategy).to_lowercase(),
            })
        })
        .collect();
    infalign_core::io::write_jsonl_atomic(&a.out, &rows)?;
    eprintln!("wrote {} samples to {}", rows.len(), a.out.display());
    Ok(())
}
