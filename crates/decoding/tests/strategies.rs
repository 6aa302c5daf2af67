//! Decoding strategies against independent answers: the λ = 0 and K = 1 identities token for
//! token, tokenwise CD's next-token distribution against p·exp(λV)/Z (chi-square), and the
//! calibrated rank of best-of-N and worst-of-N samples against N/(N+1) and 1/(N+1).

use infalign_core::{DeviceSpec, Seed};
use infalign_decoding::{
    BestOfN, BlockwiseCd, DecodingStrategy, GenerationConfig, Generator, ScorerMix, TieBreak,
    TokenwiseCd, WorstOfN,
};
use infalign_models::weights::{RandomInit, read_f32};
use infalign_models::{
    CausalLm, Gpt2Config, LoadedModel, ModelConfig, PrefixScorer, ScorerLayout, TokenBatch,
    Tokenizer,
};
use infalign_rewards::{Calibrator, Reward, RewardError, RewardInput};

const VOCAB: usize = 300;

fn tokenizer(dir: &std::path::Path) -> Tokenizer {
    let text = dir.join("t.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat and the dog ran far away ".repeat(30),
    )
    .unwrap();
    Tokenizer::train_byte_level_bpe(&[text], VOCAB, 2, &[]).unwrap()
}

fn model(scale: f32, seed: u64) -> CausalLm {
    let config = ModelConfig::Gpt2(Gpt2Config::new(VOCAB, 64, 32, 2, 4));
    let device = DeviceSpec::Cpu.device().unwrap();
    CausalLm::init(
        &config,
        &mut RandomInit::with_scale(Seed(seed).stream("init"), scale),
        &device,
    )
    .unwrap()
}

fn scorer(base: &CausalLm, layout: ScorerLayout, seed: u64) -> PrefixScorer {
    let device = DeviceSpec::Cpu.device().unwrap();
    let mut head = RandomInit::with_scale(Seed(seed).stream("head"), 20.0);
    PrefixScorer::init(base.clone(), layout, &mut head, &device).unwrap()
}

fn loaded(scale: f32, dir: &std::path::Path) -> LoadedModel {
    LoadedModel::assemble(model(scale, 1), tokenizer(dir), dir)
}

fn prompts() -> Vec<String> {
    vec!["the cat".into(), "a dog ran".into(), "on the".into()]
}

#[test]
fn tokenwise_cd_at_lambda_zero_is_base_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(8.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device.clone());
    let cfg = GenerationConfig {
        max_new_tokens: 12,
        n: 3,
        ..Default::default()
    };
    let base = g.generate(&prompts(), &cfg, Seed(5)).unwrap();
    let s = scorer(&lm.model, ScorerLayout::VocabWide, 2);
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
    let mut cd = TokenwiseCd::new(0.0, None, mix).unwrap();
    let steered = cd.decode(&g, &prompts(), &cfg, Seed(5)).unwrap();
    assert_eq!(base.len(), 9);
    for (a, b) in base.iter().zip(&steered) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.policy_logprobs, b.policy_logprobs);
    }
    // λ > 0 changes the samples.
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device).unwrap();
    let mut cd = TokenwiseCd::new(3.0, None, mix).unwrap();
    let other = cd.decode(&g, &prompts(), &cfg, Seed(5)).unwrap();
    assert!(base.iter().zip(&other).any(|(a, b)| a.tokens != b.tokens));
}

/// Mean and standard error of `path_kl − (log π − log π_ref)` over samples: both terms estimate
/// the sequence KL without bias, the second from the sampled tokens' log-probs alone.
fn path_kl_minus_k1(samples: &[infalign_decoding::Sample]) -> (f64, f64, f64) {
    let d: Vec<f64> = samples
        .iter()
        .map(|s| s.path_kl().unwrap() - (s.policy_logprob() - s.base_logprob()))
        .collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let kl = samples.iter().map(|s| s.path_kl().unwrap()).sum::<f64>() / n;
    (mean, (var / n).sqrt(), kl)
}

