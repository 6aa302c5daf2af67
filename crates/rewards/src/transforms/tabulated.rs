//! Φ given by values on a uniform grid of [0, 1], linearly interpolated: the form in which the
//! evaluation crate hands over the optimal transform it computes by fixed point
//! (docs/ALGORITHMS.md B.4, B.5).
//!
//! Invariants: at least two grid values, all finite and non-decreasing; Φ is continuous and
//! piecewise linear; `u` outside [0, 1] is clamped.

use serde::{Deserialize, Serialize};

use super::RewardTransform;
use crate::RewardError;

/// Φ on the grid `u_i = i / (n - 1)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tabulated {
    /// Φ(u_i) for i = 0..n.
    pub values: Vec<f64>,
}

impl Tabulated {
    /// Checks the table.
    pub fn validate(&self) -> Result<(), RewardError> {
        let bad = |message: String| {
            Err(RewardError::InvalidParameter {
                field: "values",
                message,
            })
        };
        if self.values.len() < 2 {
            return bad("a tabulated transform needs at least two values".into());
        }
        if let Some(v) = self.values.iter().find(|v| !v.is_finite()) {
            return bad(format!("value {v} is not finite"));
        }
        if let Some(i) = self.values.windows(2).position(|w| w[1] < w[0]) {
            return bad(format!("values decrease at index {}", i + 1));
        }
        Ok(())
    }
}

impl RewardTransform for Tabulated {
    fn apply(&self, u: f64) -> f64 {
        let n = self.values.len() - 1;
        let x = u.clamp(0.0, 1.0) * n as f64;
        let i = (x.floor() as usize).min(n - 1);
        let frac = x - i as f64;
        self.values[i] * (1.0 - frac) + self.values[i + 1] * frac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_linearly() {
        let t = Tabulated {
            values: vec![0.0, 1.0, 4.0],
        };
        t.validate().unwrap();
        assert_eq!(t.apply(0.25), 0.5);
        assert_eq!(t.apply(0.75), 2.5);
        assert_eq!(t.apply(1.0), 4.0);
        assert_eq!(t.apply(-1.0), 0.0);
        super::super::assert_monotone(&t);
        assert!(
            Tabulated {
                values: vec![1.0, 0.0]
            }
            .validate()
            .is_err()
        );
        assert!(Tabulated { values: vec![1.0] }.validate().is_err());
    }
}
