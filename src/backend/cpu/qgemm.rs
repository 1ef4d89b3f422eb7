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
//! A task (a chunk of rows, on the team) first *packs* its rows, once, then runs them
//! against every token. On AVX-512 VNNI (16 rows) and AVX2 (8 rows) the rows are
//! interleaved so one integer lane holds one row: each token's 4 quantized bytes are
//! broadcast against the next 4 quants of every row (`vpdpbusd`, or `maddubs` + `madd`),
//! a whole block (Q6_K: a half-block) is summed in integers, and then per token the block's
//! value `cvt · e + o · Σ_j q_x,j` meets d_x in one FMA (grouped as the plain dot groups
//! it). Signed quants are made unsigned (Q8_0 + 128 for VNNI, Q6_K + 32) with a matching
//! offset; AVX2 keeps Q8_0 signed (shifted, it would overflow `maddubs`) and moves the
//! weight's sign onto x. Where the offset is a whole multiple of the scale (`o = −Z·e`:
//! Q4_0's 8, Q6_K's 32, VNNI Q8_0's 128) the integer sums start at `−Z·Σ_j q_x,j` instead
//! and the block's value is just `cvt · e` (Q6_K prefill: 1.4x at 4096×1024, 200 tokens).
//! Packing costs O(rows · k) per task, the kernels O(rows · k · tokens). The plain level
//! calls `quant`'s plain dot per row and token: the oracle of every SIMD path.
//!
//! Invariant: results equal the decode dots (`quant::dot_row_q8`) of the same row and token
//! up to f32 summation order.

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
use super::interleave;
use super::matrix::{MatRef, OutPtr};
use super::quant::{self, ActsRef};
use super::team;
use crate::backend::DType;

/// Whether `matmul` multiplies `dtype` this way for n > 1.
pub fn supports(dtype: DType, cols: usize) -> bool {
    quant::supports_q8_dot(dtype) && cols.is_multiple_of(32)
}

/// n tokens' activations quantized by the decode rule, laid out for the kernels: token t's
/// quants at `qs[t * qstride..]` (its blocks padded with zero blocks to an even count, for
/// the two-block steps), its block scales at `d[t * sstride..]` and block sums at
/// `sum[t * sstride..]` (padded with zeros to a multiple of 16 blocks), half-block sums at
/// `sum16[t * 2 * sstride + 2b + h]` (Q6_K's offsets, one per half).
#[derive(Default)]
struct Batch {
    n: usize,
    nb: usize,
    qstride: usize,
    sstride: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<i32>,
    sum16: Vec<i32>,
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

/// Grows `v` to at least `len` values and never shrinks it: the buffers here are reused
/// from call to call by matrices of other sizes, and a resize down and up again zero-filled
/// all of it each time (4% of a Nemotron-H Q4_0 prefill, as memset). Whoever reads a value
/// writes it first.
fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Quantizes `x` (`[n, k]`) into `b`, tokens in parallel on the team.
fn quantize_batch(x: &[f32], n: usize, k: usize, b: &mut Batch) {
    let nb = k / 32;
    b.n = n;
    b.nb = nb;
    b.qstride = nb.div_ceil(2) * 64;
    b.sstride = nb.div_ceil(16) * 16;
    grow(&mut b.qs, n * b.qstride);
    grow(&mut b.d, n * b.sstride);
    grow(&mut b.sum, n * b.sstride);
    grow(&mut b.sum16, n * 2 * b.sstride);
    let (qstride, sstride) = (b.qstride, b.sstride);
    let (qs, d, sum, sum16) = (
        SendPtr(b.qs.as_mut_ptr()),
        SendPtr(b.d.as_mut_ptr()),
        SendPtr(b.sum.as_mut_ptr()),
        SendPtr(b.sum16.as_mut_ptr()),
    );
    // Tokens in chunks of at least 64 KiB of activations.
    let per = (16384 / k.max(1)).max(1);
    team::par_for(n.div_ceil(per), &|c| {
        let (qs, d, sum, sum16) = (qs, d, sum, sum16);
        for t in c * per..((c + 1) * per).min(n) {
            // SAFETY: token t's rows of the four buffers belong to this chunk only; the
            // buffers hold n rows of their strides.
            let (q, dd, s, s16) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qs.0.add(t * qstride), qstride),
                    std::slice::from_raw_parts_mut(d.0.add(t * sstride), sstride),
                    std::slice::from_raw_parts_mut(sum.0.add(t * sstride), sstride),
                    std::slice::from_raw_parts_mut(sum16.0.add(t * 2 * sstride), 2 * sstride),
                )
            };
            quant::quantize_blocks(&x[t * k..(t + 1) * k], q, dd, s);
            q[32 * nb..].fill(0);
            dd[nb..].fill(0.0);
            s[nb..].fill(0);
            for (j, h) in s16.chunks_exact_mut(2).enumerate() {
                for (half, v) in h.iter_mut().enumerate() {
                    *v = if j < nb {
                        q[32 * j + 16 * half..][..16]
                            .iter()
                            .map(|&v| v as i32)
                            .sum()
                    } else {
                        0
                    };
                }
            }
        }
    });
}

/// One 32-block `b` of a stored row as `q` (32 quants, unsigned or signed by `signed`) and
/// (e for the first 16, e for the last 16, o); see the module docs.
#[cfg(target_arch = "x86_64")]
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

/// One stored row unpacked (`unpack_block` for each of its `nb` blocks): quants at
/// `q[32b..]`, half-block scales at `e[2b..]`, offsets at `o[b]`.
#[cfg(target_arch = "x86_64")]
fn unpack_row_plain(
    dtype: DType,
    row: &[u8],
    nb: usize,
    q: &mut [u8],
    e: &mut [f32],
    o: &mut [f32],
) {
    for b in 0..nb {
        let (e0, e1, ob) = unpack_block(dtype, row, b, &mut q[32 * b..32 * b + 32]);
        e[2 * b] = e0;
        e[2 * b + 1] = e1;
        o[b] = ob;
    }
}

