//! Reward calibration against the base policy (InfAlign, docs/ALGORITHMS.md B.3):
//!
//! `Ĉ(x, y) = (1/K) Σ_i [1{r(x,y) > s_i} + ½·1{r(x,y) = s_i}]`
//!
//! over the rewards `s_1..s_K` of K base-policy samples for the same prompt. Ĉ is the
//! empirical quantile of `r(x, y)` among base rewards: the calibrated reward whose expectation
//! under a policy is its standard win rate against the base.
//!
//! Invariants: Ĉ ∈ [0, 1]; Ĉ is unchanged by any strictly increasing transform of r; with
//! leave-one-out, the Ĉ of the reference samples themselves (distinct rewards) is exactly the
//! grid {0, 1/(K-1), ..., 1}; lookups are binary searches over rewards sorted once per prompt,
//! O(log K).

use std::collections::HashMap;

use crate::RewardError;

/// Calibrated rewards from stored per-prompt reference rewards.
#[derive(Debug, Clone, Default)]
pub struct Calibrator {
    sorted: HashMap<String, Vec<f64>>,
    /// Map Ĉ to `(K·Ĉ + ½) / (K + 1)`, strictly inside (0, 1) so that `log Ĉ` is finite.
    pub smoothing: bool,
}

impl Calibrator {
    /// Stores the reference rewards of `prompt` (K base samples).
    pub fn insert(&mut self, prompt: &str, mut rewards: Vec<f64>) -> Result<(), RewardError> {
        if rewards.is_empty() {
            return Err(RewardError::NoRollouts {
                prompt: prompt.into(),
            });
        }
        if let Some(&v) = rewards.iter().find(|v| !v.is_finite()) {
            return Err(RewardError::NotFinite {
                what: format!("reference reward of prompt {prompt:?}"),
                value: v,
            });
        }
        rewards.sort_by(f64::total_cmp);
        self.sorted.insert(prompt.to_string(), rewards);
        Ok(())
    }

    /// Number of prompts with reference rewards.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether no prompt has reference rewards.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The sorted reference rewards of `prompt`.
    pub fn reference(&self, prompt: &str) -> Option<&[f64]> {
        self.sorted.get(prompt).map(Vec::as_slice)
    }

    /// `Ĉ(x, y)` for a reward `r` of a new sample of `prompt`.
    pub fn calibrate(&self, prompt: &str, r: f64) -> Result<f64, RewardError> {
        self.calibrate_inner(prompt, r, false)
    }

    /// `Ĉ(x, y)` for a sample that is itself one of the reference samples: one reference copy
    /// of `r` is left out, so the sample is compared with the other K - 1.
    pub fn calibrate_leave_one_out(&self, prompt: &str, r: f64) -> Result<f64, RewardError> {
        self.calibrate_inner(prompt, r, true)
    }

    fn calibrate_inner(
        &self,
        prompt: &str,
        r: f64,
        leave_one_out: bool,
    ) -> Result<f64, RewardError> {
        if !r.is_finite() {
            return Err(RewardError::NotFinite {
                what: format!("reward of a sample of prompt {prompt:?}"),
                value: r,
            });
        }
        let s = self
            .sorted
            .get(prompt)
            .ok_or_else(|| RewardError::NoRollouts {
                prompt: prompt.into(),
            })?;
        let less = s.partition_point(|&v| v < r);
        let mut equal = s.partition_point(|&v| v <= r) - less;
        let mut k = s.len();
        if leave_one_out {
            if equal == 0 {
                return Err(RewardError::InvalidParameter {
                    field: "leave_one_out",
                    message: format!("reward {r} is not among the reference rewards of {prompt:?}"),
                });
            }
            equal -= 1;
            k -= 1;
            if k == 0 {
                return Err(RewardError::InvalidParameter {
                    field: "leave_one_out",
                    message: format!("prompt {prompt:?} has a single reference sample"),
                });
            }
        }
        let c = (less as f64 + 0.5 * equal as f64) / k as f64;
        Ok(if self.smoothing {
            (k as f64 * c + 0.5) / (k as f64 + 1.0)
        } else {
            c
        })
    }
}

