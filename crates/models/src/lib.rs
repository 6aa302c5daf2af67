//! # infalign-models
//!
//! Tokenizers and decoder-only language models on burn: GPT-2 and Llama/Qwen2, each a config
//! with `init` and a forward you can read in one sitting; a KV cache with left-padded batched
//! prefill; next-token log-probs and per-token log-probs of a continuation; model directories in
//! Hugging Face's layout (`config.json`, `model.safetensors`, `tokenizer.json`).
//!
//! ```
//! use infalign_core::{DeviceSpec, Seed};
//! use infalign_models::{CausalLm, Gpt2Config, ModelConfig, TokenBatch};
//!
//! let device = DeviceSpec::Cpu.device().unwrap();
//! // vocab 32, context 16, width 16, 1 layer, 2 heads.
//! let config = ModelConfig::Gpt2(Gpt2Config::new(32, 16, 16, 1, 2));
//! let model = CausalLm::random(&config, Seed(0), &device).unwrap();
//! // Per-token log-probs of a sequence: log p(t[i+1] | t[..=i]).
//! let lp = model.sequence_logprobs(&[vec![1, 2, 3, 4]], 0, &device).unwrap();
//! assert_eq!(lp[0].len(), 3);
//! assert!(lp[0].iter().all(|&x| x < 0.0));
//! // Next-token log-probs with a KV cache.
//! let mut cache = model.new_cache();
//! let batch = TokenBatch::left_padded(&[vec![1, 2, 3]], 0, &device).unwrap();
//! let next = model.next_token_logprobs(&batch, &mut cache);
//! assert_eq!(next.dims(), [1, 32]);
//! assert_eq!(cache.len(), 3);
//! ```

mod cache;
mod checkpoint;
mod config;
mod error;
mod gpt2;
mod layers;
mod llama;
mod lm;
mod prefix_scorer;
#[cfg(feature = "test-support")]
pub mod test_support;
mod tokenizer;
pub mod training;
pub mod weights;

pub use cache::{KvCache, LayerCache};
pub use checkpoint::{
    CONFIG_FILE, LoadedModel, TOKENIZER_FILE, WEIGHTS_FILE, check_vocab, save_model_dir,
};
pub use config::{EosTokenIds, Gpt2Config, LlamaConfig, LlamaFlavor, ModelConfig};
pub use error::{ModelError, Result};
pub use gpt2::Gpt2;
pub use llama::Llama;
pub use lm::{CausalLm, TokenBatch};
pub use prefix_scorer::{
    PrefixScorer, SCORER_FILE, ScorerInfo, ScorerLayout, VALUE_HEAD_FILE, single_row,
    values_to_host,
};
pub use tokenizer::{END_OF_TEXT, Tokenizer};
pub use training::run::{RunFiles, StepReport};
