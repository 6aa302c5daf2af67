//! The pieces GPT-2 and Llama share: normalisations, the GELU variants, rotary embeddings, and
//! masked scaled-dot-product attention over a KV cache.
//!
//! Invariant: attention never looks at a padded key or a future key; both are excluded by an
//! additive bias built once per forward ([`AttentionContext`]), not per layer.

use burn::backend::{Flex, flex::FlexTensor};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use crate::cache::{KvCache, LayerCache};

/// The additive bias for masked attention entries. Large enough that `exp` underflows to zero,
/// finite so that a fully masked (padding) query row stays finite.
pub(crate) const MASKED: f32 = -1e9;

/// LayerNorm over the last dimension (GPT-2).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Gain, HF `weight`.
    pub gamma: Param<Tensor<1>>,
    /// Shift, HF `bias`.
    pub beta: Param<Tensor<1>>,
    /// Epsilon added to the variance.
    pub epsilon: f64,
}

impl LayerNorm {
    /// `(x - mean) / sqrt(var + eps) * gamma + beta`, with the biased variance (as PyTorch).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(D - 1);
        let normed = centered / (var + self.epsilon).sqrt();
        normed * self.gamma.val().unsqueeze() + self.beta.val().unsqueeze()
    }
}

/// RMSNorm over the last dimension (Llama).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Gain, HF `weight`.
    pub gamma: Param<Tensor<1>>,
    /// Epsilon added to the mean square.
    pub epsilon: f64,
}

impl RmsNorm {
    /// `x / sqrt(mean(x^2) + eps) * gamma`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let ms = x.clone().square().mean_dim(D - 1);
        x / (ms + self.epsilon).sqrt() * self.gamma.val().unsqueeze()
    }
}

/// GELU, exact (`erf`) or with GPT-2's tanh approximation (`gelu_new`).
///
/// The approximation `0.5·x·(1 + tanh(z))`, `z = √(2/π)·(x + 0.044715·x³)`, is computed as
/// `x·σ(2z)`, the same function (`1 + tanh z = 2σ(2z)`) at one `exp` per element instead of a
/// `powf` and a `tanh`: on the CPU the transcendental calls, not the matmuls, were a sixth of a
/// small model's decoding time.
pub(crate) fn gelu<const D: usize>(x: Tensor<D>, tanh_approximation: bool) -> Tensor<D> {
    if tanh_approximation {
        if let Some(y) = gelu_tanh_kernel(&x) {
            return y;
        }
        const TWO_SQRT_2_OVER_PI: f64 =
            2.0 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;
        let cube = x.clone() * x.clone() * x.clone();
        let z2 = (cube * 0.044715 + x.clone()) * TWO_SQRT_2_OVER_PI;
        x * sigmoid(z2)
    } else {
        burn::tensor::activation::gelu(x)
    }
}

/// GPT-2's GELU by [`infalign_kernels::gelu_tanh`] (an `exp` that vectorizes) when `x` is an
/// untracked f32 tensor on the CPU (flex); `None` otherwise.
fn gelu_tanh_kernel<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    let shape = x.shape();
    let flex = f32_on_flex(x.clone())?;
    let mut values = flex.into_data().try_into_vec::<f32>().ok()?;
    infalign_kernels::gelu_tanh(&mut values).then(|| {
        Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
    })
}

/// What every layer of one forward pass needs: the attention bias over all cached plus new
/// positions, and the positions of the new tokens (taken from the attention mask, so left
/// padding does not shift them).
#[derive(Debug, Clone)]
pub(crate) struct AttentionContext {
    /// `[B, 1, L, T]`: 0 where query i may attend key j, [`MASKED`] elsewhere.
    pub bias: Tensor<4>,
    /// `[B, L]`: the position of each new token (0 for padding).
    pub positions: Tensor<2, Int>,
}

impl AttentionContext {
    /// Appends `new_mask` (`[B, L]`, 1 for a real token, 0 for padding) to the cache's mask and
    /// builds the bias and positions for the `L` new tokens.
    pub fn new(cache: &mut KvCache, new_mask: Tensor<2>, device: &Device) -> Self {
        let [_, l] = new_mask.dims();
        let past = cache.len();
        let full = cache.push_mask(new_mask);
        let [_, t] = full.dims();
        let positions = (full.clone().cumsum(1) - 1.0)
            .clamp_min(0.0)
            .narrow(1, past, l)
            .int();
        let causal: Tensor<2, Bool> = Tensor::tril_mask([l, t], past as i64, device);
        let causal_bias = Tensor::<2>::zeros([l, t], device)
            .mask_fill(causal, MASKED)
            .unsqueeze::<4>();
        let pad_bias = ((full - 1.0) * (-MASKED))
            .unsqueeze_dim::<3>(1)
            .unsqueeze_dim::<4>(1);
        Self {
            bias: pad_bias + causal_bias,
            positions,
        }
    }
}

