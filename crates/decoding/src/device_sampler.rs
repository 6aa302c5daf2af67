//! Next-token sampling on the device: the same temperature, top-k, top-p and categorical draw as
//! [`crate::sampler`], computed with tensor operations where the log-probs already are, so that a
//! decoding step brings back a few numbers per row (the token, its log-prob under the policy and
//! under the base model, and the step's exact KL) instead of a vocabulary-wide row.
//!
//! The draw is by inverse CDF in token-id order, as on the host: row `i` takes the first token
//! whose cumulative probability exceeds `u[i]` times the row's total (the total the device
//! summed, so that rounding leaves no sliver of mass to a particular token). The uniforms come
//! from each row's own seeded stream on the host (one per row and step, exactly as the host
//! sampler consumes them), so a row's tokens do not depend on how rows were batched, and the two
//! samplers pick the same token for the same `u` unless `u` lies within rounding of a cumulative
//! boundary (the host sums in f64, the device in f32). Cumulative sums run in blocks of
//! [`CDF_BLOCK`] tokens (a sum inside each block, then over the blocks' totals): the partial sums
//! stay short, so f32 rounding stays near the host's, and a backend whose cumulative sum re-reads
//! each prefix costs `V·B` instead of `V²` per row.
//!
//! Invariants: processing is the host's ([`crate::process_logprobs`]): temperature divides the
//! log-probs; top-k and top-p keep the first tokens in descending order with ties broken by the
//! lower id, top-p the shortest such prefix whose mass (after temperature, over the whole
//! vocabulary) reaches p, and always the most likely token; kept tokens are renormalised, others
//! get `-inf`. No step sorts the vocabulary (burn's sort runs on the host for CubeCL's backends,
//! wgpu and CUDA): the kept set is the tokens above a cut value found by bisection, plus the
//! lowest ids of the tokens tied at it. Only kept tokens are drawn; the KL sums over kept tokens
//! only. A row whose log-probs hold NaN is an error. On the CPU (burn-flex) [`crate::Generator`]
//! uses the host sampler instead: it reads the same memory and stops at the drawn token.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use infalign_models::weights::read_f32;

use crate::DecodingError;
use crate::sampler::SamplingConfig;

/// Tokens per block of the blocked cumulative sums.
pub const CDF_BLOCK: usize = 256;

/// One step's draws, one entry per row.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDraws {
    /// The chosen token of each row.
    pub tokens: Vec<u32>,
    /// Its log-prob under the distribution it was drawn from (0 for greedy, as on the host).
    pub policy_logprobs: Vec<f32>,
    /// Its log-prob under the base model.
    pub base_logprobs: Vec<f32>,
    /// KL(policy ‖ base) of the step's distribution: exact, 0 when the policy is the base
    /// itself, `−log p_base(token)` for greedy (the KL of a point mass), as on the host.
    pub kl: Vec<f32>,
}

/// Inclusive cumulative sums of `x` (`[rows, V]`) along its rows, in blocks of [`CDF_BLOCK`]:
/// a cumulative sum inside each block plus the sum of the blocks before it.
pub fn blocked_cumsum(x: Tensor<2>) -> Tensor<2> {
    let [rows, v] = x.dims();
    let blocks = v.div_ceil(CDF_BLOCK).max(1);
    let padded = blocks * CDF_BLOCK;
    let x = if padded > v {
        Tensor::cat(
            vec![x.clone(), Tensor::zeros([rows, padded - v], &x.device())],
            1,
        )
    } else {
        x
    };
    let inner = x.reshape([rows, blocks, CDF_BLOCK]).cumsum(2);
    let totals = inner
        .clone()
        .narrow(2, CDF_BLOCK - 1, 1)
        .reshape([rows, blocks]);
    let before = (totals.clone().cumsum(1) - totals).reshape([rows, blocks, 1]);
    (inner + before).reshape([rows, padded]).narrow(1, 0, v)
}

/// The ids `0..vocab` as a `[rows, vocab]` tensor.
fn ids(rows: usize, vocab: usize, device: &burn::tensor::Device) -> Tensor<2, Int> {
    Tensor::<1, Int>::arange(0..vocab as i64, device)
        .reshape([1, vocab])
        .expand([rows, vocab])
}

