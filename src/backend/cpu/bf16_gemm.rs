//! BF16 weights' prefill in bf16 products: `out = x · Wᵀ` for n > 1 with x rounded to bf16
//! (round to nearest even) and `vdpbf16ps` (AVX-512 BF16: two bf16 products summed into an
//! f32 lane per step, exact products, f32 sums), the weights read in place from the file.
//!
//! Why: the f32 path widens the weights and multiplies in f32, whose FMA peak on a Zen 4
//! core (117 GFLOP/s) is half of `vdpbf16ps`'s (234); llama.cpp multiplies BF16 models in
//! bf16 and was 2.1× faster at prefill on a 280M Nemotron-H. Rounding x to bf16 is what
//! transformers and vLLM do when they run a bf16 model (their activations are bf16); the
//! sums stay f32 here. It is the one place where nemo's CPU math leaves "f32 from the stored
//! weights", so it can be turned off: `NEMO_MATMUL=exact` (or `set_exact(true)`, which the
//! parity tests use) keeps the f32 path. Decode (n == 1) is memory-bound and stays f32.
//!
//! Tested against a plain loop over the same bf16-rounded x (summation order only), and at
//! the model level against transformers: no further from the f32 reference than
//! transformers' own bf16 run (tests/parity.rs).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use super::matrix::{block_rows, MatRef, OutPtr};
use super::simd;
use crate::backend::dtype::DType;

