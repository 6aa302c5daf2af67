//! CPU kernels for skinny matrix products: `y = x · W + b` where `x` has few rows (the tokens of
//! one decoding step) and `W` is a weight matrix read from main memory once per step.
//!
//! A general gemm packs its operands for many rows; with one to a few dozen rows the product is
//! bound by the speed at which `W` streams from memory (batch 1) or by the multiply-add rate
//! (batch 16), and packing is wasted work. These kernels read `W` in place, in its storage order,
//! keep a tile of it in registers while every row of `x` multiplies it, and split the output
//! columns over the cores a caller says are idle.
//!
//! Invariants (tested in `tests`):
//! - **Every output is one fixed sequence of operations**, whatever the number of rows, the row's
//!   position in the batch and the number of parts: with `W` stored input-major, `y[r][j]` is
//!   `b[j]` followed by one fused multiply-add per input in input order; with `W` stored
//!   output-major, sixteen lane sums over the inputs, added in a fixed order, then the inputs past
//!   the last multiple of sixteen, then `b[j]`. So a row's result never depends on the batch it was
//!   decoded in, nor on the machine's core count.
//! - Results agree with a plain `f64` reference within the rounding of `f32` sums of the compared
//!   magnitude.
//!
//! The `unsafe` in this crate calls a function compiled with `#[target_feature]` (AVX-512F, or
//! AVX2 + FMA) after `is_x86_feature_detected!` confirmed the CPU has that feature, and, inside
//! such functions, SIMD intrinsics on slices checked to hold the lanes they touch. On x86 CPUs
//! with neither, [`matmul`] returns `None` and the caller keeps its general path. The
//! environment variable `INFALIGN_SIMD` ([`SIMD_VARIABLE`]) set to `avx2` or `off` narrows the
//! choice, to compare the paths on one machine.

use std::sync::OnceLock;

mod activation;
mod allocator;
mod attention;
mod simd;
pub use activation::gelu_tanh;
pub use allocator::keep_freed_memory;
pub use attention::{View4, attention};

/// Logical SIMD width in `f32` lanes. Code is written over `[f32; LANES]` arrays that the compiler
/// maps onto one AVX-512 register or two AVX2 registers, so the arithmetic (and so the result) is
/// the same on both.
const LANES: usize = 16;
/// Input-major: rows of `W` held in registers per tile.
const TILE_INPUTS: usize = 8;
/// Input-major: `LANES`-wide vectors of output columns per tile.
const TILE_VECTORS: usize = 2;
/// Output columns per input-major tile.
const TILE_COLUMNS: usize = TILE_VECTORS * LANES;
/// Rows of `x` multiplied together against one tile.
const ROW_GROUP: usize = 4;
/// Output-major: outputs (stored rows of `W`) computed together.
const OUTPUT_GROUP: usize = 4;

/// How a weight matrix with `inputs` rows and `outputs` columns (`y = x · W`) lies in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `W[i][j]` at `i * outputs + j` (burn's `Linear`, GPT-2's `Conv1D`).
    InputMajor,
    /// `W[i][j]` at `j * inputs + i`: each output's weights are contiguous (PyTorch's
    /// `nn.Linear`, a tied output head stored as the token embedding).
    OutputMajor,
}

/// A read-only weight matrix for `y = x · W`.
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    pub data: &'a [f32],
    pub inputs: usize,
    pub outputs: usize,
    pub layout: Layout,
}

/// A shape that does not fit the slices it describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel input: {what} is {got} where the shapes need {want}")]
pub struct ShapeError {
    what: &'static str,
    got: usize,
    want: usize,
}

/// `got == a · b`, where a product that overflows `usize` matches no slice.
fn check(what: &'static str, got: usize, a: usize, b: usize) -> Result<(), ShapeError> {
    match a.checked_mul(b) {
        Some(want) if got == want => Ok(()),
        want => Err(ShapeError {
            what,
            got,
            want: want.unwrap_or(usize::MAX),
        }),
    }
}

