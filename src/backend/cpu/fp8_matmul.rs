//! FP8 weights multiplied in their stored form: `out = x · (s ⊙ W)ᵀ` with W stored as one
//! byte per element (E4M3FN, or E5M2) `[rows, cols]` and s the checkpoint's `weight_scale`,
//! one f32 for the whole tensor or one per row (output channel). x `[n, cols]` f32,
//! out `[n, rows]` f32. This is how the published `*-FP8` checkpoints are run on the CPU:
//! the bytes stay in the mmap, nothing is widened at load.
//!
//! - Decode (n == 1) widens each fp8 row in registers, four rows against one x, and
//!   multiplies each row's dot product by its scale once: `out[r] = s_r · Σ_j W[r,j]·x[j]`.
//! - Prefill widens a block of rows into an f32 tile once, each element `W[r,j] · s_r`
//!   (bit for bit the dequantized weight a reference computes), and runs the same 4×4
//!   micro-kernel as the other dtypes over all tokens, so the weights are read once per call.
//!
//! Widening: the plain path reads a 256-entry table (`fp8::decode`). The SIMD paths move the
//! E4M3 bits into an IEEE half (`s eeee mmm` → `s 0eeee mmm0000000`, exact, E4M3 subnormals
//! land on f16 subnormals) and let the hardware convert half → f32 (F16C on AVX2, AVX-512F),
//! then multiply by 2^8 (exponent bias 15 − 7), folded into the row scale. E5M2 is the top
//! byte of a half already. f16 subnormals convert to normal f32s, so no f32 subnormal ever
//! reaches a multiply (no microcode assists). The two NaN codes of E4M3FN (0x7F, 0xFF)
//! come out as ±480 on the SIMD paths instead of NaN; quantizers never write them (they
//! saturate at ±448).
//!
//! Activations stay f32. The checkpoints' `input_scale` (vLLM's FP8 GEMM quantizes the
//! activations to E4M3 with it, "static per-tensor activation scale") is NOT applied here:
//! a CPU gains nothing from fp8 activations (there is no fp8 multiply; the weights are
//! widened to f32 either way), and rounding every activation to 3 mantissa bits would only
//! add error. So nemo computes with the dequantized weights, which is what transformers does
//! with these checkpoints' dequantized weights (the reference the fixtures are checked
//! against), and differs from vLLM's W8A8 numerics by vLLM's activation rounding.

use std::sync::OnceLock;

use super::matrix::{block_rows, tile_times_x, with_tile, MatRef, OutPtr, WeightScale};
use super::simd::{self, Level};
use crate::backend::{fp8, DType};

pub fn is_fp8(dtype: DType) -> bool {
    matches!(dtype, DType::F8E4M3 | DType::F8E5M2)
}

/// Every byte's value (unscaled), for the plain path and the SIMD tails.
fn table(dtype: DType) -> &'static [f32; 256] {
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    let cell = if dtype == DType::F8E5M2 { &E5M2 } else { &E4M3 };
    cell.get_or_init(|| std::array::from_fn(|b| fp8::decode(dtype, b as u8)))
}

/// The SIMD level `want` if this CPU can run this file's kernels at it, else the next
/// lower one (the AVX2 kernels also need F16C).
fn usable(want: Level) -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if want == Level::Avx512 && avx2 && is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if want != Level::Scalar && avx2 {
            return Level::Avx2;
        }
    }
    let _ = want;
    Level::Scalar
}

/// The SIMD levels this CPU runs `matmul_fp8_at` with (for tests).
pub fn available_levels() -> Vec<Level> {
    let mut v = vec![Level::Scalar];
    for l in [Level::Avx2, Level::Avx512] {
        if usable(l) == l {
            v.push(l);
        }
    }
    v
}

/// `out = x · (scale ⊙ W)ᵀ` for FP8 `w`, at the CPU's best SIMD level.
pub fn matmul_fp8(x: &[f32], n: usize, w: MatRef<'_>, out: &mut [f32]) {
    matmul_fp8_at(simd::level(), x, n, w, out)
}

