//! CD-FUDGE (Mudgal et al. 2024, eq. 4; docs/ALGORITHMS.md A.3.1): on rollouts of the base model,
//! every prefix of the completion regresses onto the sequence's final reward,
//! `ℓ_F = ½ Σ_t (V_θ([x, y^t]) − r([x, y]))²`.
//!
//! Invariant: with on-policy rollouts the stochastic gradient is unbiased for the ideal
//! distillation loss toward V* (Lemma C.1); off-policy data bias it, so feed base samples.

use burn::tensor::Tensor;
use infalign_models::PrefixScorer;

use crate::RlError;
use crate::scorer_batch::ScorerBatch;
use crate::scorer_objective::ScorerObjective;

/// CD-FUDGE: mean over completion prefixes of `½ (V − r)²`.
pub(crate) struct CdFudge;

impl ScorerObjective for CdFudge {
    fn loss(
        &self,
        scorer: &PrefixScorer,
        _target: Option<&PrefixScorer>,
        b: &ScorerBatch,
    ) -> Result<Tensor<1>, RlError> {
        let values = scorer.prefix_values(&b.batch, &mut scorer.new_cache());
        let err = values - b.reward.clone();
        Ok((err.square() * b.weight.clone()).sum() * (0.5 / b.prefixes))
    }
}