#[test]
fn exact_path_kl_agrees_with_the_sampled_log_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(8.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device.clone());
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        n: 100,
        ..Default::default()
    };
    // Plain sampling: zero KL on every step.
    let base = g.generate(&prompts(), &cfg, Seed(3)).unwrap();
    assert!(base.iter().all(|s| s.path_kl() == Some(0.0)));
    // Tokenwise CD and a sharpened sampler: exact per-step sums against k1.
    let s = scorer(&lm.model, ScorerLayout::VocabWide, 2);
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
    let mut cd = TokenwiseCd::new(2.0, None, mix).unwrap();
    let steered = cd.decode(&g, &prompts(), &cfg, Seed(3)).unwrap();
    let cold = GenerationConfig {
        sampling: infalign_decoding::SamplingConfig {
            temperature: 0.6,
            ..Default::default()
        },
        ..cfg.clone()
    };
    let sharp = g.generate(&prompts(), &cold, Seed(3)).unwrap();
    for samples in [&steered, &sharp] {
        let (diff, se, kl) = path_kl_minus_k1(samples);
        assert!(kl > 0.05, "KL {kl} should be clearly positive");
        assert!(
            diff.abs() < 4.0 * se + 1e-4,
            "path KL − k1 = {diff} ± {se} (KL {kl})"
        );
    }
    // Selection procedures record no per-step distribution.
    let bon = BestOfN {
        n: 2,
        reward: &HashReward,
    }
    .decode(&g, &prompts(), &cfg, Seed(3))
    .unwrap();
    assert!(bon.iter().all(|s| s.path_kl().is_none()));
}

#[test]
fn completion_logprobs_rescore_samples_under_any_model() {
    let dir = tempfile::tempdir().unwrap();
    let a = loaded(8.0, dir.path());
    let b = LoadedModel::assemble(model(8.0, 2), a.tokenizer.clone(), dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        n: 40,
        ..Default::default()
    };
    let samples = Generator::new(&a, device.clone())
        .generate(&prompts(), &cfg, Seed(4))
        .unwrap();
    // Under the model that sampled them: the log-probs it recorded while decoding (a cached
    // step against a full forward: f32 rounding, a few ulps of each term).
    let under_a = infalign_decoding::completion_logprobs(&a, &samples, &device).unwrap();
    for (s, lp) in samples.iter().zip(&under_a) {
        let scale: f64 = s
            .base_logprobs
            .iter()
            .map(|x| f64::from(x.abs()) + 1.0)
            .sum();
        assert!(
            (lp - s.base_logprob()).abs() < 1e-5 * scale,
            "{lp} vs {} for {:?}",
            s.base_logprob(),
            s.tokens
        );
    }
    // Under another model: the log ratio's mean is a k1 estimate of KL(a ‖ b) > 0.
    let under_b = infalign_decoding::completion_logprobs(&b, &samples, &device).unwrap();
    let ratios: Vec<f64> = under_a.iter().zip(&under_b).map(|(x, y)| x - y).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (ratios.len() - 1) as f64;
    let se = (var / ratios.len() as f64).sqrt();
    assert!(mean > 4.0 * se, "KL estimate {mean} ± {se}");
}

#[test]
fn blockwise_cd_with_one_candidate_is_base_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(8.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: 14,
        n: 1,
        ..Default::default()
    };
    // Drawn on the host and on the device alike.
    for on_device in [false, true] {
        let g = Generator::new(&lm, device.clone()).sample_on_device(on_device);
        let base = g.generate(&prompts(), &cfg, Seed(9)).unwrap();
        for layout in [ScorerLayout::VocabWide, ScorerLayout::Scalar] {
            let s = scorer(&lm.model, layout, 3);
            let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
            let mut cd = BlockwiseCd::new(1, 4, TieBreak::First, mix).unwrap();
            let got = cd.decode(&g, &prompts(), &cfg, Seed(9)).unwrap();
            for (a, b) in base.iter().zip(&got) {
                assert_eq!(a.tokens, b.tokens, "{layout:?}, on the device: {on_device}");
                assert_eq!(a.finish, b.finish, "{layout:?}, on the device: {on_device}");
            }
        }
    }
}

#[test]
fn blockwise_cd_raises_the_scorer_value() {
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(3.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device.clone());
    let s = scorer(&lm.model, ScorerLayout::Scalar, 4);
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        ..Default::default()
    };
    let ps: Vec<String> = (0..12).map(|i| format!("the cat {i}")).collect();
    // The final scalar value of each sample, recomputed independently.
    let value_of = |ids: &[u32], toks: &[u32]| -> f32 {
        let mut all = ids.to_vec();
        all.extend(toks);
        let b = TokenBatch::left_padded(&[all], lm.pad_id, &device).unwrap();
        read_f32(s.forward_last(&b, &mut s.new_cache())).unwrap()[0]
    };
    let mean = |k: usize| -> f32 {
        let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
        let mut cd = BlockwiseCd::new(k, 8, TieBreak::First, mix).unwrap();
        let out = cd.decode(&g, &ps, &cfg, Seed(1)).unwrap();
        out.iter()
            .map(|x| value_of(&x.prompt_ids, &x.tokens))
            .sum::<f32>()
            / out.len() as f32
    };
    let (one, eight) = (mean(1), mean(8));
    assert!(
        eight > one,
        "best of 8 blocks {eight} should beat one block {one}"
    );
}

