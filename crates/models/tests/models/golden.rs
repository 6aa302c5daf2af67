//! Golden tests against Hugging Face transformers. Each `tests/fixtures/<case>/` holds a model
//! directory and `golden.json` written by its `make.py` (torch + transformers, seeded): the
//! per-token log-probs of a fixed text and a greedy continuation. infalign must reproduce the
//! log-probs within 1e-4 and the greedy ids exactly.
//!
//! Cases: GPT-2 (f32, tied, fused c_attn); Llama with grouped-query attention and an untied head
//! (f16 weights); Qwen2 with q/k/v bias and a tied head (bf16, sharded); and two checkpoints
//! that infalign itself wrote and transformers loaded (export).

use std::path::PathBuf;

use infalign_core::DeviceSpec;
use infalign_models::{LoadedModel, TokenBatch, weights::read_f32};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    text: String,
    token_ids: Vec<u32>,
    token_logprobs: Vec<f32>,
    prompt_ids: Vec<u32>,
    max_new_tokens: usize,
    greedy_ids: Vec<u32>,
}

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(case)
}

/// Greedy decoding with the KV cache, stopping at EOS like transformers' `generate`.
fn greedy(lm: &LoadedModel, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let device = DeviceSpec::Cpu.device().unwrap();
    let mut cache = lm.model.new_cache();
    let mut batch = TokenBatch::left_padded(&[prompt.to_vec()], lm.pad_id, &device).unwrap();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let lp = read_f32(lm.model.next_token_logprobs(&batch, &mut cache)).unwrap();
        let best = lp
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0 as u32;
        out.push(best);
        if lm.eos_ids.contains(&best) {
            break;
        }
        batch = TokenBatch::step(&[best], &device);
    }
    out
}

fn check(case: &str) {
    let dir = fixture(case);
    let golden: Golden =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let device = DeviceSpec::Cpu.device().unwrap();
    let lm = LoadedModel::load(&dir, &device).unwrap();
    assert_eq!(
        lm.tokenizer.encode(&golden.text).unwrap(),
        golden.token_ids,
        "{case}: token ids"
    );
    let lp = lm
        .model
        .sequence_logprobs(std::slice::from_ref(&golden.token_ids), lm.pad_id, &device)
        .unwrap()
        .remove(0);
    assert_eq!(lp.len(), golden.token_logprobs.len());
    let worst = lp
        .iter()
        .zip(&golden.token_logprobs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let spread = golden
        .token_logprobs
        .iter()
        .cloned()
        .fold(f32::MAX, f32::min);
    eprintln!("{case}: max |Δ log p| = {worst:.2e} (most negative reference log p {spread:.2})");
    assert!(
        worst < 1e-4,
        "{case}: log-probs differ from transformers by {worst}"
    );
    let ids = greedy(&lm, &golden.prompt_ids, golden.max_new_tokens);
    assert_eq!(ids, golden.greedy_ids, "{case}: greedy continuation");
}

#[test]
fn gpt2_matches_transformers() {
    check("gpt2");
}

#[test]
fn llama_gqa_untied_f16_matches_transformers() {
    check("llama-gqa-f16");
}

#[test]
fn qwen2_bias_bf16_sharded_matches_transformers() {
    check("qwen2-bf16-sharded");
}

#[test]
fn gpt2_written_by_infalign_loads_in_transformers() {
    check("export-gpt2");
}

#[test]
fn llama_written_by_infalign_loads_in_transformers() {
    check("export-llama");
}