/// `y = x · W + bias` for `x` of `rows × w.inputs` (row-major), returning `rows × w.outputs`
/// (row-major). The output columns are split into `parts` ranges computed at once, the first on
/// the calling thread and the others on a process-wide pool of `available_parallelism − 1`
/// threads; `parts` changes the speed, never the result.
///
/// Returns `Ok(None)` when the CPU has no SIMD path here (an x86 CPU without AVX2 + FMA): the
/// caller falls back to its general product.
pub fn matmul(
    x: &[f32],
    rows: usize,
    w: Weight<'_>,
    bias: Option<&[f32]>,
    parts: usize,
) -> Result<Option<Vec<f32>>, ShapeError> {
    check("values of x", x.len(), rows, w.inputs)?;
    check("values of W", w.data.len(), w.inputs, w.outputs)?;
    if let Some(b) = bias {
        check("values of bias", b.len(), w.outputs, 1)?;
    }
    Ok(Isa::detect().map(|isa| matmul_on(isa, x, rows, w, bias, parts)))
}

/// [`matmul`] on a given instruction set, shapes checked.
fn matmul_on(
    isa: Isa,
    x: &[f32],
    rows: usize,
    w: Weight<'_>,
    bias: Option<&[f32]>,
    parts: usize,
) -> Vec<f32> {
    let align = match w.layout {
        Layout::InputMajor => TILE_COLUMNS,
        Layout::OutputMajor => OUTPUT_GROUP,
    };
    let ranges = split(w.outputs, parts.max(1), align);
    let run = |(start, end): (usize, usize)| {
        let mut y = vec![0.0f32; rows * (end - start)];
        let job = Job {
            x,
            rows,
            w,
            bias,
            start,
            end,
        };
        isa.run(&job, &mut y);
        y
    };
    if ranges.len() <= 1 {
        // One part, or none when there are no outputs.
        return ranges.first().map_or_else(Vec::new, |&r| run(r));
    }
    let pieces = run_parts(&ranges, run);
    let n = w.outputs;
    let mut y = vec![0.0f32; rows * n];
    for (piece, &(start, end)) in pieces.iter().zip(&ranges) {
        let width = end - start;
        for r in 0..rows {
            y[r * n + start..r * n + end].copy_from_slice(&piece[r * width..(r + 1) * width]);
        }
    }
    y
}

/// `run` over every range at once, the first on the calling thread and the others on the
/// [`pool`] (one after another on the caller if it could not be started); results in range
/// order.
fn run_parts(
    ranges: &[(usize, usize)],
    run: impl Fn((usize, usize)) -> Vec<f32> + Sync,
) -> Vec<Vec<f32>> {
    let mut pieces: Vec<Vec<f32>> = vec![Vec::new(); ranges.len()];
    match (pool(), ranges.split_first()) {
        (Some(pool), Some((&first_range, rest_ranges))) => {
            let (first, rest) = pieces.split_at_mut(1);
            pool.in_place_scope(|s| {
                for (piece, &range) in rest.iter_mut().zip(rest_ranges) {
                    let run = &run;
                    s.spawn(move |_| *piece = run(range));
                }
                first[0] = run(first_range);
            });
        }
        _ => {
            for (piece, &range) in pieces.iter_mut().zip(ranges) {
                *piece = run(range);
            }
        }
    }
    pieces
}

/// Splits `0..n` into at most `parts` contiguous ranges whose boundaries are multiples of
/// `align`, as equal as that allows; never an empty range.
fn split(n: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let blocks = n.div_ceil(align);
    let parts = parts.min(blocks).max(1);
    (0..parts)
        .map(|p| {
            let start = (blocks * p / parts * align).min(n);
            let end = (blocks * (p + 1) / parts * align).min(n);
            (start, end)
        })
        .filter(|(s, e)| e > s)
        .collect()
}

