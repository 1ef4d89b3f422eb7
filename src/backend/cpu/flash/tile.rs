//! The tile kernels of `flash`: the online softmax of a few query rows over a range of
//! keys (`run_rows`), as 4 rows × 16 keys of broadcast-FMA for `q·Kᵀ` over transposed key
//! blocks and 4 rows × 16 of head_dim for `p·V`, compiled once per SIMD level (plain,
//! AVX2, AVX-512) and element type: f32 widened by the caller, or the KV cache's f16/bf16
//! read in place and widened in registers (`Lanes`). Every level is tested against the
//! plain softmax in f64 (`flash`'s tests).

use std::ops::Range;

use super::{kt_len, Scratch, BK, KEY_BLOCK};
use crate::backend::cpu::{ops, simd};

/// Keys and values as a task reads them: f32 (widened into scratch), or the cache's own
/// 2-byte elements (f16, bf16), read in place and widened in registers. Keys are key
/// blocks, values `[·, hd]` rows, both from the task's first key.
#[derive(Clone, Copy)]
pub(super) enum Src<'a> {
    F32 { kt: &'a [f32], v: &'a [f32] },
    F16 { kt: &'a [u8], v: &'a [u8] },
    Bf16 { kt: &'a [u8], v: &'a [u8] },
}

