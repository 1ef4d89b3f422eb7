//! Prefill of weights that are widened to f32 (F16, BF16, F32) at the AVX2 level, as
//! panels of 16 rows with a broadcast micro-kernel.
//!
//! The tile path (`matrix::tile_times_x`) widens rows and takes dot products: 4 rows × 3
//! tokens at AVX2, each a sum over all of k, then a horizontal sum per result. Here a
//! block's rows are widened into panels of 16 rows stored k-major (`[k][16]`, so the
//! panel's rows at one k are two ymm), and the kernel keeps 6 tokens × 16 rows of outputs
//! in 12 accumulators: per k, two loads of the panel and six broadcasts of x meet in 12
//! FMAs, and the results leave as whole vectors with no horizontal sum (the layout of BLAS
//! sgemm kernels). F16, BF16 and F32 rows go into the panels widened and transposed in
//! registers, 8 × 8 at a time (through an f32 copy of the rows, the widening and the
//! transpose took 7.3% of an F16 prefill at 200 tokens; in one pass 5.7%). One F16 matmul
//! of 200 tokens at AVX2 (2 threads, Zen 4, weights streamed from memory): 6176 × 1024
//! 33 → 26 ms, 1024 × 3584 19 → 15 ms. Below `MIN_TOKENS` the transposing widening costs
//! more than it saves (16 tokens: 3.3 → 4.2 ms), and at AVX-512 the tile's 4×4 kernel was
//! as fast within the noise (a 32-row, 12-token panel kernel: −7% to +25%; later, with the
//! one-pass widening, 421 → 428 tok/s over 7 rounds, both kernels at the FMA issue rate),
//! so short prompts keep the tile, and at AVX-512 F32 keeps the tile while F16 and BF16
//! read their rows in place (`matrix::half_rows_times_x`).
//!
//! Summation order: one f32 sum over k in order per output, as the plain loop
//! (`matmul`'s tests compare against it).

use crate::backend::dtype::{widen_into, DType};

use super::matrix::token_pass;
use super::simd::{self, Level};

/// Tokens per kernel call (12 ymm accumulators of the 16).
const T: usize = 6;

/// Rows per panel (two ymm).
pub(super) const W: usize = 16;

/// Fewest tokens the panels are used for (the crossover measured between 30 and 48).
pub(super) const MIN_TOKENS: usize = 48;

/// Whether this CPU, at the chosen level, runs the panel kernel: AVX2 (and FMA).
pub(super) fn usable() -> bool {
    cfg!(target_arch = "x86_64") && simd::level() == Level::Avx2
}

/// Whether a prefill of `n` tokens takes the panels here (`matmul`'s task sizes and its
/// blocks ask the same question).
pub(super) fn wanted(n: usize) -> bool {
    usable() && n >= MIN_TOKENS
}

/// f32s the panels of `rows` rows of `k` take (rows rounded up to whole panels).
pub(super) fn panels_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(W) * W * k
}

/// Widens `rows` rows of `dtype` (`dtype.row_bytes(k)` each, back to back in `src`) into
/// panels: row `p·16 + i`, column `kk` at `p·16·k + kk·16 + i`; rows past
/// `rows` in the last panel are zero. `scratch` holds `8·k` f32s.
pub(super) fn widen_panels(
    dtype: DType,
    src: &[u8],
    rows: usize,
    k: usize,
    panels: &mut [f32],
    scratch: &mut [f32],
) {
    let rb = dtype.row_bytes(k);
    assert!(src.len() >= rows * rb && panels.len() >= panels_len(rows, k));
    assert!(scratch.len() >= 8 * k);
    let np = rows.div_ceil(W);
    #[cfg(target_arch = "x86_64")]
    let fused = fused_widening(dtype, k);
    for p in 0..np {
        let panel = &mut panels[p * W * k..(p + 1) * W * k];
        // Eight rows at a time: widened into scratch, then transposed into lanes
        // `j..j + 8` of the panel (or both at once in registers).
        for j in (0..W).step_by(8) {
            let r0 = p * W + j;
            let g = 8.min(rows.saturating_sub(r0));
            #[cfg(target_arch = "x86_64")]
            if fused && g == 8 {
                let src = &src[r0 * rb..(r0 + 8) * rb];
                // SAFETY: `fused_widening` checked the features and k % 8 == 0; the 8 rows
                // of `rb` bytes lie in `src`, and columns 0..k of lanes j..j+8 in `panel`.
                unsafe { x86::widen8_panel(dtype, src.as_ptr(), rb, k, panel[j..].as_mut_ptr()) };
                continue;
            }
            if g > 0 {
                widen_into(dtype, &src[r0 * rb..(r0 + g) * rb], &mut scratch[..g * k]);
            }
            scratch[g * k..8 * k].fill(0.0);
            transpose(&scratch[..8 * k], 8, k, &mut panel[j..], W);
        }
    }
}

