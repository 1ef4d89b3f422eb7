//! Runtime-dispatched inner loops: dot products and the bf16 widening used by matmul and
//! attention. Each function has a plain-Rust body that is the oracle for its SIMD twin.
//!
//! Invariant: results differ from the plain path only by f32 summation order.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Scalar,
    Avx2,
    Avx512,
    /// aarch64's Advanced SIMD (every aarch64 CPU has it); `dotprod()` says whether the
    /// quantized dots also use `sdot`.
    Neon,
}

static LEVEL: OnceLock<Level> = OnceLock::new();

/// The best SIMD level this CPU supports; `NEMO_SIMD=scalar|avx2|avx512` (x86-64) or
/// `scalar|neon|dotprod` (aarch64) lowers it.
pub fn level() -> Level {
    *LEVEL.get_or_init(|| {
        let detected = detect();
        match std::env::var("NEMO_SIMD").ok().as_deref() {
            Some("scalar") => Level::Scalar,
            Some("avx2") if matches!(detected, Level::Avx2 | Level::Avx512) => Level::Avx2,
            _ => detected,
        }
    })
}

/// Whether the NEON level also has the Armv8.2 dot product (`sdot`) for the quantized
/// dots, chosen at run time; `NEMO_SIMD=neon` turns it off. False below `Level::Neon`.
pub fn dotprod() -> bool {
    static DOTPROD: OnceLock<bool> = OnceLock::new();
    *DOTPROD.get_or_init(|| {
        level() == Level::Neon
            && detect_dotprod()
            && std::env::var("NEMO_SIMD").ok().as_deref() != Some("neon")
    })
}

#[cfg(target_arch = "aarch64")]
pub(crate) fn detect_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

#[cfg(not(target_arch = "aarch64"))]
pub(crate) fn detect_dotprod() -> bool {
    false
}

/// Whether the AVX-512 level also has the integer extras the quantized decode dots use
/// (BW, VL, VNNI's `vpdpbusd`) and F16C for the block scales; false below `Level::Avx512`.
pub fn vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| level() == Level::Avx512 && detect_vnni())
}

/// Whether the AVX2 level (or above) also has F16C, for the block scales of the quantized
/// dots (every AVX2 CPU made has it; the check keeps a mislabelled VM on the plain path).
pub fn avx2_f16c() -> bool {
    static F16C: OnceLock<bool> = OnceLock::new();
    *F16C.get_or_init(|| level() != Level::Scalar && detect_f16c())
}

