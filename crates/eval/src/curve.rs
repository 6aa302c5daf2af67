//! Points on the win-rate/KL plane and the plots made of them (docs/ALGORITHMS.md A.6, B.1): every
//! evaluated configuration (a decoder at one λ, K or N; a policy aligned at one β) becomes a
//! [`CurvePoint`]; points of the same method form a curve, drawn next to theoretical references.
//!
//! References: best-of-N against one base sample has KL ≤ `ln N − (N−1)/N` and win rate
//! `N/(N+1)` for a continuous reward (Beirami et al. 2024; the CD paper's Fig. 2 curve), and the
//! calibrated-space analytic tool ([`crate::analytic`]) predicts any transform's curve under any
//! procedure.
//!
//! Invariants: a point's KL says how it was obtained ([`KlKind`]): an exact per-token sum, a
//! Monte Carlo estimate, or an upper bound (best-of-N, blockwise CD), and plots say so in the
//! legend; win rates carry their bootstrap intervals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analytic::{Procedure, evaluate};
use crate::paired::Outcomes;
use crate::plot::{LinePlot, Series};
use crate::{EvalError, Interval, Ties};

/// How a KL value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlKind {
    /// Σ_t KL of the next-token distributions along sampled paths (tokenwise decoders).
    ExactPerToken,
    /// Sequence-level Monte Carlo, k1 estimator.
    K1,
    /// Sequence-level Monte Carlo, k3 estimator.
    K3,
    /// An upper bound (best-of-N, blockwise CD): the likelihood is intractable.
    Bound,
    /// Zero by construction (the base model itself).
    Zero,
}

impl KlKind {
    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::ExactPerToken => "exact per-token",
            Self::K1 => "k1 estimate",
            Self::K3 => "k3 estimate",
            Self::Bound => "bound",
            Self::Zero => "zero",
        }
    }
}

/// A KL value with its provenance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Kl {
    /// Nats.
    pub value: f64,
    /// Standard error of a Monte Carlo value.
    pub stderr: Option<f64>,
    /// How it was obtained.
    pub kind: KlKind,
}

/// A win rate under one inference-time procedure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcedureWinRate {
    /// The procedure, applied to both sides.
    #[serde(flatten)]
    pub procedure: Procedure,
    /// The win rate with its interval.
    pub win_rate: Interval,
}

/// A point's outcomes on each prompt: what a paired comparison of two points differences
/// ([`crate::paired`]). Points are paired only when their `prompts_key`s are equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerPrompt {
    /// Identifies the prompts and their order (FNV-1a of the prompt texts, hexadecimal).
    pub prompts_key: String,
    /// Mean reward of the method's samples on each prompt.
    pub mean_reward: Vec<f64>,
    /// Win rate on each prompt, standard first, then each measured procedure.
    pub win_rates: Vec<ProcedureOutcomes>,
}

/// Summary statistics of a set of samples besides their mean reward.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleStats {
    /// Mean completion length in tokens.
    pub mean_tokens: f64,
    /// Fraction of samples whose reward is exactly 0 (a lexicon reward's "no sentiment word").
    pub zero_reward_fraction: f64,
}

impl SampleStats {
    /// From each sample's completion length and the per-prompt rewards of the same samples.
    pub fn of(tokens: impl IntoIterator<Item = usize>, rewards: &[Vec<f64>]) -> Self {
        let (mut sum, mut count) = (0usize, 0usize);
        for t in tokens {
            sum += t;
            count += 1;
        }
        let all: Vec<f64> = rewards.iter().flatten().copied().collect();
        Self {
            mean_tokens: sum as f64 / count.max(1) as f64,
            zero_reward_fraction: all.iter().filter(|&&r| r == 0.0).count() as f64
                / all.len().max(1) as f64,
        }
    }
}

/// Per-prompt win rates under one procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcedureOutcomes {
    /// The procedure.
    #[serde(flatten)]
    pub procedure: Procedure,
    /// The win rate on each prompt.
    pub per_prompt: Vec<f64>,
}