/// The exact calibrated reward `C = P(R < r) + ½ P(R = r)` when the base policy's reward
/// distribution is known: `cdf_below(r) = P(R < r)` and `mass_at(r) = P(R = r)`.
pub fn calibrated_from_cdf(
    r: f64,
    cdf_below: impl Fn(f64) -> f64,
    mass_at: impl Fn(f64) -> f64,
) -> f64 {
    cdf_below(r) + 0.5 * mass_at(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(k: usize) -> (Calibrator, Vec<f64>) {
        // Distinct rewards in a scrambled order.
        let rewards: Vec<f64> = (0..k)
            .map(|i| ((i * 7919) % k) as f64 * 0.37 - 3.0)
            .collect();
        let mut c = Calibrator::default();
        c.insert("p", rewards.clone()).unwrap();
        (c, rewards)
    }

    #[test]
    fn leave_one_out_of_the_references_is_the_uniform_grid() {
        let k = 101;
        let (c, rewards) = cal(k);
        let mut got: Vec<f64> = rewards
            .iter()
            .map(|&r| c.calibrate_leave_one_out("p", r).unwrap())
            .collect();
        got.sort_by(f64::total_cmp);
        for (i, g) in got.iter().enumerate() {
            assert!((g - i as f64 / (k - 1) as f64).abs() < 1e-12, "{i}: {g}");
        }
    }

    #[test]
    fn invariant_under_increasing_transforms() {
        let (c, rewards) = cal(50);
        let f = |r: f64| (2.0 * r).exp() * 3.0 + 1.0;
        let mut cf = Calibrator::default();
        cf.insert("p", rewards.iter().map(|&r| f(r)).collect())
            .unwrap();
        for q in [-5.0, -3.0, -1.234, 0.0, 2.5, 100.0] {
            assert_eq!(
                c.calibrate("p", q).unwrap(),
                cf.calibrate("p", f(q)).unwrap()
            );
        }
    }

    #[test]
    fn ties_count_half_and_smoothing_keeps_logs_finite() {
        let mut c = Calibrator::default();
        c.insert("p", vec![1.0, 2.0, 2.0, 3.0]).unwrap();
        assert_eq!(c.calibrate("p", 2.0).unwrap(), (1.0 + 0.5 * 2.0) / 4.0);
        assert_eq!(c.calibrate("p", 0.0).unwrap(), 0.0);
        assert_eq!(c.calibrate("p", 9.0).unwrap(), 1.0);
        assert_eq!(
            c.calibrate_leave_one_out("p", 2.0).unwrap(),
            (1.0 + 0.5) / 3.0
        );
        c.smoothing = true;
        let lo = c.calibrate("p", 0.0).unwrap();
        assert!(lo > 0.0 && lo.ln().is_finite());
        assert!(c.calibrate("p", 9.0).unwrap() < 1.0);
    }

    #[test]
    fn bad_input_is_named() {
        let (c, _) = cal(5);
        let e = c.calibrate("p", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
        let e = c.calibrate("unseen", 1.0).unwrap_err().to_string();
        assert!(e.contains("unseen") && e.contains("rollouts"), "{e}");
        let mut c = Calibrator::default();
        assert!(c.insert("q", vec![1.0, f64::INFINITY]).is_err());
        assert!(c.insert("q", vec![]).is_err());
    }

    #[test]
    fn empirical_converges_to_exact() {
        // Base rewards uniform on a grid of 1000 points in [0, 1): exact C(r) = r for r on it.
        let mut c = Calibrator::default();
        c.insert("p", (0..1000).map(|i| i as f64 / 1000.0).collect())
            .unwrap();
        let exact = calibrated_from_cdf(0.3141, |r| r.clamp(0.0, 1.0), |_| 0.0);
        assert!((c.calibrate("p", 0.3141).unwrap() - exact).abs() < 1e-3);
    }
}