/// `unpack_row_plain` with the fastest path this CPU has (identical results).
#[cfg(target_arch = "x86_64")]
fn unpack_row(dtype: DType, row: &[u8], nb: usize, q: &mut [u8], e: &mut [f32], o: &mut [f32]) {
    assert!(q.len() >= 32 * nb && e.len() >= 2 * nb && o.len() >= nb);
    assert!(row.len() >= nb * 32 / dtype.block().0 * dtype.block().1);
    if super::simd::avx2_f16c() {
        // SAFETY: avx2 and f16c were detected at run time; the lengths are checked above.
        return unsafe { x86::unpack_row(dtype, row, nb, q, e, o) };
    }
    unpack_row_plain(dtype, row, nb, q, e, o)
}

/// Scratch for one unpacked row.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct RowScratch {
    q: Vec<u8>,
    e: Vec<f32>,
    o: Vec<f32>,
    /// A whole panel's rows unpacked, `[RR][32·nb]` (the VNNI packer transposes from it).
    panel: Vec<u8>,
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
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

/// The tasks of every part over the quantized batch `b`: a task is a chunk of rows, packed
/// once, against every token (in blocks of about 128 KiB of quantized activations, a share
/// of L2).
fn run(b: &Batch, parts: &[(MatRef<'_>, OutPtr)], path: Path) {
    let (n, nb) = (b.n, b.nb);
    let k = 32 * nb;
    let threads = rayon::current_num_threads().max(1);
    let tb = (n.min((128 << 10) / k.max(1)).max(8)).min(n).max(1);
    let mut starts = Vec::with_capacity(parts.len() + 1);
    let mut chunks = Vec::with_capacity(parts.len());
    let mut total = 0;
    for (w, _) in parts {
        // Rows in chunks so that every thread gets several tasks.
        let rc = (w.rows.div_ceil(8 * threads).div_ceil(16) * 16).clamp(16, 256);
        starts.push(total);
        chunks.push(rc);
        total += w.rows.div_ceil(rc);
    }
    starts.push(total);
    team::par_for(total, &|i| {
        let p = starts.partition_point(|&s| s <= i) - 1;
        let (w, out) = (&parts[p].0, parts[p].1);
        let rc = chunks[p];
        let rt = i - starts[p];
        let (r0, r1) = (rt * rc, ((rt + 1) * rc).min(w.rows));
        task(b, w, out, r0, r1, tb, path);
    });
}

/// Rows `r0..r1` of one part against every token, `tb` tokens at a time.
fn task(b: &Batch, w: &MatRef<'_>, out: OutPtr, r0: usize, r1: usize, tb: usize, path: Path) {
    let (m, n) = (w.rows, b.n);
    #[cfg(target_arch = "aarch64")]
    let by_rows = matches!(path, Path::Plain | Path::Neon);
    #[cfg(not(target_arch = "aarch64"))]
    let by_rows = path == Path::Plain;
    if by_rows {
        let rb = w.row_bytes();
        for t in 0..n {
            let x = b.view(t);
            for r in r0..r1 {
                let row = &w.data[r * rb..(r + 1) * rb];
                let v = if path == Path::Plain {
                    quant::dot_row_q8_plain(w.dtype, row, &x)
                } else {
                    quant::dot_row_q8_ref(w.dtype, row, &x)
                };
                // SAFETY: (t, r) lies in this task's rows, which no other task writes.
                unsafe { *out.0.add(t * m + r) = v };
            }
        }
        return;
    }
    // What is left on x86 is VNNI or AVX2.
    #[cfg(target_arch = "x86_64")]
    task_rows(b, w, out, r0, r1, tb, path);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = tb;
        unreachable!("{path:?} multiplies by rows");
    }
}

/// Rows per panel of the row-interleaved VNNI kernel: one i32 lane per row.
#[cfg(target_arch = "x86_64")]
const PR16: usize = 16;

/// Tokens per call of the row-interleaved VNNI kernel.
#[cfg(target_arch = "x86_64")]
const T16: usize = 8;

/// Panels of 16 rows interleaved for `vpdpbusd` against one token's broadcast 4 bytes: for
/// panel p, block b and group g of 4 columns, row i's 4 quants (unsigned: Q8_0's shifted by
/// 128, its offset −128·e) as one u32 at `q[((p·nb + b)·8 + g)·16 + i]`; the block's scales
/// at `e[(p·nb + b)·16 + i]` and offsets at `o[(p·nb + b)·16 + i]`.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Panels16 {
    q: Vec<u32>,
    e: Vec<f32>,
    o: Vec<f32>,
    scratch: RowScratch,
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static PANELS16: RefCell<Panels16> = RefCell::new(Panels16::default());
}

