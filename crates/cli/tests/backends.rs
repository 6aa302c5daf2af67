//! Backend swapping: the same weights (initialised on the host from one seed) and the same
//! inputs give the same log-probs on the default CPU backend and on every other backend this
//! build includes, within 1e-4; greedy decoding gives the same tokens.
//!
//! Runs only with a backend feature: `cargo xtask test-backends [--wgpu] [--cuda]`.
#![cfg(any(feature = "ndarray", feature = "wgpu", feature = "cuda"))]

use infalign_core::{DeviceSpec, Seed};
use infalign_models::weights::{RandomInit, read_f32};
use infalign_models::{CausalLm, Gpt2Config, LlamaConfig, LlamaFlavor, ModelConfig, TokenBatch};

fn configs() -> Vec<(&'static str, ModelConfig)> {
    let mut llama = LlamaConfig::new(97, 48, 96, 2, 4, 64);
    llama.num_key_value_heads = Some(2);
    vec![
        ("gpt2", ModelConfig::Gpt2(Gpt2Config::new(97, 64, 48, 2, 4))),
        ("qwen2", ModelConfig::Llama(llama, LlamaFlavor::Qwen2)),
    ]
}

fn others() -> Vec<DeviceSpec> {
    let mut v = Vec::new();
    if cfg!(feature = "ndarray") {
        v.push(DeviceSpec::Ndarray);
    }
    if cfg!(feature = "wgpu") && std::env::var_os("INFALIGN_SKIP_WGPU").is_none() {
        v.push(DeviceSpec::Wgpu);
    }
    if cfg!(feature = "cuda") {
        v.push(DeviceSpec::Cuda(0));
    }
    v
}

/// How far a model's log-prob `x` on `spec` may lie from the CPU's `y`. Backends that multiply
/// in f32 agree within 1e-4 (relative to 1 + |x|). CUDA does not: burn 0.22 runs f32 matrix
/// products on the tensor cores in TF32 where the GPU has them (compute capability 8.0 and
/// later; its autotune picks them, with no switch to turn them off), which rounds every input to
/// 10 mantissa bits. That is a margin, not a proof: TF32's 2^-10 per product, 16 times over
/// (the test models chain about a dozen products from the embedding to a log-prob), relative to
/// 1 + |x|; a product's error really scales with the sizes of its terms, which the scale-20
/// initialisation makes large. On an H200 the largest difference seen was 8.2e-3 (below a
/// fifth of the margin at |x| ≈ 6); a wrong kernel errs by whole units.
fn log_prob_tolerance(spec: DeviceSpec, x: f32, y: f32) -> f32 {
    let scale = 1.0 + x.abs().max(y.abs());
    match spec {
        DeviceSpec::Cuda(_) => 16.0 * 2f32.powi(-10) * scale,
        _ => 1e-4 * scale,
    }
}

fn build(config: &ModelConfig, spec: DeviceSpec) -> (CausalLm, burn::tensor::Device) {
    let device = spec.device().unwrap();
    let mut src = RandomInit::with_scale(Seed(4).stream("init"), 20.0);
    (CausalLm::init(config, &mut src, &device).unwrap(), device)
}

fn greedy(
    m: &CausalLm,
    device: &burn::tensor::Device,
    prompts: &[Vec<u32>],
    n: usize,
) -> Vec<Vec<u32>> {
    let mut cache = m.new_cache();
    let batch = TokenBatch::left_padded(prompts, 0, device).unwrap();
    let mut lp = read_f32(m.next_token_logprobs(&batch, &mut cache)).unwrap();
    let vocab = lp.len() / prompts.len();
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..n {
        let ids: Vec<u32> = lp
            .chunks(vocab)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
                    .0 as u32
            })
            .collect();
        for (o, &t) in out.iter_mut().zip(&ids) {
            o.push(t);
        }
        lp = read_f32(m.next_token_logprobs(&TokenBatch::step(&ids, device), &mut cache)).unwrap();
    }
    out
}