/// `matmul_fp8` with the widening kernels at SIMD level `level` (or the next lower one this
/// CPU has). Tests run it at every level of `available_levels`.
pub fn matmul_fp8_at(level: Level, x: &[f32], n: usize, w: MatRef<'_>, out: &mut [f32]) {
    let (m, k) = (w.rows, w.cols);
    assert!(is_fp8(w.dtype), "matmul_fp8: weight dtype is {}", w.dtype);
    assert_eq!(
        x.len(),
        n * k,
        "matmul_fp8: x has {} values, want {n}×{k}",
        x.len()
    );
    assert_eq!(
        out.len(),
        n * m,
        "matmul_fp8: out has {} values, want {n}×{m}",
        out.len()
    );
    assert_eq!(w.data.len(), m * k, "matmul_fp8: weight bytes");
    if let WeightScale::Rows(s) = w.scale {
        assert_eq!(s.len(), m, "matmul_fp8: one scale per row");
    }
    if n == 0 || m == 0 {
        return;
    }
    let level = usable(level);
    let br = block_rows(m, w.row_bytes());
    let nblocks = m.div_ceil(br);
    let outp = OutPtr(out.as_mut_ptr());
    let run = |b: usize| {
        let r0 = b * br;
        let r1 = (r0 + br).min(m);
        if n == 1 {
            gemv_block(level, x, w, r0, r1, outp);
        } else {
            tile_block(level, x, n, w, r0, r1, outp);
        }
    };
    super::team::par_for(nblocks, &run);
}

fn row<'a>(w: &MatRef<'a>, r: usize) -> &'a [u8] {
    &w.data[r * w.cols..(r + 1) * w.cols]
}

fn gemv_block(level: Level, x: &[f32], w: MatRef<'_>, r0: usize, r1: usize, o: OutPtr) {
    let mut r = r0;
    while r < r1 {
        // Pad the last group of rows by repeating the last row; extra results are dropped.
        let idx = [
            r,
            (r + 1).min(r1 - 1),
            (r + 2).min(r1 - 1),
            (r + 3).min(r1 - 1),
        ];
        let rows = [
            row(&w, idx[0]),
            row(&w, idx[1]),
            row(&w, idx[2]),
            row(&w, idx[3]),
        ];
        let d = dot_rows4(level, w.dtype, rows, x);
        for (i, v) in d.iter().enumerate().take(r1 - r) {
            // SAFETY: row r+i < m belongs to this task only; n == 1 so the index is r+i.
            unsafe { *o.0.add(r + i) = v * w.scale.row(r + i) };
        }
        r += 4;
    }
}

fn tile_block(level: Level, x: &[f32], n: usize, w: MatRef<'_>, r0: usize, r1: usize, o: OutPtr) {
    let k = w.cols;
    with_tile((r1 - r0) * k, |tile| {
        for (i, dst) in tile.chunks_exact_mut(k).enumerate() {
            widen_row_at(level, w.dtype, row(&w, r0 + i), w.scale.row(r0 + i), dst);
        }
        // SAFETY: rows r0..r1 of the `[n, rows]` output belong to this task.
        unsafe { tile_times_x(tile, x, n, w.rows, r0, o.0) };
    });
}

/// `dst[j] = fp8(src[j]) · scale`: one dequantized row, bit for bit `value × scale` in f32.
pub fn widen_row(dtype: DType, src: &[u8], scale: f32, dst: &mut [f32]) {
    widen_row_at(simd::level(), dtype, src, scale, dst)
}

