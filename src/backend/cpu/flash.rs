//! Causal GQA attention, flash-style (tiled, online softmax), on the team: the CPU op that
//! `model::attention` calls for prefill and decode.
//!
//! `out[i, h] = Σ_j softmax_j(scale · q[i, h] · k[j]) · v[j]` over the positions j ≤ past + i
//! of KV head `h / group`. Work is split into tasks of (KV head, rows of queries, a range of
//! keys): a task holds the `group` query heads of its KV head for a tile of positions as
//! rows (so each K and V element loaded serves every head of the group), walks its keys in
//! blocks of `BK`, and keeps per row a running max m, sum l and unnormalised output o
//! (Milakov & Gimelshein's online softmax, as in FlashAttention):
//!
//! ```text
//! s = q·Kᵀ (scaled);  m' = max(m, max s);  p = exp(s − m');
//! l ← l·exp(m − m') + Σ p;   o ← o·exp(m − m') + p·V;   m ← m'
//! ```
//!
//! Prefill: one task per KV head and tile of `BQ` positions, over all its visible keys,
//! largest first. Decode (one position): the keys are split into chunks (flash-decoding),
//! each task a chunk (a plain softmax of dot products and axpys over its keys, read once),
//! and the partial (m, l, o) are merged per head at the end. Prefill widens the keys to f32
//! once per call and stores them transposed (`[head_dim, keys]`), so that `q·Kᵀ` is a
//! broadcast-FMA over keys and `p·V` one over head_dim: no horizontal sums.
//! `exp` is `ops::exp`, a vectorisable polynomial (≤ 2 ulp).
//!
//! Invariant: each task writes only its own rows (prefill) or its own partial slot (decode).

use std::cell::RefCell;
use std::ops::Range;

use super::{ops, simd, team};

/// Keys per block.
const BK: usize = 64;
/// Query positions per prefill task.
const BQ: usize = 16;

/// Widens positions `range` of one KV head into `k` and `v` (`[len, head_dim]`, f32).
pub type ReadKv<'a> = dyn Fn(usize, Range<usize>, &mut [f32], &mut [f32]) + Sync + 'a;

/// The shape of one call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// New positions (query rows), at absolute positions `past..past + n`.
    pub n: usize,
    pub past: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: tasks write disjoint parts (see the module invariant).
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

thread_local! {
    /// Per-thread scratch: query rows, scores, row state and output, and (decode) the
    /// widened keys and values of a chunk.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    o: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Attention of `q` (`[n, heads, head_dim]`) over the `past + n` cached positions that
/// `read` widens, into `out` (`[n, heads, head_dim]`).
pub fn attention(q: &[f32], sh: Shape, read: &ReadKv<'_>, out: &mut [f32]) {
    let Shape {
        n,
        heads,
        kv_heads,
        head_dim: hd,
        ..
    } = sh;
    assert!(n > 0 && kv_heads > 0 && heads.is_multiple_of(kv_heads));
    assert_eq!(q.len(), n * heads * hd);
    assert_eq!(out.len(), n * heads * hd);
    if n == 1 {
        decode(q, sh, read, out)
    } else {
        prefill(q, sh, read, out)
    }
}

/// Widened keys (transposed, `[hd, total]`) and values (`[total, hd]`) of every KV head.
fn widen_all(sh: Shape, read: &ReadKv<'_>) -> (Vec<f32>, Vec<f32>) {
    let (total, hd, nkv) = (sh.past + sh.n, sh.head_dim, sh.kv_heads);
    let mut kt = vec![0f32; nkv * hd * total];
    let mut v = vec![0f32; nkv * total * hd];
    let (ktp, vp) = (Ptr(kt.as_mut_ptr()), Ptr(v.as_mut_ptr()));
    // Per KV head and chunk of positions, so two threads share even one head.
    let chunk = 256;
    let chunks = total.div_ceil(chunk);
    team::par_for(nkv * chunks, &|i| {
        let (ktp, vp) = (ktp, vp);
        let (h, c) = (i / chunks, i % chunks);
        let r = c * chunk..((c + 1) * chunk).min(total);
        let len = r.len();
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            s.k.resize(len * hd, 0.0);
            // SAFETY: rows r of head h's V block belong to this task only.
            let vh = unsafe {
                std::slice::from_raw_parts_mut(vp.0.add((h * total + r.start) * hd), len * hd)
            };
            read(h, r.clone(), &mut s.k, vh);
            for d in 0..hd {
                // SAFETY: columns r of row d of head h's Kᵀ belong to this task only.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(ktp.0.add((h * hd + d) * total + r.start), len)
                };
                for (j, dst) in row.iter_mut().enumerate() {
                    *dst = s.k[j * hd + d];
                }
            }
        });
    });
    (kt, v)
}

