//! Paired comparisons of methods: differences of win rates (or mean rewards) over the same
//! prompts and the same base samples, at matched KL along policy paths, and the fraction of the
//! analytic optimum's gain a policy reaches.
//!
//! Two methods evaluated on the same prompts against the same base samples are compared through
//! their per-prompt outcomes ([`Outcomes`]: per-prompt win rates from
//! [`per_prompt_win_rates`], the code behind [`crate::win_rate`] and
//! [`crate::inference_win_rate`], or per-prompt mean rewards), never through two marginal
//! intervals.
//!
//! Statistics:
//!
//! - **Paired difference** ([`paired_difference`]): `d_i = a_i − b_i` per prompt; the estimate is
//!   the mean of `d` (prompts weighted equally, as in the marginal win rates) and the interval is
//!   the same 95% percentile bootstrap over prompts as the marginal intervals (1000 replicates,
//!   the 25th and 975th sorted), applied to `d`: each replicate resamples the same prompt indices
//!   for both methods. Its variance is `Var a + Var b − 2 Cov(a, b)`, so methods that find the
//!   same prompts easy or hard get a narrower interval than two marginal ones suggest.
//! - **Replicated difference** ([`replicated_difference`]): methods trained with several seeds
//!   (replicates), replicate r of A paired with replicate r of B on the same prompts,
//!   `d_{r,i} = a_{r,i} − b_{r,i}`. The seeds are a second source of variation: a bootstrap over
//!   prompts alone of the seeds' prompt-by-prompt mean takes the R trained models as fixed, so
//!   its interval says nothing about how another seed would do and is too narrow when seeds
//!   disagree. The estimate is the mean of `d` over all seeds and prompts; the interval is a
//!   two-level (seeds × prompts) percentile bootstrap with the same replicates and percentiles:
//!   each replicate draws R seed indices with replacement and, independently, P prompt indices
//!   with replacement (the same prompts for every seed, since all were evaluated on them, drawn
//!   as in the bootstrap over prompts), and takes the mean of `d` over the drawn (seed, prompt)
//!   cells. With one seed every seed draw is that seed, so the result is [`paired_difference`]'s,
//!   bit for bit.
//! - **Matched KL** ([`Path`]): a method's snapshots along a KL path, each with its outcomes on
//!   the same prompts. At a target KL between snapshots `k_j ≤ k < k_{j+1}` the outcomes are
//!   interpolated linearly per prompt, `(1 − t) o_j + t o_{j+1}` with
//!   `t = (k − k_j)/(k_{j+1} − k_j)`, and bootstrapped. The mean is linear and the resampled
//!   indices are shared, so bootstrap replicate r of the interpolation *is* the interpolation of
//!   the two snapshots' replicates r: the interval is carried through replicate by replicate.
//!   [`paired_difference_at_kl`] interpolates both methods at the common KL and differences them
//!   per prompt, again with one resampling for all four snapshots involved.
//! - **Gain fraction** ([`gain_fraction`]): `(WR − ½) / (WR* − ½)` for the analytic optimum's
//!   win rate `WR*` at the same KL (from [`crate::analytic`]). The map is affine and increasing,
//!   and percentiles commute with increasing maps, so the interval's ends map to the ends.
//!
//! Invariants:
//!
//! - The bootstrap's resampled prompt indices depend only on the seed and the number of prompts
//!   (`win_rate.rs`), so with one seed: two identical methods differ by exactly zero with a
//!   zero-width interval; the interpolation at a snapshot's own KL is that snapshot's marginal
//!   interval bit for bit (the one [`crate::win_rate`] or [`crate::inference_win_rate`] gives
//!   with the same seed).
//! - Outcomes compared or interpolated together measure the same thing ([`Measure`]: the same
//!   procedure and ties, or mean rewards) on the same number of prompts; anything else is an
//!   error. That they are the *same* prompts in the same order against the *same* base samples
//!   is the caller's contract, which the types cannot check.
//! - Win-rate outcomes under best-of-N or worst-of-N are Monte Carlo; evaluated with one seed
//!   and pools of equal sizes, two methods meet the same base draws (common random numbers).
//! - No extrapolation: a KL outside a path's snapshots is [`EvalError::OutOfRange`], naming
//!   the range. Snapshot KLs are taken as given; their own Monte Carlo error is not in the
//!   interval.
//! - Inputs are validated: empty inputs, mismatched prompt counts and non-finite values are
//!   [`EvalError`]s naming the field.
//!
//! ```
//! use infalign_eval::analytic::Procedure;
//! use infalign_eval::{Ties, paired_win_rate_difference};
//!
//! // Per prompt, three base rewards; method A always beats them, method B only on prompt 0.
//! let base = vec![vec![0.0, 0.1, 0.2]; 4];
//! let a = vec![vec![1.0, 1.1]; 4];
//! let mut b = vec![vec![-1.0, -1.1]; 4];
//! b[0] = vec![1.0, 1.1];
//! let d = paired_win_rate_difference(&a, &b, &base, Procedure::Standard, Ties::Half, 1, 7)?;
//! assert_eq!((d.mean, d.prompts), (0.75, 4));
//! assert!(d.low <= d.mean && d.mean <= d.high);
//! # Ok::<(), infalign_eval::EvalError>(())
//! ```

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::analytic::Procedure;
use crate::win_rate::{
    REPLICATES, bootstrap, per_prompt_win_rates, percentile_interval, resampled_prompts,
};
use crate::{EvalError, Interval, Ties};

/// What a vector of per-prompt outcomes measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// The win rate against the base under `procedure` (applied to both sides), in [0, 1].
    WinRate {
        /// The inference-time procedure.
        procedure: Procedure,
        /// How ties count.
        ties: Ties,
    },
    /// The mean reward of the method's samples.
    MeanReward,
}

/// One method's outcomes per prompt, on a fixed, ordered set of prompts (at least one); every
/// value finite, and in [0, 1] for win rates.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcomes {
    measure: Measure,
    values: Vec<f64>,
}