/// Packs rows `r0..r1` of `w` into `Panels16` panels of `rr` rows (16 for VNNI, 8 for
/// AVX2; missing rows are zero).
#[cfg(target_arch = "x86_64")]
fn pack_rows<const RR: usize>(w: &MatRef<'_>, r0: usize, r1: usize, nb: usize, p: &mut Panels16) {
    if let Some(groups) = w.interleaved {
        if r0.is_multiple_of(interleave::ROWS) {
            return pack_interleaved::<RR>(w.dtype, groups, r0, r1, nb, p);
        }
    }
    let np = (r1 - r0).div_ceil(RR);
    // Q6_K keeps a scale per half-block (two per block), the others one.
    let hb = if w.dtype == DType::Q6_K { 2 } else { 1 };
    grow(&mut p.q, np * nb * 8 * RR);
    grow(&mut p.e, np * nb * hb * RR);
    grow(&mut p.o, np * nb * hb * RR);
    let rb = w.row_bytes();
    let s = &mut p.scratch;
    grow(&mut s.q, 32 * nb);
    grow(&mut s.e, 2 * nb);
    grow(&mut s.o, nb);
    // Signed quants made unsigned, per byte: Q8_0 + 128 (VNNI; AVX2 keeps Q8_0 signed),
    // Q6_K + 32; their offset −zero·e.
    let zero: u8 = match w.dtype {
        DType::Q8_0 if RR == PR16 => 128,
        DType::Q6_K => 32,
        _ => 0,
    };
    // SIMD panels: the panel's rows unpacked side by side, then every block's 16 (VNNI) or
    // 8 (AVX2) rows × 8 dwords transposed in registers (scattering them one by one took
    // 2.5x the multiply at a 16-token prefill). The plain scatter below stays for a panel
    // of another size.
    let fast = (RR == PR16 && super::simd::vnni()) || (RR == 8 && super::simd::avx2_f16c());
    let row_q = 32 * nb;
    if fast {
        grow(&mut s.panel, RR * row_q);
    }
    for pi in 0..np {
        for i in 0..RR {
            let r = r0 + pi * RR + i;
            let q = if fast {
                &mut s.panel[i * row_q..(i + 1) * row_q]
            } else {
                &mut s.q[..row_q]
            };
            if r < r1 {
                unpack_row(
                    w.dtype,
                    &w.data[r * rb..(r + 1) * rb],
                    nb,
                    q,
                    &mut s.e,
                    &mut s.o,
                );
            } else {
                // A missing row: quants that are 0 once `zero` is added, no scale or offset.
                q.fill(0u8.wrapping_sub(zero));
                s.e[..2 * nb].fill(0.0);
                s.o[..nb].fill(0.0);
            }
            for b in 0..nb {
                if !fast {
                    let at = (pi * nb + b) * 8 * RR + i;
                    for (g, v) in q[32 * b..32 * b + 32].chunks_exact(4).enumerate() {
                        let bytes = std::array::from_fn(|j| v[j].wrapping_add(zero));
                        p.q[at + g * RR] = u32::from_le_bytes(bytes);
                    }
                }
                for h in 0..hb {
                    let e = s.e[2 * b + h];
                    let at = ((pi * nb + b) * hb + h) * RR + i;
                    p.e[at] = e;
                    p.o[at] = if zero != 0 {
                        -f32::from(zero) * e
                    } else {
                        s.o[b]
                    };
                }
            }
        }
        if fast {
            let at = pi * nb * 8 * RR;
            let dst = &mut p.q[at..at + nb * 8 * RR];
            // SAFETY: `vnni()` checked avx512f/bw, `avx2_f16c()` avx2; the panel holds RR rows
            // of 32·nb bytes and the destination nb·8·RR dwords.
            unsafe {
                if RR == PR16 {
                    x86::transpose16(&s.panel, nb, zero, dst)
                } else {
                    x86::transpose8(&s.panel, nb, zero, dst)
                }
            };
        }
    }
}

/// `pack_rows` for Q4_0, Q4_1 or Q4_K from the interleaved copy (`interleave`; `r0` on a
/// group's first row): each panel row's 4-byte words are already side by side, so packing
/// is the nibble split and the scales widened (Q4_K: `d·sc` and `−dmin·m` per sub-block, as
/// `unpack_block` computes them). Rows past the matrix are zero there: no quants, no scale,
/// no offset.
#[cfg(target_arch = "x86_64")]
fn pack_interleaved<const RR: usize>(
    dtype: DType,
    groups: &[u8],
    r0: usize,
    r1: usize,
    nb: usize,
    p: &mut Panels16,
) {
    let gb = interleave::group_bytes(dtype, 32 * nb);
    let np = (r1 - r0).div_ceil(RR);
    grow(&mut p.q, np * nb * 8 * RR);
    grow(&mut p.e, np * nb * RR);
    grow(&mut p.o, np * nb * RR);
    let groups_needed = (r0 + np * RR).div_ceil(interleave::ROWS);
    assert!(RR.is_multiple_of(8) && groups.len() >= groups_needed * gb);
    assert!(super::simd::avx2_f16c(), "interleaved weights without AVX2");
    for pi in 0..np {
        let row = r0 + pi * RR;
        let (g, h) = (row / interleave::ROWS, row % interleave::ROWS);
        for b in 0..nb {
            let at = pi * nb + b;
            let (q, e, o) = (
                p.q[at * 8 * RR..].as_mut_ptr(),
                p.e[at * RR..].as_mut_ptr(),
                p.o[at * RR..].as_mut_ptr(),
            );
            // SAFETY: avx2 and f16c were checked above; the source block lies in `groups`
            // (asserted) and the destinations in the panels just sized.
            unsafe {
                if dtype == DType::Q4_K {
                    let src = groups
                        .as_ptr()
                        .add(g * gb + (b / 8) * interleave::GROUP_BLOCK_K);
                    x86::unpack_interleaved_q4k::<RR>(src, h, b % 8, q, e, o)
                } else if dtype == DType::Q4_1 {
                    let src = groups.as_ptr().add(g * gb + b * interleave::GROUP_BLOCK_1);
                    x86::unpack_interleaved::<RR, true>(src, h, q, e, o)
                } else {
                    let src = groups.as_ptr().add(g * gb + b * interleave::GROUP_BLOCK);
                    x86::unpack_interleaved::<RR, false>(src, h, q, e, o)
                }
            };
        }
    }
}

