//! `infalign eval`: a policy (a model directory) against the base model on the same prompts:
//! rewards, standard and inference-time (best-of-N, worst-of-N) win rates with bootstrap
//! intervals, and KL(π ‖ π_ref) with the k1, k2 and k3 estimators. Writes `eval.json` (its
//! `point` is what `infalign report` gathers), `report.md` and `report.html` with plots into
//! `--out`.
//!
//! The base side is sampled from the base model, or read with `--base-samples` from a samples
//! file (the `base.jsonl` a `sweep` writes): then a policy and a sweep's decoders are judged
//! against the very same base samples, and their win rates compare paired.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
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
    /// The base side's samples from this samples file (rows with `prompt`, `completion` and
    /// `tokens`, such as the `base.jsonl` a `sweep` writes) instead of sampling the base model:
    /// every evaluation prompt needs exactly `--samples` rows, and the rows are scored with
    /// `--reward`. Win rates then compare paired with the sweep's, on the same base samples.
    #[arg(long)]
    pub base_samples: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

fn rewards(samples: &[Sample], reward: &dyn Reward, k: usize) -> Result<Vec<Vec<f64>>> {
    let r = score_samples(samples, reward)?;
    Ok(r.chunks(k).map(<[f64]>::to_vec).collect())
}

/// The base side read from a samples file: per evaluation prompt, in order, the rewards of its
/// `samples` rows (scored with `reward`), and every row's completion length in tokens. An error
/// names the file (and line) when a row lacks `tokens`, names a prompt outside the evaluation,
/// or a prompt has other than `samples` rows.
fn base_from_file(
    path: &Path,
    prompts: &[String],
    samples: usize,
    reward: &dyn Reward,
) -> Result<(Vec<Vec<f64>>, Vec<usize>)> {
    let rows = super::samples::read_samples(path, false)?;
    let mut by_prompt: std::collections::HashMap<&str, Vec<(String, Vec<u32>)>> =
        prompts.iter().map(|p| (p.as_str(), Vec::new())).collect();
    if by_prompt.len() < prompts.len() {
        bail!(
            "--base-samples {}: the evaluation prompts repeat a prompt, so rows cannot be \
             matched to them by text",
            path.display()
        );
    }
    for row in &rows {
        let tokens = match row.tokens() {
            Ok(Some(t)) => t,
            Ok(None) => bail!(
                "{}:{}: no `tokens`: --base-samples needs each completion's token ids",
                path.display(),
                row.line
            ),
            Err(e) => bail!("{}:{}: {e}", path.display(), row.line),
        };
        match by_prompt.get_mut(row.prompt()) {
            Some(list) => list.push((row.completion().to_string(), tokens)),
            None => bail!(
                "{}:{}: prompt `{}` is not among the evaluation prompts",
                path.display(),
                row.line,
                row.prompt()
            ),
        }
    }
    let (mut scores, mut lengths) = (Vec::with_capacity(prompts.len()), Vec::new());
    for prompt in prompts {
        let list = &by_prompt[prompt.as_str()];
        if list.len() != samples {
            bail!(
                "{}: prompt `{prompt}` has {} rows; --samples {samples} needs exactly that many",
                path.display(),
                list.len()
            );
        }
        let inputs: Vec<infalign_rewards::RewardInput<'_>> = list
            .iter()
            .map(|(completion, ids)| infalign_rewards::RewardInput {
                prompt,
                completion,
                tokens: ids.len(),
                ids,
            })
            .collect();
        scores.push(reward.score_batch(&inputs)?);
        lengths.extend(list.iter().map(|(_, ids)| ids.len()));
    }
    Ok((scores, lengths))
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
    let (rb, base_lengths) = match &a.base_samples {
        Some(path) => base_from_file(path, &prompts, a.samples, reward.as_ref())?,
        None => {
            let refs = Generator::new(&base, device.clone()).generate(
                &prompts,
                &cfg,
                seed.derive("eval-base", 0),
            )?;
            let lengths = refs.iter().map(|s| s.tokens.len()).collect();
            (rewards(&refs, reward.as_ref(), a.samples)?, lengths)
        }
    };
    let rp = rewards(&pol, reward.as_ref(), a.samples)?;
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
    point.base_sample_stats = Some(SampleStats::of(base_lengths, &rb));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rows: &[serde_json::Value]) -> PathBuf {
        let path = dir.join("base.jsonl");
        let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        path
    }

    fn row(prompt: &str, tokens: &[u32]) -> serde_json::Value {
        serde_json::json!({"prompt": prompt, "completion": "x", "tokens": tokens})
    }

    #[test]
    fn base_samples_are_read_in_prompt_order_and_scored() {
        let dir = tempfile::tempdir().unwrap();
        // Rows of the two prompts interleaved; the length reward ln(T / 4) scores the ids.
        let path = write(
            dir.path(),
            &[
                row("b", &[1]),
                row("a", &[1, 2]),
                row("b", &[1, 2, 3, 4]),
                row("a", &[1, 2, 3]),
            ],
        );
        let reward = infalign_rewards::reward_from_spec("length(t_max=4)").unwrap();
        let prompts = vec!["a".to_string(), "b".to_string()];
        let (scores, lengths) = base_from_file(&path, &prompts, 2, reward.as_ref()).unwrap();
        let ln = |t: f64| (t / 4.0).ln();
        assert_eq!(scores, vec![vec![ln(2.0), ln(3.0)], vec![ln(1.0), ln(4.0)]]);
        assert_eq!(lengths, vec![2, 3, 1, 4]);
    }

    #[test]
    fn base_samples_that_do_not_fit_the_evaluation_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let reward = infalign_rewards::reward_from_spec("length(t_max=4)").unwrap();
        let prompts = vec!["a".to_string()];
        let err = |rows: &[serde_json::Value], prompts: &[String]| {
            let path = write(dir.path(), rows);
            base_from_file(&path, prompts, 2, reward.as_ref())
                .unwrap_err()
                .to_string()
        };
        let e = err(&[row("a", &[1])], &prompts);
        assert!(e.contains("has 1 rows") && e.contains("--samples 2"), "{e}");
        let e = err(&[row("a", &[1]), row("a", &[2]), row("c", &[3])], &prompts);
        assert!(e.contains("base.jsonl:3") && e.contains("`c`"), "{e}");
        let e = err(
            &[serde_json::json!({"prompt": "a", "completion": "x"})],
            &prompts,
        );
        assert!(e.contains("base.jsonl:1") && e.contains("tokens"), "{e}");
        let twice = vec!["a".to_string(), "a".to_string()];
        let e = err(&[row("a", &[1]), row("a", &[2])], &twice);
        assert!(e.contains("repeat"), "{e}");
    }
}