/// Bisection steps of [`process_logprobs_on_device`]'s search for a row's cut value: they narrow
/// a bracket as wide as the row's range of values to 2^-48 of it.
const CUT_STEPS: usize = 48;

/// Applies temperature, top-k and top-p to `logp` (`[rows, vocab]` log-probs) on its device and
/// returns normalised log-probs with `-inf` for removed tokens: [`crate::process_logprobs`] row by
/// row, for a config that [`SamplingConfig::validate`] accepts.
///
/// Without a sort (which CubeCL's backends run on the host): the host keeps the next token in
/// descending order while fewer than k tokens and less than p of the mass come before it, so the
/// kept tokens are those at or above a cut value, the smallest value `c` at which the tokens
/// strictly above `c` number fewer than k and weigh less than p (or `c` is the row's largest
/// value: the most likely token is always kept). That condition only turns true as `c` rises, so
/// a bisection over values finds `c`. The bracket starts below the row's smallest value (where
/// the condition is false unless every token is kept) and at its largest (where it is true);
/// after 48 halvings it is 2^-48 of the row's range wide, narrower than the spacing of
/// f32 values at the cut unless the cut lies within 2^-24 of that range from zero, where only
/// the log-prob (over the temperature) of a token more likely than one half can lie, which no
/// other token shares. So the bracket holds one distinct value, `c`, found as the smallest
/// value above its lower end. Of the tokens tied at `c`, the lowest ids are kept, as many as the
/// host's order keeps.
pub fn process_logprobs_on_device(logp: Tensor<2>, cfg: &SamplingConfig) -> Tensor<2> {
    let x = if cfg.temperature == 1.0 {
        logp
    } else {
        logp / cfg.temperature
    };
    if cfg.top_k.is_none() && cfg.top_p.is_none() {
        return log_softmax(x, 1);
    }
    let [rows, vocab] = x.dims();
    let wide = |t: Tensor<2>| t.expand([rows, vocab]);
    let k = cfg.top_k.unwrap_or(vocab).clamp(1, vocab) as i64;
    // The host's top-p loop stops once the running mass reaches p − 1e-6.
    let p = cfg.top_p.map(|p| p - 1e-6);
    let probs = log_softmax(x.clone(), 1).exp();
    let mass_where = |mask: Tensor<2, Bool>| probs.clone().mask_fill(mask.bool_not(), 0.0);
    let top = x.clone().max_dim(1);
    let holds = |c: Tensor<2>| -> Tensor<2, Bool> {
        let above = x.clone().greater(wide(c.clone()));
        let mut holds = above.clone().int().sum_dim(1).lower_elem(k);
        if let Some(p) = p {
            holds = holds.bool_and(mass_where(above).sum_dim(1).lower_elem(p));
        }
        holds.bool_or(c.greater_equal(top.clone()))
    };
    // `holds` is true at `hi` and false at `lo`, strictly below every value (a step of at least
    // 1 and 2^-20 of its magnitude, which f32 rounding cannot absorb), unless it holds there
    // too: then every token is kept, and the bracket closes on the smallest value.
    let mut hi = top.clone();
    let bottom = x.clone().min_dim(1);
    let mut lo = bottom.clone() - (bottom.abs() * 2f32.powi(-20)).clamp_min(1.0);
    for _ in 0..CUT_STEPS {
        let mid = lo.clone() + (hi.clone() - lo.clone()) / 2.0;
        let ok = holds(mid.clone());
        hi = hi.mask_where(ok.clone(), mid.clone());
        lo = lo.mask_where(ok.bool_not(), mid);
    }
    let cut = x
        .clone()
        .mask_fill(x.clone().lower_equal(wide(lo)), f32::INFINITY)
        .min_dim(1);
    // The kept set in id order: every token above the cut, and of the tokens equal to it the
    // lowest ids, as many as the host keeps: up to k in all, and while the mass before each is
    // below p (it is m + t·q before the t-th of them, m the mass above, q their probability).
    let above = x.clone().greater(wide(cut.clone()));
    let tied = x.clone().equal(wide(cut));
    let mut room = (above.clone().int().sum_dim(1).neg() + k).float();
    if let Some(p) = p {
        let m = mass_where(above.clone()).sum_dim(1);
        let q = mass_where(tied.clone()).max_dim(1);
        room = room.min_pair(((m.neg() + p) / q).ceil());
    }
    let room = room.clamp_min(1.0);
    // Counts as floats: exact below 2^24, and the blocked sum avoids a quadratic cumsum.
    let tied_rank = blocked_cumsum(tied.clone().float());
    let keep = above.bool_or(tied.bool_and(tied_rank.lower_equal(wide(room))));
    log_softmax(x.mask_fill(keep.bool_not(), f32::NEG_INFINITY), 1)
}