/// Whether `widen_panels` widens and transposes 8 rows of `dtype` at once in registers:
/// F32, BF16 and F16 at the AVX2 level (with F16C), k a multiple of 8.
#[cfg(target_arch = "x86_64")]
fn fused_widening(dtype: DType, k: usize) -> bool {
    usable()
        && simd::avx2_f16c()
        && k.is_multiple_of(8)
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// `dst[c·ld + r] = src[r·cols + c]`: a `rows × cols` matrix transposed into rows `ld ≥
/// rows` apart (the widening's 8 rows into a panel's lanes; the scan's states between
/// their stored and their working layout), 8 × 8 blocks in registers where the CPU has
/// AVX2, the rest one value at a time. Values of `dst` between its rows stay untouched.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], ld: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(ld >= rows && src.len() >= rows * cols && dst.len() >= (cols - 1) * ld + rows);
    let (r8, c8) =
        if cfg!(target_arch = "x86_64") && matches!(simd::level(), Level::Avx2 | Level::Avx512) {
            (rows / 8 * 8, cols / 8 * 8)
        } else {
            (0, 0)
        };
    #[cfg(target_arch = "x86_64")]
    for r in (0..r8).step_by(8) {
        for c in (0..c8).step_by(8) {
            // SAFETY: avx2 was detected at run time (else r8 is 0); the 8 × 8 block read
            // (rows r..r+8, columns c..c+8) and the one written (rows c..c+8, columns
            // r..r+8 of dst) lie in the slices (asserted).
            unsafe {
                x86::transpose8x8(
                    src.as_ptr().add(r * cols + c),
                    cols,
                    dst.as_mut_ptr().add(c * ld + r),
                    ld,
                )
            };
        }
    }
    for r in 0..rows {
        let c_from = if r < r8 { c8 } else { 0 };
        for c in c_from..cols {
            dst[c * ld + r] = src[r * cols + c];
        }
    }
}

/// `out[t][r0 + i] = panel row i · x[t]` for the `nr` rows of `panels` (as `widen_panels`
/// left them) and every token t < n of x (`[n, k]`).
///
/// # Safety
/// `out` is an `[n, m]` buffer whose columns `r0..r0 + nr` no other thread touches during
/// the call, `r0 + nr ≤ m`. (Below the AVX2 level the kernel runs its plain loop.)
pub(super) unsafe fn panels_times_x(
    panels: &[f32],
    nr: usize,
    x: &[f32],
    n: usize,
    m: usize,
    r0: usize,
    out: *mut f32,
) {
    let k = x.len() / n;
    assert!(panels.len() >= panels_len(nr, k) && x.len() == n * k);
    let tb = token_pass(k, T);
    let np = nr.div_ceil(W);
    let mut res = [[0f32; W]; T];
    let mut t0 = 0;
    while t0 < n {
        let t1 = (t0 + tb).min(n);
        for p in 0..np {
            let panel = &panels[p * W * k..(p + 1) * W * k];
            let rows = W.min(nr - p * W);
            let mut t = t0;
            while t < t1 {
                let xs: [&[f32]; T] = std::array::from_fn(|b| {
                    let tt = (t + b).min(t1 - 1);
                    &x[tt * k..(tt + 1) * k]
                });
                kernel(panel, k, xs, &mut res);
                for (b, rb) in res.iter().enumerate().take(t1 - t) {
                    // SAFETY (caller): token t + b < n, columns r0 + p·16.. + rows are ours.
                    let o = unsafe { out.add((t + b) * m + r0 + p * W) };
                    for (i, v) in rb.iter().enumerate().take(rows) {
                        // SAFETY: as above.
                        unsafe { *o.add(i) = *v };
                    }
                }
                t += T;
            }
        }
        t0 = t1;
    }
}