/// The helper threads of [`matmul`]'s parts: one fewer than the machine's cores (the caller is
/// the other), at least one; `None` if the threads could not be started (parts then run one
/// after another on the caller).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores().saturating_sub(1).max(1))
            .thread_name(|i| format!("infalign-kernel-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// The machine's available parallelism.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One part of a product: output columns `start..end`.
struct Job<'a> {
    x: &'a [f32],
    rows: usize,
    w: Weight<'a>,
    bias: Option<&'a [f32]>,
    start: usize,
    end: usize,
}

/// The environment variable that overrides the instruction set, for benchmarks and tests:
/// `avx2` (use AVX2 + FMA even where AVX-512 exists) or `off` (no kernel: [`matmul`] returns
/// `None` and callers take their general path).
pub const SIMD_VARIABLE: &str = "INFALIGN_SIMD";

/// The instruction set a kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx512,
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2,
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    Native,
}

impl Isa {
    /// The best instruction set of this CPU, or the one [`SIMD_VARIABLE`] asks for if the CPU
    /// has it; `None` for `off` or without one. Read once per process.
    fn detect() -> Option<Self> {
        static ISA: OnceLock<Option<Isa>> = OnceLock::new();
        *ISA.get_or_init(|| Self::choose(std::env::var(SIMD_VARIABLE).ok().as_deref()))
    }

    fn choose(asked: Option<&str>) -> Option<Self> {
        if asked == Some("off") {
            return None;
        }
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            let fma = is_x86_feature_detected!("fma");
            if asked != Some("avx2") && is_x86_feature_detected!("avx512f") && fma {
                return Some(Self::Avx512);
            }
            if is_x86_feature_detected!("avx2") && fma {
                return Some(Self::Avx2);
            }
            None
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        {
            // Other targets with SIMD (aarch64 NEON) have a fused multiply-add in their baseline.
            Some(Self::Native)
        }
    }

    #[allow(unsafe_code)]
    fn run(self, job: &Job<'_>, y: &mut [f32]) {
        match self {
            // SAFETY: `detect` returned this variant only after confirming the CPU features the
            // function is compiled for.
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Self::Avx512 => unsafe { run_avx512(job, y) },
            // SAFETY: as above, AVX2 and FMA were detected.
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Self::Avx2 => unsafe { run_avx2(job, y) },
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            Self::Native => run_portable::<false>(job, y),
        }
    }

    #[allow(unsafe_code)]
    fn gelu(self, x: &mut [f32]) {
        match self {
            // SAFETY: as in `run`.
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Self::Avx512 => unsafe { gelu_avx512(x) },
            // SAFETY: as in `run`.
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Self::Avx2 => unsafe { gelu_avx2(x) },
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            Self::Native => activation::gelu_values(x),
        }
    }

