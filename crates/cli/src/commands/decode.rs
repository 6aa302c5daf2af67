//! `infalign decode`: one decoding strategy over prompts, samples written as JSONL with the
//! keys TRL uses (`prompt`, `completion`, `reward`) plus tokens, finish and log-probs.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use infalign_core::{Device, Seed};
use infalign_decoding::{
    BestOfN, BlockwiseCd, GenerationConfig, Generator, Sample, ScorerMix, SoftBestOfN, TieBreak,
    TokenwiseCd, WorstOfN,
};
use infalign_models::PrefixScorer;
use infalign_rewards::{Reward, RewardInput, reward_from_spec_on};

use super::common::{DecodeInputs, SamplingArgs};

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

/// The strategy and its parameters (shared by `decode` and `sweep`).
#[derive(Debug, Clone, clap::Args)]
pub struct StrategyArgs {
    /// Decoding strategy.
    #[arg(long, value_enum, default_value = "sample")]
    pub strategy: Strategy,
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
}

/// Flags of `infalign decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub strategy: StrategyArgs,
    #[command(flatten)]
    pub input: DecodeInputs,
    /// Output JSONL file.
    #[arg(long)]
    pub out: PathBuf,
}

/// A strategy ready to decode: its reward and scorers loaded and checked.
pub struct Decoder {
    args: StrategyArgs,
    reward: Option<Box<dyn Reward>>,
    scorers: Vec<PrefixScorer>,
}

impl Decoder {
    /// Loads what `args` names; a strategy missing its reward or scorer is an error naming the
    /// flag.
    pub fn new(args: StrategyArgs, device: &Device) -> Result<Self> {
        let needs_reward = matches!(
            args.strategy,
            Strategy::Bon | Strategy::Won | Strategy::SoftBon
        );
        let needs_scorer = matches!(args.strategy, Strategy::CdToken | Strategy::CdBlock);
        let reward: Option<Box<dyn Reward>> = args
            .reward
            .as_deref()
            .map(|r| reward_from_spec_on(r, device))
            .transpose()?;
        if needs_reward && reward.is_none() {
            bail!(
                "--strategy {:?} needs --reward (for example --reward sentiment)",
                args.strategy
            );
        }
        if needs_scorer && args.scorer.is_empty() {
            bail!(
                "--strategy {:?} needs --scorer DIR (a prefix scorer from `infalign train-scorer`)",
                args.strategy
            );
        }
        if !args.weight.is_empty() && args.weight.len() != args.scorer.len() {
            bail!(
                "{} --weight values for {} --scorer directories",
                args.weight.len(),
                args.scorer.len()
            );
        }
        let scorers = args
            .scorer
            .iter()
            .map(|d| {
                PrefixScorer::load(d, device)
                    .map(|(s, _, _)| s)
                    .with_context(|| format!("loading prefix scorer {}", d.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            args,
            reward,
            scorers,
        })
    }

    /// The strategy's parameters (change them between calls to sweep).
    pub fn args_mut(&mut self) -> &mut StrategyArgs {
        &mut self.args
    }

    /// The strategy's parameters.
    pub fn args(&self) -> &StrategyArgs {
        &self.args
    }

    /// Whether one call yields `n` samples per prompt (the others yield one).
    pub fn samples_per_call(&self) -> usize {
        match self.args.strategy {
            Strategy::Sample | Strategy::Greedy | Strategy::CdToken => self.args.n,
            _ => 1,
        }
    }

    /// Decodes every prompt; every sample gets the reward when there is one.
    pub fn decode(
        &self,
        generator: &Generator<'_>,
        prompts: &[String],
        sampling: &SamplingArgs,
        seed: Seed,
    ) -> Result<Vec<Sample>> {
        let a = &self.args;
        let lm = generator.model();
        let device = generator.device();
        let cfg = GenerationConfig {
            max_new_tokens: sampling.max_new_tokens,
            n: self.samples_per_call(),
            sampling: sampling.sampling(a.strategy == Strategy::Greedy),
            stop: sampling.stop.clone(),
            prompt_batch: sampling.batch,
            max_rows: 0,
        };
        let weights: Vec<f32> = if a.weight.is_empty() {
            vec![1.0; self.scorers.len()]
        } else {
            a.weight.clone()
        };
        let mix = || {
            ScorerMix::new(
                weights.iter().copied().zip(self.scorers.iter()).collect(),
                lm.model.config().vocab_size(),
                device.clone(),
            )
        };
        let reward = || self.reward.as_deref().expect("checked in Decoder::new");
        let mut samples = match a.strategy {
            Strategy::Sample | Strategy::Greedy => generator.generate(prompts, &cfg, seed)?,
            Strategy::Bon => BestOfN {
                n: a.n,
                reward: reward(),
            }
            .decode(generator, prompts, &cfg, seed)?,
            Strategy::Won => WorstOfN {
                n: a.n,
                reward: reward(),
            }
            .decode(generator, prompts, &cfg, seed)?,
            Strategy::SoftBon => SoftBestOfN {
                n: a.n,
                tau: a.tau,
                reward: reward(),
            }
            .decode(generator, prompts, &cfg, seed)?,
            Strategy::CdToken => TokenwiseCd::new(a.lambda, a.cd_top_k, mix()?)?
                .decode(generator, prompts, &cfg, seed)?,
            Strategy::CdBlock => {
                let tie = if a.random_ties {
                    TieBreak::Random
                } else {
                    TieBreak::First
                };
                BlockwiseCd::new(a.k, a.m, tie, mix()?)?.decode(generator, prompts, &cfg, seed)?
            }
        };
        if let Some(r) = &self.reward {
            for s in samples.iter_mut().filter(|s| s.reward.is_none()) {
                s.reward = Some(r.score(&RewardInput {
                    prompt: &s.prompt,
                    completion: &s.completion,
                    tokens: s.tokens.len(),
                    ids: &s.tokens,
                })?);
            }
        }
        Ok(samples)
    }
}

/// The JSONL row of a decoded sample.
pub fn sample_row(s: &Sample, strategy: Strategy) -> serde_json::Value {
    serde_json::json!({
        "prompt": s.prompt,
        "completion": s.completion,
        "reward": s.reward,
        "tokens": s.tokens,
        "finish": s.finish,
        "logprob": s.policy_logprob(),
        "base_logprob": s.base_logprob(),
        "path_kl": s.path_kl(),
        "strategy": format!("{strategy:?}").to_lowercase(),
    })
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    super::common::refuse_output_over_input(
        "--out",
        &a.out,
        &[("--prompts", a.input.prompts.prompts.as_deref())],
    )?;
    let prompts = a.input.prompts.collect()?;
    let decoder = Decoder::new(a.strategy, device)?;
    let lm = crate::load_model(a.input.model, device)?;
    let generator = Generator::new(&lm, device.clone());
    let samples = decoder.decode(
        &generator,
        &prompts,
        &a.input.sampling,
        Seed(a.input.sampling.seed),
    )?;
    let strategy = decoder.args().strategy;
    let rows: Vec<serde_json::Value> = samples.iter().map(|s| sample_row(s, strategy)).collect();
    infalign_core::io::write_jsonl_atomic(&a.out, &rows)?;
    eprintln!("wrote {} samples to {}", rows.len(), a.out.display());
    Ok(())
}
