//! Ancestral sampling (docs/ALGORITHMS.md A.5): each token drawn from the model's next-token
//! distribution as the sampler reshapes it (temperature, top-k, top-p), or the most likely token
//! (greedy). The decoding model itself: its samples' KL to it is the exact sum of the per-step
//! KLs the sampler records, zero at temperature 1 without truncation.
//!
//! Invariants: `greedy` overrides the sampler's flag and nothing else; results do not depend on
//! how prompts are batched (each row draws from its own seeded stream).

use infalign_core::Seed;

use crate::generate::{GenerationConfig, Generator};
use crate::strategy::DecodingStrategy;
use crate::{DecodingError, Sample};

/// Plain sampling from the model, or greedy decoding.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ancestral {
    /// Take the most likely token each step instead of sampling.
    pub greedy: bool,
}

impl DecodingStrategy for Ancestral {
    fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        let mut cfg = cfg.clone();
        cfg.sampling.greedy |= self.greedy;
        generator.generate(prompts, &cfg, seed)
    }
}
