//! ggml's block-quantized formats (GGUF weights): byte layouts and dequantization as in
//! ggml's `ggml-quants.c` reference code (`dequantize_row_*`, `quantize_row_*_ref`).
//!
//! Invariants: a row is a whole number of blocks; the f16 scales are little-endian.
//! Decode never copies weights whole into f32. For Q4_0, Q4_1 and Q8_0 matmul quantizes
//! the activations once per call into 8-bit blocks of 32 (`QuantizedActs`, ggml's Q8_0/Q8_1
//! trick) and `dot_row_q8` works in integers on the stored bytes, one f32 scale per block
//! (AVX-512 VNNI `vpdpbusd` two blocks at a time for Q4_0/Q4_1/Q8_0, else AVX2 `maddubs`,
//! a plain loop as the oracle of both). Other types go through
//! `dot_row`, which dequantizes one block at a time into a stack buffer.
//!
//! | type | elems | bytes | layout |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | f16 d, 16 B nibbles; x = (q − 8)·d, low nibbles first half |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 16 B nibbles; x = q·d + m |
//! | Q8_0 | 32 | 34 | f16 d, 32 i8; x = q·d |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 12 B 6-bit scales/mins, 128 B nibbles |
//! | Q5_K | 256 | 176 | as Q4_K plus 32 B high bits |
//! | Q6_K | 256 | 210 | 128 B low nibbles, 64 B high 2-bit pairs, 16 i8 scales, f16 d |

use half::f16;

use crate::backend::DType;

/// A block's f16 scale. The const (table-free, branch-light) conversion inlines into the
/// dot loops; half's runtime-dispatched one costs a call per block (21% of decode).
#[inline(always)]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32_const()
}

/// Dequantizes one block `b` of `dtype` into `y` (`dtype.block().0` values).
pub fn dequantize_block(dtype: DType, b: &[u8], y: &mut [f32]) {
    match dtype {
        DType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        DType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0xF) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        DType::Q8_0 => {
            let d = f16_at(b, 0);
            for (o, &q) in y.iter_mut().zip(&b[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }
        DType::Q4_K => dequant_q4k_q5k(b, None, y),
        DType::Q5_K => dequant_q4k_q5k(&b[..16], Some((&b[16..48], &b[48..176])), y),
        DType::Q6_K => dequant_q6k(b, y),
        _ => unreachable!("dequantize_block on element type {dtype}"),
    }
}

/// Scale and min `j` (0..8) of a K-quant super-block (ggml `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, min) pairs of a K-quant super-block's 12 scale bytes at once (ggml's
/// `utmp` shuffle): the same values as `scale_min_k4` for j = 0..8. Inlined: the decode
/// kernels call it once per super-block, and as a call it took ~10% of a Q5_K decode.
#[inline(always)]
pub(super) fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    const M1: u32 = 0x3f3f_3f3f;
    const M2: u32 = 0x0f0f_0f0f;
    const M3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_lo = u0 & M1;
    let sc_hi = (u2 & M2) | (((u0 >> 6) & M3) << 4);
    let mn_lo = u1 & M1;
    let mn_hi = ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    mn[..4].copy_from_slice(&mn_lo.to_le_bytes());
    mn[4..].copy_from_slice(&mn_hi.to_le_bytes());
    (sc, mn)
}

/// Q4_K (`high` None: `b` is the whole block) or Q5_K (`b` its first 16 bytes, `high` its
/// (qh, qs)): eight sub-blocks of 32, x = d·sc·q − dmin·m.
fn dequant_q4k_q5k(b: &[u8], high: Option<(&[u8], &[u8])>, y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = match high {
        Some((qh, qs)) => (Some(qh), qs),
        None => (None, &b[16..144]),
    };
    for (g, chunk) in y.chunks_exact_mut(64).enumerate() {
        let (s1, m1) = scale_min_k4(2 * g, scales);
        let (s2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let q = &qs[32 * g..32 * g + 32];
        for l in 0..32 {
            let (mut lo, mut hi) = ((q[l] & 0xF) as u32, (q[l] >> 4) as u32);
            if let Some(qh) = qh {
                lo += (((qh[l] >> (2 * g)) & 1) as u32) << 4;
                hi += (((qh[l] >> (2 * g + 1)) & 1) as u32) << 4;
            }
            chunk[l] = d1 * lo as f32 - m1;
            chunk[l + 32] = d2 * hi as f32 - m2;
        }
    }
}

fn dequant_q6k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (n, chunk) in y.chunks_exact_mut(128).enumerate() {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            chunk[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            chunk[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            chunk[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            chunk[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Dequantizes a row: `src` is `dtype.row_bytes(dst.len())` bytes.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let (e, bytes) = dtype.block();
    for (b, y) in src.chunks_exact(bytes).zip(dst.chunks_exact_mut(e)) {
        dequantize_block(dtype, b, y);
    }
}

/// Σ row·x for one stored row, block by block.
pub fn dot_row(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    match dtype {
        DType::Q4_0 => dot_q4_0(row, x),
        DType::Q4_1 => dot_q4_1(row, x),
        DType::Q8_0 => dot_q8_0(row, x),
        _ => {
            let (e, bytes) = dtype.block();
            let mut buf = [0f32; 256];
            let mut acc = 0f32;
            for (b, xs) in row.chunks_exact(bytes).zip(x.chunks_exact(e)) {
                dequantize_block(dtype, b, &mut buf[..e]);
                acc += super::simd::dot(&buf[..e], xs);
            }
            acc
        }
    }
}

// The three 32-element formats keep the scale out of the inner loop: Σ d·q·x = d·Σ q·x
// (and Q4_1's offset adds m·Σ x), which the compiler vectorizes over the 32 lanes.

fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xs) in row.chunks_exact(18).zip(x.chunks_exact(32)) {
        let mut s = [0f32; 16];
        for j in 0..16 {
            let q = b[2 + j];
            s[j] =
                ((q & 0xF) as i32 - 8) as f32 * xs[j] + ((q >> 4) as i32 - 8) as f32 * xs[j + 16];
        }
        acc += f16_at(b, 0) * s.iter().sum::<f32>();
    }
    acc
}

fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
        let mut s = [0f32; 16];
        let mut sx = [0f32; 16];
        for j in 0..16 {
            let q = b[4 + j];
            s[j] = (q & 0xF) as f32 * xs[j] + (q >> 4) as f32 * xs[j + 16];
            sx[j] = xs[j] + xs[j + 16];
        }
        acc += f16_at(b, 0) * s.iter().sum::<f32>() + f16_at(b, 2) * sx.iter().sum::<f32>();
    }
    acc
}

fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        let mut s = [0f32; 32];
        for j in 0..32 {
            s[j] = b[2 + j] as i8 as f32 * xs[j];
        }
        acc += f16_at(b, 0) * s.iter().sum::<f32>();
    }
    acc
}

/// Activations quantized to i8 in blocks of 32: `x ≈ d[b] · qs[32b + j]`, with
/// `sum[b] = Σ_j qs[32b + j]` for the Q4_0 zero point and Q4_1 offset.
#[derive(Default)]
pub struct QuantizedActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<i32>,
}

impl QuantizedActs {
    pub fn view(&self) -> ActsRef<'_> {
        ActsRef {
            qs: &self.qs,
            d: &self.d,
            sum: &self.sum,
        }
    }
}

/// Quantized activations as the dots read them: `QuantizedActs::view`, or one token's
/// blocks of a batch (`qgemm`).
#[derive(Clone, Copy)]
pub struct ActsRef<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sum: &'a [i32],
}

/// Whether `dot_row_q8` handles `dtype` (the others use `dot_row`).
pub fn supports_q8_dot(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K
    )
}

/// Quantizes `x` (a multiple of 32 long) per block: d = max|x|/127, q = round(x/d).
pub fn quantize_acts(x: &[f32]) -> QuantizedActs {
    let mut a = QuantizedActs::default();
    quantize_acts_into(x, &mut a);
    a
}

/// `quantize_acts` into a reused buffer (decode quantizes once per matmul group).
pub fn quantize_acts_into(x: &[f32], a: &mut QuantizedActs) {
    let nb = x.len() / 32;
    a.qs.resize(nb * 32, 0);
    a.d.resize(nb, 0.0);
    a.sum.resize(nb, 0);
    quantize_blocks(&x[..nb * 32], &mut a.qs, &mut a.d, &mut a.sum);
}

