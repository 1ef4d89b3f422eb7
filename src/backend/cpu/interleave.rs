//! Q4_0, Q4_1 and Q4_K weights interleaved 16 rows at a time, built once when a model loads
//! (`interleave`), for decode on x86 (AVX-512 VNNI and AVX2): the rows of a group side by
//! side, one 32-bit lane per row, so one token's 4 quantized activation bytes, broadcast,
//! meet the next 4 quants of all 16 rows in one instruction, the scales of the 16 rows
//! convert in one, and the 16 results leave in one store. The stored layout (one row's
//! blocks after another) takes cross-lane shuffles, scale gathers and a horizontal sum per
//! row: about 3× the work at the same bytes, which made Q4_0 decode compute-bound at 0.8×
//! llama.cpp (which repacks Q4_0 and Q4_K the same way at load).
//!
//! Q4_0 layout: group g (rows 16g..16g+16; missing rows of the last group are zero), block
//! b at `(g·nb + b)·288`: the 16 rows' f16 scales (32 bytes), then four chunks of 64 bytes:
//! chunk c holds, for each row i, that row's stored quant bytes 4c..4c+4 at `64c + 4i`. A
//! stored Q4_0 byte j carries quants j (low nibble) and j + 16 (high nibble), so the low
//! nibbles of chunk c multiply activations 4c..4c+4 and the high ones 16+4c..16+4c+4.
//!
//! Q4_1 layout: as Q4_0's with the 16 rows' f16 mins (32 bytes) between the scales and the
//! chunks (`Q1_MIN`, quants at `Q1_QS`): block b of group g at `(g·nb + b)·320`.
//!
//! Q4_K layout: super-block s of group g at `(g·nsb + s)·2368`: the 16 rows' d (f16, 32
//! bytes), dmin (f16, 32), the 8 sub-block scales unpacked to bytes (`16j + i`, 128) and
//! mins (128), then 32 chunks of 64 bytes: chunk (p, c) at `320 + 64·(8p + c)` holds row
//! i's stored quant bytes 32p + 4c..+4 at `4i`: low nibbles are values 4c..4c+4 of
//! sub-block 2p, high nibbles the same values of sub-block 2p + 1.
//!
//! The stored rows stay valid (the embedding lookup and every other SIMD level read them;
//! the loader hands their pages back, so they are read again from the page cache), so the
//! interleaved copy is only ever an accelerator: results equal `quant::dot_row_q8` on the
//! stored rows up to f32 summation order, and the prefill packs from it bit for bit what it
//! packs from the stored rows (`qgemm`).

use super::quant::ActsRef;
use crate::backend::DType;

/// Rows per interleaved group.
pub const ROWS: usize = 16;

/// Bytes of one Q4_0 block of one group: 16 f16 scales and 16 × 16 quant bytes.
pub const GROUP_BLOCK: usize = 2 * ROWS + 16 * ROWS;

/// Bytes of one Q4_1 block of one group: 16 f16 scales, 16 f16 mins and 16 × 16 quant
/// bytes.
pub const GROUP_BLOCK_1: usize = 4 * ROWS + 16 * ROWS;

/// Offsets within a Q4_1 group block: mins, quants.
pub const Q1_MIN: usize = 2 * ROWS;
pub const Q1_QS: usize = 4 * ROWS;

/// Bytes of one Q4_K super-block of one group: d and dmin (f16), 8 scales and 8 mins (u8)
/// and 128 quant bytes per row.
pub const GROUP_BLOCK_K: usize = ROWS * (2 + 2 + 8 + 8 + 128);

/// Offsets within a Q4_K group block: dmin, scales, mins, quants.
pub const K_DMIN: usize = 2 * ROWS;
pub const K_SC: usize = 4 * ROWS;
pub const K_MIN: usize = 12 * ROWS;
pub const K_QS: usize = 20 * ROWS;

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
    let typed = matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q4_K);
    typed && cols > 0 && cols.is_multiple_of(dtype.block().0) && usable()
}