fn widen_row_at(level: Level, dtype: DType, src: &[u8], scale: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_row: one byte per value");
    #[cfg(target_arch = "x86_64")]
    {
        let e4m3 = dtype == DType::F8E4M3;
        match usable(level) {
            // SAFETY: usable() checked avx512f + avx2 at run time.
            Level::Avx512 if e4m3 => return unsafe { x86::widen_avx512::<true>(src, scale, dst) },
            // SAFETY: as above.
            Level::Avx512 => return unsafe { x86::widen_avx512::<false>(src, scale, dst) },
            // SAFETY: usable() checked avx2 + fma + f16c at run time.
            Level::Avx2 if e4m3 => return unsafe { x86::widen_avx2::<true>(src, scale, dst) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { x86::widen_avx2::<false>(src, scale, dst) },
            Level::Scalar | Level::Neon => {}
        }
    }
    let _ = level;
    let t = table(dtype);
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = t[b as usize] * scale;
    }
}

/// Unscaled dots of four fp8 rows against x.
fn dot_rows4(level: Level, dtype: DType, rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        let e4m3 = dtype == DType::F8E4M3;
        match level {
            // SAFETY: the caller passed a level from usable(): avx512f + avx2 were detected.
            Level::Avx512 if e4m3 => return unsafe { x86::dot_rows4_avx512::<true>(rows, x) },
            // SAFETY: as above.
            Level::Avx512 => return unsafe { x86::dot_rows4_avx512::<false>(rows, x) },
            // SAFETY: the caller passed a level from usable(): avx2 + fma + f16c detected.
            Level::Avx2 if e4m3 => return unsafe { x86::dot_rows4_avx2::<true>(rows, x) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { x86::dot_rows4_avx2::<false>(rows, x) },
            Level::Scalar | Level::Neon => {}
        }
    }
    let _ = level;
    let t = table(dtype);
    let mut out = [0f32; 4];
    for (o, row) in out.iter_mut().zip(rows) {
        let mut acc = [0f32; 8];
        let chunks = x.len() / 8;
        for c in 0..chunks {
            for (l, a) in acc.iter_mut().enumerate() {
                let j = c * 8 + l;
                *a += t[row[j] as usize] * x[j];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for j in chunks * 8..x.len() {
            s += t[row[j] as usize] * x[j];
        }
        *o = s;
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::table;
    use crate::backend::DType;

    /// The factor between the half the bits are moved into and the fp8 value: 2^(15−7)
    /// for E4M3 (exponent biases), 1 for E5M2 (already the top byte of a half).
    fn half_factor(e4m3: bool) -> f32 {
        if e4m3 {
            256.0
        } else {
            1.0
        }
    }

    fn dtype(e4m3: bool) -> DType {
        if e4m3 {
            DType::F8E4M3
        } else {
            DType::F8E5M2
        }
    }

    /// fp8 bytes (zero-extended to 16-bit lanes) → IEEE half bits of value / half_factor.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn to_half_128<const E4M3: bool>(v: __m128i) -> __m128i {
        if E4M3 {
            let sign = _mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x80)), 8);
            let mag = _mm_slli_epi16(_mm_and_si128(v, _mm_set1_epi16(0x7F)), 7);
            _mm_or_si128(sign, mag)
        } else {
            _mm_slli_epi16(v, 8)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn to_half_256<const E4M3: bool>(v: __m256i) -> __m256i {
        if E4M3 {
            let sign = _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x80)), 8);
            let mag = _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x7F)), 7);
            _mm256_or_si256(sign, mag)
        } else {
            _mm256_slli_epi16(v, 8)
        }
    }

    /// 8 fp8 bytes at `p` → 8 f32 (value / half_factor).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const E4M3: bool>(p: *const u8) -> __m256 {
        let b = _mm_loadl_epi64(p as *const __m128i);
        _mm256_cvtph_ps(to_half_128::<E4M3>(_mm_cvtepu8_epi16(b)))
    }

    /// 16 fp8 bytes at `p` → 16 f32 (value / half_factor).
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn load16<const E4M3: bool>(p: *const u8) -> __m512 {
        let b = _mm_loadu_si128(p as *const __m128i);
        _mm512_cvtph_ps(to_half_256::<E4M3>(_mm256_cvtepu8_epi16(b)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_avx2<const E4M3: bool>(src: &[u8], scale: f32, dst: &mut [f32]) {
        let n = dst.len().min(src.len());
        let f = _mm256_set1_ps(scale * half_factor(E4M3));
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(d.add(i), _mm256_mul_ps(load8::<E4M3>(s.add(i)), f));
            i += 8;
        }
        let t = table(dtype(E4M3));
        for j in i..n {
            *d.add(j) = t[*s.add(j) as usize] * scale;
        }
    }

    #[target_feature(enable = "avx512f,avx2")]
    pub unsafe fn widen_avx512<const E4M3: bool>(src: &[u8], scale: f32, dst: &mut [f32]) {
        let n = dst.len().min(src.len());
        let f = _mm512_set1_ps(scale * half_factor(E4M3));
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(d.add(i), _mm512_mul_ps(load16::<E4M3>(s.add(i)), f));
            i += 16;
        }
        let t = table(dtype(E4M3));
        for j in i..n {
            *d.add(j) = t[*s.add(j) as usize] * scale;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows4_avx2<const E4M3: bool>(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let k = x.len();
        for r in &rows {
            assert_eq!(r.len(), k, "fp8 row length");
        }
        let p = [
            rows[0].as_ptr(),
            rows[1].as_ptr(),
            rows[2].as_ptr(),
            rows[3].as_ptr(),
        ];
        let px = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j + 8 <= k {
            let xv = _mm256_loadu_ps(px.add(j));
            for r in 0..4 {
                acc[r] = _mm256_fmadd_ps(load8::<E4M3>(p[r].add(j)), xv, acc[r]);
            }
            j += 8;
        }
        let t = table(dtype(E4M3));
        let mut out = [0f32; 4];
        for r in 0..4 {
            let mut s = hsum256(acc[r]) * half_factor(E4M3);
            for jj in j..k {
                s += t[*p[r].add(jj) as usize] * *px.add(jj);
            }
            out[r] = s;
        }
        out
    }

    #[target_feature(enable = "avx512f,avx2")]
    pub unsafe fn dot_rows4_avx512<const E4M3: bool>(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let k = x.len();
        for r in &rows {
            assert_eq!(r.len(), k, "fp8 row length");
        }
        let p = [
            rows[0].as_ptr(),
            rows[1].as_ptr(),
            rows[2].as_ptr(),
            rows[3].as_ptr(),
        ];
        let px = x.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        while j + 16 <= k {
            let xv = _mm512_loadu_ps(px.add(j));
            for r in 0..4 {
                acc[r] = _mm512_fmadd_ps(load16::<E4M3>(p[r].add(j)), xv, acc[r]);
            }
            j += 16;
        }
        let t = table(dtype(E4M3));
        let mut out = [0f32; 4];
        for r in 0..4 {
            let mut s = _mm512_reduce_add_ps(acc[r]) * half_factor(E4M3);
            for jj in j..k {
                s += t[*p[r].add(jj) as usize] * *px.add(jj);
            }
            out[r] = s;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD widening is exact: every finite code, times a scale, equals the table's
    /// value times the scale bit for bit (E4M3 subnormals included).
    #[test]
    fn simd_widening_equals_the_table_for_every_code() {
        for dtype in [DType::F8E4M3, DType::F8E5M2] {
            let src: Vec<u8> = (0..=255u8)
                .filter(|&b| table(dtype)[b as usize].is_finite())
                .collect();
            let scale = 0.0123f32;
            let want: Vec<f32> = src
                .iter()
                .map(|&b| table(dtype)[b as usize] * scale)
                .collect();
            for level in available_levels() {
                let mut got = vec![0f32; src.len()];
                widen_row_at(level, dtype, &src, scale, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{dtype} {level:?} code {:#x}",
                        src[i]
                    );
                }
            }
        }
    }
}
