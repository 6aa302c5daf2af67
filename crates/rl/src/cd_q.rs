//! CD-Q (Mudgal et al. 2024, eq. 5; docs/ALGORITHMS.md A.3.2): the Bellman identity of the base
//! policy's value as a regression target under stop-gradient,
//! `v_t = Σ_z π_ref(z | [x, y^t]) · V_θ([x, y^t, z])` for a non-terminal prefix and
//! `v_t = r([x, y^t])` at the end, with `ℓ_Q = ½ Σ_t (V_θ([x, y^t]) − stopgrad(v_t))²`.
//!
//! The vocabulary-wide head gives every `V_θ([x, y^t, z])` in the same forward pass that
//! predicts `V_θ([x, y^t])`, so a step costs one scorer pass and one frozen base pass. The data
//! may be off-policy; the base model is consulted for `π_ref`. With a target network (not the
//! paper's default) the bootstrap values come from it instead.

use burn::tensor::{Device, Tensor, TensorData};
use infalign_models::{CausalLm, PrefixScorer, ScorerLayout, weights::read_f32};

use crate::RlError;
use crate::scorer_batch::ScorerBatch;
use crate::scorer_objective::ScorerObjective;

/// CD-Q against the frozen base model (on the plain `device`): mean over completion prefixes of
/// `½ (V − stopgrad(v))²`.
pub(crate) struct CdQ<'a> {
    /// The base policy π_ref.
    pub base: &'a CausalLm,
    /// The plain device of the frozen networks.
    pub device: &'a Device,
}

impl ScorerObjective for CdQ<'_> {
    fn loss(
        &self,
        scorer: &PrefixScorer,
        target: Option<&PrefixScorer>,
        b: &ScorerBatch,
    ) -> Result<Tensor<1>, RlError> {
        loss(scorer, target, self.base, b, self.device)
    }
}

/// Uploads host log-probs as probabilities on `device`, `[B, L, V]`.
fn probs_on(values: Vec<f32>, dims: [usize; 3], device: &Device) -> Tensor<3> {
    let p: Vec<f32> = values.into_iter().map(f32::exp).collect();
    Tensor::from_data(TensorData::new(p, dims), device)
}

/// Mean over completion prefixes of `½ (V − stopgrad(v))²`.
fn loss(
    scorer: &PrefixScorer,
    target: Option<&PrefixScorer>,
    base: &CausalLm,
    b: &ScorerBatch,
    device: &Device,
) -> Result<Tensor<1>, RlError> {
    if scorer.layout() != ScorerLayout::VocabWide {
        return Err(RlError::InvalidParameter {
            field: "layout",
            message: "CD-Q needs the vocabulary-wide head (V of every next token)".into(),
        });
    }
    let out = scorer.forward(&b.batch, &mut scorer.new_cache()); // [B, L, V]
    let [bs, l, v] = out.dims();
    let pred = b.batch.at_next_tokens(out.clone());
    // π_ref at every position, from the frozen base model on the plain device.
    let plain = b.batch.to_device(device)?;
    let logp = read_f32(base.forward(&plain, &mut base.new_cache()))?;
    let p_ref = probs_on(logp, [bs, l, v], &out.device());
    let boot_src = match target {
        Some(t) => {
            let vals = read_f32(t.forward(&plain, &mut t.new_cache()))?;
            Tensor::from_data(
                burn::tensor::TensorData::new(vals, [bs, l, v]),
                &out.device(),
            )
        }
        None => out.detach(),
    };
    let boot = (p_ref * boot_src)
        .sum_dim(2)
        .narrow(1, 1, l - 1)
        .reshape([bs, l - 1]);
    let term = b.terminal.clone();
    let target_v = (term.clone() * b.reward.clone() + (term.neg() + 1.0) * boot).detach();
    let err = pred - target_v;
    Ok((err.square() * b.weight.clone()).sum() * (0.5 / b.prefixes))
}
