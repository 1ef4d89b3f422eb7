//! A weight matrix as the CPU kernels read it (`MatRef`: stored bytes, dtype, shape and
//! FP8 `WeightScale`), and what the kernels of every weight type share for prefill: rows per
//! parallel task (`block_rows`) and the 4×4 f32 micro-kernel over a widened tile of rows
//! (`tile_times_x`). `matmul` dispatches on the dtype to `fp8_matmul`, `quant` or its own
//! loops; each of those reads its matrix through this file, never through `matmul`.

use crate::backend::dtype::DType;

use super::simd;

/// The dequantization factor of a weight matrix (`weight_scale` in a checkpoint).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightScale<'a> {
    /// The stored values are the weights (every dtype but FP8).
    None,
    /// One factor for the whole matrix (modelopt `quant_algo: FP8`, compressed-tensors
    /// `strategy: tensor`).
    Tensor(f32),
    /// One factor per row, i.e. per output channel (modelopt `FP8_PER_CHANNEL_PER_TOKEN`,
    /// compressed-tensors `strategy: channel`).
    Rows(&'a [f32]),
}

impl<'a> WeightScale<'a> {
    pub fn row(&self, r: usize) -> f32 {
        match self {
            WeightScale::None => 1.0,
            WeightScale::Tensor(s) => *s,
            WeightScale::Rows(s) => s[r],
        }
    }

    /// The scale of rows `start..start+count` (for `MatRef::slice_rows`).
    pub fn slice_rows(&self, start: usize, count: usize) -> WeightScale<'a> {
        match self {
            WeightScale::Rows(s) => WeightScale::Rows(&s[start..start + count]),
            other => *other,
        }
    }
}

/// A borrowed weight matrix in its stored dtype.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    /// FP8 weights' dequantization factor (`weight_scale`); `None` for other dtypes.
    pub scale: WeightScale<'a>,
    /// Q4_0, Q4_1 or Q4_K rows interleaved 16 at a time for decode (`interleave`), when the
    /// loader made them; `data` stays the reference and what every other kernel reads.
    pub interleaved: Option<&'a [u8]>,
}

impl<'a> MatRef<'a> {
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }

    pub(super) fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `start..start+count` as a smaller matrix (for split projections).
    pub fn slice_rows(&self, start: usize, count: usize) -> MatRef<'a> {
        let rb = self.row_bytes();
        MatRef {
            dtype: self.dtype,
            data: &self.data[start * rb..(start + count) * rb],
            rows: count,
            cols: self.cols,
            scale: self.scale.slice_rows(start, count),
            // The split reads its stored rows.
            interleaved: None,
        }
    }
}

#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: tasks write disjoint row ranges of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Rows per parallel task: small enough to balance two to a few dozen threads, large
/// enough that the scheduling cost (~µs) stays below the work: at least 64 KiB of weights
/// per task (small models' decode was spending a quarter of its time in the scheduler).
pub(super) fn block_rows(rows: usize, row_bytes: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let b = rows
        .div_ceil(threads * 8)
        .max((64 << 10) / row_bytes.max(1));
    b.clamp(16, 256).div_ceil(4) * 4
}

thread_local! {
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's tile buffer of `len` f32s, reused from call to call: a fresh
/// `vec![0f32; len]` of a prefill tile (up to ~1 MiB) was mapped, zeroed and unmapped by the
/// kernel on every call, ~5% of an F16 prefill. `f` must write what it reads (the contents
/// are whatever the last call left).
pub(super) fn with_tile<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    TILE.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() < len {
            t.resize(len, 0.0);
        }
        f(&mut t[..len])
    })
}

/// Tokens per pass of a prefill kernel over a block of widened rows (a multiple of `step`,
/// the kernel's tokens per call, from `step` to 256): their f32 x rows (at most 256 KiB)
/// stay in L2 while every row group of the block runs over them; one pass over all tokens
/// streamed x from L3 once per group (1.4x slower at k = 1024 and 3584, n = 200).
pub(super) fn token_pass(k: usize, step: usize) -> usize {
    ((256 << 10) / (4 * k).max(1)).clamp(step, 256) / step * step
}

