//! The KV cache: per layer the keys and values of every position seen so far, and the
//! attention mask over those positions.
//!
//! Invariants: all layers hold the same number of positions as the mask; a row's padded
//! positions stay masked for the rest of decoding; [`KvCache::repeat_interleave`] lets N samples
//! of one prompt share its prefill (computed once, then broadcast).

use burn::tensor::{Int, Tensor};

/// Keys and values of one layer, `[B, H_kv, T, hd]` each.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Appends the new positions and returns the full keys and values.
    pub(crate) fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }

    fn map(&self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Self {
            kv: self.kv.as_ref().map(|(k, v)| (f(k.clone()), f(v.clone()))),
        }
    }
}

/// The cache of a whole model.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    mask: Option<Tensor<2>>,
}

impl KvCache {
    /// An empty cache for a model with `n_layers` blocks.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); n_layers],
            mask: None,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.mask.as_ref().map_or(0, |m| m.dims()[1])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows in the cached batch (0 when empty).
    pub fn batch_size(&self) -> usize {
        self.mask.as_ref().map_or(0, |m| m.dims()[0])
    }

    /// The attention mask over cached positions, `[B, T]` (1 real, 0 padding).
    pub fn mask(&self) -> Option<&Tensor<2>> {
        self.mask.as_ref()
    }

    /// Appends the mask of new positions and returns the full mask.
    pub(crate) fn push_mask(&mut self, new: Tensor<2>) -> Tensor<2> {
        let full = match self.mask.take() {
            None => new,
            Some(m) => Tensor::cat(vec![m, new], 1),
        };
        self.mask = Some(full.clone());
        full
    }

    /// Repeats every row `n` times, in place (`r0 ×n, r1 ×n, ...`): the N samples of each
    /// prompt then continue from one shared prefill.
    pub fn repeat_interleave(&self, n: usize) -> Self {
        let rep4 = |x: Tensor<4>| {
            let [b, h, t, d] = x.dims();
            x.unsqueeze_dim::<5>(1)
                .expand([b, n, h, t, d])
                .reshape([b * n, h, t, d])
        };
        Self {
            layers: self.layers.iter().map(|l| l.map(rep4)).collect(),
            mask: self.mask.as_ref().map(|m| {
                let [b, t] = m.dims();
                m.clone()
                    .unsqueeze_dim::<3>(1)
                    .expand([b, n, t])
                    .reshape([b * n, t])
            }),
        }
    }

    /// Keeps the rows `indices`, in that order (rows may repeat).
    pub fn select(&self, indices: Tensor<1, Int>) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| l.map(|x| x.select(0, indices.clone())))
                .collect(),
            mask: self
                .mask
                .as_ref()
                .map(|m| m.clone().select(0, indices.clone())),
        }
    }
}
