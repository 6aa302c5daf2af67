//! KL(π ‖ π_ref) estimates and bounds (docs/ALGORITHMS.md A.6).
//!
//! From samples `y ~ π` with sequence log-ratios `r = log π(y) − log π_ref(y)`:
//! k1 = `r` (unbiased, can be negative per sample), k2 = `r²/2` (biased, low variance),
//! k3 = `(e^{−r} − 1) + r` (unbiased, non-negative per sample; Schulman 2020). For tokenwise
//! decoders the exact per-step KL summed along each sampled path (`Sample::path_kl` in
//! infalign-decoding) is unbiased with lower variance. When π is a best-of-K or blockwise procedure its likelihood is intractable and a
//! bound is reported instead.

use serde::{Deserialize, Serialize};

use crate::EvalError;

/// A Monte Carlo estimate with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The mean.
    pub mean: f64,
    /// Its standard error.
    pub stderr: f64,
}

impl Estimate {
    /// The mean of `values` with its standard error (0 for a single value).
    pub fn of(values: impl Iterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Estimate {
            mean,
            stderr: (var / n).sqrt(),
        }
    }
}

/// The three estimators, each labelled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlEstimates {
    /// `E[r]`.
    pub k1: Estimate,
    /// `E[r²/2]`.
    pub k2: Estimate,
    /// `E[(e^{−r} − 1) + r]`.
    pub k3: Estimate,
}

/// KL estimates from per-sample sequence log-probs under the policy and under the reference.
pub fn kl_estimates(logp_policy: &[f64], logp_ref: &[f64]) -> Result<KlEstimates, EvalError> {
    if logp_policy.len() != logp_ref.len() || logp_policy.is_empty() {
        return Err(EvalError::Invalid {
            field: "logprobs",
            message: format!(
                "{} policy and {} reference log-probs: expected the same, non-zero number",
                logp_policy.len(),
                logp_ref.len()
            ),
        });
    }
    if let Some(x) = logp_policy.iter().chain(logp_ref).find(|x| !x.is_finite()) {
        return Err(EvalError::Invalid {
            field: "logprobs",
            message: format!("{x} is not finite"),
        });
    }
    let r: Vec<f64> = logp_policy
        .iter()
        .zip(logp_ref)
        .map(|(p, q)| p - q)
        .collect();
    Ok(KlEstimates {
        k1: Estimate::of(r.iter().copied()),
        k2: Estimate::of(r.iter().map(|x| 0.5 * x * x)),
        k3: Estimate::of(r.iter().map(|x| (-x).exp() - 1.0 + x)),
    })
}

/// The best-of-K bound `ln K − (K−1)/K` (Beirami et al. 2024).
pub fn best_of_n_bound(k: u32) -> f64 {
    let k = f64::from(k.max(1));
    k.ln() - (k - 1.0) / k
}

/// The blockwise CD bound `E_x[(ln K − (K−1)/K) · L_x / M]` over decoded lengths `L_x`
/// (`ceil` rounds `L_x / M` up: a conservative variant; the paper writes no ceiling).
pub fn blockwise_bound(k: u32, m: usize, lengths: &[usize], ceil: bool) -> f64 {
    if lengths.is_empty() || m == 0 {
        return 0.0;
    }
    let per_block = best_of_n_bound(k);
    lengths
        .iter()
        .map(|&l| {
            let blocks = l as f64 / m as f64;
            per_block * if ceil { blocks.ceil() } else { blocks }
        })
        .sum::<f64>()
        / lengths.len() as f64
}

/// KL of stacked methods (for example a DPO policy decoded with blockwise CD), approximated by
/// adding the parts, as in the CD paper's Fig. 10.
pub fn additive(parts: &[f64]) -> f64 {
    parts.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimators_on_known_distributions() {
        // π = Bernoulli(0.8), π_ref = Bernoulli(0.5); exact KL = 0.8 ln 1.6 + 0.2 ln 0.4.
        let exact = 0.8 * 1.6f64.ln() + 0.2 * 0.4f64.ln();
        // 1000 "samples" in exact proportions.
        let mut lp = Vec::new();
        let mut lq = Vec::new();
        for i in 0..1000 {
            let p = if i < 800 { 0.8f64 } else { 0.2 };
            lp.push(p.ln());
            lq.push(0.5f64.ln());
        }
        let e = kl_estimates(&lp, &lq).unwrap();
        assert!((e.k1.mean - exact).abs() < 1e-12);
        assert!(
            (e.k3.mean - exact).abs() < 1e-12,
            "k3 is unbiased: {}",
            e.k3.mean
        );
        assert!(e.k2.mean > 0.0);
        assert!(kl_estimates(&lp, &lq[..3]).is_err());
    }

    #[test]
    fn bounds() {
        assert!((best_of_n_bound(4) - (4f64.ln() - 0.75)).abs() < 1e-12);
        assert_eq!(best_of_n_bound(1), 0.0);
        let b = blockwise_bound(4, 8, &[16, 20], false);
        assert!((b - best_of_n_bound(4) * (2.0 + 2.5) / 2.0).abs() < 1e-12);
        let c = blockwise_bound(4, 8, &[16, 20], true);
        assert!((c - best_of_n_bound(4) * 2.5).abs() < 1e-12);
        assert_eq!(additive(&[1.0, 2.5]), 3.5);
    }
}