/// The blocks of `x` (a multiple of 32 long) into `qs`, `d` and `sum` (`x.len()`,
/// `x.len() / 32` and `x.len() / 32` long), choosing the SIMD path.
pub fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], sum: &mut [i32]) {
    let nb = x.len() / 32;
    assert!(x.len() == 32 * nb && qs.len() >= 32 * nb && d.len() >= nb && sum.len() >= nb);
    #[cfg(target_arch = "x86_64")]
    if super::simd::vnni() {
        // SAFETY: the AVX-512 features were detected at run time; lengths checked above.
        return unsafe { x86::quantize_acts_avx512(x, qs, d, sum) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_f16c() {
        // SAFETY: avx2, fma and f16c were detected at run time; lengths checked above.
        return unsafe { x86::quantize_acts_avx2(x, qs, d, sum) };
    }
    quantize_acts_plain(x, qs, d, sum)
}

fn quantize_acts_plain(x: &[f32], qs: &mut [i8], d: &mut [f32], sum: &mut [i32]) {
    for (b, xs) in x.chunks_exact(32).enumerate() {
        let amax = xs.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let db = amax / 127.0;
        let id = if db != 0.0 { 1.0 / db } else { 0.0 };
        let mut s = 0i32;
        for (q, &v) in qs[32 * b..32 * b + 32].iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
            s += *q as i32;
        }
        d[b] = db;
        sum[b] = s;
    }
}

/// `out[i] = dot_row_q8(dtype, row i of rows, x)` for consecutive rows, choosing the SIMD
/// path once.
pub fn dot_rows_q8(dtype: DType, rows: &[u8], x: &ActsRef<'_>, out: &mut [f32]) {
    let rb = rows.len() / out.len().max(1);
    #[cfg(target_arch = "x86_64")]
    if super::simd::vnni() {
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(rb)) {
            // SAFETY: the AVX-512 features were detected at run time.
            *o = unsafe { x86::dot_row_q8_vnni(dtype, row, x) };
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_f16c() {
        if dtype == DType::Q6_K {
            // The activations' half-block sums once for all these rows.
            let s16 = half_sums(x.qs);
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(rb)) {
                // SAFETY: avx2, fma and f16c were detected at run time.
                *o = unsafe { x86::dot_q6k(row, x, &s16) };
            }
            return;
        }
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(rb)) {
            // SAFETY: avx2, fma and f16c were detected at run time.
            *o = unsafe { x86::dot_row_q8_avx2(dtype, row, x) };
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if super::simd::level() == super::simd::Level::Neon {
        let dp = super::simd::dotprod();
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(rb)) {
            // SAFETY: neon (and dotprod where used) was detected at run time.
            *o = unsafe { arm::dot_row_q8(dp, dtype, row, x) };
        }
        return;
    }
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(rb)) {
        *o = dot_row_q8_plain(dtype, row, x);
    }
}

/// The sums of each 16 quantized activations (Q6_K's scales are per 16 values).
#[cfg(target_arch = "x86_64")]
fn half_sums(qs: &[i8]) -> Vec<i16> {
    qs.chunks_exact(16)
        .map(|h| h.iter().map(|&v| v as i16).sum())
        .collect()
}

/// Σ row·x for a row of a `supports_q8_dot` type against quantized activations. The
/// K-quants' sub-blocks line up with the 32-wide activation blocks: Q4_K has one scale and
/// min per 32, Q6_K one scale per 16 (two per activation block).
pub fn dot_row_q8(dtype: DType, row: &[u8], x: &QuantizedActs) -> f32 {
    dot_row_q8_ref(dtype, row, &x.view())
}