impl Outcomes {
    /// Per-prompt outcomes computed elsewhere, validated.
    pub fn new(measure: Measure, values: Vec<f64>) -> Result<Self, EvalError> {
        if values.is_empty() {
            return Err(EvalError::Invalid {
                field: "outcomes",
                message: "no prompts".into(),
            });
        }
        let win_rate = matches!(measure, Measure::WinRate { .. });
        if let Some((i, x)) = values
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite() || (win_rate && !(0.0..=1.0).contains(*x)))
        {
            return Err(EvalError::Invalid {
                field: "outcomes",
                message: format!(
                    "prompt {i}: {x} is not {}",
                    if win_rate {
                        "a win rate in [0, 1]"
                    } else {
                        "finite"
                    }
                ),
            });
        }
        Ok(Self { measure, values })
    }

    /// Per-prompt win rates of `policy` against `base` under `procedure`, computed by
    /// [`per_prompt_win_rates`] (the same code and the same seeded draws as
    /// [`crate::inference_win_rate`]).
    pub fn win_rates(
        policy: &[Vec<f64>],
        base: &[Vec<f64>],
        procedure: Procedure,
        ties: Ties,
        reps: usize,
        seed: u64,
    ) -> Result<Self, EvalError> {
        Ok(Self {
            measure: Measure::WinRate { procedure, ties },
            values: per_prompt_win_rates(policy, base, procedure, ties, reps, seed)?,
        })
    }

    /// Per-prompt mean rewards of a method's samples.
    pub fn mean_rewards(rewards: &[Vec<f64>]) -> Result<Self, EvalError> {
        if rewards.is_empty() {
            return Err(EvalError::Invalid {
                field: "prompts",
                message: "no prompts".into(),
            });
        }
        let mut values = Vec::with_capacity(rewards.len());
        for (i, r) in rewards.iter().enumerate() {
            if r.is_empty() {
                return Err(EvalError::Invalid {
                    field: "samples",
                    message: format!("prompt {i} has no rewards"),
                });
            }
            if let Some(x) = r.iter().find(|x| !x.is_finite()) {
                return Err(EvalError::Invalid {
                    field: "reward",
                    message: format!("prompt {i}: reward {x} is not finite"),
                });
            }
            values.push(r.iter().sum::<f64>() / r.len() as f64);
        }
        Ok(Self {
            measure: Measure::MeanReward,
            values,
        })
    }

    /// What the outcomes measure.
    pub fn measure(&self) -> Measure {
        self.measure
    }

    /// The outcome of each prompt.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The number of prompts.
    pub fn prompts(&self) -> usize {
        self.values.len()
    }

    /// The marginal estimate: the mean over prompts with its bootstrap interval (for win rates,
    /// what [`crate::inference_win_rate`] returns with the same seed).
    pub fn estimate(&self, seed: u64) -> Interval {
        bootstrap(&self.values, seed)
    }

    fn check_pair(&self, other: &Self) -> Result<(), EvalError> {
        if self.measure != other.measure {
            return Err(EvalError::Invalid {
                field: "measure",
                message: format!(
                    "{:?} and {:?} are not comparable",
                    self.measure, other.measure
                ),
            });
        }
        if self.prompts() != other.prompts() {
            return Err(EvalError::Invalid {
                field: "prompts",
                message: format!(
                    "{} and {} prompts: paired outcomes need the same prompts",
                    self.prompts(),
                    other.prompts()
                ),
            });
        }
        Ok(())
    }
}

/// A paired difference `a − b` over prompts with its 95% percentile-bootstrap interval (over
/// prompts, or over seeds and prompts for [`replicated_difference`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// The mean over prompts of the per-prompt difference.
    pub mean: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Prompts compared.
    pub prompts: usize,
}

impl Difference {
    /// Whether the interval lies strictly on one side of zero.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }

    /// The estimate and interval without the prompt count.
    pub fn interval(&self) -> Interval {
        Interval {
            mean: self.mean,
            low: self.low,
            high: self.high,
        }
    }
}

fn difference(a: &[f64], b: &[f64], seed: u64) -> Difference {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let i = bootstrap(&d, seed);
    Difference {
        mean: i.mean,
        low: i.low,
        high: i.high,
        prompts: d.len(),
    }
}

/// The paired difference `a − b` of two methods' outcomes on the same prompts (see the module
/// documentation); the bootstrap resamples the same prompts for both.
pub fn paired_difference(a: &Outcomes, b: &Outcomes, seed: u64) -> Result<Difference, EvalError> {
    a.check_pair(b)?;
    Ok(difference(&a.values, &b.values, seed))
}

/// The paired difference `A − B` of two methods trained with several seeds: `a[r]` and `b[r]`
/// are replicate r of each, on the same prompts. The estimate is the mean over all seeds and
/// prompts of the per-prompt difference, the interval the two-level (seeds × prompts) bootstrap
/// of the module documentation; with one replicate, [`paired_difference`] exactly. Every
/// replicate measures the same thing on the same number of prompts, and `a` and `b` have as
/// many replicates (at least one), else an error naming the field.
pub fn replicated_difference(
    a: &[Outcomes],
    b: &[Outcomes],
    seed: u64,
) -> Result<Difference, EvalError> {
    let Some(first) = a.first() else {
        return Err(EvalError::Invalid {
            field: "replicates",
            message: "no replicates to compare".into(),
        });
    };
    if a.len() != b.len() {
        return Err(EvalError::Invalid {
            field: "replicates",
            message: format!(
                "{} and {} replicates: replicate r of A is compared with replicate r of B",
                a.len(),
                b.len()
            ),
        });
    }
    for o in a.iter().chain(b) {
        first.check_pair(o)?;
    }
    let d: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.values.iter().zip(&b.values).map(|(x, y)| x - y).collect())
        .collect();
    let (r, p) = (d.len(), first.prompts());
    // Each seed's mean over (resampled) prompts is summed as the bootstrap over prompts sums,
    // then the (drawn) seeds' means are averaged: one seed reproduces that bootstrap exactly.
    // All seeds have P prompts, so the mean of their means is the mean over all cells.
    let mean = d
        .iter()
        .map(|row| row.iter().sum::<f64>() / p as f64)
        .sum::<f64>()
        / r as f64;
    // The seed draws have their own stream, so the prompt draws are the bootstrap's.
    let mut seeds = infalign_core::Seed(seed).stream("bootstrap-seeds");
    let mut means = Vec::with_capacity(REPLICATES);
    let mut per_seed = vec![0.0; r];
    for idx in resampled_prompts(p, seed) {
        for (m, row) in per_seed.iter_mut().zip(&d) {
            *m = idx.iter().map(|&i| row[i]).sum::<f64>() / p as f64;
        }
        means.push(
            (0..r)
                .map(|_| per_seed[seeds.random_range(0..r)])
                .sum::<f64>()
                / r as f64,
        );
    }
    let i = percentile_interval(mean, means);
    Ok(Difference {
        mean: i.mean,
        low: i.low,
        high: i.high,
        prompts: p,
    })
}

