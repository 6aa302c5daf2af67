//! DPO (Rafailov et al. 2023): for a preferred completion `y_w` and a dispreferred `y_l` of one
//! prompt, with the policy's and the frozen reference's sequence log-probs, the margin
//! `h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))` and the loss
//! `−log σ(β·h)`, averaged over pairs.
//!
//! Under Bradley–Terry preferences its minimiser is `π_ref · exp(r/β) / Z`, the KL-regularised
//! optimum with KL weight β. Invariants (tested): with the policy equal to the reference every
//! margin is 0 and the loss is exactly `ln 2`; the gradient raises the preferred completion's
//! log-prob (a sign error fails the bandit test in `tests/rl/bandit.rs`).

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

/// `Σ_pairs −log σ(β·h)` for margins `h` (`[pairs]`).
pub fn loss(margins: Tensor<1>, beta: f64) -> Tensor<1> {
    log_sigmoid(margins * beta).sum().neg()
}