#[test]
fn every_backend_matches_the_cpu() {
    let rows = vec![vec![3u32, 14, 15, 92, 65, 35, 89, 79], vec![2u32, 71, 82]];
    for (name, config) in configs() {
        let (cpu, cpu_dev) = build(&config, DeviceSpec::Cpu);
        let want = cpu.sequence_logprobs(&rows, 0, &cpu_dev).unwrap();
        let want_greedy = greedy(&cpu, &cpu_dev, &rows, 6);
        for spec in others() {
            let (m, dev) = build(&config, spec);
            let got = m.sequence_logprobs(&rows, 0, &dev).unwrap();
            let (mut worst, mut worst_share) = (0.0f32, 0.0f32);
            for (&a, &b) in want.iter().flatten().zip(got.iter().flatten()) {
                worst = worst.max((a - b).abs());
                worst_share = worst_share.max((a - b).abs() / log_prob_tolerance(spec, a, b));
            }
            eprintln!(
                "{name} on {spec}: max |Δ log p| vs cpu = {worst:.2e} ({:.0}% of the tolerance)",
                100.0 * worst_share
            );
            assert!(worst_share < 1.0, "{name} on {spec}: {worst}");
            assert_eq!(
                greedy(&m, &dev, &rows, 6),
                want_greedy,
                "{name} on {spec}: greedy"
            );
        }
    }
}

#[test]
fn sampling_on_another_backend_draws_what_the_cpu_draws() {
    // The device sampler (temperature, top-k, top-p, inverse-CDF draw) on each backend against
    // the same operations on the CPU: processed log-probs within 1e-4, and for each row a
    // uniform in the middle of one kept token's stretch of the CPU's cumulative sum (far from
    // any boundary), which must draw that token on every backend.
    use burn::tensor::{Tensor, TensorData};
    use infalign_decoding::{SamplingConfig, process_logprobs_on_device, sample_on_device};
    let (rows, vocab) = (8, 40);
    let logp: Vec<f32> = (0..rows)
        .flat_map(|r| {
            let x: Vec<f32> = (0..vocab)
                // Distinct values (no ties for a backend's sort to break its own way).
                .map(|v| {
                    ((v * 7 + r * 13) % 23) as f32 * 0.15 * (1.0 + r as f32 * 0.3) + v as f32 * 1e-3
                })
                .collect();
            let m = x.iter().copied().fold(f32::MIN, f32::max);
            let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            x.into_iter().map(move |v| v - lse)
        })
        .collect();
    let tensor = |device: &burn::tensor::Device| {
        Tensor::<2>::from_data(TensorData::new(logp.clone(), [rows, vocab]), device)
    };
    let configs = [
        SamplingConfig::default(),
        SamplingConfig {
            temperature: 0.7,
            top_k: Some(9),
            ..Default::default()
        },
        SamplingConfig {
            top_p: Some(0.6),
            ..Default::default()
        },
    ];
    let cpu = DeviceSpec::Cpu.device().unwrap();
    for cfg in &configs {
        let want = read_f32(process_logprobs_on_device(tensor(&cpu), cfg)).unwrap();
        // Row r aims at its (r mod kept)-th kept token, u in the middle of its probability.
        let (mut uniforms, mut aims) = (Vec::new(), Vec::new());
        for (r, row) in want.chunks(vocab).enumerate() {
            let kept: Vec<usize> = (0..vocab).filter(|&v| row[v].is_finite()).collect();
            let aim = kept[r % kept.len()];
            let before: f64 = (0..aim).map(|v| f64::from(row[v]).exp()).sum();
            uniforms.push(before + f64::from(row[aim]).exp() / 2.0);
            aims.push(aim as u32);
        }
        let mut specs = vec![DeviceSpec::Cpu];
        specs.extend(others());
        for spec in specs {
            let device = spec.device().unwrap();
            let got = read_f32(process_logprobs_on_device(tensor(&device), cfg)).unwrap();
            for (a, b) in want.iter().zip(&got) {
                assert_eq!(a.is_finite(), b.is_finite(), "{spec} {cfg:?}: kept tokens");
                if a.is_finite() {
                    assert!((a - b).abs() < 1e-4, "{spec} {cfg:?}: {a} vs {b}");
                }
            }
            let draws = sample_on_device(tensor(&device), None, cfg, &uniforms).unwrap();
            assert_eq!(draws.tokens, aims, "{spec} {cfg:?}: tokens");
            eprintln!("device sampler on {spec}, {cfg:?}: the aimed tokens");
        }
    }
}

