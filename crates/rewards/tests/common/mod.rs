//! A six-word world shared by the reward-model tests: a word-level tokenizer, texts drawn
//! uniformly, and a known gold reward.

#![allow(dead_code)]

use infalign_models::Tokenizer;
use rand::Rng;

/// The vocabulary, ids 0 to 5.
pub const WORDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// A word-level tokenizer over [`WORDS`], written into `dir`.
pub fn tokenizer(dir: &std::path::Path) -> Tokenizer {
    let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "a",
        "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "f": 5}}}"#;
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, json).unwrap();
    Tokenizer::from_file(&p).unwrap()
}

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
