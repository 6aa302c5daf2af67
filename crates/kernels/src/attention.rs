//! Scaled dot-product attention for few query positions (a decoding step, a short block):
//! `softmax(q·kᵀ · scale + bias) · v`, computed row by row over the cached keys and values in
//! place, in the strided layout they already have.
//!
//! A general path runs this as two batched matrix products of one row each per head, plus a
//! bias add and a softmax, each allocating its output; with one query row the bookkeeping costs
//! more than the arithmetic. Here each (batch row, head, query) is one pass over its keys, one
//! softmax over a buffer of `T` scores and one pass over its values, and the output is written
//! directly in the `[B, L, H·hd]` layout the next linear layer reads.
//!
//! Invariants (tested in `tests`):
//! - Each output row is one fixed sequence of operations on its own query, keys, values and
//!   bias: it never depends on the other rows of the batch, on the number of parts, or on the
//!   instruction set (both paths compute `[f32; LANES]` arrays with fused multiply-adds).
//! - Grouped-query attention: query head `h` reads key/value head `h / (H / H_kv)`.
//! - Results agree with an `f64` reference within the rounding of `f32` sums.

use crate::simd::Simd;
use crate::{Isa, LANES, ShapeError, lane_sum, run_parts, split};

/// A read-only strided view of a 4-D `f32` array: element `[i, j, k, l]` lies at
/// `offset + i·strides[0] + j·strides[1] + k·strides[2] + l·strides[3]` in `data`.
#[derive(Debug, Clone, Copy)]
pub struct View4<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub dims: [usize; 4],
    pub strides: [usize; 4],
}

impl View4<'_> {
    /// Checks that `dims` equals `want` and that every element lies inside `data`.
    fn check(
        &self,
        what: (&'static str, &'static str),
        want: [usize; 4],
    ) -> Result<(), ShapeError> {
        for (&got, &want) in self.dims.iter().zip(&want) {
            if got != want {
                return Err(ShapeError {
                    what: what.0,
                    got,
                    want,
                });
            }
        }
        if self.dims.contains(&0) {
            return Ok(());
        }
        let last = self
            .dims
            .iter()
            .zip(&self.strides)
            .try_fold(self.offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
            });
        match last {
            Some(last) if last < self.data.len() => Ok(()),
            last => Err(ShapeError {
                what: what.1,
                got: self.data.len(),
                want: last.map_or(usize::MAX, |l| l + 1),
            }),
        }
    }

    /// Position in `data` of element `[i, j, k, 0]`.
    #[inline(always)]
    fn at(&self, i: usize, j: usize, k: usize) -> usize {
        self.offset + i * self.strides[0] + j * self.strides[1] + k * self.strides[2]
    }

    /// The `n` values `[i, j, k, 0..n]`: borrowed when they are contiguous, else copied into
    /// `buffer`.
    #[inline(always)]
    fn row<'b>(&'b self, i: usize, j: usize, k: usize, buffer: &'b mut [f32]) -> &'b [f32] {
        let start = self.at(i, j, k);
        let n = self.dims[3];
        if self.strides[3] == 1 {
            return &self.data[start..start + n];
        }
        for (l, b) in buffer[..n].iter_mut().enumerate() {
            *b = self.data[start + l * self.strides[3]];
        }
        &buffer[..n]
    }
}

/// `softmax(q·kᵀ · scale + bias) · v` for `q` `[B, H, L, hd]`, `k` and `v` `[B, H_kv, T, hd]`
/// (`H` a multiple of `H_kv`) and an additive `bias` `[B, 1, L, T]` or `[B, H, L, T]`. Returns
/// `[B, L, H·hd]`, row-major (the heads of each position side by side). Batch rows are split
/// into `parts` ranges computed at once (see [`crate::matmul`]); `parts` changes the speed,
/// never the result.
///
/// Returns `Ok(None)` when the CPU has no SIMD path here (see [`crate::matmul`]).
pub fn attention(
    q: View4<'_>,
    k: View4<'_>,
    v: View4<'_>,
    bias: View4<'_>,
    scale: f32,
    parts: usize,
) -> Result<Option<Vec<f32>>, ShapeError> {
    let [b, h, l, hd] = q.dims;
    let [_, h_kv, t, _] = k.dims;
    q.check(("a dimension of q", "the length of q's data"), q.dims)?;
    k.check(
        ("a dimension of k", "the length of k's data"),
        [b, h_kv, t, hd],
    )?;
    v.check(
        ("a dimension of v", "the length of v's data"),
        [b, h_kv, t, hd],
    )?;
    let bias_heads = if bias.dims[1] == 1 { 1 } else { h };
    bias.check(
        ("a dimension of bias", "the length of bias's data"),
        [b, bias_heads, l, t],
    )?;
    if h_kv == 0 || h % h_kv != 0 {
        return Err(ShapeError {
            what: "the number of key/value heads (a divisor of the query heads)",
            got: h_kv,
            want: h,
        });
    }
    let Some(isa) = Isa::detect() else {
        return Ok(None);
    };
    let job = AttentionJob {
        q,
        k,
        v,
        bias,
        scale,
    };
    let width = l * h * hd;
    let ranges = split(b, parts.max(1), 1);
    let run = |(start, end): (usize, usize)| {
        let mut y = vec![0.0f32; (end - start) * width];
        isa.attend(&job, start, end, &mut y);
        y
    };
    if ranges.len() <= 1 {
        return Ok(Some(ranges.first().map_or_else(Vec::new, |&r| run(r))));
    }
    Ok(Some(run_parts(&ranges, run).concat()))
}