/// The key of a prompt list in [`PerPrompt::prompts_key`].
pub fn prompts_key(prompts: &[String]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in prompts {
        for b in p.bytes().chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// One evaluated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The method; points of one method form one curve.
    pub method: String,
    /// The swept parameter, if any (`lambda`, `k`, `n`, `beta`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Its value at this point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// KL(π ‖ π_ref).
    pub kl: Kl,
    /// Mean reward of the method's samples.
    pub mean_reward: f64,
    /// Mean reward of the base samples it was compared with.
    pub base_mean_reward: f64,
    /// How ties counted in the win rates.
    #[serde(default)]
    pub ties: Ties,
    /// Standard win rate against the base.
    pub win_rate: Interval,
    /// Win rates with an inference-time procedure applied to both sides.
    #[serde(default)]
    pub inference: Vec<ProcedureWinRate>,
    /// Mean of further rewards over the method's samples, by spec (e.g. a length next to the
    /// judged sentiment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub measures: BTreeMap<String, f64>,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Samples per prompt on the method's side.
    pub samples_per_prompt: usize,
    /// Length and zero-reward share of the method's samples, so that a win that comes from
    /// shortening (or from leaving the reward's support) shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_stats: Option<SampleStats>,
    /// The same for the base samples it was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sample_stats: Option<SampleStats>,
    /// Outcomes per prompt, for paired comparisons with other points on the same prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_prompt: Option<PerPrompt>,
    /// Which training run of this method and setting the point measures, when a preset trains
    /// several with different seeds (`eval --replicate`); the report compares replicates
    /// pairwise and then their mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate: Option<u64>,
}

/// What [`CurvePoint::measure`] compares.
#[derive(Debug, Clone, Copy)]
pub struct Comparison<'a> {
    /// Rewards of the method's samples, per prompt.
    pub policy: &'a [Vec<f64>],
    /// Rewards of base samples, per prompt (same prompts, same order).
    pub base: &'a [Vec<f64>],
    /// Inference-time procedures to evaluate besides the standard win rate; a procedure whose
    /// N exceeds the samples per prompt is skipped.
    pub procedures: &'a [Procedure],
    /// How ties count.
    pub ties: Ties,
    /// Monte Carlo repetitions per prompt for the procedures.
    pub reps: usize,
    /// Seed of the bootstrap and the Monte Carlo draws.
    pub seed: u64,
    /// The prompts, in the order of `policy` and `base`: with them the point keeps its
    /// per-prompt outcomes ([`PerPrompt`]).
    pub prompts: Option<&'a [String]>,
}

fn mean(v: &[Vec<f64>]) -> f64 {
    let n: usize = v.iter().map(Vec::len).sum();
    v.iter().flatten().sum::<f64>() / n.max(1) as f64
}

impl CurvePoint {
    /// Measures one configuration's win rates and mean rewards from per-prompt rewards.
    pub fn measure(
        method: impl Into<String>,
        param: Option<(&str, f64)>,
        kl: Kl,
        c: &Comparison<'_>,
    ) -> Result<Self, EvalError> {
        let per_prompt = c.policy.iter().map(Vec::len).min().unwrap_or(0);
        let base_per_prompt = c.base.iter().map(Vec::len).min().unwrap_or(0);
        let standard =
            Outcomes::win_rates(c.policy, c.base, Procedure::Standard, c.ties, 1, c.seed)?;
        let mut outcomes = vec![ProcedureOutcomes {
            procedure: Procedure::Standard,
            per_prompt: standard.values().to_vec(),
        }];
        let mut inference = Vec::new();
        for &procedure in c.procedures {
            let n = match procedure {
                Procedure::Standard => continue,
                Procedure::BestOfN { n } | Procedure::WorstOfN { n } => n as usize,
            };
            if n > per_prompt || n > base_per_prompt {
                tracing::warn!(
                    n,
                    per_prompt,
                    base_per_prompt,
                    "skipping a procedure that needs more samples per prompt"
                );
                continue;
            }
            // The same per-prompt outcomes and bootstrap as `inference_win_rate`.
            let o = Outcomes::win_rates(c.policy, c.base, procedure, c.ties, c.reps, c.seed)?;
            inference.push(ProcedureWinRate {
                procedure,
                win_rate: o.estimate(c.seed),
            });
            outcomes.push(ProcedureOutcomes {
                procedure,
                per_prompt: o.values().to_vec(),
            });
        }
        let per_prompt_rewards = c
            .policy
            .iter()
            .map(|r| r.iter().sum::<f64>() / r.len().max(1) as f64)
            .collect();
        Ok(Self {
            method: method.into(),
            param: param.map(|(p, _)| p.to_string()),
            value: param.map(|(_, v)| v),
            kl,
            mean_reward: mean(c.policy),
            base_mean_reward: mean(c.base),
            ties: c.ties,
            win_rate: standard.estimate(c.seed),
            inference,
            measures: BTreeMap::new(),
            sample_stats: None,
            base_sample_stats: None,
            prompts: c.policy.len(),
            samples_per_prompt: per_prompt,
            per_prompt: c.prompts.map(|p| PerPrompt {
                prompts_key: prompts_key(p),
                mean_reward: per_prompt_rewards,
                win_rates: outcomes,
            }),
            replicate: None,
        })
    }