    #[allow(unsafe_code)]
    fn attend(self, job: &attention::AttentionJob<'_>, start: usize, end: usize, y: &mut [f32]) {
        match self {
            // SAFETY: as in `run`.
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Self::Avx512 => unsafe { attend_avx512(job, start, end, y) },
            // SAFETY: as in `run`.
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Self::Avx2 => unsafe { attend_avx2(job, start, end, y) },
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            Self::Native => attention::attend_rows(simd::Portable, job, start, end, y),
        }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,fma")]
fn gelu_avx512(x: &mut [f32]) {
    activation::gelu_values(x)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn gelu_avx2(x: &mut [f32]) {
    activation::gelu_values(x)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,fma")]
fn attend_avx512(job: &attention::AttentionJob<'_>, start: usize, end: usize, y: &mut [f32]) {
    attention::attend_rows(simd::Avx512::detected(), job, start, end, y)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(job: &attention::AttentionJob<'_>, start: usize, end: usize, y: &mut [f32]) {
    attention::attend_rows(simd::Avx2::detected(), job, start, end, y)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,fma")]
fn run_avx512(job: &Job<'_>, y: &mut [f32]) {
    run_portable::<true>(job, y)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn run_avx2(job: &Job<'_>, y: &mut [f32]) {
    run_portable::<false>(job, y)
}

/// The kernels, written once; inlined into each `#[target_feature]` wrapper so that the compiler
/// vectorizes them for that instruction set.
#[inline(always)]
fn run_portable<const AVX512: bool>(job: &Job<'_>, y: &mut [f32]) {
    match job.w.layout {
        Layout::InputMajor => input_major(job, y),
        Layout::OutputMajor => output_major::<AVX512>(job, y),
    }
}

/// `y[r][j] = b[j] + Σ_i x[r][i]·W[i][j]` with `W` input-major, for `j` in `start..end`; `y` is
/// `rows × (end − start)`.
///
/// Loop order: blocks of [`TILE_INPUTS`] rows of `W` (that many memory streams, each read once,
/// in order), then tiles of [`TILE_COLUMNS`] columns held in registers, then every row of `x`.
/// Columns past the last full tile take the scalar path, which performs the same fused
/// multiply-adds in the same order.
#[inline(always)]
fn input_major(job: &Job<'_>, y: &mut [f32]) {
    let &Job { x, rows, w, .. } = job;
    let (start, end) = (job.start, job.end);
    let (k, n, width) = (w.inputs, w.outputs, end - start);
    for r in 0..rows {
        let yr = &mut y[r * width..(r + 1) * width];
        match job.bias {
            Some(b) => yr.copy_from_slice(&b[start..end]),
            None => yr.fill(0.0),
        }
    }
    let full = width / TILE_COLUMNS * TILE_COLUMNS;
    let mut i0 = 0;
    while i0 + TILE_INPUTS <= k {
        for c in (0..full).step_by(TILE_COLUMNS) {
            input_major_tile::<TILE_INPUTS>(x, rows, k, i0, w.data, n, start + c, y, width, c);
        }
        i0 += TILE_INPUTS;
    }
    while i0 < k {
        for c in (0..full).step_by(TILE_COLUMNS) {
            input_major_tile::<1>(x, rows, k, i0, w.data, n, start + c, y, width, c);
        }
        i0 += 1;
    }
    for c in full..width {
        let j = start + c;
        for r in 0..rows {
            let mut acc = y[r * width + c];
            for i in 0..k {
                acc = x[r * k + i].mul_add(w.data[i * n + j], acc);
            }
            y[r * width + c] = acc;
        }
    }
}

/// Rows `i0..i0 + KB` of `W`, columns `j..j + TILE_COLUMNS`, into every row of `y` (whose
/// columns start at `c`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_major_tile<const KB: usize>(
    x: &[f32],
    rows: usize,
    k: usize,
    i0: usize,
    w: &[f32],
    n: usize,
    j: usize,
    y: &mut [f32],
    width: usize,
    c: usize,
) {
    let mut tile = [[[0.0f32; LANES]; TILE_VECTORS]; KB];
    for (i, t) in tile.iter_mut().enumerate() {
        let row = &w[(i0 + i) * n + j..][..TILE_COLUMNS];
        for (v, tv) in t.iter_mut().enumerate() {
            tv.copy_from_slice(&row[v * LANES..(v + 1) * LANES]);
        }
        prefetch(w, (i0 + KB + i) * n + j);
        prefetch(w, (i0 + KB + i) * n + j + LANES);
    }
    let mut r = 0;
    while r + ROW_GROUP <= rows {
        input_major_rows::<KB, ROW_GROUP>(x, k, i0, &tile, y, width, c, r);
        r += ROW_GROUP;
    }
    while r < rows {
        input_major_rows::<KB, 1>(x, k, i0, &tile, y, width, c, r);
        r += 1;
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_major_rows<const KB: usize, const R: usize>(
    x: &[f32],
    k: usize,
    i0: usize,
    tile: &[[[f32; LANES]; TILE_VECTORS]; KB],
    y: &mut [f32],
    width: usize,
    c: usize,
    r0: usize,
) {
    let mut acc = [[[0.0f32; LANES]; TILE_VECTORS]; R];
    let mut xs = [[0.0f32; KB]; R];
    for q in 0..R {
        xs[q].copy_from_slice(&x[(r0 + q) * k + i0..][..KB]);
        let yr = &y[(r0 + q) * width + c..][..TILE_COLUMNS];
        for (v, a) in acc[q].iter_mut().enumerate() {
            a.copy_from_slice(&yr[v * LANES..(v + 1) * LANES]);
        }
    }
    for i in 0..KB {
        for q in 0..R {
            let xv = xs[q][i];
            for v in 0..TILE_VECTORS {
                for l in 0..LANES {
                    acc[q][v][l] = xv.mul_add(tile[i][v][l], acc[q][v][l]);
                }
            }
        }
    }
    for q in 0..R {
        let yr = &mut y[(r0 + q) * width + c..][..TILE_COLUMNS];
        for (v, a) in acc[q].iter().enumerate() {
            yr[v * LANES..(v + 1) * LANES].copy_from_slice(a);
        }
    }
}

/// `y[r][j] = Σ_i x[r][i]·W[i][j] + b[j]` with `W` output-major (each output's weights
/// contiguous), for `j` in `start..end`, each dot product in `LANES` lane sums.
///
/// Up to [`ROW_GROUP`] rows (a decoding step of a few sequences), one output at a time against
/// every row: `W` is then read as one sequential stream, which the hardware prefetcher follows
/// far better than the [`OUTPUT_GROUP`] streams of a group of outputs, each only one row of `W`
/// long (measured on a tied GPT-2-small head at batch 1: 15 → 28 GB/s on one core, 26 → 36 GB/s
/// on two). More rows are bound by multiply-adds instead, and take groups of [`OUTPUT_GROUP`]
/// outputs (that many memory streams) against groups of [`ROW_GROUP`] rows, which load each
/// piece of `x` once for several outputs. Both compute every output the same way.
#[inline(always)]
fn output_major<const AVX512: bool>(job: &Job<'_>, y: &mut [f32]) {
    let &Job { x, rows, w, .. } = job;
    let (start, end) = (job.start, job.end);
    let (k, width) = (w.inputs, end - start);
    if rows <= ROW_GROUP {
        for j in start..end {
            match rows {
                0 => {}
                1 => block::<AVX512, 1, 1>(x, k, w.data, j, 0, y, width, start),
                2 => block::<AVX512, 1, 2>(x, k, w.data, j, 0, y, width, start),
                3 => block::<AVX512, 1, 3>(x, k, w.data, j, 0, y, width, start),
                _ => block::<AVX512, 1, ROW_GROUP>(x, k, w.data, j, 0, y, width, start),
            }
        }
    } else {
        output_major_groups::<AVX512>(x, rows, k, w.data, start, end, y, width);
    }
    if let Some(b) = job.bias {
        for r in 0..rows {
            for (yv, bv) in y[r * width..(r + 1) * width].iter_mut().zip(&b[start..end]) {
                *yv += bv;
            }
        }
    }
}

/// [`output_major`] for more than [`ROW_GROUP`] rows: groups of [`OUTPUT_GROUP`] outputs against
/// groups of [`ROW_GROUP`] rows, the remainders one by one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_major_groups<const AVX512: bool>(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    start: usize,
    end: usize,
    y: &mut [f32],
    width: usize,
) {
    let mut j = start;
    while j < end {
        let group = OUTPUT_GROUP.min(end - j);
        let mut r = 0;
        while r < rows {
            let take = ROW_GROUP.min(rows - r);
            match (group, take) {
                (OUTPUT_GROUP, ROW_GROUP) => {
                    block::<AVX512, OUTPUT_GROUP, ROW_GROUP>(x, k, w, j, r, y, width, start)
                }
                (OUTPUT_GROUP, _) => {
                    for q in 0..take {
                        block::<AVX512, OUTPUT_GROUP, 1>(x, k, w, j, r + q, y, width, start)
                    }
                }
                _ => {
                    for o in 0..group {
                        for q in 0..take {
                            output_major_block::<1, 1>(x, k, w, j + o, r + q, y, width, start)
                        }
                    }
                }
            }
            r += take;
        }
        j += group;
    }
}

/// One output-major block, by the AVX-512 kernel when the caller runs compiled for it.
#[allow(clippy::too_many_arguments, unsafe_code)]
#[inline(always)]
fn block<const AVX512: bool, const G: usize, const R: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    j0: usize,
    r0: usize,
    y: &mut [f32],
    width: usize,
    start: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: `AVX512` is true only inside `run_avx512`, which runs after AVX-512F and FMA
        // were detected.
        return unsafe { output_major_block_avx512::<G, R>(x, k, w, j0, r0, y, width, start) };
    }
    output_major_block::<G, R>(x, k, w, j0, r0, y, width, start)
}

/// [`output_major_block`] with AVX-512 intrinsics: the same fused multiply-adds lane by lane and
/// the same final sums, so the same results; written out because the compiler's vectorization
/// of the array form kept the accumulators in 128-bit halves on the stack (measured: the head of
/// a batch-1 decoding step at half the memory bandwidth of the input-major kernel).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop, unsafe_code)]
#[target_feature(enable = "avx512f,fma")]
fn output_major_block_avx512<const G: usize, const R: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    j0: usize,
    r0: usize,
    y: &mut [f32],
    width: usize,
    start: usize,
) {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    let full = k / LANES * LANES;
    // Every load below reads `LANES` values at an offset below `full` within these rows.
    let fits = |rows: usize, len: usize| rows.checked_mul(k).is_some_and(|n| n <= len);
    assert!(fits(r0 + R, x.len()) && fits(j0 + G, w.len()));
    let mut acc: [[__m512; G]; R] = [[_mm512_setzero_ps(); G]; R];
    let mut i = 0;
    while i < full {
        // SAFETY: `(r0 + q) * k + i + LANES <= (r0 + R) * k <= x.len()` (asserted above).
        let xs: [__m512; R] =
            std::array::from_fn(|q| unsafe { _mm512_loadu_ps(x.as_ptr().add((r0 + q) * k + i)) });
        for g in 0..G {
            // SAFETY: `(j0 + g) * k + i + LANES <= (j0 + G) * k <= w.len()`.
            let wv = unsafe { _mm512_loadu_ps(w.as_ptr().add((j0 + g) * k + i)) };
            for q in 0..R {
                acc[q][g] = _mm512_fmadd_ps(xs[q], wv, acc[q][g]);
            }
        }
        i += LANES;
    }
    for q in 0..R {
        for g in 0..G {
            let mut lanes = [0.0f32; LANES];
            // SAFETY: `lanes` holds exactly `LANES` f32.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[q][g]) };
            let mut s = lane_sum(&lanes);
            let wr = &w[(j0 + g) * k..(j0 + g + 1) * k];
            let xr = &x[(r0 + q) * k..(r0 + q + 1) * k];
            for i in full..k {
                s = xr[i].mul_add(wr[i], s);
            }
            y[(r0 + q) * width + (j0 + g - start)] = s;
        }
    }
}

/// Outputs `j0..j0 + G` for rows `r0..r0 + R`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_major_block<const G: usize, const R: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    j0: usize,
    r0: usize,
    y: &mut [f32],
    width: usize,
    start: usize,
) {
    let full = k / LANES * LANES;
    let mut acc = [[[0.0f32; LANES]; G]; R];
    for i in (0..full).step_by(LANES) {
        // (The two loop orders compute the same products; each is the one the compiler turns
        // into the fewest loads for its row count.)
        if R == 1 {
            for g in 0..G {
                let wv = lanes(&w[(j0 + g) * k + i..]);
                acc[0][g] = fma(lanes(&x[r0 * k + i..]), wv, acc[0][g]);
            }
        } else {
            let xs: [[f32; LANES]; R] = std::array::from_fn(|q| lanes(&x[(r0 + q) * k + i..]));
            for g in 0..G {
                let wv = lanes(&w[(j0 + g) * k + i..]);
                for q in 0..R {
                    acc[q][g] = fma(xs[q], wv, acc[q][g]);
                }
            }
        }
    }
    for q in 0..R {
        for g in 0..G {
            let mut s = lane_sum(&acc[q][g]);
            let wr = &w[(j0 + g) * k..(j0 + g + 1) * k];
            let xr = &x[(r0 + q) * k..(r0 + q + 1) * k];
            for i in full..k {
                s = xr[i].mul_add(wr[i], s);
            }
            y[(r0 + q) * width + (j0 + g - start)] = s;
        }
    }
}

/// Asks the CPU to start loading the cache line holding `w[at]` (the same tile of the next
/// block of weight rows); nothing when `at` is past the end.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch(w: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < w.len() {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch reads nothing architecturally and `at` is inside `w`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(at).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, at);
}

/// The first `LANES` values of `v`.
#[inline(always)]
fn lanes(v: &[f32]) -> [f32; LANES] {
    let mut out = [0.0; LANES];
    out.copy_from_slice(&v[..LANES]);
    out
}

/// `a·b + c` lane by lane, each a fused multiply-add.
#[inline(always)]
fn fma(a: [f32; LANES], b: [f32; LANES], c: [f32; LANES]) -> [f32; LANES] {
    std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
}

/// The sum of sixteen lanes in one fixed order (halving pairwise).
#[inline(always)]
fn lane_sum(v: &[f32; LANES]) -> f32 {
    let mut h = [0.0f32; 8];
    for l in 0..8 {
        h[l] = v[l] + v[l + 8];
    }
    let q = [h[0] + h[4], h[1] + h[5], h[2] + h[6], h[3] + h[7]];
    let p = [q[0] + q[2], q[1] + q[3]];
    p[0] + p[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set this CPU runs: each kernel is tested, not only the one chosen.
    fn isas() -> Vec<Isa> {
        let mut all: Vec<Isa> = [Isa::choose(None), Isa::choose(Some("avx2"))]
            .into_iter()
            .flatten()
            .collect();
        all.dedup();
        all
    }

    /// A deterministic pseudo-random matrix in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn transpose(w: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
        let mut t = vec![0.0; w.len()];
        for i in 0..inputs {
            for j in 0..outputs {
                t[j * inputs + i] = w[i * outputs + j];
            }
        }
        t
    }

    /// `x · W + b` in f64, with `W` input-major; also the sum of absolute terms per output, the
    /// magnitude that bounds f32 rounding.
    fn reference(
        x: &[f32],
        rows: usize,
        w: &[f32],
        k: usize,
        n: usize,
        b: Option<&[f32]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; rows * n];
        let mut mag = vec![0.0; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut s = b.map_or(0.0, |b| b[j] as f64);
                let mut m = s.abs();
                for i in 0..k {
                    let t = x[r * k + i] as f64 * w[i * n + j] as f64;
                    s += t;
                    m += t.abs();
                }
                y[r * n + j] = s;
                mag[r * n + j] = m;
            }
        }
        (y, mag)
    }

