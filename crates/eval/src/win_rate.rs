//! Win rates against the base model (docs/ALGORITHMS.md A.6, B.1), with bootstrap intervals over
//! prompts.
//!
//! Per prompt, every policy reward is compared with every base reward (ties count ½, or lose in
//! the strict variant the CD paper uses); prompts are averaged with equal weight. Under an
//! inference-time procedure the same procedure is applied to both sides: N rewards are drawn
//! without replacement from each side's pool for the prompt, the best (or worst) of each is kept,
//! and the two are compared; repeated with a seeded generator.
//!
//! One per-prompt loop ([`per_prompt_win_rates`]) and one bootstrap serve the marginal win rates
//! here and the paired comparisons of [`crate::paired`]. Invariant: the bootstrap's resampled
//! prompt indices depend only on the seed and the number of prompts.

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::analytic::Procedure;

/// How equal rewards count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ties {
    /// A tie is half a win (InfAlign).
    #[default]
    Half,
    /// A tie is a loss (CD).
    Strict,
}

/// A point estimate with a bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The estimate.
    pub mean: f64,
    /// Lower end of the 95% percentile-bootstrap interval over prompts.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

fn outcome(a: f64, b: f64, ties: Ties) -> f64 {
    if a > b {
        1.0
    } else if a == b && ties == Ties::Half {
        0.5
    } else {
        0.0
    }
}

fn check(policy: &[Vec<f64>], base: &[Vec<f64>], need: usize) -> Result<(), EvalError> {
    if policy.len() != base.len() || policy.is_empty() {
        return Err(EvalError::Invalid {
            field: "prompts",
            message: format!("{} policy and {} base prompts", policy.len(), base.len()),
        });
    }
    for (i, (p, b)) in policy.iter().zip(base).enumerate() {
        if p.len() < need || b.len() < need {
            return Err(EvalError::Invalid {
                field: "samples",
                message: format!(
                    "prompt {i} has {} policy and {} base rewards; need {need} each",
                    p.len(),
                    b.len()
                ),
            });
        }
        if let Some(x) = p.iter().chain(b).find(|x| !x.is_finite()) {
            return Err(EvalError::Invalid {
                field: "reward",
                message: format!("prompt {i}: reward {x} is not finite"),
            });
        }
    }
    Ok(())
}

/// Bootstrap replicates drawn by [`bootstrap_replicates`]; the 95% percentile interval takes the
/// 25th and the 975th of them in sorted order.
pub(crate) const REPLICATES: usize = 1000;

/// The mean of `per_prompt` over each of [`REPLICATES`] resamplings of the prompts with
/// replacement, in drawing order. The prompt indices drawn depend only on `seed` and the number
/// of prompts, so two vectors of the same length bootstrapped with one seed see the same
/// resampled prompts in every replicate: the bootstrap of any per-prompt linear combination of
/// them is, replicate by replicate, that combination of their bootstraps (what the paired
/// comparisons of [`crate::paired`] rest on).
pub(crate) fn bootstrap_replicates(per_prompt: &[f64], seed: u64) -> Vec<f64> {
    let n = per_prompt.len();
    resampled_prompts(n, seed)
        .map(|idx| idx.iter().map(|&i| per_prompt[i]).sum::<f64>() / n as f64)
        .collect()
}

/// The prompt indices of each of the [`REPLICATES`] resamplings of `n` prompts with
/// replacement, in drawing order: the one source of resampled prompts for every bootstrap here
/// and in [`crate::paired`]; they depend only on `seed` and `n`.
pub(crate) fn resampled_prompts(n: usize, seed: u64) -> impl Iterator<Item = Vec<usize>> {
    let mut rng = infalign_core::Seed(seed).stream("bootstrap");
    (0..REPLICATES).map(move |_| (0..n).map(|_| rng.random_range(0..n)).collect())
}

/// The 95% percentile interval around `mean` from [`REPLICATES`] bootstrap means: the 25th and
/// the 975th in sorted order.
pub(crate) fn percentile_interval(mean: f64, mut means: Vec<f64>) -> Interval {
    means.sort_by(f64::total_cmp);
    Interval {
        mean,
        low: means[24],
        high: means[974],
    }
}

/// The mean of `per_prompt` (equal weight per prompt, at least one prompt) with the 95%
/// percentile-bootstrap interval over prompts.
pub(crate) fn bootstrap(per_prompt: &[f64], seed: u64) -> Interval {
    let n = per_prompt.len();
    let mean = per_prompt.iter().sum::<f64>() / n as f64;
    percentile_interval(mean, bootstrap_replicates(per_prompt, seed))
}

/// Standard win rate: per prompt, the fraction of (policy, base) reward pairs the policy wins.
pub fn win_rate(
    policy: &[Vec<f64>],
    base: &[Vec<f64>],
    ties: Ties,
    seed: u64,
) -> Result<Interval, EvalError> {
    inference_win_rate(policy, base, Procedure::Standard, ties, 1, seed)
}