/// `dot_row_q8` on a view.
pub fn dot_row_q8_ref(dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::vnni() {
        // SAFETY: the AVX-512 features were detected at run time.
        return unsafe { x86::dot_row_q8_vnni(dtype, row, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_f16c() {
        // SAFETY: avx2, fma and f16c were detected at run time.
        return unsafe { x86::dot_row_q8_avx2(dtype, row, x) };
    }
    #[cfg(target_arch = "aarch64")]
    if super::simd::level() == super::simd::Level::Neon {
        // SAFETY: neon (and dotprod where used) was detected at run time.
        return unsafe { arm::dot_row_q8(super::simd::dotprod(), dtype, row, x) };
    }
    dot_row_q8_plain(dtype, row, x)
}

fn dot_q4k_q8_plain(row: &[u8], x: &ActsRef<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let (scales, qs) = (&blk[4..16], &blk[16..144]);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let ab = 8 * b + j;
            let xq = &x.qs[32 * ab..32 * ab + 32];
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let s: i32 = q
                .iter()
                .zip(xq)
                .map(|(&w, &v)| ((w >> shift) & 0xF) as i32 * v as i32)
                .sum();
            acc += x.d[ab] * (d * sc as f32 * s as f32 - dmin * m as f32 * x.sum[ab] as f32);
        }
    }
    acc
}

/// Q5_K: Q4_K's layout plus a fifth bit per value (`qh`, bit j of byte l for sub-block j).
fn dot_q5k_q8_plain(row: &[u8], x: &ActsRef<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(176).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let (scales, qh, qs) = (&blk[4..16], &blk[16..48], &blk[48..176]);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let ab = 8 * b + j;
            let xq = &x.qs[32 * ab..32 * ab + 32];
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let s: i32 = (0..32)
                .map(|l| {
                    let v = ((q[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
                    v as i32 * xq[l] as i32
                })
                .sum();
            acc += x.d[ab] * (d * sc as f32 * s as f32 - dmin * m as f32 * x.sum[ab] as f32);
        }
    }
    acc
}

fn dot_q6k_q8_plain(row: &[u8], x: &ActsRef<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
        let d = f16_at(blk, 208);
        for n in 0..2 {
            for qt in 0..4 {
                let ab = 8 * b + 4 * n + qt;
                let xq = &x.qs[32 * ab..32 * ab + 32];
                let mut s = [0i32; 2];
                for l in 0..32 {
                    let lo = ql[64 * n + 32 * (qt % 2) + l];
                    let nib = if qt < 2 { lo & 0xF } else { lo >> 4 };
                    let hi = (qh[32 * n + l] >> (2 * qt)) & 3;
                    let q = (nib | (hi << 4)) as i32 - 32;
                    s[l / 16] += q * xq[l] as i32;
                }
                let (s0, s1) = (sc[8 * n + 2 * qt] as i8, sc[8 * n + 2 * qt + 1] as i8);
                acc += d * x.d[ab] * (s0 as i32 * s[0] + s1 as i32 * s[1]) as f32;
            }
        }
    }
    acc
}

pub(super) fn dot_row_q8_plain(dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
    match dtype {
        DType::Q4_K => return dot_q4k_q8_plain(row, x),
        DType::Q5_K => return dot_q5k_q8_plain(row, x),
        DType::Q6_K => return dot_q6k_q8_plain(row, x),
        _ => {}
    }
    let bytes = dtype.block().1;
    row.chunks_exact(bytes)
        .enumerate()
        .map(|(b, blk)| block_dot_q8_plain(dtype, blk, x, b))
        .sum()
}

/// One Q4_0/Q4_1/Q8_0 block `blk` against activation block `b`.
fn block_dot_q8_plain(dtype: DType, blk: &[u8], x: &ActsRef<'_>, b: usize) -> f32 {
    let xq = &x.qs[32 * b..32 * b + 32];
    let dd = f16_at(blk, 0) * x.d[b];
    match dtype {
        DType::Q8_0 => {
            let s: i32 = blk[2..34]
                .iter()
                .zip(xq)
                .map(|(&w, &q)| w as i8 as i32 * q as i32)
                .sum();
            dd * s as f32
        }
        _ => {
            let qs = if dtype == DType::Q4_0 {
                &blk[2..18]
            } else {
                &blk[4..20]
            };
            let mut s = 0i32;
            for j in 0..16 {
                s += (qs[j] & 0xF) as i32 * xq[j] as i32 + (qs[j] >> 4) as i32 * xq[j + 16] as i32;
            }
            if dtype == DType::Q4_0 {
                dd * (s - 8 * x.sum[b]) as f32
            } else {
                dd * s as f32 + f16_at(blk, 2) * x.d[b] * x.sum[b] as f32
            }
        }
    }
}

/// aarch64 NEON twins of the plain integer dots: per 32-block the weight quants as two
/// int8x16 (nibbles unpacked, Q4_0/Q6_K centred), an i8·i8 → i32 dot (`sdot` where the CPU
/// has the dot product extension, else `smull` + pairwise widening adds), converted and
/// multiplied by the block's scales into an f32x4 accumulator; zero-point / min terms in a
/// scalar beside it, as the plain path keeps them.
#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::{f16_at, scale_min_k4, ActsRef};
    use crate::backend::DType;

    /// `acc + Σ a·b` over 16 int8 lanes (4 per i32 lane).
    #[inline(always)]
    unsafe fn dot16<const DP: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        if DP {
            let mut acc = acc;
            // `sdot` (Armv8.2 FEAT_DotProd): its intrinsic is not stable Rust yet. Only
            // reached from `dot_row_dotprod`, compiled with the feature.
            std::arch::asm!(
                "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
                inout(vreg) acc,
                in(vreg) a,
                in(vreg) b,
                options(pure, nomem, nostack)
            );
            acc
        } else {
            let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let hi = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, lo), hi)
        }
    }

    /// `dot_row_q8` on NEON, with `sdot` when `dp`.
    ///
    /// # Safety
    /// neon, and dotprod when `dp`; `x` holds the row's blocks.
    pub unsafe fn dot_row_q8(dp: bool, dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
        if dp {
            dot_row_dotprod(dtype, row, x)
        } else {
            dot_row_neon(dtype, row, x)
        }
    }

    #[target_feature(enable = "neon,dotprod")]
    unsafe fn dot_row_dotprod(dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
        body::<true>(dtype, row, x)
    }

    #[target_feature(enable = "neon")]
    unsafe fn dot_row_neon(dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
        body::<false>(dtype, row, x)
    }

    #[inline(always)]
    unsafe fn body<const DP: bool>(dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
        let (per, bytes) = dtype.block();
        let nb = row.len() / bytes * (per / 32);
        assert!(x.qs.len() >= 32 * nb && x.d.len() >= nb && x.sum.len() >= nb);
        let xp = x.qs.as_ptr();
        let low = vdupq_n_u8(0x0F);
        let zero = vdupq_n_s32(0);
        let mut acc = vdupq_n_f32(0.0);
        let mut off = 0f32;
        match dtype {
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
                for (b, blk) in row.chunks_exact(bytes).enumerate() {
                    let xa = vld1q_s8(xp.add(32 * b));
                    let xb = vld1q_s8(xp.add(32 * b + 16));
                    let dx = x.d[b];
                    let d = f16_at(blk, 0) * dx;
                    let (w0, w1) = match dtype {
                        DType::Q8_0 => (
                            vld1q_s8(blk.as_ptr().add(2) as *const i8),
                            vld1q_s8(blk.as_ptr().add(18) as *const i8),
                        ),
                        _ => {
                            let start = if dtype == DType::Q4_0 { 2 } else { 4 };
                            let q = vld1q_u8(blk.as_ptr().add(start));
                            let lo = vreinterpretq_s8_u8(vandq_u8(q, low));
                            let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
                            if dtype == DType::Q4_0 {
                                off -= d * (8 * x.sum[b]) as f32;
                            } else {
                                off += f16_at(blk, 2) * dx * x.sum[b] as f32;
                            }
                            (lo, hi)
                        }
                    };
                    let s = dot16::<DP>(dot16::<DP>(zero, w0, xa), w1, xb);
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
                }
            }
            DType::Q4_K | DType::Q5_K => {
                let five = dtype == DType::Q5_K;
                let qs_at = if five { 48 } else { 16 };
                let sixteen = vdupq_n_u8(16);
                for (sb, blk) in row.chunks_exact(bytes).enumerate() {
                    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                    let (qh0, qh1) = if five {
                        (
                            vld1q_u8(blk.as_ptr().add(16)),
                            vld1q_u8(blk.as_ptr().add(32)),
                        )
                    } else {
                        (vdupq_n_u8(0), vdupq_n_u8(0))
                    };
                    for g in 0..4 {
                        let q0 = vld1q_u8(blk.as_ptr().add(qs_at + 32 * g));
                        let q1 = vld1q_u8(blk.as_ptr().add(qs_at + 32 * g + 16));
                        for h in 0..2 {
                            let j = 2 * g + h;
                            let (mut w0, mut w1) = if h == 0 {
                                (vandq_u8(q0, low), vandq_u8(q1, low))
                            } else {
                                (vshrq_n_u8::<4>(q0), vshrq_n_u8::<4>(q1))
                            };
                            if five {
                                let bit = vdupq_n_u8(1 << j);
                                w0 = vorrq_u8(w0, vandq_u8(vtstq_u8(qh0, bit), sixteen));
                                w1 = vorrq_u8(w1, vandq_u8(vtstq_u8(qh1, bit), sixteen));
                            }
                            let (sc, m) = scale_min_k4(j, &blk[4..16]);
                            let ab = 8 * sb + j;
                            let xa = vld1q_s8(xp.add(32 * ab));
                            let xb = vld1q_s8(xp.add(32 * ab + 16));
                            let s = dot16::<DP>(
                                dot16::<DP>(zero, vreinterpretq_s8_u8(w0), xa),
                                vreinterpretq_s8_u8(w1),
                                xb,
                            );
                            let dx = x.d[ab];
                            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d * sc as f32 * dx);
                            off -= dmin * m as f32 * dx * x.sum[ab] as f32;
                        }
                    }
                }
            }
            DType::Q6_K => {
                let three = vdupq_n_u8(3);
                let c32 = vdupq_n_s8(32);
                for (sb, blk) in row.chunks_exact(bytes).enumerate() {
                    let d = f16_at(blk, 208);
                    let sc = &blk[192..208];
                    for n in 0..2 {
                        let qh0 = vld1q_u8(blk.as_ptr().add(128 + 32 * n));
                        let qh1 = vld1q_u8(blk.as_ptr().add(128 + 32 * n + 16));
                        for qt in 0..4 {
                            let at = 64 * n + 32 * (qt % 2);
                            let l0 = vld1q_u8(blk.as_ptr().add(at));
                            let l1 = vld1q_u8(blk.as_ptr().add(at + 16));
                            let (n0, n1) = if qt < 2 {
                                (vandq_u8(l0, low), vandq_u8(l1, low))
                            } else {
                                (vshrq_n_u8::<4>(l0), vshrq_n_u8::<4>(l1))
                            };
                            let shift = vdupq_n_s8(-2 * qt as i8);
                            let h0 = vandq_u8(vshlq_u8(qh0, shift), three);
                            let h1 = vandq_u8(vshlq_u8(qh1, shift), three);
                            let w0 = vsubq_s8(
                                vreinterpretq_s8_u8(vorrq_u8(n0, vshlq_n_u8::<4>(h0))),
                                c32,
                            );
                            let w1 = vsubq_s8(
                                vreinterpretq_s8_u8(vorrq_u8(n1, vshlq_n_u8::<4>(h1))),
                                c32,
                            );
                            let ab = 8 * sb + 4 * n + qt;
                            let xa = vld1q_s8(xp.add(32 * ab));
                            let xb = vld1q_s8(xp.add(32 * ab + 16));
                            let s0 = sc[8 * n + 2 * qt] as i8 as i32;
                            let s1 = sc[8 * n + 2 * qt + 1] as i8 as i32;
                            let s = vaddq_s32(
                                vmulq_n_s32(dot16::<DP>(zero, w0, xa), s0),
                                vmulq_n_s32(dot16::<DP>(zero, w1, xb), s1),
                            );
                            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d * x.d[ab]);
                        }
                    }
                }
            }
            _ => return super::dot_row_q8_plain(dtype, row, x),
        }
        vaddvq_f32(acc) + off
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::ActsRef;
    use crate::backend::DType;

    /// Per block: the 32 weight quants as unsigned bytes (nibbles) or |w| with the sign
    /// moved onto x (Q8_0), `maddubs` into i16 pairs, `madd` into 8 i32, then one FMA with
    /// the block's two scales. Zero point / offset terms go to a scalar accumulator.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(acc: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(acc, 1);
        let lo = _mm256_castps256_ps128(acc);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Q4_K (and Q5_K, `five`: its fifth bits from `qh`): per 64 elements one 32-byte load
    /// gives two sub-blocks (low and high nibbles); the eight scales and the min term per
    /// super-block as vectors (`k4_scales`), each sub-block's scale taken by a lane permute.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q4k(row: &[u8], x: &ActsRef<'_>, five: bool) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        let sixteen = _mm256_set1_epi8(16);
        let (size, qs_at) = if five { (176, 48) } else { (144, 16) };
        let nsb = row.len() / size;
        assert!(x.qs.len() >= 256 * nsb && x.d.len() >= 8 * nsb && x.sum.len() >= 8 * nsb);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut off = _mm256_setzero_ps();
        for (b, blk) in row.chunks_exact(size).enumerate() {
            let (sv, mv) = k4_scales(blk, x, b);
            off = _mm256_add_ps(off, mv);
            let qh = if five {
                _mm256_loadu_si256(blk.as_ptr().add(16) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            for g in 0..4 {
                let q = _mm256_loadu_si256(blk.as_ptr().add(qs_at + 32 * g) as *const __m256i);
                let halves = [
                    _mm256_and_si256(q, low),
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                ];
                for (h, mut w) in halves.into_iter().enumerate() {
                    let j = 2 * g + h;
                    if five {
                        // Bit j of each qh byte moved to bit 4 (16 where set): within 16-bit
                        // lanes, but a shift of at most 4 either way keeps bit 4 of each
                        // byte coming from the same byte.
                        let at4 = match j {
                            0 => _mm256_slli_epi16(qh, 4),
                            1 => _mm256_slli_epi16(qh, 3),
                            2 => _mm256_slli_epi16(qh, 2),
                            3 => _mm256_slli_epi16(qh, 1),
                            4 => qh,
                            5 => _mm256_srli_epi16(qh, 1),
                            6 => _mm256_srli_epi16(qh, 2),
                            _ => _mm256_srli_epi16(qh, 3),
                        };
                        w = _mm256_or_si256(w, _mm256_and_si256(at4, sixteen));
                    }
                    let xv =
                        _mm256_loadu_si256(x.qs.as_ptr().add(32 * (8 * b + j)) as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones);
                    let scale = _mm256_permutevar8x32_ps(sv, _mm256_set1_epi32(j as i32));
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[h]);
                }
            }
        }
        hsum(_mm256_sub_ps(_mm256_add_ps(acc[0], acc[1]), off))
    }

    /// Q6_K: per 32 elements the 6-bit quants are rebuilt unsigned (q + 32, 0..63) from a
    /// nibble and two high bits (moved to bits 4-5 by one shift and one mask) and go straight
    /// into `maddubs` against x; `madd` with the two 16-element scales as i16 gives scaled
    /// i32 sums, one FMA with `d·d_x` of the activation block. The −32 of every quant is
    /// taken off once per super-block: `madd` of the 16 scales with the activations' 16
    /// half-block sums `s16` (`half_sums`) gives each activation block's `Σ sc·Σx` in its
    /// lane. The scales for block j come from a vector holding 8 of them in both 128-bit
    /// lanes by one byte shuffle.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6k(row: &[u8], x: &ActsRef<'_>, s16: &[i16]) -> f32 {
        let low = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        // Block j of a half (j mod 4): the i16 scale 2j over the low lane, 2j + 1 over the
        // high one, from a vector of 8 scales per lane.
        let spread = |j: i8| {
            let bytes: [i8; 32] = std::array::from_fn(|i| {
                let first = if i < 16 { 4 * j } else { 4 * j + 2 };
                first + (i % 2) as i8
            });
            _mm256_loadu_si256(bytes.as_ptr() as *const __m256i)
        };
        let spreads = [spread(0), spread(1), spread(2), spread(3)];
        let nsb = row.len() / 210;
        assert!(x.qs.len() >= 256 * nsb && x.d.len() >= 8 * nsb && s16.len() >= 16 * nsb);
        // One accumulator per quarter (the unrolled qt loop keeps them in registers).
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut off = _mm256_setzero_ps();
        for (b, blk) in row.chunks_exact(210).enumerate() {
            let p = blk.as_ptr();
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
            let dd = _mm256_mul_ps(
                _mm256_set1_ps(f16c_at(blk, 208)),
                _mm256_loadu_ps(x.d.as_ptr().add(8 * b)),
            );
            let bs = _mm256_loadu_si256(s16.as_ptr().add(16 * b) as *const __m256i);
            off = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sc16, bs)), dd, off);
            for n in 0..2 {
                // The 8 scales of this half of the super-block in both lanes.
                let sc = if n == 0 {
                    _mm256_permute2x128_si256(sc16, sc16, 0x00)
                } else {
                    _mm256_permute2x128_si256(sc16, sc16, 0x11)
                };
                let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
                for (qt, a) in acc.iter_mut().enumerate() {
                    let ql = _mm256_loadu_si256(p.add(64 * n + 32 * (qt % 2)) as *const __m256i);
                    let nib = if qt < 2 {
                        _mm256_and_si256(ql, low)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(ql, 4), low)
                    };
                    // Bits 2qt, 2qt + 1 of each qh byte to bits 4, 5 (a 16-bit shift by at
                    // most 4 keeps bits 4-5 of each byte from the same byte).
                    let hi = match qt {
                        0 => _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                        1 => _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                        2 => _mm256_and_si256(qh, m30),
                        _ => _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                    };
                    let j = 4 * n + qt;
                    let xv =
                        _mm256_loadu_si256(x.qs.as_ptr().add(32 * (8 * b + j)) as *const __m256i);
                    let prod = _mm256_maddubs_epi16(_mm256_or_si256(nib, hi), xv);
                    let scj = _mm256_shuffle_epi8(sc, spreads[qt]);
                    let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, scj));
                    let jv = _mm256_set1_epi32(j as i32);
                    *a = _mm256_fmadd_ps(s, _mm256_permutevar8x32_ps(dd, jv), *a);
                }
            }
        }
        let all = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(_mm256_fnmadd_ps(_mm256_set1_ps(32.0), off, all))
    }

    /// The 8 f32 values of `v`'s 8 bytes, unsigned.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn u8x8_ps(v: [u8; 8]) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(
            v,
        ))))
    }

    /// Per super-block of Q4_K / Q5_K: the eight sub-block scales `d·sc_j·d_x` and the
    /// min term `Σ_j dmin·m_j·d_x·Σq_x` as 8-lane vectors (scales and mins unpacked at once).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn k4_scales(blk: &[u8], x: &ActsRef<'_>, sb: usize) -> (__m256, __m256) {
        let (d, dmin) = (f16c_at(blk, 0), f16c_at(blk, 2));
        let (sc, mn) = super::scales_mins_k4(&blk[4..16]);
        let xd = _mm256_loadu_ps(x.d.as_ptr().add(8 * sb));
        let xs = _mm256_cvtepi32_ps(_mm256_loadu_si256(
            x.sum.as_ptr().add(8 * sb) as *const __m256i
        ));
        let sv = _mm256_mul_ps(_mm256_mul_ps(u8x8_ps(sc), _mm256_set1_ps(d)), xd);
        let mv = _mm256_mul_ps(
            _mm256_mul_ps(u8x8_ps(mn), _mm256_set1_ps(dmin)),
            _mm256_mul_ps(xd, xs),
        );
        (sv, mv)
    }

    /// Q4_K (and Q5_K, `five`) with AVX-512 VNNI: per 64 values one 32-byte load gives two
    /// sub-blocks (low nibbles, then high) in one zmm against 64 activation bytes,
    /// `vpdpbusd`, one FMA with the two sub-blocks' scales spread over their halves; the
    /// mins once per super-block as a vector.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    unsafe fn dot_q4k_vnni(row: &[u8], x: &ActsRef<'_>, five: bool) -> f32 {
        let (size, qs_at) = if five { (176, 48) } else { (144, 16) };
        let nsb = row.len() / size;
        assert!(x.qs.len() >= 256 * nsb && x.d.len() >= 8 * nsb && x.sum.len() >= 8 * nsb);
        let low = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut off = _mm256_setzero_ps();
        for sb in 0..nsb {
            let blk = &row[size * sb..size * (sb + 1)];
            let bp = blk.as_ptr();
            let (sv, mv) = k4_scales(blk, x, sb);
            off = _mm256_add_ps(off, mv);
            let sv = _mm512_castps256_ps512(sv);
            let qh = if five {
                let h = _mm256_loadu_si256(bp.add(16) as *const __m256i);
                _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1)
            } else {
                zero
            };
            for g in 0..4 {
                let q = _mm256_loadu_si256(bp.add(qs_at + 32 * g) as *const __m256i);
                let mut w = _mm512_and_si512(
                    _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1),
                    low,
                );
                if five {
                    let bits = _mm512_inserti64x4(
                        _mm512_castsi256_si512(_mm256_set1_epi8((1u8 << (2 * g)) as i8)),
                        _mm256_set1_epi8((1u8 << (2 * g + 1)) as i8),
                        1,
                    );
                    w = _mm512_mask_add_epi8(w, _mm512_test_epi8_mask(qh, bits), w, sixteen);
                }
                let xv = _mm512_loadu_si512(x.qs.as_ptr().add(256 * sb + 64 * g) as *const __m512i);
                let p = _mm512_dpbusd_epi32(zero, w, xv);
                let (j0, j1) = (2 * g as i32, 2 * g as i32 + 1);
                let idx = _mm512_set_epi32(
                    j1, j1, j1, j1, j1, j1, j1, j1, j0, j0, j0, j0, j0, j0, j0, j0,
                );
                acc[g % 2] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(p),
                    _mm512_permutexvar_ps(idx, sv),
                    acc[g % 2],
                );
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - hsum(off)
    }

    /// Q6_K with AVX-512 VNNI: per 64 values the 6-bit quants rebuilt unsigned (q + 32,
    /// 0..63) from 64 nibbles and their high bits, `vpdpbusd` against x minus one against
    /// 32s (the −32·Σx of each 4 values), then one FMA with the 16-value groups' scales
    /// `d·sc_h·d_x` spread over their four lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    unsafe fn dot_q6k_vnni(row: &[u8], x: &ActsRef<'_>) -> f32 {
        let nsb = row.len() / 210;
        assert!(x.qs.len() >= 256 * nsb && x.d.len() >= 8 * nsb);
        let low = _mm512_set1_epi8(0x0F);
        let three = _mm256_set1_epi8(3);
        let c32 = _mm512_set1_epi8(32);
        let zero = _mm512_setzero_si512();
        let halves = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let mut acc = [_mm512_setzero_ps(); 2];
        for sb in 0..nsb {
            let blk = &row[210 * sb..210 * (sb + 1)];
            let bp = blk.as_ptr();
            let d = f16c_at(blk, 208);
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                bp.add(192) as *const __m128i
            )));
            let xd = _mm512_permutexvar_ps(
                halves,
                _mm512_castps256_ps512(_mm256_loadu_ps(x.d.as_ptr().add(8 * sb))),
            );
            let s16 = _mm512_mul_ps(_mm512_mul_ps(sc, _mm512_set1_ps(d)), xd);
            for n in 0..2 {
                let ql = _mm512_loadu_si512(bp.add(64 * n) as *const __m512i);
                let qh = _mm256_loadu_si256(bp.add(128 + 32 * n) as *const __m256i);
                let hi = |s0: i32, s1: i32| {
                    let a = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s0)), three);
                    let b = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s1)), three);
                    _mm512_slli_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1), 4)
                };
                let us = [
                    _mm512_or_si512(_mm512_and_si512(ql, low), hi(0, 2)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low), hi(4, 6)),
                ];
                for (h, u) in us.into_iter().enumerate() {
                    let ci = 2 * n + h;
                    let xv =
                        _mm512_loadu_si512(x.qs.as_ptr().add(256 * sb + 64 * ci) as *const __m512i);
                    let p = _mm512_sub_epi32(
                        _mm512_dpbusd_epi32(zero, u, xv),
                        _mm512_dpbusd_epi32(zero, c32, xv),
                    );
                    let g = 4 * ci as i32;
                    let idx = _mm512_setr_epi32(
                        g,
                        g,
                        g,
                        g,
                        g + 1,
                        g + 1,
                        g + 1,
                        g + 1,
                        g + 2,
                        g + 2,
                        g + 2,
                        g + 2,
                        g + 3,
                        g + 3,
                        g + 3,
                        g + 3,
                    );
                    acc[h] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(p),
                        _mm512_permutexvar_ps(idx, s16),
                        acc[h],
                    );
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    /// Q4_0/Q4_1/Q8_0 with AVX-512 VNNI, two blocks (64 values) per step: the weights of
    /// both blocks as unsigned bytes (nibbles; |w| with w's sign moved onto x for Q8_0) in
    /// one zmm against the 64 contiguous activation bytes, `vpdpbusd` into 16 i32 (8 per
    /// block), then one FMA with the two blocks' scales (F16C) spread over their halves.
    /// Zero point / offset terms accumulate in a separate 4-lane vector. An odd last block
    /// goes through the plain block dot.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    pub unsafe fn dot_row_q8_vnni(dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
        match dtype {
            DType::Q4_K => return dot_q4k_vnni(row, x, false),
            DType::Q5_K => return dot_q4k_vnni(row, x, true),
            DType::Q6_K => return dot_q6k_vnni(row, x),
            _ => {}
        }
        let bytes = dtype.block().1;
        let nb = row.len() / bytes;
        assert!(x.d.len() >= nb && x.qs.len() >= 32 * nb && x.sum.len() >= nb);
        let (rp, xp) = (row.as_ptr(), x.qs.as_ptr());
        let low = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        // Lane i of the scale vector takes block i / 8 of the pair.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let half = |p: *const u8| (p as *const u16).read_unaligned() as i32;
        let mut acc = _mm512_setzero_ps();
        let mut off = _mm_setzero_ps();
        for b in (0..nb & !1).step_by(2) {
            let (b0, b1) = (rp.add(b * bytes), rp.add((b + 1) * bytes));
            let xv = _mm512_loadu_si512(xp.add(32 * b) as *const __m512i);
            let dots = if dtype == DType::Q8_0 {
                let w = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(2) as *const __m256i)),
                    _mm256_loadu_si256(b1.add(2) as *const __m256i),
                    1,
                );
                let xs = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(w), zero, xv);
                _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(w), xs)
            } else {
                let start = if dtype == DType::Q4_0 { 2 } else { 4 };
                let q = _mm256_set_m128i(
                    _mm_loadu_si128(b1.add(start) as *const __m128i),
                    _mm_loadu_si128(b0.add(start) as *const __m128i),
                );
                // [q0, q1, q0 >> 4, q1 >> 4] → [lo0, hi0, lo1, hi1] (128-bit lanes).
                let both =
                    _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
                let w = _mm512_and_si512(_mm512_shuffle_i64x2(both, both, 0xD8), low);
                _mm512_dpbusd_epi32(zero, w, xv)
            };
            let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(half(b0) | half(b1) << 16));
            let dx = _mm_castpd_ps(_mm_load_sd(x.d.as_ptr().add(b) as *const f64));
            let s = _mm_mul_ps(dw, dx);
            let sv = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), sv, acc);
            if dtype != DType::Q8_0 {
                let sum = _mm_cvtepi32_ps(_mm_loadl_epi64(x.sum.as_ptr().add(b) as *const __m128i));
                off = if dtype == DType::Q4_0 {
                    _mm_fmadd_ps(s, _mm_mul_ps(sum, _mm_set1_ps(-8.0)), off)
                } else {
                    let m =
                        _mm_cvtph_ps(_mm_cvtsi32_si128(half(b0.add(2)) | half(b1.add(2)) << 16));
                    _mm_fmadd_ps(m, _mm_mul_ps(dx, sum), off)
                };
            }
        }
        let off = _mm_add_ps(off, _mm_movehl_ps(off, off));
        let mut total =
            _mm512_reduce_add_ps(acc) + _mm_cvtss_f32(_mm_add_ss(off, _mm_shuffle_ps(off, off, 1)));
        if nb % 2 == 1 {
            total += super::block_dot_q8_plain(dtype, &row[(nb - 1) * bytes..], x, nb - 1);
        }
        total
    }

    /// `quantize_acts_plain` 32 values at a time, bit-identical: the same max, the same
    /// `v · (1/d)` products, and round-half-away-from-zero (truncate, then step away from
    /// zero where the exact fraction is at least one half).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    pub unsafe fn quantize_acts_avx512(x: &[f32], qs: &mut [i8], d: &mut [f32], sum: &mut [i32]) {
        let nb = x.len() / 32;
        assert!(qs.len() >= 32 * nb && d.len() >= nb && sum.len() >= nb);
        let (xp, qp) = (x.as_ptr(), qs.as_mut_ptr());
        let half = _mm512_set1_ps(0.5);
        let one = _mm512_set1_ps(1.0);
        for b in 0..nb {
            let v = [
                _mm512_loadu_ps(xp.add(32 * b)),
                _mm512_loadu_ps(xp.add(32 * b + 16)),
            ];
            let amax =
                _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
            let db = amax / 127.0;
            let id = if db != 0.0 { 1.0 / db } else { 0.0 };
            let mut bsum = _mm512_setzero_si512();
            for (h, &vh) in v.iter().enumerate() {
                let y = _mm512_mul_ps(vh, _mm512_set1_ps(id));
                let t = _mm512_roundscale_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                let frac = _mm512_abs_ps(_mm512_sub_ps(y, t));
                let away = _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ);
                // Step |t| + 1 with y's sign: t + copysign(1, y). (In integer ops: the
                // float `and`/`or` are AVX-512 DQ, not enabled here, and were calls.)
                let sign = _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32(i32::MIN));
                let step = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(one), sign));
                let r = _mm512_cvttps_epi32(_mm512_mask_add_ps(t, away, t, step));
                bsum = _mm512_add_epi32(bsum, r);
                _mm_storeu_si128(
                    qp.add(32 * b + 16 * h) as *mut __m128i,
                    _mm512_cvtepi32_epi8(r),
                );
            }
            d[b] = db;
            sum[b] = _mm512_reduce_add_epi32(bsum);
        }
    }

    /// The f16 at byte `i` of `b`, converted by the F16C instruction (`f16_at` in software
    /// was most of the AVX2 dot's instructions per block).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16c_at(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([b[i], b[i + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// `quantize_acts_plain` 32 values at a time, bit-identical, for CPUs with AVX2 but not
    /// AVX-512: the same max, the same `v · (1/d)` products, round half away from zero
    /// (truncate, then step away from zero where the exact fraction is at least one half).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_acts_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], sum: &mut [i32]) {
        let nb = x.len() / 32;
        assert!(x.len() >= 32 * nb && qs.len() >= 32 * nb && d.len() >= nb && sum.len() >= nb);
        let (xp, qp) = (x.as_ptr(), qs.as_mut_ptr());
        let sign = _mm256_set1_ps(-0.0);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        // packs interleave 128-bit lanes; this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..nb {
            let v = [
                _mm256_loadu_ps(xp.add(32 * b)),
                _mm256_loadu_ps(xp.add(32 * b + 8)),
                _mm256_loadu_ps(xp.add(32 * b + 16)),
                _mm256_loadu_ps(xp.add(32 * b + 24)),
            ];
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
            let db = amax / 127.0;
            let id = if db != 0.0 { 1.0 / db } else { 0.0 };
            let mut r = [_mm256_setzero_si256(); 4];
            for (h, &vh) in v.iter().enumerate() {
                let y = _mm256_mul_ps(vh, _mm256_set1_ps(id));
                let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(y, t));
                let away = _mm256_cmp_ps(frac, half, _CMP_GE_OQ);
                // Step |t| + 1 with y's sign: t + copysign(1, y), where `away`.
                let step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(y, sign)));
                r[h] = _mm256_cvttps_epi32(_mm256_add_ps(t, step));
            }
            let total =
                _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
            let s = _mm_add_epi32(
                _mm256_castsi256_si128(total),
                _mm256_extracti128_si256(total, 1),
            );
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            // |q| ≤ 127, so the saturating packs are exact.
            let q16 = [
                _mm256_packs_epi32(r[0], r[1]),
                _mm256_packs_epi32(r[2], r[3]),
            ];
            let q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16[0], q16[1]), order);
            _mm256_storeu_si256(qp.add(32 * b) as *mut __m256i, q8);
            d[b] = db;
            sum[b] = _mm_cvtsi128_si32(s);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_row_q8_avx2(dtype: DType, row: &[u8], x: &ActsRef<'_>) -> f32 {
        match dtype {
            DType::Q4_K => dot_q4k(row, x, false),
            DType::Q5_K => dot_q4k(row, x, true),
            DType::Q6_K => dot_q6k(row, x, &super::half_sums(x.qs)),
            DType::Q4_0 => dot_q4_q8_avx2::<0>(row, x),
            DType::Q4_1 => dot_q4_q8_avx2::<1>(row, x),
            _ => dot_q4_q8_avx2::<2>(row, x),
        }
    }

    /// Q4_0 (`KIND` 0), Q4_1 (1) or Q8_0 (2) against quantized activations, one block per
    /// step into two accumulators (so the FMA latency chains interleave): Q8_0's quants and
    /// Q4_0's nibbles less 8 are signed, so |w| is multiplied with x carrying w's sign
    /// (no offset term); Q4_1's unsigned nibbles go straight into `maddubs` and its offset
    /// `m·d_x·Σq_x` into two scalar sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q4_q8_avx2<const KIND: u8>(row: &[u8], x: &ActsRef<'_>) -> f32 {
        let bytes = match KIND {
            0 => 18,
            1 => 20,
            _ => 34,
        };
        let nb = row.len() / bytes;
        assert!(x.qs.len() >= 32 * nb && x.d.len() >= nb && x.sum.len() >= nb);
        let (rp, xp, dp, sp) = (row.as_ptr(), x.qs.as_ptr(), x.d.as_ptr(), x.sum.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let low = _mm_set1_epi8(0x0F);
        let half = |p: *const u8| {
            let bits = (p as *const u16).read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        };
        // One block: (its scaled sum, Q4_1's offset term).
        let block = |b: usize| {
            let blk = rp.add(b * bytes);
            let xv = _mm256_loadu_si256(xp.add(32 * b) as *const __m256i);
            let dx = *dp.add(b);
            let mut off = 0f32;
            let prod = if KIND == 2 {
                let w = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w))
            } else {
                let q = _mm_loadu_si128(blk.add(if KIND == 0 { 2 } else { 4 }) as *const __m128i);
                let w = _mm256_set_m128i(
                    _mm_and_si128(_mm_srli_epi16(q, 4), low),
                    _mm_and_si128(q, low),
                );
                // The nibbles unsigned against x; Q4_1's min through Σx.
                if KIND == 1 {
                    off = half(blk.add(2)) * dx * *sp.add(b) as f32;
                }
                _mm256_maddubs_epi16(w, xv)
            };
            let mut i = _mm256_madd_epi16(prod, ones);
            if KIND == 0 {
                // Q4_0's −8·Σx in integers: Σx off each of the 8 lanes.
                i = _mm256_sub_epi32(i, _mm256_set1_epi32(*sp.add(b)));
            }
            (_mm256_cvtepi32_ps(i), _mm256_set1_ps(half(blk) * dx), off)
        };
        // Two blocks per step into two accumulators held in registers (an accumulator
        // array indexed by b % 2 went through the stack: 7-8 cycles a block).
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut off0, mut off1) = (0f32, 0f32);
        let mut b = 0;
        while b + 2 <= nb {
            let (s0, d0, o0) = block(b);
            let (s1, d1, o1) = block(b + 1);
            acc0 = _mm256_fmadd_ps(s0, d0, acc0);
            acc1 = _mm256_fmadd_ps(s1, d1, acc1);
            off0 += o0;
            off1 += o1;
            b += 2;
        }
        if b < nb {
            let (s0, d0, o0) = block(b);
            acc0 = _mm256_fmadd_ps(s0, d0, acc0);
            off0 += o0;
        }
        hsum(_mm256_add_ps(acc0, acc1)) + off0 + off1
    }
}

