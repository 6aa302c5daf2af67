//! Next-token sampling: temperature, top-k and top-p (nucleus) processing of log-probs, then a
//! categorical draw from a seeded generator.
//!
//! Invariants: processing takes and returns log-probs (normalised over the kept tokens);
//! temperature 1 with no top-k and no top-p leaves the distribution unchanged, so the returned
//! policy log-prob is then the model's own.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::DecodingError;

/// How one next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// Divides the logits; 1 leaves them unchanged.
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches p.
    pub top_p: Option<f32>,
    /// Take the most likely token (ties: lowest id).
    pub greedy: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            greedy: false,
        }
    }
}

impl SamplingConfig {
    /// Checks the parameters, naming the offending flag.
    pub fn validate(&self) -> Result<(), DecodingError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(DecodingError::InvalidParameter {
                field: "temperature",
                message: format!("{} must be a positive number", self.temperature),
            });
        }
        if self.top_k == Some(0) {
            return Err(DecodingError::InvalidParameter {
                field: "top-k",
                message: "must be at least 1".into(),
            });
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(DecodingError::InvalidParameter {
                field: "top-p",
                message: format!("{p} must be in (0, 1]"),
            });
        }
        Ok(())
    }

    /// Whether processing leaves the model's distribution unchanged.
    pub fn is_identity(&self) -> bool {
        !self.greedy && self.temperature == 1.0 && self.top_k.is_none() && self.top_p.is_none()
    }
}

/// Applies temperature, top-k and top-p to `logp` (log-probs over the vocabulary) and returns
/// normalised log-probs; removed tokens get `-inf`.
pub fn process_logprobs(logp: &[f32], cfg: &SamplingConfig) -> Vec<f32> {
    let mut out: Vec<f32> = logp.iter().map(|&l| l / cfg.temperature).collect();
    if cfg.top_k.is_some() || cfg.top_p.is_some() {
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by(|&a, &b| out[b].total_cmp(&out[a]).then(a.cmp(&b)));
        let mut keep = cfg.top_k.unwrap_or(out.len()).min(out.len());
        if let Some(p) = cfg.top_p {
            let probs = normalised_probs(&out);
            let mut mass = 0.0f64;
            let mut n = 0;
            for &i in &order[..keep] {
                mass += probs[i];
                n += 1;
                if mass >= f64::from(p) - 1e-6 {
                    break;
                }
            }
            keep = n.max(1);
        }
        for &i in &order[keep..] {
            out[i] = f32::NEG_INFINITY;
        }
    }
    let lse = log_sum_exp(&out);
    out.iter_mut().for_each(|l| *l -= lse);
    out
}

/// Draws one token; returns it with its log-prob under the processed (policy) distribution.
pub fn sample_token(logp: &[f32], cfg: &SamplingConfig, rng: &mut impl Rng) -> (u32, f32) {
    if cfg.greedy {
        let best = argmax(logp);
        return (best as u32, 0.0);
    }
    let processed;
    let policy = if cfg.is_identity() {
        logp
    } else {
        processed = process_logprobs(logp, cfg);
        &processed
    };
    let (tok, _) = draw(policy, None, rng.random());
    (tok as u32, policy[tok])
}

/// [`sample_token`] from `policy` with no processing, and [`kl_divergence`]`(policy, base)`, in
/// one pass that takes each token's probability once (a steered step needs both): the same
/// token, log-prob and KL to the bit, since each is summed over the same terms in the same
/// order.
pub fn sample_token_with_kl(policy: &[f32], base: &[f32], rng: &mut impl Rng) -> (u32, f32, f64) {
    let (tok, kl) = draw(policy, Some(base), rng.random());
    (tok as u32, policy[tok], kl)
}

/// The inverse-CDF draw at `u` from normalised log-probs `policy` (`-inf` tokens passed over),
/// and, when `base` is given, KL(policy ‖ base) summed in the same pass (as [`kl_divergence`]
/// sums it: finite terms, in order, from -0.0); without `base` it stops at the drawn token.
fn draw(policy: &[f32], base: Option<&[f32]>, u: f64) -> (usize, f64) {
    let (mut acc, mut kl) = (0.0f64, -0.0f64); // `f64::sum` starts from -0.0
    let (mut drawn, mut last_kept) = (None, 0);
    for (i, &p) in policy.iter().enumerate() {
        if p == f32::NEG_INFINITY {
            continue;
        }
        let prob = f64::from(p).exp();
        if drawn.is_none() {
            last_kept = i;
            acc += prob;
            if u < acc {
                drawn = Some(i);
            }
        }
        match base {
            Some(base) if p.is_finite() => kl += prob * (f64::from(p) - f64::from(base[i])),
            Some(_) => {}
            None if drawn.is_some() => break,
            None => {}
        }
    }
    // Rounding left a sliver of mass past the end: it belongs to the last kept token.
    (drawn.unwrap_or(last_kept), kl)
}