/// `task` on the row-interleaved VNNI kernel (every supported type; Q6_K with a scale and
/// an offset per half-block).
#[cfg(target_arch = "x86_64")]
fn task_rows(b: &Batch, w: &MatRef<'_>, out: OutPtr, r0: usize, r1: usize, tb: usize, path: Path) {
    let (rr, tt) = if path == Path::Vnni {
        (PR16, T16)
    } else {
        (8, 4)
    };
    let (m, n, nb) = (w.rows, b.n, b.nb);
    assert!(b.qs.len() >= n * b.qstride && b.d.len() >= n * b.sstride);
    assert!(
        b.qstride >= 32 * nb
            && b.sstride >= nb
            && b.sum16.len() >= n * 2 * b.sstride
            && b.sum.len() >= n * b.sstride
    );
    let hb = if w.dtype == DType::Q6_K { 2 } else { 1 };
    PANELS16.with(|pb| {
        let mut pb = pb.borrow_mut();
        if rr == PR16 {
            pack_rows::<PR16>(w, r0, r1, nb, &mut pb);
        } else {
            pack_rows::<8>(w, r0, r1, nb, &mut pb);
        }
        // The kernels' results, reused by every call (zeroed per call, the 512 bytes were a
        // memset call beside each kernel call: 3% of a Q4_0 prefill); read for the tokens
        // a call wrote only.
        let mut res = [[0f32; PR16]; T16];
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + tb).min(n);
            for pi in 0..(r1 - r0).div_ceil(rr) {
                let q = &pb.q[pi * nb * 8 * rr..(pi + 1) * nb * 8 * rr];
                let e = &pb.e[pi * nb * hb * rr..(pi + 1) * nb * hb * rr];
                let o = &pb.o[pi * nb * hb * rr..(pi + 1) * nb * hb * rr];
                let rows = (r1 - r0 - pi * rr).min(rr);
                let mut t = t0;
                while t < t1 {
                    let cnt = tt.min(t1 - t);
                    let xq: [*const i8; T16] =
                        std::array::from_fn(|c| b.qs[(t + c.min(cnt - 1)) * b.qstride..].as_ptr());
                    let xd: [*const f32; T16] =
                        std::array::from_fn(|c| b.d[(t + c.min(cnt - 1)) * b.sstride..].as_ptr());
                    let xs: [*const i32; T16] = std::array::from_fn(|c| {
                        let tc = t + c.min(cnt - 1);
                        if hb == 2 {
                            b.sum16[tc * 2 * b.sstride..].as_ptr()
                        } else {
                            b.sum[tc * b.sstride..].as_ptr()
                        }
                    });
                    let qp = q.as_ptr() as *const u8;
                    let (ep, op) = (e.as_ptr(), o.as_ptr());
                    // SAFETY: the path's features were detected (`path`); the panel holds nb
                    // blocks of rr rows (hb scales and offsets each), each token nb blocks of
                    // quants, scales and (half-)block sums (asserted).
                    unsafe {
                        match (path == Path::Vnni, w.dtype) {
                            (true, DType::Q6_K) => x86::rows16_vnni::<true, 32>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                            (true, DType::Q8_0) => x86::rows16_vnni::<false, 128>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                            (true, DType::Q4_0) => x86::rows16_vnni::<false, 8>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                            (true, _) => x86::rows16_vnni::<false, 0>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                            (false, DType::Q6_K) => x86::rows8_avx2::<true, false, 32>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                            (false, DType::Q8_0) => x86::rows8_avx2::<false, true, 0>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                            (false, DType::Q4_0) => x86::rows8_avx2::<false, false, 8>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                            (false, _) => x86::rows8_avx2::<false, false, 0>(
                                qp, ep, op, nb, xq, xd, xs, cnt, &mut res,
                            ),
                        }
                    };
                    for (c, rc) in res.iter().enumerate().take(cnt) {
                        // SAFETY: token t + c, rows r0 + pi·16 .. + rows lie in this task's rows.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out.0.add((t + c) * m + r0 + pi * rr),
                                rows,
                            )
                        };
                        // A whole panel's rows as one typed value (vector moves; a copy of
                        // a length known at run time only was a memcpy call per token).
                        if rows == PR16 {
                            // SAFETY: dst holds PR16 f32s (rows == PR16); unaligned write.
                            unsafe { std::ptr::write_unaligned(dst.as_mut_ptr().cast(), *rc) };
                        } else {
                            dst.copy_from_slice(&rc[..rows]);
                        }
                    }
                    t += cnt;
                }
            }
            t0 = t1;
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::backend::DType;

    /// One block of an interleaved Q4_0 group (`interleave`), rows h..h+RR of it, into
    /// `pack_rows`' panel layout: 8 columns groups of RR u32 at `q` (low nibbles of word
    /// c are columns 4c.., high nibbles 16+4c..), the scales at `e`, offsets −8·d at `o`
    /// (Q4_1, `MIN`: its mins).
    ///
    /// # Safety
    /// avx2 and f16c; `src` holds a group block, `q` 8·RR u32, `e` and `o` RR f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn unpack_interleaved<const RR: usize, const MIN: bool>(
        src: *const u8,
        h: usize,
        q: *mut u32,
        e: *mut f32,
        o: *mut f32,
    ) {
        use super::interleave::{Q1_MIN, Q1_QS, ROWS};
        let low = _mm256_set1_epi8(0x0F);
        let eight = _mm256_set1_ps(-8.0);
        let qs_at = if MIN { Q1_QS } else { 2 * ROWS };
        for half in 0..RR / 8 {
            let r = h + 8 * half;
            let d = _mm256_cvtph_ps(_mm_loadu_si128(src.add(2 * r) as *const __m128i));
            _mm256_storeu_ps(e.add(8 * half), d);
            let off = if MIN {
                _mm256_cvtph_ps(_mm_loadu_si128(src.add(Q1_MIN + 2 * r) as *const __m128i))
            } else {
                _mm256_mul_ps(d, eight)
            };
            _mm256_storeu_ps(o.add(8 * half), off);
            for c in 0..4 {
                let v = _mm256_loadu_si256(src.add(qs_at + 64 * c + 4 * r) as *const __m256i);
                let lo = _mm256_and_si256(v, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                _mm256_storeu_si256(q.add(c * RR + 8 * half) as *mut __m256i, lo);
                _mm256_storeu_si256(q.add((4 + c) * RR + 8 * half) as *mut __m256i, hi);
            }
        }
    }

    /// Sub-block `j` of an interleaved Q4_K super-block (`interleave`), rows h..h+RR of
    /// it, into `pack_rows`' panel layout as `unpack_interleaved` does Q4_0: column group c
    /// from word (j/2, c), low nibbles for even j, high for odd; `e = d·sc_j`,
    /// `o = −(dmin·m_j)`.
    ///
    /// # Safety
    /// avx2 and f16c; `src` holds a Q4_K group block, `q` 8·RR u32, `e` and `o` RR f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn unpack_interleaved_q4k<const RR: usize>(
        src: *const u8,
        h: usize,
        j: usize,
        q: *mut u32,
        e: *mut f32,
        o: *mut f32,
    ) {
        use super::interleave::{K_DMIN, K_MIN, K_QS, K_SC, ROWS};
        let low = _mm256_set1_epi8(0x0F);
        let bytes = |p: *const u8| {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        };
        for half in 0..RR / 8 {
            let r = h + 8 * half;
            let d = _mm256_cvtph_ps(_mm_loadu_si128(src.add(2 * r) as *const __m128i));
            let dm = _mm256_cvtph_ps(_mm_loadu_si128(src.add(K_DMIN + 2 * r) as *const __m128i));
            let sc = bytes(src.add(K_SC + ROWS * j + r));
            let mn = bytes(src.add(K_MIN + ROWS * j + r));
            _mm256_storeu_ps(e.add(8 * half), _mm256_mul_ps(d, sc));
            // −(dmin·m) exactly as the plain unpacking negates: the sign bit flipped.
            let neg = _mm256_xor_ps(_mm256_mul_ps(dm, mn), _mm256_set1_ps(-0.0));
            _mm256_storeu_ps(o.add(8 * half), neg);
            for c in 0..8 {
                let at = K_QS + 64 * (8 * (j / 2) + c) + 4 * r;
                let v = _mm256_loadu_si256(src.add(at) as *const __m256i);
                let w = if j.is_multiple_of(2) {
                    _mm256_and_si256(v, low)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(v, 4), low)
                };
                _mm256_storeu_si256(q.add(c * RR + 8 * half) as *mut __m256i, w);
            }
        }
    }

    /// An AVX2 panel's quants from its 8 unpacked rows (`panel`: `[8][32·nb]` bytes): for
    /// block b and dword g, `out[(b·8 + g)·8 + i]` = row i's bytes 4g..4g+4 of block b, each
    /// byte plus `zero`. Per block the 8×8 dwords are transposed in registers: 32-bit and
    /// 64-bit unpacks transpose 4×4 within each 128-bit lane, one lane shuffle per column
    /// joins rows 0-3 and 4-7.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose8(panel: &[u8], nb: usize, zero: u8, out: &mut [u32]) {
        assert!(panel.len() >= 8 * 32 * nb && out.len() >= nb * 8 * 8);
        let (src, dst) = (panel.as_ptr(), out.as_mut_ptr());
        let add = _mm256_set1_epi8(zero as i8);
        let stride = 32 * nb;
        for b in 0..nb {
            let r: [__m256i; 8] = std::array::from_fn(|i| {
                _mm256_loadu_si256(src.add(i * stride + 32 * b) as *const __m256i)
            });
            // t[2a]: dwords 0, 1 (and 4, 5) of rows 2a, 2a+1 interleaved; t[2a+1]: 2, 3 (6, 7).
            let t: [__m256i; 8] = std::array::from_fn(|c| {
                let a = c / 2;
                if c % 2 == 0 {
                    _mm256_unpacklo_epi32(r[2 * a], r[2 * a + 1])
                } else {
                    _mm256_unpackhi_epi32(r[2 * a], r[2 * a + 1])
                }
            });
            // u[c] (c < 4): column c (low lane) and c + 4 (high lane) of rows 0-3; u[4 + c]
            // the same of rows 4-7.
            let u: [__m256i; 8] = std::array::from_fn(|c| {
                let base = if c < 4 { 0 } else { 4 };
                let (x0, x1) = match c % 4 {
                    0 | 1 => (t[base], t[base + 2]),
                    _ => (t[base + 1], t[base + 3]),
                };
                if c % 2 == 0 {
                    _mm256_unpacklo_epi64(x0, x1)
                } else {
                    _mm256_unpackhi_epi64(x0, x1)
                }
            });
            for c in 0..4 {
                let lo = _mm256_permute2x128_si256::<0x20>(u[c], u[c + 4]);
                let hi = _mm256_permute2x128_si256::<0x31>(u[c], u[c + 4]);
                _mm256_storeu_si256(
                    dst.add((b * 8 + c) * 8) as *mut __m256i,
                    _mm256_add_epi8(lo, add),
                );
                _mm256_storeu_si256(
                    dst.add((b * 8 + c + 4) * 8) as *mut __m256i,
                    _mm256_add_epi8(hi, add),
                );
            }
        }
    }

    /// A VNNI panel's quants from its 16 unpacked rows (`panel`: `[16][32·nb]` bytes): for
    /// block b and dword g, `out[(b·8 + g)·16 + i]` = row i's bytes 4g..4g+4 of block b, each
    /// byte plus `zero`. Per block the 16×8 dwords are transposed in registers: rows j and
    /// j + 8 share a zmm, two unpack rounds transpose 4×4 within each 128-bit lane, two lane
    /// shuffles put the 16 rows of a column in order.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn transpose16(panel: &[u8], nb: usize, zero: u8, out: &mut [u32]) {
        assert!(panel.len() >= 16 * 32 * nb && out.len() >= nb * 8 * 16);
        let (src, dst) = (panel.as_ptr(), out.as_mut_ptr());
        let add = _mm512_set1_epi8(zero as i8);
        let stride = 32 * nb;
        for b in 0..nb {
            let row = |i: usize| _mm256_loadu_si256(src.add(i * stride + 32 * b) as *const __m256i);
            let z: [__m512i; 8] = std::array::from_fn(|j| {
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(j)), row(j + 8))
            });
            // Lane L of t: 32-bit interleave of rows (2a, 2a+1) per 128-bit lane.
            let t: [__m512i; 8] = std::array::from_fn(|c| {
                let (a, hi) = (c / 2, c % 2);
                if hi == 0 {
                    _mm512_unpacklo_epi32(z[2 * a], z[2 * a + 1])
                } else {
                    _mm512_unpackhi_epi32(z[2 * a], z[2 * a + 1])
                }
            });
            // u[c] for c < 4: rows 0..3 (+8); u[4 + c]: rows 4..7 (+8). Within each 128-bit
            // lane u[c] holds column c (lanes 0 and 2) or c + 4 (lanes 1 and 3) of its rows.
            let u: [__m512i; 8] = std::array::from_fn(|c| {
                let base = if c < 4 { 0 } else { 4 };
                let (x0, x1) = match c % 4 {
                    0 | 1 => (t[base], t[base + 2]),
                    _ => (t[base + 1], t[base + 3]),
                };
                if c % 2 == 0 {
                    _mm512_unpacklo_epi64(x0, x1)
                } else {
                    _mm512_unpackhi_epi64(x0, x1)
                }
            });
            for c in 0..4 {
                let (a, bb) = (u[c], u[c + 4]);
                // Columns c (lanes 0, 2) and c + 4 (lanes 1, 3): rows 0-3, 4-7, 8-11, 12-15.
                let lo = _mm512_shuffle_i32x4::<0b10_00_10_00>(a, bb);
                let hi = _mm512_shuffle_i32x4::<0b11_01_11_01>(a, bb);
                let lo = _mm512_shuffle_i32x4::<0b11_01_10_00>(lo, lo);
                let hi = _mm512_shuffle_i32x4::<0b11_01_10_00>(hi, hi);
                _mm512_storeu_si512(
                    dst.add((b * 8 + c) * 16) as *mut __m512i,
                    _mm512_add_epi8(lo, add),
                );
                _mm512_storeu_si512(
                    dst.add((b * 8 + c + 4) * 16) as *mut __m512i,
                    _mm512_add_epi8(hi, add),
                );
            }
        }
    }

    /// `super::unpack_row_plain` with AVX2 and F16C: the nibbles split 32 bytes at a time,
    /// the f16 scales converted by the instruction, the K-quants' six-bit scales and mins
    /// unpacked eight at a time (ggml's `utmp` shuffle).
    ///
    /// # Safety
    /// AVX2 + F16C; `q`, `e`, `o` hold `32·nb`, `2·nb`, `nb` values and `row` `nb` blocks'
    /// bytes (checked by the caller).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn unpack_row(
        dtype: DType,
        row: &[u8],
        nb: usize,
        q: &mut [u8],
        e: &mut [f32],
        o: &mut [f32],
    ) {
        let h = |p: *const u8| {
            let bits = (p as *const u16).read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        };
        let (rp, qp) = (row.as_ptr(), q.as_mut_ptr());
        let low = _mm256_set1_epi8(0x0F);
        let low128 = _mm_set1_epi8(0x0F);
        match dtype {
            DType::Q4_0 | DType::Q4_1 => {
                let (bytes, start) = if dtype == DType::Q4_0 {
                    (18, 2)
                } else {
                    (20, 4)
                };
                for b in 0..nb {
                    let blk = rp.add(bytes * b);
                    let v = _mm_loadu_si128(blk.add(start) as *const __m128i);
                    let lo = _mm_and_si128(v, low128);
                    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), low128);
                    _mm256_storeu_si256(qp.add(32 * b) as *mut __m256i, _mm256_set_m128i(hi, lo));
                    let d = h(blk);
                    e[2 * b] = d;
                    e[2 * b + 1] = d;
                    o[b] = if dtype == DType::Q4_0 {
                        -8.0 * d
                    } else {
                        h(blk.add(2))
                    };
                }
            }
            DType::Q8_0 => {
                for b in 0..nb {
                    let blk = rp.add(34 * b);
                    let v = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    _mm256_storeu_si256(qp.add(32 * b) as *mut __m256i, v);
                    let d = h(blk);
                    e[2 * b] = d;
                    e[2 * b + 1] = d;
                    o[b] = 0.0;
                }
            }
            DType::Q4_K | DType::Q5_K => {
                let five = dtype == DType::Q5_K;
                let (size, qs_at) = if five { (176, 48) } else { (144, 16) };
                let sixteen = _mm256_set1_epi8(16);
                for sb in 0..nb / 8 {
                    let blk = rp.add(size * sb);
                    let (d, dmin) = (h(blk), h(blk.add(2)));
                    let (sc, mn) =
                        super::super::quant::scales_mins_k4(&row[size * sb + 4..size * sb + 16]);
                    let qh = if five {
                        _mm256_loadu_si256(blk.add(16) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for g in 0..4 {
                        let v = _mm256_loadu_si256(blk.add(qs_at + 32 * g) as *const __m256i);
                        let halves = [
                            _mm256_and_si256(v, low),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), low),
                        ];
                        for (hh, mut w) in halves.into_iter().enumerate() {
                            let j = 2 * g + hh;
                            if five {
                                let bit = _mm256_set1_epi8((1u8 << j) as i8);
                                let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                                w = _mm256_or_si256(w, _mm256_and_si256(set, sixteen));
                            }
                            let b = 8 * sb + j;
                            _mm256_storeu_si256(qp.add(32 * b) as *mut __m256i, w);
                            let ev = d * sc[j] as f32;
                            e[2 * b] = ev;
                            e[2 * b + 1] = ev;
                            o[b] = -(dmin * mn[j] as f32);
                        }
                    }
                }
            }
            DType::Q6_K => {
                let three = _mm256_set1_epi8(3);
                let c32 = _mm256_set1_epi8(32);
                for sb in 0..nb / 8 {
                    let blk = rp.add(210 * sb);
                    let d = h(blk.add(208));
                    for n in 0..2 {
                        let qh = _mm256_loadu_si256(blk.add(128 + 32 * n) as *const __m256i);
                        for qt in 0..4 {
                            let ql = _mm256_loadu_si256(
                                blk.add(64 * n + 32 * (qt % 2)) as *const __m256i
                            );
                            let nib = if qt < 2 {
                                _mm256_and_si256(ql, low)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16(ql, 4), low)
                            };
                            let hi = match qt {
                                0 => _mm256_and_si256(qh, three),
                                1 => _mm256_and_si256(_mm256_srli_epi16(qh, 2), three),
                                2 => _mm256_and_si256(_mm256_srli_epi16(qh, 4), three),
                                _ => _mm256_and_si256(_mm256_srli_epi16(qh, 6), three),
                            };
                            let v = _mm256_sub_epi8(
                                _mm256_or_si256(nib, _mm256_slli_epi16(hi, 4)),
                                c32,
                            );
                            let b = 8 * sb + 4 * n + qt;
                            _mm256_storeu_si256(qp.add(32 * b) as *mut __m256i, v);
                            let sc = &row[210 * sb + 192 + 8 * n + 2 * qt..];
                            e[2 * b] = d * sc[0] as i8 as f32;
                            e[2 * b + 1] = d * sc[1] as i8 as f32;
                            o[b] = 0.0;
                        }
                    }
                }
            }
            _ => super::unpack_row_plain(dtype, row, nb, q, e, o),
        }
    }

    /// 16 rows × up to 8 tokens, row-interleaved (`Panels16`): per block, eight `vpdpbusd`
    /// of the 16 rows' next 4 quants against each token's next 4 bytes broadcast, summed
    /// in i32 over the block; then per token the block's value `cvt · e + o · Σq_x` (grouped
    /// as the plain dot groups it) and one FMA with `d_x`. Tokens past `cnt` repeat the last
    /// (dropped).
    ///
    /// With `Z` > 0 the offset is `o = −Z·e` (Q4_0: 8, Q6_K: 32, Q8_0 shifted: 128): the
    /// sums start at `−Z·Σq_x` instead, exact in integers, and the block's value is
    /// `cvt · e` (Q6_K: `cvt₀·e₀ + cvt₁·e₁`), three float operations per token and block
    /// where the offset took two more per half.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI; `q`, `e`, `o` hold `nb` blocks of a 16-row panel; each token's
    /// `xq` holds `nb` blocks of quants, `xd` and `xs` `nb` values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub unsafe fn rows16_vnni<const HALVES: bool, const Z: i32>(
        q: *const u8,
        e: *const f32,
        o: *const f32,
        nb: usize,
        xq: [*const i8; super::T16],
        xd: [*const f32; super::T16],
        xs: [*const i32; super::T16],
        cnt: usize,
        res: &mut [[f32; super::PR16]; super::T16],
    ) {
        const T: usize = super::T16;
        let hb = if HALVES { 2 } else { 1 };
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            // Lane sums of the whole block, or of its two halves (groups 0–3, 4–7).
            let mut ia = [[_mm512_setzero_si512(); T]; 2];
            if Z != 0 {
                for (h, ih) in ia.iter_mut().enumerate().take(hb) {
                    for c in 0..T {
                        ih[c] = _mm512_set1_epi32(-Z * *xs[c].add(hb * b + h));
                    }
                }
            }
            for g in 0..8 {
                let h = if HALVES { g / 4 } else { 0 };
                let w = _mm512_loadu_si512(q.add((b * 8 + g) * 64) as *const __m512i);
                for c in 0..T {
                    let xv = (xq[c].add(32 * b + 4 * g) as *const i32).read_unaligned();
                    ia[h][c] = _mm512_dpbusd_epi32(ia[h][c], w, _mm512_set1_epi32(xv));
                }
            }
            if Z != 0 {
                let e0 = _mm512_loadu_ps(e.add(16 * hb * b));
                for c in 0..T {
                    let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(ia[0][c]), e0);
                    if HALVES {
                        let e1 = _mm512_loadu_ps(e.add(16 * (2 * b + 1)));
                        v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[1][c]), e1, v);
                    }
                    acc[c] = _mm512_fmadd_ps(v, _mm512_set1_ps(*xd[c].add(b)), acc[c]);
                }
                continue;
            }
            #[allow(clippy::needless_range_loop)]
            for h in 0..hb {
                let ev = _mm512_loadu_ps(e.add(16 * (hb * b + h)));
                let ov = _mm512_loadu_ps(o.add(16 * (hb * b + h)));
                for c in 0..T {
                    // The block's value before d_x, as the plain dot groups it (the offset
                    // cancels against the quants' sum there, not in the running total).
                    let off = _mm512_mul_ps(ov, _mm512_set1_ps(*xs[c].add(hb * b + h) as f32));
                    let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[h][c]), ev, off);
                    acc[c] = _mm512_fmadd_ps(v, _mm512_set1_ps(*xd[c].add(b)), acc[c]);
                }
            }
        }
        for c in 0..cnt.min(T) {
            _mm512_storeu_ps(res[c].as_mut_ptr(), acc[c]);
        }
    }

    /// `rows16_vnni` for AVX2: 8 rows × up to 4 tokens, `maddubs` of the 8 rows' next 4
    /// quants (unsigned, at most 63) against each token's broadcast 4 bytes, summed in i16
    /// over four groups (Q4: 4·2·15·127, Q5_K: 4·2·31·127 < 2¹⁵) or two (Q6_K, `HALVES`:
    /// 2·2·63·127 < 2¹⁵), widened by `madd`, one conversion and FMA per block (per half with
    /// `HALVES`). Q8_0 (`SIGNED`, its quants kept signed in the panel) multiplies |w| against
    /// x with w's sign and widens every group. Tokens past `cnt` repeat the last (dropped).
    /// `Z` > 0 folds an offset `−Z·e` into the integer sums as `rows16_vnni` does.
    ///
    /// # Safety
    /// AVX2 + FMA; `q`, `e`, `o` hold `nb` blocks of an 8-row panel; each token's `xq` holds
    /// `nb` blocks of quants, `xd` `nb` scales, `xs` `nb` (or `2·nb` with `HALVES`) sums.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows8_avx2<const HALVES: bool, const SIGNED: bool, const Z: i32>(
        q: *const u8,
        e: *const f32,
        o: *const f32,
        nb: usize,
        xq: [*const i8; super::T16],
        xd: [*const f32; super::T16],
        xs: [*const i32; super::T16],
        cnt: usize,
        res: &mut [[f32; super::PR16]; super::T16],
    ) {
        const T: usize = 4;
        let hb = if HALVES { 2 } else { 1 };
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let mut whole = [_mm256_setzero_si256(); T];
            if Z != 0 && !HALVES {
                for c in 0..T {
                    whole[c] = _mm256_set1_epi32(-Z * *xs[c].add(b));
                }
            }
            // With `Z` and `HALVES`: the block's value before d_x, summed over its halves.
            let mut vsum = [_mm256_setzero_ps(); T];
            for h in 0..2 {
                let mut s16 = [_mm256_setzero_si256(); T];
                let mut half = [_mm256_setzero_si256(); T];
                if Z != 0 && HALVES {
                    for c in 0..T {
                        half[c] = _mm256_set1_epi32(-Z * *xs[c].add(2 * b + h));
                    }
                }
                for g in 4 * h..4 * h + 4 {
                    let w = _mm256_loadu_si256(q.add((b * 8 + g) * 32) as *const __m256i);
                    if SIGNED {
                        // Q8_0: |w| against x with w's sign, each pair at most 2·128·127,
                        // widened at once.
                        let aw = _mm256_abs_epi8(w);
                        for c in 0..T {
                            let xv = (xq[c].add(32 * b + 4 * g) as *const i32).read_unaligned();
                            let p = _mm256_maddubs_epi16(
                                aw,
                                _mm256_sign_epi8(_mm256_set1_epi32(xv), w),
                            );
                            whole[c] = _mm256_add_epi32(whole[c], _mm256_madd_epi16(p, ones));
                        }
                        continue;
                    }
                    for c in 0..T {
                        let xv = (xq[c].add(32 * b + 4 * g) as *const i32).read_unaligned();
                        s16[c] = _mm256_add_epi16(
                            s16[c],
                            _mm256_maddubs_epi16(w, _mm256_set1_epi32(xv)),
                        );
                    }
                    if HALVES && g % 2 == 1 {
                        // Q6_K's quants reach 63: widen every two groups (2·2·63·127 < 2¹⁵).
                        for c in 0..T {
                            half[c] = _mm256_add_epi32(half[c], _mm256_madd_epi16(s16[c], ones));
                            s16[c] = _mm256_setzero_si256();
                        }
                    }
                }
                if HALVES && Z != 0 {
                    let ev = _mm256_loadu_ps(e.add(8 * (2 * b + h)));
                    for c in 0..T {
                        vsum[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(half[c]), ev, vsum[c]);
                    }
                    if h == 1 {
                        for c in 0..T {
                            acc[c] =
                                _mm256_fmadd_ps(vsum[c], _mm256_set1_ps(*xd[c].add(b)), acc[c]);
                        }
                    }
                } else if HALVES {
                    let ev = _mm256_loadu_ps(e.add(8 * (2 * b + h)));
                    let ov = _mm256_loadu_ps(o.add(8 * (2 * b + h)));
                    for c in 0..T {
                        let off = _mm256_mul_ps(ov, _mm256_set1_ps(*xs[c].add(2 * b + h) as f32));
                        let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(half[c]), ev, off);
                        acc[c] = _mm256_fmadd_ps(v, _mm256_set1_ps(*xd[c].add(b)), acc[c]);
                    }
                } else if !SIGNED {
                    for c in 0..T {
                        whole[c] = _mm256_add_epi32(whole[c], _mm256_madd_epi16(s16[c], ones));
                    }
                }
            }
            if !HALVES && Z != 0 {
                let ev = _mm256_loadu_ps(e.add(8 * b));
                for c in 0..T {
                    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(whole[c]), ev);
                    acc[c] = _mm256_fmadd_ps(v, _mm256_set1_ps(*xd[c].add(b)), acc[c]);
                }
            } else if !HALVES {
                let ev = _mm256_loadu_ps(e.add(8 * b));
                let ov = _mm256_loadu_ps(o.add(8 * b));
                for c in 0..T {
                    let off = _mm256_mul_ps(ov, _mm256_set1_ps(*xs[c].add(b) as f32));
                    let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(whole[c]), ev, off);
                    acc[c] = _mm256_fmadd_ps(v, _mm256_set1_ps(*xd[c].add(b)), acc[c]);
                }
            }
        }
        let _ = hb;
        for c in 0..cnt.min(T) {
            _mm256_storeu_ps(res[c].as_mut_ptr(), acc[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::WeightScale;

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// `rows` rows of `k` columns of random blocks of `dt`.
    fn random_rows(dt: DType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
        quant::random_blocks(dt, rows * k / dt.block().0, seed)
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
                &[32, 96, 288, 576, 1536]
            };
            for &k in ks {
                for (m, n) in [
                    (1, 2),
                    (5, 3),
                    (8, 7),
                    (37, 5),
                    (70, 12),
                    (300, 33),
                    (64, 31),
                ] {
                    let data = random_rows(dt, m, k, (m * 1000 + k + n) as u64);
                    let w = MatRef {
                        dtype: dt,
                        data: &data,
                        rows: m,
                        cols: k,
                        scale: WeightScale::None,
                        interleaved: None,
                    };
                    let x = activations(n, k, (7 * m + n) as u64);
                    let mut b = Batch::default();
                    quantize_batch(&x, n, k, &mut b);
                    let mut want = vec![f32::NAN; n * m];
                    let mut got = vec![f32::NAN; n * m];
                    run(&b, &[(w, OutPtr(want.as_mut_ptr()))], Path::Plain);
                    run(&b, &[(w, OutPtr(got.as_mut_ptr()))], path);
                    // Q4_0, Q4_1 and Q4_K with their interleaved copy pack from that instead: the
                    // same panels, so the same results bit for bit.
                    #[cfg(target_arch = "x86_64")]
                    if interleave::wanted(dt, k) && path != Path::Plain {
                        let groups = interleave::interleave(dt, &data, m, k);
                        let wi = MatRef {
                            interleaved: Some(&groups),
                            ..w
                        };
                        let mut from = vec![f32::NAN; n * m];
                        run(&b, &[(wi, OutPtr(from.as_mut_ptr()))], path);
                        assert_eq!(from, got, "{path:?} interleaved {dt} k={k} m={m} n={n}");
                    }
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_row_unpacking_equals_the_plain_unpacking() {
        if !crate::backend::cpu::simd::avx2_f16c() {
            return crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA + F16C");
        }
        for dt in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
            let k = if dt.block().0 == 256 { 768 } else { 288 };
            let nb = k / 32;
            let data = random_rows(dt, 1, k, 11);
            let (mut q0, mut e0, mut o0) = (vec![0u8; k], vec![0f32; 2 * nb], vec![0f32; nb]);
            let (mut q1, mut e1, mut o1) = (vec![1u8; k], vec![1f32; 2 * nb], vec![1f32; nb]);
            unpack_row_plain(dt, &data, nb, &mut q0, &mut e0, &mut o0);
            // SAFETY: the features were checked above; the buffers hold nb blocks.
            unsafe { x86::unpack_row(dt, &data, nb, &mut q1, &mut e1, &mut o1) };
            assert_eq!(q0, q1, "{dt} quants");
            assert_eq!(e0, e1, "{dt} scales");
            assert_eq!(o0, o1, "{dt} offsets");
        }
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
                interleaved: None,
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