/// Draws one token per row from `dist` (normalised `[rows, vocab]` log-probs, `-inf` for tokens
/// that cannot be drawn), given each row's uniform in `[0, 1)`; returns the tokens (`[rows]`)
/// and each row's total probability as the device summed it (`[rows]`; NaN when the row holds
/// NaN). The row takes the first token whose cumulative probability exceeds `u` times that
/// total; a uniform at the very top (rounding) takes the last kept token.
pub fn inverse_cdf_on_device(
    dist: Tensor<2>,
    uniforms: &[f64],
) -> Result<(Tensor<1, Int>, Tensor<1>), DecodingError> {
    let [rows, vocab] = dist.dims();
    if uniforms.len() != rows {
        return Err(DecodingError::InvalidParameter {
            field: "uniforms",
            message: format!("{} uniforms for {rows} rows", uniforms.len()),
        });
    }
    let device = dist.device();
    let kept = dist.clone().equal_elem(f32::NEG_INFINITY).bool_not();
    let cdf = blocked_cumsum(dist.exp());
    let total = cdf.clone().narrow(1, vocab - 1, 1);
    let u: Vec<f32> = uniforms.iter().map(|&u| u as f32).collect();
    let target = Tensor::<2>::from_data(TensorData::new(u, [rows, 1]), &device) * total.clone();
    // The first token whose cumulative probability exceeds the target: the number at or below.
    let below: Tensor<1, Int> = cdf
        .lower_equal(target.expand([rows, vocab]))
        .int()
        .sum_dim(1)
        .reshape([rows]);
    let last_kept: Tensor<1, Int> = ids(rows, vocab, &device)
        .mask_fill(kept.bool_not(), 0)
        .max_dim(1)
        .reshape([rows]);
    Ok((below.min_pair(last_kept), total.reshape([rows])))
}

