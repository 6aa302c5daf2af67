//! `infalign eval`: a policy (a model directory) against the base model on the same prompts:
//! rewards, standard and inference-time (best-of-N, worst-of-N) win rates with bootstrap
//! intervals, and KL(π ‖ π_ref) with the k1, k2 and k3 estimators. Writes `eval.json` and
//! `report.md` into `--out`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use infalign_core::{Device, Seed};
use infalign_decoding::{GenerationConfig, Generator, Sample, score_samples};
use infalign_eval::analytic::Procedure;
use infalign_eval::kl::kl_estimates;
use infalign_eval::{Ties, inference_win_rate, win_rate};
use infalign_models::LoadedModel;
use infalign_rewards::{Reward, reward_from_spec};

use super::common::PromptArgs;

/// Flags of `infalign eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy's model directory.
    #[arg(long)]
    pub policy: PathBuf,
    /// The base model directory; default: the shipped one.
    #[arg(long)]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    /// Reward spec of the judge.
    #[arg(long)]
    pub reward: String,
    /// Samples per prompt from each side (must be at least the largest N).
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// N values of best-of-N and worst-of-N (repeatable).
    #[arg(long = "n", default_values_t = vec![4])]
    pub ns: Vec<u32>,
    /// New tokens per sample at most.
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Ties lose (CD's convention) instead of counting one half.
    #[arg(long)]
    pub strict: bool,
    /// Monte Carlo repetitions of the inference-time comparison per prompt.
    #[arg(long, default_value_t = 64)]
    pub reps: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

fn rewards(samples: &[Sample], reward: &dyn Reward, k: usize) -> Result<Vec<Vec<f64>>> {
    let r = score_samples(samples, reward)?;
    Ok(r.chunks(k).map(<[f64]>::to_vec).collect())
}

pub fn run(a: Args, device: &Device) -> Result<()> {
    let prompts = a.prompts.collect()?;
    let reward = reward_from_spec(&a.reward)?;
    let base = crate::load_model(a.base, device)?;
    let policy = LoadedModel::load(&a.policy, device)?;
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        n: a.samples,
        prompt_batch: 4,
        ..Default::default()
    };
    let seed = Seed(a.seed);
    let pol = Generator::new(&policy, device.clone()).generate(
        &prompts,
        &cfg,
        seed.derive("eval-policy", 0),
    )?;
    let refs = Generator::new(&base, device.clone()).generate(
        &prompts,
        &cfg,
        seed.derive("eval-base", 0),
    )?;
    let rp = rewards(&pol, reward.as_ref(), a.samples)?;
    let rb = rewards(&refs, reward.as_ref(), a.samples)?;
    let ties = if a.strict { Ties::Strict } else { Ties::Half };
    // KL(π ‖ π_ref): policy samples scored by both models.
    let rows: Vec<Vec<u32>> = pol
        .iter()
        .map(|s| s.prompt_ids.iter().chain(&s.tokens).copied().collect())
        .collect();
    let ref_lp = base.model.sequence_logprobs(&rows, base.pad_id, device)?;
    let lp_ref: Vec<f64> = pol
        .iter()
        .zip(&ref_lp)
        .map(|(s, r)| {
            r[s.prompt_ids.len() - 1..]
                .iter()
                .map(|&x| f64::from(x))
                .sum()
        })
        .collect();
    let lp_pol: Vec<f64> = pol.iter().map(Sample::policy_logprob).collect();
    let kl = kl_estimates(&lp_pol, &lp_ref)?;
    let mean = |v: &[Vec<f64>]| {
        v.iter().flatten().sum::<f64>() / v.iter().map(Vec::len).sum::<usize>() as f64
    };
    let standard = win_rate(&rp, &rb, ties, a.seed)?;
    let mut procedures =
        vec![serde_json::json!({"procedure": "standard", "n": 1, "win_rate": standard})];
    let mut md = String::new();
    writeln!(
        md,
        "# Evaluation\n\npolicy `{}` against base `{}`, reward `{}`, {} prompts x {} samples each.\n",
        a.policy.display(),
        base.dir.display(),
        a.reward,
        prompts.len(),
        a.samples
    )?;
    writeln!(
        md,
        "| procedure | win rate | 95% interval |\n|---|---:|---|"
    )?;
    writeln!(
        md,
        "| standard | {:.3} | [{:.3}, {:.3}] |",
        standard.mean, standard.low, standard.high
    )?;
    for &n in &a.ns {
        for (name, proc) in [
            ("best-of", Procedure::BestOfN { n }),
            ("worst-of", Procedure::WorstOfN { n }),
        ] {
            let w = inference_win_rate(&rp, &rb, proc, ties, a.reps, a.seed)?;
            writeln!(
                md,
                "| {name}-{n} | {:.3} | [{:.3}, {:.3}] |",
                w.mean, w.low, w.high
            )?;
            procedures.push(serde_json::json!({"procedure": name, "n": n, "win_rate": w}));
        }
    }
    writeln!(
        md,
        "\nMean reward: policy {:.4}, base {:.4}.\n",
        mean(&rp),
        mean(&rb)
    )?;
    writeln!(
        md,
        "KL(π ‖ π_ref) per sequence: k1 {:.4} ± {:.4}, k2 {:.4} ± {:.4}, k3 {:.4} ± {:.4} (mean ± standard error).",
        kl.k1.mean, kl.k1.stderr, kl.k2.mean, kl.k2.stderr, kl.k3.mean, kl.k3.stderr
    )?;
    let out = serde_json::json!({
        "policy": a.policy, "base": base.dir, "reward": a.reward, "prompts": prompts.len(),
        "samples_per_prompt": a.samples, "ties": if a.strict { "strict" } else { "half" },
        "mean_reward_policy": mean(&rp), "mean_reward_base": mean(&rb),
        "kl": kl, "win_rates": procedures,
    });
    infalign_core::io::write_json_atomic(a.out.join("eval.json"), &out)?;
    infalign_core::io::write_atomic(a.out.join("report.md"), md.as_bytes())?;
    println!("{md}");
    Ok(())
}
