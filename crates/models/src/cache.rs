//! The KV cache: per layer the keys and values of every position seen so far, and the
//! attention mask over those positions.
//!
//! Invariants: all layers hold the same number of positions as the mask; a row's padded
//! positions stay masked for the rest of decoding; [`KvCache::repeat_interleave`] lets N samples
//! of one prompt share its prefill (computed once, then broadcast).

use burn::tensor::{Int, Tensor};

/// Keys and values of one layer, `[B, H_kv, capacity, hd]` each, of which the first `len`
/// positions are filled. Positions are written in place (a uniquely owned tensor is not copied
/// by `slice_assign`), so a decoding step costs O(new positions), not O(cached positions);
/// the buffer grows by doubling when a step does not fit, or once by [`KvCache::reserve`].
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
    len: usize,
}

impl LayerCache {
    /// Appends the new positions and returns the keys and values of every filled position
    /// (views into the buffer, `[B, H_kv, len, hd]`).
    pub(crate) fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, h, l, d] = k.dims();
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((pk, pv)) => {
                let (pk, pv) = self.grown(pk, pv, l, 2);
                let at = [0..b, 0..h, self.len..self.len + l, 0..d];
                (pk.slice_assign(at.clone(), k), pv.slice_assign(at, v))
            }
        };
        self.len += l;
        self.kv = Some((k.clone(), v.clone()));
        (k.narrow(2, 0, self.len), v.narrow(2, 0, self.len))
    }

    /// The buffers, with room for `extra` more positions: as they are when they have it, else
    /// copied into buffers of at least `growth` times the capacity (2 while decoding, so that
    /// growth costs O(1) per position over a whole decode; 1 for an exact reservation).
    fn grown(
        &self,
        k: Tensor<4>,
        v: Tensor<4>,
        extra: usize,
        growth: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let cap = k.dims()[2];
        let need = self.len + extra;
        if need <= cap {
            return (k, v);
        }
        self.with_capacity(k, v, need.max(growth * cap))
    }

    /// The filled positions of `k` and `v` in buffers of `capacity` positions.
    fn with_capacity(&self, k: Tensor<4>, v: Tensor<4>, capacity: usize) -> (Tensor<4>, Tensor<4>) {
        let [b, h, _, d] = k.dims();
        let pad = capacity - self.len;
        let extend = |x: Tensor<4>| {
            let zeros = Tensor::zeros([b, h, pad, d], &x.device());
            Tensor::cat(vec![x.narrow(2, 0, self.len), zeros], 2)
        };
        (extend(k), extend(v))
    }

    /// Makes room for `extra` more positions in one allocation.
    fn reserve(&mut self, extra: usize) {
        if let Some((k, v)) = self.kv.take() {
            self.kv = Some(self.grown(k, v, extra, 1));
        }
    }

    /// Applies `f` (a reordering or repetition of rows) to the whole buffers, spare room
    /// included, so that decoding after it still writes in place.
    fn map(&self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Self {
            kv: self.kv.as_ref().map(|(k, v)| (f(k.clone()), f(v.clone()))),
            len: self.len,
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

    /// Makes room for `extra` more positions in every layer, so that the next `extra` decoding
    /// steps write in place without growing the buffers.
    pub fn reserve(&mut self, extra: usize) {
        for l in &mut self.layers {
            l.reserve(extra);
        }
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

    /// Repeats every row `n` times (`r0 ×n, r1 ×n, ...`): the N samples of each prompt then
    /// continue from one shared prefill. Spare room is kept.
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

    /// Keeps the rows `indices`, in that order (rows may repeat); spare room is kept.
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