/// Bytes of one group of 16 rows of a `dtype` matrix with `cols` columns.
pub fn group_bytes(dtype: DType, cols: usize) -> usize {
    match dtype {
        DType::Q4_0 => cols / 32 * GROUP_BLOCK,
        DType::Q4_1 => cols / 32 * GROUP_BLOCK_1,
        DType::Q4_K => cols / 256 * GROUP_BLOCK_K,
        _ => panic!("interleave: no interleaved layout for {dtype}"),
    }
}

/// The interleaved copy of a Q4_0, Q4_1 or Q4_K matrix of `rows` × `cols` stored in `data`.
pub fn interleave(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows.div_ceil(ROWS) * group_bytes(dtype, cols)];
    interleave_into(dtype, data, rows, cols, &mut out);
    out
}

/// `interleave` into `out` (zeroed, `rows.div_ceil(16) · group_bytes` long): a stack of
/// matrices fills one buffer without a copy per matrix.
pub fn interleave_into(dtype: DType, data: &[u8], rows: usize, cols: usize, out: &mut [u8]) {
    let (per, bytes) = dtype.block();
    assert!(cols.is_multiple_of(per), "interleave: {dtype} cols {cols}");
    let nb = cols / per;
    let rb = bytes * nb;
    assert_eq!(data.len(), rows * rb, "interleave: {dtype} bytes");
    let gb = group_bytes(dtype, cols) / nb;
    assert_eq!(
        out.len(),
        rows.div_ceil(ROWS) * nb * gb,
        "interleave: output bytes"
    );
    for (g, dst) in out.chunks_exact_mut(nb * gb).enumerate() {
        for i in 0..ROWS.min(rows - g * ROWS) {
            let row = &data[(g * ROWS + i) * rb..(g * ROWS + i + 1) * rb];
            for (b, blk) in row.chunks_exact(bytes).enumerate() {
                let d = &mut dst[b * gb..(b + 1) * gb];
                // Both start with the 16 rows' d (f16).
                d[2 * i..2 * i + 2].copy_from_slice(&blk[..2]);
                // Where row i's 4-byte quant words start, and the words.
                let (words_at, words) = if dtype == DType::Q4_0 {
                    (2 * ROWS, &blk[2..])
                } else if dtype == DType::Q4_1 {
                    d[Q1_MIN + 2 * i..Q1_MIN + 2 * i + 2].copy_from_slice(&blk[2..4]);
                    (Q1_QS, &blk[4..])
                } else {
                    d[K_DMIN + 2 * i..K_DMIN + 2 * i + 2].copy_from_slice(&blk[2..4]);
                    let (sc, mn) = super::quant::scales_mins_k4(&blk[4..16]);
                    for j in 0..8 {
                        d[K_SC + ROWS * j + i] = sc[j];
                        d[K_MIN + ROWS * j + i] = mn[j];
                    }
                    (K_QS, &blk[16..])
                };
                for (w, word) in words.chunks_exact(4).enumerate() {
                    let at = words_at + 64 * w + 4 * i;
                    d[at..at + 4].copy_from_slice(word);
                }
            }
        }
    }
}