/// The operands of one [`attention`] call.
pub(crate) struct AttentionJob<'a> {
    q: View4<'a>,
    k: View4<'a>,
    v: View4<'a>,
    bias: View4<'a>,
    scale: f32,
}

/// Keys whose scores are computed together: independent dependency chains for the processor to
/// overlap (each key's score is still the same sequence of operations as alone).
const KEY_GROUP: usize = 4; // `attend_rows` lists the keys of a group one by one

/// Batch rows `start..end` of [`attention`] into `y` (`(end − start) × L × H·hd`); inlined into
/// each `#[target_feature]` wrapper with that instruction set's [`Simd`].
///
/// Per query position: every head's scores ([`dots`], [`KEY_GROUP`] keys at a time) and their
/// softmax weights, then the weighted sums of the values, the running sums in registers over
/// every key: [`weighted_sums_by_key`] for value rows of 16, 32, 64 or 128 contiguous columns
/// (each row read once, in order), else [`weighted_sum`] (head by head, [`LANES`] columns at a
/// time). Each output element is `(Σ_p w_p·v[p][c]) · (1/Σ_p w_p)`, keys in order,
/// one fused multiply-add per key.
#[inline(always)]
pub(crate) fn attend_rows<S: Simd>(
    simd: S,
    job: &AttentionJob<'_>,
    start: usize,
    end: usize,
    y: &mut [f32],
) {
    let [_, h, l, hd] = job.q.dims;
    let [_, h_kv, t, _] = job.k.dims;
    let group = h / h_kv;
    let mut q_buf = vec![0.0f32; hd];
    let mut row_buf = vec![0.0f32; hd];
    // Every head's weights, head-major, and their sums.
    let mut weights = vec![0.0f32; h * t];
    let mut sums = vec![0.0f32; h];
    for b in start..end {
        for i in 0..l {
            for head in 0..h {
                let kv = head / group;
                let q_at = job.q.at(b, head, i);
                for (c, x) in q_buf.iter_mut().enumerate() {
                    *x = job.q.data[q_at + c * job.q.strides[3]];
                }
                let bias_head = if job.bias.dims[1] == 1 { 0 } else { head };
                let bias_at = job.bias.at(b, bias_head, i);
                let bias = |p: usize| job.bias.data[bias_at + p * job.bias.strides[3]];
                let scores = &mut weights[head * t..(head + 1) * t];
                if job.k.strides[3] == 1 {
                    // Key p's values start `p` key strides after key 0's.
                    let (first, step) = (job.k.at(b, kv, 0), job.k.strides[2]);
                    let key = |p: usize| &job.k.data[first + p * step..first + p * step + hd];
                    let mut p = 0;
                    while p + KEY_GROUP <= t {
                        let keys = [key(p), key(p + 1), key(p + 2), key(p + 3)];
                        let dots = dots::<S, KEY_GROUP>(simd, &q_buf, keys);
                        for j in 0..KEY_GROUP {
                            scores[p + j] = dots[j] * job.scale + bias(p + j);
                        }
                        p += KEY_GROUP;
                    }
                    for (p, score) in scores.iter_mut().enumerate().skip(p) {
                        *score = dots::<S, 1>(simd, &q_buf, [key(p)])[0] * job.scale + bias(p);
                    }
                } else {
                    for (p, score) in scores.iter_mut().enumerate() {
                        let key = job.k.row(b, kv, p, &mut row_buf);
                        *score = dots::<S, 1>(simd, &q_buf, [key])[0] * job.scale + bias(p);
                    }
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                sums[head] = sum;
            }
            let out = ((b - start) * l + i) * h * hd;
            let out = &mut y[out..out + h * hd];
            if !weighted_sums_by_key(simd, job, b, &weights, out) {
                for (head, o) in out.chunks_exact_mut(hd).enumerate() {
                    let w = &weights[head * t..(head + 1) * t];
                    weighted_sum(simd, job, (b, head), w, &mut row_buf, o);
                }
            }
            for (o, &sum) in out.chunks_exact_mut(hd).zip(&sums) {
                let inv = 1.0 / sum;
                for x in o {
                    *x *= inv;
                }
            }
        }
    }
}

/// `Σ a[i]·b_j[i]` for each of the `K` vectors `b_j`: per vector, [`LANES`] partial sums with
/// fused multiply-adds, added in a fixed order, then the tail.
#[inline(always)]
fn dots<S: Simd, const K: usize>(simd: S, a: &[f32], b: [&[f32]; K]) -> [f32; K] {
    let full = a.len() / LANES * LANES;
    let mut lanes = [simd.zero(); K];
    for c in (0..full).step_by(LANES) {
        let x = simd.load(&a[c..]);
        for j in 0..K {
            lanes[j] = simd.fma(x, simd.load(&b[j][c..]), lanes[j]);
        }
    }
    let mut sums = [0.0f32; K];
    for j in 0..K {
        let mut sum = lane_sum(&simd.to_array(lanes[j]));
        for c in full..a.len() {
            sum = a[c].mul_add(b[j][c], sum);
        }
        sums[j] = sum;
    }
    sums
}

/// Every head's weighted sum of values for batch row `b` (as [`weighted_sum`]) when each value
/// row is `C·LANES` contiguous columns with `C` one of 1, 2, 4, 8: keys in the outer loop and
/// all the sums of two heads in registers, so that each value row is read once, in order (the
/// cache of a long batch is larger than the processor's caches, and is read at memory speed).
/// Returns false, writing nothing, for other layouts.
#[inline(always)]
fn weighted_sums_by_key<S: Simd>(
    simd: S,
    job: &AttentionJob<'_>,
    b: usize,
    weights: &[f32],
    out: &mut [f32],
) -> bool {
    let hd = job.q.dims[3];
    if job.v.strides[3] != 1 || !hd.is_multiple_of(LANES) {
        return false;
    }
    match hd / LANES {
        1 => by_key_heads::<S, 1>(simd, job, b, weights, out),
        2 => by_key_heads::<S, 2>(simd, job, b, weights, out),
        4 => by_key_heads::<S, 4>(simd, job, b, weights, out),
        8 => by_key_heads::<S, 8>(simd, job, b, weights, out),
        _ => return false,
    }
    true
}

/// [`weighted_sums_by_key`] for `C` vectors per value row: two heads at a time, then the last.
#[inline(always)]
fn by_key_heads<S: Simd, const C: usize>(
    simd: S,
    job: &AttentionJob<'_>,
    b: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    let h = job.q.dims[1];
    let mut head = 0;
    while head + 2 <= h {
        by_key::<S, 2, C>(simd, job, b, head, weights, out);
        head += 2;
    }
    if head < h {
        by_key::<S, 1, C>(simd, job, b, head, weights, out);
    }
}

/// Heads `head0..head0 + G` of [`weighted_sums_by_key`], each output `Σ_p w_p·v[p][c]` in key
/// order, one fused multiply-add per key, as in [`weighted_sum`].
#[inline(always)]
fn by_key<S: Simd, const G: usize, const C: usize>(
    simd: S,
    job: &AttentionJob<'_>,
    b: usize,
    head0: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    let [_, h, _, hd] = job.q.dims;
    let [_, h_kv, t, _] = job.k.dims;
    let first: [usize; G] = std::array::from_fn(|g| job.v.at(b, (head0 + g) / (h / h_kv), 0));
    let step = job.v.strides[2];
    let mut acc = [[simd.zero(); C]; G];
    for p in 0..t {
        for g in 0..G {
            let w = simd.splat(weights[(head0 + g) * t + p]);
            let row = &job.v.data[first[g] + p * step..][..C * LANES];
            for c in 0..C {
                acc[g][c] = simd.fma(w, simd.load(&row[c * LANES..]), acc[g][c]);
            }
        }
    }
    for (g, acc) in acc.iter().enumerate() {
        for (c, &a) in acc.iter().enumerate() {
            let at = (head0 + g) * hd + c * LANES;
            out[at..at + LANES].copy_from_slice(&simd.to_array(a));
        }
    }
}

/// For head `head` of batch row `b`: `out[c] = Σ_p w[p]·v[b, kv, p, c]` (`kv` the head's
/// key/value head), keys in order, one fused multiply-add each; `weights` holds the head's `T`
/// weights and `out` its `hd` outputs. Any layout and width: the columns [`LANES`] at a time
/// with the running sum in a register over all keys, then the tail.
#[inline(always)]
fn weighted_sum<S: Simd>(
    simd: S,
    job: &AttentionJob<'_>,
    (b, head): (usize, usize),
    weights: &[f32],
    buf: &mut [f32],
    out: &mut [f32],
) {
    let [_, h, _, hd] = job.q.dims;
    let kv = head / (h / job.k.dims[1]);
    let full = hd / LANES * LANES;
    for c in (0..full).step_by(LANES) {
        let mut acc = simd.zero();
        for (p, &w) in weights.iter().enumerate() {
            let value = simd.load(&job.v.row(b, kv, p, buf)[c..]);
            acc = simd.fma(simd.splat(w), value, acc);
        }
        out[c..c + LANES].copy_from_slice(&simd.to_array(acc));
    }
    if full < hd {
        out[full..].fill(0.0);
        for (p, &w) in weights.iter().enumerate() {
            let value = job.v.row(b, kv, p, buf);
            for (o, &x) in out[full..].iter_mut().zip(&value[full..]) {
                *o = w.mul_add(x, *o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1].
    fn filled(n: usize, phase: f64) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f64) * 0.731 + phase).sin() as f32)
            .collect()
    }

    fn strided(data: &[f32], dims: [usize; 4], strides: [usize; 4]) -> View4<'_> {
        View4 {
            data,
            offset: 0,
            dims,
            strides,
        }
    }

    fn contiguous(data: &[f32], dims: [usize; 4]) -> View4<'_> {
        let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
        strided(data, dims, strides)
    }

    /// The same attention in `f64`, straight from the definition.
    fn reference(
        q: &View4<'_>,
        k: &View4<'_>,
        v: &View4<'_>,
        bias: &View4<'_>,
        scale: f64,
    ) -> Vec<f64> {
        let [b, h, l, hd] = q.dims;
        let [_, h_kv, t, _] = k.dims;
        let get = |x: &View4<'_>, i, j, r, c| f64::from(x.data[x.at(i, j, r) + c * x.strides[3]]);
        let mut out = vec![0.0; b * l * h * hd];
        for bi in 0..b {
            for i in 0..l {
                for head in 0..h {
                    let kv = head / (h / h_kv);
                    let bh = if bias.dims[1] == 1 { 0 } else { head };
                    let s: Vec<f64> = (0..t)
                        .map(|p| {
                            (0..hd)
                                .map(|c| get(q, bi, head, i, c) * get(k, bi, kv, p, c))
                                .sum::<f64>()
                                * scale
                                + get(bias, bi, bh, i, p)
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..hd {
                        out[(bi * l + i) * h * hd + head * hd + c] =
                            (0..t).map(|p| e[p] * get(v, bi, kv, p, c)).sum::<f64>() / z;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_with_grouped_heads_strides_and_masking() {
        // B = 3, H = 4 query heads over H_kv = 2, L = 2 queries, T = 21 keys, hd = 20 (a
        // multiple of LANES plus a tail). Keys and values sit in a buffer with spare capacity
        // (T of 32 positions filled), as in a KV cache.
        let (b, h, h_kv, l, t, cap, hd) = (3, 4, 2, 2, 21, 32, 20);
        let q = filled(b * h * l * hd, 0.1);
        let kbuf = filled(b * h_kv * cap * hd, 1.7);
        let vbuf = filled(b * h_kv * cap * hd, 2.9);
        let cached = |data| strided(data, [b, h_kv, t, hd], [h_kv * cap * hd, cap * hd, hd, 1]);
        // Query `q` stored as [B, L, H, hd] and viewed as [B, H, L, hd] (a swap of axes).
        let qv = View4 {
            data: &q,
            offset: 0,
            dims: [b, h, l, hd],
            strides: [l * h * hd, hd, h * hd, 1],
        };
        // Row 1 masks its first 5 keys, as a left-padded prompt does.
        let mut bias = vec![0.0f32; b * l * t];
        for i in 0..l {
            for p in 0..5 {
                bias[(l + i) * t + p] = -1e9;
            }
        }
        let bv = contiguous(&bias, [b, 1, l, t]);
        let want = reference(&qv, &cached(&kbuf), &cached(&vbuf), &bv, 0.25);
        for parts in [1, 2, 3] {
            let Some(got) =
                attention(qv, cached(&kbuf), cached(&vbuf), bv, 0.25, parts).expect("shapes")
            else {
                return; // no SIMD path on this CPU: nothing to test
            };
            // Values of order 1, sums of at most 21 terms: f32 rounding stays below 1e-5.
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-5,
                    "{parts} parts: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn every_instruction_set_and_grouping_of_heads_gives_the_same_bits() {
        // Head counts that exercise every grouping (4, 2 and 1 heads at a time), head widths
        // below, at and past LANES, key counts past a multiple of the key group, and keys and
        // values stored transposed (their last axis strided), each against the portable lanes
        // bit for bit and against the definition within f32 rounding.
        let isas: Vec<Isa> = [Isa::choose(None), Isa::choose(Some("avx2"))]
            .into_iter()
            .flatten()
            .collect();
        for (h, h_kv, hd, t, transposed) in [
            (1, 1, 16, 4, false),
            (2, 1, 40, 11, false),
            (3, 3, 16, 7, true),
            (6, 2, 32, 13, false),
            (7, 7, 8, 5, false),
            (7, 7, 20, 9, true),
            (5, 5, 64, 6, false),
            (3, 1, 128, 5, false),
            (2, 2, 64, 6, true),
        ] {
            let (b, l) = (2, 2);
            let q = filled(b * h * l * hd, 0.4);
            let kbuf = filled(b * h_kv * t * hd, 1.1);
            let vbuf = filled(b * h_kv * t * hd, 2.3);
            let strides = if transposed {
                [h_kv * hd * t, hd * t, 1, t]
            } else {
                [h_kv * t * hd, t * hd, hd, 1]
            };
            let kv_view = |data| strided(data, [b, h_kv, t, hd], strides);
            let mut bias = vec![0.0f32; b * l * t];
            bias[t] = -1e9; // row 0, query 1 masks key 0
            let job = AttentionJob {
                q: contiguous(&q, [b, h, l, hd]),
                k: kv_view(&kbuf),
                v: kv_view(&vbuf),
                bias: contiguous(&bias, [b, 1, l, t]),
                scale: 0.3,
            };
            let bits = |y: &[f32]| y.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut portable = vec![0.0f32; b * l * h * hd];
            attend_rows(crate::simd::Portable, &job, 0, b, &mut portable);
            for isa in &isas {
                let mut y = vec![0.0f32; b * l * h * hd];
                isa.attend(&job, 0, b, &mut y);
                assert_eq!(bits(&y), bits(&portable), "{isa:?}, h {h}, hd {hd}");
            }
            let want = reference(&job.q, &job.k, &job.v, &job.bias, 0.3);
            for (g, w) in portable.iter().zip(&want) {
                // Values of order 1, at most 13 terms per sum.
                assert!(
                    (f64::from(*g) - w).abs() < 1e-5,
                    "h {h}, hd {hd}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let (h, l, t, hd) = (2, 1, 9, 16);
        let q = filled(4 * h * l * hd, 0.3);
        let k = filled(4 * h * t * hd, 0.5);
        let v = filled(4 * h * t * hd, 0.9);
        let bias = vec![0.0f32; 4 * l * t];
        let all = attention(
            contiguous(&q, [4, h, l, hd]),
            contiguous(&k, [4, h, t, hd]),
            contiguous(&v, [4, h, t, hd]),
            contiguous(&bias, [4, 1, l, t]),
            0.5,
            2,
        )
        .expect("shapes");
        let Some(all) = all else { return };
        let w = h * l * hd;
        for r in 0..4 {
            let one = |x: &[f32], n: usize| x[r * n..(r + 1) * n].to_vec();
            let (q1, k1, v1) = (one(&q, w), one(&k, h * t * hd), one(&v, h * t * hd));
            let b1 = vec![0.0f32; l * t];
            let alone = attention(
                contiguous(&q1, [1, h, l, hd]),
                contiguous(&k1, [1, h, t, hd]),
                contiguous(&v1, [1, h, t, hd]),
                contiguous(&b1, [1, 1, l, t]),
                0.5,
                1,
            )
            .expect("shapes")
            .expect("same CPU");
            assert_eq!(alone, all[r * w..(r + 1) * w], "row {r}");
        }
    }

    #[test]
    fn a_view_past_its_data_is_an_error() {
        let data = vec![0.0f32; 10];
        let q = contiguous(&data, [1, 1, 1, 10]);
        let short = contiguous(&data, [1, 1, 2, 10]);
        let bias = vec![0.0f32; 2];
        let b = contiguous(&bias, [1, 1, 1, 2]);
        assert!(attention(q, short, short, b, 1.0, 1).is_err());
    }
}
