//! Synthetic preferences for the reward-hacking setup: pairs of completions of one prompt are
//! labelled by a gold reward with Bradley-Terry noise, `P(a ≻ b) = σ((r(a) − r(b)) / τ)`, so that
//! a proxy reward model can be trained on them and judged against the gold reward.
//!
//! Invariant: the label of pair i is drawn from `seed.derive("preference", i)`; τ → 0 gives
//! noiseless labels (ties broken by the draw).

use infalign_core::Seed;
use rand::Rng;

use crate::RewardError;
use crate::bradley_terry::Preference;

/// Labels pairs `(prompt, a, r_a, b, r_b)` with Bradley-Terry noise at temperature `tau`.
pub fn label_pairs(
    pairs: &[(String, String, f64, String, f64)],
    tau: f64,
    seed: Seed,
) -> Result<Vec<Preference>, RewardError> {
    if !(tau >= 0.0 && tau.is_finite()) {
        return Err(RewardError::InvalidParameter {
            field: "temperature",
            message: format!("{tau} must be non-negative"),
        });
    }
    pairs
        .iter()
        .enumerate()
        .map(|(i, (prompt, a, ra, b, rb))| {
            for r in [ra, rb] {
                if !r.is_finite() {
                    return Err(RewardError::NotFinite {
                        what: format!("gold reward of pair {i}"),
                        value: *r,
                    });
                }
            }
            let p_a = if tau == 0.0 {
                if ra > rb {
                    1.0
                } else if ra < rb {
                    0.0
                } else {
                    0.5
                }
            } else {
                1.0 / (1.0 + (-(ra - rb) / tau).exp())
            };
            let u: f64 = seed.derive("preference", i as u64).stream("label").random();
            let (chosen, rejected) = if u < p_a { (a, b) } else { (b, a) };
            Ok(Preference {
                prompt: prompt.clone(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_follows_the_logistic() {
        let pairs: Vec<_> = (0..4000)
            .map(|_| ("p".to_string(), "a".to_string(), 1.0, "b".to_string(), 0.0))
            .collect();
        let labels = label_pairs(&pairs, 1.0, Seed(3)).unwrap();
        let frac = labels.iter().filter(|p| p.chosen == "a").count() as f64 / 4000.0;
        let want = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((frac - want).abs() < 0.025, "{frac} vs {want}");
        let sharp = label_pairs(&pairs[..10], 0.0, Seed(3)).unwrap();
        assert!(sharp.iter().all(|p| p.chosen == "a"));
        assert!(label_pairs(&pairs[..1], -1.0, Seed(3)).is_err());
    }
}
