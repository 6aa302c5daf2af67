//! IPO (Azar et al. 2024, "A General Theoretical Paradigm to Understand Learning from Human
//! Preferences"): with the same margin `h` as DPO ([`crate::dpo`]), the loss
//! `(h − 1/(2τ))²`, averaged over pairs; τ plays β's role (here the `beta` setting).
//!
//! It regresses the log-ratio margin onto a constant instead of pushing it to infinity, so it
//! does not overfit deterministic preferences. Invariants (tested): with the policy equal to
//! the reference the loss is exactly `(1/(2τ))²`; on a two-armed bandit with the preferred arm
//! always chosen, the margin converges to `1/(2τ)`, i.e. `log(π(w)/π(l)) − log(π_ref(w)/π_ref(l))
//! = 1/(2τ)` (`tests/rl/bandit.rs`).

use burn::tensor::Tensor;

/// `Σ_pairs (h − 1/(2τ))²` for margins `h` (`[pairs]`).
pub fn loss(margins: Tensor<1>, tau: f64) -> Tensor<1> {
    (margins - 0.5 / tau).powi_scalar(2).sum()
}
