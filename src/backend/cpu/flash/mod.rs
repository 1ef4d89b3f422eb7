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
//! each task a chunk of one KV head's keys, with the group's query heads as its rows and
//! the same tiled kernels, and the partial (m, l, o) are merged per head at the end. Keys are read transposed in blocks of
//! `KEY_BLOCK` positions (`[block][head_dim][KEY_BLOCK]`, the KV cache's own layout, so
//! widening is one contiguous conversion), so that `q·Kᵀ` is a broadcast-FMA over keys and
//! `p·V` one over head_dim: no horizontal sums. Prefill widens every key once per call;
//! decode widens each task's chunk. `exp` is `ops::exp`, a vectorisable polynomial (≤ 2 ulp).
//!
//! The tile kernels (the online softmax of a task's rows over its keys) are `tile`'s.
//!
//! Invariant: each task writes only its own rows (prefill) or its own partial slot (decode).

use std::cell::RefCell;
use std::ops::Range;

use super::{ops, simd, team};

mod tile;

use tile::{run_rows, Src};

/// Keys per block of the online softmax (a multiple of `KEY_BLOCK`).
const BK: usize = 64;
/// Query positions per prefill task.
const BQ: usize = 16;
/// Positions per transposed key block: one 16-lane vector of f32 per head_dim row.
pub const KEY_BLOCK: usize = 16;

/// Where attention reads one layer's keys and values (the KV cache).
pub trait KvSource: Sync {
    /// Widens positions `range` (`range.start` a multiple of `KEY_BLOCK`) of KV head `head`:
    /// keys into `kt` as `range.len().div_ceil(KEY_BLOCK)` transposed blocks
    /// (`kt[(b·head_dim + d)·KEY_BLOCK + lane]` is position `range.start + b·KEY_BLOCK +
    /// lane`; lanes past `range.end` are unspecified), values into `v` (`[range.len(),
    /// head_dim]`).
    fn widen(&self, head: usize, range: Range<usize>, kt: &mut [f32], v: &mut [f32]);

    /// KV head `head`'s keys (key blocks) and values as stored, where they are 2-byte
    /// floats: decode reads them in place, widening in registers, instead of through
    /// `widen`.
    fn halves(&self, _head: usize) -> Option<HalfKv<'_>> {
        None
    }
}

/// One KV head's stored f16 or bf16 elements (little-endian bytes), from position 0: keys
/// as key blocks, values as `[position, head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct HalfKv<'a> {
    pub bf16: bool,
    pub kt: &'a [u8],
    pub v: &'a [u8],
}

/// f32 values of a key-block buffer covering `keys` positions.
fn kt_len(keys: usize, hd: usize) -> usize {
    keys.div_ceil(KEY_BLOCK) * KEY_BLOCK * hd
}

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

/// Attention of `q` (`[n, heads, head_dim]`) over the `past + n` cached positions of
/// `kv`, into `out` (`[n, heads, head_dim]`).
pub fn attention(q: &[f32], sh: Shape, kv: &dyn KvSource, out: &mut [f32]) {
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
        decode(q, sh, kv, out)
    } else {
        prefill(q, sh, kv, out)
    }
}

