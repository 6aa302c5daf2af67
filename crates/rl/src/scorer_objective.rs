//! The objective of prefix-scorer training, behind one trait ([`ScorerObjective`]) that the
//! loop in `scorer_train.rs` calls: CD-FUDGE (`cd_fudge.rs`, eq. 4) and CD-Q (`cd_q.rs`, eq. 5).
//!
//! Invariant: objective files depend on this one and on `scorer_batch.rs`, never on the loop.

use burn::tensor::Tensor;
use infalign_models::PrefixScorer;

use crate::RlError;
use crate::scorer_batch::ScorerBatch;

/// The loss of a scorer on one batch.
pub(crate) trait ScorerObjective {
    /// The batch's loss (a scalar with gradient); `target` is CD-Q's frozen target network when
    /// the run keeps one.
    fn loss(
        &self,
        scorer: &PrefixScorer,
        target: Option<&PrefixScorer>,
        batch: &ScorerBatch,
    ) -> Result<Tensor<1>, RlError>;
}
