//! The KV cache: per layer the keys and values of every position seen so far, and the
//! attention mask over those positions.
//!
//! Invariants: all layers hold the same number of positions as the mask; a row's padded
//! positions stay masked for the rest of decoding; [`KvCache::repeat_interleave`] lets N samples
//! of one prompt share its prefill (computed once, then broadcast); [`KvCache::retain`] keeps
//! the same values as [`KvCache::select`] of the same rows, moved in place where it can.

use burn::backend::{Flex, flex::FlexTensor};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

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

    /// Keeps the rows `keep` (strictly increasing) by moving each kept row's filled positions
    /// down within its own buffers, when both are f32 on the CPU, contiguous and owned by this
    /// cache alone: no new buffer, no copy of the spare room or of rows that stay where they are.
    /// Returns whether it did; otherwise nothing changed.
    fn retain_in_place(&mut self, keep: &[usize]) -> bool {
        let Some((k, v)) = self.kv.take() else {
            return false;
        };
        let (mut fk, mut fv) = match (owned_flex_f32(k), owned_flex_f32(v)) {
            (Ok(fk), Ok(fv)) => (fk, fv),
            (k, v) => {
                let back = |t: Result<FlexTensor, Box<Tensor<4>>>| t.map_or_else(|t| *t, from_flex);
                self.kv = Some((back(k), back(v)));
                return false;
            }
        };
        let dims: [usize; 4] = fk
            .layout()
            .shape()
            .as_slice()
            .try_into()
            .unwrap_or_default();
        let [_, h, cap, d] = dims;
        let fits = |t: &FlexTensor| {
            t.layout().shape().as_slice() == dims
                && t.layout().contiguous_offsets() == Some((0, dims.iter().product()))
        };
        // Both buffers writable, or neither is touched: a half-moved pair would be wrong.
        let movable = fits(&fk)
            && fits(&fv)
            && match (fk.try_storage_mut::<f32>(), fv.try_storage_mut::<f32>()) {
                (Some(kd), Some(vd)) => {
                    move_rows_down(kd, keep, h, cap * d, self.len * d);
                    move_rows_down(vd, keep, h, cap * d, self.len * d);
                    true
                }
                _ => false,
            };
        let rows = keep.len();
        let back = |t: FlexTensor| {
            let t = from_flex(t);
            if movable { t.narrow(0, 0, rows) } else { t }
        };
        self.kv = Some((back(fk), back(fv)));
        movable
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

/// `t` as burn-flex's f32 tensor, sharing no buffer with a clone of `t` that this call made (the
/// caller's own clones still count); `t` itself when it is not one.
fn owned_flex_f32(t: Tensor<4>) -> Result<FlexTensor, Box<Tensor<4>>> {
    if t.device() != Device::flex() {
        return Err(Box::new(t));
    }
    match t.clone().try_into_primitive::<Flex>() {
        Ok(f) if f.dtype() == DType::F32 => {
            drop(t);
            Ok(f)
        }
        _ => Err(Box::new(t)),
    }
}

/// `t` as a burn tensor again (the inverse of [`owned_flex_f32`]).
fn from_flex(t: FlexTensor) -> Tensor<4> {
    Tensor::from_primitive::<Flex>(t)
}

/// In `data`, rows of `heads` blocks of `block` values each: moves the first `filled` values of
/// every block of row `keep[i]` to row `i`. `keep` is strictly increasing, so each row moves
/// down (or stays) and no row is overwritten before it has moved.
fn move_rows_down(data: &mut [f32], keep: &[usize], heads: usize, block: usize, filled: usize) {
    let row = heads * block;
    for (to, &from) in keep.iter().enumerate() {
        if from == to {
            continue;
        }
        for head in 0..heads {
            let src = from * row + head * block;
            data.copy_within(src..src + filled, to * row + head * block);
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

    /// Keeps the rows `keep` (strictly increasing, as when finished rows leave a batch),
    /// leaving the same cache as [`KvCache::select`] of them; on the CPU each layer's rows move
    /// down within its own buffers instead of being copied, spare room and all, into new ones.
    /// Returns whether every layer moved its rows in place (`false`: some were copied, because
    /// their buffers are shared with a clone, live on another device or `keep` is empty).
    ///
    /// # Panics
    /// If `keep` is not strictly increasing, or names a row at or past the cache's batch size.
    pub fn retain(&mut self, keep: &[usize], device: &Device) -> bool {
        let rows = self.batch_size();
        assert!(
            keep.windows(2).all(|w| w[0] < w[1])
                && keep.last().is_none_or(|&r| self.mask.is_none() || r < rows),
            "KvCache::retain: rows {keep:?} are not strictly increasing rows below {rows}"
        );
        let mut indices: Option<Tensor<1, Int>> = None;
        let mut indices = || {
            indices
                .get_or_insert_with(|| {
                    let ids: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
                    Tensor::<1, Int>::from_data(TensorData::new(ids, [keep.len()]), device)
                })
                .clone()
        };
        let mut moved = true;
        for layer in &mut self.layers {
            if keep.is_empty() || !layer.retain_in_place(keep) {
                let idx = indices();
                *layer = layer.map(|x| x.select(0, idx.clone()));
                moved = false;
            }
        }
        self.mask = self.mask.take().map(|m| m.select(0, indices()));
        moved
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer cache of `[rows, 2, 4, 2]` (capacity 4, `len` filled) whose every value is its
    /// own index in the buffer, so where a value ends up says where it came from.
    fn indexed(rows: usize, len: usize) -> LayerCache {
        let n = rows * 2 * 4 * 2;
        let t = || {
            let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
            Tensor::<4>::from_data(TensorData::new(values, [rows, 2, 4, 2]), &Device::flex())
        };
        LayerCache {
            kv: Some((t(), t())),
            len,
        }
    }

    #[test]
    fn rows_move_down_in_their_own_buffer() {
        let mut layer = indexed(4, 3);
        assert!(layer.retain_in_place(&[1, 3]));
        let (k, v) = layer.kv.clone().unwrap();
        assert_eq!(k.dims(), [2, 2, 4, 2]);
        let filled = |t: Tensor<4>| -> Vec<f32> {
            t.narrow(2, 0, 3).into_data().try_to_vec::<f32>().unwrap()
        };
        // Row r, head h, position p, dim e sits at ((r * 2 + h) * 4 + p) * 2 + e.
        let want: Vec<f32> = [1usize, 3]
            .iter()
            .flat_map(|&r| {
                (0..2).flat_map(move |h| {
                    (0..3).flat_map(move |p| {
                        (0..2).map(move |e| (((r * 2 + h) * 4 + p) * 2 + e) as f32)
                    })
                })
            })
            .collect();
        assert_eq!(filled(k), want);
        assert_eq!(filled(v), want);
    }

    #[test]
    fn shared_buffers_are_not_moved() {
        let mut layer = indexed(3, 2);
        let keep_alive = layer.kv.clone();
        assert!(!layer.retain_in_place(&[0, 2]));
        assert_eq!(layer.kv.as_ref().unwrap().0.dims(), [3, 2, 4, 2]);
        drop(keep_alive);
    }
}
