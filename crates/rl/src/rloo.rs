//! RLOO (REINFORCE leave-one-out; Kool et al. 2019, Ahmadian et al. 2024): k samples per
//! prompt, each one's baseline the mean score of the other k − 1, one on-policy gradient step
//! per batch: `loss = −mean_i A_i · log π_θ(y_i | x)`, `A_i = s_i − mean_{j≠i} s_j`.
//!
//! With the KL in the reward (`s = R − β · (log π − log π_ref)`, the k1 estimator) this is an
//! unbiased gradient of the KL-regularised objective `E[R] − β KL(π ‖ π_ref)`, whose maximiser
//! is `π_ref · exp(R/β) / Z` (tested on a one-step bandit).
//!
//! Invariant: advantages sum to zero within each prompt's group.

use crate::RlError;

/// Leave-one-out advantages of `scores`, grouped in consecutive runs of `k`.
pub fn advantages(scores: &[f64], k: usize) -> Result<Vec<f64>, RlError> {
    if k < 2 || !scores.len().is_multiple_of(k) {
        return Err(RlError::InvalidParameter {
            field: "k",
            message: format!(
                "RLOO needs k >= 2 samples per prompt and whole groups; got k = {k} for {} scores",
                scores.len()
            ),
        });
    }
    Ok(scores
        .chunks(k)
        .flat_map(|g| {
            let sum: f64 = g.iter().sum();
            g.iter().map(move |&s| s - (sum - s) / (k - 1) as f64)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out() {
        let a = advantages(&[1.0, 2.0, 3.0, 10.0, 10.0, 10.0], 3).unwrap();
        assert_eq!(a, vec![1.0 - 2.5, 2.0 - 2.0, 3.0 - 1.5, 0.0, 0.0, 0.0]);
        assert!(a[..3].iter().sum::<f64>().abs() < 1e-12);
        assert!(advantages(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(advantages(&[1.0], 1).is_err());
    }
}