/// Quantizes a row as ggml's `quantize_row_*_ref` do (Q4_0, Q4_1, Q8_0; for tests and
/// synthetic weights). K-quants are only read, never written: their blocks come zeroed.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    let (e, bytes) = dtype.block();
    for (x, b) in src.chunks(e).zip(dst.chunks_exact_mut(bytes)) {
        b.fill(0);
        let put = |b: &mut [u8], i: usize, v: f32| {
            b[i..i + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes())
        };
        match dtype {
            DType::Q4_0 => {
                // The value of largest magnitude maps to −8 exactly.
                let max = x
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put(b, 0, d);
                for j in 0..16 {
                    let q = |v: f32| ((v * id + 8.5) as u8).min(15);
                    b[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
                }
            }
            DType::Q4_1 => {
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put(b, 0, d);
                put(b, 2, min);
                for j in 0..16 {
                    let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
                    b[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
                }
            }
            DType::Q8_0 => {
                let amax = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put(b, 0, d);
                for j in 0..32 {
                    b[2 + j] = (x[j] * id).round() as i8 as u8;
                }
            }
            _ => {}
        }
    }
}

/// `nb` blocks of `dt` with random quants and scales set so values are O(1) (Q4_1 with a
/// negative min): the test data of this module's and `qgemm`'s SIMD-vs-plain tests.
#[cfg(test)]
pub(super) fn random_blocks(dt: DType, nb: usize, seed: u64) -> Vec<u8> {
    let h = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
    let bytes = dt.block().1;
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data: Vec<u8> = (0..nb * bytes)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    for (b, blk) in data.chunks_exact_mut(bytes).enumerate() {
        let f = 1.0 + (b % 3) as f32;
        match dt {
            DType::Q4_K | DType::Q5_K => {
                blk[..2].copy_from_slice(&h(0.001 * f));
                blk[2..4].copy_from_slice(&h(0.002 * f));
            }
            DType::Q6_K => blk[208..210].copy_from_slice(&h(0.0005 * f)),
            DType::Q4_1 => {
                blk[..2].copy_from_slice(&h(0.01 * f));
                blk[2..4].copy_from_slice(&h(-0.05 * f));
            }
            _ => blk[..2].copy_from_slice(&h(0.01 * f)),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_scales_and_mins_at_once_equal_the_one_at_a_time_rule() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            let mut q = [0u8; 12];
            for b in q.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 32) as u8;
            }
            let (sc, mn) = scales_mins_k4(&q);
            for j in 0..8 {
                assert_eq!((sc[j], mn[j]), scale_min_k4(j, &q), "{q:?} j={j}");
            }
        }
    }

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5; byte j = j | (15−j)<<4 → x[j] = (j−8)/2, x[j+16] = (7−j)/2.
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize_row(DType::Q4_0, &b, &mut y);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.25, m = −1; low nibble j, high nibble 15 − j.
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize_row(DType::Q4_1, &b, &mut y);
        assert_eq!(y[0], -1.0);
        assert_eq!(y[5], 0.25);
        assert_eq!(y[16], 2.75);
        assert_eq!(y[31], -1.0);
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut b = h(0.125).to_vec();
        b.extend((0..32i8).map(|j| (j * 4 - 64) as u8));
        let mut y = [0f32; 32];
        dequantize_row(DType::Q8_0, &b, &mut y);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 * 4.0 - 64.0) * 0.125);
        }
    }

    #[test]
    fn q4_k_block_by_hand() {
        // d = 1, dmin = 0.5; sub-block scales 1..=8 and mins 8..=1 (the 6-bit packing of
        // `get_scale_min_k4`), all nibbles 3 → x = sc·3 − 0.5·m.
        let (sc, mn): ([u8; 8], [u8; 8]) = ([1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]);
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j];
            s[j + 4] = mn[j];
            s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        b.extend(s);
        b.extend([0x33u8; 128]);
        let mut y = [0f32; 256];
        dequantize_row(DType::Q4_K, &b, &mut y);
        for (i, v) in y.iter().enumerate() {
            let j = i / 32;
            assert_eq!(*v, sc[j] as f32 * 3.0 - 0.5 * mn[j] as f32, "{i}");
        }
        // Q5_K with every high bit set adds 16 to each quant.
        let mut b5 = b[..16].to_vec();
        b5.extend([0xFFu8; 32]);
        b5.extend([0x33u8; 128]);
        dequantize_row(DType::Q5_K, &b5, &mut y);
        for (i, v) in y.iter().enumerate() {
            let j = i / 32;
            assert_eq!(*v, sc[j] as f32 * 19.0 - 0.5 * mn[j] as f32, "{i}");
        }
    }

    #[test]
    fn q6_k_block_by_hand() {
        // All low nibbles 5, high pairs 2 → q = 5 + 32 − 32 = 5; scales 1..=16, d = 0.5.
        let mut b = vec![0x55u8; 128];
        b.extend([0xAAu8; 64]);
        b.extend((1..=16i8).map(|s| s as u8));
        b.extend(h(0.5));
        let mut y = [0f32; 256];
        dequantize_row(DType::Q6_K, &b, &mut y);
        for (i, v) in y.iter().enumerate() {
            // Element i sits in 16-wide group (i / 128)·8 + (i % 128 / 32)·2 + (i % 32) / 16.
            let g = (i / 128) * 8 + (i % 128 / 32) * 2 + (i % 32) / 16;
            assert_eq!(*v, 0.5 * (g + 1) as f32 * 5.0, "{i}");
        }
    }

    /// Random blocks dequantized by the `gguf` package's numpy reference
    /// (tests/fixtures/make_quant_vectors.py).
    #[test]
    fn dequantize_matches_the_gguf_numpy_reference() {
        let v: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/quant_vectors.json"
        )))
        .unwrap();
        for (name, dt) in [
            ("q4_0", DType::Q4_0),
            ("q4_1", DType::Q4_1),
            ("q8_0", DType::Q8_0),
            ("q4_k", DType::Q4_K),
            ("q5_k", DType::Q5_K),
            ("q6_k", DType::Q6_K),
        ] {
            let hex = v[name]["bytes"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let want: Vec<f32> = v[name]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(bytes.len(), dt.row_bytes(want.len()), "{name}");
            let mut got = vec![0f32; want.len()];
            dequantize_row(dt, &bytes, &mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{name}[{i}]: {a} vs {b}"
                );
            }
            // The block-at-a-time dot agrees with the dequantized row.
            let x: Vec<f32> = (0..want.len())
                .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let dot: f32 = want.iter().zip(&x).map(|(a, b)| a * b).sum();
            let got_dot = dot_row(dt, &bytes, &x);
            if supports_q8_dot(dt) {
                // Integer path: exact against the reference with quantized x; SIMD = plain.
                let acts = quantize_acts(&x);
                let xq: Vec<f32> = (0..x.len())
                    .map(|i| acts.qs[i] as f32 * acts.d[i / 32])
                    .collect();
                let want_q: f32 = want.iter().zip(&xq).map(|(a, b)| a * b).sum();
                let plain = dot_row_q8_plain(dt, &bytes, &acts.view());
                let fast = dot_row_q8(dt, &bytes, &acts);
                assert!(
                    (plain - want_q).abs() <= 1e-4 * (1.0 + want_q.abs()),
                    "{name}: {plain} vs {want_q}"
                );
                assert!(
                    (fast - plain).abs() <= 1e-4 * (1.0 + plain.abs()),
                    "{name}: {fast} vs {plain}"
                );
            }
            assert!(
                (got_dot - dot).abs() <= 1e-4 * (1.0 + dot.abs()),
                "{name}: {got_dot} vs {dot}"
            );
        }
    }

    #[test]
    fn dot_row_matches_dequantized_dot_and_quantize_round_trips() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..96)
            .map(|i| ((i * 53) % 31) as f32 / 15.0 - 1.0)
            .collect();
        for dt in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let mut q = vec![0u8; dt.row_bytes(96)];
            quantize_row(dt, &w, &mut q);
            let mut back = vec![0f32; 96];
            dequantize_row(dt, &q, &mut back);
            // Q4_0 maps the largest magnitude to −8, so the other sign reaches only 7·d.
            let tol = match dt {
                DType::Q8_0 => 0.01,
                DType::Q4_1 => 0.08,
                _ => 0.13,
            };
            for (a, b) in w.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{dt}: {a} vs {b}");
            }
            let want: f32 = back.iter().zip(&x).map(|(a, b)| a * b).sum();
            let got = dot_row(dt, &q, &x);
            assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{dt}");
            // The integer path: exact against the dequantized dot with quantized x, and
            // the SIMD twin equal to the plain loop up to summation order.
            let acts = quantize_acts(&x);
            let xq: Vec<f32> = (0..96)
                .map(|i| acts.qs[i] as f32 * acts.d[i / 32])
                .collect();
            let want_q: f32 = back.iter().zip(&xq).map(|(a, b)| a * b).sum();
            let plain = dot_row_q8_plain(dt, &q, &acts.view());
            let fast = dot_row_q8(dt, &q, &acts);
            assert!(
                (plain - want_q).abs() < 1e-3 * (1.0 + want_q.abs()),
                "{dt}: {plain} vs {want_q}"
            );
            assert!(
                (fast - plain).abs() < 1e-4 * (1.0 + plain.abs()),
                "{dt}: {fast} vs {plain}"
            );
            assert!(
                (fast - want).abs() < 0.05 * (1.0 + want.abs()),
                "{dt}: {fast} vs {want}"
            );
        }
    }

    fn pseudo(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    /// Activations whose scaled values hit exact halves (d = 1: the block's max is 127).
    fn with_ties(n: usize) -> Vec<f32> {
        let mut x = pseudo(n, 7).iter().map(|v| v * 100.0).collect::<Vec<_>>();
        for (b, blk) in x.chunks_mut(32).enumerate() {
            blk[0] = if b % 2 == 0 { 127.0 } else { -127.0 };
            blk[1] = 0.5;
            blk[2] = -0.5;
            blk[3] = 2.5;
            blk[4] = -3.5;
            blk[5] = 126.5;
            blk[6] = 0.0;
            blk[7] = -0.49999997;
        }
        x
    }

    /// A row of `nb` random blocks of `dt` (random bytes; the f16 scales set so values are
    /// O(1): quantize_row writes no K-quants).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    /// Runs `dot` (one SIMD level's integer dot) against `dot_row_q8_plain` on rows of odd
    /// and even block counts (the VNNI path takes blocks in pairs plus a tail).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn integer_dots_match_the_plain_path(
        level: &str,
        types: &[DType],
        dot: impl Fn(DType, &[u8], &ActsRef<'_>) -> f32,
    ) {
        for dt in types.iter().copied() {
            let per = dt.block().0 / 32;
            for nb in 1..=if per == 1 { 9 } else { 3 } {
                let k = 32 * per * nb;
                for (seed, x) in [(1u64, pseudo(k, 3)), (2, with_ties(k))] {
                    let acts = quantize_acts(&x);
                    let q = if per == 1 {
                        let mut q = vec![0u8; dt.row_bytes(k)];
                        quantize_row(dt, &pseudo(k, 11 + seed), &mut q);
                        q
                    } else {
                        random_blocks(dt, nb, 31 + seed)
                    };
                    // The scale of the terms: Σ|w|·|x̂|.
                    let mut w = vec![0f32; k];
                    dequantize_row(dt, &q, &mut w);
                    let mag: f32 = (0..k)
                        .map(|i| (w[i] * acts.qs[i] as f32 * acts.d[i / 32]).abs())
                        .sum();
                    let plain = dot_row_q8_plain(dt, &q, &acts.view());
                    let got = dot(dt, &q, &acts.view());
                    assert!(
                        (got - plain).abs() <= 1e-5 * (1.0 + mag),
                        "{level} {dt} nb={nb}: {got} vs {plain}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_integer_dots_match_the_plain_path() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA + F16C");
        }
        let types = [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ];
        // SAFETY: the features were detected above.
        integer_dots_match_the_plain_path("avx2", &types, |dt, q, a| unsafe {
            x86::dot_row_q8_avx2(dt, q, a)
        });
    }

    #[cfg(target_arch = "aarch64")]
    const NEON_TYPES: [DType; 6] = [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_integer_dots_match_the_plain_path() {
        if !std::arch::is_aarch64_feature_detected!("neon") {
            return crate::backend::cpu::skip_test("this CPU has no NEON");
        }
        // SAFETY: neon was detected above.
        integer_dots_match_the_plain_path("neon", &NEON_TYPES, |dt, q, a| unsafe {
            arm::dot_row_q8(false, dt, q, a)
        });
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_dotprod_integer_dots_match_the_plain_path() {
        if !(std::arch::is_aarch64_feature_detected!("neon")
            && std::arch::is_aarch64_feature_detected!("dotprod"))
        {
            return crate::backend::cpu::skip_test("this CPU has no NEON dot product (dotprod)");
        }
        // SAFETY: neon and dotprod were detected above.
        integer_dots_match_the_plain_path("dotprod", &NEON_TYPES, |dt, q, a| unsafe {
            arm::dot_row_q8(true, dt, q, a)
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_vnni_integer_dots_match_the_plain_path() {
        if !vnni_detected() {
            return crate::backend::cpu::skip_test(
                "this CPU has no AVX-512 F + BW + VL + VNNI + F16C",
            );
        }
        let types = [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ];
        // SAFETY: the features were detected above.
        integer_dots_match_the_plain_path("vnni", &types, |dt, q, a| unsafe {
            x86::dot_row_q8_vnni(dt, q, a)
        });
    }

    #[cfg(target_arch = "x86_64")]
    fn vnni_detected() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("f16c")
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_activation_quantization_is_bit_identical_to_the_plain_path() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA + F16C");
        }
        for nb in [1usize, 2, 7] {
            for x in [pseudo(32 * nb, 5), with_ties(32 * nb), vec![0.0; 32 * nb]] {
                let mut want = QuantizedActs::default();
                want.qs.resize(32 * nb, 0);
                want.d.resize(nb, 0.0);
                want.sum.resize(nb, 0);
                let mut got = QuantizedActs {
                    qs: vec![0; 32 * nb],
                    d: vec![0.0; nb],
                    sum: vec![0; nb],
                };
                quantize_acts_plain(&x, &mut want.qs, &mut want.d, &mut want.sum);
                // SAFETY: detected above.
                unsafe { x86::quantize_acts_avx2(&x, &mut got.qs, &mut got.d, &mut got.sum) };
                assert_eq!(got.qs, want.qs, "nb={nb}");
                assert_eq!(got.sum, want.sum, "nb={nb}");
                assert_eq!(
                    got.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_activation_quantization_is_bit_identical_to_the_plain_path() {
        if !vnni_detected() {
            return crate::backend::cpu::skip_test(
                "this CPU has no AVX-512 F + BW + VL + VNNI + F16C",
            );
        }
        let mut zeros = vec![0f32; 64];
        zeros[40] = -1e-30;
        for x in [pseudo(32 * 7, 5), with_ties(32 * 4), zeros] {
            let mut plain = QuantizedActs::default();
            let nb = x.len() / 32;
            plain.qs.resize(32 * nb, 0);
            plain.d.resize(nb, 0.0);
            plain.sum.resize(nb, 0);
            quantize_acts_plain(&x, &mut plain.qs, &mut plain.d, &mut plain.sum);
            let mut fast = QuantizedActs {
                qs: vec![99; 32 * nb],
                d: vec![9.0; nb],
                sum: vec![9; nb],
            };
            // SAFETY: detected above.
            unsafe { x86::quantize_acts_avx512(&x, &mut fast.qs, &mut fast.d, &mut fast.sum) };
            assert_eq!(fast.qs, plain.qs);
            assert_eq!(fast.sum, plain.sum);
            let (fd, pd): (Vec<u32>, Vec<u32>) = (
                fast.d.iter().map(|v| v.to_bits()).collect(),
                plain.d.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(fd, pd);
        }
        // The ties really are ties: ±0.5 rounds away from zero, as `f32::round` does.
        let mut a = QuantizedActs::default();
        quantize_acts_into(&with_ties(32), &mut a);
        assert_eq!(&a.qs[..8], &[127, 1, -1, 3, -4, 127, 0, 0]);
    }
}