#[test]
fn tokenwise_cd_samples_p_exp_lambda_v() {
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(4.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device.clone());
    let s = scorer(&lm.model, ScorerLayout::VocabWide, 6);
    let lambda = 1.5f64;
    let prompt = "the dog".to_string();
    // Independent expectation: base log-probs and scorer values from fresh forward passes.
    let ids = lm.tokenizer.encode(&prompt).unwrap();
    let b = TokenBatch::left_padded(std::slice::from_ref(&ids), lm.pad_id, &device).unwrap();
    let logp = read_f32(lm.model.next_token_logprobs(&b, &mut lm.model.new_cache())).unwrap();
    let v = read_f32(s.forward_last(&b, &mut s.new_cache())).unwrap();
    let w: Vec<f64> = logp
        .iter()
        .zip(&v)
        .map(|(&l, &x)| (f64::from(l) + lambda * f64::from(x)).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let p: Vec<f64> = w.iter().map(|x| x / z).collect();
    // The CD distribution must differ from the base one for the test to mean anything.
    let tv: f64 = p
        .iter()
        .zip(&logp)
        .map(|(a, &l)| (a - f64::from(l).exp()).abs())
        .sum::<f64>()
        / 2.0;
    assert!(tv > 0.1, "scorer too weak: total variation {tv}");

    let n = 6000;
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device).unwrap();
    let mut cd = TokenwiseCd::new(lambda as f32, None, mix).unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: 1,
        n,
        ..Default::default()
    };
    let out = cd.decode(&g, &[prompt], &cfg, Seed(11)).unwrap();
    let mut counts = vec![0usize; VOCAB];
    for s in &out {
        counts[s.tokens[0] as usize] += 1;
    }
    // Chi-square over the tokens expected at least 5 times, the rest pooled.
    let mut order: Vec<usize> = (0..VOCAB).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let (mut chi2, mut df) = (0.0, 0usize);
    let (mut rest_e, mut rest_o) = (0.0, 0.0);
    for &t in &order {
        let e = p[t] * n as f64;
        if e >= 5.0 {
            chi2 += (counts[t] as f64 - e).powi(2) / e;
            df += 1;
        } else {
            rest_e += e;
            rest_o += counts[t] as f64;
        }
    }
    if rest_e > 0.0 {
        chi2 += (rest_o - rest_e).powi(2) / rest_e;
        df += 1;
    }
    df -= 1;
    // 0.999 quantile of chi-square with df degrees of freedom (Wilson-Hilferty).
    let zq = 3.09;
    let k = df as f64;
    let crit = k * (1.0 - 2.0 / (9.0 * k) + zq * (2.0 / (9.0 * k)).sqrt()).powi(3);
    eprintln!("tokenwise CD: chi2 {chi2:.1} with {df} df (critical {crit:.1}), TV to base {tv:.3}");
    assert!(df >= 3, "too few bins: {df}");
    assert!(chi2 < crit, "chi2 {chi2:.1} >= {crit:.1} with {df} df");
}

/// A reward in generic position: a hash of the completion text, uniform on [0, 1).
struct HashReward;

impl Reward for HashReward {
    fn name(&self) -> String {
        "hash".into()
    }
    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        let h = input
            .completion
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        Ok((h >> 11) as f64 / (1u64 << 53) as f64)
    }
}

#[test]
fn best_and_worst_of_n_have_the_calibrated_ranks_of_theory() {
    let dir = tempfile::tempdir().unwrap();
    // The usual small init: a near-uniform model, so samples are distinct (no reward ties).
    let lm = loaded(1.0, dir.path());
    let g = Generator::new(&lm, DeviceSpec::Cpu.device().unwrap());
    let n = 4;
    let prompts: Vec<String> = (0..60).map(|i| format!("the cat {i}")).collect();
    let cfg = GenerationConfig {
        max_new_tokens: 4,
        prompt_batch: 20,
        ..Default::default()
    };
    let reward = HashReward;
    // K fresh base samples per prompt, with another seed, calibrate the chosen samples.
    let k = 160;
    let reference = g
        .generate(
            &prompts,
            &GenerationConfig {
                n: k,
                ..cfg.clone()
            },
            Seed(1000),
        )
        .unwrap();
    let mut cal = Calibrator::default();
    for (p, chunk) in prompts.iter().zip(reference.chunks(k)) {
        let r = chunk
            .iter()
            .map(|s| {
                reward
                    .score(&RewardInput {
                        prompt: p,
                        completion: &s.completion,
                        tokens: 0,
                        ids: &[],
                    })
                    .unwrap()
            })
            .collect();
        cal.insert(p, r).unwrap();
    }
    let mean_rank = |samples: Vec<infalign_decoding::Sample>| -> (f64, f64) {
        let c: Vec<f64> = samples
            .iter()
            .map(|s| cal.calibrate(&s.prompt, s.reward.unwrap()).unwrap())
            .collect();
        let m = c.iter().sum::<f64>() / c.len() as f64;
        let var = c.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (c.len() - 1) as f64;
        (m, (var / c.len() as f64).sqrt())
    };
    let best = BestOfN { n, reward: &reward }
        .decode(&g, &prompts, &cfg, Seed(7))
        .unwrap();
    let (m, se) = mean_rank(best);
    eprintln!("best-of-{n}: mean calibrated rank {m:.3} ± {se:.3}");
    let want = n as f64 / (n as f64 + 1.0);
    assert!(
        (m - want).abs() < 3.5 * se + 0.01,
        "best-of-{n}: mean rank {m:.3} ± {se:.3}, want {want}"
    );
    let worst = WorstOfN { n, reward: &reward }
        .decode(&g, &prompts, &cfg, Seed(8))
        .unwrap();
    let (m, se) = mean_rank(worst);
    eprintln!("worst-of-{n}: mean calibrated rank {m:.3} ± {se:.3}");
    let want = 1.0 / (n as f64 + 1.0);
    assert!(
        (m - want).abs() < 3.5 * se + 0.01,
        "worst-of-{n}: mean rank {m:.3} ± {se:.3}, want {want}"
    );
}