/// The online softmax of `rows` query rows (`s.q`, `[rows, hd]`, pre-scaled) over keys
/// `keys` of `src` (`keys.start` a multiple of `KEY_BLOCK`), row r seeing keys below
/// `limit(r)`. Leaves each row's m, l and unnormalised o in `s`. One dispatch per call: the
/// whole loop is compiled for each SIMD level and element type, so the softmax between the
/// kernels is vectorised too.
pub(super) fn run_rows(
    s: &mut Scratch,
    rows: usize,
    hd: usize,
    src: Src<'_>,
    keys: Range<usize>,
    limit: &dyn Fn(usize) -> usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use simd::Level;
        let halves = !matches!(src, Src::F32 { .. });
        match simd::level() {
            // SAFETY: the features were detected at run time (f16c where halves are read).
            Level::Avx512 if !halves || simd::avx2_f16c() => {
                return unsafe { run_rows_avx512(s, rows, hd, src, keys, limit) }
            }
            // SAFETY: as above.
            Level::Avx2 if !halves || simd::avx2_f16c() => {
                return unsafe { run_rows_avx2(s, rows, hd, src, keys, limit) }
            }
            _ => {}
        }
    }
    run_rows_level::<Plain>(s, rows, hd, src, keys, limit)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn run_rows_avx2(
    s: &mut Scratch,
    rows: usize,
    hd: usize,
    src: Src<'_>,
    keys: Range<usize>,
    limit: &dyn Fn(usize) -> usize,
) {
    run_rows_level::<x86::Avx2>(s, rows, hd, src, keys, limit)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn run_rows_avx512(
    s: &mut Scratch,
    rows: usize,
    hd: usize,
    src: Src<'_>,
    keys: Range<usize>,
    limit: &dyn Fn(usize) -> usize,
) {
    run_rows_level::<x86::Avx512>(s, rows, hd, src, keys, limit)
}

/// `run_rows` at one SIMD level, per element type.
#[inline(always)]
pub(super) fn run_rows_level<L: Level>(
    s: &mut Scratch,
    rows: usize,
    hd: usize,
    src: Src<'_>,
    keys: Range<usize>,
    limit: &dyn Fn(usize) -> usize,
) {
    s.m.clear();
    s.m.resize(rows, f32::NEG_INFINITY);
    s.l.clear();
    s.l.resize(rows, 0.0);
    s.o.clear();
    s.o.resize(rows * hd, 0.0);
    s.s.resize(rows * BK, 0.0);
    let (k_len, v_len) = match src {
        Src::F32 { kt, v } => (kt.len(), v.len()),
        Src::F16 { kt, v } | Src::Bf16 { kt, v } => (kt.len() / 2, v.len() / 2),
    };
    assert!(keys.start.is_multiple_of(KEY_BLOCK) && k_len >= kt_len(keys.end, hd));
    assert!(v_len >= keys.end * hd && s.q.len() >= rows * hd);
    match src {
        Src::F32 { kt, v } => run_rows_body::<L, _>(s, rows, hd, F32s(kt), F32s(v), keys, limit),
        Src::F16 { kt, v } => run_rows_body::<L, _>(
            s,
            rows,
            hd,
            Halves::<false>(kt),
            Halves::<false>(v),
            keys,
            limit,
        ),
        Src::Bf16 { kt, v } => run_rows_body::<L, _>(
            s,
            rows,
            hd,
            Halves::<true>(kt),
            Halves::<true>(v),
            keys,
            limit,
        ),
    }
}

/// The body of `run_rows`, inlined into each SIMD level's copy.
#[inline(always)]
fn run_rows_body<L: Level, E: Lanes>(
    s: &mut Scratch,
    rows: usize,
    hd: usize,
    kt: E,
    v: E,
    keys: Range<usize>,
    limit: &dyn Fn(usize) -> usize,
) {
    let mut j0 = keys.start;
    while j0 < keys.end {
        let bk = BK.min(keys.end - j0);
        scores_body::<L, E>(&s.q, rows, hd, kt, j0, bk, &mut s.s);
        for r in 0..rows {
            let row = &mut s.s[r * BK..r * BK + bk];
            let lim = limit(r).saturating_sub(j0).min(bk);
            if lim == 0 {
                // Every key of the block lies after this row's position.
                row.fill(0.0);
                continue;
            }
            let m_new = s.m[r].max(lanes_max(&row[..lim]));
            let corr = ops::exp(s.m[r] - m_new);
            for x in row[..lim].iter_mut() {
                *x = ops::exp(*x - m_new);
            }
            row[lim..].fill(0.0);
            s.l[r] = s.l[r] * corr + lanes_sum(&row[..lim]);
            s.m[r] = m_new;
            if corr != 1.0 {
                s.o[r * hd..(r + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= corr);
            }
        }
        accumulate_body::<L, E>(&s.s, rows, hd, v, j0, bk, &mut s.o);
        j0 += bk;
    }
}

/// A SIMD level as the kernel bodies see it: whether `a·b + c` is fused, and how 16
/// halves are widened (in registers, inside the level's `target_feature` copy).
pub(super) trait Level {
    const FMA: bool;
    /// Whether the level has registers for `p·V` over 64 of head_dim at once (`WIDE`
    /// chunks of 16 per row: 32 zmm at AVX-512; AVX2's 16 ymm hold one chunk per row).
    const WIDE: bool = false;
    /// 16 f16 (`BF16` false) or bf16 values at `p` as f32.
    ///
    /// # Safety
    /// `p` points at 32 readable bytes.
    unsafe fn widen16<const BF16: bool>(p: *const u8) -> [f32; LANES];
}

/// The plain level: element by element.
pub(super) struct Plain;

impl Level for Plain {
    const FMA: bool = false;
    #[inline(always)]
    unsafe fn widen16<const BF16: bool>(p: *const u8) -> [f32; LANES] {
        // SAFETY: the caller guarantees 32 readable bytes.
        let b = unsafe { std::slice::from_raw_parts(p, 2 * LANES) };
        std::array::from_fn(|i| half_to_f32::<BF16>([b[2 * i], b[2 * i + 1]]))
    }
}

/// One f16 or bf16 element's little-endian bytes as f32.
#[inline(always)]
fn half_to_f32<const BF16: bool>(b: [u8; 2]) -> f32 {
    let bits = u16::from_le_bytes(b);
    if BF16 {
        f32::from_bits((bits as u32) << 16)
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Level, LANES};

    pub struct Avx2;
    pub struct Avx512;

    impl Level for Avx2 {
        const FMA: bool = true;
        #[inline(always)]
        unsafe fn widen16<const BF16: bool>(p: *const u8) -> [f32; LANES] {
            // SAFETY: inlined into `run_rows_avx2` (avx2, f16c); 32 bytes at p (caller).
            unsafe {
                let lo = _mm_loadu_si128(p as *const __m128i);
                let hi = _mm_loadu_si128(p.add(16) as *const __m128i);
                let (a, b) = if BF16 {
                    (
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(lo))),
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(hi))),
                    )
                } else {
                    (_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi))
                };
                std::mem::transmute::<[__m256; 2], [f32; LANES]>([a, b])
            }
        }
    }

    impl Level for Avx512 {
        const FMA: bool = true;
        const WIDE: bool = true;
        #[inline(always)]
        unsafe fn widen16<const BF16: bool>(p: *const u8) -> [f32; LANES] {
            // SAFETY: inlined into `run_rows_avx512` (avx512f, f16c); 32 bytes at p (caller).
            unsafe {
                let h = _mm256_loadu_si256(p as *const __m256i);
                let x = if BF16 {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                } else {
                    _mm512_cvtph_ps(h)
                };
                std::mem::transmute::<__m512, [f32; LANES]>(x)
            }
        }
    }
}

