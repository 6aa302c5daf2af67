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
            let worst = want
                .iter()
                .flatten()
                .zip(got.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            eprintln!("{name} on {spec}: max |Δ log p| vs cpu = {worst:.2e}");
            assert!(worst < 1e-4, "{name} on {spec}: {worst}");
            assert_eq!(
                greedy(&m, &dev, &rows, 6),
                want_greedy,
                "{name} on {spec}: greedy"
            );
        }
    }
}