#[test]
fn scorer_mix_is_the_weighted_sum_and_weights_change_at_decode_time() {
    let m = model(2.0, 1);
    let (a, b) = (
        scorer(&m, ScorerLayout::VocabWide, 1),
        scorer(&m, ScorerLayout::VocabWide, 2),
    );
    let device = DeviceSpec::Cpu.device().unwrap();
    let ids = vec![vec![5u32, 6, 7]];
    let mut mix = ScorerMix::new(vec![(0.5, &a), (-2.0, &b)], VOCAB, device.clone()).unwrap();
    mix.prefill(&ids, 1, 0).unwrap();
    let batch = TokenBatch::left_padded(&ids, 0, &device).unwrap();
    let va = read_f32(a.forward_last(&batch, &mut a.new_cache())).unwrap();
    let vb = read_f32(b.forward_last(&batch, &mut b.new_cache())).unwrap();
    let got = mix.next_values(0).unwrap();
    for z in 0..VOCAB {
        assert!((got[z] - (0.5 * va[z] - 2.0 * vb[z])).abs() < 1e-4);
    }
    mix.set_weights(&[1.0, 0.0]).unwrap();
    assert!((mix.next_values(0).unwrap()[7] - va[7]).abs() < 1e-6);
    assert!(mix.set_weights(&[1.0]).is_err());
}

#[test]
fn a_block_read_at_its_end_equals_feeding_it_token_by_token() {
    // Blockwise CD advances its scorers without their heads and reads each row's value once per
    // block; feeding the same tokens one by one through the vocabulary-wide or scalar head
    // gives the same values (up to the order of summation), whichever token of the block a row
    // ended at, and a row that ended before the block keeps its value.
    let m = model(2.0, 1);
    let device = DeviceSpec::Cpu.device().unwrap();
    for layout in [ScorerLayout::VocabWide, ScorerLayout::Scalar] {
        let (a, b) = (scorer(&m, layout, 1), scorer(&m, layout, 2));
        let mix = || ScorerMix::new(vec![(0.5, &a), (-2.0, &b)], VOCAB, device.clone()).unwrap();
        // Prompts of different lengths (left padding), two rows each.
        let ids = vec![vec![5u32, 6, 7], vec![9u32], vec![11u32, 12]];
        let block: Vec<Vec<u32>> = (0..6u32)
            .map(|r| vec![20 + r, 40 + 2 * r, 60 + 3 * r])
            .collect();
        let ends = [Some(2), Some(0), None, Some(1), Some(2), Some(0)];
        let (mut by_block, mut by_token) = (mix(), mix());
        by_block.prefill(&ids, 2, 0).unwrap();
        by_token.prefill(&ids, 2, 0).unwrap();
        let before: Vec<f32> = (0..6).map(|r| by_token.value(r)).collect();
        let mut want = before.clone();
        for j in 0..3 {
            let step: Vec<u32> = block.iter().map(|row| row[j]).collect();
            by_block.advance(&step).unwrap();
            by_token.feed(&step).unwrap();
            for (r, e) in ends.iter().enumerate() {
                if *e == Some(j) {
                    want[r] = by_token.value(r);
                }
            }
        }
        by_block.read_block(&block, &ends).unwrap();
        for (r, &want) in want.iter().enumerate() {
            let got = by_block.value(r);
            // Values of order 10 (head scale 20 over hidden states of order 1), f32 sums.
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{layout:?} row {r}: block {got} vs token by token {want}"
            );
        }
        assert_eq!(
            by_block.value(2),
            before[2],
            "{layout:?}: a row without an end"
        );
        // The scorer's state after the block is the token-by-token one: the next block reads
        // the same values again.
        let next: Vec<u32> = (0..6).map(|r| 100 + r).collect();
        by_block.advance(&next).unwrap();
        by_token.feed(&next).unwrap();
        let tails: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        by_block.read_block(&tails, &[Some(0); 6]).unwrap();
        for r in 0..6 {
            let (got, want) = (by_block.value(r), by_token.value(r));
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{layout:?} row {r}, second block: {got} vs {want}"
            );
        }
        // A block read that does not match what was advanced is an error, not a wrong value.
        assert!(by_block.read_block(&block, &ends).is_err());
    }
}