#[cfg(target_arch = "x86_64")]
fn detect_f16c() -> bool {
    is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_f16c() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn detect_vnni() -> bool {
    is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_vnni() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    if is_x86_feature_detected!("avx512f") {
        Level::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Level::Avx2
    } else {
        Level::Scalar
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Level {
    if std::arch::is_aarch64_feature_detected!("neon") {
        Level::Neon
    } else {
        Level::Scalar
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Level {
    Level::Scalar
}

/// Widens little-endian bf16 bytes into f32 (exact).
pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * 2);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: avx512f was detected at run time.
        unsafe { x86::bf16_to_f32_avx512(src, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: avx2 and fma were detected at run time.
        unsafe { x86::bf16_to_f32_avx2(src, dst) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if level() == Level::Neon {
        // SAFETY: neon was detected at run time.
        unsafe { arm::bf16_to_f32_neon(src, dst) };
        return;
    }
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

/// Widens little-endian f16 bytes into f32 (exact): F16C 16 (AVX-512) or 8 (AVX2) at a
/// time, else one by one. The F16 prefill tile and the f16 KV cache (the GGUF default)
/// widen through here on every call.
pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len() * 2, "f16_to_f32: lengths");
    f16_rows_to_f32(src, 0, 1, dst)
}

/// `f16_to_f32` of `rows` rows of `dst.len() / rows` values each, row r read from
/// `src[r · stride..]` (bytes): one KV head's positions in a cache laid out
/// `[position, kv_head, head_dim]`, widened in one call instead of one per position.
pub fn f16_rows_to_f32(src: &[u8], stride: usize, rows: usize, dst: &mut [f32]) {
    if rows == 0 {
        return;
    }
    let len = dst.len() / rows;
    assert!(len * rows == dst.len() && src.len() >= (rows - 1) * stride + 2 * len);
    #[cfg(target_arch = "x86_64")]
    if avx2_f16c() {
        // SAFETY: f16c and avx2 (avx512f for the first) were detected at run time; every
        // row's 2·len bytes lie in `src` (asserted).
        unsafe {
            if level() == Level::Avx512 {
                x86::f16_rows_avx512(src, stride, rows, dst)
            } else {
                x86::f16_rows_avx2(src, stride, rows, dst)
            }
        };
        return;
    }
    for (r, d) in dst.chunks_exact_mut(len).enumerate() {
        f16_to_f32_plain(&src[r * stride..r * stride + 2 * len], d);
    }
}

fn f16_to_f32_plain(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// `a·b + c`, fused where `FMA` (the SIMD levels' kernel bodies), else rounded twice as
/// the plain level does.
#[inline(always)]
pub(super) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The sum of `acc`'s lanes (`N` a power of two), added pairwise: half onto half until
/// one is left. The end of the kernel bodies that keep 16 lane sums so their loops
/// vectorise (an in-order float sum would not).
#[inline(always)]
pub(super) fn sum_lanes<const N: usize>(mut acc: [f32; N]) -> f32 {
    let mut w = N;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// Plain dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: avx512f was detected at run time.
        return unsafe { x86::dot_avx512(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: avx2 and fma were detected at run time.
        return unsafe { x86::dot_avx2(a, b) };
    }
    #[cfg(target_arch = "aarch64")]
    if level() == Level::Neon {
        // SAFETY: neon was detected at run time.
        return unsafe { arm::dot_neon(a, b) };
    }
    dot_plain(a, b)
}

fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] += a[i * 8 + l] * b[i * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// y += a * x
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `out[r][t] = dot(rows[r], xs[t])` for four f32 rows against four f32 vectors of equal length.
/// The prefill matmul's micro-kernel at AVX-512 and NEON: 16 accumulators, 8 loads per 16
/// FMAs. AVX2's is `dot4x3` (`tile_tokens`); at that level this is the plain loop.
pub fn dot4x4(rows: [&[f32]; 4], xs: [&[f32]; 4]) -> [[f32; 4]; 4] {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: avx512f was detected at run time; lengths are checked inside.
        return unsafe { x86::dot4x4_avx512(rows, xs) };
    }
    #[cfg(target_arch = "aarch64")]
    if level() == Level::Neon {
        // SAFETY: neon was detected at run time.
        return unsafe { arm::dot4x4_neon(rows, xs) };
    }
    let mut out = [[0f32; 4]; 4];
    for r in 0..4 {
        for t in 0..4 {
            out[r][t] = dot_plain(rows[r], xs[t]);
        }
    }
    out
}

/// `out[r][t] = dot(rows[r], xs[t])` for four f32 rows against three vectors: the prefill
/// tile's AVX2 micro-kernel (12 accumulators hide the FMA latency that 8 did not, with 7
/// loads per 12 FMAs); other levels take `dot4x4`'s shape.
pub fn dot4x3(rows: [&[f32]; 4], xs: [&[f32]; 3]) -> [[f32; 3]; 4] {
    dot4xt(rows, xs)
}

/// `dot4x3` for the last one or two tokens of a pass (`T` < 3), the same sums bit for bit:
/// a 16-token prefill was five full calls and one that multiplied two copies of the last
/// token for nothing.
pub fn dot4xt<const T: usize>(rows: [&[f32]; 4], xs: [&[f32]; T]) -> [[f32; T]; 4] {
    #[cfg(target_arch = "x86_64")]
    if level() != Level::Scalar {
        // SAFETY: avx2 and fma were detected at run time (Avx2 and Avx512 both have them);
        // lengths are checked inside.
        return unsafe { x86::dot4xt_avx2(rows, xs) };
    }
    let mut out = [[0f32; T]; 4];
    for r in 0..4 {
        for t in 0..T {
            out[r][t] = dot_plain(rows[r], xs[t]);
        }
    }
    out
}

/// Tokens per call of the prefill tile's micro-kernel at this level: 3 (`dot4x3`) on AVX2,
/// else 4 (`dot4x4`).
pub fn tile_tokens() -> usize {
    if level() == Level::Avx2 {
        3
    } else {
        4
    }
}

/// Dots of four bf16 rows (little-endian bytes) against one f32 vector: the decode GEMV
/// kernel, widening on the fly so the weights are read once from memory.
pub fn dot_bf16_rows4(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: avx512f was detected at run time; lengths are checked inside.
        return unsafe { x86::dot_bf16_rows4_avx512(rows, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: avx2 and fma were detected at run time; lengths are checked inside.
        return unsafe { x86::dot_bf16_rows4_avx2(rows, x) };
    }
    #[cfg(target_arch = "aarch64")]
    if level() == Level::Neon {
        // SAFETY: neon was detected at run time.
        return unsafe { arm::dot_bf16_rows4_neon(rows, x) };
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut acc = [0f32; 8];
        let row = rows[r];
        let chunks = x.len() / 8;
        for i in 0..chunks {
            for (l, a) in acc.iter_mut().enumerate() {
                let j = i * 8 + l;
                let w =
                    f32::from_bits((u16::from_le_bytes([row[2 * j], row[2 * j + 1]]) as u32) << 16);
                *a += w * x[j];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for j in chunks * 8..x.len() {
            let w = f32::from_bits((u16::from_le_bytes([row[2 * j], row[2 * j + 1]]) as u32) << 16);
            s += w * x[j];
        }
        out[r] = s;
    }
    out
}

/// Dots of four f16 rows (little-endian bytes) against one f32 vector: the decode GEMV
/// kernel for F16 weights, widening on the fly with F16C where the CPU has it.
pub fn dot_f16_rows4(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 && avx2_f16c() {
        // SAFETY: avx512f and f16c were detected at run time; lengths are checked inside.
        return unsafe { x86::dot_f16_rows4_avx512(rows, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_f16c() && level() != Level::Scalar {
        // SAFETY: avx2, fma and f16c were detected at run time; lengths are checked inside.
        return unsafe { x86::dot_f16_rows4_avx2(rows, x) };
    }
    dot_f16_rows4_plain(rows, x)
}

fn dot_f16_rows4_plain(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut acc = [0f32; 8];
        let row = rows[r];
        let w = |j: usize| {
            half::f16::from_bits(u16::from_le_bytes([row[2 * j], row[2 * j + 1]])).to_f32()
        };
        let chunks = x.len() / 8;
        for i in 0..chunks {
            for (l, a) in acc.iter_mut().enumerate() {
                *a += w(i * 8 + l) * x[i * 8 + l];
            }
        }
        let mut s: f32 = acc.iter().sum();
        #[allow(clippy::needless_range_loop)]
        for j in chunks * 8..x.len() {
            s += w(j) * x[j];
        }
        out[r] = s;
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// Row length (elements) from which the bf16/f16 decode kernels read their four rows
    /// side by side rather than one after another. Measured on Zen 4, 2 threads: rows of
    /// 1024 (2 KiB) read one after another 1.6-2x faster (four 2 KiB streams are too short
    /// for the prefetcher); rows of 4480 (Nano 9B v2) side by side 10-15% faster.
    const INTERLEAVE_K: usize = 4096;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16x8(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bf16_to_f32_avx2(src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        let s = src.as_ptr() as *const u16;
        let d = dst.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(d.add(i), load_bf16x8(s.add(i)));
            i += 8;
        }
        while i < n {
            *d.add(i) = f32::from_bits((std::ptr::read_unaligned(s.add(i)) as u32) << 16);
            i += 1;
        }
    }

    /// Values `i..` of one row (`s` its f16 bits, `d` its f32 values): 8 at a time with
    /// F16C, then one by one. The tail of both levels' row loops.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn f16_row_from(s: *const u16, d: &mut [f32], mut i: usize) {
        let n = d.len();
        while i + 8 <= n {
            let h = _mm_loadu_si128(s.add(i) as *const __m128i);
            _mm256_storeu_ps(d.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        while i < n {
            d[i] = f16_value(s.add(i).read_unaligned());
            i += 1;
        }
    }

    /// `f16_rows_to_f32` with AVX-512 and F16C: 16 values per step, then `f16_row_from`.
    ///
    /// # Safety
    /// avx512f, avx2, f16c; every row's bytes lie in `src` (the caller asserts it).
    #[target_feature(enable = "avx512f,avx2,f16c")]
    pub unsafe fn f16_rows_avx512(src: &[u8], stride: usize, rows: usize, dst: &mut [f32]) {
        let len = dst.len() / rows;
        for (r, d) in dst.chunks_exact_mut(len).enumerate() {
            let s = src[r * stride..r * stride + 2 * len].as_ptr() as *const u16;
            let mut i = 0;
            while i + 16 <= len {
                let h = _mm256_loadu_si256(s.add(i) as *const __m256i);
                _mm512_storeu_ps(d.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
                i += 16;
            }
            f16_row_from(s, d, i);
        }
    }

    /// `f16_rows_to_f32` with AVX2 and F16C.
    ///
    /// # Safety
    /// avx2, f16c; every row's bytes lie in `src` (the caller asserts it).
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f16_rows_avx2(src: &[u8], stride: usize, rows: usize, dst: &mut [f32]) {
        let len = dst.len() / rows;
        for (r, d) in dst.chunks_exact_mut(len).enumerate() {
            f16_row_from(
                src[r * stride..r * stride + 2 * len].as_ptr() as *const u16,
                d,
                0,
            );
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        let mut s = hsum256(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    /// 4 rows × `T` ≤ 3 vectors in one pass: at 3, 12 accumulators + 3 x vectors + 1 row =
    /// 16 ymm. Each sum is 8 lanes over k then `hsum256` then the tail, whatever `T`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4xt_avx2<const T: usize>(rows: [&[f32]; 4], xs: [&[f32]; T]) -> [[f32; T]; 4] {
        let k = rows[0].len();
        for rr in rows {
            assert!(rr.len() == k);
        }
        for xx in xs {
            assert!(xx.len() == k);
        }
        let r: [*const f32; 4] = std::array::from_fn(|i| rows[i].as_ptr());
        let x: [*const f32; T] = std::array::from_fn(|i| xs[i].as_ptr());
        let mut acc = [[_mm256_setzero_ps(); T]; 4];
        let mut i = 0;
        while i + 8 <= k {
            let xv: [__m256; T] = std::array::from_fn(|t| _mm256_loadu_ps(x[t].add(i)));
            for rr in 0..4 {
                let rv = _mm256_loadu_ps(r[rr].add(i));
                for t in 0..T {
                    acc[rr][t] = _mm256_fmadd_ps(rv, xv[t], acc[rr][t]);
                }
            }
            i += 8;
        }
        let mut out = [[0f32; T]; 4];
        for rr in 0..4 {
            for t in 0..T {
                let mut s = hsum256(acc[rr][t]);
                for j in i..k {
                    s += *r[rr].add(j) * *x[t].add(j);
                }
                out[rr][t] = s;
            }
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn bf16_to_f32_avx512(src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        let s = src.as_ptr() as *const u16;
        let d = dst.as_mut_ptr();
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm256_loadu_si256(s.add(i) as *const __m256i);
            let w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            _mm512_storeu_ps(d.add(i), _mm512_castsi512_ps(w));
            i += 16;
        }
        while i < n {
            *d.add(i) = f32::from_bits((std::ptr::read_unaligned(s.add(i)) as u32) << 16);
            i += 1;
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tail_mask(rem: usize) -> __mmask16 {
        ((1u32 << rem) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                acc1,
            );
            i += 32;
        }
        while i < n {
            let m = tail_mask((n - i).min(16));
            acc0 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                acc0,
            );
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4x4_avx512(rows: [&[f32]; 4], xs: [&[f32]; 4]) -> [[f32; 4]; 4] {
        let k = rows[0].len();
        for i in 0..4 {
            assert!(rows[i].len() == k && xs[i].len() == k);
        }
        let r: [*const f32; 4] = std::array::from_fn(|i| rows[i].as_ptr());
        let x: [*const f32; 4] = std::array::from_fn(|i| xs[i].as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i + 16 <= k {
            let xv: [__m512; 4] = std::array::from_fn(|t| _mm512_loadu_ps(x[t].add(i)));
            for rr in 0..4 {
                let rv = _mm512_loadu_ps(r[rr].add(i));
                for t in 0..4 {
                    acc[rr][t] = _mm512_fmadd_ps(rv, xv[t], acc[rr][t]);
                }
            }
            i += 16;
        }
        if i < k {
            let m = tail_mask(k - i);
            let xv: [__m512; 4] = std::array::from_fn(|t| _mm512_maskz_loadu_ps(m, x[t].add(i)));
            for rr in 0..4 {
                let rv = _mm512_maskz_loadu_ps(m, r[rr].add(i));
                for t in 0..4 {
                    acc[rr][t] = _mm512_fmadd_ps(rv, xv[t], acc[rr][t]);
                }
            }
        }
        let mut s = [0f32; 16];
        _mm512_storeu_ps(s.as_mut_ptr(), reduce4x4(&acc));
        std::array::from_fn(|rr| std::array::from_fn(|t| s[4 * t + rr]))
    }

    /// `dot4x4_avx512`'s sums for 4 rows of 2-byte values read where they are stored (F16,
    /// or BF16 when `BF`) against `T` tokens, each 16-wide chunk widened in registers: for
    /// every row and token bit for bit what widening the rows to f32 and `dot4x4_avx512`
    /// give (the same FMA chain, zero-filled tail and `reduce4x4` tree), without the
    /// widened copy. Four conversions per 24 FMAs at T = 6 leave the FMA rate whole on
    /// Zen 4 (a C loop: 112 of 115 GFLOP/s on one core).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_half4xt_avx512<const BF: bool, const T: usize>(
        rows: [&[u8]; 4],
        xs: [&[f32]; T],
    ) -> [[f32; T]; 4] {
        let k = xs[0].len();
        for rr in rows {
            assert!(rr.len() == 2 * k);
        }
        for xx in xs {
            assert!(xx.len() == k);
        }
        let r: [*const u16; 4] = std::array::from_fn(|i| rows[i].as_ptr() as *const u16);
        let x: [*const f32; T] = std::array::from_fn(|i| xs[i].as_ptr());
        let widen = |h: __m256i| {
            if BF {
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            } else {
                _mm512_cvtph_ps(h)
            }
        };
        let mut acc = [[_mm512_setzero_ps(); T]; 4];
        let mut i = 0;
        while i + 16 <= k {
            let mut rv = [_mm512_setzero_ps(); 4];
            for (q, v) in rv.iter_mut().enumerate() {
                *v = widen(_mm256_loadu_si256(r[q].add(i) as *const __m256i));
            }
            for t in 0..T {
                let xv = _mm512_loadu_ps(x[t].add(i));
                for q in 0..4 {
                    acc[q][t] = _mm512_fmadd_ps(rv[q], xv, acc[q][t]);
                }
            }
            i += 16;
        }
        if i < k {
            let m = tail_mask(k - i);
            let mut rv = [_mm512_setzero_ps(); 4];
            for (q, v) in rv.iter_mut().enumerate() {
                let mut h = [0u16; 16];
                std::ptr::copy_nonoverlapping(r[q].add(i), h.as_mut_ptr(), k - i);
                *v = widen(_mm256_loadu_si256(h.as_ptr() as *const __m256i));
            }
            for t in 0..T {
                let xv = _mm512_maskz_loadu_ps(m, x[t].add(i));
                for q in 0..4 {
                    acc[q][t] = _mm512_fmadd_ps(rv[q], xv, acc[q][t]);
                }
            }
        }
        let mut out = [[0f32; T]; 4];
        let mut t0 = 0;
        while t0 < T {
            let mut a4 = [[_mm512_setzero_ps(); 4]; 4];
            for q in 0..4 {
                for t in t0..T.min(t0 + 4) {
                    a4[q][t - t0] = acc[q][t];
                }
            }
            let mut s = [0f32; 16];
            _mm512_storeu_ps(s.as_mut_ptr(), reduce4x4(&a4));
            for q in 0..4 {
                for t in t0..T.min(t0 + 4) {
                    out[q][t] = s[4 * (t - t0) + q];
                }
            }
            t0 += 4;
        }
        out
    }

    /// The 16 sums of a 4×4 tile of accumulators `acc[r][t]`: lane `4t + r` of the result
    /// holds the sum of `acc[r][t]`'s lanes (a transposing tree, 45 shuffles and adds where
    /// 16 separate reductions take over 100).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn reduce4x4(acc: &[[__m512; 4]; 4]) -> __m512 {
        // Per row: its four token vectors to one whose 128-bit lane t holds partial sums of
        // token t.
        let rows: [__m512; 4] = std::array::from_fn(|r| {
            let a = &acc[r];
            let s0 = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a[0], a[1]),
                _mm512_shuffle_f32x4::<0xEE>(a[0], a[1]),
            );
            let s1 = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a[2], a[3]),
                _mm512_shuffle_f32x4::<0xEE>(a[2], a[3]),
            );
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(s0, s1),
                _mm512_shuffle_f32x4::<0xDD>(s0, s1),
            )
        });
        // Within every 128-bit lane: the four rows' partial sums to one sum each.
        let u01 = _mm512_add_ps(
            _mm512_unpacklo_ps(rows[0], rows[1]),
            _mm512_unpackhi_ps(rows[0], rows[1]),
        );
        let u23 = _mm512_add_ps(
            _mm512_unpacklo_ps(rows[2], rows[3]),
            _mm512_unpackhi_ps(rows[2], rows[3]),
        );
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(
                _mm512_castps_pd(u01),
                _mm512_castps_pd(u23),
            )),
            _mm512_castpd_ps(_mm512_unpackhi_pd(
                _mm512_castps_pd(u01),
                _mm512_castps_pd(u23),
            )),
        )
    }

    /// bf16 → f32, one value (the kernels' tails).
    fn bf16_value(v: u16) -> f32 {
        f32::from_bits((v as u32) << 16)
    }

    /// f16 → f32, one value (the kernels' tails).
    fn f16_value(v: u16) -> f32 {
        half::f16::from_bits(v).to_f32()
    }

    /// Four rows of 2-byte values (bf16 or f16: `w` widens 8 of them at a pointer, `one`
    /// a single one) against f32 x, AVX2. Short rows are read one after another (one
    /// sequential stream each, which the hardware prefetcher follows: four 2 KiB rows read
    /// side by side reached a third of the memory bandwidth on Zen 4), each with two
    /// accumulators; rows of `INTERLEAVE_K` or more side by side, sharing the x loads.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows4_avx2(
        rows: [&[u8]; 4],
        x: &[f32],
        w: impl Fn(*const u16) -> __m256,
        one: impl Fn(u16) -> f32,
    ) -> [f32; 4] {
        let k = x.len();
        for row in rows {
            assert!(row.len() == 2 * k);
        }
        let r: [*const u16; 4] = std::array::from_fn(|i| rows[i].as_ptr() as *const u16);
        let px = x.as_ptr();
        let mut out = [0f32; 4];
        let mut i0 = 0;
        if k >= INTERLEAVE_K {
            let mut acc = [_mm256_setzero_ps(); 4];
            while i0 + 8 <= k {
                let xv = _mm256_loadu_ps(px.add(i0));
                for rr in 0..4 {
                    acc[rr] = _mm256_fmadd_ps(w(r[rr].add(i0)), xv, acc[rr]);
                }
                i0 += 8;
            }
            for rr in 0..4 {
                out[rr] = hsum256(acc[rr]);
            }
        }
        for (o, row) in out.iter_mut().zip(r) {
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut i = i0;
            while i + 16 <= k {
                acc[0] = _mm256_fmadd_ps(w(row.add(i)), _mm256_loadu_ps(px.add(i)), acc[0]);
                acc[1] = _mm256_fmadd_ps(w(row.add(i + 8)), _mm256_loadu_ps(px.add(i + 8)), acc[1]);
                i += 16;
            }
            if i + 8 <= k {
                acc[0] = _mm256_fmadd_ps(w(row.add(i)), _mm256_loadu_ps(px.add(i)), acc[0]);
                i += 8;
            }
            *o += hsum256(_mm256_add_ps(acc[0], acc[1]));
            for j in i..k {
                *o += one(std::ptr::read_unaligned(row.add(j))) * *px.add(j);
            }
        }
        out
    }

    /// `rows4_avx2` with 16 lanes (`w` widens 16 values).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows4_avx512(
        rows: [&[u8]; 4],
        x: &[f32],
        w: impl Fn(*const u16) -> __m512,
        one: impl Fn(u16) -> f32,
    ) -> [f32; 4] {
        let k = x.len();
        for row in rows {
            assert!(row.len() == 2 * k);
        }
        let r: [*const u16; 4] = std::array::from_fn(|i| rows[i].as_ptr() as *const u16);
        let px = x.as_ptr();
        let mut out = [0f32; 4];
        let mut i0 = 0;
        if k >= INTERLEAVE_K {
            let mut acc = [_mm512_setzero_ps(); 4];
            while i0 + 16 <= k {
                let xv = _mm512_loadu_ps(px.add(i0));
                for rr in 0..4 {
                    acc[rr] = _mm512_fmadd_ps(w(r[rr].add(i0)), xv, acc[rr]);
                }
                i0 += 16;
            }
            for rr in 0..4 {
                out[rr] = _mm512_reduce_add_ps(acc[rr]);
            }
        }
        for (o, row) in out.iter_mut().zip(r) {
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut i = i0;
            while i + 32 <= k {
                acc[0] = _mm512_fmadd_ps(w(row.add(i)), _mm512_loadu_ps(px.add(i)), acc[0]);
                acc[1] =
                    _mm512_fmadd_ps(w(row.add(i + 16)), _mm512_loadu_ps(px.add(i + 16)), acc[1]);
                i += 32;
            }
            if i + 16 <= k {
                acc[0] = _mm512_fmadd_ps(w(row.add(i)), _mm512_loadu_ps(px.add(i)), acc[0]);
                i += 16;
            }
            *o += _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
            for j in i..k {
                *o += one(std::ptr::read_unaligned(row.add(j))) * *px.add(j);
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16_rows4_avx2(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        rows4_avx2(rows, x, |p| load_bf16x8(p), bf16_value)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_rows4_avx2(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        rows4_avx2(
            rows,
            x,
            |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            f16_value,
        )
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_bf16_rows4_avx512(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let w = |p: *const u16| {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        };
        rows4_avx512(rows, x, w, bf16_value)
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_f16_rows4_avx512(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        rows4_avx512(
            rows,
            x,
            |p| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
            f16_value,
        )
    }
}

/// aarch64 NEON twins of the plain paths (four f32 lanes per vector, four accumulators).
#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    /// 8 bf16 (little-endian bytes at `p`) widened to two f32x4: the bits shifted up 16.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_bf16x8(p: *const u8) -> (float32x4_t, float32x4_t) {
        let h = vld1q_u16(p as *const u16);
        (
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
            vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
        )
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn bf16_to_f32_neon(src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        assert!(src.len() >= 2 * n);
        let mut i = 0;
        while i + 8 <= n {
            let (a, b) = load_bf16x8(src.as_ptr().add(2 * i));
            vst1q_f32(dst.as_mut_ptr().add(i), a);
            vst1q_f32(dst.as_mut_ptr().add(i + 4), b);
            i += 8;
        }
        for j in i..n {
            dst[j] =
                f32::from_bits((u16::from_le_bytes([src[2 * j], src[2 * j + 1]]) as u32) << 16);
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, c) in acc.iter_mut().enumerate() {
                *c = vfmaq_f32(
                    *c,
                    vld1q_f32(pa.add(i + 4 * k)),
                    vld1q_f32(pb.add(i + 4 * k)),
                );
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn dot4x4_neon(rows: [&[f32]; 4], xs: [&[f32]; 4]) -> [[f32; 4]; 4] {
        let k = rows[0].len();
        assert!(rows.iter().chain(xs.iter()).all(|v| v.len() == k));
        let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
        let mut i = 0;
        while i + 4 <= k {
            let xv: [float32x4_t; 4] = std::array::from_fn(|t| vld1q_f32(xs[t].as_ptr().add(i)));
            for r in 0..4 {
                let w = vld1q_f32(rows[r].as_ptr().add(i));
                for t in 0..4 {
                    acc[r][t] = vfmaq_f32(acc[r][t], w, xv[t]);
                }
            }
            i += 4;
        }
        let mut out = [[0f32; 4]; 4];
        for r in 0..4 {
            for t in 0..4 {
                let mut s = vaddvq_f32(acc[r][t]);
                for j in i..k {
                    s += rows[r][j] * xs[t][j];
                }
                out[r][t] = s;
            }
        }
        out
    }

    /// Four bf16 rows, one after another (one sequential stream each, as on x86).
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_bf16_rows4_neon(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let k = x.len();
        assert!(rows.iter().all(|r| r.len() >= 2 * k));
        let mut out = [0f32; 4];
        for (o, row) in out.iter_mut().zip(rows) {
            let mut acc = [vdupq_n_f32(0.0); 2];
            let mut i = 0;
            while i + 8 <= k {
                let (w0, w1) = load_bf16x8(row.as_ptr().add(2 * i));
                acc[0] = vfmaq_f32(acc[0], w0, vld1q_f32(x.as_ptr().add(i)));
                acc[1] = vfmaq_f32(acc[1], w1, vld1q_f32(x.as_ptr().add(i + 4)));
                i += 8;
            }
            let mut s = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
            for j in i..k {
                let w =
                    f32::from_bits((u16::from_le_bytes([row[2 * j], row[2 * j + 1]]) as u32) << 16);
                s += w * x[j];
            }
            *o = s;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 in-place F16/BF16 kernel against widening the rows and `dot4x4_avx512`,
    /// bit for bit, for every token count it is called with and k with and without a tail.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn half_rows_in_place_sum_as_the_widened_tile() {
        use crate::backend::dtype::DType;
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c")) {
            return crate::backend::cpu::skip_test("this CPU has no AVX-512 + F16C");
        }
        fn check<const BF: bool, const T: usize>(k: usize) {
            let dt = if BF { DType::BF16 } else { DType::F16 };
            let wf = crate::backend::cpu::test_values(4 * k, 21);
            let (bytes, wide) = crate::backend::cpu::test_stored(dt, &wf, 4, k);
            let xv: Vec<Vec<f32>> = (0..T)
                .map(|t| crate::backend::cpu::test_values(k, 30 + t as u64))
                .collect();
            let rows: [&[u8]; 4] = std::array::from_fn(|q| &bytes[q * 2 * k..(q + 1) * 2 * k]);
            let xs: [&[f32]; T] = std::array::from_fn(|t| &xv[t][..]);
            // SAFETY: avx512f and f16c checked (avx2 and fma come with AVX-512 here).
            let got = unsafe { x86::dot_half4xt_avx512::<BF, T>(rows, xs) };
            let wr: [&[f32]; 4] = std::array::from_fn(|q| &wide[q * k..(q + 1) * k]);
            for t in 0..T {
                // SAFETY: as above; four rows and four tokens of k values.
                let want = unsafe { x86::dot4x4_avx512(wr, [xs[t]; 4]) };
                for q in 0..4 {
                    assert_eq!(
                        got[q][t].to_bits(),
                        want[q][0].to_bits(),
                        "{dt} k={k} {q},{t}"
                    );
                }
            }
        }
        for k in [16, 37, 64, 1029] {
            check::<false, 1>(k);
            check::<false, 2>(k);
            check::<false, 3>(k);
            check::<false, 4>(k);
            check::<false, 5>(k);
            check::<false, 6>(k);
            check::<true, 6>(k);
            check::<true, 5>(k);
        }
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    /// One SIMD level's paths, called directly (the dispatcher only picks the best), against
    /// the plain ones.
    #[cfg(target_arch = "x86_64")]
    fn simd_paths_match_the_plain_path(avx512: bool) {
        // 4105: the decode kernels' long-row (side by side) loop and its tail.
        for k in [1usize, 9, 16, 31, 64, 130, 4105] {
            let rows: Vec<Vec<f32>> = (0..4).map(|r| data(k, 30 + r)).collect();
            let xs: Vec<Vec<f32>> = (0..4).map(|t| data(k, 40 + t)).collect();
            let rr = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let xx = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
            let bf: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                        .collect()
                })
                .collect();
            let bb = [&bf[0][..], &bf[1][..], &bf[2][..], &bf[3][..]];
            let mut want4 = [[0f32; 4]; 4];
            for r in 0..4 {
                for t in 0..4 {
                    want4[r][t] = dot_plain(rr[r], xx[t]);
                }
            }
            let plain: Vec<f32> = bb[1]
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect();
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs()) * k as f32;
            let name = if avx512 { "avx512" } else { "avx2" };
            let mut wide = vec![0f32; k];
            // SAFETY: the callers checked this level's features.
            let (dot, bf_rows) = unsafe {
                if avx512 {
                    x86::bf16_to_f32_avx512(bb[1], &mut wide);
                    let got4 = x86::dot4x4_avx512(rr, xx);
                    for r in 0..4 {
                        for t in 0..4 {
                            assert!(close(got4[r][t], want4[r][t]), "dot4x4 k={k}");
                        }
                    }
                    (
                        x86::dot_avx512(rr[0], xx[0]),
                        x86::dot_bf16_rows4_avx512(bb, xx[0]),
                    )
                } else {
                    x86::bf16_to_f32_avx2(bb[1], &mut wide);
                    (
                        x86::dot_avx2(rr[0], xx[0]),
                        x86::dot_bf16_rows4_avx2(bb, xx[0]),
                    )
                }
            };
            assert!(close(dot, want4[0][0]), "{name} dot k={k}");
            // SAFETY: both x86 levels have avx2 and fma (checked by the callers).
            let got3 = unsafe { x86::dot4xt_avx2(rr, [xx[1], xx[2], xx[3]]) };
            for r in 0..4 {
                for t in 0..3 {
                    assert!(close(got3[r][t], want4[r][t + 1]), "dot4x3 k={k}");
                }
            }
            // The one- and two-token tails give the full call's sums bit for bit.
            // SAFETY: as above.
            let (got1, got2) = unsafe {
                (
                    x86::dot4xt_avx2(rr, [xx[3]]),
                    x86::dot4xt_avx2(rr, [xx[1], xx[2]]),
                )
            };
            for r in 0..4 {
                assert_eq!(got1[r][0].to_bits(), got3[r][2].to_bits(), "dot4x1 k={k}");
                for t in 0..2 {
                    assert_eq!(got2[r][t].to_bits(), got3[r][t].to_bits(), "dot4x2 k={k}");
                }
            }
            assert_eq!(wide, plain, "{name} bf16 widening k={k}");
            // f16 widening is exact: every value of the row, bit for bit, NaN and
            // infinities included.
            let hb: Vec<u8> = (0..k)
                .flat_map(|i| ((i as u16).wrapping_mul(40503) ^ 0x7C00).to_le_bytes())
                .collect();
            let (mut got_h, mut want_h) = (vec![0f32; k], vec![1f32; k]);
            // SAFETY: the callers checked avx2 and f16c (and avx512f for `avx512`); one row
            // of k values.
            unsafe {
                if avx512 {
                    x86::f16_rows_avx512(&hb, 0, 1, &mut got_h)
                } else {
                    x86::f16_rows_avx2(&hb, 0, 1, &mut got_h)
                }
            };
            f16_to_f32_plain(&hb, &mut want_h);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got_h), bits(&want_h), "{name} f16 widening k={k}");
            assert!(
                close(bf_rows[1], dot_plain(&wide, xx[0])),
                "{name} bf16 k={k}"
            );
            // f16 rows: against the plain f16 kernel (half's conversion).
            let hf: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                        .collect()
                })
                .collect();
            let hh = [&hf[0][..], &hf[1][..], &hf[2][..], &hf[3][..]];
            let want_h = dot_f16_rows4_plain(hh, xx[0]);
            // SAFETY: the callers checked this level's features (F16C comes with both).
            let got_h = unsafe {
                if avx512 {
                    x86::dot_f16_rows4_avx512(hh, xx[0])
                } else {
                    x86::dot_f16_rows4_avx2(hh, xx[0])
                }
            };
            for r in 0..4 {
                assert!(
                    close(got_h[r], want_h[r]),
                    "{name} f16 row {r} k={k}: {} vs {}",
                    got_h[r],
                    want_h[r]
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_paths_match_the_plain_path() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA + F16C");
        }
        simd_paths_match_the_plain_path(false);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_paths_match_the_plain_path() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c")) {
            return crate::backend::cpu::skip_test("this CPU has no AVX-512F + F16C");
        }
        simd_paths_match_the_plain_path(true);
    }

    /// The NEON paths, called directly, against the plain ones (as the x86 levels above).
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_paths_match_the_plain_path() {
        if !std::arch::is_aarch64_feature_detected!("neon") {
            return crate::backend::cpu::skip_test("this CPU has no NEON");
        }
        for k in [1usize, 9, 16, 31, 64, 130] {
            let rows: Vec<Vec<f32>> = (0..4).map(|r| data(k, 30 + r)).collect();
            let xs: Vec<Vec<f32>> = (0..4).map(|t| data(k, 40 + t)).collect();
            let rr = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let xx = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
            let bf: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                        .collect()
                })
                .collect();
            let bb = [&bf[0][..], &bf[1][..], &bf[2][..], &bf[3][..]];
            let plain: Vec<f32> = bb[1]
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect();
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs()) * k as f32;
            let mut wide = vec![0f32; k];
            // SAFETY: neon was detected above.
            let (dot, got4, bf_rows) = unsafe {
                arm::bf16_to_f32_neon(bb[1], &mut wide);
                (
                    arm::dot_neon(rr[0], xx[0]),
                    arm::dot4x4_neon(rr, xx),
                    arm::dot_bf16_rows4_neon(bb, xx[0]),
                )
            };
            assert!(close(dot, dot_plain(rr[0], xx[0])), "neon dot k={k}");
            for r in 0..4 {
                for t in 0..4 {
                    assert!(
                        close(got4[r][t], dot_plain(rr[r], xx[t])),
                        "neon dot4x4 k={k}"
                    );
                }
            }
            assert_eq!(wide, plain, "neon bf16 widening k={k}");
            for r in 0..4 {
                let w: Vec<f32> = bb[r]
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect();
                assert!(close(bf_rows[r], dot_plain(&w, xx[0])), "neon bf16 k={k}");
            }
        }
    }

    #[test]
    fn simd_dots_match_plain_sums_for_ragged_lengths() {
        for k in [1, 7, 16, 17, 33, 100, 257] {
            let a = data(k, 1);
            let b = data(k, 2);
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4 * k as f64, "k={k}");
            let rows: Vec<Vec<f32>> = (0..4).map(|r| data(k, 10 + r)).collect();
            let xs: Vec<Vec<f32>> = (0..4).map(|t| data(k, 20 + t)).collect();
            let got = dot4x4(
                [&rows[0], &rows[1], &rows[2], &rows[3]],
                [&xs[0], &xs[1], &xs[2], &xs[3]],
            );
            for r in 0..4 {
                for t in 0..4 {
                    let w: f64 = rows[r]
                        .iter()
                        .zip(&xs[t])
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum();
                    assert!((got[r][t] as f64 - w).abs() < 1e-4 * k as f64);
                }
            }
            let bf: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                        .collect()
                })
                .collect();
            let got = dot_bf16_rows4([&bf[0], &bf[1], &bf[2], &bf[3]], &xs[0]);
            for r in 0..4 {
                let mut wide = vec![0f32; k];
                bf16_to_f32(&bf[r], &mut wide);
                let w: f64 = wide
                    .iter()
                    .zip(&xs[0])
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum();
                assert!((got[r] as f64 - w).abs() < 1e-4 * k as f64);
            }
        }
    }
}