/// The paired difference of the win rates of methods `a` and `b`, each against the same `base`
/// rewards under `procedure`; both use `seed` for their Monte Carlo draws (common random
/// numbers) and the bootstrap.
pub fn paired_win_rate_difference(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    base: &[Vec<f64>],
    procedure: Procedure,
    ties: Ties,
    reps: usize,
    seed: u64,
) -> Result<Difference, EvalError> {
    let a = Outcomes::win_rates(a, base, procedure, ties, reps, seed)?;
    let b = Outcomes::win_rates(b, base, procedure, ties, reps, seed)?;
    paired_difference(&a, &b, seed)
}

/// The paired difference of the mean rewards of methods `a` and `b` on the same prompts
/// (per-prompt means, prompts weighted equally).
pub fn paired_mean_reward_difference(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    seed: u64,
) -> Result<Difference, EvalError> {
    paired_difference(
        &Outcomes::mean_rewards(a)?,
        &Outcomes::mean_rewards(b)?,
        seed,
    )
}

/// One snapshot of a method along its KL path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathPoint {
    /// KL(π ‖ π_ref) of the snapshot, in nats.
    pub kl: f64,
    /// Its outcomes on the path's prompts.
    pub outcomes: Outcomes,
}

/// A method's snapshots, strictly increasing in KL, all measuring the same thing on the same
/// number of prompts (at least one snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    points: Vec<PathPoint>,
}

impl Path {
    /// Validates `points`, which must be sorted by strictly increasing, finite KL.
    pub fn new(points: Vec<PathPoint>) -> Result<Self, EvalError> {
        let Some(first) = points.first() else {
            return Err(EvalError::Invalid {
                field: "path",
                message: "no snapshots".into(),
            });
        };
        for (j, p) in points.iter().enumerate() {
            if !p.kl.is_finite() {
                return Err(EvalError::Invalid {
                    field: "kl",
                    message: format!("snapshot {j}: KL {} is not finite", p.kl),
                });
            }
            first.outcomes.check_pair(&p.outcomes)?;
        }
        if let Some(j) = points.windows(2).position(|w| w[1].kl <= w[0].kl) {
            return Err(EvalError::Invalid {
                field: "kl",
                message: format!(
                    "snapshot {} has KL {} after {}: the path must be strictly increasing in KL",
                    j + 1,
                    points[j + 1].kl,
                    points[j].kl
                ),
            });
        }
        Ok(Self { points })
    }

    /// The snapshots, by increasing KL.
    pub fn points(&self) -> &[PathPoint] {
        &self.points
    }

    /// The lowest and highest snapshot KL.
    pub fn kl_range(&self) -> (f64, f64) {
        (self.points[0].kl, self.points[self.points.len() - 1].kl)
    }

    /// The per-prompt outcomes at `kl`, interpolated linearly between the two bracketing
    /// snapshots (a snapshot's own outcomes, unchanged, at its KL). A `kl` outside
    /// [`kl_range`](Self::kl_range) is [`EvalError::OutOfRange`].
    pub fn outcomes_at(&self, kl: f64) -> Result<Outcomes, EvalError> {
        let (low, high) = self.kl_range();
        if !(low..=high).contains(&kl) {
            return Err(EvalError::OutOfRange {
                field: "kl",
                value: kl,
                low,
                high,
            });
        }
        if let Some(p) = self.points.iter().find(|p| p.kl == kl) {
            return Ok(p.outcomes.clone());
        }
        // kl is strictly inside (low, high) and no snapshot sits at it: j + 1 exists.
        let j = self.points.partition_point(|p| p.kl < kl) - 1;
        let (lo, hi) = (&self.points[j], &self.points[j + 1]);
        let t = (kl - lo.kl) / (hi.kl - lo.kl);
        Ok(Outcomes {
            measure: lo.outcomes.measure,
            values: lo
                .outcomes
                .values
                .iter()
                .zip(&hi.outcomes.values)
                .map(|(x, y)| (1.0 - t) * x + t * y)
                .collect(),
        })
    }

    /// The outcome at `kl` (a win rate, or a mean reward) with its interval, carried through the
    /// interpolation replicate by replicate (see the module documentation).
    pub fn at_kl(&self, kl: f64, seed: u64) -> Result<Interval, EvalError> {
        Ok(self.outcomes_at(kl)?.estimate(seed))
    }
}

/// The KL range both paths cover, where [`paired_difference_at_kl`] can be evaluated; an error
/// naming both ranges when they do not overlap.
pub fn common_kl_range(a: &Path, b: &Path) -> Result<(f64, f64), EvalError> {
    let ((a0, a1), (b0, b1)) = (a.kl_range(), b.kl_range());
    let (low, high) = (a0.max(b0), a1.min(b1));
    if low > high {
        return Err(EvalError::Invalid {
            field: "kl",
            message: format!("the paths' KL ranges [{a0}, {a1}] and [{b0}, {b1}] do not overlap"),
        });
    }
    Ok((low, high))
}

