//! Q4_0 weights interleaved 16 rows at a time, built once when a model loads
//! (`interleave_q4_0`), for decode on x86 (AVX-512 VNNI and AVX2): the rows of a group
//! side by side, one 32-bit lane per row, so one token's 4 quantized activation bytes,
//! broadcast, meet the next 4 quants of all 16 rows in one instruction, the block scales of
//! the 16 rows convert in one, and the 16 results leave in one store. The stored layout
//! (one row's blocks after another) takes a cross-lane shuffle per block pair, a scale
//! gather and a horizontal sum per row: about 3× the work at the same bytes, which made
//! Q4_0 decode compute-bound at 0.8× llama.cpp (which repacks Q4_0 the same way at load).
//!
//! Layout: group g (rows 16g..16g+16; missing rows of the last group are zero), block b at
//! `(g·nb + b)·288`: the 16 rows' f16 scales (32 bytes), then four chunks of 64 bytes:
//! chunk c holds, for each row i, that row's stored quant bytes 4c..4c+4 at `64c + 4i`. A
//! stored Q4_0 byte j carries quants j (low nibble) and j + 16 (high nibble), so the low
//! nibbles of chunk c multiply activations 4c..4c+4 and the high ones 16+4c..16+4c+4.
//!
//! The stored rows stay where they were (the prefill packer, the embedding lookup and
//! every other SIMD level read them), so the interleaved copy is only ever an accelerator:
//! results equal `quant::dot_row_q8` on the stored rows up to f32 summation order.

use super::quant::ActsRef;
use crate::backend::DType;

/// Rows per interleaved group.
pub const ROWS: usize = 16;

/// Bytes of one block of one group: 16 f16 scales and 16 × 16 quant bytes.
pub const GROUP_BLOCK: usize = 2 * ROWS + 16 * ROWS;

/// Whether this CPU has a decode kernel for interleaved weights (the SIMD level, with
/// `NEMO_SIMD`, decides).
pub fn usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::vnni() || super::simd::avx2_f16c()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a matrix of `dtype` with `cols` columns is worth an interleaved copy here.
pub fn wanted(dtype: DType, cols: usize) -> bool {
    dtype == DType::Q4_0 && cols > 0 && cols.is_multiple_of(32) && usable()
}

