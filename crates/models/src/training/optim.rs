//! Training utilities shared by every trainer: the warmup-then-cosine learning-rate schedule,
//! clipping by the global gradient norm (PyTorch's `clip_grad_norm_`, over all parameters at
//! once, not per tensor), and optimizer steps whose batch is split into shards that run on
//! separate cores ([`descend_sharded`]).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Linear warmup from 0 to `peak`, then cosine decay to `peak * min_ratio` at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
    /// Final rate as a fraction of the peak.
    pub min_ratio: f64,
}

impl LrSchedule {
    /// Learning rate at 1-based `step`.
    pub fn at(&self, step: u64) -> f64 {
        if self.warmup > 0 && step <= self.warmup {
            return self.peak * step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup.min(step)) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
    }
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// Multiplies every gradient by `scale` (for example 1/accumulation steps), then clips the
/// global L2 norm to `max_norm` (if any). Returns the norm after `scale`, before clipping.
pub fn scale_and_clip<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    scale: f64,
    max_norm: Option<f64>,
) -> f64 {
    let mut sq = SquaredNorm { grads, total: None };
    model.visit(&mut sq);
    let norm = sq
        .total
        .map(|t| f64::from(t.into_scalar::<f32>()).sqrt())
        .unwrap_or(0.0)
        * scale;
    let clip = match max_norm {
        Some(m) if norm > m && norm > 0.0 => m / norm,
        _ => 1.0,
    };
    let factor = scale * clip;
    if factor != 1.0 {
        model.visit(&mut Scale { grads, factor });
    }
    norm
}

struct SumInto<'a> {
    parts: &'a mut [GradientsParams],
    total: GradientsParams,
}

impl ModuleVisitor for SumInto<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let mut sum: Option<Tensor<D>> = None;
        for part in self.parts.iter_mut() {
            if let Some(g) = part.remove::<D>(param.id) {
                sum = Some(match sum.take() {
                    Some(s) => s + g,
                    None => g,
                });
            }
        }
        if let Some(s) = sum {
            self.total.register(param.id, s);
        }
    }
}

/// Shards of a training batch: its rows split into this many contiguous parts, each part's
/// forward and backward on its own core ([`descend_sharded`]). A constant, so that results do
/// not depend on the machine's core count.
pub const SHARDS: usize = 2;

/// Rows `lo..hi` of shard `s` when `rows` rows are split into `shards` contiguous parts.
pub fn shard_rows(rows: usize, shards: usize, s: usize) -> (usize, usize) {
    (s * rows / shards, (s + 1) * rows / shards)
}

/// One optimizer step on a loss that is a sum over `shards` parts of the batch:
/// `loss_of(module, s)` is shard `s`'s term (normalised by the whole batch). Each shard's
/// forward and backward run on a fork of `module` (its own autodiff graph, the same parameter
/// ids), on the CPU on separate cores ([`infalign_core::run_on_workers`]); the gradients are
/// summed in shard order, clipped to `clip` (0 disables) and applied. Returns the updated module,
/// the summed loss and the gradient norm before clipping.
///
/// The result depends on `shards` (how the batch is split), never on the machine's cores.
pub fn descend_sharded<M, F, E>(
    module: M,
    optim: &mut burn::optim::ModuleOptimizer,
    shards: usize,
    loss_of: F,
    lr: f64,
    clip: f64,
) -> Result<(M, f64, f64), E>
where
    M: Module + Clone + Send + Sync,
    F: Fn(&M, usize) -> Result<Tensor<1>, E> + Sync,
    E: From<crate::ModelError> + From<infalign_core::CoreError> + Send,
{
    let device = module
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| crate::ModelError::Input("a module without parameters".into()))?;
    let shards = shards.max(1);
    let done = infalign_core::run_on_workers(&device, shards, |s| {
        let fork = module.clone().fork(&device);
        let loss = loss_of(&fork, s)?;
        let value = f64::from(crate::weights::read_f32(loss.clone())?[0]);
        Ok::<_, E>((value, GradientsParams::from_grads(loss.backward(), &fork)))
    })?;
    let value = done.iter().map(|(v, _)| v).sum();
    let mut parts: Vec<GradientsParams> = done.into_iter().map(|(_, g)| g).collect();
    let mut sum = SumInto {
        parts: &mut parts,
        total: GradientsParams::new(),
    };
    module.visit(&mut sum);
    let mut grads = sum.total;
    finite("loss", value)?;
    let norm = scale_and_clip(&module, &mut grads, 1.0, (clip > 0.0).then_some(clip));
    finite("gradient norm", norm)?;
    Ok((optim.step(lr, module, grads), value, norm))
}

