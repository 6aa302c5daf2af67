//! `infalign sweep`: one decoding strategy at several values of one parameter (λ of tokenwise
//! CD, K or M of blockwise CD, N of best/worst-of-N, τ of soft best-of-N, the sampling
//! temperature), each evaluated against the same base samples: mean reward, standard and
//! inference-time win rates, and KL (exact per-token for tokenwise decoders, the bound for
//! selection procedures). Writes samples, `points.jsonl` and a report with plots into `--out`.
//!
//! Policies aligned at several β are swept by running `align` per β and `eval --param beta`
//! into one directory; `infalign report --run DIR` then draws them together.

use std::path::PathBuf;

use anyhow::{Result, bail};
use infalign_core::{Device, Seed};
use infalign_decoding::{
    Generator, KlProvenance, Sample, StrategyConfig, completion_logprobs, score_samples,
};
use infalign_eval::Ties;
use infalign_eval::analytic::Procedure;
use infalign_eval::curve::{Comparison, CurvePoint, Kl, KlKind, SampleStats};
use infalign_eval::kl::{Estimate, best_of_n_bound, blockwise_bound};
use infalign_eval::report::{Report, add_curves};
use infalign_rewards::{Reward, reward_from_spec_on};

use super::common::{DecodeInputs, SamplingArgs};
use super::decode::{Decoder, Strategy, StrategyArgs, sample_row};

/// The parameters a sweep can vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Param {
    /// Tokenwise CD strength (cd-token).
    Lambda,
    /// Blockwise CD candidates per block (cd-block).
    K,
    /// Blockwise CD block length (cd-block).
    M,
    /// Candidates of best-of-N, worst-of-N, soft best-of-N.
    N,
    /// Soft best-of-N temperature.
    Tau,
    /// Sampling temperature (sample, cd-token).
    Temperature,
}

/// Flags of `infalign sweep`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub strategy: StrategyArgs,
    /// The parameter to vary.
    #[arg(long, value_enum)]
    pub param: Param,
    /// Its values, comma-separated (e.g. `0,1,2,4,8`).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_negative_numbers = true
    )]
    pub values: Vec<f64>,
    /// Reward spec that judges win rates and mean rewards; default: `--reward`. With a proxy
    /// reward model as `--reward` and the gold reward here, a best-of-N sweep shows reward
    /// hacking.
    #[arg(long)]
    pub judge: Option<String>,
    /// Further reward specs whose means are recorded per value (repeatable), e.g. a length
    /// next to a judged sentiment.
    #[arg(long)]
    pub measure: Vec<String>,
    /// Method name in tables and legends; default: the strategy's.
    #[arg(long)]
    pub method: Option<String>,
    #[command(flatten)]
    pub input: DecodeInputs,
    /// The base model: its samples are the comparison side of every win rate and the KL is
    /// measured against it; default: `--model`. With an aligned policy as `--model` (CD on top
    /// of a DPO policy, or best-of-N from it) the KL is the decoder's against the policy plus
    /// the policy's against this base, `E[log π(y) − log π_base(y)]` over the decoded samples:
    /// the chain rule, so the sum is unbiased where the decoder's part is exact (its policy share
    /// is a k1 estimate with its standard error).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Which of several training runs of `--model` (different seeds) this decodes from, as
    /// `eval --replicate` says of a policy: the report compares replicates one by one and then
    /// their mean (CD on top of each seed's DPO policy).
    #[arg(long)]
    pub replicate: Option<u64>,
    /// Samples per prompt on each side (at least the largest inference-time N).
    #[arg(long, default_value_t = 8, value_parser = super::common::positive_count)]
    pub samples: usize,
    /// N of the inference-time win rates (best-of-N and worst-of-N; repeatable).
    #[arg(long = "eval-n", default_values_t = vec![4], value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_ns: Vec<u32>,
    /// Ties lose (CD's convention) instead of counting one half.
    #[arg(long)]
    pub strict: bool,
    /// Monte Carlo repetitions of the inference-time comparison per prompt.
    #[arg(long, default_value_t = 64)]
    pub reps: usize,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Sets `param` to `v` in the strategy's config or the sampling flags; an error names a