#[test]
fn generation_on_another_backend_samples_on_its_device() {
    // Off the CPU, a generator draws on the device and reads back only the draws; with the same
    // weights and seeds it samples what the CPU's host sampler samples, unless a uniform falls
    // within rounding of a cumulative boundary (chance ~1e-5 a draw): at most one row differs.
    use infalign_decoding::{GenerationConfig, Generator, SamplingConfig};
    use infalign_models::{LoadedModel, Tokenizer};
    let tokenizer = Tokenizer::from_file(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets/base-model/tokenizer.json"),
    )
    .unwrap();
    let config = ModelConfig::Gpt2(Gpt2Config::new(tokenizer.vocab_size(), 64, 48, 2, 4));
    let prompts: Vec<String> = ["The dog", "Love is", "A small", "Water"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Sampling as configured, or tokenwise CD (λ = 2) with a scorer whose head is seeded.
    let run = |spec: DeviceSpec, sampling: &SamplingConfig, cd: bool| {
        use infalign_decoding::{DecodingStrategy, ScorerMix, TokenwiseCd};
        use infalign_models::{PrefixScorer, ScorerLayout};
        let (m, device) = build(&config, spec);
        let lm = LoadedModel::assemble(m, tokenizer.clone(), std::path::Path::new("."));
        let cfg = GenerationConfig {
            max_new_tokens: 8,
            n: 2,
            sampling: sampling.clone(),
            ..Default::default()
        };
        let g = Generator::new(&lm, device.clone());
        if !cd {
            return g.generate(&prompts, &cfg, Seed(9)).unwrap();
        }
        let mut head = RandomInit::with_scale(Seed(5).stream("head"), 20.0);
        let scorer = PrefixScorer::init(
            lm.model.clone(),
            ScorerLayout::VocabWide,
            &mut head,
            &device,
        )
        .unwrap();
        let mix = ScorerMix::new(vec![(1.0, &scorer)], config.vocab_size(), device).unwrap();
        TokenwiseCd::new(2.0, None, mix)
            .unwrap()
            .decode(&g, &prompts, &cfg, Seed(9))
            .unwrap()
    };
    let top_p = SamplingConfig {
        temperature: 0.8,
        top_p: Some(0.9),
        ..Default::default()
    };
    for (sampling, cd) in [
        (SamplingConfig::default(), false),
        (top_p, false),
        (SamplingConfig::default(), true),
    ] {
        let want = run(DeviceSpec::Cpu, &sampling, cd);
        for spec in others() {
            let got = run(spec, &sampling, cd);
            let same = want.iter().zip(&got).filter(|(a, b)| a.tokens == b.tokens);
            // A step's KL may differ by a whole tail token where top-p's cumulative mass sits
            // within rounding of p on one backend and not the other: at most two such steps.
            let (mut agree, mut kl_apart) = (0, Vec::new());
            for (a, b) in same {
                agree += 1;
                for (x, y) in a.base_logprobs.iter().zip(&b.base_logprobs) {
                    let tolerance = log_prob_tolerance(spec, *x, *y);
                    assert!(
                        (x - y).abs() < tolerance,
                        "{spec}: base log-prob {x} vs {y}"
                    );
                }
                for (x, y) in a.step_kl.iter().zip(&b.step_kl) {
                    if (x - y).abs() >= log_prob_tolerance(spec, *x, *y) {
                        kl_apart.push((*x, *y));
                    }
                }
            }
            assert!(kl_apart.len() <= 2, "{spec}: step KLs apart: {kl_apart:?}");
            eprintln!(
                "generation on {spec} (CD: {cd}): {agree} of {} rows as on the cpu, step KLs \
                 apart: {kl_apart:?}",
                want.len()
            );
            assert!(
                agree + 1 >= want.len(),
                "{spec}: {agree} of {} rows agree",
                want.len()
            );
        }
    }
}