#[test]
fn tokenwise_cd_with_a_scalar_scorer_matches_brute_force() {
    use infalign_decoding::Steer;
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(8.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let s = scorer(&lm.model, ScorerLayout::Scalar, 3);
    // Without a candidate restriction a scalar scorer cannot score the whole vocabulary.
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
    let e = TokenwiseCd::new(2.0, None, mix).unwrap_err().to_string();
    assert!(e.contains("--cd-top-k"), "{e}");
    let (lambda, k) = (2.0f32, 5usize);
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
    let mut cd = TokenwiseCd::new(lambda, Some(k), mix).unwrap();
    let mut ids = lm.tokenizer.encode("the cat").unwrap();
    cd.prefill(std::slice::from_ref(&ids), 1, lm.pad_id)
        .unwrap();
    let mut cache = lm.model.new_cache();
    let batch = TokenBatch::left_padded(std::slice::from_ref(&ids), lm.pad_id, &device).unwrap();
    let mut base = read_f32(lm.model.next_token_logprobs(&batch, &mut cache)).unwrap();
    for _step in 0..2 {
        cd.prepare(&base, VOCAB).unwrap();
        let got = cd.adjust(0, &base).unwrap();
        // Brute force: the scorer on each full sequence prompt + prefix + z, from scratch.
        let mut order: Vec<usize> = (0..VOCAB).collect();
        order.sort_by(|&a, &b| base[b].total_cmp(&base[a]).then(a.cmp(&b)));
        let logits: Vec<(usize, f64)> = order[..k]
            .iter()
            .map(|&z| {
                let mut seq = ids.clone();
                seq.push(z as u32);
                let b = TokenBatch::left_padded(&[seq], lm.pad_id, &device).unwrap();
                let v = read_f32(s.forward_last(&b, &mut s.new_cache())).unwrap()[0];
                (z, f64::from(base[z]) + f64::from(lambda) * f64::from(v))
            })
            .collect();
        let lse = logits.iter().map(|(_, l)| l.exp()).sum::<f64>().ln();
        for &(z, l) in &logits {
            assert!(
                (f64::from(got[z]) - (l - lse)).abs() < 1e-4,
                "token {z}: {} vs {}",
                got[z],
                l - lse
            );
        }
        assert_eq!(got.iter().filter(|x| x.is_finite()).count(), k);
        // The values matter: the steered distribution differs from the renormalised base.
        let z0 = logits[0].0;
        let base_only = f64::from(base[z0])
            - logits
                .iter()
                .map(|&(z, _)| f64::from(base[z]).exp())
                .sum::<f64>()
                .ln();
        assert!((f64::from(got[z0]) - base_only).abs() > 1e-3);
        // Take the most likely candidate and step both models.
        let tok = logits[0].0 as u32;
        ids.push(tok);
        cd.feed(&[tok]).unwrap();
        base = read_f32(
            lm.model
                .next_token_logprobs(&TokenBatch::step(&[tok], &device), &mut cache),
        )
        .unwrap();
    }
}

#[test]
fn blockwise_cd_stops_at_a_stop_string() {
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(3.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device.clone());
    let s = scorer(&lm.model, ScorerLayout::Scalar, 4);
    let ps: Vec<String> = (0..8).map(|i| format!("the cat {i}")).collect();
    let cfg = GenerationConfig {
        max_new_tokens: 16,
        stop: vec!["a".into()],
        ..Default::default()
    };
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
    let out = BlockwiseCd::new(3, 4, TieBreak::First, mix)
        .unwrap()
        .decode(&g, &ps, &cfg, Seed(2))
        .unwrap();
    let stopped: Vec<_> = out
        .iter()
        .filter(|x| x.finish == infalign_decoding::Finish::Stop)
        .collect();
    assert!(!stopped.is_empty(), "no completion met the stop string");
    assert!(
        stopped.len() < out.len(),
        "every prompt stopped: no compaction was exercised"
    );
    // Prompts that finish early leave the batch; the rest must not notice: decoding one prompt
    // at a time gives the same completions.
    let one_by_one = GenerationConfig {
        prompt_batch: 1,
        ..cfg.clone()
    };
    let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
    let alone = BlockwiseCd::new(3, 4, TieBreak::First, mix)
        .unwrap()
        .decode(&g, &ps, &one_by_one, Seed(2))
        .unwrap();
    for (a, b) in out.iter().zip(&alone) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.finish, b.finish);
    }
    for x in &out {
        // The completion is cut before the stop string, and decoding ended where it appeared.
        assert!(!x.completion.contains('a'), "{:?}", x.completion);
        if x.finish == infalign_decoding::Finish::Stop {
            let text = lm.tokenizer.decode(&x.tokens).unwrap();
            let before = lm
                .tokenizer
                .decode(&x.tokens[..x.tokens.len() - 1])
                .unwrap();
            assert!(text.contains('a') && !before.contains('a'));
        }
    }
}