/// Widened keys (key blocks, `[kv_head][kt_len(total)]`) and values (`[kv_head][total,
/// hd]`) of every KV head.
fn widen_all(sh: Shape, kv: &dyn KvSource) -> (Vec<f32>, Vec<f32>) {
    let (total, hd, nkv) = (sh.past + sh.n, sh.head_dim, sh.kv_heads);
    let kth = kt_len(total, hd);
    let mut kt = vec![0f32; nkv * kth];
    let mut v = vec![0f32; nkv * total * hd];
    let (ktp, vp) = (Ptr(kt.as_mut_ptr()), Ptr(v.as_mut_ptr()));
    // Per KV head and chunk of positions, so two threads share even one head.
    let chunk = 256;
    let chunks = total.div_ceil(chunk);
    team::par_for(nkv * chunks, &|i| {
        let (ktp, vp) = (ktp, vp);
        let (h, c) = (i / chunks, i % chunks);
        let r = c * chunk..((c + 1) * chunk).min(total);
        // SAFETY: positions r of head h (whole key blocks, as chunk is a multiple of
        // KEY_BLOCK, and value rows) belong to this task only.
        let (kh, vh) = unsafe {
            (
                std::slice::from_raw_parts_mut(
                    ktp.0.add(h * kth + r.start * hd),
                    kt_len(r.len(), hd),
                ),
                std::slice::from_raw_parts_mut(vp.0.add((h * total + r.start) * hd), r.len() * hd),
            )
        };
        kv.widen(h, r, kh, vh);
    });
    (kt, v)
}

