//! A calibrated reward model (InfAlign, docs/ALGORITHMS.md B.3, "as an option"): a network trained
//! to predict the calibrated reward Ĉ(x, y) directly, so that prompts without reference rollouts
//! get a calibrated reward too. Targets are the leave-one-out Ĉ of every reference rollout among
//! the other rollouts of its prompt; the loss is the cross-entropy of σ(s) against the target,
//! `softplus(s) − Ĉ·s` (minimised at σ(s) = Ĉ); the prediction is σ(s) ∈ (0, 1).
//!
//! Invariants: a calibrated reward-model directory is a reward-model directory whose
//! `reward_model.json` says `"output": "calibrated"`, so `rm(path=DIR)` scores with σ(s); the
//! training loop, checkpoints and resume are `rm_train.rs`'s.

use burn::tensor::activation::softplus;
use burn::tensor::{Tensor, TensorData};

use crate::rm_train::RmObjective;
use crate::{Calibrator, RewardError};

/// One training example: the ids of prompt + completion and its calibrated reward.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibratedExample {
    /// Prompt and completion ids, concatenated.
    pub ids: Vec<u32>,
    /// Ĉ in [0, 1].
    pub target: f64,
}

/// Leave-one-out Ĉ of every `(prompt, reward)` among the rewards of its prompt; prompts need
/// at least two rollouts.
pub fn calibrated_targets(rollouts: &[(String, f64)]) -> Result<Vec<f64>, RewardError> {
    let mut by_prompt: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for (p, r) in rollouts {
        by_prompt.entry(p.as_str()).or_default().push(*r);
    }
    if let Some((p, _)) = by_prompt.iter().find(|(_, r)| r.len() < 2) {
        return Err(RewardError::InvalidParameter {
            field: "rollouts",
            message: format!(
                "prompt {p:?} has one rollout: leave-one-out calibration needs two or more"
            ),
        });
    }
    let mut cal = Calibrator::default();
    for (p, r) in by_prompt {
        cal.insert(p, r)?;
    }
    rollouts
        .iter()
        .map(|(p, r)| cal.calibrate_leave_one_out(p, *r))
        .collect()
}

/// Regression of σ(s) onto Ĉ.
#[derive(Debug, Clone, Copy)]
pub struct CalibratedRegression<'a>(pub &'a [CalibratedExample]);

impl RmObjective for CalibratedRegression<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn rows(&self, picked: &[usize]) -> Vec<Vec<u32>> {
        picked.iter().map(|&i| self.0[i].ids.clone()).collect()
    }

    fn loss(&self, picked: &[usize], scores: Tensor<1>) -> Tensor<1> {
        let targets: Vec<f32> = picked.iter().map(|&i| self.0[i].target as f32).collect();
        let c = Tensor::<1>::from_data(TensorData::new(targets, [picked.len()]), &scores.device());
        (softplus(scores.clone(), 1.0) - c * scores).mean()
    }

    fn metric(&self) -> &'static str {
        "calibrated_rm/loss"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_leave_one_out_quantiles() {
        let rows: Vec<(String, f64)> = [("a", 1.0), ("a", 3.0), ("a", 2.0), ("b", 5.0), ("b", 5.0)]
            .iter()
            .map(|(p, r)| ((*p).to_string(), *r))
            .collect();
        let t = calibrated_targets(&rows).unwrap();
        // Among the other two of "a": 1 beats none, 3 beats both, 2 beats one; ties count ½.
        assert_eq!(t, vec![0.0, 1.0, 0.5, 0.5, 0.5]);
        let lone = calibrated_targets(&[("c".into(), 1.0)]).unwrap_err();
        assert!(lone.to_string().contains("\"c\""), "{lone}");
    }
}