/// Keys or values as the kernels read them: `LANES` consecutive elements at a time, as f32.
pub(super) trait Lanes: Copy {
    /// Elements `at..at + w` (`w ≤ LANES`) as f32, zero past `w`.
    fn get<L: Level>(self, at: usize, w: usize) -> [f32; LANES];
    /// A hint that element `at` will be read soon (any `at`).
    #[inline(always)]
    fn prefetch(self, _at: usize) {}
}

/// f32 elements.
#[derive(Clone, Copy)]
struct F32s<'a>(&'a [f32]);

impl Lanes for F32s<'_> {
    #[inline(always)]
    fn get<L: Level>(self, at: usize, w: usize) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        if w == LANES {
            out.copy_from_slice(&self.0[at..at + LANES]);
        } else {
            out[..w].copy_from_slice(&self.0[at..at + w]);
        }
        out
    }
}

/// f16 (`BF16` false) or bf16 elements as little-endian bytes.
#[derive(Clone, Copy)]
struct Halves<'a, const BF16: bool>(&'a [u8]);

impl<const BF16: bool> Lanes for Halves<'_, BF16> {
    #[inline(always)]
    fn prefetch(self, at: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.0.as_ptr().wrapping_add(2 * at) as *const i8);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (self, at);
    }

    #[inline(always)]
    fn get<L: Level>(self, at: usize, w: usize) -> [f32; LANES] {
        let b = &self.0[2 * at..2 * (at + w)];
        if w == LANES {
            // SAFETY: b holds the 32 bytes (sliced, so bounds-checked, above).
            unsafe { L::widen16::<BF16>(b.as_ptr()) }
        } else {
            let mut out = [0f32; LANES];
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = half_to_f32::<BF16>([c[0], c[1]]);
            }
            out
        }
    }
}

/// Software prefetch distances of the kernels reading the cache in place (measured: 2000
/// positions, SmolLM2's shape, ~105 → ~89 µs per layer): keys this many elements ahead of
/// the row being read (2 KiB of halves), values this many rows ahead.
const K_AHEAD: usize = 1024;
const V_AHEAD: usize = 16;

/// Lanes of the vectorised reductions below.
const LANES: usize = 16;

/// The largest of `x` (−∞ if empty), over 16 lanes so that it vectorises.
#[inline(always)]
fn lanes_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    for (a, v) in acc.iter_mut().zip(it.remainder()) {
        *a = a.max(*v);
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of `x`, in 16 lane sums added pairwise at the end (a float sum in order would
/// not vectorise).
#[inline(always)]
fn lanes_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(it.remainder()) {
        *a += v;
    }
    simd::sum_lanes(acc)
}

/// `s[r][c] = q[r] · k[j0 + c]` for c < bk (`s` rows of `BK`, `kt` key blocks, `j0` a
/// multiple of `KEY_BLOCK`): 4 rows × 16 keys of accumulators, one broadcast of q per row
/// and head_dim step; the last 1-3 rows in a kernel of their own size (GQA groups of 3
/// query heads per KV head multiplied a copy of the third row for nothing).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores_body<L: Level, E: Lanes>(
    q: &[f32],
    rows: usize,
    hd: usize,
    kt: E,
    j0: usize,
    bk: usize,
    s: &mut [f32],
) {
    let mut r0 = 0;
    while r0 + 4 <= rows {
        scores_rows::<L, E, 4>(q, r0, hd, kt, j0, bk, s);
        r0 += 4;
    }
    match rows - r0 {
        1 => scores_rows::<L, E, 1>(q, r0, hd, kt, j0, bk, s),
        2 => scores_rows::<L, E, 2>(q, r0, hd, kt, j0, bk, s),
        3 => scores_rows::<L, E, 3>(q, r0, hd, kt, j0, bk, s),
        _ => {}
    }
}