/// `out[r] = Σ row r · x` for the rows of an interleaved `dtype` matrix of `cols` columns
/// whose groups are `groups` (whole groups) and `out.len()` rows (at most 16 per group: the
/// last group may be partial). Only when `usable()`.
pub fn gemv(dtype: DType, groups: &[u8], cols: usize, x: &ActsRef<'_>, out: &mut [f32]) {
    let (four_k, min) = (dtype == DType::Q4_K, dtype == DType::Q4_1);
    assert_eq!(
        groups.len(),
        out.len().div_ceil(ROWS) * group_bytes(dtype, cols)
    );
    let nb = cols / 32;
    assert!(x.qs.len() >= 32 * nb && x.d.len() >= nb && x.sum.len() >= nb);
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::vnni() {
            // SAFETY: the AVX-512 features were detected at run time; lengths checked above.
            return unsafe {
                if four_k {
                    x86::gemv_q4k_vnni(groups, nb / 8, x, out)
                } else if min {
                    x86::gemv_vnni::<true>(groups, nb, x, out)
                } else {
                    x86::gemv_vnni::<false>(groups, nb, x, out)
                }
            };
        }
        if super::simd::avx2_f16c() {
            // SAFETY: avx2, fma and f16c were detected at run time; lengths checked above.
            return unsafe {
                if four_k {
                    x86::gemv_q4k_avx2(groups, nb / 8, x, out)
                } else if min {
                    x86::gemv_avx2::<true>(groups, nb, x, out)
                } else {
                    x86::gemv_avx2::<false>(groups, nb, x, out)
                }
            };
        }
    }
    let _ = (four_k, min);
    unreachable!("interleave::gemv ({dtype}) without a kernel for this CPU");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{
        ActsRef, GROUP_BLOCK, GROUP_BLOCK_1, GROUP_BLOCK_K, K_DMIN, K_MIN, K_QS, K_SC, Q1_MIN,
        Q1_QS, ROWS,
    };
    use std::arch::x86_64::*;

    /// A Q4_0 (Q4_1 with `min`) group block's bytes and where its quant chunks start.
    const fn q4_layout(min: bool) -> (usize, usize) {
        if min {
            (GROUP_BLOCK_1, Q1_QS)
        } else {
            (GROUP_BLOCK, 2 * ROWS)
        }
    }

    /// Stores a group's 16 results (`o`: the group's rows, 16 or fewer for the last).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store16(o: &mut [f32], v: __m512) {
        if o.len() == ROWS {
            _mm512_storeu_ps(o.as_mut_ptr(), v);
        } else {
            _mm512_mask_storeu_ps(o.as_mut_ptr(), (1u16 << o.len()) - 1, v);
        }
    }

    /// Stores a group's two halves of 8 results (`o` as for `store16`).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store8x2(o: &mut [f32], lo: __m256, hi: __m256) {
        let mut lanes = [0f32; ROWS];
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
        o.copy_from_slice(&lanes[..o.len()]);
    }

    /// One zmm lane per row: per block, 8 `vpdpbusd` of the nibbles (unsigned) against the
    /// broadcast activation dwords in two chains, the first started at −8·Σx (Q4_0's
    /// offset, in integers), then one FMA with the 16 rows' scales times d_x. Q4_1 (`MIN`)
    /// starts both chains at 0 and adds its mins times `d_x·Σx` in a second FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    pub(super) unsafe fn gemv_vnni<const MIN: bool>(
        groups: &[u8],
        nb: usize,
        x: &ActsRef<'_>,
        out: &mut [f32],
    ) {
        let (gb, qs_at) = q4_layout(MIN);
        let low = _mm512_set1_epi8(0x0F);
        let (xq, xd, xs) = (x.qs.as_ptr() as *const i32, x.d.as_ptr(), x.sum.as_ptr());
        for (g, o) in out.chunks_mut(ROWS).enumerate() {
            let gp = groups.as_ptr().add(g * nb * gb);
            let mut acc = _mm512_setzero_ps();
            for b in 0..nb {
                let p = gp.add(b * gb);
                let xb = xq.add(8 * b);
                let mut lo = if MIN {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32(-8 * *xs.add(b))
                };
                let mut hi = _mm512_setzero_si512();
                for c in 0..4 {
                    let q = _mm512_loadu_si512(p.add(qs_at + 64 * c) as *const __m512i);
                    let ql = _mm512_and_si512(q, low);
                    let qh = _mm512_and_si512(_mm512_srli_epi16(q, 4), low);
                    lo = _mm512_dpbusd_epi32(lo, ql, _mm512_set1_epi32(*xb.add(c)));
                    hi = _mm512_dpbusd_epi32(hi, qh, _mm512_set1_epi32(*xb.add(4 + c)));
                }
                let dx = *xd.add(b);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                let s = _mm512_mul_ps(d, _mm512_set1_ps(dx));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi)), s, acc);
                if MIN {
                    let m = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(Q1_MIN) as *const __m256i));
                    acc = _mm512_fmadd_ps(m, _mm512_set1_ps(dx * *xs.add(b) as f32), acc);
                }
            }
            store16(o, acc);
        }
    }

    /// One ymm lane per row, the group's two halves of 8 rows side by side: per block and
    /// half, 8 `maddubs` (nibble × activation byte pairs) summed in i16 (at most
    /// 8 · 2 · 15 · 128 = 30720, no overflow), one `madd` to i32, −8·Σx, then one FMA with
    /// the 8 rows' scales times d_x. Q4_1 (`MIN`): no −8·Σx, a second FMA with its mins
    /// times `d_x·Σx`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_avx2<const MIN: bool>(
        groups: &[u8],
        nb: usize,
        x: &ActsRef<'_>,
        out: &mut [f32],
    ) {
        let (gb, qs_at) = q4_layout(MIN);
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let (xq, xd, xs) = (x.qs.as_ptr() as *const i32, x.d.as_ptr(), x.sum.as_ptr());
        let half = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        for (g, o) in out.chunks_mut(ROWS).enumerate() {
            let gp = groups.as_ptr().add(g * nb * gb);
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for b in 0..nb {
                let p = gp.add(b * gb);
                let xb = xq.add(8 * b);
                let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for c in 0..4 {
                    let xl = _mm256_set1_epi32(*xb.add(c));
                    let xh = _mm256_set1_epi32(*xb.add(4 + c));
                    let q0 = _mm256_loadu_si256(p.add(qs_at + 64 * c) as *const __m256i);
                    let q1 = _mm256_loadu_si256(p.add(qs_at + 64 * c + 32) as *const __m256i);
                    let l0 = _mm256_maddubs_epi16(_mm256_and_si256(q0, low), xl);
                    let h0 =
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q0, 4), low), xh);
                    let l1 = _mm256_maddubs_epi16(_mm256_and_si256(q1, low), xl);
                    let h1 =
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q1, 4), low), xh);
                    s0 = _mm256_add_epi16(s0, _mm256_add_epi16(l0, h0));
                    s1 = _mm256_add_epi16(s1, _mm256_add_epi16(l1, h1));
                }
                let (mut i0, mut i1) = (_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones));
                if !MIN {
                    let off = _mm256_set1_epi32(8 * *xs.add(b));
                    i0 = _mm256_sub_epi32(i0, off);
                    i1 = _mm256_sub_epi32(i1, off);
                }
                let dx = _mm256_set1_ps(*xd.add(b));
                let (d0, d1) = (half(p), half(p.add(16)));
                acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(d0, dx), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(d1, dx), acc1);
                if MIN {
                    let dxs = _mm256_set1_ps(*xd.add(b) * *xs.add(b) as f32);
                    acc0 = _mm256_fmadd_ps(half(p.add(Q1_MIN)), dxs, acc0);
                    acc1 = _mm256_fmadd_ps(half(p.add(Q1_MIN + 16)), dxs, acc1);
                }
            }
            store8x2(o, acc0, acc1);
        }
    }

    /// Q4_K, one zmm lane per row: per pair of sub-blocks, 8 chunks whose low nibbles
    /// (`vpdpbusd` against the first sub-block's broadcast activation dwords) and high
    /// nibbles (the second's) sum in two integer chains; per sub-block one FMA with the 16
    /// rows' `sc · d · d_x` and one with their mins `m · dmin · d_x · Σx`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    pub(super) unsafe fn gemv_q4k_vnni(
        groups: &[u8],
        nsb: usize,
        x: &ActsRef<'_>,
        out: &mut [f32],
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let (xq, xd, xs) = (x.qs.as_ptr() as *const i32, x.d.as_ptr(), x.sum.as_ptr());
        let bytes = |p: *const u8| {
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)))
        };
        for (g, o) in out.chunks_mut(ROWS).enumerate() {
            let gp = groups.as_ptr().add(g * nsb * GROUP_BLOCK_K);
            let (mut acc, mut off) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for s in 0..nsb {
                let p = gp.add(s * GROUP_BLOCK_K);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                let dm = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(K_DMIN) as *const __m256i));
                for pr in 0..4 {
                    let (j0, j1) = (2 * pr, 2 * pr + 1);
                    let (x0, x1) = (xq.add(8 * (8 * s + j0)), xq.add(8 * (8 * s + j1)));
                    let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for c in 0..8 {
                        let q =
                            _mm512_loadu_si512(p.add(K_QS + 64 * (8 * pr + c)) as *const __m512i);
                        let ql = _mm512_and_si512(q, low);
                        let qh = _mm512_and_si512(_mm512_srli_epi16(q, 4), low);
                        lo = _mm512_dpbusd_epi32(lo, ql, _mm512_set1_epi32(*x0.add(c)));
                        hi = _mm512_dpbusd_epi32(hi, qh, _mm512_set1_epi32(*x1.add(c)));
                    }
                    for (j, isum) in [(j0, lo), (j1, hi)] {
                        let b = 8 * s + j;
                        let sc = bytes(p.add(K_SC + ROWS * j));
                        let mn = bytes(p.add(K_MIN + ROWS * j));
                        let dx = *xd.add(b);
                        let e = _mm512_mul_ps(sc, _mm512_mul_ps(d, _mm512_set1_ps(dx)));
                        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), e, acc);
                        let m = _mm512_mul_ps(dm, _mm512_set1_ps(dx * *xs.add(b) as f32));
                        off = _mm512_fmadd_ps(mn, m, off);
                    }
                }
            }
            store16(o, _mm512_sub_ps(acc, off));
        }
    }

    /// Q4_K, one ymm lane per row, the group's two halves of 8 rows side by side: per
    /// sub-block and half, 8 `maddubs` summed in i16 (at most 8 · 2 · 15 · 128 = 30720),
    /// one `madd` to i32, then the FMAs of `gemv_q4k_vnni`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_q4k_avx2(
        groups: &[u8],
        nsb: usize,
        x: &ActsRef<'_>,
        out: &mut [f32],
    ) {
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let (xq, xd, xs) = (x.qs.as_ptr() as *const i32, x.d.as_ptr(), x.sum.as_ptr());
        let bytes = |p: *const u8| {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        };
        let half = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        for (g, o) in out.chunks_mut(ROWS).enumerate() {
            let gp = groups.as_ptr().add(g * nsb * GROUP_BLOCK_K);
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut off = [_mm256_setzero_ps(); 2];
            for s in 0..nsb {
                let p = gp.add(s * GROUP_BLOCK_K);
                let d = [half(p), half(p.add(16))];
                let dm = [half(p.add(K_DMIN)), half(p.add(K_DMIN + 16))];
                for pr in 0..4 {
                    let (j0, j1) = (2 * pr, 2 * pr + 1);
                    let (x0, x1) = (xq.add(8 * (8 * s + j0)), xq.add(8 * (8 * s + j1)));
                    // [half][low, high] sums in i16.
                    let mut sums = [[_mm256_setzero_si256(); 2]; 2];
                    for c in 0..8 {
                        let xl = _mm256_set1_epi32(*x0.add(c));
                        let xh = _mm256_set1_epi32(*x1.add(c));
                        for (h, sh) in sums.iter_mut().enumerate() {
                            let q = _mm256_loadu_si256(
                                p.add(K_QS + 64 * (8 * pr + c) + 32 * h) as *const __m256i
                            );
                            let l = _mm256_maddubs_epi16(_mm256_and_si256(q, low), xl);
                            let u = _mm256_maddubs_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                                xh,
                            );
                            sh[0] = _mm256_add_epi16(sh[0], l);
                            sh[1] = _mm256_add_epi16(sh[1], u);
                        }
                    }
                    for (k, j) in [j0, j1].into_iter().enumerate() {
                        let b = 8 * s + j;
                        let dx = *xd.add(b);
                        let dxs = _mm256_set1_ps(dx * *xs.add(b) as f32);
                        for h in 0..2 {
                            let isum = _mm256_madd_epi16(sums[h][k], ones);
                            let sc = bytes(p.add(K_SC + ROWS * j + 8 * h));
                            let mn = bytes(p.add(K_MIN + ROWS * j + 8 * h));
                            let e = _mm256_mul_ps(sc, _mm256_mul_ps(d[h], _mm256_set1_ps(dx)));
                            acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), e, acc[h]);
                            off[h] = _mm256_fmadd_ps(mn, _mm256_mul_ps(dm[h], dxs), off[h]);
                        }
                    }
                }
            }
            let r = |h: usize| _mm256_sub_ps(acc[h], off[h]);
            store8x2(o, r(0), r(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::{self, quantize_acts, random_blocks};
    use crate::backend::cpu::test_values as pseudo;

    /// Rows of `dt`: Q4_0 and Q4_1 quantized from values by ggml's rule, Q4_K random blocks.
    fn rows_of(dt: DType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        if dt == DType::Q4_K {
            return random_blocks(dt, rows * cols / 256, seed);
        }
        let mut data = vec![0u8; rows * dt.row_bytes(cols)];
        for (r, row) in data.chunks_exact_mut(dt.row_bytes(cols)).enumerate() {
            quant::quantize_row(dt, &pseudo(cols, seed + r as u64), row);
        }
        data
    }

    /// The interleaved copy holds each row's scales (Q4_1: and mins) and quant bytes where
    /// the layout says.
    #[test]
    fn q4_0_and_q4_1_interleaving_places_every_byte() {
        for (dt, gbk, qs_at) in [
            (DType::Q4_0, GROUP_BLOCK, 2 * ROWS),
            (DType::Q4_1, GROUP_BLOCK_1, Q1_QS),
        ] {
            let (rows, nb) = (19, 3);
            let bytes = dt.block().1;
            let head = bytes - 16;
            let data: Vec<u8> = (0..rows * bytes * nb)
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            let p = interleave(dt, &data, rows, 32 * nb);
            assert_eq!(p.len(), 2 * nb * gbk);
            for r in 0..32 {
                let (g, i) = (r / ROWS, r % ROWS);
                for b in 0..nb {
                    let d = &p[(g * nb + b) * gbk..][..gbk];
                    let blk = (r < rows).then(|| &data[(r * nb + b) * bytes..][..bytes]);
                    assert_eq!(&d[2 * i..2 * i + 2], blk.map_or(&[0u8, 0][..], |k| &k[..2]));
                    if dt == DType::Q4_1 {
                        let m = &d[Q1_MIN + 2 * i..Q1_MIN + 2 * i + 2];
                        assert_eq!(m, blk.map_or(&[0u8, 0][..], |k| &k[2..4]), "{dt} row {r}");
                    }
                    for j in 0..16 {
                        let got = d[qs_at + 64 * (j / 4) + 4 * i + j % 4];
                        assert_eq!(
                            got,
                            blk.map_or(0, |k| k[head + j]),
                            "{dt} row {r} block {b} byte {j}"
                        );
                    }
                }
            }
        }
    }

    /// Q4_K: d, dmin, the unpacked scales and mins (as `scale_min_k4` reads them) and the
    /// quant words where the layout says.
    #[test]
    fn q4_k_interleaving_places_every_byte() {
        let (rows, nsb) = (17, 2);
        let data: Vec<u8> = (0..rows * 144 * nsb)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let p = interleave(DType::Q4_K, &data, rows, 256 * nsb);
        assert_eq!(p.len(), 2 * nsb * GROUP_BLOCK_K);
        for r in 0..rows {
            let (g, i) = (r / ROWS, r % ROWS);
            for s in 0..nsb {
                let d = &p[(g * nsb + s) * GROUP_BLOCK_K..][..GROUP_BLOCK_K];
                let blk = &data[(r * nsb + s) * 144..][..144];
                assert_eq!(&d[2 * i..2 * i + 2], &blk[..2]);
                assert_eq!(&d[K_DMIN + 2 * i..K_DMIN + 2 * i + 2], &blk[2..4]);
                for j in 0..8 {
                    let (sc, m) = quant::scale_min_k4(j, &blk[4..16]);
                    assert_eq!((d[K_SC + ROWS * j + i], d[K_MIN + ROWS * j + i]), (sc, m));
                }
                for b in 0..128 {
                    let got = d[K_QS + 64 * (b / 4) + 4 * i + b % 4];
                    assert_eq!(got, blk[16 + b], "row {r} super-block {s} byte {b}");
                }
            }
        }
    }

    /// `kernel` against the plain decode dot on the stored rows, for whole and partial
    /// groups and several block counts.
    fn matches_the_plain_dot(
        level: &str,
        kernel: impl Fn(DType, &[u8], usize, &ActsRef<'_>, &mut [f32]),
    ) {
        for dt in [DType::Q4_0, DType::Q4_1, DType::Q4_K] {
            let per = dt.block().0;
            for (rows, nb) in [(16, 1), (5, 3), (37, 2), (64, 4)] {
                let k = per * nb;
                let data = rows_of(dt, rows, k, 100 + rows as u64);
                let acts = quantize_acts(&pseudo(k, 7));
                let p = interleave(dt, &data, rows, k);
                let mut got = vec![f32::NAN; rows];
                kernel(dt, &p, k, &acts.view(), &mut got);
                let mut w = vec![0f32; k];
                for (r, row) in data.chunks_exact(dt.row_bytes(k)).enumerate() {
                    let want = quant::dot_row_q8_plain(dt, row, &acts.view());
                    // The scale of the terms: Σ|w|·|x̂|.
                    quant::dequantize_row(dt, row, &mut w);
                    let mag: f32 = (0..k)
                        .map(|i| (w[i] * acts.qs[i] as f32 * acts.d[i / 32]).abs())
                        .sum();
                    assert!(
                        (got[r] - want).abs() <= 1e-5 * (1.0 + mag),
                        "{level} {dt}: rows {rows} k {k} row {r}: {} vs {want}",
                        got[r]
                    );
                }
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
        // SAFETY: the features were detected above; the kernels' lengths hold by
        // construction (`interleave` of these rows, `quantize_acts` of k values).
        matches_the_plain_dot("avx2", |dt, p, k, x, out| unsafe {
            match dt {
                DType::Q4_K => x86::gemv_q4k_avx2(p, k / 256, x, out),
                DType::Q4_1 => x86::gemv_avx2::<true>(p, k / 32, x, out),
                _ => x86::gemv_avx2::<false>(p, k / 32, x, out),
            }
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
        matches_the_plain_dot("vnni", |dt, p, k, x, out| unsafe {
            match dt {
                DType::Q4_K => x86::gemv_q4k_vnni(p, k / 256, x, out),
                DType::Q4_1 => x86::gemv_vnni::<true>(p, k / 32, x, out),
                _ => x86::gemv_vnni::<false>(p, k / 32, x, out),
            }
        });
    }

    /// The dispatching entry point at this process's level.
    #[test]
    fn gemv_at_this_level_matches_the_plain_dot() {
        if !usable() {
            return crate::backend::cpu::skip_test("no interleaved kernel on this CPU");
        }
        matches_the_plain_dot("dispatch", gemv);
    }
}