/// Samples, their log-probs and their per-step KL agree between two decodings of the same
/// prompts (tolerance relative to the log-probs' magnitude: the batch size changes only the
/// rounding of the matmuls).
/// All rows of `a` and `b` but at most one have the same tokens (the host and the device sampler
/// part ways only where a uniform falls within rounding of a cumulative boundary); returns the
/// pairs that agree.
fn assert_all_but_one_agree<'s>(
    a: &'s [infalign_decoding::Sample],
    b: &'s [infalign_decoding::Sample],
    what: &str,
) -> Vec<(&'s infalign_decoding::Sample, &'s infalign_decoding::Sample)> {
    let same: Vec<_> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.tokens == y.tokens)
        .collect();
    assert!(
        same.len() + 1 >= a.len(),
        "{what}: {} of {} rows agree",
        same.len(),
        a.len()
    );
    same
}

fn assert_same_samples(a: &[infalign_decoding::Sample], b: &[infalign_decoding::Sample]) {
    assert_eq!(a.len(), b.len());
    let close = |x: &[f32], y: &[f32]| {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + p.abs().max(q.abs())))
    };
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.tokens, y.tokens);
        assert_eq!(x.finish, y.finish);
        assert!(close(&x.policy_logprobs, &y.policy_logprobs));
        assert!(close(&x.base_logprobs, &y.base_logprobs));
        assert!(close(&x.step_kl, &y.step_kl));
    }
}

#[test]
fn sampling_and_tokenwise_cd_do_not_depend_on_batching() {
    // Completions that end (here at a stop string) leave the batch while the others go on;
    // the others must not notice. Batched decoding equals one prompt at a time, for base
    // sampling and for tokenwise CD, whose scorer caches leave the batch with the rows.
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(3.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device.clone());
    let s = scorer(&lm.model, ScorerLayout::VocabWide, 4);
    let ps: Vec<String> = (0..6).map(|i| format!("the dog {i}")).collect();
    let batched = GenerationConfig {
        max_new_tokens: 16,
        n: 4,
        stop: vec!["a".into()],
        prompt_batch: 6,
        ..Default::default()
    };
    let alone = GenerationConfig {
        prompt_batch: 1,
        ..batched.clone()
    };
    let together = g.generate(&ps, &batched, Seed(3)).unwrap();
    let ends: Vec<usize> = together.iter().map(|x| x.tokens.len()).collect();
    assert!(
        ends.iter().filter(|&&l| l < 16).count() >= 4 && ends.contains(&16),
        "rows must end at different steps for rows to leave the batch: {ends:?}"
    );
    assert_same_samples(&together, &g.generate(&ps, &alone, Seed(3)).unwrap());
    let cd = |cfg: &GenerationConfig| {
        let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
        TokenwiseCd::new(2.0, None, mix)
            .unwrap()
            .decode(&g, &ps, cfg, Seed(3))
            .unwrap()
    };
    let steered = cd(&batched);
    assert!(
        steered
            .iter()
            .zip(&together)
            .any(|(a, b)| a.tokens != b.tokens)
    );
    assert_same_samples(&steered, &cd(&alone));
}