    /// This point's per-prompt outcomes under `procedure`, if kept.
    pub fn outcomes_under(&self, procedure: Procedure) -> Option<&[f64]> {
        self.per_prompt
            .as_ref()?
            .win_rates
            .iter()
            .find(|o| o.procedure == procedure)
            .map(|o| o.per_prompt.as_slice())
    }

    /// The win rate under `procedure`, if it was measured.
    pub fn win_rate_under(&self, procedure: Procedure) -> Option<Interval> {
        if procedure == Procedure::Standard {
            return Some(self.win_rate);
        }
        self.inference
            .iter()
            .find(|w| w.procedure == procedure)
            .map(|w| w.win_rate)
    }
}

/// The best-of-N reference curve `(ln N − (N−1)/N, N/(N+1))` for N = 1, 2, ... while the KL
/// stays below `max_kl` (at least N = 1..=4).
pub fn best_of_n_reference(max_kl: f64) -> Series {
    let mut pts = Vec::new();
    for n in 1..=4096u32 {
        let kl = crate::kl::best_of_n_bound(n);
        if n > 4 && kl > max_kl {
            break;
        }
        pts.push((kl, f64::from(n) / f64::from(n + 1)));
    }
    Series::reference("best-of-N (theory)", pts)
}

/// The analytic tool's curve for the identity transform (standard RLHF on a calibrated reward)
/// under `procedure`, for KL in `[0, max_kl]`.
pub fn identity_reference(procedure: Procedure, max_kl: f64) -> Series {
    let phi = infalign_rewards::transforms::Identity;
    let mut pts = Vec::new();
    let mut lambda = 0.0;
    while pts.len() < 200 {
        let p = evaluate(&phi, lambda, procedure);
        pts.push((p.kl, p.win_rate));
        if p.kl > max_kl {
            break;
        }
        lambda += 0.25;
    }
    Series::reference("identity Φ, calibrated (theory)", pts)
}

/// The standard win rate of the best policy at KL `kl` on a calibrated reward with no ties (the
/// analytic tool's identity transform at the λ of that KL): no policy at that KL from the base
/// beats the base more often.
pub fn optimal_standard_win_rate(kl: f64) -> Result<f64, EvalError> {
    let phi = infalign_rewards::transforms::Identity;
    let lambda = crate::analytic::lambda_for_kl(&phi, kl)?;
    Ok(evaluate(&phi, lambda, Procedure::Standard).standard_win_rate)
}

/// The gain fraction of a policy at KL `kl` ([`crate::paired::gain_fraction`] with the optimum
/// of [`optimal_standard_win_rate`] at that KL): `(WR − ½) / (WR* − ½)`, the share of the
/// largest standard-win-rate gain any policy at that KL could reach. `None` at (nearly) zero
/// KL, where that gain itself is zero.
pub fn gain_fraction_at_kl(win_rate: Interval, kl: f64) -> Result<Option<Interval>, EvalError> {
    let best = optimal_standard_win_rate(kl)?;
    if best - 0.5 < 1e-6 {
        return Ok(None);
    }
    crate::paired::gain_fraction(win_rate, best).map(Some)
}

/// Human name of a procedure.
pub fn procedure_name(procedure: Procedure) -> String {
    match procedure {
        Procedure::Standard => "standard".into(),
        Procedure::BestOfN { n } => format!("best-of-{n}"),
        Procedure::WorstOfN { n } => format!("worst-of-{n}"),
    }
}

