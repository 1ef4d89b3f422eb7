//! Quantized prefill: `out = x · Wᵀ` for n > 1 tokens with W block-quantized (the types
//! `quant::supports_q8_dot` names), multiplied in integers as decode is: x rounded to 8 bits
//! in blocks of 32 (`quant::quantize_blocks`, the decode rule, ggml's Q8_0), the weights
//! read from their stored blocks. Nothing is widened to f32.
//!
//! Every supported type's 32-block of weights is `w_j = e_h · q_j + o` with integer quants
//! q_j, a scale e_h per half (16 values: Q6_K has one per 16, the others repeat theirs) and
//! an offset o (Q4_0: −8·d, Q4_1: m, Q4_K/Q5_K: −dmin·m; 0 for the signed types Q8_0 and
//! Q6_K). With x̂_j = d_x · q_x,j:
//!
//! ```text
//! Σ_j w_j x̂_j = Σ_h e_h · d_x · Σ_{j∈h} q_j q_x,j  +  o · (d_x · Σ_j q_x,j)
//! ```
//!
//! A task (a chunk of rows × a block of tokens, on the team) first *packs* its rows into
//! panels of `PR` rows: per pair of 32-blocks and row, the 64 quants as bytes (nibbles
//! unpacked; unsigned, or signed for Q8_0/Q6_K), the four half-block scales, and per row the
//! block offsets. Packing costs O(rows · k) per task, the kernels O(rows · k · tokens).
//! The kernels hold a `PR` × T tile of f32 accumulators: per block an integer dot (AVX2
//! `maddubs` + `madd`; AVX-512 VNNI `vpdpbusd`, two blocks per zmm; the signed types move
//! the weight's sign onto x), converted and multiplied by `e · d_x`, and every 8 or 16 blocks
//! the offsets as an f32 dot of `o` against the token's `d_x · sum`. The plain level calls
//! `quant`'s plain dot per row and token: the oracle of both SIMD paths.
//!
//! Invariant: results equal the decode dots (`quant::dot_row_q8`) of the same row and token
//! up to f32 summation order.

use std::cell::RefCell;

use super::matmul::{MatRef, OutPtr};
use super::quant::{self, ActsRef};
use super::team;
use crate::backend::DType;

/// Rows per panel: the kernels' register tile height.
const PR: usize = 4;

/// Whether `matmul` multiplies `dtype` this way for n > 1.
pub fn supports(dtype: DType, cols: usize) -> bool {
    quant::supports_q8_dot(dtype) && cols.is_multiple_of(32)
}

/// Types whose quants are signed: the kernels move the weight's sign onto x and add no
/// offset.
fn signed(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q6_K)
}

/// n tokens' activations quantized by the decode rule, laid out for the kernels: token t's
/// quants at `qs[t * qstride..]` (its blocks padded with zero blocks to an even count, for
/// the two-block steps), its block scales at `d[t * sstride..]`, block sums at
/// `sum[t * sstride..]` and `d · sum` at `ds[t * sstride..]` (padded with zeros to a
/// multiple of 16 blocks, for the offset dots).
#[derive(Default)]
struct Batch {
    n: usize,
    nb: usize,
    qstride: usize,
    sstride: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<i32>,
    ds: Vec<f32>,
}

