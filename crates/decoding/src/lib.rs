//! # infalign-decoding
//!
//! Decoding strategies, one file each, behind one trait, [`DecodingStrategy`]: [`Ancestral`]
//! sampling with temperature, top-k and top-p ([`SamplingConfig`], [`Generator`]), drawn on
//! the host on the CPU and on the device elsewhere ([`sample_on_device`]);
//! [`BestOfN`], [`WorstOfN`], [`SoftBestOfN`] with any reward; controlled decoding with prefix
//! scorers, [`TokenwiseCd`] and [`BlockwiseCd`], over a multi-objective [`ScorerMix`].
//! [`StrategyConfig`] names each built-in with its parameters, validates them, knows how its KL
//! is known ([`KlProvenance`]) and builds it (`init`). The N samples of a prompt always share its prefill. Every [`Sample`] records its prompt, tokens, text, how it ended, and its
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

mod ancestral;
mod best_of_n;
mod blockwise_cd;
mod candidates;
mod device_sampler;
mod error;
mod generate;
mod sample;
mod sampler;
mod scorer_mix;
mod soft_best_of_n;
mod strategy;
mod tokenwise_cd;
mod worst_of_n;

pub use ancestral::Ancestral;
pub use best_of_n::BestOfN;
pub use blockwise_cd::{BlockwiseCd, TieBreak};
pub use candidates::{score_samples, scored_candidates};
pub use device_sampler::{
    DeviceDraws, inverse_cdf_on_device, process_logprobs_on_device, sample_on_device,
};
pub use error::DecodingError;
pub use generate::{GenerationConfig, Generator, KV_BUDGET_BYTES, Steer};
pub use sample::{Finish, Sample, completion_logprobs};
pub use sampler::{SamplingConfig, kl_divergence, process_logprobs, sample_token};
pub use scorer_mix::ScorerMix;
pub use soft_best_of_n::SoftBestOfN;
pub use strategy::{DecodingStrategy, KlProvenance, StrategyConfig};
pub use tokenwise_cd::TokenwiseCd;
pub use worst_of_n::WorstOfN;