/// Scaled dot-product attention of `q` (`[B, H, L, hd]`) over the cached keys and values
/// extended by `k`, `v` (`[B, H_kv, L, hd]`); returns `[B, L, H * hd]`.
///
/// Grouped-query attention: the `H / H_kv` query heads that share a key/value head are stacked
/// as the rows of one matrix (query head `j·rep + r` reads key/value head `j`, as Hugging
/// Face's `repeat_kv`), so keys and values are read in place, never copied per query head.
pub(crate) fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    layer: &mut LayerCache,
    ctx: &AttentionContext,
) -> Tensor<3> {
    let [b, h, l, hd] = q.dims();
    let (k, v) = layer.append(k, v);
    let [_, h_kv, t, _] = k.dims();
    let rows = h / h_kv * l;
    let scale = 1.0 / (hd as f64).sqrt();
    if l <= FUSED_ATTENTION_QUERIES
        && let Some(out) = fused_attention(&q, &k, &v, &ctx.bias, scale as f32)
    {
        return out;
    }
    let scores = q.reshape([b, h_kv, rows, hd]).matmul(k.swap_dims(2, 3)) * scale;
    let scores = scores.reshape([b, h, l, t]) + ctx.bias.clone();
    let probs = softmax(scores, 3).reshape([b, h_kv, rows, t]);
    probs
        .matmul(v)
        .reshape([b, h, l, hd])
        .swap_dims(1, 2)
        .reshape([b, l, h * hd])
}

/// Attention for at most this many new positions (decoding steps, short blocks) on the CPU takes
/// [`infalign_kernels::attention`]: one pass per query row over the cached keys and values,
/// where the general path's batched products of one row per head cost more in bookkeeping than
/// in arithmetic. Longer inputs (prefills) keep burn's batched products.
const FUSED_ATTENTION_QUERIES: usize = 16;

/// `softmax(q·kᵀ·scale + bias)·v` as `[B, L, H·hd]` by [`infalign_kernels::attention`] when all
/// four tensors are untracked f32 on the CPU (flex) with non-negative strides; `None` otherwise.
fn fused_attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    bias: &Tensor<4>,
    scale: f32,
) -> Option<Tensor<3>> {
    let [b, h, l, hd] = q.dims();
    let tensors = [q, k, v, bias].map(|t| f32_on_flex(t.clone()));
    let [Some(q), Some(k), Some(v), Some(bias)] = tensors else {
        return None;
    };
    fn view(t: &FlexTensor) -> Option<infalign_kernels::View4<'_>> {
        let layout = t.layout();
        let dims: [usize; 4] = layout.shape().as_slice().try_into().ok()?;
        let strides: Vec<usize> = layout
            .strides()
            .iter()
            .map(|&s| usize::try_from(s).ok())
            .collect::<Option<_>>()?;
        Some(infalign_kernels::View4 {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            dims,
            strides: strides.try_into().ok()?,
        })
    }
    let parts = if b > 1 {
        infalign_core::job_threads()
    } else {
        1
    };
    let out =
        infalign_kernels::attention(view(&q)?, view(&k)?, view(&v)?, view(&bias)?, scale, parts)
            .ok()??;
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(
        TensorData::new(out, [b, l, h * hd]),
    )))
}

/// Products with at most this many rows (decoding steps of up to 256 rows, short prefills) take
/// [`infalign_kernels::matmul`] on the CPU instead of burn-flex's gemm. Measured on a 2-core
/// AVX-512 machine: the kernel sustains about 125 GFLOP/s from 64 to 256 rows where the gemm
/// reaches about 35 (the shipped model's 128-row decode: 1.75 s → 1.27 s), but the gemm's cache
/// blocking wins on a long prefill (GPT-2-small, 2,048 rows: 186 against 157 tokens/s).
const SKINNY_ROWS: usize = 256;

/// Products of at least this many multiply-adds (rows × inputs × outputs) are worth splitting
/// over idle cores (below, waking a helper thread costs more than it saves).
const SPLIT_WORK: usize = 1 << 18;

/// A linear layer, `x · W + b` over the last dimension of `x` (`[B, L, in]` to `[B, L, out]`),
/// the same function as [`Linear::forward`]. A decoding step on the CPU (at most
/// [`SKINNY_ROWS`] rows, nothing tracked by autodiff) runs the skinny-matmul kernel.
pub(crate) fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, l, k] = x.dims();
    if b * l <= SKINNY_ROWS {
        let bias = layer.bias.as_ref().map(|p| p.val());
        if let Some(y) = skinny_matmul(x.clone().reshape([b * l, k]), layer.weight.val(), bias) {
            let n = y.dims()[1];
            return y.reshape([b, l, n]);
        }
    }
    layer.forward(x)
}