/// The paired difference `a − b` of two methods at the common KL `kl`: each path interpolated
/// at `kl`, differenced per prompt, and bootstrapped with one resampling of the prompts for all
/// the snapshots involved. A `kl` outside either path's range is [`EvalError::OutOfRange`].
pub fn paired_difference_at_kl(
    a: &Path,
    b: &Path,
    kl: f64,
    seed: u64,
) -> Result<Difference, EvalError> {
    paired_difference(&a.outcomes_at(kl)?, &b.outcomes_at(kl)?, seed)
}

/// The fraction of the analytic optimum's gain over the base that a policy reaches,
/// `(WR − ½) / (WR* − ½)`, for its win rate `win_rate` and the optimum's win rate `optimum` at
/// the same KL under the same procedure (for example [`crate::analytic::evaluate`] of
/// [`crate::analytic::optimal_transform`] at the λ of that KL). The interval's ends map to the
/// ends (the map is increasing). Not clamped: a measured win rate above the analytic optimum
/// (noise, or rewards that are not continuous and calibrated) gives more than 1.
pub fn gain_fraction(win_rate: Interval, optimum: f64) -> Result<Interval, EvalError> {
    if !(optimum.is_finite() && optimum > 0.5 && optimum <= 1.0) {
        return Err(EvalError::Invalid {
            field: "optimum",
            message: format!("{optimum} must be a win rate in (0.5, 1]"),
        });
    }
    let Interval { mean, low, high } = win_rate;
    if !(mean.is_finite() && low.is_finite() && high.is_finite()) {
        return Err(EvalError::Invalid {
            field: "win_rate",
            message: format!("{win_rate:?} is not finite"),
        });
    }
    let gain = |x: f64| (x - 0.5) / (optimum - 0.5);
    Ok(Interval {
        mean: gain(mean),
        low: gain(low),
        high: gain(high),
    })
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::analytic::{evaluate, lambda_for_kl, optimal_transform};
    use crate::win_rate::bootstrap_replicates;
    use crate::{inference_win_rate, win_rate};

    const BON4: Procedure = Procedure::BestOfN { n: 4 };

    fn pools(prompts: usize, k: usize, seed: u64, power: f64) -> Vec<Vec<f64>> {
        let mut rng = infalign_core::Seed(seed).stream("pools");
        (0..prompts)
            .map(|_| (0..k).map(|_| rng.random::<f64>().powf(power)).collect())
            .collect()
    }

    fn width(i: Interval) -> f64 {
        i.high - i.low
    }

    #[test]
    fn identical_methods_differ_by_exactly_zero() {
        let a = pools(60, 8, 1, 0.5);
        let base = pools(60, 8, 2, 1.0);
        let zero = Difference {
            mean: 0.0,
            low: 0.0,
            high: 0.0,
            prompts: 60,
        };
        for procedure in [Procedure::Standard, BON4, Procedure::WorstOfN { n: 3 }] {
            // Computed twice: the Monte Carlo draws are seeded, so the two agree exactly.
            let d = paired_win_rate_difference(&a, &a, &base, procedure, Ties::Half, 16, 5);
            assert_eq!(d.unwrap(), zero, "{procedure:?}");
        }
        let d = paired_mean_reward_difference(&a, &a, 5).unwrap();
        assert_eq!(d, zero);
        assert!(!d.excludes_zero());
        // Also at a matched KL strictly between snapshots.
        let snap = |kl: f64, s: u64| PathPoint {
            kl,
            outcomes: Outcomes::win_rates(&pools(60, 8, s, 0.7), &base, BON4, Ties::Half, 8, 1)
                .unwrap(),
        };
        let path = Path::new(vec![snap(0.1, 3), snap(0.4, 4)]).unwrap();
        assert_eq!(paired_difference_at_kl(&path, &path, 0.3, 9).unwrap(), zero);
    }

    /// Rewards per prompt.
    type Rewards = Vec<Vec<f64>>;

    const N: usize = 40;

    /// A vector over the constructed prompts: `first` on the first half, `second` on the rest.
    fn halves<T: Clone>(first: T, second: T) -> Vec<T> {
        (0..N)
            .map(|i| if i < N / 2 { &first } else { &second }.clone())
            .collect()
    }

    /// Per prompt, base rewards {0, 1}. On the first half of the prompts A's rewards exceed
    /// both and B's sit between them; on the second half A's sit between and B's are below
    /// both.
    fn constructed() -> (Rewards, Rewards, Rewards) {
        (
            halves(vec![2.0, 2.0], vec![0.5, 0.5]),
            halves(vec![0.5, 0.5], vec![-1.0, -1.0]),
            vec![vec![0.0, 1.0]; N],
        )
    }

    #[test]
    fn constructed_rewards_give_the_exact_difference() {
        let (a, b, base) = constructed();
        // (procedure, A's per-prompt win rates on the two halves, B's): standard compares with
        // each of {0, 1}; best-of-2 and worst-of-2 take the whole pool of 2, so they compare
        // with 1 and with 0, deterministically. Every case differs by ½ on average.
        let cases = [
            (Procedure::Standard, (1.0, 0.5), (0.5, 0.0)),
            (Procedure::BestOfN { n: 2 }, (1.0, 0.0), (0.0, 0.0)),
            (Procedure::WorstOfN { n: 2 }, (1.0, 1.0), (1.0, 0.0)),
        ];
        for (procedure, (a1, a2), (b1, b2)) in cases {
            let oa = Outcomes::win_rates(&a, &base, procedure, Ties::Half, 4, 3).unwrap();
            let ob = Outcomes::win_rates(&b, &base, procedure, Ties::Half, 4, 3).unwrap();
            assert_eq!(oa.values(), halves(a1, a2), "{procedure:?}");
            assert_eq!(ob.values(), halves(b1, b2), "{procedure:?}");
            let ma = inference_win_rate(&a, &base, procedure, Ties::Half, 4, 3).unwrap();
            let mb = inference_win_rate(&b, &base, procedure, Ties::Half, 4, 3).unwrap();
            assert_eq!((ma.mean, mb.mean), ((a1 + a2) / 2.0, (b1 + b2) / 2.0));
            assert_eq!((oa.estimate(3), ob.estimate(3)), (ma, mb));
            let d = paired_difference(&oa, &ob, 3).unwrap();
            assert_eq!((d.mean, d.prompts), (0.5, N), "{procedure:?}");
            // The interval is the bootstrap of the per-prompt differences: A and B resampled
            // on the same prompts.
            let diff = Outcomes::new(Measure::MeanReward, halves(a1 - b1, a2 - b2)).unwrap();
            assert_eq!(d.interval(), diff.estimate(3), "{procedure:?}");
            assert!(d.excludes_zero(), "{procedure:?} {d:?}");
        }
        // Under the standard procedure A − B is ½ on every prompt: the methods are perfectly
        // positively correlated over prompts, so the paired interval has zero width (every
        // replicate sees ½) and excludes zero, while either marginal interval is wide and the
        // unpaired interval of the difference wider still.
        let d = paired_win_rate_difference(&a, &b, &base, Procedure::Standard, Ties::Half, 1, 3);
        let d = d.unwrap();
        assert_eq!((d.mean, d.low, d.high), (0.5, 0.5, 0.5));
        assert!(d.excludes_zero());
        let ma = win_rate(&a, &base, Ties::Half, 3).unwrap();
        let mb = win_rate(&b, &base, Ties::Half, 3).unwrap();
        let (wa, wb) = (width(ma), width(mb));
        assert!(wa > 0.1 && wb > 0.1, "{ma:?} {mb:?}");
        assert!(width(d.interval()) < (wa * wa + wb * wb).sqrt().min(wa.min(wb)));
        // Mean rewards: 2 − ½ and ½ − (−1), 1.5 on every prompt.
        let d = paired_mean_reward_difference(&a, &b, 3).unwrap();
        assert_eq!((d.mean, d.low, d.high, d.prompts), (1.5, 1.5, 1.5, N));
    }

    #[test]
    fn bad_inputs_are_rejected_naming_the_field() {
        let field = |e: EvalError| match e {
            EvalError::Invalid { field, .. } => field,
            e => panic!("{e}"),
        };
        let (a, _, base) = constructed();
        let s = Procedure::Standard;
        let e = paired_win_rate_difference(&a, &a[..3], &base, s, Ties::Half, 1, 0);
        assert_eq!(field(e.unwrap_err()), "prompts");
        let e = paired_mean_reward_difference(&a, &a[..3], 0);
        assert_eq!(field(e.unwrap_err()), "prompts");
        assert_eq!(field(Outcomes::mean_rewards(&[]).unwrap_err()), "prompts");
        assert_eq!(
            field(Outcomes::mean_rewards(&[vec![]]).unwrap_err()),
            "samples"
        );
        let e = Outcomes::mean_rewards(&[vec![1.0, f64::INFINITY]]);
        assert_eq!(field(e.unwrap_err()), "reward");
        let mut bad = a.clone();
        bad[7][1] = f64::NAN;
        let e = paired_win_rate_difference(&a, &bad, &base, s, Ties::Half, 1, 0);
        assert_eq!(field(e.unwrap_err()), "reward");
        let wr = Measure::WinRate {
            procedure: s,
            ties: Ties::Half,
        };
        assert_eq!(field(Outcomes::new(wr, vec![]).unwrap_err()), "outcomes");
        assert_eq!(field(Outcomes::new(wr, vec![1.5]).unwrap_err()), "outcomes");
        let e = Outcomes::new(Measure::MeanReward, vec![f64::NAN]);
        assert_eq!(field(e.unwrap_err()), "outcomes");
        // Standard against best-of-2, or ties counted differently: not comparable.
        let o = |procedure, ties| Outcomes::win_rates(&a, &base, procedure, ties, 2, 0).unwrap();
        let e = paired_difference(
            &o(s, Ties::Half),
            &o(Procedure::BestOfN { n: 2 }, Ties::Half),
            0,
        );
        assert_eq!(field(e.unwrap_err()), "measure");
        let e = paired_difference(&o(s, Ties::Half), &o(s, Ties::Strict), 0);
        assert_eq!(field(e.unwrap_err()), "measure");
        let m = Outcomes::mean_rewards(&a).unwrap();
        assert_eq!(
            field(paired_difference(&o(s, Ties::Half), &m, 0).unwrap_err()),
            "measure"
        );
        // Replicates: none, unequal numbers, or one replicate unlike the others.
        let w = o(s, Ties::Half);
        let e = replicated_difference(&[], &[], 0);
        assert_eq!(field(e.unwrap_err()), "replicates");
        let e = replicated_difference(&[w.clone(), w.clone()], std::slice::from_ref(&w), 0);
        assert_eq!(field(e.unwrap_err()), "replicates");
        let e = replicated_difference(&[w.clone(), w.clone()], &[w.clone(), m.clone()], 0);
        assert_eq!(field(e.unwrap_err()), "measure");
        let short = Outcomes::mean_rewards(&a[..3]).unwrap();
        let e = replicated_difference(&[m.clone(), short], &[m.clone(), m.clone()], 0);
        assert_eq!(field(e.unwrap_err()), "prompts");
        // Paths: empty, unsorted, repeated or non-finite KL, mismatched prompts.
        let pt = |kl, n| PathPoint {
            kl,
            outcomes: Outcomes::new(Measure::MeanReward, vec![0.0; n]).unwrap(),
        };
        assert_eq!(field(Path::new(vec![]).unwrap_err()), "path");
        assert_eq!(
            field(Path::new(vec![pt(0.2, 3), pt(0.1, 3)]).unwrap_err()),
            "kl"
        );
        assert_eq!(
            field(Path::new(vec![pt(0.2, 3), pt(0.2, 3)]).unwrap_err()),
            "kl"
        );
        assert_eq!(field(Path::new(vec![pt(f64::NAN, 3)]).unwrap_err()), "kl");
        assert_eq!(
            field(Path::new(vec![pt(0.1, 3), pt(0.2, 4)]).unwrap_err()),
            "prompts"
        );
        let (p, q) = (Path::new(vec![pt(0.1, 3)]), Path::new(vec![pt(0.1, 4)]));
        let e = paired_difference_at_kl(&p.unwrap(), &q.unwrap(), 0.1, 0);
        assert_eq!(field(e.unwrap_err()), "prompts");
        assert_eq!(
            field(
                gain_fraction(
                    Interval {
                        mean: 0.6,
                        low: 0.5,
                        high: f64::NAN
                    },
                    0.7
                )
                .unwrap_err()
            ),
            "win_rate"
        );
    }

    /// Three snapshots of increasingly strong policies (rewards U^p for p = 1, ½, ⅓) against one
    /// base, with their rewards.
    fn path(procedure: Procedure, seed: u64) -> (Path, Vec<Rewards>, Rewards) {
        let base = pools(50, 8, 10, 1.0);
        let kls = [0.0, 0.3069, 0.75];
        let policies: Vec<_> = [1.0, 0.5, 1.0 / 3.0]
            .iter()
            .enumerate()
            .map(|(j, &p)| pools(50, 8, 20 + j as u64, p))
            .collect();
        let points = kls
            .iter()
            .zip(&policies)
            .map(|(&kl, pol)| PathPoint {
                kl,
                outcomes: Outcomes::win_rates(pol, &base, procedure, Ties::Half, 8, seed).unwrap(),
            })
            .collect();
        (Path::new(points).unwrap(), policies, base)
    }

    #[test]
    fn interpolation_at_a_snapshot_is_the_snapshot() {
        for procedure in [Procedure::Standard, BON4] {
            let (path, policies, base) = path(procedure, 4);
            for (p, pol) in path.points().iter().zip(&policies) {
                let marginal = inference_win_rate(pol, &base, procedure, Ties::Half, 8, 4).unwrap();
                if procedure == Procedure::Standard {
                    assert_eq!(marginal, win_rate(pol, &base, Ties::Half, 4).unwrap());
                }
                assert_eq!(
                    path.at_kl(p.kl, 4).unwrap(),
                    marginal,
                    "{procedure:?} {}",
                    p.kl
                );
                assert_eq!(path.outcomes_at(p.kl).unwrap(), p.outcomes);
            }
        }
    }

    #[test]
    fn interpolation_midway_is_the_midpoint_replicate_by_replicate() {
        let (path, _, _) = path(Procedure::Standard, 4);
        let [p0, p1, p2] = path.points() else {
            panic!()
        };
        for (lo, hi) in [(p0, p1), (p1, p2)] {
            let mid = path.at_kl(0.5 * (lo.kl + hi.kl), 6).unwrap();
            let (a, b) = (lo.outcomes.estimate(6), hi.outcomes.estimate(6));
            assert!(
                (mid.mean - 0.5 * (a.mean + b.mean)).abs() < 1e-12,
                "{mid:?}"
            );
            // Replicate r of the interpolation is the midpoint of the snapshots' replicates r.
            let m = path.outcomes_at(0.5 * (lo.kl + hi.kl)).unwrap();
            let rm = bootstrap_replicates(m.values(), 6);
            let ra = bootstrap_replicates(lo.outcomes.values(), 6);
            let rb = bootstrap_replicates(hi.outcomes.values(), 6);
            for ((m, a), b) in rm.iter().zip(&ra).zip(&rb) {
                assert!((m - 0.5 * (a + b)).abs() < 1e-12);
            }
            // A quarter of the way, likewise.
            let q = path.at_kl(0.75 * lo.kl + 0.25 * hi.kl, 6).unwrap();
            assert!((q.mean - (0.75 * a.mean + 0.25 * b.mean)).abs() < 1e-12);
        }
        // When the upper snapshot is the lower one shifted by c on every prompt, the whole
        // interval midway is the lower one's shifted by c/2.
        let lo = p0.outcomes.clone();
        let up: Vec<f64> = lo.values().iter().map(|x| 0.5 * x + 0.25).collect();
        let lo = Outcomes::new(lo.measure(), lo.values().iter().map(|x| 0.5 * x).collect());
        let (lo, up) = (
            lo.unwrap(),
            Outcomes::new(p0.outcomes.measure(), up).unwrap(),
        );
        let e = lo.estimate(6);
        let shifted = Path::new(vec![
            PathPoint {
                kl: 1.0,
                outcomes: lo,
            },
            PathPoint {
                kl: 2.0,
                outcomes: up,
            },
        ])
        .unwrap();
        let mid = shifted.at_kl(1.5, 6).unwrap();
        for (x, y) in [(mid.mean, e.mean), (mid.low, e.low), (mid.high, e.high)] {
            assert!((x - (y + 0.125)).abs() < 1e-12, "{mid:?} {e:?}");
        }
    }

    #[test]
    fn outside_the_path_is_an_error_naming_the_range() {
        let (path, _, _) = path(Procedure::Standard, 4);
        assert_eq!(path.kl_range(), (0.0, 0.75));
        for kl in [-0.01, 0.7500001, f64::NAN, f64::INFINITY] {
            match path.at_kl(kl, 0) {
                Err(EvalError::OutOfRange {
                    field: "kl",
                    low,
                    high,
                    ..
                }) => assert_eq!((low, high), (0.0, 0.75)),
                r => panic!("{kl}: {r:?}"),
            }
        }
        let e = path.at_kl(0.8, 0).unwrap_err().to_string();
        assert!(e.contains("0.8") && e.contains("[0, 0.75]"), "{e}");
    }

    #[test]
    fn matched_kl_difference_interpolates_both_paths() {
        // Per prompt i, method B's outcome along its path is c_i + 0.1 KL (snapshots at KL 0,
        // 1, 2) and method A's is c_i + 0.1 KL + 0.2 (snapshots at KL 0.5, 1.5, on another
        // grid): at any common KL, A − B = 0.2 on every prompt.
        let c = pools(1, 30, 8, 1.0).remove(0);
        let m = Measure::MeanReward;
        let path = |kls: &[f64], shift: f64| {
            let pts = kls.iter().map(|&kl| PathPoint {
                kl,
                outcomes: Outcomes::new(m, c.iter().map(|x| x + 0.1 * kl + shift).collect())
                    .unwrap(),
            });
            Path::new(pts.collect()).unwrap()
        };
        let (a, b) = (path(&[0.5, 1.5], 0.2), path(&[0.0, 1.0, 2.0], 0.0));
        assert_eq!(common_kl_range(&a, &b).unwrap(), (0.5, 1.5));
        for kl in [0.5, 0.8, 1.0, 1.5] {
            let d = paired_difference_at_kl(&a, &b, kl, 2).unwrap();
            assert!(
                (d.mean - 0.2).abs() < 1e-12 && width(d.interval()) < 1e-12,
                "{d:?}"
            );
            assert!(d.excludes_zero() && d.prompts == 30);
        }
        assert!(matches!(
            paired_difference_at_kl(&a, &b, 0.25, 2),
            Err(EvalError::OutOfRange {
                low: 0.5,
                high: 1.5,
                ..
            })
        ));
        assert!(matches!(
            paired_difference_at_kl(&a, &b, 1.75, 2),
            Err(EvalError::OutOfRange {
                low: 0.5,
                high: 1.5,
                ..
            })
        ));
        let far = path(&[3.0, 4.0], 0.0);
        assert!(
            common_kl_range(&a, &far)
                .unwrap_err()
                .to_string()
                .contains("[3, 4]")
        );
    }

    /// Mean-reward outcomes.
    fn rewards(values: Vec<f64>) -> Outcomes {
        Outcomes::new(Measure::MeanReward, values).unwrap()
    }

    #[test]
    fn one_replicate_is_the_paired_difference() {
        let base = pools(60, 8, 2, 1.0);
        let (pa, pb) = (pools(60, 8, 1, 0.5), pools(60, 8, 3, 0.8));
        for seed in [0, 5, 11] {
            let a = Outcomes::win_rates(&pa, &base, BON4, Ties::Half, 8, seed).unwrap();
            let b = Outcomes::win_rates(&pb, &base, BON4, Ties::Half, 8, seed).unwrap();
            let d = paired_difference(&a, &b, seed).unwrap();
            assert!(d.low < d.mean && d.mean < d.high, "{d:?}");
            let one = replicated_difference(std::slice::from_ref(&a), &[b], seed).unwrap();
            assert_eq!(one, d, "seed {seed}");
            let (a, b) = (
                Outcomes::mean_rewards(&pa).unwrap(),
                Outcomes::mean_rewards(&pb).unwrap(),
            );
            let d = paired_difference(&a, &b, seed).unwrap();
            let one = replicated_difference(std::slice::from_ref(&a), &[b], seed).unwrap();
            assert_eq!(one, d, "seed {seed}");
        }
    }

    #[test]
    fn identical_replicated_methods_differ_by_exactly_zero() {
        let base = pools(30, 8, 2, 1.0);
        let a: Vec<Outcomes> = (0..4)
            .map(|r| {
                let policy = pools(30, 8, 40 + r, 0.3 + 0.2 * r as f64);
                Outcomes::win_rates(&policy, &base, BON4, Ties::Half, 8, 1).unwrap()
            })
            .collect();
        let d = replicated_difference(&a, &a, 9).unwrap();
        let zero = Difference {
            mean: 0.0,
            low: 0.0,
            high: 0.0,
            prompts: 30,
        };
        assert_eq!(d, zero);
        assert!(!d.excludes_zero());
    }

    /// Replicate r of A exceeds replicate r of B by `shift[r]` on every prompt; B varies over
    /// prompts and seeds (dyadic values, so that every difference is exact).
    fn shifted(shift: &[f64]) -> (Vec<Outcomes>, Vec<Outcomes>) {
        let b =
            |r: usize| -> Vec<f64> { (0..10).map(|i| (i % 5) as f64 * 0.25 + r as f64).collect() };
        shift
            .iter()
            .enumerate()
            .map(|(r, c)| {
                let a = b(r).iter().map(|x| x + c).collect();
                (rewards(a), rewards(b(r)))
            })
            .unzip()
    }

    #[test]
    fn seeds_without_prompt_variation_give_the_closed_form() {
        // Differences −1 and +3, the same on every prompt: a bootstrap replicate's mean is that
        // of its two seed draws, −1 (probability ¼), 1 (½) or 3 (¼), whatever the prompt draw.
        // Of 1000 replicates the 25th sorted is −1 and the 975th is 3 unless fewer than 25 (26)
        // are −1 (3): probability below 1e-60.
        let (a, b) = shifted(&[-1.0, 3.0]);
        for seed in [0, 1, 7] {
            let d = replicated_difference(&a, &b, seed).unwrap();
            assert_eq!((d.mean, d.low, d.high, d.prompts), (1.0, -1.0, 3.0, 10));
            assert!(!d.excludes_zero());
        }
        // The bootstrap over prompts alone of the seeds' mean (+1 on every prompt) had zero width.
        let mean = |o: &[Outcomes]| {
            rewards(
                (0..10)
                    .map(|i| o.iter().map(|x| x.values()[i]).sum::<f64>() / o.len() as f64)
                    .collect(),
            )
        };
        let old = paired_difference(&mean(&a), &mean(&b), 0).unwrap();
        assert_eq!((old.mean, old.low, old.high), (1.0, 1.0, 1.0));
        // Differences 2 and 4: the interval [2, 4] excludes zero.
        let (a, b) = shifted(&[2.0, 4.0]);
        let d = replicated_difference(&a, &b, 0).unwrap();
        assert_eq!((d.mean, d.low, d.high), (3.0, 2.0, 4.0));
        assert!(d.excludes_zero());
    }

    #[test]
    fn seed_variance_widens_the_interval() {
        // The same 160 per-prompt differences v_k = k/160 − 0.3 dealt to 4 seeds × 40 prompts
        // two ways. In blocks (seed r gets v_{40r..40r+40}) the seeds disagree: their means
        // are −0.18, 0.07, 0.32 and 0.57. Interleaved (seed r gets v_{4i+r} on prompt i) they
        // agree to within 3/160, and the prompts differ instead.
        let v = |k: usize| k as f64 / 160.0 - 0.3;
        let deal = |at: fn(usize, usize) -> usize| -> (Vec<Outcomes>, Vec<Outcomes>) {
            (0..4)
                .map(|r| {
                    (
                        rewards((0..40).map(|i| v(at(r, i))).collect()),
                        rewards(vec![0.0; 40]),
                    )
                })
                .unzip()
        };
        // The old interval: the bootstrap over prompts of the seeds' prompt-by-prompt mean.
        let prompt_only = |a: &[Outcomes]| {
            let m = (0..40)
                .map(|i| a.iter().map(|x| x.values()[i]).sum::<f64>() / 4.0)
                .collect();
            paired_difference(&rewards(m), &rewards(vec![0.0; 40]), 3).unwrap()
        };
        let w = |d: Difference| d.high - d.low;
        let (blocks, zeros) = deal(|r, i| 40 * r + i);
        let (two, old) = (
            replicated_difference(&blocks, &zeros, 3).unwrap(),
            prompt_only(&blocks),
        );
        assert!((two.mean - old.mean).abs() < 1e-12 && (two.mean - 0.1969).abs() < 1e-3);
        // The old interval excludes zero; with the seeds' spread it is several times wider and
        // does not.
        assert!(
            old.excludes_zero() && !two.excludes_zero(),
            "{two:?} {old:?}"
        );
        assert!(w(two) > 4.0 * w(old), "{two:?} {old:?}");
        // Interleaved, the seeds add almost nothing: the two intervals are alike.
        let (mixed, zeros) = deal(|r, i| 4 * i + r);
        let (two_m, old_m) = (
            replicated_difference(&mixed, &zeros, 3).unwrap(),
            prompt_only(&mixed),
        );
        assert!(
            w(two_m) < 1.25 * w(old_m) && w(two_m) > 0.8 * w(old_m),
            "{two_m:?} {old_m:?}"
        );
        assert!(w(two) > 2.0 * w(two_m), "{two:?} {two_m:?}");
    }

    #[test]
    fn gain_fraction_maps_the_interval() {
        // The analytic optimum's win rate at KL 0.3 (standard procedure).
        let phi = optimal_transform(Procedure::Standard, 3.0, 201).unwrap();
        let lambda = lambda_for_kl(&phi, 0.3).unwrap();
        let best = evaluate(&phi, lambda, Procedure::Standard).win_rate;
        assert!(best > 0.6 && best < 0.8, "{best}");
        let at = |mean: f64| Interval {
            mean,
            low: mean - 0.05,
            high: mean + 0.05,
        };
        assert_eq!(gain_fraction(at(best), best).unwrap().mean, 1.0);
        assert_eq!(gain_fraction(at(0.5), best).unwrap().mean, 0.0);
        let g = gain_fraction(at(0.6), 0.7).unwrap();
        let want = [0.5, 0.25, 0.75];
        for (x, y) in [g.mean, g.low, g.high].into_iter().zip(want) {
            assert!((x - y).abs() < 1e-12, "{g:?}");
        }
        for bad in [0.5, 0.4, 1.2, f64::NAN] {
            assert!(gain_fraction(at(0.6), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paired_interval_covers_the_truth_about_95_percent_of_the_time() {
        // 1000 simulated data sets with known truth: per prompt 4 base rewards U, method A's
        // rewards √U' and method B's U' (the same U': positively correlated). A beats a base
        // sample with probability 2/3, B with ½: the true difference is 1/6.
        //
        // The interval is accepted if it covers 1/6 in 885 to 990 of the 1000 data sets. The
        // count is Binomial(1000, p) for the interval's true coverage p; this seed gives 946
        // (p ≈ 0.946 ± 0.007: the percentile bootstrap over 100 prompts is a little under
        // nominal). For any p in [0.93, 0.965] the probability of a count outside [885, 990] is
        // below 1e-6: P(X < 885) = 9.6e-8 at p = 0.93 and P(X > 990) = 1.3e-7 at p = 0.965.
        let (sets, prompts, k) = (1000, 100, 4);
        let truth = 2.0 / 3.0 - 0.5;
        let mut covered = 0;
        for s in 0..sets {
            let mut rng = infalign_core::Seed(s).stream("coverage");
            let mut draw = |f: fn(f64) -> f64| -> Vec<Vec<f64>> {
                (0..prompts)
                    .map(|_| (0..k).map(|_| f(rng.random::<f64>())).collect())
                    .collect()
            };
            let u = draw(|x| x);
            let base = draw(|x| x);
            let a: Vec<Vec<f64>> = u
                .iter()
                .map(|r| r.iter().map(|x| x.sqrt()).collect())
                .collect();
            let d =
                paired_win_rate_difference(&a, &u, &base, Procedure::Standard, Ties::Half, 1, s)
                    .unwrap();
            if d.low <= truth && truth <= d.high {
                covered += 1;
            }
        }
        assert!((885..=990).contains(&covered), "coverage {covered}/{sets}");
    }
}