/// One panel (16 rows, k-major) against `T` tokens: `res[t][i] = row i · xs[t]`.
fn kernel(panel: &[f32], k: usize, xs: [&[f32]; T], res: &mut [[f32; W]; T]) {
    assert!(panel.len() == W * k && xs.iter().all(|x| x.len() == k));
    #[cfg(target_arch = "x86_64")]
    if usable() {
        // SAFETY: avx2 and fma were detected at run time; lengths asserted above.
        return unsafe { x86::kernel_avx2(panel.as_ptr(), k, xs.map(|x| x.as_ptr()), res) };
    }
    for (t, rt) in res.iter_mut().enumerate() {
        for (i, r) in rt.iter_mut().enumerate() {
            *r = (0..k).fold(0.0, |s, kk| s + panel[kk * W + i] * xs[t][kk]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{T, W};
    use crate::backend::dtype::DType;
    use std::arch::x86_64::*;

    /// 8 rows of `dtype` (F32, BF16 or F16; `rb` bytes apart from `src`) widened and
    /// transposed into a panel's lanes: column c of row i to `dst[c·16 + i]`, c < k (k a
    /// multiple of 8), 8 × 8 at a time in registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen8_panel(dtype: DType, src: *const u8, rb: usize, k: usize, dst: *mut f32) {
        let mut r = [_mm256_setzero_ps(); 8];
        for c in (0..k).step_by(8) {
            match dtype {
                DType::F16 => {
                    for (i, ri) in r.iter_mut().enumerate() {
                        let h = _mm_loadu_si128(src.add(i * rb + 2 * c) as *const __m128i);
                        *ri = _mm256_cvtph_ps(h);
                    }
                }
                DType::BF16 => {
                    for (i, ri) in r.iter_mut().enumerate() {
                        let h = _mm_loadu_si128(src.add(i * rb + 2 * c) as *const __m128i);
                        *ri =
                            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
                    }
                }
                _ => {
                    for (i, ri) in r.iter_mut().enumerate() {
                        *ri = _mm256_loadu_ps(src.add(i * rb + 4 * c) as *const f32);
                    }
                }
            }
            for (j, v) in transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((c + j) * W), v);
            }
        }
    }

    /// 8 rows × 8 columns at `src` (row stride `k`) to 8 columns × 8 rows at `dst` (row
    /// stride `w`).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn transpose8x8(src: *const f32, k: usize, dst: *mut f32, w: usize) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * k)));
        for (c, v) in transpose8(r).into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(c * w), v);
        }
    }

    /// The 8 × 8 transpose of 8 rows in registers: element j of result i is element i of
    /// row j.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// 16 rows (two ymm per k) × 6 tokens in 12 accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_avx2(
        p: *const f32,
        k: usize,
        x: [*const f32; T],
        res: &mut [[f32; W]; T],
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; T];
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(p.add(16 * kk));
            let w1 = _mm256_loadu_ps(p.add(16 * kk + 8));
            for t in 0..T {
                let xv = _mm256_broadcast_ss(&*x[t].add(kk));
                acc[t][0] = _mm256_fmadd_ps(w0, xv, acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(w1, xv, acc[t][1]);
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t][0]);
            _mm256_storeu_ps(res[t].as_mut_ptr().add(8), acc[t][1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{test_stored, test_values};

    /// `transpose` moves every value to its place, at shapes with whole 8 × 8 blocks, ragged
    /// edges on either side and none, into rows as far apart as the matrix's (`ld` =
    /// rows) and farther (the gaps untouched); the blocks run at AVX2 and AVX-512 (run the
    /// suite with `NEMO_SIMD=scalar` for the plain loop).
    #[test]
    fn transpose_puts_every_value_at_its_mirrored_place() {
        for (rows, cols, ld) in [(8, 24, 16), (13, 21, 20), (8, 5, 9)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 + 0.5).collect();
            let mut dst = vec![-1f32; cols * ld];
            transpose(&src, rows, cols, &mut dst, ld);
            for c in 0..cols {
                for r in 0..ld {
                    let want = if r < rows { src[r * cols + c] } else { -1.0 };
                    assert_eq!(dst[c * ld + r], want, "{rows}×{cols} ld {ld} at {r},{c}");
                }
            }
        }
        for (rows, cols) in [
            (8, 8),
            (64, 128),
            (128, 64),
            (13, 21),
            (16, 5),
            (3, 24),
            (1, 1),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 + 0.5).collect();
            // Room past the end, which must stay untouched.
            let mut dst = vec![-1f32; rows * cols + 3];
            transpose(&src, rows, cols, &mut dst, rows);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}×{cols} at {r},{c}"
                    );
                }
            }
            assert_eq!(
                &dst[rows * cols..],
                &[-1.0; 3],
                "{rows}×{cols}: past the end"
            );
        }
    }

    /// The panels of every dtype they take, at ragged shapes (rows not a multiple of 16,
    /// k not of 8, tokens not of 6, several passes at k = 1029), against an f64 sum of the
    /// widened rows. At the AVX2 level the kernels run; elsewhere the plain loops (the SIMD
    /// kernels are compared with them in the next test).
    #[test]
    fn panels_times_x_matches_the_widened_rows() {
        for (n, m, k) in [(1, 1, 1), (7, 37, 19), (50, 16, 8), (130, 21, 1029)] {
            let x = test_values(n * k, 3);
            let wf = test_values(m * k, 4);
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let (bytes, wide) = test_stored(dt, &wf, m, k);
                let mut panels = vec![f32::NAN; panels_len(m, k)];
                let mut scratch = vec![0f32; 8 * k];
                widen_panels(dt, &bytes, m, k, &mut panels, &mut scratch);
                let mut out = vec![f32::NAN; n * (m + 3)];
                // SAFETY: columns 2..2+m of an [n, m+3] buffer, this thread's only.
                unsafe { panels_times_x(&panels, m, &x, n, m + 3, 2, out.as_mut_ptr()) };
                for t in 0..n {
                    for r in 0..m {
                        let want: f64 = (0..k)
                            .map(|c| wide[r * k + c] as f64 * x[t * k + c] as f64)
                            .sum();
                        let got = out[t * (m + 3) + 2 + r];
                        assert!(
                            (got as f64 - want).abs()
                                <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                            "{dt} n={n} m={m} k={k} t={t} r={r}: {got} vs {want}"
                        );
                    }
                    // Columns outside the task's rows are untouched.
                    assert!(out[t * (m + 3)].is_nan() && out[t * (m + 3) + m + 2].is_nan());
                }
            }
        }
    }

    /// `widen_panels` puts row `p·16 + i`, column c at `p·16·k + c·16 + i` and zeros past the
    /// last row, bit for bit the widened value: whole groups of 8 rows (widened and
    /// transposed in registers at the AVX2 level), a ragged last group and panel, k a
    /// multiple of 8 and not (the copy-then-transpose path), every dtype it takes.
    #[test]
    fn widen_panels_places_every_row() {
        for (m, k) in [(37, 64), (16, 8), (9, 24), (20, 13)] {
            let wf = test_values(m * k, 8);
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let (bytes, wide) = test_stored(dt, &wf, m, k);
                let mut panels = vec![f32::NAN; panels_len(m, k)];
                let mut scratch = vec![f32::NAN; 8 * k];
                widen_panels(dt, &bytes, m, k, &mut panels, &mut scratch);
                for r in 0..m.div_ceil(W) * W {
                    for c in 0..k {
                        let got = panels[r / W * W * k + c * W + r % W];
                        let want = if r < m { wide[r * k + c] } else { 0.0 };
                        assert_eq!(got.to_bits(), want.to_bits(), "{dt} {m}×{k} at {r},{c}");
                    }
                }
            }
        }
    }

    /// The AVX2 transpose, one-pass widening and kernel, called directly, against the plain
    /// loops.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_panel_kernel_and_transpose_match_the_plain_loops() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA + F16C");
        }
        for k in [8usize, 16, 64, 1024] {
            let rows = test_values(8 * k, 5);
            let mut got = vec![0f32; W * k];
            for kk in (0..k).step_by(8) {
                // SAFETY: avx2 checked; 8 rows × 8 columns from kk lie in `rows`, and
                // 8 columns × 8 lanes from kk·16 + 8 in `got`.
                unsafe {
                    x86::transpose8x8(
                        rows.as_ptr().add(kk),
                        k,
                        got.as_mut_ptr().add(kk * W + 8),
                        W,
                    )
                };
            }
            for c in 0..k {
                for i in 0..8 {
                    assert_eq!(got[c * W + 8 + i], rows[i * k + c], "transpose k={k}");
                }
            }
            // The one-pass widening of 8 rows of each dtype into lanes 8..16.
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let (bytes, wide) = test_stored(dt, &rows, 8, k);
                let mut got = vec![f32::NAN; W * k];
                // SAFETY: avx2, fma and f16c checked; 8 rows of row_bytes(k) in `bytes`,
                // columns 0..k of lanes 8..16 in `got`.
                unsafe {
                    x86::widen8_panel(
                        dt,
                        bytes.as_ptr(),
                        dt.row_bytes(k),
                        k,
                        got.as_mut_ptr().add(8),
                    )
                };
                for c in 0..k {
                    for i in 0..8 {
                        assert_eq!(got[c * W + 8 + i], wide[i * k + c], "{dt} widen k={k}");
                        assert!(got[c * W + i].is_nan(), "{dt} widen k={k}: lanes 0..8");
                    }
                }
            }
            let panel = test_values(W * k, 6);
            let xs: Vec<Vec<f32>> = (0..T).map(|t| test_values(k, 7 + t as u64)).collect();
            let xr: [&[f32]; T] = std::array::from_fn(|t| &xs[t][..]);
            let mut res = [[0f32; W]; T];
            // SAFETY: avx2 and fma checked; the panel holds 16·k values, each x k.
            unsafe { x86::kernel_avx2(panel.as_ptr(), k, xr.map(|x| x.as_ptr()), &mut res) };
            for t in 0..T {
                for i in 0..W {
                    let want = (0..k).fold(0f32, |s, c| s + panel[c * W + i] * xr[t][c]);
                    let tol = 1e-5 * (1.0 + want.abs()) * k as f32;
                    assert!((res[t][i] - want).abs() <= tol, "kernel k={k} t={t} i={i}");
                }
            }
        }
    }
}
