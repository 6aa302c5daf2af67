//! A six-word world shared by the reward-model tests: a word-level tokenizer, texts drawn
//! uniformly, and a known gold reward.

#![allow(dead_code)]

use infalign_core::Seed;
use infalign_models::weights::RandomInit;
use infalign_models::{CausalLm, Gpt2Config, ModelConfig, PrefixScorer, ScorerLayout};
use rand::Rng;

/// The vocabulary, ids 0 to 5.
pub use infalign_models::test_support::SIX_WORDS as WORDS;

/// The gold reward: how many "d" minus how many "e".
pub fn gold(text: &str) -> f64 {
    text.split_whitespace()
        .map(|w| match w {
            "d" => 1.0,
            "e" => -1.0,
            _ => 0.0,
        })
        .sum()
}

/// `n` words drawn uniformly.
pub fn random_text(rng: &mut impl Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.random_range(0..6)])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A small GPT-2 over [`WORDS`] with a scalar head, on `device` (an autodiff one to train).
pub fn scalar_net(device: &burn::tensor::Device) -> PrefixScorer {
    let config = ModelConfig::Gpt2(Gpt2Config::new(6, 16, 32, 2, 4));
    let backbone = CausalLm::init(
        &config,
        &mut RandomInit::new(Seed(4).stream("init")),
        device,
    )
    .unwrap();
    PrefixScorer::from_base(backbone, ScorerLayout::Scalar, device).unwrap()
}