impl Batch {
    fn view(&self, t: usize) -> ActsRef<'_> {
        ActsRef {
            qs: &self.qs[t * self.qstride..t * self.qstride + 32 * self.nb],
            d: &self.d[t * self.sstride..t * self.sstride + self.nb],
            sum: &self.sum[t * self.sstride..t * self.sstride + self.nb],
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: the tasks below write disjoint token rows.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Quantizes `x` (`[n, k]`) into `b`, tokens in parallel on the team.
fn quantize_batch(x: &[f32], n: usize, k: usize, b: &mut Batch) {
    let nb = k / 32;
    b.n = n;
    b.nb = nb;
    b.qstride = nb.div_ceil(2) * 64;
    b.sstride = nb.div_ceil(16) * 16;
    b.qs.resize(n * b.qstride, 0);
    b.d.resize(n * b.sstride, 0.0);
    b.sum.resize(n * b.sstride, 0);
    b.ds.resize(n * b.sstride, 0.0);
    let (qstride, sstride) = (b.qstride, b.sstride);
    let (qs, d, sum, ds) = (
        SendPtr(b.qs.as_mut_ptr()),
        SendPtr(b.d.as_mut_ptr()),
        SendPtr(b.sum.as_mut_ptr()),
        SendPtr(b.ds.as_mut_ptr()),
    );
    // Tokens in chunks of at least 64 KiB of activations.
    let per = (16384 / k.max(1)).max(1);
    team::par_for(n.div_ceil(per), &|c| {
        let (qs, d, sum, ds) = (qs, d, sum, ds);
        for t in c * per..((c + 1) * per).min(n) {
            // SAFETY: token t's rows of the four buffers belong to this chunk only; the
            // buffers hold n rows of their strides.
            let (q, dd, s, dsum) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qs.0.add(t * qstride), qstride),
                    std::slice::from_raw_parts_mut(d.0.add(t * sstride), sstride),
                    std::slice::from_raw_parts_mut(sum.0.add(t * sstride), sstride),
                    std::slice::from_raw_parts_mut(ds.0.add(t * sstride), sstride),
                )
            };
            quant::quantize_blocks(&x[t * k..(t + 1) * k], q, dd, s);
            q[32 * nb..].fill(0);
            dd[nb..].fill(0.0);
            s[nb..].fill(0);
            for j in 0..sstride {
                dsum[j] = dd[j] * s[j] as f32;
            }
        }
    });
}

