//! # infalign-decoding
//!
//! Sampling from a language model: temperature, top-k and top-p processing of next-token
//! log-probs ([`SamplingConfig`]), and batched generation with a shared prefill per prompt
//! ([`Generator`]). Every [`Sample`] records its prompt, tokens, text, how it ended, and its
//! per-token log-probs under the policy that drew it and under the base model.
//!
//! ```
//! use infalign_decoding::{SamplingConfig, sample_token};
//! use rand::SeedableRng;
//!
//! // Log-probs of a 3-token vocabulary.
//! let logp = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
//! let greedy = SamplingConfig { greedy: true, ..Default::default() };
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! assert_eq!(sample_token(&logp, &greedy, &mut rng).0, 0);
//! // top-k = 1 keeps only the most likely token, whatever the draw.
//! let top1 = SamplingConfig { top_k: Some(1), ..Default::default() };
//! let (token, policy_logp) = sample_token(&logp, &top1, &mut rng);
//! assert_eq!((token, policy_logp), (0, 0.0));
//! ```

mod error;
mod generate;
mod sample;
mod sampler;

pub use error::DecodingError;
pub use generate::{GenerationConfig, Generator};
pub use sample::{Finish, Sample};
pub use sampler::{SamplingConfig, process_logprobs, sample_token};