/// 0: not set (the environment decides), 1: exact (f32 activations), 2: bf16 activations.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Keep BF16 prefill in f32 (`true`) or let it use bf16 products where the CPU has them
/// (`false`), overriding `NEMO_MATMUL`. For tests that compare against f32 references.
pub fn set_exact(exact: bool) {
    OVERRIDE.store(if exact { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether BF16 prefill runs here: AVX-512 BF16 at the AVX-512 level (`NEMO_SIMD=avx2`
/// turns it off with the rest of AVX-512), and neither `NEMO_MATMUL=exact` nor
/// `set_exact(true)`.
pub fn enabled() -> bool {
    static ENV_EXACT: OnceLock<bool> = OnceLock::new();
    let exact = match OVERRIDE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            *ENV_EXACT.get_or_init(|| std::env::var("NEMO_MATMUL").ok().as_deref() == Some("exact"))
        }
    };
    !exact && available()
}

/// Whether this CPU (at the chosen SIMD level) has the bf16 dot product.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| simd::level() == simd::Level::Avx512 && detect())
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// `x` rounded to bf16 (nearest even), each row padded with zeros to `kp` elements.
pub fn round_rows(x: &[f32], n: usize, kp: usize) -> Vec<u16> {
    let k = x.len() / n.max(1);
    let mut xb = vec![0u16; n * kp];
    for (src, dst) in x.chunks_exact(k.max(1)).zip(xb.chunks_exact_mut(kp.max(1))) {
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: avx512f, avx512bw and avx512bf16 were detected at run time.
            unsafe { x86::round_row(src, &mut dst[..k]) };
            continue;
        }
        for (d, s) in dst.iter_mut().zip(src) {
            *d = half::bf16::from_f32(*s).to_bits();
        }
    }
    xb
}

/// `out = x · Wᵀ` for BF16 `w` and n > 1, in bf16 products. Call only when `enabled()`.
pub fn matmul(x: &[f32], n: usize, w: MatRef<'_>, out: &mut [f32]) {
    matmul_many(x, n, &mut [(w, out)]);
}

/// `matmul` of several BF16 matrices sharing x (q, k and v; gate and up), x rounded once.
pub fn matmul_many(x: &[f32], n: usize, parts: &mut [(MatRef<'_>, &mut [f32])]) {
    let Some((w0, _)) = parts.first() else { return };
    let k = w0.cols;
    for (w, _) in parts.iter() {
        assert!(
            w.dtype == DType::BF16 && w.cols == k && available(),
            "bf16_gemm::matmul"
        );
    }
    let kp = k.div_ceil(32) * 32;
    let xb = round_rows(x, n, kp);
    for (w, out) in parts.iter_mut() {
        let (w, m) = (*w, w.rows);
        let br = block_rows(m, w.row_bytes());
        let outp = OutPtr(out.as_mut_ptr());
        let run = |b: usize| {
            let r0 = b * br;
            let r1 = (r0 + br).min(m);
            let o: OutPtr = outp;
            // SAFETY: `available()` checked the features; rows r0..r1 of the `[n, m]` output
            // belong to this task; x rows are kp ≥ k elements, zero beyond k.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                x86::block(&xb, kp, n, w, r0, r1, o.0)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (&xb, kp, r1, o);
        };
        let nblocks = m.div_ceil(br);
        super::team::par_for(nblocks, &run);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::simd::x86::reduce4x4;
    use super::MatRef;

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
        let k = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= k {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
            i += 16;
        }
        for j in i..k {
            dst[j] = half::bf16::from_f32(src[j]).to_bits();
        }
    }

    /// 32 bf16 values from `p` (unaligned).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn load(p: *const u16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }

    /// Four bf16 rows `w` (k elements) against four bf16 x rows (kp ≥ k elements, zero
    /// beyond k): lane `4t + r` of the result is `w[r] · x[t]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile(w: [*const u16; 4], x: [*const u16; 4], k: usize) -> __m512 {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i + 32 <= k {
            let xv: [__m512bh; 4] = std::array::from_fn(|t| load(x[t].add(i)));
            for r in 0..4 {
                let wv = load(w[r].add(i));
                for t in 0..4 {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
                }
            }
            i += 32;
        }
        if i < k {
            // The tail: masked weight loads (what lies past the row may be anything, even
            // NaN); x is zero there.
            let m: __mmask32 = ((1u64 << (k - i)) - 1) as __mmask32;
            let xv: [__m512bh; 4] = std::array::from_fn(|t| load(x[t].add(i)));
            for r in 0..4 {
                let wv: __m512bh = std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_maskz_loadu_epi16(m, w[r].add(i) as *const i16),
                );
                for t in 0..4 {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
                }
            }
        }
        reduce4x4(&acc)
    }

    /// Rows `r0..r1` of `w` against every token of `xb` (`[n, kp]` bf16), into the `[n, m]`
    /// output: tokens in passes whose x stays in L2, four rows by four tokens at a time.
    ///
    /// # Safety
    /// avx512f, avx512bw and avx512bf16 are present; `out` is `[n, w.rows]` and no other
    /// thread touches its columns r0..r1 during the call.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn block(
        xb: &[u16],
        kp: usize,
        n: usize,
        w: MatRef<'_>,
        r0: usize,
        r1: usize,
        out: *mut f32,
    ) {
        let (m, k) = (w.rows, w.cols);
        assert!(xb.len() == n * kp && kp >= k && r1 <= m && w.data.len() >= m * 2 * k);
        let row = |r: usize| w.data.as_ptr().add(r * 2 * k) as *const u16;
        let xr = |t: usize| xb.as_ptr().add(t * kp);
        let tb = ((256 << 10) / (2 * kp).max(1)).clamp(4, 512) / 4 * 4;
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + tb).min(n);
            let mut r = r0;
            while r < r1 {
                let rows: [*const u16; 4] = std::array::from_fn(|a| row((r + a).min(r1 - 1)));
                let nr = (r1 - r).min(4);
                let mut t = t0;
                while t < t1 {
                    let xs: [*const u16; 4] = std::array::from_fn(|b| xr((t + b).min(t1 - 1)));
                    let v = tile(rows, xs, k);
                    let nt = (t1 - t).min(4);
                    if nr == 4 {
                        for b in 0..nt {
                            let q = match b {
                                0 => _mm512_extractf32x4_ps::<0>(v),
                                1 => _mm512_extractf32x4_ps::<1>(v),
                                2 => _mm512_extractf32x4_ps::<2>(v),
                                _ => _mm512_extractf32x4_ps::<3>(v),
                            };
                            _mm_storeu_ps(out.add((t + b) * m + r), q);
                        }
                    } else {
                        let mut s = [0f32; 16];
                        _mm512_storeu_ps(s.as_mut_ptr(), v);
                        for b in 0..nt {
                            for a in 0..nr {
                                *out.add((t + b) * m + r + a) = s[4 * b + a];
                            }
                        }
                    }
                    t += 4;
                }
                r += 4;
            }
            t0 = t1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::cpu::test_values as data;

    /// The plain oracle: bf16(x) · w in f64.
    fn reference(x: &[f32], n: usize, w: &[u16], m: usize) -> Vec<f64> {
        let k = x.len() / n;
        let mut out = vec![0f64; n * m];
        for t in 0..n {
            for r in 0..m {
                out[t * m + r] = (0..k)
                    .map(|i| {
                        let xv = half::bf16::from_f32(x[t * k + i]).to_f64();
                        let wv = half::bf16::from_bits(w[r * k + i]).to_f64();
                        xv * wv
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn bf16_products_match_the_plain_loop_on_ragged_shapes() {
        if !available() {
            return crate::backend::cpu::skip_test("this CPU has no AVX-512 BF16");
        }
        // Ragged k (tails of 1..31 elements, shorter than one step), rows and tokens not
        // multiples of 4, more tokens than one pass (k = 4100: 32 tokens per pass), and
        // a row count that splits into several blocks on the team.
        for (k, m, n) in [
            (1, 3, 2),
            (31, 5, 7),
            (64, 4, 4),
            (97, 9, 6),
            (4100, 6, 70),
            (256, 700, 5),
        ] {
            let x = data(n * k, k as u64);
            let wf = data(m * k, 7 + m as u64);
            let w: Vec<u16> = wf
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_bits())
                .collect();
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mat = MatRef {
                dtype: DType::BF16,
                data: &bytes,
                rows: m,
                cols: k,
                scale: super::super::WeightScale::None,
                interleaved: None,
            };
            let mut got = vec![f32::NAN; n * m];
            matmul(&x, n, mat, &mut got);
            let want = reference(&x, n, &w, m);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * (1.0 + k as f64),
                    "k={k} m={m} n={n} out[{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn rounding_x_is_round_to_nearest_even() {
        let x: Vec<f32> = data(100, 3)
            .into_iter()
            .chain([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0, 65504.0])
            .collect();
        let got = round_rows(&x, 2, 64);
        for t in 0..2 {
            for i in 0..64 {
                let want = if i < 52 {
                    half::bf16::from_f32(x[t * 52 + i]).to_bits()
                } else {
                    0
                };
                assert_eq!(got[t * 64 + i], want, "row {t} element {i}");
            }
        }
    }
}