/// `x · eᵀ`, `x` `[M, K]`, `e` `[N, K]` (an output head stored like the token embedding). A
/// skinny product on untracked CPU weights runs the kernel over `e`'s rows; elsewhere a skinny
/// product is computed as `(e · xᵀ)ᵀ`, which streams `e` row-major.
pub(crate) fn matmul_head(x: Tensor<2>, e: Tensor<2>) -> Tensor<2> {
    if x.dims()[0] > SKINNY_ROWS || e.is_require_grad() {
        return x.matmul(e.transpose());
    }
    if let Some(y) = skinny_matmul(x.clone(), e.clone().transpose(), None) {
        return y;
    }
    e.matmul(x.transpose()).transpose()
}

/// `x · w (+ bias)` by [`infalign_kernels::matmul`] when all three live on the CPU (flex) as f32,
/// outside autodiff, and `w` lies input-major or output-major in memory; `None` otherwise.
fn skinny_matmul(x: Tensor<2>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Option<Tensor<2>> {
    use infalign_kernels::{Layout, Weight};
    let [rows, k] = x.dims();
    let [kw, n] = w.dims();
    if kw != k {
        return None; // burn's product reports the mismatch
    }
    let w = f32_on_flex(w)?;
    let (offset, layout) = match w.layout().strides() {
        [s0, 1] if *s0 == n as isize => (w.layout().start_offset(), Layout::InputMajor),
        [1, s1] if *s1 == k as isize => (w.layout().start_offset(), Layout::OutputMajor),
        _ => return None,
    };
    let data = w.storage::<f32>().get(offset..offset + k * n)?;
    let bias = match bias {
        Some(b) => Some(f32_on_flex(b)?.to_contiguous()),
        None => None,
    };
    let bias = match &bias {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    let x = f32_on_flex(x)?.to_contiguous();
    let parts = if rows * k * n >= SPLIT_WORK {
        infalign_core::job_threads()
    } else {
        1
    };
    let weight = Weight {
        data,
        inputs: k,
        outputs: n,
        layout,
    };
    let y = infalign_kernels::matmul(x.as_slice::<f32>()?, rows, weight, bias, parts).ok()??;
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(
        TensorData::new(y, [rows, n]),
    )))
}

/// The flex tensor under `t` if `t` is an f32 tensor on the CPU backend outside autodiff.
fn f32_on_flex<const D: usize>(t: Tensor<D>) -> Option<FlexTensor> {
    let t = t.try_into_primitive::<Flex>().ok()?;
    (t.dtype() == DType::F32).then_some(t)
}

/// Splits `[B, L, H * hd]` into heads `[B, H, L, hd]`.
pub(crate) fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, l, d] = x.dims();
    x.reshape([b, l, heads, d / heads]).swap_dims(1, 2)
}

/// Rotary position embedding (Llama's "rotate half" convention).
#[derive(Debug, Clone)]
pub(crate) struct Rotary {
    /// `[1, 1, hd / 2]`: `theta^(-2i / hd)`.
    inv_freq: Tensor<3>,
}

impl Rotary {
    pub fn new(head_dim: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        Self {
            inv_freq: Tensor::<1>::from_floats(inv.as_slice(), device).reshape([1, 1, half]),
        }
    }

    /// `(cos, sin)`, each `[B, 1, L, hd]`, for integer positions `[B, L]`.
    pub fn cos_sin(&self, positions: &Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let freqs = positions.clone().float().unsqueeze_dim::<3>(2) * self.inv_freq.clone();
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        (emb.clone().cos(), emb.sin())
    }

    /// `x * cos + rotate_half(x) * sin` for `x` of shape `[B, H, L, hd]`.
    pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [_, _, _, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn the_head_in_either_orientation_is_the_same_product() {
        // The skinny orientation computes the same sums in another order: equal within f32
        // rounding of values of order 10.
        let device = Device::flex();
        // Deterministic values in [-1, 1].
        let filled = |r: usize, c: usize, phase: f32| -> Tensor<2> {
            let v: Vec<f32> = (0..r * c)
                .map(|i| (i as f32 * 0.37 + phase).sin())
                .collect();
            Tensor::from_data(burn::tensor::TensorData::new(v, [r, c]), &device)
        };
        for rows in [1, 3, 16, 65] {
            let x = filled(rows, 96, 0.1);
            let e = filled(1030, 96, 1.3);
            let d = max_abs_diff(matmul_head(x.clone(), e.clone()), x.matmul(e.transpose()));
            assert!(d < 1e-4, "{rows} rows: {d}");
        }
    }
}