/// parameter the strategy does not have.
fn set_param(
    config: &mut StrategyConfig,
    s: &mut SamplingArgs,
    param: Param,
    v: f64,
) -> Result<()> {
    let count = |v: f64| -> Result<usize> {
        if v >= 1.0 && v.fract() == 0.0 {
            Ok(v as usize)
        } else {
            bail!("{param:?} must be a positive whole number, got {v}")
        }
    };
    match (param, &mut *config) {
        (Param::Lambda, StrategyConfig::TokenwiseCd { lambda, .. }) => *lambda = v as f32,
        (Param::K, StrategyConfig::BlockwiseCd { k, .. }) => *k = count(v)?,
        (Param::M, StrategyConfig::BlockwiseCd { m, .. }) => *m = count(v)?,
        (
            Param::N,
            StrategyConfig::BestOfN { n }
            | StrategyConfig::WorstOfN { n }
            | StrategyConfig::SoftBestOfN { n, .. },
        ) => *n = count(v)?,
        (Param::Tau, StrategyConfig::SoftBestOfN { tau, .. }) => *tau = v,
        (Param::Temperature, StrategyConfig::Sample | StrategyConfig::TokenwiseCd { .. }) => {
            s.temperature = v as f32
        }
        _ => bail!(
            "--param {param:?} does not apply to --strategy {} (lambda: cd-token; k, m: \
             cd-block; n: bon, won, soft-bon; tau: soft-bon; temperature: sample, cd-token)",
            config.id()
        ),
    }
    config.validate()?;
    Ok(())
}

/// Judge rewards grouped per prompt (samples are prompt-major, `k` per prompt).
fn per_prompt(samples: &[Sample], k: usize, judge: Option<&dyn Reward>) -> Result<Vec<Vec<f64>>> {
    let scores = match judge {
        Some(j) => score_samples(samples, j)?,
        None => samples
            .iter()
            .map(|s| {
                s.reward
                    .ok_or_else(|| anyhow::anyhow!("sample of `{}` has no reward", s.prompt))
            })
            .collect::<Result<_>>()?,
    };
    Ok(scores.chunks(k).map(<[f64]>::to_vec).collect())
}

/// The KL of a decoder's samples, by the best means its strategy allows. `policy_kl` holds, per
/// sample, `log π(y) − log π_base(y)` of the model the decoder steered against the base the KL
/// is measured from (none when they are the same model): each sample's share of that model's
/// own KL, added to the decoder's.
fn decoder_kl(
    config: &StrategyConfig,
    samples: &[Sample],
    policy_kl: Option<&[f64]>,
) -> Result<Kl> {
    let bound = match config.kl_provenance() {
        KlProvenance::ExactPerToken => {
            let Some(paths) = samples
                .iter()
                .map(Sample::path_kl)
                .collect::<Option<Vec<f64>>>()
            else {
                bail!(
                    "{} samples came back without their per-step KLs",
                    config.id()
                );
            };
            let Some(policy) = policy_kl else {
                let e = Estimate::of(paths.into_iter());
                let kind = if e.mean == 0.0 {
                    KlKind::Zero
                } else {
                    KlKind::ExactPerToken
                };
                return Ok(Kl {
                    value: e.mean,
                    stderr: Some(e.stderr),
                    kind,
                });
            };
            // Per sample, the path's exact decoder part plus a k1 term of the policy's part.
            let e = Estimate::of(paths.iter().zip(policy).map(|(d, p)| d + p));
            return Ok(Kl {
                value: e.mean,
                stderr: Some(e.stderr),
                kind: KlKind::K1,
            });
        }
        KlProvenance::BlockwiseBound { k, m } => {
            let lengths: Vec<usize> = samples.iter().map(|s| s.tokens.len()).collect();
            blockwise_bound(k as u32, m, &lengths, false)
        }
        KlProvenance::SelectionBound { n } => (n as f64).ln(),
        KlProvenance::BestOfNBound { n } => best_of_n_bound(n as u32),
    };
    // A bound plus an unbiased estimate: an estimate of a bound, with the estimate's error.
    let policy = policy_kl.map(|p| Estimate::of(p.iter().copied()));
    Ok(Kl {
        value: bound + policy.map_or(0.0, |e| e.mean),
        stderr: policy.map(|e| e.stderr),
        kind: KlKind::Bound,
    })
}

