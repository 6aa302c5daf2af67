//! CD-FUDGE (Mudgal et al. 2024, eq. 4; docs/ALGORITHMS.md A.3.1): on rollouts of the base model,
//! every prefix of the completion regresses onto the sequence's final reward,
//! `ℓ_F = ½ Σ_t (V_θ([x, y^t]) − r([x, y]))²`.
//!
//! Invariant: with on-policy rollouts the stochastic gradient is unbiased for the ideal
//! distillation loss toward V* (Lemma C.1); off-policy data bias it, so feed base samples.

use burn::tensor::Tensor;
use infalign_models::PrefixScorer;

use crate::scorer_train::ScorerBatch;

/// Mean over completion prefixes of `½ (V − r)²`.
pub(crate) fn loss(scorer: &PrefixScorer, b: &ScorerBatch) -> Tensor<1> {
    let values = scorer.prefix_values(&b.batch, &mut scorer.new_cache());
    let err = values - b.reward.clone();
    (err.square() * b.weight.clone()).sum() * (0.5 / b.prefixes)
}