/// Win rate of T(π) against T(π_ref) for an inference-time procedure T, by `reps` Monte Carlo
/// draws of N rewards from each pool per prompt.
pub fn inference_win_rate(
    policy: &[Vec<f64>],
    base: &[Vec<f64>],
    procedure: Procedure,
    ties: Ties,
    reps: usize,
    seed: u64,
) -> Result<Interval, EvalError> {
    let per_prompt = per_prompt_win_rates(policy, base, procedure, ties, reps, seed)?;
    Ok(bootstrap(&per_prompt, seed))
}

/// The win rate of each prompt, before averaging: what [`win_rate`] and [`inference_win_rate`]
/// bootstrap, and what the paired comparisons of [`crate::paired`] difference.
///
/// [`Procedure::Standard`] is exact (every policy reward against every base reward; `reps` and
/// `seed` unused). Best-of-N and worst-of-N draw N rewards without replacement from each side's
/// pool `reps` times per prompt (at least once) from the seeded stream `inference-win-rate`;
/// the draws depend only on `seed` and the pool sizes, so two policies with pools of equal sizes
/// evaluated with one seed meet the same base draws (common random numbers).
pub fn per_prompt_win_rates(
    policy: &[Vec<f64>],
    base: &[Vec<f64>],
    procedure: Procedure,
    ties: Ties,
    reps: usize,
    seed: u64,
) -> Result<Vec<f64>, EvalError> {
    let (n, sign) = match procedure {
        Procedure::Standard => {
            check(policy, base, 1)?;
            return Ok(policy
                .iter()
                .zip(base)
                .map(|(p, b)| {
                    let total: f64 = p
                        .iter()
                        .map(|&x| b.iter().map(|&y| outcome(x, y, ties)).sum::<f64>())
                        .sum();
                    total / (p.len() * b.len()) as f64
                })
                .collect());
        }
        Procedure::BestOfN { n } => (n as usize, 1.0),
        Procedure::WorstOfN { n } => (n as usize, -1.0),
    };
    check(policy, base, n)?;
    let mut rng = infalign_core::Seed(seed).stream("inference-win-rate");
    let pick = |pool: &[f64], rng: &mut rand_chacha::ChaCha8Rng| -> f64 {
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        idx.shuffle(rng);
        idx[..n]
            .iter()
            .map(|&i| pool[i])
            .fold(f64::NEG_INFINITY * sign, |a, x| {
                if sign * x > sign * a { x } else { a }
            })
    };
    Ok(policy
        .iter()
        .zip(base)
        .map(|(p, b)| {
            (0..reps.max(1))
                .map(|_| {
                    let (x, y) = (pick(p, &mut rng), pick(b, &mut rng));
                    outcome(x, y, ties)
                })
                .sum::<f64>()
                / reps.max(1) as f64
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_pools(prompts: usize, k: usize, seed: u64, power: f64) -> Vec<Vec<f64>> {
        let mut rng = infalign_core::Seed(seed).stream("pools");
        (0..prompts)
            .map(|_| (0..k).map(|_| rng.random::<f64>().powf(power)).collect())
            .collect()
    }

    #[test]
    fn standard_win_rate_matches_theory() {
        // Policy rewards U^(1/3) (density 3u²: the best-of-3 of uniforms) against uniform base:
        // win rate 3/4.
        let p = uniform_pools(200, 50, 1, 1.0 / 3.0);
        let b = uniform_pools(200, 50, 2, 1.0);
        let w = win_rate(&p, &b, Ties::Half, 0).unwrap();
        assert!((w.mean - 0.75).abs() < 0.01, "{w:?}");
        assert!(w.low < w.mean && w.mean < w.high && w.high - w.low < 0.02);
        // Same distribution: one half.
        let w = win_rate(&b, &uniform_pools(200, 50, 3, 1.0), Ties::Half, 0).unwrap();
        assert!((w.mean - 0.5).abs() < 0.01);
        // Ties: half or nothing.
        let t = vec![vec![1.0]];
        assert_eq!(win_rate(&t, &t, Ties::Half, 0).unwrap().mean, 0.5);
        assert_eq!(win_rate(&t, &t, Ties::Strict, 0).unwrap().mean, 0.0);
    }

    #[test]
    fn best_of_n_win_rate_matches_the_analytic_tool() {
        // Policy density 2u (the log transform at λ = 1): BoN_N vs BoN_N = (λ+1)/(λ+2) = 2/3.
        let p = uniform_pools(300, 40, 4, 0.5);
        let b = uniform_pools(300, 40, 5, 1.0);
        let w = inference_win_rate(&p, &b, Procedure::BestOfN { n: 4 }, Ties::Half, 40, 0).unwrap();
        assert!((w.mean - 2.0 / 3.0).abs() < 0.015, "{w:?}");
        let e = inference_win_rate(&p, &b[..2], Procedure::BestOfN { n: 4 }, Ties::Half, 4, 0);
        assert!(e.is_err());
        let e = inference_win_rate(
            &[vec![1.0; 2]],
            &[vec![1.0; 2]],
            Procedure::WorstOfN { n: 3 },
            Ties::Half,
            4,
            0,
        );
        assert!(e.unwrap_err().to_string().contains("need 3"));
    }
}