/// The interleaved copy of a Q4_0 matrix of `rows` × `cols` stored in `data`.
pub fn interleave_q4_0(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(cols.is_multiple_of(32), "interleave_q4_0: cols {cols}");
    let nb = cols / 32;
    let rb = 18 * nb;
    assert_eq!(data.len(), rows * rb, "interleave_q4_0: bytes");
    let groups = rows.div_ceil(ROWS);
    let mut out = vec![0u8; groups * nb * GROUP_BLOCK];
    for (g, dst) in out.chunks_exact_mut(nb * GROUP_BLOCK).enumerate() {
        for i in 0..ROWS.min(rows - g * ROWS) {
            let row = &data[(g * ROWS + i) * rb..(g * ROWS + i + 1) * rb];
            for (b, blk) in row.chunks_exact(18).enumerate() {
                let d = &mut dst[b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
                d[2 * i..2 * i + 2].copy_from_slice(&blk[..2]);
                for c in 0..4 {
                    let at = 2 * ROWS + 64 * c + 4 * i;
                    d[at..at + 4].copy_from_slice(&blk[2 + 4 * c..6 + 4 * c]);
                }
            }
        }
    }
    out
}

/// `out[r] = Σ row r · x` for the rows of an interleaved Q4_0 matrix whose groups are
/// `groups` (whole groups, `nb` blocks each) and `out.len()` rows (at most 16 per group:
/// the last group may be partial). Only when `usable()`.
pub fn gemv(groups: &[u8], nb: usize, x: &ActsRef<'_>, out: &mut [f32]) {
    assert_eq!(groups.len(), out.len().div_ceil(ROWS) * nb * GROUP_BLOCK);
    assert!(x.qs.len() >= 32 * nb && x.d.len() >= nb && x.sum.len() >= nb);
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::vnni() {
            // SAFETY: the AVX-512 features were detected at run time; lengths checked above.
            return unsafe { x86::gemv_vnni(groups, nb, x, out) };
        }
        if super::simd::avx2_f16c() {
            // SAFETY: avx2, fma and f16c were detected at run time; lengths checked above.
            return unsafe { x86::gemv_avx2(groups, nb, x, out) };
        }
    }
    unreachable!("interleave::gemv without a kernel for this CPU");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActsRef, GROUP_BLOCK, ROWS};
    use std::arch::x86_64::*;

    /// One zmm lane per row: per block, 8 `vpdpbusd` of the nibbles (unsigned) against the
    /// broadcast activation dwords in two chains, the first started at −8·Σx (Q4_0's
    /// offset, in integers), then one FMA with the 16 rows' scales times d_x.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    pub(super) unsafe fn gemv_vnni(groups: &[u8], nb: usize, x: &ActsRef<'_>, out: &mut [f32]) {
        let low = _mm512_set1_epi8(0x0F);
        let (xq, xd, xs) = (x.qs.as_ptr() as *const i32, x.d.as_ptr(), x.sum.as_ptr());
        for (g, o) in out.chunks_mut(ROWS).enumerate() {
            let gp = groups.as_ptr().add(g * nb * GROUP_BLOCK);
            let mut acc = _mm512_setzero_ps();
            for b in 0..nb {
                let p = gp.add(b * GROUP_BLOCK);
                let xb = xq.add(8 * b);
                let mut lo = _mm512_set1_epi32(-8 * *xs.add(b));
                let mut hi = _mm512_setzero_si512();
                for c in 0..4 {
                    let q = _mm512_loadu_si512(p.add(2 * ROWS + 64 * c) as *const __m512i);
                    let ql = _mm512_and_si512(q, low);
                    let qh = _mm512_and_si512(_mm512_srli_epi16(q, 4), low);
                    lo = _mm512_dpbusd_epi32(lo, ql, _mm512_set1_epi32(*xb.add(c)));
                    hi = _mm512_dpbusd_epi32(hi, qh, _mm512_set1_epi32(*xb.add(4 + c)));
                }
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                let s = _mm512_mul_ps(d, _mm512_set1_ps(*xd.add(b)));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi)), s, acc);
            }
            if o.len() == ROWS {
                _mm512_storeu_ps(o.as_mut_ptr(), acc);
            } else {
                let mask = (1u16 << o.len()) - 1;
                _mm512_mask_storeu_ps(o.as_mut_ptr(), mask, acc);
            }
        }
    }

    /// One ymm lane per row, the group's two halves of 8 rows side by side: per block and
    /// half, 8 `maddubs` (nibble × activation byte pairs) summed in i16 (at most
    /// 8 · 2 · 15 · 128 = 30720, no overflow), one `madd` to i32, −8·Σx, then one FMA with
    /// the 8 rows' scales times d_x.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_avx2(groups: &[u8], nb: usize, x: &ActsRef<'_>, out: &mut [f32]) {
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let (xq, xd, xs) = (x.qs.as_ptr() as *const i32, x.d.as_ptr(), x.sum.as_ptr());
        for (g, o) in out.chunks_mut(ROWS).enumerate() {
            let gp = groups.as_ptr().add(g * nb * GROUP_BLOCK);
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for b in 0..nb {
                let p = gp.add(b * GROUP_BLOCK);
                let xb = xq.add(8 * b);
                let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for c in 0..4 {
                    let xl = _mm256_set1_epi32(*xb.add(c));
                    let xh = _mm256_set1_epi32(*xb.add(4 + c));
                    let q0 = _mm256_loadu_si256(p.add(2 * ROWS + 64 * c) as *const __m256i);
                    let q1 = _mm256_loadu_si256(p.add(2 * ROWS + 64 * c + 32) as *const __m256i);
                    let l0 = _mm256_maddubs_epi16(_mm256_and_si256(q0, low), xl);
                    let h0 =
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q0, 4), low), xh);
                    let l1 = _mm256_maddubs_epi16(_mm256_and_si256(q1, low), xl);
                    let h1 =
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q1, 4), low), xh);
                    s0 = _mm256_add_epi16(s0, _mm256_add_epi16(l0, h0));
                    s1 = _mm256_add_epi16(s1, _mm256_add_epi16(l1, h1));
                }
                let off = _mm256_set1_epi32(8 * *xs.add(b));
                let i0 = _mm256_sub_epi32(_mm256_madd_epi16(s0, ones), off);
                let i1 = _mm256_sub_epi32(_mm256_madd_epi16(s1, ones), off);
                let dx = _mm256_set1_ps(*xd.add(b));
                let d0 = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                let d1 = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
                acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(d0, dx), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(d1, dx), acc1);
            }
            let mut lanes = [0f32; ROWS];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc0);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc1);
            o.copy_from_slice(&lanes[..o.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::{self, quantize_acts};

    use crate::backend::cpu::test_values as pseudo;

    /// The interleaved copy holds each row's scales and quant bytes where the layout says.
    #[test]
    fn interleaving_places_every_byte() {
        let (rows, nb) = (19, 3);
        let data: Vec<u8> = (0..rows * 18 * nb).map(|i| (i * 7 % 251) as u8).collect();
        let p = interleave_q4_0(&data, rows, 32 * nb);
        assert_eq!(p.len(), 2 * nb * GROUP_BLOCK);
        for r in 0..32 {
            let (g, i) = (r / ROWS, r % ROWS);
            for b in 0..nb {
                let d = &p[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
                let blk = (r < rows).then(|| &data[(r * nb + b) * 18..][..18]);
                assert_eq!(&d[2 * i..2 * i + 2], blk.map_or(&[0u8, 0][..], |k| &k[..2]));
                for j in 0..16 {
                    let got = d[2 * ROWS + 64 * (j / 4) + 4 * i + j % 4];
                    assert_eq!(
                        got,
                        blk.map_or(0, |k| k[2 + j]),
                        "row {r} block {b} byte {j}"
                    );
                }
            }
        }
    }

    /// `kernel` against the plain decode dot on the stored rows, for whole and partial
    /// groups and odd block counts.
    fn matches_the_plain_dot(level: &str, kernel: impl Fn(&[u8], usize, &ActsRef<'_>, &mut [f32])) {
        for (rows, nb) in [(16, 1), (5, 3), (37, 7), (64, 32)] {
            let k = 32 * nb;
            let mut data = vec![0u8; rows * 18 * nb];
            for (r, row) in data.chunks_exact_mut(18 * nb).enumerate() {
                quant::quantize_row(DType::Q4_0, &pseudo(k, 100 + r as u64), row);
            }
            let acts = quantize_acts(&pseudo(k, 7));
            let p = interleave_q4_0(&data, rows, k);
            let mut got = vec![f32::NAN; rows];
            kernel(&p, nb, &acts.view(), &mut got);
            let mut w = vec![0f32; k];
            for (r, row) in data.chunks_exact(18 * nb).enumerate() {
                let want = quant::dot_row_q8_plain(DType::Q4_0, row, &acts.view());
                // The scale of the terms: Σ|w|·|x̂|.
                quant::dequantize_row(DType::Q4_0, row, &mut w);
                let mag: f32 = (0..k)
                    .map(|i| (w[i] * acts.qs[i] as f32 * acts.d[i / 32]).abs())
                    .sum();
                assert!(
                    (got[r] - want).abs() <= 1e-5 * (1.0 + mag),
                    "{level}: rows {rows} nb {nb} row {r}: {} vs {want}",
                    got[r]
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_gemv_matches_the_plain_dot() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA + F16C");
        }
        // SAFETY: the features were detected above; the kernel's lengths hold by
        // construction (interleave_q4_0 of these rows, quantize_acts of k values).
        matches_the_plain_dot("avx2", |p, nb, x, out| unsafe {
            x86::gemv_avx2(p, nb, x, out)
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_gemv_matches_the_plain_dot() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("f16c"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX-512 VNNI");
        }
        // SAFETY: as above.
        matches_the_plain_dot("vnni", |p, nb, x, out| unsafe {
            x86::gemv_vnni(p, nb, x, out)
        });
    }

    /// The dispatching entry point at this process's level.
    #[test]
    fn gemv_at_this_level_matches_the_plain_dot() {
        if !usable() {
            return crate::backend::cpu::skip_test("no interleaved Q4_0 kernel on this CPU");
        }
        matches_the_plain_dot("dispatch", gemv);
    }
}