/// The 4×4 micro-kernel over an f32 tile of weight rows `r0..r0 + tile.len() / k`:
/// `out[t][r0 + i] = tile[i] · x[t]` for every token t < n (k = `x.len() / n`).
///
/// # Safety
/// `out` is an `[n, m]` buffer whose columns `r0..r0 + rows of the tile` no other thread
/// touches during the call, with `r0 + rows ≤ m`.
pub(super) unsafe fn tile_times_x(
    tile: &[f32],
    x: &[f32],
    n: usize,
    m: usize,
    r0: usize,
    out: *mut f32,
) {
    let k = x.len() / n;
    let nr = tile.len() / k;
    let xr = |t: usize| &x[t * k..(t + 1) * k];
    let row = |i: usize| &tile[i * k..(i + 1) * k];
    row_groups(n, nr, token_pass(k, 4), row, |rows, t0, t1, i| {
        // The row group over the pass's tokens, a kernel's worth at a time; at 4 per call
        // the last token repeats to fill a call and its extra results are dropped.
        let tokens = |t: usize| xr(t.min(t1 - 1));
        let put = |t: usize, a: usize, v: f32| {
            // SAFETY (caller): t < n and r0+i+a < r0+nr ≤ m, a column of ours.
            unsafe { *out.add(t * m + r0 + i + a) = v };
        };
        if simd::tile_tokens() == 3 {
            // Whole calls of three, then the one or two left with their own kernel.
            let t2 = t1 - (t1 - t0) % 3;
            tokens_of::<_, 4, 3, _>(rows, t0, t2, nr - i, &tokens, simd::dot4x3, &put);
            match t1 - t2 {
                1 => tokens_of::<_, 4, 1, _>(rows, t2, t1, nr - i, &tokens, simd::dot4xt, &put),
                2 => tokens_of::<_, 4, 2, _>(rows, t2, t1, nr - i, &tokens, simd::dot4xt, &put),
                _ => {}
            }
        } else {
            tokens_of::<_, 4, 4, _>(rows, t0, t1, nr - i, &tokens, simd::dot4x4, put);
        }
    });
}

/// The loops the prefill drivers over a block of rows share: for every pass of `tb` tokens
/// (their x rows stay in L2, `token_pass`) and every group of 4 of the block's `nr` rows
/// (the last group repeating its last row; the callers drop those results),
/// `group(rows, t0, t1, i)` for tokens `t0..t1` and rows `i..i + 4`.
#[inline(always)]
fn row_groups<Row: Copy>(
    n: usize,
    nr: usize,
    tb: usize,
    row: impl Fn(usize) -> Row,
    mut group: impl FnMut([Row; 4], usize, usize, usize),
) {
    let mut t0 = 0;
    while t0 < n {
        let t1 = (t0 + tb).min(n);
        let mut i = 0;
        while i < nr {
            group(std::array::from_fn(|a| row((i + a).min(nr - 1))), t0, t1, i);
            i += 4;
        }
        t0 = t1;
    }
}

/// F16 or BF16 rows (`BF`) read where they are stored (`rows`: `2·k` bytes each) times every
/// token of x at the AVX-512 level: `out[t][r0 + i] = row i · x[t]`, bit for bit the tile's
/// sums there (`tile_times_x` over the widened rows, `dot4x4`), without widening the block
/// first. Four rows × six tokens per call (24 zmm accumulators), the pass's last 1–5 tokens
/// in a call of their size.
///
/// # Safety
/// AVX-512F, AVX2, FMA and F16C are there; `out` as for `tile_times_x`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn half_rows_times_x<const BF: bool>(
    rows: &[u8],
    x: &[f32],
    n: usize,
    m: usize,
    r0: usize,
    out: *mut f32,
) {
    use simd::x86::dot_half4xt_avx512 as dot;
    let k = x.len() / n;
    let rb = 2 * k;
    let nr = rows.len() / rb;
    let xr = |t: usize| &x[t * k..(t + 1) * k];
    let row = |i: usize| &rows[i * rb..(i + 1) * rb];
    row_groups(n, nr, token_pass(k, 6), row, |rs, t0, t1, i| {
        let put = |t: usize, a: usize, v: f32| {
            // SAFETY (caller): t < n and r0+i+a < r0+nr ≤ m, a column of ours.
            unsafe { *out.add(t * m + r0 + i + a) = v };
        };
        let t2 = t1 - (t1 - t0) % 6;
        // SAFETY (every call): the caller's features; rows 2·k bytes and tokens k values
        // (asserted inside).
        macro_rules! calls {
            ($t:literal, $from:expr, $to:expr) => {
                tokens_of::<_, 4, $t, _>(
                    rs,
                    $from,
                    $to,
                    nr - i,
                    &xr,
                    |r, x| unsafe { dot::<BF, $t>(r, x) },
                    put,
                )
            };
        }
        calls!(6, t0, t2);
        match t1 - t2 {
            1 => calls!(1, t2, t1),
            2 => calls!(2, t2, t1),
            3 => calls!(3, t2, t1),
            4 => calls!(4, t2, t1),
            5 => calls!(5, t2, t1),
            _ => {}
        }
    });
}

/// `R` rows against tokens `t0..t1`, `T` per call of `dot`: `put(t, a, dot)` for every
/// token and each of the first `nr` rows.
fn tokens_of<'a, Row: Copy, const R: usize, const T: usize, K>(
    rows: [Row; R],
    t0: usize,
    t1: usize,
    nr: usize,
    tokens: &impl Fn(usize) -> &'a [f32],
    dot: K,
    mut put: impl FnMut(usize, usize, f32),
) where
    // The micro-kernel: `out[r][t] = rows[r] · xs[t]` (a fn item, so it inlines here).
    K: Fn([Row; R], [&'a [f32]; T]) -> [[f32; T]; R],
{
    let mut t = t0;
    while t < t1 {
        let d = dot(rows, std::array::from_fn(|b| tokens(t + b)));
        for (a, da) in d.iter().enumerate().take(nr) {
            for (b, v) in da.iter().enumerate().take(t1 - t) {
                put(t + b, a, *v);
            }
        }
        t += T;
    }
}