/// Samples one token per row on the device, as the host loop of [`crate::Generator`] does with
/// [`crate::sample_token`]: from `steered` when given (a strategy's normalised log-probs), else
/// from `base`, processed by `cfg`; `uniforms` holds each row's draw (ignored for greedy).
/// Brings back one `[rows, 4]` block of numbers (token, two log-probs, KL).
pub fn sample_on_device(
    base: Tensor<2>,
    steered: Option<Tensor<2>>,
    cfg: &SamplingConfig,
    uniforms: &[f64],
) -> Result<DeviceDraws, DecodingError> {
    cfg.validate()?;
    let [rows, _] = base.dims();
    if rows == 0 {
        return Ok(DeviceDraws {
            tokens: Vec::new(),
            policy_logprobs: Vec::new(),
            base_logprobs: Vec::new(),
            kl: Vec::new(),
        });
    }
    let is_steered = steered.is_some();
    let dist = steered.unwrap_or_else(|| base.clone());
    // Columns: token id (exact in f32 below 2^24), policy log-prob, base log-prob, KL, and a
    // check that is NaN when the row is.
    let columns = if cfg.greedy {
        // The most likely token (ties: lowest id, as the host's).
        let tokens = dist.clone().argmax(1);
        let base_lp = base.gather(1, tokens.clone());
        vec![
            tokens.float(),
            Tensor::zeros([rows, 1], &base_lp.device()),
            base_lp.clone(),
            -base_lp,
            dist.sum_dim(1),
        ]
    } else {
        let identity = cfg.is_identity();
        let policy = if identity {
            dist
        } else {
            process_logprobs_on_device(dist, cfg)
        };
        let (tokens, total) = inverse_cdf_on_device(policy.clone(), uniforms)?;
        let tokens = tokens.reshape([rows, 1]);
        let kl = if identity && !is_steered {
            // The base's own distribution: no KL.
            Tensor::zeros([rows, 1], &base.device())
        } else {
            let excluded = policy.clone().equal_elem(f32::NEG_INFINITY);
            let terms = policy.clone().exp() * (policy.clone() - base.clone());
            terms.mask_fill(excluded, 0.0).sum_dim(1)
        };
        vec![
            tokens.clone().float(),
            policy.gather(1, tokens.clone()),
            base.gather(1, tokens),
            kl,
            total.reshape([rows, 1]),
        ]
    };
    let block = read_f32(Tensor::cat(columns, 1))?;
    let mut draws = DeviceDraws {
        tokens: Vec::with_capacity(rows),
        policy_logprobs: Vec::with_capacity(rows),
        base_logprobs: Vec::with_capacity(rows),
        kl: Vec::with_capacity(rows),
    };
    for (row, c) in block.chunks(5).enumerate() {
        if c[4].is_nan() {
            return Err(DecodingError::NonFinite { row });
        }
        draws.tokens.push(c[0] as u32);
        draws.policy_logprobs.push(c[1]);
        draws.base_logprobs.push(c[2]);
        draws.kl.push(c[3]);
    }
    Ok(draws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::process_logprobs;
    use burn::tensor::Device;
    use infalign_models::weights::read_i64;
    use rand::{Rng, SeedableRng};

    fn device() -> Device {
        infalign_core::DeviceSpec::Cpu.device().unwrap()
    }

    fn tensor(rows: &[Vec<f32>]) -> Tensor<2> {
        let v = rows[0].len();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), v]), &device())
    }

    /// Normalised log-probs of random logits, some rows peaked, some flat.
    fn random_rows(rows: usize, vocab: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..rows)
            .map(|r| {
                let scale = 0.5 + r as f32;
                let x: Vec<f32> = (0..vocab)
                    .map(|_| scale * (rng.random::<f32>() * 2.0 - 1.0))
                    .collect();
                let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
                x.iter().map(|v| v - lse).collect()
            })
            .collect()
    }

    /// One row processed by the host and by the device: (host, device).
    fn processed_both_ways(row: &[f32], cfg: &SamplingConfig) -> (Vec<f32>, Vec<f32>) {
        let device = process_logprobs_on_device(tensor(&[row.to_vec()]), cfg);
        (process_logprobs(row, cfg), read_f32(device).unwrap())
    }

    /// How far the host's top-p rule is from changing its mind on `row`: the distance of the
    /// running mass from p − 1e-6 at every sorted position (∞ without top-p).
    fn top_p_margin(row: &[f32], cfg: &SamplingConfig) -> f64 {
        let Some(p) = cfg.top_p else {
            return f64::INFINITY;
        };
        let x: Vec<f64> = row
            .iter()
            .map(|&l| f64::from(l / cfg.temperature))
            .collect();
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = x.iter().map(|v| (v - m).exp()).sum();
        let mut probs: Vec<f64> = x.iter().map(|v| (v - m).exp() / z).collect();
        probs.sort_by(|a, b| b.total_cmp(a));
        let mut mass = 0.0;
        let mut margin = f64::INFINITY;
        for q in probs {
            mass += q;
            margin = margin.min((mass - (f64::from(p) - 1e-6)).abs());
        }
        margin
    }

    #[test]
    fn processing_on_the_device_is_the_hosts() {
        let rows = random_rows(6, 50, 1);
        let configs = [
            SamplingConfig {
                temperature: 0.6,
                ..Default::default()
            },
            SamplingConfig {
                top_k: Some(5),
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(0.8),
                temperature: 0.9,
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(0.5),
                top_k: Some(3),
                ..Default::default()
            },
            // top-p below the largest probability keeps exactly one token.
            SamplingConfig {
                top_p: Some(1e-3),
                ..Default::default()
            },
        ];
        for cfg in &configs {
            let device = read_f32(process_logprobs_on_device(tensor(&rows), cfg)).unwrap();
            for (row, got) in rows.iter().zip(device.chunks(50)) {
                assert!(
                    top_p_margin(row, cfg) > 1e-4,
                    "pick data away from the boundary"
                );
                let want = process_logprobs(row, cfg);
                for (w, g) in want.iter().zip(got) {
                    assert_eq!(w.is_finite(), g.is_finite(), "{cfg:?}: kept sets differ");
                    if w.is_finite() {
                        // Log-probs of magnitude ≤ ~10, each a few f32 roundings.
                        assert!(
                            (w - g).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{cfg:?}: {w} vs {g}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_draw_is_the_first_token_whose_cumulative_mass_exceeds_u() {
        // Brute force on the host in f64, for uniforms away from a boundary (where f32 and f64
        // sums may disagree), and a uniform at the top, which takes the last kept token.
        let rows = random_rows(4, 40, 2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // The same rows with tokens 30.. excluded and the rest renormalised, as processing does.
        let mut masked = rows.clone();
        for row in &mut masked {
            for l in row.iter_mut().skip(30) {
                *l = f32::NEG_INFINITY;
            }
            let mass: f64 = row.iter().map(|&l| f64::from(l).exp()).sum();
            row.iter_mut().for_each(|l| *l -= mass.ln() as f32);
        }
        for rows in [&rows, &masked] {
            for _ in 0..200 {
                let u: Vec<f64> = (0..rows.len()).map(|_| rng.random()).collect();
                let got = read_i64(inverse_cdf_on_device(tensor(rows), &u).unwrap().0).unwrap();
                for ((row, &u), &g) in rows.iter().zip(&u).zip(&got) {
                    let mut acc = 0.0f64;
                    let mut want = None;
                    let mut near = false;
                    let mut last_kept = 0;
                    for (i, &l) in row.iter().enumerate() {
                        if l == f32::NEG_INFINITY {
                            continue;
                        }
                        last_kept = i;
                        acc += f64::from(l).exp();
                        near |= (acc - u).abs() < 1e-5;
                        if want.is_none() && u < acc {
                            want = Some(i);
                        }
                    }
                    if !near {
                        assert_eq!(g as usize, want.unwrap_or(last_kept), "u = {u}");
                    }
                }
            }
            // A uniform at the top of the range (1 in f32) takes the last kept token.
            let u = vec![1.0 - 1e-12; rows.len()];
            let got = read_i64(inverse_cdf_on_device(tensor(rows), &u).unwrap().0).unwrap();
            let last = if std::ptr::eq(rows, &masked) { 29 } else { 39 };
            assert!(got.iter().all(|&g| g as usize == last), "{got:?}");
        }
    }

    #[test]
    fn device_draws_have_the_distributions_frequencies() {
        // Chi-square with 3 degrees of freedom (16.27: the 0.999 quantile), plain and after
        // top-k = 2 ({0.625, 0.375}); 40,000 rows drawn at once.
        let p = [0.5f32, 0.3, 0.15, 0.05];
        let n = 40_000;
        let rows = vec![p.iter().map(|x| x.ln()).collect::<Vec<f32>>(); n];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let u: Vec<f64> = (0..n).map(|_| rng.random()).collect();
        let top2 = SamplingConfig {
            top_k: Some(2),
            ..Default::default()
        };
        for (cfg, q) in [
            (SamplingConfig::default(), vec![0.5, 0.3, 0.15, 0.05]),
            (top2, vec![0.625, 0.375]),
        ] {
            let draws = sample_on_device(tensor(&rows), None, &cfg, &u).unwrap();
            let mut counts = vec![0usize; 4];
            draws.tokens.iter().for_each(|&t| counts[t as usize] += 1);
            assert!(counts[q.len()..].iter().all(|&c| c == 0), "{counts:?}");
            let chi2: f64 = q
                .iter()
                .zip(&counts)
                .map(|(&q, &c)| {
                    let e = q * n as f64;
                    (c as f64 - e).powi(2) / e
                })
                .sum();
            assert!(chi2 < 16.27, "chi2 = {chi2}, counts = {counts:?}");
            // The recorded log-probs are the drawn token's, under the policy and the base.
            for (i, &t) in draws.tokens.iter().enumerate().take(50) {
                let want = (q[t as usize] as f32).ln();
                assert!((draws.policy_logprobs[i] - want).abs() < 1e-5);
                assert!((draws.base_logprobs[i] - p[t as usize].ln()).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn the_cut_is_the_hosts_on_wide_rows_with_ties_and_low_temperatures() {
        // 3,001 tokens: rows from flat to sharply peaked, and one whose logits are multiples of
        // 1/4 (groups of hundreds of tied tokens, so cuts land inside tie groups).
        let vocab = 3001;
        let mut rows = random_rows(4, vocab, 7);
        for (r, row) in rows.iter_mut().enumerate() {
            let scale = [1.0f32, 4.0, 12.0, 40.0][r];
            row.iter_mut().for_each(|v| *v *= scale);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        rows.push(
            (0..vocab)
                .map(|_| (rng.random_range(0..24) as f32) * 0.25)
                .collect(),
        );
        let mut checked = 0;
        let mut total = 0;
        for (top_k, top_p, temperature) in [
            (Some(1), None, 1.0),
            (Some(7), None, 1.0),
            (Some(500), None, 0.7),
            (Some(vocab), None, 1.0),
            (None, Some(0.3), 1.0),
            (None, Some(0.9), 1.0),
            (None, Some(0.99), 1.3),
            (None, Some(0.9), 0.05),
            (Some(40), Some(0.95), 1.0),
            (Some(3), Some(0.5), 0.01),
        ] {
            let cfg = SamplingConfig {
                top_k,
                top_p,
                temperature,
                ..Default::default()
            };
            let got = read_f32(process_logprobs_on_device(tensor(&rows), &cfg)).unwrap();
            for (row, got) in rows.iter().zip(got.chunks(vocab)) {
                total += 1;
                // f32 masses of at most 3,001 terms, typically about 1e-6 off the host's f64 (at
                // worst about 2e-4): rows within 1e-5 of the boundary are left out.
                if top_p_margin(row, &cfg) <= 1e-5 {
                    continue;
                }
                checked += 1;
                let want = process_logprobs(row, &cfg);
                let kept = |v: &[f32]| -> Vec<usize> {
                    (0..vocab).filter(|&i| v[i].is_finite()).collect()
                };
                assert_eq!(kept(got), kept(&want), "{cfg:?}");
            }
        }
        assert!(
            checked * 10 >= total * 9,
            "{checked} of {total} rows away from the boundary"
        );
    }

    #[test]
    fn the_cut_is_the_hosts_for_extreme_ranges_and_temperatures() {
        // Rows whose values span far more than their probabilities do: the host keeps tokens of
        // probability zero when top-k reaches them, and so must the device; values of 1e12 and
        // beyond, where a step of 1 is below f32's spacing.
        type Case = (Vec<f32>, f32, Option<usize>, Option<f32>);
        let cases: [Case; 7] = [
            (vec![0.0, -150.0], 0.01, Some(2), None),
            (vec![0.0, -150.0, -300.0], 0.01, Some(3), None),
            (vec![-0.67, -0.670_000_1, -9.0], 1e-8, Some(2), None),
            (vec![-0.01, -5.0, -7.0], 1e-14, Some(2), None),
            (vec![-0.01, -5.0, -7.0], 1e-14, Some(1), None),
            (vec![-0.01, -5.0, -7.0], 1e-14, None, Some(0.5)),
            (vec![-1e-3, -7.0, -7.0, -7.0], 1.0, Some(3), None),
        ];
        for (row, temperature, top_k, top_p) in cases {
            let cfg = SamplingConfig {
                temperature,
                top_k,
                top_p,
                ..Default::default()
            };
            let (want, got) = processed_both_ways(&row, &cfg);
            let kept = |v: &[f32]| -> Vec<bool> { v.iter().map(|x| x.is_finite()).collect() };
            assert_eq!(kept(&got), kept(&want), "{row:?} {cfg:?}");
            assert!(got.iter().all(|x| !x.is_nan()), "{row:?} {cfg:?}: {got:?}");
        }
    }

    #[test]
    fn ties_at_the_cut_keep_the_lowest_ids() {
        // Values 3, 1, 1, 1, 1, 0 (as logits): top-k 3 keeps the 3 and the two lowest ids of
        // the tied 1s; top-p with the mass cut inside the tied group keeps as many of them as
        // the host's descending order (ties by lower id) does, again the lowest ids.
        let logits = [0.0f32, 1.0, 3.0, 1.0, 1.0, 1.0];
        let m = 3.0f32;
        let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
        let row: Vec<f32> = logits.iter().map(|x| x - lse).collect();
        let p3 = row[2].exp() + 2.0 * row[1].exp();
        for cfg in [
            SamplingConfig {
                top_k: Some(3),
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(p3 - 0.01),
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(p3 + 0.01),
                top_k: Some(5),
                ..Default::default()
            },
        ] {
            let (want, got) = processed_both_ways(&row, &cfg);
            let kept = |v: &[f32]| -> Vec<usize> { (0..6).filter(|&i| v[i].is_finite()).collect() };
            assert_eq!(kept(&got), kept(&want), "{cfg:?}");
        }
        assert_eq!(
            (0..6)
                .filter(|&i| process_logprobs(
                    &row,
                    &SamplingConfig {
                        top_k: Some(3),
                        ..Default::default()
                    }
                )[i]
                    .is_finite())
                .collect::<Vec<_>>(),
            vec![1, 2, 3],
            "the host's rule, which the device must follow"
        );
    }

    #[test]
    fn blocked_cumulative_sums_are_cumulative_sums() {
        // Across block boundaries, for a width that is not a multiple of the block.
        let v = 3 * CDF_BLOCK + 17;
        let rows: Vec<Vec<f32>> = (0..2)
            .map(|r| (0..v).map(|i| ((i * 7 + r) % 11) as f32 * 0.125).collect())
            .collect();
        let got = read_f32(blocked_cumsum(tensor(&rows))).unwrap();
        for (row, got) in rows.iter().zip(got.chunks(v)) {
            let mut acc = 0.0f64;
            for (x, g) in row.iter().zip(got) {
                acc += f64::from(*x);
                // Sums of eighths below 2^24: exact.
                assert_eq!(f64::from(*g), acc);
            }
        }
    }

    #[test]
    fn a_row_of_nan_is_an_error() {
        let mut rows = random_rows(2, 10, 6);
        rows[1][3] = f32::NAN;
        for cfg in [
            SamplingConfig::default(),
            SamplingConfig {
                greedy: true,
                ..Default::default()
            },
        ] {
            let e = sample_on_device(tensor(&rows), None, &cfg, &[0.5, 0.5]).unwrap_err();
            assert!(matches!(e, DecodingError::NonFinite { row: 1 }), "{e}");
        }
    }

    #[test]
    fn kl_and_greedy_are_the_hosts() {
        let rows = random_rows(5, 30, 4);
        let cfg = SamplingConfig {
            temperature: 0.7,
            top_k: Some(10),
            ..Default::default()
        };
        let u = vec![0.3; 5];
        let draws = sample_on_device(tensor(&rows), None, &cfg, &u).unwrap();
        for (row, kl) in rows.iter().zip(&draws.kl) {
            let want = crate::kl_divergence(&process_logprobs(row, &cfg), row);
            assert!(want > 0.01 && (f64::from(*kl) - want).abs() < 1e-5 * (1.0 + want));
        }
        // The base's own distribution: no KL.
        let plain = sample_on_device(tensor(&rows), None, &SamplingConfig::default(), &u).unwrap();
        assert!(plain.kl.iter().all(|&k| k == 0.0));
        // Steered: the KL of the steered distribution to the base.
        let other = random_rows(5, 30, 5);
        let steered = sample_on_device(
            tensor(&rows),
            Some(tensor(&other)),
            &SamplingConfig::default(),
            &u,
        )
        .unwrap();
        for ((row, o), kl) in rows.iter().zip(&other).zip(&steered.kl) {
            let want = crate::kl_divergence(o, row);
            assert!((f64::from(*kl) - want).abs() < 1e-5 * (1.0 + want));
        }
        let greedy = SamplingConfig {
            greedy: true,
            ..Default::default()
        };
        let g = sample_on_device(tensor(&rows), None, &greedy, &[]).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let best = crate::sampler::argmax(row);
            assert_eq!(g.tokens[i] as usize, best);
            assert_eq!(g.kl[i], -row[best]);
            assert_eq!(g.policy_logprobs[i], 0.0);
        }
        // A wrong number of uniforms is an error, not a panic.
        assert!(sample_on_device(tensor(&rows), None, &cfg, &[0.5]).is_err());
    }
}