fn prefill(q: &[f32], sh: Shape, read: &ReadKv<'_>, out: &mut [f32]) {
    let Shape {
        n,
        past,
        heads,
        kv_heads,
        head_dim: hd,
        scale,
    } = sh;
    let total = past + n;
    let group = heads / kv_heads;
    let (kt, v) = widen_all(sh, read);
    let tiles = n.div_ceil(BQ);
    let outp = Ptr(out.as_mut_ptr());
    // Largest tiles (latest positions, most keys) first.
    team::par_for(kv_heads * tiles, &|i| {
        // The wrapper whole, not its field (closures capture fields since edition 2021).
        #[allow(clippy::redundant_locals)]
        let outp = outp;
        let tile = tiles - 1 - i / kv_heads;
        let kvh = i % kv_heads;
        let (i0, i1) = (tile * BQ, ((tile + 1) * BQ).min(n));
        let rows = (i1 - i0) * group;
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            // Row (i, g): position i0 + i, query head kvh·group + g, pre-scaled.
            s.q.resize(rows * hd, 0.0);
            for i in i0..i1 {
                for g in 0..group {
                    let h = kvh * group + g;
                    let src = &q[(i * heads + h) * hd..(i * heads + h + 1) * hd];
                    let dst =
                        &mut s.q[((i - i0) * group + g) * hd..((i - i0) * group + g + 1) * hd];
                    for (d, x) in dst.iter_mut().zip(src) {
                        *d = x * scale;
                    }
                }
            }
            let limit = |r: usize| past + i0 + r / group + 1;
            run_rows(
                s,
                rows,
                hd,
                &kt[kvh * hd * total..(kvh + 1) * hd * total],
                total,
                &v[kvh * total * hd..(kvh + 1) * total * hd],
                0..past + i1,
                &limit,
            );
            for r in 0..rows {
                let (i, g) = (i0 + r / group, r % group);
                let h = kvh * group + g;
                let inv = 1.0 / s.l[r];
                // SAFETY: position i, head h belongs to this task only.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(outp.0.add((i * heads + h) * hd), hd) };
                for (d, o) in dst.iter_mut().zip(&s.o[r * hd..(r + 1) * hd]) {
                    *d = o * inv;
                }
            }
        });
    });
}