/// The methods in order of first appearance, each with its points sorted by KL.
pub fn group_by_method(points: &[CurvePoint]) -> Vec<(String, Vec<&CurvePoint>)> {
    let mut groups: Vec<(String, Vec<&CurvePoint>)> = Vec::new();
    for p in points {
        // Each training replicate is its own curve: joining seeds would draw a path no policy
        // took.
        let key = match p.replicate {
            Some(r) => format!("{}, replicate {r}", p.method),
            None => p.method.clone(),
        };
        match groups.iter_mut().find(|(m, _)| *m == key) {
            Some((_, v)) => v.push(p),
            None => groups.push((key, vec![p])),
        }
    }
    for (_, v) in &mut groups {
        v.sort_by(|a, b| a.kl.value.total_cmp(&b.kl.value));
    }
    groups
}

/// The plot group of one replicate's curve: its method (with the KL-bound mark of
/// [`legend`]), so that a method's replicates share a colour and a legend entry.
fn replicate_group(points: &[&CurvePoint]) -> Option<String> {
    let first = points.first()?;
    first.replicate.map(|_| legend(&first.method, points))
}

fn legend(method: &str, points: &[&CurvePoint]) -> String {
    if points.iter().any(|p| p.kl.kind == KlKind::Bound) {
        format!("{method} (KL bound)")
    } else {
        method.to_string()
    }
}

/// Win rate under `procedure` against KL, one curve per method, with error bars and the
/// theoretical references. `None` when no point measured that procedure.
pub fn win_rate_plot(points: &[CurvePoint], procedure: Procedure) -> Option<LinePlot> {
    let name = procedure_name(procedure);
    let mut plot = LinePlot::new(
        format!("{name} win rate against the base"),
        "KL(π ‖ π_ref), nats",
        format!("{name} win rate"),
    );
    let mut max_kl: f64 = 0.0;
    for (method, pts) in group_by_method(points) {
        let measured: Vec<(f64, Interval)> = pts
            .iter()
            .filter_map(|p| p.win_rate_under(procedure).map(|w| (p.kl.value, w)))
            .collect();
        if measured.is_empty() {
            continue;
        }
        max_kl = measured.iter().fold(max_kl, |m, (k, _)| m.max(*k));
        let mut s = Series::line(
            legend(&method, &pts),
            measured.iter().map(|(k, w)| (*k, w.mean)).collect(),
        );
        s.errors = Some(measured.iter().map(|(_, w)| (w.low, w.high)).collect());
        s.group = replicate_group(&pts);
        plot.series.push(s);
    }
    if plot.series.is_empty() {
        return None;
    }
    let max_kl = (max_kl * 1.1).max(0.5);
    if procedure == Procedure::Standard {
        plot.series.insert(0, best_of_n_reference(max_kl));
    }
    plot.series.insert(0, identity_reference(procedure, max_kl));
    Some(plot)
}

/// Mean reward against KL, one curve per method.
pub fn reward_plot(points: &[CurvePoint]) -> Option<LinePlot> {
    let mut plot = LinePlot::new("Reward against KL", "KL(π ‖ π_ref), nats", "mean reward");
    for (method, pts) in group_by_method(points) {
        let mut s = Series::line(
            legend(&method, &pts),
            pts.iter().map(|p| (p.kl.value, p.mean_reward)).collect(),
        );
        s.group = replicate_group(&pts);
        plot.series.push(s);
    }
    (!plot.series.is_empty()).then_some(plot)
}

