//! What the workspace's tests share (feature `test-support`, enabled by the crates' dev
//! dependencies only): a six-word world whose token ids are known by heart, and reading back
//! which steps a run logged.
//!
//! Invariant: everything here is deterministic (explicit seeds); nothing is used outside tests.

use std::path::Path;

use crate::Tokenizer;

/// The six words, ids 0 to 5 in this order.
pub const SIX_WORDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// A word-level tokenizer over [`SIX_WORDS`]: a sequence's ids are its words' positions.
pub fn six_word_tokenizer() -> Tokenizer {
    Tokenizer::word_level(&SIX_WORDS).expect("six distinct words")
}

/// The steps a run's `metrics.jsonl` holds rows for, in order.
pub fn steps_logged(metrics: &Path) -> Vec<u64> {
    infalign_core::metrics::logged_steps(metrics).expect("a readable metrics.jsonl")
}