    /// Shapes that exercise every tile and every tail: inputs not a multiple of 8 or 16, outputs
    /// not a multiple of 32 or 4, row counts not a multiple of 4.
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 64, 96),
        (3, 37, 70),
        (4, 8, 32),
        (5, 200, 33),
        (16, 48, 130),
        (7, 1, 5),
        (9, 129, 67),
    ];

    #[test]
    fn both_layouts_match_an_f64_reference_within_f32_rounding() {
        for (s, &(rows, k, n)) in SHAPES.iter().enumerate() {
            let x = values(rows * k, 3 * s as u64 + 1);
            let w = values(k * n, 3 * s as u64 + 2);
            let b = values(n, 3 * s as u64 + 3);
            let wt = transpose(&w, k, n);
            for bias in [None, Some(b.as_slice())] {
                let (want, mag) = reference(&x, rows, &w, k, n, bias);
                for (isa, (data, layout)) in isas().into_iter().flat_map(|isa| {
                    [(&w, Layout::InputMajor), (&wt, Layout::OutputMajor)].map(|d| (isa, d))
                }) {
                    let weight = Weight {
                        data,
                        inputs: k,
                        outputs: n,
                        layout,
                    };
                    let got = matmul_on(isa, &x, rows, weight, bias, 1);
                    for e in 0..rows * n {
                        // Each of the k + 1 additions rounds by at most half an ulp of the
                        // running magnitude: (k + 1)·2⁻²⁴·Σ|terms| bounds the error.
                        let bound = (k + 1) as f64 * f32::EPSILON as f64 * mag[e];
                        let err = (got[e] as f64 - want[e]).abs();
                        assert!(
                            err <= bound,
                            "{isa:?} {layout:?} rows {rows} k {k} n {n}, out {e}: {} vs {} (bound {bound})",
                            got[e],
                            want[e]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_is_bitwise_the_same_alone_in_any_batch_and_any_number_of_parts() {
        for &(rows, k, n) in &SHAPES {
            let x = values(rows * k, 11);
            let w = values(k * n, 12);
            let b = values(n, 13);
            let wt = transpose(&w, k, n);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for (data, layout) in [(&w, Layout::InputMajor), (&wt, Layout::OutputMajor)] {
                let weight = Weight {
                    data,
                    inputs: k,
                    outputs: n,
                    layout,
                };
                let isas = isas();
                let Some(&first) = isas.first() else {
                    return; // no SIMD path on this CPU: nothing to test
                };
                let batched = matmul_on(first, &x, rows, weight, Some(&b), 1);
                // The instruction sets compute the same operations: equal to the last bit.
                for &isa in &isas[1..] {
                    let other = matmul_on(isa, &x, rows, weight, Some(&b), 1);
                    assert_eq!(
                        bits(&other),
                        bits(&batched),
                        "{isa:?} vs {first:?} {layout:?}"
                    );
                }
                for parts in [2, 3, 8] {
                    let split = matmul_on(first, &x, rows, weight, Some(&b), parts);
                    assert_eq!(bits(&split), bits(&batched), "{layout:?} {parts} parts");
                }
                for r in 0..rows {
                    let alone = matmul_on(first, &x[r * k..(r + 1) * k], 1, weight, Some(&b), 1);
                    assert_eq!(
                        bits(&alone),
                        bits(&batched[r * n..(r + 1) * n]),
                        "{layout:?} rows {rows} k {k} n {n}: row {r} alone differs"
                    );
                }
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_the_operand() {
        let w = vec![0.0; 12];
        let weight = Weight {
            data: &w,
            inputs: 3,
            outputs: 4,
            layout: Layout::InputMajor,
        };
        let e = matmul(&[0.0; 5], 2, weight, None, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel input: values of x is 5 where the shapes need 6"
        );
        let e = matmul(&[0.0; 3], 1, weight, Some(&[0.0; 3]), 1).unwrap_err();
        assert!(e.to_string().contains("values of bias is 3"), "{e}");
        // Shapes whose products overflow describe no slice: an error, never a read.
        let huge = Weight {
            data: &[],
            inputs: 1 << 62,
            outputs: 4,
            layout: Layout::OutputMajor,
        };
        assert!(matmul(&[], 4, huge, None, 1).is_err());
        // No outputs: an empty result, whatever the parts.
        let none = Weight {
            data: &[],
            inputs: 3,
            outputs: 0,
            layout: Layout::InputMajor,
        };
        for parts in [1, 2] {
            assert_eq!(
                matmul(&[0.0; 6], 2, none, None, parts).unwrap(),
                Some(vec![]).filter(|_| Isa::detect().is_some())
            );
        }
    }

    #[test]
    fn split_covers_the_range_with_aligned_nonempty_parts() {
        assert!(split(0, 2, 32).is_empty());
        for n in [1, 31, 32, 33, 100, 2304] {
            for parts in [1, 2, 3, 7] {
                let r = split(n, parts, 32);
                assert_eq!(r.first().unwrap().0, 0);
                assert_eq!(r.last().unwrap().1, n);
                for w in r.windows(2) {
                    assert_eq!(w[0].1, w[1].0);
                    assert_eq!(w[0].1 % 32, 0);
                }
                assert!(r.iter().all(|(s, e)| e > s) && r.len() <= parts);
            }
        }
    }
}
