//! The calibrated-space analytic tool (InfAlign; our reconstruction, docs/ALGORITHMS.md B.5).
//!
//! If the aligned policy is `π ∝ π_ref · exp(λ Φ(C))` and the calibrated reward C is uniform on
//! [0, 1] under π_ref (continuous rewards), then C has density `f(u) = exp(λΦ(u)) / Z` under π,
//! and every metric is a one-dimensional integral, independent of the base model and the
//! reward model:
//!
//! - `KL(π ‖ π_ref) = ∫ f log f`
//! - standard win rate `= ∫ u f(u) du`
//! - best-of-N against best-of-N `= ∫ u^N d[F(u)^N]`
//! - worst-of-N against worst-of-N `= ∫ (1 − (1−u)^N) d[1 − (1 − F(u))^N]`
//!
//! Integrals use the midpoint rule on [`GRID`] cells, in log space so that large λΦ does not
//! overflow. Closed forms checked in the tests: the best-of-N policy (Φ = log, λ = N − 1) has KL
//! `ln N − (N−1)/N` and win rate `N/(N+1)`; the identity transform has
//! `WR(λ) = 1/(1 − e^{−λ}) − 1/λ`.
//!
//! Invariant: KL is non-decreasing in λ ≥ 0 (`dKL/dλ = λ Var_f Φ`), which the λ solver relies
//! on.

use infalign_rewards::transforms::Tabulated;
use infalign_rewards::{RewardTransform, Transform};
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Cells of the integration grid.
pub const GRID: usize = 20_000;

/// The inference-time procedure applied to both the policy and the base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "procedure")]
pub enum Procedure {
    /// One sample.
    Standard,
    /// The best of N samples by reward.
    BestOfN {
        /// N.
        n: u32,
    },
    /// The worst of N samples by reward.
    WorstOfN {
        /// N.
        n: u32,
    },
}

/// What the tool predicts for one (Φ, λ).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// λ = 1/β.
    pub lambda: f64,
    /// KL(π ‖ π_ref) in nats.
    pub kl: f64,
    /// Win rate against the base under the procedure.
    pub win_rate: f64,
    /// Standard (N = 1) win rate.
    pub standard_win_rate: f64,
}

/// The density of C under π on the grid's midpoints (sums to GRID, i.e. integrates to 1).
fn density(phi: &dyn RewardTransform, lambda: f64) -> Vec<f64> {
    let h = 1.0 / GRID as f64;
    let logits: Vec<f64> = (0..GRID)
        .map(|i| lambda * phi.apply((i as f64 + 0.5) * h))
        .collect();
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let z = w.iter().sum::<f64>() * h;
    w.into_iter().map(|x| x / z).collect()
}

/// Cumulative F at the right edge of every cell.
fn cdf(f: &[f64]) -> Vec<f64> {
    let h = 1.0 / f.len() as f64;
    let mut acc = 0.0;
    f.iter()
        .map(|x| {
            acc += x * h;
            acc.min(1.0)
        })
        .collect()
}

fn win_rate_of(f: &[f64], procedure: Procedure) -> f64 {
    let h = 1.0 / f.len() as f64;
    let big_f = cdf(f);
    let mut prev = 0.0;
    let mut w = 0.0;
    for (i, &fi) in big_f.iter().enumerate() {
        let u = (i as f64 + 0.5) * h;
        // Probability mass of the chosen π sample in this cell, and the base's chance to lose.
        let (mass, beats) = match procedure {
            Procedure::Standard => (fi - prev, u),
            Procedure::BestOfN { n } => (fi.powi(n as i32) - prev.powi(n as i32), u.powi(n as i32)),
            Procedure::WorstOfN { n } => (
                (1.0 - prev).powi(n as i32) - (1.0 - fi).powi(n as i32),
                1.0 - (1.0 - u).powi(n as i32),
            ),
        };
        w += mass * beats;
        prev = fi;
    }
    w
}

/// KL, standard win rate and the procedure's win rate of `π ∝ π_ref exp(λ Φ(C))`.
pub fn evaluate(phi: &dyn RewardTransform, lambda: f64, procedure: Procedure) -> Prediction {
    let f = density(phi, lambda);
    let h = 1.0 / f.len() as f64;
    let kl = f
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f64>()
        * h;
    Prediction {
        lambda,
        kl: kl.max(0.0),
        win_rate: win_rate_of(&f, procedure),
        standard_win_rate: win_rate_of(&f, Procedure::Standard),
    }
}