fn prefill(q: &[f32], sh: Shape, kv: &dyn KvSource, out: &mut [f32]) {
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
    let (kt, v) = widen_all(sh, kv);
    let kth = kt_len(total, hd);
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
                Src::F32 {
                    kt: &kt[kvh * kth..(kvh + 1) * kth],
                    v: &v[kvh * total * hd..(kvh + 1) * total * hd],
                },
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

fn decode(q: &[f32], sh: Shape, kv: &dyn KvSource, out: &mut [f32]) {
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
    // About 8 tasks per thread (the team hands them out as threads come free, so uneven
    // chunks even out), each at least 128 keys: the merge costs one row of head_dim per
    // chunk and head.
    let chunk = (total * kv_heads)
        .div_ceil(8 * threads)
        .max(128)
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
            let (mut k, mut v) = (std::mem::take(&mut s.k), std::mem::take(&mut s.v));
            // The group's query heads are the rows, pre-scaled.
            s.q.resize(group * hd, 0.0);
            for (d, x) in
                s.q.iter_mut()
                    .zip(&q[kvh * group * hd..(kvh + 1) * group * hd])
            {
                *d = x * scale;
            }
            let src = match kv.halves(kvh) {
                Some(h) => {
                    let (kt, v) = (&h.kt[2 * r.start * hd..], &h.v[2 * r.start * hd..]);
                    if h.bf16 {
                        Src::Bf16 { kt, v }
                    } else {
                        Src::F16 { kt, v }
                    }
                }
                None => {
                    k.resize(kt_len(len, hd), 0.0);
                    v.resize(len * hd, 0.0);
                    kv.widen(kvh, r.clone(), &mut k, &mut v);
                    Src::F32 { kt: &k, v: &v }
                }
            };
            run_rows(s, group, hd, src, 0..len, &|_| len);
            for g in 0..group {
                // SAFETY: slot (kvh, c, g) belongs to this task only.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        pp.0.add(((kvh * chunks + c) * group + g) * slot),
                        slot,
                    )
                };
                dst[0] = s.m[g];
                dst[1] = s.l[g];
                dst[2..].copy_from_slice(&s.o[g * hd..(g + 1) * hd]);
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

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    use super::tile::{run_rows_avx2, run_rows_avx512};
    use super::tile::{run_rows_level, Plain};
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

    /// Keys and values as `[position, kv_head, head_dim]` f32, widened the way the KV
    /// cache is (key blocks), written out element by element.
    struct Natural<'a> {
        k: &'a [f32],
        v: &'a [f32],
        nkv: usize,
        hd: usize,
    }

    impl KvSource for Natural<'_> {
        fn widen(&self, h: usize, r: Range<usize>, kt: &mut [f32], vo: &mut [f32]) {
            let (nkv, hd) = (self.nkv, self.hd);
            assert!(r.start.is_multiple_of(KEY_BLOCK));
            kt[..kt_len(r.len(), hd)].fill(f32::NAN);
            for (i, j) in r.enumerate() {
                let at = (j * nkv + h) * hd;
                for d in 0..hd {
                    kt[(i / KEY_BLOCK * hd + d) * KEY_BLOCK + i % KEY_BLOCK] = self.k[at + d];
                }
                vo[i * hd..(i + 1) * hd].copy_from_slice(&self.v[at..at + hd]);
            }
        }
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
        let kv = Natural {
            k: &k,
            v: &v,
            nkv,
            hd,
        };
        let mut out = vec![f32::NAN; sh.n * sh.heads * hd];
        attention(&q, sh, &kv, &mut out);
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
            // Groups of 1-5 query rows per KV head; head_dim 64 and 128 take the AVX-512
            // `p·V` kernel over 64 of head_dim at once.
            for (heads, kv_heads, hd) in [(4, 2, 16), (3, 1, 20), (2, 2, 64), (10, 2, 128)] {
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

    /// `run_rows` at every SIMD level this CPU has, by name.
    type RunRows = fn(&mut Scratch, usize, usize, Src<'_>, Range<usize>, &dyn Fn(usize) -> usize);

    fn levels() -> Vec<(&'static str, RunRows)> {
        // Only x86 adds levels to the plain one.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut out: Vec<(&'static str, RunRows)> = vec![("plain", |s, r, hd, src, k, l| {
            run_rows_level::<Plain>(s, r, hd, src, k, l)
        })];
        #[cfg(target_arch = "x86_64")]
        {
            use simd::Level;
            let f16c = simd::avx2_f16c();
            if f16c && matches!(simd::level(), Level::Avx2 | Level::Avx512) {
                out.push(("avx2", |s, r, hd, src, k, l| {
                    // SAFETY: avx2, fma and f16c were detected above.
                    unsafe { run_rows_avx2(s, r, hd, src, k, l) }
                }));
            }
            if f16c && simd::level() == Level::Avx512 {
                out.push(("avx512", |s, r, hd, src, k, l| {
                    // SAFETY: avx512f and f16c were detected above.
                    unsafe { run_rows_avx512(s, r, hd, src, k, l) }
                }));
            }
        }
        out
    }

    /// A decode task's softmax over a chunk of a real KV cache, read in place (f16, bf16)
    /// or widened (f32, FP8), at every SIMD level: the plain softmax in f64 of the values
    /// the cache stores, for chunks that start past 0 and end inside a key block, and a
    /// head_dim with a partial lane group.
    #[test]
    fn decode_chunks_read_every_cache_dtype_at_every_simd_level() {
        use crate::backend::DType;
        use crate::state::KvCache;
        for dt in [DType::F16, DType::BF16, DType::F32, DType::F8E4M3] {
            for (nkv, group, hd, total, chunk) in [
                (2, 3, 64, 300, 64..300),
                (1, 5, 128, 90, 16..90),
                (1, 4, 20, 45, 16..37),
                (3, 1, 16, 1, 0..1),
            ] {
                let mut cache = KvCache::new(dt, nkv, hd);
                cache.append(&data(total * nkv * hd, 5), &data(total * nkv * hd, 7));
                for h in 0..nkv {
                    let (mut ks, mut vs) = (vec![0f32; total * hd], vec![0f32; total * hd]);
                    cache.read_head(h, total, &mut ks, &mut vs);
                    let q: Vec<f32> = data(group * hd, 11 + h as u64)
                        .iter()
                        .map(|x| x * 3.0 / (hd as f32).sqrt())
                        .collect();
                    let len = chunk.len();
                    // The plain softmax of each row over the chunk's stored keys.
                    let want: Vec<f64> = (0..group)
                        .flat_map(|g| {
                            let qg = &q[g * hd..(g + 1) * hd];
                            let sc: Vec<f64> = chunk
                                .clone()
                                .map(|j| {
                                    (0..hd)
                                        .map(|d| qg[d] as f64 * ks[j * hd + d] as f64)
                                        .sum::<f64>()
                                })
                                .collect();
                            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                            let sum: f64 = e.iter().sum();
                            (0..hd)
                                .map(|d| {
                                    chunk
                                        .clone()
                                        .zip(&e)
                                        .map(|(j, ej)| ej / sum * vs[j * hd + d] as f64)
                                        .sum::<f64>()
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    let mut kt = vec![f32::NAN; kt_len(len, hd)];
                    let mut vw = vec![f32::NAN; len * hd];
                    let src = match cache.halves(h) {
                        Some(hk) => {
                            let at = 2 * chunk.start * hd;
                            let (kt, v) = (&hk.kt[at..], &hk.v[at..]);
                            assert_eq!(hk.bf16, dt == DType::BF16);
                            if hk.bf16 {
                                Src::Bf16 { kt, v }
                            } else {
                                Src::F16 { kt, v }
                            }
                        }
                        None => {
                            assert!(!matches!(dt, DType::F16 | DType::BF16));
                            cache.widen(h, chunk.clone(), &mut kt, &mut vw);
                            Src::F32 { kt: &kt, v: &vw }
                        }
                    };
                    for (name, run) in levels() {
                        let mut s = Scratch {
                            q: q.clone(),
                            ..Scratch::default()
                        };
                        run(&mut s, group, hd, src, 0..len, &|_| len);
                        for (i, b) in want.iter().enumerate() {
                            let a = s.o[i] / s.l[i / hd];
                            assert!(
                                (a as f64 - b).abs() <= 2e-5 * (1.0 + b.abs()),
                                "{dt} {name} head {h} chunk {chunk:?} [{i}]: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Attention over a real KV cache of every dtype, prefill and decode, and again after
    /// the cache is cut back into a key block and refilled: the plain softmax of the values
    /// the cache stores (read back through `read_head`).
    #[test]
    fn attention_over_a_kv_cache_matches_the_plain_softmax_after_truncation() {
        use crate::backend::DType;
        use crate::state::KvCache;
        let (heads, nkv, hd) = (6, 2, 32);
        for dt in [DType::F16, DType::BF16, DType::F32, DType::F8E5M2] {
            let mut cache = KvCache::new(dt, nkv, hd);
            let mut past = 0;
            // Prefill 70, decode one, cut back to 50 (inside a key block), prefill 20, decode.
            for (n, cut) in [(70, None), (1, Some(50)), (20, None), (1, None)] {
                if let Some(c) = cut {
                    cache.truncate(c);
                    past = c;
                }
                let seed = (past * 7 + n) as u64;
                let q = data(n * heads * hd, seed);
                let (k, v) = (data(n * nkv * hd, seed + 1), data(n * nkv * hd, seed + 2));
                cache.append(&k, &v);
                let total = past + n;
                let (mut ks, mut vs) = (vec![0f32; total * nkv * hd], vec![0f32; total * nkv * hd]);
                for h in 0..nkv {
                    let (mut kh, mut vh) = (vec![0f32; total * hd], vec![0f32; total * hd]);
                    cache.read_head(h, total, &mut kh, &mut vh);
                    for j in 0..total {
                        let at = (j * nkv + h) * hd;
                        ks[at..at + hd].copy_from_slice(&kh[j * hd..(j + 1) * hd]);
                        vs[at..at + hd].copy_from_slice(&vh[j * hd..(j + 1) * hd]);
                    }
                }
                let sh = Shape {
                    n,
                    past,
                    heads,
                    kv_heads: nkv,
                    head_dim: hd,
                    scale: (hd as f32).powf(-0.5),
                };
                let mut out = vec![f32::NAN; n * heads * hd];
                attention(&q, sh, &cache, &mut out);
                let want = naive(&q, &ks, &vs, sh);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() <= 2e-5 * (1.0 + b.abs()),
                        "{dt} {sh:?} [{i}]: {a} vs {b}"
                    );
                }
                past = total;
            }
        }
    }
}
