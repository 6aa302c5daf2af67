//! `infalign decode`: one decoding strategy over prompts, samples written as JSONL with the
//! keys TRL uses (`prompt`, `completion`, `reward`) plus tokens, finish and log-probs.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use infalign_core::{Device, Seed};
use infalign_decoding::{GenerationConfig, Generator, Sample, ScorerMix, StrategyConfig};
use infalign_models::{LoadedModel, PrefixScorer, Tokenizer};
use infalign_rewards::{Reward, reward_from_spec_on};

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
    /// Candidates per prompt of bon, won and soft-bon (the N of best-of-N; default 1).
    #[arg(long)]
    pub n: Option<usize>,
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
    /// Samples per prompt of sample, greedy and cd-token (default 1; an older spelling was
    /// `--n`, still read for these strategies).
    #[arg(long, value_parser = super::common::positive_count)]
    pub samples: Option<usize>,
    /// Output JSONL file.
    #[arg(long)]
    pub out: PathBuf,
}

impl StrategyArgs {
    /// `--n`, default 1.
    fn candidates(&self) -> usize {
        self.n.unwrap_or(1)
    }

    /// The strategy these flags name, with its parameters.
    pub fn config(&self) -> StrategyConfig {
        match self.strategy {
            Strategy::Sample => StrategyConfig::Sample,
            Strategy::Greedy => StrategyConfig::Greedy,
            Strategy::Bon => StrategyConfig::BestOfN {
                n: self.candidates(),
            },
            Strategy::Won => StrategyConfig::WorstOfN {
                n: self.candidates(),
            },
            Strategy::SoftBon => StrategyConfig::SoftBestOfN {
                n: self.candidates(),
                tau: self.tau,
            },
            Strategy::CdToken => StrategyConfig::TokenwiseCd {
                lambda: self.lambda,
                top_k: self.cd_top_k,
            },
            Strategy::CdBlock => StrategyConfig::BlockwiseCd {
                k: self.k,
                m: self.m,
                random_ties: self.random_ties,
            },
        }
    }
}

/// A strategy ready to decode: its config, and the reward and scorers it names, loaded and
/// checked.
pub struct Decoder {
    /// The strategy and its parameters (change them between calls to sweep).
    pub config: StrategyConfig,
    /// Samples per prompt of strategies that sample each prompt independently.
    pub n: usize,
    reward: Option<Box<dyn Reward>>,
    scorers: Vec<PrefixScorer>,
    weights: Vec<f32>,
    scorer_dirs: Vec<PathBuf>,
    /// Each scorer's tokenizer, to check against the model it steers.
    scorer_tokenizers: Vec<Tokenizer>,
}

impl Decoder {
    /// Loads what `args` names; a strategy missing its reward or scorer is an error naming the
    /// flag.
    pub fn new(args: &StrategyArgs, device: &Device) -> Result<Self> {
        let config = args.config();
        config.validate()?;
        let reward: Option<Box<dyn Reward>> = args
            .reward
            .as_deref()
            .map(|r| reward_from_spec_on(r, device))
            .transpose()?;
        if config.needs_reward() && reward.is_none() {
            bail!(
                "--strategy {:?} needs --reward (for example --reward sentiment)",
                args.strategy
            );
        }
        if config.needs_scorer() && args.scorer.is_empty() {
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
        let (scorers, scorer_tokenizers) = args
            .scorer
            .iter()
            .map(|d| {
                PrefixScorer::load(d, device)
                    .map(|(s, t, _)| (s, t))
                    .with_context(|| format!("loading prefix scorer {}", d.display()))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let weights = if args.weight.is_empty() {
            vec![1.0; args.scorer.len()]
        } else {
            args.weight.clone()
        };
        Ok(Self {
            config,
            n: 1,
            reward,
            scorers,
            weights,
            scorer_dirs: args.scorer.clone(),
            scorer_tokenizers,
        })
    }

    /// Refuses a model whose tokenizer differs from a scorer's: the scorer's values index the
    /// model's token ids.
    pub fn check_model(&self, lm: &LoadedModel) -> Result<()> {
        for (t, dir) in self.scorer_tokenizers.iter().zip(&self.scorer_dirs) {
            if !t.same_vocab(&lm.tokenizer) {
                bail!(
                    "prefix scorer {} and model {} have different tokenizers: the scorer's \
                     values would score other tokens than the model samples",
                    dir.display(),
                    lm.dir.display()
                );
            }
        }
        Ok(())
    }

    /// Decodes every prompt; every sample gets the reward when there is one.
    pub fn decode(
        &self,
        generator: &Generator<'_>,
        prompts: &[String],
        sampling: &SamplingArgs,
        seed: Seed,
    ) -> Result<Vec<Sample>> {
        let cfg = GenerationConfig {
            max_new_tokens: sampling.max_new_tokens,
            n: self.config.samples_per_prompt(self.n).unwrap_or(1),
            sampling: sampling.sampling(false),
            stop: sampling.stop.clone(),
            prompt_batch: sampling.batch,
            max_rows: 0,
        };
        let mix = if self.scorers.is_empty() {
            None
        } else {
            Some(ScorerMix::new(
                self.weights.iter().copied().zip(&self.scorers).collect(),
                generator.model().model.config().vocab_size(),
                generator.device().clone(),
            )?)
        };
        let mut strategy = self.config.init(self.reward.as_deref(), mix)?;
        let mut samples = strategy.decode(generator, prompts, &cfg, seed)?;
        if let Some(r) = &self.reward {
            for s in samples.iter_mut().filter(|s| s.reward.is_none()) {
                s.reward = Some(r.score(&s.reward_input())?);
            }
        }
        Ok(samples)
    }
}

/// The JSONL row of a decoded sample.
pub fn sample_row(s: &Sample, strategy: &StrategyConfig) -> serde_json::Value {
    serde_json::json!({
        "prompt": s.prompt,
        "completion": s.completion,
        "reward": s.reward,
        "tokens": s.tokens,
        "finish": s.finish,
        "logprob": s.policy_logprob(),
        "base_logprob": s.base_logprob(),
        "path_kl": s.path_kl(),
        "strategy": strategy.id(),
    })
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    super::common::refuse_output_over_input(
        "--out",
        &a.out,
        &[("--prompts", a.input.prompts.prompts.as_deref())],
    )?;
    let prompts = a.input.prompts.collect()?;
    let mut decoder = Decoder::new(&a.strategy, device)?;
    if decoder.config.samples_per_prompt(1).is_some() {
        decoder.n = match (a.samples, a.strategy.n) {
            (Some(s), _) => s,
            (None, Some(n)) => {
                eprintln!(
                    "note: --n {n} with --strategy {:?} reads as --samples {n} (samples per \
                     prompt); --n is best-of-N's N",
                    a.strategy.strategy
                );
                n
            }
            (None, None) => 1,
        };
    } else if a.samples.is_some() {
        bail!(
            "--samples is for sample, greedy and cd-token; --strategy {:?} yields one sample per \
             prompt (repeat the prompt for more)",
            a.strategy.strategy
        );
    }
    let lm = a.input.model.load(device)?;
    decoder.check_model(&lm)?;
    let generator = Generator::new(&lm, device.clone());
    let samples = decoder.decode(
        &generator,
        &prompts,
        &a.input.sampling,
        Seed(a.input.sampling.seed),
    )?;
    let rows: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| sample_row(s, &decoder.config))
        .collect();
    infalign_core::io::write_jsonl_atomic(&a.out, &rows)?;
    eprintln!("wrote {} samples to {}", rows.len(), a.out.display());
    Ok(())
}