/// One 32-block `b` of a stored row as `q` (32 quants, unsigned or signed by `signed`) and
/// (e for the first 16, e for the last 16, o); see the module docs.
fn unpack_block(dtype: DType, row: &[u8], b: usize, q: &mut [u8]) -> (f32, f32, f32) {
    let f16 = quant::f16_at;
    match dtype {
        DType::Q4_0 | DType::Q4_1 => {
            let (bytes, start) = if dtype == DType::Q4_0 {
                (18, 2)
            } else {
                (20, 4)
            };
            let blk = &row[bytes * b..bytes * (b + 1)];
            for j in 0..16 {
                q[j] = blk[start + j] & 0xF;
                q[j + 16] = blk[start + j] >> 4;
            }
            let d = f16(blk, 0);
            let o = if dtype == DType::Q4_0 {
                -8.0 * d
            } else {
                f16(blk, 2)
            };
            (d, d, o)
        }
        DType::Q8_0 => {
            let blk = &row[34 * b..34 * (b + 1)];
            q[..32].copy_from_slice(&blk[2..34]);
            let d = f16(blk, 0);
            (d, d, 0.0)
        }
        DType::Q4_K | DType::Q5_K => {
            let (sb, j) = (b / 8, b % 8);
            let size = if dtype == DType::Q4_K { 144 } else { 176 };
            let blk = &row[size * sb..size * (sb + 1)];
            let (sc, m) = quant::scale_min_k4(j, &blk[4..16]);
            let shift = 4 * (j % 2);
            if dtype == DType::Q4_K {
                let qs = &blk[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
                for l in 0..32 {
                    q[l] = (qs[l] >> shift) & 0xF;
                }
            } else {
                let (qh, qs) = (
                    &blk[16..48],
                    &blk[48 + 32 * (j / 2)..48 + 32 * (j / 2) + 32],
                );
                for l in 0..32 {
                    q[l] = ((qs[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
                }
            }
            let (d, dmin) = (f16(blk, 0), f16(blk, 2));
            let e = d * sc as f32;
            (e, e, -(dmin * m as f32))
        }
        DType::Q6_K => {
            let (sb, j) = (b / 8, b % 8);
            let blk = &row[210 * sb..210 * (sb + 1)];
            let (n, qt) = (j / 4, j % 4);
            let ql = &blk[64 * n + 32 * (qt % 2)..64 * n + 32 * (qt % 2) + 32];
            let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
            for l in 0..32 {
                let nib = if qt < 2 { ql[l] & 0xF } else { ql[l] >> 4 };
                let hi = (qh[l] >> (2 * qt)) & 3;
                q[l] = ((nib | (hi << 4)) as i8 - 32) as u8;
            }
            let d = f16(blk, 208);
            let (s0, s1) = (
                blk[192 + 8 * n + 2 * qt] as i8,
                blk[192 + 8 * n + 2 * qt + 1] as i8,
            );
            (d * s0 as f32, d * s1 as f32, 0.0)
        }
        _ => unreachable!("qgemm on element type {dtype}"),
    }
}

/// Packed panels of rows (see the module docs): for panel p, block pair bp and row i of the
/// panel, 64 quants at `q[((p·nbp + bp)·PR + i)·64..]` and four half-block scales at
/// `e[((p·nbp + bp)·PR + i)·4..]`; row i's block offsets at `o[(p·PR + i)·sstride..]`.
#[derive(Default)]
struct Panels {
    q: Vec<u8>,
    e: Vec<f32>,
    o: Vec<f32>,
}

/// Packs rows `r0..r1` of `w` (a panel's missing rows are zero, so their results are 0).
fn pack(w: &MatRef<'_>, r0: usize, r1: usize, nb: usize, sstride: usize, p: &mut Panels) {
    let nbp = nb.div_ceil(2);
    let np = (r1 - r0).div_ceil(PR);
    p.q.resize(np * nbp * PR * 64, 0);
    p.e.resize(np * nbp * PR * 4, 0.0);
    p.o.resize(np * PR * sstride, 0.0);
    let rb = w.row_bytes();
    for pi in 0..np {
        for i in 0..PR {
            let r = r0 + pi * PR + i;
            let orow = &mut p.o[(pi * PR + i) * sstride..(pi * PR + i + 1) * sstride];
            if r >= r1 {
                for bp in 0..nbp {
                    let at = (pi * nbp + bp) * PR + i;
                    p.q[at * 64..at * 64 + 64].fill(0);
                    p.e[at * 4..at * 4 + 4].fill(0.0);
                }
                orow.fill(0.0);
                continue;
            }
            let row = &w.data[r * rb..(r + 1) * rb];
            #[allow(clippy::needless_range_loop)]
            for b in 0..2 * nbp {
                let at = (pi * nbp + b / 2) * PR + i;
                let h = b % 2;
                let q = &mut p.q[at * 64 + 32 * h..at * 64 + 32 * h + 32];
                let e = &mut p.e[at * 4 + 2 * h..at * 4 + 2 * h + 2];
                if b < nb {
                    let (e0, e1, o) = unpack_block(w.dtype, row, b, q);
                    e[0] = e0;
                    e[1] = e1;
                    orow[b] = o;
                } else {
                    q.fill(0);
                    e.fill(0.0);
                }
            }
            orow[nb..].fill(0.0);
        }
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
    static PANELS: RefCell<Panels> = RefCell::new(Panels::default());
}

/// Which kernels this process runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// aarch64: `quant`'s NEON dot (with `sdot` where present) per row and token, on the
    /// team; no packing yet.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

fn path() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::vnni() {
            return Path::Vnni;
        }
        if super::simd::avx2_f16c() {
            return Path::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if super::simd::level() == super::simd::Level::Neon {
        return Path::Neon;
    }
    Path::Plain
}

/// Tokens per kernel call (the register tile's width) on `path`.
fn tile_tokens(path: Path) -> usize {
    match path {
        Path::Plain => 1,
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => 2,
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => 4,
        #[cfg(target_arch = "aarch64")]
        Path::Neon => 1,
    }
}

/// `parts[i].1 = x · parts[i].0ᵀ` for x `[n, k]` (every part `supports`-ed, k its columns),
/// x quantized once for all parts.
pub(super) fn matmul_many(x: &[f32], n: usize, parts: &[(MatRef<'_>, OutPtr)]) {
    let Some((w0, _)) = parts.first() else { return };
    let k = w0.cols;
    debug_assert!(parts
        .iter()
        .all(|(w, _)| w.cols == k && supports(w.dtype, k)));
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        quantize_batch(x, n, k, &mut b);
        run(&b, parts, path());
    })
}

/// The tasks of every part over the quantized batch `b`.
fn run(b: &Batch, parts: &[(MatRef<'_>, OutPtr)], path: Path) {
    let (n, nb) = (b.n, b.nb);
    let k = 32 * nb;
    let threads = rayon::current_num_threads().max(1);
    // Token blocks of about 128 KiB of quantized activations (a share of L2), rows in
    // chunks so that every thread gets several tasks.
    let tb = (n.min((128 << 10) / k.max(1)).max(8)).min(n);
    let tblocks = n.div_ceil(tb);
    let mut starts = Vec::with_capacity(parts.len() + 1);
    let mut chunks = Vec::with_capacity(parts.len());
    let mut total = 0;
    for (w, _) in parts {
        let want = (8 * threads).div_ceil(tblocks).max(1);
        let rc = (w.rows.div_ceil(want).div_ceil(PR) * PR).clamp(4 * PR, 64 * PR);
        starts.push(total);
        chunks.push(rc);
        total += w.rows.div_ceil(rc) * tblocks;
    }
    starts.push(total);
    team::par_for(total, &|i| {
        let p = starts.partition_point(|&s| s <= i) - 1;
        let (w, out) = (&parts[p].0, parts[p].1);
        let rc = chunks[p];
        let j = i - starts[p];
        let (rt, tt) = (j / tblocks, j % tblocks);
        let (r0, r1) = (rt * rc, ((rt + 1) * rc).min(w.rows));
        let (t0, t1) = (tt * tb, ((tt + 1) * tb).min(n));
        task(b, w, out, r0, r1, t0, t1, path);
    });
}

/// Rows `r0..r1` × tokens `t0..t1` of one part.
#[allow(clippy::too_many_arguments)]
fn task(
    b: &Batch,
    w: &MatRef<'_>,
    out: OutPtr,
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    path: Path,
) {
    let m = w.rows;
    #[cfg(target_arch = "aarch64")]
    let by_rows = matches!(path, Path::Plain | Path::Neon);
    #[cfg(not(target_arch = "aarch64"))]
    let by_rows = path == Path::Plain;
    if by_rows {
        let rb = w.row_bytes();
        for t in t0..t1 {
            let x = b.view(t);
            for r in r0..r1 {
                let row = &w.data[r * rb..(r + 1) * rb];
                let v = if path == Path::Plain {
                    quant::dot_row_q8_plain(w.dtype, row, &x)
                } else {
                    quant::dot_row_q8_ref(w.dtype, row, &x)
                };
                // SAFETY: (t, r) lies in this task's rows and tokens, which no other task writes.
                unsafe { *out.0.add(t * m + r) = v };
            }
        }
        return;
    }
    PANELS.with(|pb| {
        let mut pb = pb.borrow_mut();
        let nb = b.nb;
        let nbp = nb.div_ceil(2);
        pack(w, r0, r1, nb, b.sstride, &mut pb);
        let tt = tile_tokens(path);
        let signed = signed(w.dtype);
        for pi in 0..(r1 - r0).div_ceil(PR) {
            let q = &pb.q[pi * nbp * PR * 64..(pi + 1) * nbp * PR * 64];
            let e = &pb.e[pi * nbp * PR * 4..(pi + 1) * nbp * PR * 4];
            let o = &pb.o[pi * PR * b.sstride..(pi + 1) * PR * b.sstride];
            let rows = (r1 - r0 - pi * PR).min(PR);
            let mut t = t0;
            while t < t1 {
                let cnt = tt.min(t1 - t);
                let mut res = [[0f32; 4]; PR];
                tile(path, signed, q, e, o, b, t, cnt, &mut res);
                for (i, ri) in res.iter().enumerate().take(rows) {
                    for (c, v) in ri.iter().enumerate().take(cnt) {
                        // SAFETY: (t + c, r0 + pi·PR + i) lies in this task's tokens and rows.
                        unsafe { *out.0.add((t + c) * m + r0 + pi * PR + i) = *v };
                    }
                }
                t += cnt;
            }
        }
    });
}

/// One panel against tokens `t..t + cnt` (cnt ≤ `tile_tokens`): `res[i][c]`.
#[allow(clippy::too_many_arguments)]
fn tile(
    path: Path,
    signed: bool,
    q: &[u8],
    e: &[f32],
    o: &[f32],
    b: &Batch,
    t: usize,
    cnt: usize,
    res: &mut [[f32; 4]; PR],
) {
    let nbp = b.nb.div_ceil(2);
    assert!(q.len() >= nbp * PR * 64 && e.len() >= nbp * PR * 4 && o.len() >= PR * b.sstride);
    assert!((t + cnt) * b.qstride <= b.qs.len() && (t + cnt) * b.sstride <= b.d.len());
    #[cfg(target_arch = "x86_64")]
    {
        let xq = |c: usize| b.qs[(t + c) * b.qstride..].as_ptr();
        let xd = |c: usize| b.d[(t + c) * b.sstride..].as_ptr();
        let xs = |c: usize| b.ds[(t + c) * b.sstride..].as_ptr();
        macro_rules! call {
            ($f:ident, $T:literal) => {{
                let xq: [*const i8; $T] = std::array::from_fn(|c| xq(c));
                let xd: [*const f32; $T] = std::array::from_fn(|c| xd(c));
                let xs: [*const f32; $T] = std::array::from_fn(|c| xs(c));
                // SAFETY: the features were detected at run time (`path`); the lengths are
                // checked above: nbp block pairs of PR rows, sstride offsets, and each
                // token's padded blocks.
                let r = unsafe {
                    if signed {
                        x86::$f::<$T, true>(
                            q.as_ptr(),
                            e.as_ptr(),
                            o.as_ptr(),
                            nbp,
                            b.sstride,
                            xq,
                            xd,
                            xs,
                        )
                    } else {
                        x86::$f::<$T, false>(
                            q.as_ptr(),
                            e.as_ptr(),
                            o.as_ptr(),
                            nbp,
                            b.sstride,
                            xq,
                            xd,
                            xs,
                        )
                    }
                };
                for i in 0..PR {
                    res[i][..$T].copy_from_slice(&r[i]);
                }
            }};
        }
        match (path, cnt) {
            (Path::Avx2, 1) => call!(tile_avx2, 1),
            (Path::Avx2, _) => call!(tile_avx2, 2),
            (Path::Vnni, 1) => call!(tile_vnni, 1),
            (Path::Vnni, 2) => call!(tile_vnni, 2),
            (Path::Vnni, 3) => call!(tile_vnni, 3),
            (Path::Vnni, _) => call!(tile_vnni, 4),
            (Path::Plain, _) => unreachable!("the plain path does not pack"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (path, signed, q, e, o, b, t, cnt, res);
        unreachable!("the plain path does not pack");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::PR;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// `PR` rows × T tokens, one 32-block at a time: `maddubs` (|w| against x with w's sign
    /// for the signed types) and `madd` into 8 i32 (lanes 0–3 the first 16 values, 4–7 the
    /// last 16), converted and FMA'd with `e_h · d_x`; the offsets every 8 blocks.
    ///
    /// # Safety
    /// AVX2 + FMA; `q`, `e` hold `nbp` block pairs of `PR` rows, `o` `PR` rows of `sstride`
    /// offsets (a multiple of 8); each token's `xq` holds `2·nbp` blocks, `xd` and `xs`
    /// `sstride` values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2<const T: usize, const SIGNED: bool>(
        q: *const u8,
        e: *const f32,
        o: *const f32,
        nbp: usize,
        sstride: usize,
        xq: [*const i8; T],
        xd: [*const f32; T],
        xs: [*const f32; T],
    ) -> [[f32; T]; PR] {
        let ones = _mm256_set1_epi16(1);
        let spread = [
            _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
            _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
        ];
        let mut acc = [[_mm256_setzero_ps(); T]; PR];
        for bp in 0..nbp {
            for (h, &idx) in spread.iter().enumerate() {
                let blk = 2 * bp + h;
                let xv: [__m256i; T] = std::array::from_fn(|c| {
                    _mm256_loadu_si256(xq[c].add(32 * blk) as *const __m256i)
                });
                let dv: [__m256; T] =
                    std::array::from_fn(|c| _mm256_broadcast_ss(&*xd[c].add(blk)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let at = bp * PR + i;
                    let w = _mm256_loadu_si256(q.add(at * 64 + 32 * h) as *const __m256i);
                    let ev = _mm256_permutevar8x32_ps(
                        _mm256_castps128_ps256(_mm_loadu_ps(e.add(at * 4))),
                        idx,
                    );
                    let aw = if SIGNED { _mm256_sign_epi8(w, w) } else { w };
                    for c in 0..T {
                        let x = if SIGNED {
                            _mm256_sign_epi8(xv[c], w)
                        } else {
                            xv[c]
                        };
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), ones);
                        acc_i[c] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_mul_ps(ev, dv[c]),
                            acc_i[c],
                        );
                    }
                }
            }
        }
        if !SIGNED {
            let mut j = 0;
            while j < sstride {
                let sv: [__m256; T] = std::array::from_fn(|c| _mm256_loadu_ps(xs[c].add(j)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let ov = _mm256_loadu_ps(o.add(i * sstride + j));
                    for c in 0..T {
                        acc_i[c] = _mm256_fmadd_ps(ov, sv[c], acc_i[c]);
                    }
                }
                j += 8;
            }
        }
        let mut out = [[0f32; T]; PR];
        for i in 0..PR {
            for c in 0..T {
                out[i][c] = hsum(acc[i][c]);
            }
        }
        out
    }

    /// `PR` rows × T tokens with AVX-512 VNNI, two 32-blocks per zmm: `vpdpbusd` into 16 i32
    /// (4 per half-block), converted and FMA'd with the spread `e_h · d_x`; the offsets
    /// every 16 blocks.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI; the lengths of `tile_avx2`, `sstride` a multiple of 16.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub unsafe fn tile_vnni<const T: usize, const SIGNED: bool>(
        q: *const u8,
        e: *const f32,
        o: *const f32,
        nbp: usize,
        sstride: usize,
        xq: [*const i8; T],
        xd: [*const f32; T],
        xs: [*const f32; T],
    ) -> [[f32; T]; PR] {
        let spread_e = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let spread_d = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); T]; PR];
        for bp in 0..nbp {
            let xv: [__m512i; T] =
                std::array::from_fn(|c| _mm512_loadu_si512(xq[c].add(64 * bp) as *const __m512i));
            let dv: [__m512; T] = std::array::from_fn(|c| {
                let two = _mm_castpd_ps(_mm_load_sd(xd[c].add(2 * bp) as *const f64));
                _mm512_permutexvar_ps(spread_d, _mm512_castps128_ps512(two))
            });
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let at = bp * PR + i;
                let w = _mm512_loadu_si512(q.add(at * 64) as *const __m512i);
                let ev = _mm512_permutexvar_ps(
                    spread_e,
                    _mm512_castps128_ps512(_mm_loadu_ps(e.add(at * 4))),
                );
                let (aw, neg) = if SIGNED {
                    (_mm512_abs_epi8(w), _mm512_movepi8_mask(w))
                } else {
                    (w, 0)
                };
                for c in 0..T {
                    let x = if SIGNED {
                        _mm512_mask_sub_epi8(xv[c], neg, zero, xv[c])
                    } else {
                        xv[c]
                    };
                    let p = _mm512_dpbusd_epi32(zero, aw, x);
                    acc_i[c] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(ev, dv[c]), acc_i[c]);
                }
            }
        }
        if !SIGNED {
            let mut j = 0;
            while j < sstride {
                let sv: [__m512; T] = std::array::from_fn(|c| _mm512_loadu_ps(xs[c].add(j)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let ov = _mm512_loadu_ps(o.add(i * sstride + j));
                    for c in 0..T {
                        acc_i[c] = _mm512_fmadd_ps(ov, sv[c], acc_i[c]);
                    }
                }
                j += 16;
            }
        }
        let mut out = [[0f32; T]; PR];
        for i in 0..PR {
            for c in 0..T {
                out[i][c] = _mm512_reduce_add_ps(acc[i][c]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::fp8_matmul::WeightScale;

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    fn h(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// `rows` rows of `k` columns of random blocks of `dt`, scales set so values are O(1).
    fn random_rows(dt: DType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
        let (e, bytes) = dt.block();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut data: Vec<u8> = (0..rows * k / e * bytes)
            .map(|_| (xorshift(&mut s) >> 24) as u8)
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

    fn activations(n: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut x: Vec<f32> = (0..n * k)
            .map(|_| (xorshift(&mut s) % 20001) as f32 / 10000.0 - 1.0)
            .collect();
        // A zero block, a block with exact ties, a stretched block.
        if k >= 96 {
            x[32..64].fill(0.0);
            x[64] = 127.0 / 128.0;
            x[65] = 0.5 / 128.0;
            x[66] = -2.5 / 128.0;
            x[70] *= 5.0;
        }
        x
    }

    /// Every packing path against the plain one (`quant`'s plain dot per row and token),
    /// on ragged panels (rows not a multiple of 4), ragged token tiles and odd block counts.
    fn paths_match_the_plain_path(path: Path) {
        for dt in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
            let ks: &[usize] = if dt.block().0 == 256 {
                &[256, 768]
            } else {
                &[32, 96, 288]
            };
            for &k in ks {
                for (m, n) in [(1, 2), (5, 3), (8, 7), (37, 5), (70, 12)] {
                    let data = random_rows(dt, m, k, (m * 1000 + k + n) as u64);
                    let w = MatRef {
                        dtype: dt,
                        data: &data,
                        rows: m,
                        cols: k,
                        scale: WeightScale::None,
                    };
                    let x = activations(n, k, (7 * m + n) as u64);
                    let mut b = Batch::default();
                    quantize_batch(&x, n, k, &mut b);
                    let mut want = vec![f32::NAN; n * m];
                    let mut got = vec![f32::NAN; n * m];
                    run(&b, &[(w, OutPtr(want.as_mut_ptr()))], Path::Plain);
                    run(&b, &[(w, OutPtr(got.as_mut_ptr()))], path);
                    // The scale of the terms, Σ|w|·|x̂|, for the bound on summation order.
                    let mut wide = vec![0f32; k];
                    for r in 0..m {
                        quant::dequantize_row(
                            dt,
                            &data[r * w.row_bytes()..(r + 1) * w.row_bytes()],
                            &mut wide,
                        );
                        for t in 0..n {
                            let xv = b.view(t);
                            let mag: f32 = (0..k)
                                .map(|i| (wide[i] * xv.qs[i] as f32 * xv.d[i / 32]).abs())
                                .sum();
                            let (g, p) = (got[t * m + r], want[t * m + r]);
                            assert!(
                                (g - p).abs() <= 2e-5 * (1.0 + mag),
                                "{path:?} {dt} k={k} m={m} n={n} row {r} token {t}: {g} vs {p}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_prefill_matches_the_plain_path() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA + F16C");
        }
        paths_match_the_plain_path(Path::Avx2);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_vnni_prefill_matches_the_plain_path() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"))
        {
            return crate::backend::cpu::skip_test("this CPU has no AVX-512 F + BW + VL + VNNI");
        }
        paths_match_the_plain_path(Path::Vnni);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_prefill_matches_the_plain_path() {
        if !std::arch::is_aarch64_feature_detected!("neon") {
            return crate::backend::cpu::skip_test("this CPU has no NEON");
        }
        paths_match_the_plain_path(Path::Neon);
    }

    #[test]
    fn plain_prefill_equals_the_decode_dot_of_each_token() {
        let (m, n, k) = (9, 4, 256);
        for dt in [DType::Q4_0, DType::Q4_K, DType::Q6_K] {
            let data = random_rows(dt, m, k, 5);
            let w = MatRef {
                dtype: dt,
                data: &data,
                rows: m,
                cols: k,
                scale: WeightScale::None,
            };
            let x = activations(n, k, 9);
            let mut b = Batch::default();
            quantize_batch(&x, n, k, &mut b);
            let mut got = vec![f32::NAN; n * m];
            run(&b, &[(w, OutPtr(got.as_mut_ptr()))], Path::Plain);
            for t in 0..n {
                let acts = quant::quantize_acts(&x[t * k..(t + 1) * k]);
                for r in 0..m {
                    let want = quant::dot_row_q8_plain(
                        dt,
                        &data[r * w.row_bytes()..(r + 1) * w.row_bytes()],
                        &acts.view(),
                    );
                    assert_eq!(got[t * m + r], want, "{dt} row {r} token {t}");
                }
            }
        }
    }
}
