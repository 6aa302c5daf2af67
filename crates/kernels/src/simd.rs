//! Sixteen `f32` lanes ([`LANES`]) as one AVX-512 register, two AVX2 registers or a plain array,
//! behind one trait, for loops the compiler does not vectorize on its own (it kept the
//! attention's running sums in scalar stack slots).
//!
//! Invariant: every implementation computes the same lane-wise results — [`Simd::fma`] is one
//! fused multiply-add per lane — so a kernel written over [`Simd`] gives the same bits on every
//! instruction set.
//!
//! A value of [`Avx512`] or [`Avx2`] is created only inside the `#[target_feature]` function of
//! that instruction set in `lib.rs`, which runs after the CPU feature was detected: holding one is
//! the proof that its intrinsics may run.

use crate::LANES;

#[cfg(target_arch = "x86")]
use std::arch::x86 as arch;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use std::arch::x86_64 as arch;

/// Lane-wise operations on sixteen `f32`, by an instruction set.
pub(crate) trait Simd: Copy {
    /// Sixteen lanes.
    type V: Copy;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// The first [`LANES`] values of `v` (panics if shorter).
    fn load(self, v: &[f32]) -> Self::V;
    /// `a·b + c` lane by lane, each a fused multiply-add (one rounding).
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The lanes, in order.
    fn to_array(self, v: Self::V) -> [f32; LANES];
}

/// Plain arrays: any target (on x86, only the tests use it, as the reference of the others).
#[cfg_attr(
    all(not(test), any(target_arch = "x86", target_arch = "x86_64")),
    allow(dead_code)
)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

impl Simd for Portable {
    type V = [f32; LANES];
    #[inline(always)]
    fn zero(self) -> Self::V {
        [0.0; LANES]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; LANES]
    }
    #[inline(always)]
    fn load(self, v: &[f32]) -> Self::V {
        v[..LANES].try_into().expect("LANES values")
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
    }
    #[inline(always)]
    fn to_array(self, v: Self::V) -> [f32; LANES] {
        v
    }
}

/// One AVX-512 register.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl Avx512 {
    /// Only for the `#[target_feature(enable = "avx512f,fma")]` entry points, after detection.
    pub(crate) fn detected() -> Self {
        Self(())
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[allow(unsafe_code)]
impl Simd for Avx512 {
    type V = arch::__m512;
    #[inline(always)]
    fn zero(self) -> Self::V {
        // SAFETY (every block of this impl): a value of `Avx512` exists only after AVX-512F and
        // FMA were detected (see the module's documentation); loads and stores touch exactly
        // the `LANES` values of a slice checked to hold them.
        unsafe { arch::_mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        unsafe { arch::_mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, v: &[f32]) -> Self::V {
        let v = &v[..LANES];
        unsafe { arch::_mm512_loadu_ps(v.as_ptr()) }
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        unsafe { arch::_mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn to_array(self, v: Self::V) -> [f32; LANES] {
        // A register's bits are its lanes in order (the intrinsic store was not inlined).
        unsafe { std::mem::transmute::<Self::V, [f32; LANES]>(v) }
    }
}

/// Two AVX2 registers: lanes 0–7 and 8–15.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl Avx2 {
    /// Only for the `#[target_feature(enable = "avx2,fma")]` entry points, after detection.
    pub(crate) fn detected() -> Self {
        Self(())
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[allow(unsafe_code)]
impl Simd for Avx2 {
    type V = [arch::__m256; 2];
    #[inline(always)]
    fn zero(self) -> Self::V {
        // SAFETY (every block of this impl): as for `Avx512`, with AVX2 and FMA.
        unsafe { [arch::_mm256_setzero_ps(); 2] }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        unsafe { [arch::_mm256_set1_ps(x); 2] }
    }
    #[inline(always)]
    fn load(self, v: &[f32]) -> Self::V {
        let v = &v[..LANES];
        unsafe {
            [
                arch::_mm256_loadu_ps(v.as_ptr()),
                arch::_mm256_loadu_ps(v.as_ptr().add(LANES / 2)),
            ]
        }
    }
    #[inline(always)]
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        unsafe {
            [
                arch::_mm256_fmadd_ps(a[0], b[0], c[0]),
                arch::_mm256_fmadd_ps(a[1], b[1], c[1]),
            ]
        }
    }
    #[inline(always)]
    fn to_array(self, v: Self::V) -> [f32; LANES] {
        // Two registers' bits are lanes 0–7, then 8–15.
        unsafe { std::mem::transmute::<Self::V, [f32; LANES]>(v) }
    }
}