#[test]
fn samples_split_over_cores_are_the_samples_of_one_chunk() {
    // A chunk's samples decoded in parts, one per core, come back as one chunk decodes them, in
    // prompt-major order: 6 prompts × 4 samples in parts of samples 0, 1 and 2–3 (3 cores, at
    // least 8 rows each), and one prompt's 16 samples in two halves.
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(3.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let one = Generator::new(&lm, device.clone()).cores(1);
    let split = Generator::new(&lm, device.clone()).cores(3);
    let ps: Vec<String> = (0..6)
        .map(|i| format!("the dog {i} {}", "a ".repeat(i)))
        .collect();
    for (prompts, n) in [(&ps[..], 4), (&ps[..1], 16)] {
        let cfg = GenerationConfig {
            max_new_tokens: 10,
            n,
            sampling: infalign_decoding::SamplingConfig {
                top_p: Some(0.9),
                ..Default::default()
            },
            ..Default::default()
        };
        let want = one.generate(prompts, &cfg, Seed(4)).unwrap();
        let got = split.generate(prompts, &cfg, Seed(4)).unwrap();
        assert_same_samples(&want, &got);
        let order: Vec<usize> = got.iter().map(|s| s.prompt_index).collect();
        let prompt_major: Vec<usize> = (0..prompts.len() * n).map(|r| r / n).collect();
        assert_eq!(order, prompt_major);
        assert!(
            want.windows(2).any(|w| w[0].tokens != w[1].tokens),
            "samples differ"
        );
    }
    let none = split.generate(&[], &GenerationConfig::default(), Seed(4));
    assert!(none.unwrap().is_empty(), "no prompts, no samples");
}

#[test]
fn many_samples_decode_in_blocks_with_the_same_samples() {
    // More rows than `max_rows`: one prompt at a time, its samples in blocks; each sample keeps
    // its own random stream, so the samples are those of one prompt at a time, unsplit, for base
    // sampling and for tokenwise CD (whose scorer prefills each block).
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(3.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device.clone());
    let s = scorer(&lm.model, ScorerLayout::VocabWide, 4);
    let ps: Vec<String> = (0..3).map(|i| format!("the dog {i}")).collect();
    let whole = GenerationConfig {
        max_new_tokens: 12,
        n: 10,
        prompt_batch: 1,
        ..Default::default()
    };
    let blocks = GenerationConfig {
        prompt_batch: 4,
        max_rows: 3,
        ..whole.clone()
    };
    let a = g.generate(&ps, &whole, Seed(5)).unwrap();
    assert_eq!(a.len(), 30);
    assert_same_samples(&a, &g.generate(&ps, &blocks, Seed(5)).unwrap());
    let cd = |cfg: &GenerationConfig| {
        let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
        TokenwiseCd::new(2.0, None, mix)
            .unwrap()
            .decode(&g, &ps, cfg, Seed(5))
            .unwrap()
    };
    assert_same_samples(&cd(&whole), &cd(&blocks));
}

#[test]
fn selections_over_a_huge_n_stream_to_the_same_choice() {
    // 2 prompts × 2,100 candidates: past the 4,096 rows above which best-, worst- and soft
    // best-of-N decode and score block by block, keeping only their choice.
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(8.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let g = Generator::new(&lm, device);
    let cfg = GenerationConfig {
        max_new_tokens: 2,
        max_rows: 512,
        ..Default::default()
    };
    let prompts: Vec<String> = vec!["the cat".into(), "a dog ran".into()];
    let n = 2100;
    let seed = Seed(5);
    let all =
        infalign_decoding::scored_candidates(&g, &prompts, n, &cfg, &HashReward, seed).unwrap();
    let reward = |s: &infalign_decoding::Sample| s.reward.unwrap();
    // The reference: the first of the highest (lowest) rewards among all candidates at once.
    let first_of = |group: &[infalign_decoding::Sample], better: fn(f64, f64) -> bool| {
        (0..group.len()).fold(0, |c, i| {
            if better(reward(&group[i]), reward(&group[c])) {
                i
            } else {
                c
            }
        })
    };
    let best = BestOfN {
        n,
        reward: &HashReward,
    }
    .decode(&g, &prompts, &cfg, seed)
    .unwrap();
    let worst = WorstOfN {
        n,
        reward: &HashReward,
    }
    .decode(&g, &prompts, &cfg, seed)
    .unwrap();
    let tau = 0.05;
    let soft = infalign_decoding::SoftBestOfN {
        n,
        tau,
        reward: &HashReward,
    }
    .decode(&g, &prompts, &cfg, seed)
    .unwrap();
    for (p, group) in all.iter().enumerate() {
        assert_eq!(group.len(), n);
        let top = &group[first_of(group, |a, b| a > b)];
        let bottom = &group[first_of(group, |a, b| a < b)];
        assert_eq!((&best[p].tokens, best[p].reward), (&top.tokens, top.reward));
        assert_eq!(
            (&worst[p].tokens, worst[p].reward),
            (&bottom.tokens, bottom.reward)
        );
        // Soft best-of-N: the prompt's own draw against the cumulative weights.
        let mut rng = seed.derive("soft-bon", p as u64).stream("soft-bon");
        let m = group.iter().map(reward).fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = group
            .iter()
            .map(|s| ((reward(s) - m) / tau).exp())
            .collect();
        let u = rng.random::<f64>() * w.iter().sum::<f64>();
        let mut acc = 0.0;
        let pick = w
            .iter()
            .position(|wi| {
                acc += wi;
                u < acc
            })
            .unwrap_or(n - 1);
        assert_eq!(soft[p].tokens, group[pick].tokens, "prompt {p}");
    }
}

#[test]
fn sampling_on_the_device_draws_what_the_host_draws() {
    // The device sampler takes the same uniforms from the same streams as the host sampler, so
    // the two pick the same tokens unless a uniform falls within f32 rounding of a cumulative
    // boundary (chance ~1e-6 a draw): at most one row may part ways. On the device, too,
    // batching changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let lm = loaded(3.0, dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let host = Generator::new(&lm, device.clone()).sample_on_device(false);
    let on_device = Generator::new(&lm, device.clone()).sample_on_device(true);
    let ps: Vec<String> = (0..4).map(|i| format!("the dog {i}")).collect();
    let sampling = |temperature, top_k, top_p, greedy| infalign_decoding::SamplingConfig {
        temperature,
        top_k,
        top_p,
        greedy,
    };
    for s in [
        sampling(1.0, None, None, false),
        sampling(0.6, None, None, false),
        sampling(1.0, Some(5), None, false),
        sampling(0.9, None, Some(0.8), false),
        sampling(1.0, None, None, true),
    ] {
        let cfg = GenerationConfig {
            max_new_tokens: 12,
            n: 4,
            stop: vec!["a".into()],
            prompt_batch: 4,
            sampling: s.clone(),
            ..Default::default()
        };
        let a = host.generate(&ps, &cfg, Seed(7)).unwrap();
        let b = on_device.generate(&ps, &cfg, Seed(7)).unwrap();
        let same = assert_all_but_one_agree(&a, &b, &format!("{s:?}"));
        let (x, y): (Vec<_>, Vec<_>) = same
            .into_iter()
            .map(|(x, y)| (x.clone(), y.clone()))
            .unzip();
        assert_same_samples(&x, &y);
        // The two paths really differ: the device sums each step's KL in f32, the host in f64.
        if s.temperature != 1.0 {
            let bits = |v: &[infalign_decoding::Sample]| -> Vec<u32> {
                v.iter()
                    .flat_map(|x| x.step_kl.iter().map(|k| k.to_bits()))
                    .collect()
            };
            assert_ne!(bits(&x), bits(&y), "{s:?}: was the device sampler used?");
        }
        let alone = GenerationConfig {
            prompt_batch: 1,
            ..cfg.clone()
        };
        assert_same_samples(&b, &on_device.generate(&ps, &alone, Seed(7)).unwrap());
    }
    // Tokenwise CD adjusts on the device too (p·exp(λV) normalised there): the host's tokens,
    // λ = 0 is base sampling exactly, and batching changes nothing. With a candidate
    // restriction it adjusts on the host, whatever the generator prefers: the host's samples.
    let s = scorer(&lm.model, ScorerLayout::VocabWide, 4);
    let cfg = GenerationConfig {
        max_new_tokens: 12,
        n: 4,
        stop: vec!["a".into()],
        prompt_batch: 4,
        ..Default::default()
    };
    let cd = |g: &Generator, lambda: f32, top_k: Option<usize>, cfg: &GenerationConfig| {
        let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
        TokenwiseCd::new(lambda, top_k, mix)
            .unwrap()
            .decode(g, &ps, cfg, Seed(7))
            .unwrap()
    };
    let a = cd(&host, 2.0, None, &cfg);
    let b = cd(&on_device, 2.0, None, &cfg);
    assert_all_but_one_agree(&a, &b, "tokenwise CD");
    let base = on_device.generate(&ps, &cfg, Seed(7)).unwrap();
    assert!(b.iter().zip(&base).any(|(x, y)| x.tokens != y.tokens));
    assert_same_samples(&cd(&on_device, 0.0, None, &cfg), &base);
    let alone = GenerationConfig {
        prompt_batch: 1,
        ..cfg.clone()
    };
    assert_same_samples(&b, &cd(&on_device, 2.0, None, &alone));
    assert_same_samples(
        &cd(&host, 2.0, Some(5), &cfg),
        &cd(&on_device, 2.0, Some(5), &cfg),
    );
    // Blockwise CD draws its candidates on the device: the host's choices.
    let blockwise = |g: &Generator| {
        let mix = ScorerMix::new(vec![(1.0, &s)], VOCAB, device.clone()).unwrap();
        BlockwiseCd::new(4, 3, TieBreak::First, mix)
            .unwrap()
            .decode(g, &ps, &cfg, Seed(7))
            .unwrap()
    };
    let (a, b) = (blockwise(&host), blockwise(&on_device));
    assert_all_but_one_agree(&a, &b, "blockwise CD");
}