/// `scores_body` for rows `r0..r0 + R`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores_rows<L: Level, E: Lanes, const R: usize>(
    q: &[f32],
    r0: usize,
    hd: usize,
    kt: E,
    j0: usize,
    bk: usize,
    s: &mut [f32],
) {
    const C: usize = KEY_BLOCK;
    let qr: [&[f32]; R] = std::array::from_fn(|i| &q[(r0 + i) * hd..(r0 + i + 1) * hd]);
    // Lets the compiler drop the bounds checks of qr[i][d] below.
    assert!(qr.iter().all(|r| r.len() == hd));
    let mut c0 = 0;
    while c0 < bk {
        let w = C.min(bk - c0);
        let mut acc = [[0f32; C]; R];
        // Row d of the key block of positions j0 + c0.. is C keys' element d.
        let block = (j0 + c0) * hd;
        #[allow(clippy::needless_range_loop)]
        for d in 0..hd {
            if d % 2 == 0 {
                // One 64-byte line of halves per two rows, `K_AHEAD` elements past the
                // row being read (the next key block at head_dim 64).
                kt.prefetch(block + K_AHEAD + d * C);
            }
            let k = kt.get::<L>(block + d * C, C);
            for i in 0..R {
                let qv = qr[i][d];
                for c in 0..C {
                    acc[i][c] = fmadd::<L>(qv, k[c], acc[i][c]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            s[(r0 + i) * BK + c0..(r0 + i) * BK + c0 + w].copy_from_slice(&a[..w]);
        }
        c0 += C;
    }
}

/// `simd::fmadd` at level `L` (fused at the SIMD levels, rounded twice at the plain one).
#[inline(always)]
fn fmadd<L: Level>(a: f32, b: f32, c: f32) -> f32 {
    if L::FMA {
        simd::fmadd::<true>(a, b, c)
    } else {
        simd::fmadd::<false>(a, b, c)
    }
}

/// `o[r] += Σ_c p[r][c] · v[j0 + c]` for every row (`p` rows of `BK`): 4 rows × 16 of
/// head_dim in accumulators, one broadcast of p per row and key; the last 1-3 rows in a
/// kernel of their own size, as `scores_body`.
#[inline(always)]
fn accumulate_body<L: Level, E: Lanes>(
    p: &[f32],
    rows: usize,
    hd: usize,
    v: E,
    j0: usize,
    bk: usize,
    o: &mut [f32],
) {
    if L::WIDE && hd.is_multiple_of(WIDE * LANES) {
        let mut r0 = 0;
        while r0 + 3 <= rows {
            accumulate_wide::<L, E, 3>(p, r0, hd, v, j0, bk, o);
            r0 += 3;
        }
        match rows - r0 {
            1 => accumulate_wide::<L, E, 1>(p, r0, hd, v, j0, bk, o),
            2 => accumulate_wide::<L, E, 2>(p, r0, hd, v, j0, bk, o),
            _ => {}
        }
        return;
    }
    let mut r0 = 0;
    while r0 + 4 <= rows {
        accumulate_rows::<L, E, 4>(p, r0, hd, v, j0, bk, o);
        r0 += 4;
    }
    match rows - r0 {
        1 => accumulate_rows::<L, E, 1>(p, r0, hd, v, j0, bk, o),
        2 => accumulate_rows::<L, E, 2>(p, r0, hd, v, j0, bk, o),
        3 => accumulate_rows::<L, E, 3>(p, r0, hd, v, j0, bk, o),
        _ => {}
    }
}

/// Chunks of 16 per row in `accumulate_wide`.
const WIDE: usize = 4;

/// `accumulate_body` for rows `r0..r0 + R` at a `WIDE` level, 64 of head_dim at a time
/// (`hd` a multiple of 64): each key's value row is read whole and meets R × 4 accumulators,
/// so a 64-key block is one pass over its rows per 64 of head_dim, not four, with a quarter
/// of the loop and bounds-check work per FMA. The same products summed in the same order
/// per output as `accumulate_rows`.
#[inline(always)]
fn accumulate_wide<L: Level, E: Lanes, const R: usize>(
    p: &[f32],
    r0: usize,
    hd: usize,
    v: E,
    j0: usize,
    bk: usize,
    o: &mut [f32],
) {
    const C: usize = LANES;
    let pr: [&[f32]; R] = std::array::from_fn(|i| &p[(r0 + i) * BK..][..bk]);
    let mut d0 = 0;
    while d0 < hd {
        let mut acc = [[[0f32; C]; WIDE]; R];
        for (i, a) in acc.iter_mut().enumerate() {
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = F32s(o).get::<L>((r0 + i) * hd + d0 + j * C, C);
            }
        }
        #[allow(clippy::needless_range_loop)]
        for c in 0..bk {
            let at = (j0 + c) * hd + d0;
            // The row `V_AHEAD` keys on, one 64-byte line of halves at a time.
            v.prefetch(at + V_AHEAD * hd);
            v.prefetch(at + V_AHEAD * hd + 32);
            let vv: [[f32; C]; WIDE] = std::array::from_fn(|j| v.get::<L>(at + j * C, C));
            for i in 0..R {
                let pv = pr[i][c];
                for j in 0..WIDE {
                    for x in 0..C {
                        acc[i][j][x] = fmadd::<L>(pv, vv[j][x], acc[i][j][x]);
                    }
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, aj) in a.iter().enumerate() {
                let at = (r0 + i) * hd + d0 + j * C;
                o[at..at + C].copy_from_slice(aj);
            }
        }
        d0 += WIDE * C;
    }
}

/// `accumulate_body` for rows `r0..r0 + R`.
#[inline(always)]
fn accumulate_rows<L: Level, E: Lanes, const R: usize>(
    p: &[f32],
    r0: usize,
    hd: usize,
    v: E,
    j0: usize,
    bk: usize,
    o: &mut [f32],
) {
    const C: usize = LANES;
    // Each row's probabilities, sliced once (no bounds check per key).
    let pr: [&[f32]; R] = std::array::from_fn(|i| &p[(r0 + i) * BK..][..bk]);
    let mut d0 = 0;
    while d0 < hd {
        let w = C.min(hd - d0);
        let mut acc = [[0f32; C]; R];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = F32s(o).get::<L>((r0 + i) * hd + d0, w);
        }
        if w == C {
            // Whole lanes: a fixed-size load, no partial-copy path in the loop.
            for c in 0..bk {
                if d0 == 0 {
                    // The row `V_AHEAD` keys on, one 64-byte line of halves at a time.
                    for x in (0..hd).step_by(32) {
                        v.prefetch((j0 + c + V_AHEAD) * hd + x);
                    }
                }
                axpy_rows::<L, R>(&mut acc, &pr, c, v.get::<L>((j0 + c) * hd + d0, C));
            }
        } else {
            for c in 0..bk {
                axpy_rows::<L, R>(&mut acc, &pr, c, v.get::<L>((j0 + c) * hd + d0, w));
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let at = (r0 + i) * hd + d0;
            if w == C {
                o[at..at + C].copy_from_slice(a);
            } else {
                o[at..at + w].copy_from_slice(&a[..w]);
            }
        }
        d0 += C;
    }
}

/// `acc[i] += p[i][c] · v` for the R rows (a function, not a closure: closures do not
/// inherit the caller's target features, and `mul_add` without FMA is a libm call).
#[inline(always)]
fn axpy_rows<L: Level, const R: usize>(
    acc: &mut [[f32; LANES]; R],
    p: &[&[f32]; R],
    c: usize,
    v: [f32; LANES],
) {
    for i in 0..R {
        let pv = p[i][c];
        for x in 0..LANES {
            acc[i][x] = fmadd::<L>(pv, v[x], acc[i][x]);
        }
    }
}
