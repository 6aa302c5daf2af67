//! GPT-2's GELU (`gelu_new`, the tanh approximation) over a slice, with an `exp` computed in
//! [`LANES`]-wide arrays so that it vectorizes, instead of one library call per value.
//!
//! `gelu(x) = ½x(1 + tanh z) = x·σ(2z)`, `z = √(2/π)·(x + 0.044715·x³)`. The exponential:
//! `eᵘ = 2ⁿ·e^r` with `n = round(u·log₂e)` and `r = u − n·ln 2` (`|r| ≤ ln 2 / 2`, `ln 2` split
//! in two parts so that `r` is exact), `e^r` by its Taylor polynomial of degree 7 (remainder
//! below 2⁻²⁴ relative), `2ⁿ` built from its exponent bits; `u` is clamped to `[−87, 88]`, where
//! `σ` is 0 or 1 to f32 precision anyway.
//!
//! Invariants (tested): within a few units in the last place of the `f64` formula; a value's
//! result depends only on the value (not on its position or the slice's length) and is the same
//! on every instruction set.

use crate::{Isa, LANES};

/// Applies GPT-2's GELU to every value of `x` in place; `false` (and `x` untouched) when the CPU
/// has no SIMD path here (see [`crate::matmul`]), for the caller to take its general path.
pub fn gelu_tanh(x: &mut [f32]) -> bool {
    Isa::detect().map(|isa| isa.gelu(x)).is_some()
}

/// [`gelu_tanh`], inlined into each `#[target_feature]` wrapper.
#[inline(always)]
pub(crate) fn gelu_values(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let v: [f32; LANES] = (&*chunk).try_into().expect("a full chunk");
        chunk.copy_from_slice(&gelu_lanes(v));
    }
    // The tail goes through the same lanes, padded, so every value takes one path.
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut v = [0.0f32; LANES];
        v[..tail.len()].copy_from_slice(tail);
        let n = tail.len();
        tail.copy_from_slice(&gelu_lanes(v)[..n]);
    }
}

#[inline(always)]
fn gelu_lanes(x: [f32; LANES]) -> [f32; LANES] {
    const TWO_SQRT_2_OVER_PI: f32 =
        (2.0 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2) as f32;
    let mut u = [0.0f32; LANES];
    for l in 0..LANES {
        u[l] = -(x[l] * x[l] * x[l]).mul_add(0.044715, x[l]) * TWO_SQRT_2_OVER_PI;
    }
    let e = exp_lanes(u);
    let mut y = [0.0f32; LANES];
    for l in 0..LANES {
        y[l] = x[l] / (1.0 + e[l]);
    }
    y
}

/// `eᵘ` lane by lane (see the module documentation). Plain loops over arrays, no calls, so that
/// the compiler keeps them in vector registers.
#[inline(always)]
fn exp_lanes(u: [f32; LANES]) -> [f32; LANES] {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with few enough mantissa bits that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds a value below 2²² to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // Taylor coefficients of e^r from degree 7 down to 0.
    const C: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut out = [0.0f32; LANES];
    for l in 0..LANES {
        let v = u[l].clamp(-87.0, 88.0);
        let n = (v * LOG2_E + ROUND) - ROUND;
        let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, v));
        let mut p = C[0];
        for &c in &C[1..] {
            p = p.mul_add(r, c);
        }
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        out[l] = p * scale;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `½x(1 + tanh z)` in `f64`, written as `x·σ(2z)`: the same function without the
    /// cancellation of `1 + tanh z` for large negative `x`.
    fn reference(x: f64) -> f64 {
        let z = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
        x / (1.0 + (-2.0 * z).exp())
    }

    #[test]
    fn matches_the_tanh_formula_within_a_few_ulps() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.005).collect();
        xs.extend([-100.0, -30.0, -12.0, 12.0, 30.0, 100.0, 0.0, -0.0, 1e-30]);
        let mut y = xs.clone();
        if !gelu_tanh(&mut y) {
            return; // no SIMD path on this CPU: nothing to test
        }
        for (&x, &g) in xs.iter().zip(&y) {
            let x64 = f64::from(x);
            let want = reference(x64);
            // The argument 2z is itself rounded to f32, a relative error of an ulp that the
            // exponential turns into an absolute one of |2z| ulps: a few ulps of the result
            // times (1 + |2z|), plus a floor where σ underflows.
            let two_z = 2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let tol = 4.0 * f64::from(f32::EPSILON) * want.abs() * (1.0 + two_z.abs()) + 1e-30;
            assert!((f64::from(g) - want).abs() <= tol, "{x}: {g} vs {want}");
        }
    }

    #[test]
    fn a_value_does_not_depend_on_its_position() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.61).sin() * 4.0).collect();
        let mut all = xs.clone();
        gelu_tanh(&mut all);
        for (i, &x) in xs.iter().enumerate() {
            let mut one = [x];
            gelu_tanh(&mut one);
            assert_eq!(one[0].to_bits(), all[i].to_bits(), "value {i}");
        }
    }
}