/// Decodes `samples` completions per prompt: one call with `n = samples` where the strategy
/// yields several per prompt, else the prompts repeated (each repeat its own seed stream).
pub fn decode_many(
    decoder: &mut Decoder,
    generator: &Generator<'_>,
    prompts: &[String],
    sampling: &SamplingArgs,
    samples: usize,
    seed: Seed,
) -> Result<Vec<Sample>> {
    if decoder.config.samples_per_prompt(samples).is_some() {
        decoder.n = samples;
        return decoder.decode(generator, prompts, sampling, seed);
    }
    let repeated: Vec<String> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), samples))
        .collect();
    decoder.decode(generator, &repeated, sampling, seed)
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let prompts = a.input.prompts.collect()?;
    let Some(reward_spec) = a.strategy.reward.clone() else {
        bail!("sweep needs --reward: it judges every value against the base samples");
    };
    if let Some(&n) = a.eval_ns.iter().max()
        && n as usize > a.samples
    {
        bail!("--eval-n {n} needs --samples of at least {n}");
    }
    let method = a
        .method
        .clone()
        .unwrap_or_else(|| a.strategy.config().method_name().to_string());
    // Check every value before decoding anything.
    for &v in &a.values {
        set_param(
            &mut a.strategy.config(),
            &mut a.input.sampling.clone(),
            a.param,
            v,
        )?;
    }
    let lm = a.input.model.load(device)?;
    let generator = Generator::new(&lm, device.clone());
    let base_lm = a
        .base
        .as_ref()
        .map(|b| crate::load_model(Some(b.clone()), device))
        .transpose()?;
    if let Some(b) = &base_lm {
        lm.check_same_tokenizer(b)?;
    }
    let base_generator = base_lm.as_ref().map(|b| Generator::new(b, device.clone()));
    let mut decoder = Decoder::new(&a.strategy, device)?;
    decoder.check_model(&lm)?;
    let seed = Seed(a.input.sampling.seed);
    std::fs::create_dir_all(&a.out)?;
    // The base side: plain samples with the same sampling flags.
    let mut base_decoder = Decoder::new(
        &StrategyArgs {
            strategy: Strategy::Sample,
            scorer: Vec::new(),
            weight: Vec::new(),
            ..a.strategy.clone()
        },
        device,
    )?;
    let base = decode_many(
        &mut base_decoder,
        base_generator.as_ref().unwrap_or(&generator),
        &prompts,
        &a.input.sampling,
        a.samples,
        seed.derive("sweep-base", 0),
    )?;
    write_samples(&a.out.join("base.jsonl"), &base, &StrategyConfig::Sample)?;
    let judge = a
        .judge
        .as_deref()
        .map(|j| reward_from_spec_on(j, device))
        .transpose()?;
    let measures = super::common::Measures::load(&a.measure, device)?;
    let base_rewards = per_prompt(&base, a.samples, judge.as_deref())?;
    let mut procedures = Vec::new();
    for &n in &a.eval_ns {
        procedures.push(Procedure::BestOfN { n });
        procedures.push(Procedure::WorstOfN { n });
    }
    let ties = if a.strict { Ties::Strict } else { Ties::Half };
    let bar = indicatif::ProgressBar::new(a.values.len() as u64);
    let mut points = Vec::new();
    for (i, &v) in a.values.iter().enumerate() {
        bar.set_message(format!("{:?} = {v}", a.param));
        let mut sampling = a.input.sampling.clone();
        set_param(&mut decoder.config, &mut sampling, a.param, v)?;
        let samples = decode_many(
            &mut decoder,
            &generator,
            &prompts,
            &sampling,
            a.samples,
            seed.derive("sweep", i as u64),
        )?;
        let name = format!("{}={v}", format!("{:?}", a.param).to_lowercase());
        write_samples(
            &a.out.join(format!("{name}.jsonl")),
            &samples,
            &decoder.config,
        )?;
        let rewards = per_prompt(&samples, a.samples, judge.as_deref())?;
        let policy_kl = base_lm
            .as_ref()
            .map(|b| -> Result<Vec<f64>> {
                let under_base = completion_logprobs(b, &samples, device)?;
                Ok(samples
                    .iter()
                    .zip(&under_base)
                    .map(|(s, lb)| s.base_logprob() - lb)
                    .collect())
            })
            .transpose()?;
        let mut point = CurvePoint::measure(
            method.clone(),
            Some((&format!("{:?}", a.param).to_lowercase(), v)),
            decoder_kl(&decoder.config, &samples, policy_kl.as_deref())?,
            &Comparison {
                policy: &rewards,
                base: &base_rewards,
                procedures: &procedures,
                ties,
                reps: a.reps,
                seed: a.input.sampling.seed,
                prompts: Some(&prompts),
            },
        )?;
        point.sample_stats = Some(SampleStats::of(
            samples.iter().map(|s| s.tokens.len()),
            &rewards,
        ));
        point.base_sample_stats = Some(SampleStats::of(
            base.iter().map(|s| s.tokens.len()),
            &base_rewards,
        ));
        measures.record(&samples, &mut point)?;
        point.replicate = a.replicate;
        eprintln!(
            "{name}: reward {:.4} (base {:.4}), win rate {:.3}, KL {}",
            point.mean_reward,
            point.base_mean_reward,
            point.win_rate.mean,
            infalign_eval::report::fmt_kl(&point.kl)
        );
        points.push(point);
        bar.inc(1);
    }
    bar.finish_and_clear();
    infalign_core::io::write_jsonl_atomic(a.out.join("points.jsonl"), &points)?;
    let mut report = Report::new(format!("Sweep: {method}, {:?}", a.param));
    if let Some(b) = &base_lm {
        report.paragraph(format!(
            "Decoded from `{}`, compared with base `{}`: each KL adds the decoding model's own \
             KL against the base, estimated on the decoded samples.",
            lm.dir.display(),
            b.dir.display()
        ));
    }
    report.paragraph(format!(
        "Model `{}`, reward `{reward_spec}`, judged by `{}`, {} prompts, {} samples per prompt \
         on each side; base samples use the same sampling flags (temperature {}, max {} new \
         tokens).",
        lm.dir.display(),
        a.judge.as_deref().unwrap_or(&reward_spec),
        prompts.len(),
        a.samples,
        a.input.sampling.temperature,
        a.input.sampling.max_new_tokens
    ));
    add_curves(&mut report, &points)?;
    let (md, html) = report.write(&a.out)?;
    println!("{}", report.to_markdown());
    eprintln!("wrote {} and {}", md.display(), html.display());
    Ok(())
}

fn write_samples(
    path: &std::path::Path,
    samples: &[Sample],
    strategy: &StrategyConfig,
) -> Result<()> {
    let rows: Vec<serde_json::Value> = samples.iter().map(|s| sample_row(s, strategy)).collect();
    infalign_core::io::write_jsonl_atomic(path, &rows)?;
    Ok(())
}