/// Exact KL(p ‖ q) between two next-token distributions given as normalised log-probs; tokens
/// that `p` excludes (`-inf`) contribute nothing.
pub fn kl_divergence(logp: &[f32], logq: &[f32]) -> f64 {
    logp.iter()
        .zip(logq)
        .filter(|(p, _)| p.is_finite())
        .map(|(&p, &q)| f64::from(p).exp() * (f64::from(p) - f64::from(q)))
        .sum()
}

/// Index of the largest value (lowest index on ties).
pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

fn log_sum_exp(v: &[f32]) -> f32 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        return m;
    }
    let s: f64 = v.iter().map(|&x| f64::from(x - m).exp()).sum();
    m + s.ln() as f32
}

fn normalised_probs(v: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(v);
    v.iter().map(|&x| f64::from(x - lse).exp()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn lp(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    #[test]
    fn processing_matches_hand_computation() {
        let logp = lp(&[0.5, 0.3, 0.15, 0.05]);
        // top-p 0.8 keeps {0.5, 0.3}, renormalised to {0.625, 0.375}.
        let out = process_logprobs(
            &logp,
            &SamplingConfig {
                top_p: Some(0.8),
                ..Default::default()
            },
        );
        assert!((out[0].exp() - 0.625).abs() < 1e-6 && (out[1].exp() - 0.375).abs() < 1e-6);
        assert!(out[2] == f32::NEG_INFINITY && out[3] == f32::NEG_INFINITY);
        // top-k 3 keeps the three largest.
        let out = process_logprobs(
            &logp,
            &SamplingConfig {
                top_k: Some(3),
                ..Default::default()
            },
        );
        assert!((out[2].exp() - 0.15 / 0.95).abs() < 1e-6);
        // Temperature 2: p^(1/2) renormalised.
        let out = process_logprobs(
            &logp,
            &SamplingConfig {
                temperature: 2.0,
                ..Default::default()
            },
        );
        let z: f32 = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.sqrt()).sum();
        assert!((out[0].exp() - 0.5f32.sqrt() / z).abs() < 1e-6);
    }

    #[test]
    fn empirical_frequencies_match_the_distribution() {
        let p = [0.5f32, 0.3, 0.15, 0.05];
        let logp = lp(&p);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample_token(&logp, &SamplingConfig::default(), &mut rng).0 as usize] += 1;
        }
        // Chi-square with 3 degrees of freedom; 16.27 is the 0.999 quantile.
        let chi2: f64 = counts
            .iter()
            .zip(p)
            .map(|(&c, q)| {
                let e = f64::from(q) * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 16.27, "chi2 = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn one_pass_draw_and_kl_equal_the_two_separate_ones_to_the_bit() {
        let mut gen_rng = rand::rngs::StdRng::seed_from_u64(5);
        for case in 0..200 {
            let vocab = 1 + case % 37;
            let raw: Vec<f32> = (0..vocab)
                .map(|_| gen_rng.random_range(-8.0f32..4.0))
                .collect();
            let base = normalise_for_test(&raw);
            // Steered: another distribution, some tokens excluded (as top-k leaves them).
            let mut steered: Vec<f32> = raw
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    if i % 5 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        x * 1.7 + 0.3
                    }
                })
                .collect();
            if steered.iter().all(|x| !x.is_finite()) {
                steered[0] = 0.0;
            }
            let steered = normalise_for_test(&steered);
            let seed = case as u64;
            let mut a = rand::rngs::StdRng::seed_from_u64(seed);
            let mut b = rand::rngs::StdRng::seed_from_u64(seed);
            let (tok, lp) = sample_token(&steered, &SamplingConfig::default(), &mut a);
            let kl = kl_divergence(&steered, &base);
            let (tok2, lp2, kl2) = sample_token_with_kl(&steered, &base, &mut b);
            assert_eq!(
                (tok, lp.to_bits(), kl.to_bits()),
                (tok2, lp2.to_bits(), kl2.to_bits())
            );
        }
    }

    fn normalise_for_test(x: &[f32]) -> Vec<f32> {
        let lse = log_sum_exp(x);
        x.iter().map(|&v| v - lse).collect()
    }

    #[test]
    fn kl_divergence_of_two_bernoullis() {
        let exact = 0.8 * 1.6f64.ln() + 0.2 * 0.4f64.ln();
        let t = kl_divergence(&[0.8f32.ln(), 0.2f32.ln()], &[0.5f32.ln(), 0.5f32.ln()]);
        assert!((t - exact).abs() < 1e-6);
        // Tokens the first distribution excludes contribute nothing.
        let t = kl_divergence(&[0.0, f32::NEG_INFINITY], &[0.5f32.ln(), 0.5f32.ln()]);
        assert!((t - 2f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("temperature"));
        let e = SamplingConfig {
            top_p: Some(1.5),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("top-p"));
        let e = SamplingConfig {
            top_k: Some(0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("top-k"));
    }
}
