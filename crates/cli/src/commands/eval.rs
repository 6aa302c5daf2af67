//! `infalign eval`: a policy (a model directory) against the base model on the same prompts:
//! rewards, standard and inference-time (best-of-N, worst-of-N) win rates with bootstrap
//! intervals, and KL(π ‖ π_ref) with the k1, k2 and k3 estimators. Writes `eval.json` (its
//! `point` is what `infalign report` gathers), `report.md` and `report.html` with plots into
//! `--out`.

use std::path::PathBuf;

use anyhow::Result;
use infalign_core::{Device, Seed};
use infalign_decoding::{GenerationConfig, Generator, Sample, completion_logprobs, score_samples};
use infalign_eval::Ties;
use infalign_eval::analytic::Procedure;
use infalign_eval::curve::{Comparison, CurvePoint, Kl, KlKind, SampleStats};
use infalign_eval::kl::kl_estimates;
use infalign_eval::report::{Report, add_curves};
use infalign_models::LoadedModel;
use infalign_rewards::{Reward, reward_from_spec_on};

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
    #[arg(long, default_value_t = 16, value_parser = super::common::positive_count)]
    pub samples: usize,
    /// N of the inference-time win rates, best-of-N and worst-of-N (repeatable; `--n` is an
    /// older spelling).
    #[arg(long = "eval-n", alias = "n", value_name = "N", default_values_t = vec![4], value_parser = clap::value_parser!(u32).range(1..))]
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
    /// Method name in tables and plots; default: the policy's run directory name.
    #[arg(long)]
    pub method: Option<String>,
    /// Name of the parameter this policy was trained at (e.g. `beta`), for curves.
    #[arg(long, requires = "value")]
    pub param: Option<String>,
    /// Its value.
    #[arg(long, requires = "param", allow_negative_numbers = true)]
    pub value: Option<f64>,
    /// Further reward specs whose means over the policy's samples are recorded (repeatable):
    /// a proxy's score beside the gold reward that judges.
    #[arg(long)]
    pub measure: Vec<String>,
    /// Which of several training runs of this method and setting (different seeds) the policy
    /// is: the report compares replicates one by one and then their mean.
    #[arg(long)]
    pub replicate: Option<u64>,
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
    let reward = reward_from_spec_on(&a.reward, device)?;
    let base = crate::load_model(a.base, device)?;
    let policy = LoadedModel::load(&a.policy, device)?;
    policy.check_same_tokenizer(&base)?;
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
    // KL(π ‖ π_ref): policy samples scored by both models.
    let lp_ref = completion_logprobs(&base, &pol, device)?;
    let lp_pol: Vec<f64> = pol.iter().map(Sample::policy_logprob).collect();
    let kl = kl_estimates(&lp_pol, &lp_ref)?;
    let ties = if a.strict { Ties::Strict } else { Ties::Half };
    let mut procedures = Vec::new();
    for &n in &a.ns {
        procedures.push(Procedure::BestOfN { n });
        procedures.push(Procedure::WorstOfN { n });
    }
    let method = a.method.clone().unwrap_or_else(|| {
        let dir = if a.policy.ends_with("final") {
            a.policy.parent().unwrap_or(&a.policy)
        } else {
            &a.policy
        };
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy".into())
    });
    let mut point = CurvePoint::measure(
        method,
        a.param.as_deref().zip(a.value),
        Kl {
            value: kl.k3.mean,
            stderr: Some(kl.k3.stderr),
            kind: KlKind::K3,
        },
        &Comparison {
            policy: &rp,
            base: &rb,
            procedures: &procedures,
            ties,
            reps: a.reps,
            seed: a.seed,
            prompts: Some(&prompts),
        },
    )?;
    point.replicate = a.replicate;
    super::common::Measures::load(&a.measure, device)?.record(&pol, &mut point)?;
    point.sample_stats = Some(SampleStats::of(pol.iter().map(|s| s.tokens.len()), &rp));
    point.base_sample_stats = Some(SampleStats::of(refs.iter().map(|s| s.tokens.len()), &rb));
    let mut report = Report::new("Evaluation");
    report.paragraph(format!(
        "Policy `{}` against base `{}`, reward `{}`, {} prompts x {} samples each.",
        a.policy.display(),
        base.dir.display(),
        a.reward,
        prompts.len(),
        a.samples
    ));
    report.paragraph(format!(
        "KL(π ‖ π_ref) per sequence: k1 {:.4} ± {:.4}, k2 {:.4} ± {:.4}, k3 {:.4} ± {:.4} \
         (mean ± standard error; k2 is biased).",
        kl.k1.mean, kl.k1.stderr, kl.k2.mean, kl.k2.stderr, kl.k3.mean, kl.k3.stderr
    ));
    add_curves(&mut report, std::slice::from_ref(&point))?;
    let out = serde_json::json!({
        "policy": a.policy, "base": base.dir, "reward": a.reward, "prompts": prompts.len(),
        "samples_per_prompt": a.samples, "ties": if a.strict { "strict" } else { "half" },
        "mean_reward_policy": point.mean_reward, "mean_reward_base": point.base_mean_reward,
        "kl": kl, "point": point,
    });
    std::fs::create_dir_all(&a.out)?;
    infalign_core::io::write_json_atomic(a.out.join("eval.json"), &out)?;
    report.write(&a.out)?;
    println!("{}", report.to_markdown());
    Ok(())
}
