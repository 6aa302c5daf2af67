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
use infalign_decoding::{Generator, Sample, score_samples};
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

/// The strategy's default method name.
pub fn method_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Sample => "sampling",
        Strategy::Greedy => "greedy",
        Strategy::Bon => "best-of-N",
        Strategy::Won => "worst-of-N",
        Strategy::SoftBon => "soft best-of-N",
        Strategy::CdToken => "tokenwise CD",
        Strategy::CdBlock => "blockwise CD",
    }
}

fn set_param(a: &mut StrategyArgs, s: &mut SamplingArgs, param: Param, v: f64) -> Result<()> {
    let count = |v: f64| -> Result<usize> {
        if v >= 1.0 && v.fract() == 0.0 {
            Ok(v as usize)
        } else {
            bail!("{param:?} must be a positive whole number, got {v}")
        }
    };
    let ok = match (param, a.strategy) {
        (Param::Lambda, Strategy::CdToken) => {
            a.lambda = v as f32;
            true
        }
        (Param::K, Strategy::CdBlock) => {
            a.k = count(v)?;
            true
        }
        (Param::M, Strategy::CdBlock) => {
            a.m = count(v)?;
            true
        }
        (Param::N, Strategy::Bon | Strategy::Won | Strategy::SoftBon) => {
            a.n = count(v)?;
            true
        }
        (Param::Tau, Strategy::SoftBon) => {
            a.tau = v;
            true
        }
        (Param::Temperature, Strategy::Sample | Strategy::CdToken) => {
            s.temperature = v as f32;
            true
        }
        _ => false,
    };
    if !ok {
        bail!(
            "--param {param:?} does not apply to --strategy {:?} (lambda: cd-token; k, m: \
             cd-block; n: bon, won, soft-bon; tau: soft-bon; temperature: sample, cd-token)",
            a.strategy
        );
    }
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

/// The KL of a decoder's samples, by the best means its strategy allows.
fn decoder_kl(a: &StrategyArgs, samples: &[Sample]) -> Kl {
    if let Some(paths) = samples
        .iter()
        .map(Sample::path_kl)
        .collect::<Option<Vec<f64>>>()
    {
        let e = Estimate::of(paths.into_iter());
        let kind = if e.mean == 0.0 {
            KlKind::Zero
        } else {
            KlKind::ExactPerToken
        };
        return Kl {
            value: e.mean,
            stderr: Some(e.stderr),
            kind,
        };
    }
    let value = match a.strategy {
        Strategy::CdBlock => {
            let lengths: Vec<usize> = samples.iter().map(|s| s.tokens.len()).collect();
            blockwise_bound(a.k as u32, a.m, &lengths, false)
        }
        // Any choice of one among N i.i.d. samples has π(y) ≤ N π_ref(y): KL ≤ ln N.
        Strategy::SoftBon => (a.n as f64).ln(),
        _ => best_of_n_bound(a.n as u32),
    };
    Kl {
        value,
        stderr: None,
        kind: KlKind::Bound,
    }
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
    if matches!(
        decoder.args().strategy,
        Strategy::Sample | Strategy::Greedy | Strategy::CdToken
    ) {
        decoder.args_mut().n = samples;
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
        .unwrap_or_else(|| method_name(a.strategy.strategy).to_string());
    // Check every value before decoding anything.
    for &v in &a.values {
        set_param(
            &mut a.strategy.clone(),
            &mut a.input.sampling.clone(),
            a.param,
            v,
        )?;
    }
    let lm = crate::load_model(a.input.model.clone(), device)?;
    let generator = Generator::new(&lm, device.clone());
    let mut decoder = Decoder::new(a.strategy.clone(), device)?;
    let seed = Seed(a.input.sampling.seed);
    std::fs::create_dir_all(&a.out)?;
    // The base side: plain samples with the same sampling flags.
    let mut base_decoder = Decoder::new(
        StrategyArgs {
            strategy: Strategy::Sample,
            scorer: Vec::new(),
            weight: Vec::new(),
            ..a.strategy.clone()
        },
        device,
    )?;
    let base = decode_many(
        &mut base_decoder,
        &generator,
        &prompts,
        &a.input.sampling,
        a.samples,
        seed.derive("sweep-base", 0),
    )?;
    write_samples(&a.out.join("base.jsonl"), &base, Strategy::Sample)?;
    let judge = a
        .judge
        .as_deref()
        .map(|j| reward_from_spec_on(j, device))
        .transpose()?;
    let measures = a
        .measure
        .iter()
        .map(|m| Ok((m.clone(), reward_from_spec_on(m, device)?)))
        .collect::<Result<Vec<_>>>()?;
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
        set_param(decoder.args_mut(), &mut sampling, a.param, v)?;
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
            decoder.args().strategy,
        )?;
        let rewards = per_prompt(&samples, a.samples, judge.as_deref())?;
        let mut point = CurvePoint::measure(
            method.clone(),
            Some((&format!("{:?}", a.param).to_lowercase(), v)),
            decoder_kl(decoder.args(), &samples),
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
        for (spec, r) in &measures {
            let v = score_samples(&samples, r.as_ref())?;
            point
                .measures
                .insert(spec.clone(), v.iter().sum::<f64>() / v.len().max(1) as f64);
        }
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

fn write_samples(path: &std::path::Path, samples: &[Sample], strategy: Strategy) -> Result<()> {
    let rows: Vec<serde_json::Value> = samples.iter().map(|s| sample_row(s, strategy)).collect();
    infalign_core::io::write_jsonl_atomic(path, &rows)?;
    Ok(())
}