/// One optimizer step on `loss`: backward, clip the global gradient norm to `clip` (0 disables),
/// update. Returns the updated module, the loss value and the gradient norm before clipping.
pub fn descend<M: Module>(
    module: M,
    optim: &mut burn::optim::ModuleOptimizer,
    loss: Tensor<1>,
    lr: f64,
    clip: f64,
) -> crate::Result<(M, f64, f64)> {
    let value = f64::from(crate::weights::read_f32(loss.clone())?[0]);
    finite("loss", value)?;
    let mut grads = GradientsParams::from_grads(loss.backward(), &module);
    let norm = scale_and_clip(&module, &mut grads, 1.0, (clip > 0.0).then_some(clip));
    finite("gradient norm", norm)?;
    Ok((optim.step(lr, module, grads), value, norm))
}

/// A non-finite loss or gradient norm stops training before the step is applied, so that no
/// NaN reaches the weights.
fn finite(quantity: &'static str, value: f64) -> crate::Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(crate::ModelError::NonFinite { quantity, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let s = LrSchedule {
            peak: 1.0,
            warmup: 10,
            total: 110,
            min_ratio: 0.1,
        };
        assert!((s.at(5) - 0.5).abs() < 1e-12);
        assert!((s.at(10) - 1.0).abs() < 1e-12);
        assert!(
            (s.at(60) - 0.55).abs() < 1e-12,
            "halfway is the mean of peak and floor"
        );
        assert!((s.at(110) - 0.1).abs() < 1e-12);
        assert!((s.at(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn a_non_finite_loss_or_gradient_stops_the_step() {
        use burn::module::Module;
        use burn::nn::Linear;
        let device = burn::tensor::Device::flex().autodiff();
        // Fixed weights: the output for x is 1·0.5 + 2·0.25 = 1.
        let net = Linear {
            weight: Param::from_tensor(Tensor::from_floats([[0.5], [0.25]], &device)),
            bias: None,
        };
        let x: Tensor<2> = Tensor::from_floats([[1.0, 2.0]], &device);
        let mut optim = burn::optim::AdamWConfig::new().init();
        // A finite loss trains; NaN in the loss, and a loss whose gradient overflows, do not.
        let loss = |net: &Linear, scale: f32| net.forward(x.clone()).sum() * scale;
        let (net, _, _) = descend(net.clone(), &mut optim, loss(&net, 1.0), 1e-3, 0.0).unwrap();
        let e = descend(net.clone(), &mut optim, loss(&net, f32::NAN), 1e-3, 0.0).unwrap_err();
        assert!(e.to_string().contains("loss is NaN"), "{e}");
        let square = net.forward(x.clone()).sum().powf_scalar(2.0) * 1e30;
        let e = descend(net.clone(), &mut optim, square, 1e-3, 1.0).unwrap_err();
        assert!(
            e.to_string().contains("is inf") || e.to_string().contains("NaN"),
            "{e}"
        );
        let e = descend_sharded(
            net.clone(),
            &mut optim,
            2,
            |n: &Linear, _| Ok::<_, crate::ModelError>(loss(n, f32::INFINITY)),
            1e-3,
            0.0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("loss is inf"), "{e}");
        let _ = net.num_params();
    }
}