fn decode(q: &[f32], sh: Shape, read: &ReadKv<'_>, out: &mut [f32]) {
    let Shape {
        past,
        heads,
        kv_heads,
        head_dim: hd,
        scale,
        ..
    } = sh;
    let total = past + 1;
    let group = heads / kv_heads;
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks for every thread, each at least 256 keys (the merge costs one row of
    // head_dim per chunk and head).
    let chunk = total
        .div_ceil((4 * threads).div_ceil(kv_heads).max(1))
        .max(256)
        .div_ceil(BK)
        * BK;
    let chunks = total.div_ceil(chunk);
    // Partials per (KV head, chunk, row): m, l, o[hd].
    let slot = hd + 2;
    let mut part = vec![0f32; kv_heads * chunks * group * slot];
    let pp = Ptr(part.as_mut_ptr());
    team::par_for(kv_heads * chunks, &|i| {
        // The wrapper whole, not its field (closures capture fields since edition 2021).
        #[allow(clippy::redundant_locals)]
        let pp = pp;
        let (kvh, c) = (i / chunks, i % chunks);
        let r = c * chunk..((c + 1) * chunk).min(total);
        let len = r.len();
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            s.k.resize(len * hd, 0.0);
            s.v.resize(len * hd, 0.0);
            let (mut k, mut v) = (std::mem::take(&mut s.k), std::mem::take(&mut s.v));
            read(kvh, r.clone(), &mut k, &mut v);
            // One query row per head: scores by dot products over the chunk's keys (no
            // transpose: a decode step reads each key once), then p·V by axpy.
            s.s.resize(len, 0.0);
            s.o.resize(hd, 0.0);
            for g in 0..group {
                let h = kvh * group + g;
                let qh = &q[h * hd..(h + 1) * hd];
                for (j, sc) in s.s.iter_mut().enumerate() {
                    *sc = simd::dot(qh, &k[j * hd..(j + 1) * hd]) * scale;
                }
                let m = s.s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut l = 0f32;
                for x in s.s.iter_mut() {
                    *x = ops::exp(*x - m);
                    l += *x;
                }
                s.o.fill(0.0);
                for (j, &p) in s.s.iter().enumerate() {
                    simd::axpy(&mut s.o, p, &v[j * hd..(j + 1) * hd]);
                }
                // SAFETY: slot (kvh, c, g) belongs to this task only.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        pp.0.add(((kvh * chunks + c) * group + g) * slot),
                        slot,
                    )
                };
                dst[0] = m;
                dst[1] = l;
                dst[2..].copy_from_slice(&s.o);
            }
            s.k = k;
            s.v = v;
        });
    });
    for kvh in 0..kv_heads {
        for g in 0..group {
            let h = kvh * group + g;
            let at = |c: usize| &part[((kvh * chunks + c) * group + g) * slot..][..slot];
            let m = (0..chunks)
                .map(|c| at(c)[0])
                .fold(f32::NEG_INFINITY, f32::max);
            let dst = &mut out[h * hd..(h + 1) * hd];
            dst.fill(0.0);
            let mut l = 0f32;
            for c in 0..chunks {
                let p = at(c);
                let w = ops::exp(p[0] - m);
                l += p[1] * w;
                simd::axpy(dst, w, &p[2..]);
            }
            let inv = 1.0 / l;
            dst.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// The online softmax of `rows` query rows (`s.q`, `[rows, hd]`, pre-scaled) over keys
/// `keys` (indices into `kt`'s columns, `[hd, stride]`, and `v`'s rows, `[·, hd]`), row r
/// seeing keys below `limit(r)`. Leaves each row's m, l and unnormalised o in `s`.
#[allow(clippy::too_many_arguments)]
fn run_rows(
    s: &mut Scratch,
    rows: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    v: &[f32],
    keys: Range<usize>,
    limit: &dyn Fn(usize) -> usize,
) {
    s.m.clear();
    s.m.resize(rows, f32::NEG_INFINITY);
    s.l.clear();
    s.l.resize(rows, 0.0);
    s.o.clear();
    s.o.resize(rows * hd, 0.0);
    s.s.resize(rows.div_ceil(4) * 4 * BK, 0.0);
    let mut j0 = keys.start;
    while j0 < keys.end {
        let bk = BK.min(keys.end - j0);
        scores(&s.q, rows, hd, kt, stride, j0, bk, &mut s.s);
        for r in 0..rows {
            let row = &mut s.s[r * BK..r * BK + bk];
            let lim = limit(r).saturating_sub(j0).min(bk);
            if lim == 0 {
                // Every key of the block lies after this row's position.
                row.fill(0.0);
                continue;
            }
            let mx = row[..lim].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m_new = s.m[r].max(mx);
            let corr = ops::exp(s.m[r] - m_new);
            let mut sum = 0f32;
            for x in row[..lim].iter_mut() {
                *x = ops::exp(*x - m_new);
                sum += *x;
            }
            row[lim..].fill(0.0);
            s.l[r] = s.l[r] * corr + sum;
            s.m[r] = m_new;
            if corr != 1.0 {
                s.o[r * hd..(r + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= corr);
            }
        }
        accumulate(&s.s, rows, hd, v, j0, bk, &mut s.o);
        j0 += bk;
    }
}

/// `s[r][c] = q[r] · kt[:, j0 + c]` for c < bk (`s` rows of `BK`).
#[allow(clippy::too_many_arguments)]
fn scores(
    q: &[f32],
    rows: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    j0: usize,
    bk: usize,
    s: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use simd::Level;
        match simd::level() {
            // SAFETY: the features were detected at run time.
            Level::Avx512 => return unsafe { scores_avx512(q, rows, hd, kt, stride, j0, bk, s) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { scores_avx2(q, rows, hd, kt, stride, j0, bk, s) },
            Level::Scalar | Level::Neon => {}
        }
    }
    scores_body::<false>(q, rows, hd, kt, stride, j0, bk, s)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(
    q: &[f32],
    rows: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    j0: usize,
    bk: usize,
    s: &mut [f32],
) {
    scores_body::<true>(q, rows, hd, kt, stride, j0, bk, s)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn scores_avx512(
    q: &[f32],
    rows: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    j0: usize,
    bk: usize,
    s: &mut [f32],
) {
    scores_body::<true>(q, rows, hd, kt, stride, j0, bk, s)
}

/// The body of `scores`, inlined into each SIMD level's copy: 4 rows × 16 keys of
/// accumulators, one broadcast of q per row and head_dim step.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores_body<const FMA: bool>(
    q: &[f32],
    rows: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    j0: usize,
    bk: usize,
    s: &mut [f32],
) {
    const C: usize = 16;
    let mut r0 = 0;
    while r0 < rows {
        let qr: [&[f32]; 4] = std::array::from_fn(|i| {
            let r = (r0 + i).min(rows - 1);
            &q[r * hd..(r + 1) * hd]
        });
        let mut c0 = 0;
        while c0 < bk {
            let w = C.min(bk - c0);
            let mut acc = [[0f32; C]; 4];
            #[allow(clippy::needless_range_loop)]
            for d in 0..hd {
                let base = d * stride + j0 + c0;
                let mut k = [0f32; C];
                k[..w].copy_from_slice(&kt[base..base + w]);
                for i in 0..4 {
                    let qv = qr[i][d];
                    for c in 0..C {
                        acc[i][c] = simd::fmadd::<FMA>(qv, k[c], acc[i][c]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                if r0 + i < rows {
                    s[(r0 + i) * BK + c0..(r0 + i) * BK + c0 + w].copy_from_slice(&a[..w]);
                }
            }
            c0 += C;
        }
        r0 += 4;
    }
}

/// `o[r] += Σ_c p[r][c] · v[j0 + c]` for every row (`p` rows of `BK`).
fn accumulate(p: &[f32], rows: usize, hd: usize, v: &[f32], j0: usize, bk: usize, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use simd::Level;
        match simd::level() {
            // SAFETY: the features were detected at run time.
            Level::Avx512 => return unsafe { accumulate_avx512(p, rows, hd, v, j0, bk, o) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { accumulate_avx2(p, rows, hd, v, j0, bk, o) },
            Level::Scalar | Level::Neon => {}
        }
    }
    accumulate_body::<false>(p, rows, hd, v, j0, bk, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2(
    p: &[f32],
    rows: usize,
    hd: usize,
    v: &[f32],
    j0: usize,
    bk: usize,
    o: &mut [f32],
) {
    accumulate_body::<true>(p, rows, hd, v, j0, bk, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn accumulate_avx512(
    p: &[f32],
    rows: usize,
    hd: usize,
    v: &[f32],
    j0: usize,
    bk: usize,
    o: &mut [f32],
) {
    accumulate_body::<true>(p, rows, hd, v, j0, bk, o)
}

/// The body of `accumulate`: 4 rows × 16 of head_dim in accumulators, one broadcast of p
/// per row and key.
#[inline(always)]
fn accumulate_body<const FMA: bool>(
    p: &[f32],
    rows: usize,
    hd: usize,
    v: &[f32],
    j0: usize,
    bk: usize,
    o: &mut [f32],
) {
    const C: usize = 16;
    let mut r0 = 0;
    while r0 < rows {
        let nr = 4.min(rows - r0);
        let mut d0 = 0;
        while d0 < hd {
            let w = C.min(hd - d0);
            let mut acc = [[0f32; C]; 4];
            for (i, a) in acc.iter_mut().enumerate().take(nr) {
                a[..w].copy_from_slice(&o[(r0 + i) * hd + d0..(r0 + i) * hd + d0 + w]);
            }
            for c in 0..bk {
                let base = (j0 + c) * hd + d0;
                let mut vv = [0f32; C];
                vv[..w].copy_from_slice(&v[base..base + w]);
                for i in 0..4 {
                    let pv = p[(r0 + i.min(nr - 1)) * BK + c];
                    for x in 0..C {
                        acc[i][x] = simd::fmadd::<FMA>(pv, vv[x], acc[i][x]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate().take(nr) {
                o[(r0 + i) * hd + d0..(r0 + i) * hd + d0 + w].copy_from_slice(&a[..w]);
            }
            d0 += C;
        }
        r0 += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The plain definition in f64: scores, softmax over the visible keys, weighted sum.
    fn naive(q: &[f32], k: &[f32], v: &[f32], sh: Shape) -> Vec<f64> {
        let (hd, nh, nkv) = (sh.head_dim, sh.heads, sh.kv_heads);
        let group = nh / nkv;
        let mut out = vec![0f64; sh.n * nh * hd];
        for i in 0..sh.n {
            for h in 0..nh {
                let kvh = h / group;
                let vis = sh.past + i + 1;
                let qi = &q[(i * nh + h) * hd..(i * nh + h + 1) * hd];
                let sc: Vec<f64> = (0..vis)
                    .map(|j| {
                        let kj = &k[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
                        qi.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * sh.scale as f64
                    })
                    .collect();
                let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let vj = &v[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
                    for d in 0..hd {
                        out[(i * nh + h) * hd + d] += ej / sum * vj[d] as f64;
                    }
                }
            }
        }
        out
    }

    fn check(sh: Shape) {
        let total = sh.past + sh.n;
        let (hd, nkv) = (sh.head_dim, sh.kv_heads);
        // Large-ish scores so the softmax is peaked and the online rescaling matters.
        let q: Vec<f32> = data(sh.n * sh.heads * hd, 3)
            .iter()
            .map(|x| x * 3.0)
            .collect();
        let k = data(total * nkv * hd, 5);
        let v = data(total * nkv * hd, 7);
        let read = |h: usize, r: Range<usize>, ko: &mut [f32], vo: &mut [f32]| {
            for (i, j) in r.enumerate() {
                ko[i * hd..(i + 1) * hd]
                    .copy_from_slice(&k[(j * nkv + h) * hd..(j * nkv + h + 1) * hd]);
                vo[i * hd..(i + 1) * hd]
                    .copy_from_slice(&v[(j * nkv + h) * hd..(j * nkv + h + 1) * hd]);
            }
        };
        let mut out = vec![f32::NAN; sh.n * sh.heads * hd];
        attention(&q, sh, &read, &mut out);
        let want = naive(&q, &k, &v, sh);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 2e-5 * (1.0 + b.abs()),
                "{sh:?} [{i}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn flash_attention_matches_the_plain_softmax_for_prefill_and_decode() {
        for (n, past) in [
            (1, 0),
            (1, 5),
            (1, 300),
            (1, 1100),
            (2, 0),
            (7, 3),
            (40, 0),
            (33, 70),
            (130, 200),
        ] {
            for (heads, kv_heads, hd) in [(4, 2, 16), (3, 1, 20), (2, 2, 64)] {
                check(Shape {
                    n,
                    past,
                    heads,
                    kv_heads,
                    head_dim: hd,
                    scale: (hd as f32).powf(-0.5),
                });
            }
        }
    }
}