/// Every procedure measured by some point, standard first.
pub fn procedures(points: &[CurvePoint]) -> Vec<Procedure> {
    let mut out = vec![Procedure::Standard];
    for p in points {
        for w in &p.inference {
            if !out.contains(&w.procedure) {
                out.push(w.procedure);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_stats_count_tokens_and_exact_zeros() {
        let s = SampleStats::of([2, 4, 6, 0], &[vec![0.0, 0.5], vec![-0.0, 1e-9]]);
        assert_eq!(s.mean_tokens, 3.0);
        // 0.0 and -0.0 are zero rewards; 1e-9 is not.
        assert_eq!(s.zero_reward_fraction, 0.5);
        let empty = SampleStats::of([], &[]);
        assert_eq!((empty.mean_tokens, empty.zero_reward_fraction), (0.0, 0.0));
    }

    #[test]
    fn best_of_n_reference_has_the_closed_form() {
        let s = best_of_n_reference(1.0);
        assert_eq!(s.points[0], (0.0, 0.5));
        let (kl, wr) = s.points[3];
        assert!((kl - (4f64.ln() - 0.75)).abs() < 1e-12 && (wr - 0.8).abs() < 1e-12);
        assert!(s.points.iter().rev().nth(1).unwrap().0 <= 1.0);
    }

    #[test]
    fn identity_reference_matches_its_closed_form() {
        // WR(λ) = 1/(1 − e^{−λ}) − 1/λ at λ = 2 (the ninth point).
        let s = identity_reference(Procedure::Standard, 1.0);
        let exact = 1.0 / (1.0 - (-2f64).exp()) - 0.5;
        assert!((s.points[8].1 - exact).abs() < 1e-4, "{:?}", s.points[8]);
        assert!(s.points[0].0.abs() < 1e-12 && (s.points[0].1 - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_gain_fraction_at_kl_is_one_on_the_optimum_and_zero_at_one_half() {
        // On the identity transform's own curve: WR(λ) = 1/(1 − e^{−λ}) − 1/λ and
        // KL(λ) = ln(λ / (e^λ − 1)) + λ·WR(λ), at λ = 2.
        let lambda = 2.0f64;
        let wr = 1.0 / (1.0 - (-lambda).exp()) - 1.0 / lambda;
        let kl = (lambda / (lambda.exp() - 1.0)).ln() + lambda * wr;
        assert!((optimal_standard_win_rate(kl).unwrap() - wr).abs() < 1e-6);
        let at = |w: f64| Interval {
            mean: w,
            low: w - 0.01,
            high: w + 0.01,
        };
        let s = gain_fraction_at_kl(at(wr), kl).unwrap().unwrap();
        assert!((s.mean - 1.0).abs() < 1e-4, "{s:?}");
        assert!(s.low < 1.0 && s.high > 1.0);
        let half = gain_fraction_at_kl(at(0.5), kl).unwrap().unwrap();
        assert!(half.mean.abs() < 1e-12);
        // Halfway between one half and the optimum is a share of one half.
        let mid = gain_fraction_at_kl(at(0.25 + wr / 2.0), kl)
            .unwrap()
            .unwrap();
        assert!((mid.mean - 0.5).abs() < 1e-4, "{mid:?}");
        assert!(gain_fraction_at_kl(at(0.6), 0.0).unwrap().is_none());
    }

    #[test]
    fn measured_points_group_into_curves() {
        // The policy always beats the base: win rate 1 under every procedure.
        let policy = vec![vec![2.0, 3.0, 4.0]; 5];
        let base = vec![vec![0.0, 1.0, 1.5]; 5];
        let c = Comparison {
            policy: &policy,
            base: &base,
            procedures: &[Procedure::BestOfN { n: 2 }, Procedure::WorstOfN { n: 8 }],
            ties: Ties::Half,
            reps: 16,
            seed: 1,
            prompts: None,
        };
        let kl = Kl {
            value: 0.3,
            stderr: None,
            kind: KlKind::Bound,
        };
        let a = CurvePoint::measure("bon", Some(("n", 2.0)), kl, &c).unwrap();
        assert_eq!(a.win_rate.mean, 1.0);
        // Worst-of-8 needs 8 samples per prompt: skipped, not invented.
        assert_eq!(a.inference.len(), 1);
        assert_eq!(a.mean_reward, 3.0);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<CurvePoint>(&json).unwrap(), a);
        let mut b = a.clone();
        b.kl.value = 0.1;
        let pts = vec![a, b];
        let groups = group_by_method(&pts);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1[0].kl.value, 0.1);
        let plot = win_rate_plot(&pts, Procedure::BestOfN { n: 2 }).unwrap();
        assert!(plot.series.iter().any(|s| s.name == "bon (KL bound)"));
        assert!(win_rate_plot(&pts, Procedure::WorstOfN { n: 8 }).is_none());
        assert_eq!(procedures(&pts).len(), 2);
    }
}