/// The λ ≥ 0 at which `π ∝ π_ref exp(λΦ)` has KL `target` (bisection on the monotone KL).
pub fn lambda_for_kl(phi: &dyn RewardTransform, target: f64) -> Result<f64, EvalError> {
    if !(target >= 0.0 && target.is_finite()) {
        return Err(EvalError::Invalid {
            field: "kl",
            message: format!("{target} must be a non-negative number"),
        });
    }
    let kl = |l: f64| evaluate(phi, l, Procedure::Standard).kl;
    let (mut lo, mut hi) = (0.0, 1.0);
    while kl(hi) < target {
        hi *= 2.0;
        if hi > 1e7 {
            return Err(EvalError::Invalid {
                field: "kl",
                message: format!(
                    "KL {target} is out of reach of this transform (max {:.3})",
                    kl(hi)
                ),
            });
        }
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if kl(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// For each t of `grid`, the procedure's win rate of `Φ_t` tuned to KL `target`; returns the
/// table and the best t.
pub fn search_t(
    make: impl Fn(f64) -> Transform,
    grid: &[f64],
    target_kl: f64,
    procedure: Procedure,
) -> Result<(Vec<(f64, Prediction)>, f64), EvalError> {
    let mut table = Vec::with_capacity(grid.len());
    for &t in grid {
        let phi = make(t);
        let lambda = lambda_for_kl(&phi, target_kl)?;
        table.push((t, evaluate(&phi, lambda, procedure)));
    }
    let best = table
        .iter()
        .max_by(|a, b| a.1.win_rate.total_cmp(&b.1.win_rate))
        .map(|(t, _)| *t)
        .ok_or_else(|| EvalError::Invalid {
            field: "t",
            message: "the grid is empty".into(),
        })?;
    Ok((table, best))
}

/// Largest change of the optimal transform's values between two iterations at which
/// [`optimal_transform`] stops.
pub const OPTIMAL_TOLERANCE: f64 = 1e-9;

/// Iterations [`optimal_transform`] may take before it gives up.
const OPTIMAL_MAX_ITERATIONS: usize = 20_000;

/// The optimal transform for `procedure` at `λ` (docs/ALGORITHMS.md B.2, B.4): the fixed point
/// of `R_T(c) = ∂W/∂π` evaluated at `π ∝ π_ref exp(λ R_T)`: best-of-N
/// `R(c) = N² ∫_0^c F^{N−1} v^{N−1} dv`, worst-of-N
/// `R(c) = N² ∫_0^c (1−F)^{N−1} (1−v)^{N−1} dv`, standard `R(c) = c`. Returned tabulated on
/// `points` values.
///
/// The iteration damps the *density* `f` (a convex combination of densities is a density),
/// not R: `f ← (1 − α) f + α · density(R(f))`, with α halved whenever the change grows (the
/// undamped map oscillates for large λ: N = 4 from λ ≈ 7). It stops when R changes by less
/// than [`OPTIMAL_TOLERANCE`]; an error says so if it has not after its iteration budget.
pub fn optimal_transform(
    procedure: Procedure,
    lambda: f64,
    points: usize,
) -> Result<Tabulated, EvalError> {
    if !(lambda.is_finite() && lambda >= 0.0) || points < 2 {
        return Err(EvalError::Invalid {
            field: "lambda",
            message: format!("λ = {lambda} must be non-negative, with at least 2 points"),
        });
    }
    let n = match procedure {
        Procedure::Standard => 1,
        Procedure::BestOfN { n } | Procedure::WorstOfN { n } => n,
    };
    let h = 1.0 / GRID as f64;
    // R from the policy's density f, on the grid's right edges (R(0) = 0).
    let transform_of = |f: &[f64]| -> Vec<f64> {
        let big_f = cdf(f);
        let mut acc = 0.0;
        let mut vals = vec![0.0; GRID + 1];
        for (i, &fi) in big_f.iter().enumerate() {
            let v = (i as f64 + 0.5) * h;
            let integrand = match procedure {
                Procedure::Standard => 1.0,
                Procedure::BestOfN { .. } => (fi * v).powi(n as i32 - 1),
                Procedure::WorstOfN { .. } => ((1.0 - fi) * (1.0 - v)).powi(n as i32 - 1),
            };
            acc += f64::from(n * n) * integrand * h;
            vals[i + 1] = acc;
        }
        vals
    };
    let tabulate = |vals: &[f64]| Tabulated {
        values: (0..points)
            .map(|j| vals[(j * GRID) / (points - 1)])
            .collect(),
    };
    // Start from the policy of the identity transform.
    let mut f = density(&infalign_rewards::transforms::Identity, lambda);
    let mut r = tabulate(&transform_of(&f));
    let (mut alpha, mut last_change) = (0.5, f64::INFINITY);
    for _ in 0..OPTIMAL_MAX_ITERATIONS {
        let target = density(&r, lambda);
        f = f
            .iter()
            .zip(&target)
            .map(|(a, b)| (1.0 - alpha) * a + alpha * b)
            .collect();
        let next = tabulate(&transform_of(&f));
        let change = next
            .values
            .iter()
            .zip(&r.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        r = next;
        if change < OPTIMAL_TOLERANCE {
            return Ok(r);
        }
        if change > last_change {
            alpha = (alpha * 0.5).max(1e-4);
        }
        last_change = change;
    }
    Err(EvalError::Invalid {
        field: "lambda",
        message: format!(
            "the optimal transform at λ = {lambda} did not converge to {OPTIMAL_TOLERANCE} in \
             {OPTIMAL_MAX_ITERATIONS} iterations (last change {last_change:.2e})"
        ),
    })
}

/// The λ at which the optimal transform's policy has KL `target`, with that transform
/// (bisection on λ: the optimum's KL grows with λ).
pub fn optimal_transform_at_kl(
    procedure: Procedure,
    target: f64,
    points: usize,
) -> Result<(f64, Tabulated), EvalError> {
    if !(target >= 0.0 && target.is_finite()) {
        return Err(EvalError::Invalid {
            field: "kl",
            message: format!("{target} must be a non-negative number"),
        });
    }
    let kl_at = |l: f64| -> Result<(f64, Tabulated), EvalError> {
        let phi = optimal_transform(procedure, l, points)?;
        Ok((evaluate(&phi, l, procedure).kl, phi))
    };
    let (mut lo, mut hi) = (0.0, 1.0);
    while kl_at(hi)?.0 < target {
        hi *= 2.0;
        if hi > 1e4 {
            return Err(EvalError::Invalid {
                field: "kl",
                message: format!("KL {target} is out of reach of the optimal transform"),
            });
        }
    }
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if kl_at(mid)?.0 < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let lambda = 0.5 * (lo + hi);
    Ok((lambda, kl_at(lambda)?.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use infalign_rewards::transforms::{Identity, Log};

    #[test]
    fn best_of_n_policy_closed_forms() {
        // Φ = log u with λ = N − 1 gives f = N u^{N−1}: the best-of-N policy.
        for (n, kl) in [(2u32, 0.1931), (4, 0.6363), (8, 1.2044), (32, 2.4970)] {
            let p = evaluate(&Log { eps: 0.0 }, f64::from(n - 1), Procedure::Standard);
            let exact = f64::from(n).ln() - f64::from(n - 1) / f64::from(n);
            assert!((p.kl - exact).abs() < 1e-4, "N={n}: {}", p.kl);
            assert!((p.kl - kl).abs() < 1e-3);
            assert!(
                (p.win_rate - f64::from(n) / f64::from(n + 1)).abs() < 1e-6,
                "N={n}"
            );
        }
    }

    #[test]
    fn identity_closed_forms() {
        for (lambda, wr, kl) in [
            (1.0, 0.5820, 0.0407),
            (3.0, 0.7191, 0.3069),
            (10.0, 0.9000, 1.3031),
        ] {
            let p = evaluate(&Identity, lambda, Procedure::Standard);
            let exact_wr = 1.0 / (1.0 - (-lambda).exp()) - 1.0 / lambda;
            let exact_kl = lambda.ln() - (lambda.exp() - 1.0).ln()
                + (lambda.exp() * (lambda - 1.0) + 1.0) / (lambda.exp() - 1.0);
            assert!((p.win_rate - exact_wr).abs() < 1e-6, "λ={lambda}");
            assert!((p.kl - exact_kl).abs() < 1e-6, "λ={lambda}");
            assert!((p.win_rate - wr).abs() < 1e-4 && (p.kl - kl).abs() < 1e-4);
        }
    }

    #[test]
    fn log_transform_gains_nothing_from_best_of_n() {
        // f ∝ u^λ: BoN_N vs BoN_N win rate is (λ+1)/(λ+2) for every N.
        for lambda in [0.5, 2.0, 5.0] {
            for n in [1, 2, 4, 16] {
                let p = evaluate(&Log { eps: 0.0 }, lambda, Procedure::BestOfN { n });
                assert!(
                    (p.win_rate - (lambda + 1.0) / (lambda + 2.0)).abs() < 1e-4,
                    "λ={lambda} N={n}"
                );
            }
        }
    }

    #[test]
    fn base_policy_wins_half_under_every_procedure() {
        for proc in [
            Procedure::Standard,
            Procedure::BestOfN { n: 4 },
            Procedure::WorstOfN { n: 4 },
        ] {
            let p = evaluate(&Identity, 0.0, proc);
            assert!(
                p.kl.abs() < 1e-12 && (p.win_rate - 0.5).abs() < 1e-6,
                "{proc:?}"
            );
        }
    }

    #[test]
    fn lambda_solver_hits_the_target() {
        let phi = Transform::exp(3.0);
        for target in [0.1, 1.0, 3.0] {
            let l = lambda_for_kl(&phi, target).unwrap();
            assert!((evaluate(&phi, l, Procedure::Standard).kl - target).abs() < 1e-6);
        }
        assert!(lambda_for_kl(&phi, -1.0).is_err());
    }

    #[test]
    fn transforms_rank_as_the_paper_says_at_matched_kl() {
        // docs/ALGORITHMS.md B.5 takeaways, at KL = 1: for BoN_4, exp (tuned t) beats identity,
        // which beats log; for WoN_4, negexp beats identity and log beats identity.
        let kl = 1.0;
        let at = |phi: Transform, proc| {
            let l = lambda_for_kl(&phi, kl).unwrap();
            evaluate(&phi, l, proc).win_rate
        };
        let bon = Procedure::BestOfN { n: 4 };
        let won = Procedure::WorstOfN { n: 4 };
        let (table, best_t) =
            search_t(Transform::exp, &[0.5, 1.0, 2.0, 4.0, 8.0, 16.0], kl, bon).unwrap();
        let exp_best = table.iter().find(|(t, _)| *t == best_t).unwrap().1.win_rate;
        let id_bon = at(Transform::Identity(Identity), bon);
        let log_bon = at(Transform::log(0.0), bon);
        assert!(
            exp_best > id_bon && id_bon > log_bon,
            "{exp_best} {id_bon} {log_bon}"
        );
        let (table, best_t) = search_t(
            Transform::neg_exp,
            &[0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
            kl,
            won,
        )
        .unwrap();
        let negexp_best = table.iter().find(|(t, _)| *t == best_t).unwrap().1.win_rate;
        let id_won = at(Transform::Identity(Identity), won);
        let log_won = at(Transform::log(0.0), won);
        assert!(
            negexp_best > id_won && log_won > id_won,
            "{negexp_best} {id_won} {log_won}"
        );
    }

    #[test]
    fn optimal_transform_is_at_least_as_good_as_exp() {
        let bon = Procedure::BestOfN { n: 4 };
        let lambda = 4.0;
        let opt = optimal_transform(bon, lambda, 201).unwrap();
        let p_opt = evaluate(&opt, lambda, bon);
        // Compare with the best exp at the same KL.
        let (table, _) =
            search_t(Transform::exp, &[1.0, 2.0, 4.0, 8.0, 12.0], p_opt.kl, bon).unwrap();
        let best_exp = table.iter().map(|(_, p)| p.win_rate).fold(0.0, f64::max);
        assert!(
            p_opt.win_rate >= best_exp - 1e-3,
            "optimal {} < exp {}",
            p_opt.win_rate,
            best_exp
        );
        // Standard procedure: the optimal transform is the identity (up to scale).
        let std_opt = optimal_transform(Procedure::Standard, 3.0, 11).unwrap();
        for (i, v) in std_opt.values.iter().enumerate() {
            assert!((v - i as f64 / 10.0).abs() < 1e-3, "{v}");
        }
    }

    #[test]
    fn the_optimal_transform_converges_where_it_used_to_oscillate_and_beats_every_parametric_one() {
        // λ = 8 at N = 4 used to return an oscillating iterate (KL 0.464, win rate 0.8641,
        // below the best exp transform at that KL). Over a grid of N and λ, for best- and
        // worst-of-N, the converged optimum does at least as well as every exp(t·u) and
        // −exp(−t·u) transform at the same KL.
        for (n, lambda) in [(4u32, 8.0), (4, 12.0), (8, 4.0), (8, 6.0), (2, 10.0)] {
            for procedure in [Procedure::BestOfN { n }, Procedure::WorstOfN { n }] {
                let opt = optimal_transform(procedure, lambda, 201).unwrap();
                let p = evaluate(&opt, lambda, procedure);
                for make in [Transform::exp as fn(f64) -> Transform, Transform::neg_exp] {
                    let (table, _) =
                        search_t(make, &[0.5, 1.0, 2.0, 4.0, 8.0, 16.0], p.kl, procedure).unwrap();
                    let best = table.iter().map(|(_, q)| q.win_rate).fold(0.0, f64::max);
                    assert!(
                        p.win_rate >= best - 1e-4,
                        "{procedure:?} λ {lambda}: optimum {} below a parametric {best}",
                        p.win_rate
                    );
                }
                // Deterministic: the same call gives the same table.
                let again = optimal_transform(procedure, lambda, 201).unwrap();
                assert_eq!(again.values, opt.values, "deterministic");
            }
        }
        // At a KL: the λ found gives that KL.
        let bon = Procedure::BestOfN { n: 4 };
        let (lambda, phi) = optimal_transform_at_kl(bon, 0.5, 101).unwrap();
        assert!((evaluate(&phi, lambda, bon).kl - 0.5).abs() < 1e-4);
    }
}
