//! A weighted sum of rewards, `Σ_i w_i r_i(x, y)`; weights may be negative (CD's
//! multi-objective experiment penalises length with a negative weight, docs/ALGORITHMS.md A.5.3).

use crate::RewardError;
use crate::reward::{Reward, RewardInput, finite};

/// `Σ_i w_i r_i`.
pub struct WeightedSum {
    parts: Vec<(f64, Box<dyn Reward>)>,
}

impl std::fmt::Debug for WeightedSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightedSum({})", self.name())
    }
}

impl WeightedSum {
    /// A sum of `(weight, reward)` parts.
    pub fn new(parts: Vec<(f64, Box<dyn Reward>)>) -> Result<Self, RewardError> {
        if parts.is_empty() {
            return Err(RewardError::InvalidParameter {
                field: "weights",
                message: "a weighted sum needs at least one reward".into(),
            });
        }
        if let Some((w, _)) = parts.iter().find(|(w, _)| !w.is_finite()) {
            return Err(RewardError::InvalidParameter {
                field: "weights",
                message: format!("weight {w} is not finite"),
            });
        }
        Ok(Self { parts })
    }
}

impl Reward for WeightedSum {
    fn name(&self) -> String {
        self.parts
            .iter()
            .map(|(w, r)| format!("{w}*{}", r.name()))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        let mut total = 0.0;
        for (w, r) in &self.parts {
            total += w * finite(&r.name(), r.score(input)?)?;
        }
        finite(&self.name(), total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewards::LengthReward;

    #[test]
    fn sums_with_negative_weights() {
        let s = WeightedSum::new(vec![
            (2.0, Box::new(LengthReward::new(10).unwrap())),
            (-0.5, Box::new(LengthReward::new(100).unwrap())),
        ])
        .unwrap();
        let i = RewardInput {
            prompt: "",
            completion: "",
            tokens: 5,
            ids: &[],
        };
        let want = 2.0 * (0.5f64).ln() - 0.5 * (0.05f64).ln();
        assert!((s.score(&i).unwrap() - want).abs() < 1e-12);
        assert!(s.name().contains("-0.5*length"));
        assert!(WeightedSum::new(vec![]).is_err());
    }
}
