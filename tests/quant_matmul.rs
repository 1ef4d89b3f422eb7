//! `matmul` / `matmul_many` for every weight type nemo loads (F32, F16, BF16, FP8 e4m3 /
//! e5m2 with their scales, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K), decode (n = 1) and prefill
//! (n > 1), at every SIMD level (`NEMO_SIMD=scalar|avx2|avx512`), against an f64
//! reference computed from the blocks' own fields.
//!
//! The SIMD level is chosen once per process (`simd::level()`, from `NEMO_SIMD`), so each
//! level's test runs its checks in a child process of this test binary with `NEMO_SIMD`
//! set, and the child first asserts that the level took effect. A level this CPU lacks is
//! reported as `SKIP` (tests/common/skip.rs), never passed silently.
//!
//! The weights are random blocks (random bytes, with the f16 scales chosen so values are
//! O(1)); the test decodes them itself in f64 from ggml's block layouts
//! (`dequantize_row_*` in ggml-quants.c), so the reference shares no code with nemo.
//!
//! Bounds (u = 2^-24, the f32 unit roundoff; k the row length):
//! - Arithmetic. Every path forms Σ w·x from f32 terms: FMA / integer partial sums (exact:
//!   |Σ q_w·q_x| < 2^31), each block's term scaled by at most four rounded f32 products,
//!   then summed over at most k terms in some order. Recursive summation of N terms errs by
//!   at most (N−1)·u·Σ|term| (Higham, Accuracy and Stability, §4.2), and the f32 weights
//!   (`d·sc·q − dmin·m` rounded) differ from the f64 ones by ≤ 3u of the parts' magnitude.
//!   A term's magnitude is at most (|w| + 2·off)·|x̂| where `off` is the block's offset
//!   (|dmin·m| for Q4_K/Q5_K, |m| for Q4_1, 0 otherwise: Q4_1/Q4_K keep the offset in a
//!   term of its own) and x̂ the activation used. So
//!   `E = (k + 16)·u·Σ (|w_i| + 2·off_i)·(|x_i| + d_i)` (d_i = 0 where x is not rounded).
//! - Activation rounding. Decode and prefill with an integer-dot type (Q8_0, Q4_0, Q4_1,
//!   Q4_K, Q5_K, Q6_K) first round x to 8 bits in blocks of 32, as ggml's Q8_0: d_b = max|x_b|/127,
//!   q = round(x/d_b), x̂ = d_b·q. Exactly rounded, |x − x̂| ≤ d_b/2; with x·(1/d_b) and d_b
//!   themselves rounded in f32 (|x/d_b| ≤ 127), |x − x̂| ≤ d_b·(1/2 + 256u). Hence
//!   `R = Σ |w_i|·d_b(i)·(1/2 + 256u)`, and |matmul − Σ w·x| ≤ R + E.
//! - BF16 prefill in bf16 products (`bf16_gemm`, AVX-512 BF16) rounds x to bf16 instead:
//!   |x − x̂| ≤ 2^-8·|x|, the same R with d_i = 2^-7·|x_i|; the AVX-512 child checks BF16
//!   both with f32 x (`set_exact(true)`) and, where the CPU has it, with bf16 x.
//! - R is a worst case (every rounding error with the sign of its weight), much larger than
//!   the errors that occur, so it would let a wrong scale in one sub-block through. The
//!   same decode is therefore also held to the f64 dot with x rounded by ggml's rule itself
//!   (computed here in f32 as `quantize_row_q8_0_ref` does), within E alone.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use half::{bf16, f16};
use nemo::backend::cpu::{
    bf16_gemm, interleave, matmul, matmul_many, quant, simd, MatRef, WeightScale,
};
use nemo::backend::DType;

use common::skip::skip;

const U: f64 = 1.0 / (1u64 << 24) as f64;

/// xorshift64*: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in [lo, hi).
    fn f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

fn h16(v: f64) -> [u8; 2] {
    f16::from_f64(v).to_bits().to_le_bytes()
}

fn f16_at(b: &[u8], i: usize) -> f64 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f64()
}

/// ggml's `get_scale_min_k4`: scale and min of sub-block j from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f64, f64) {
    let (s, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (s as f64, m as f64)
}

/// FP8 code → value, from the formats' definitions (e4m3: bias 7, no infinities, S.1111.111
/// NaN; e5m2: bias 15, IEEE-like). None for NaN and infinities.
fn fp8_value(dt: DType, b: u8) -> Option<f64> {
    let (ebits, mbits, bias) = if dt == DType::F8E4M3 {
        (4, 3, 7)
    } else {
        (5, 2, 15)
    };
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> mbits) & ((1 << ebits) - 1)) as i32;
    let m = (b & ((1 << mbits) - 1)) as f64;
    let scale = (1 << mbits) as f64;
    if dt == DType::F8E4M3 && e == 15 && m == 7.0 {
        return None;
    }
    if dt == DType::F8E5M2 && e == 31 {
        return None;
    }
    Some(if e == 0 {
        sign * 2f64.powi(1 - bias) * m / scale
    } else {
        sign * 2f64.powi(e - bias) * (1.0 + m / scale)
    })
}

/// A random weight matrix of `dt`: its bytes, each element's value in f64 decoded here,
/// and each element's block offset magnitude (for the arithmetic bound).
struct Weights {
    dt: DType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
    w: Vec<f64>,
    off: Vec<f64>,
    /// FP8's factor per row (a per-tensor scale repeated).
    row_scale: Vec<f32>,
    per_row: bool,
    /// Q4_0's and Q4_K's rows interleaved as the GGUF loader interleaves them on x86
    /// (`interleave::wanted`): decode and prefill read those then.
    interleaved: Option<Vec<u8>>,
}

impl Weights {
    fn mat(&self) -> MatRef<'_> {
        MatRef {
            dtype: self.dt,
            data: &self.bytes,
            rows: self.rows,
            cols: self.cols,
            scale: match self.dt {
                DType::F8E4M3 | DType::F8E5M2 if self.per_row => WeightScale::Rows(&self.row_scale),
                DType::F8E4M3 | DType::F8E5M2 => WeightScale::Tensor(self.row_scale[0]),
                _ => WeightScale::None,
            },
            interleaved: self.interleaved.as_deref(),
        }
    }
}

/// One random block of a ggml type, and its values and offsets decoded in f64.
fn block(dt: DType, rng: &mut Rng) -> (Vec<u8>, Vec<f64>, Vec<f64>) {
    let (n, size) = dt.block();
    let mut b: Vec<u8> = (0..size).map(|_| rng.byte()).collect();
    let (mut w, mut off) = (vec![0f64; n], vec![0f64; n]);
    match dt {
        DType::Q8_0 => {
            b[..2].copy_from_slice(&h16(rng.f(0.002, 0.01)));
            for j in 0..32 {
                // ggml's quantizer never writes −128.
                if b[2 + j] == 0x80 {
                    b[2 + j] = 0x81;
                }
                w[j] = f16_at(&b, 0) * (b[2 + j] as i8) as f64;
            }
        }
        DType::Q4_0 | DType::Q4_1 => {
            b[..2].copy_from_slice(&h16(rng.f(0.02, 0.15)));
            let d = f16_at(&b, 0);
            let (m, qs) = if dt == DType::Q4_1 {
                b[2..4].copy_from_slice(&h16(rng.f(-1.0, 0.2)));
                (f16_at(&b, 2), 4)
            } else {
                (0.0, 2)
            };
            for j in 0..16 {
                let (lo, hi) = ((b[qs + j] & 0xF) as f64, (b[qs + j] >> 4) as f64);
                if dt == DType::Q4_0 {
                    w[j] = (lo - 8.0) * d;
                    w[j + 16] = (hi - 8.0) * d;
                } else {
                    w[j] = lo * d + m;
                    w[j + 16] = hi * d + m;
                    off[j] = m.abs();
                    off[j + 16] = m.abs();
                }
            }
        }
        DType::Q4_K | DType::Q5_K => {
            // d·sc·q with sc, q ≤ 63, 31 and dmin·m with m ≤ 63: values of a few units.
            b[..2].copy_from_slice(&h16(rng.f(0.0005, 0.002)));
            b[2..4].copy_from_slice(&h16(rng.f(0.0005, 0.003)));
            let (d, dmin) = (f16_at(&b, 0), f16_at(&b, 2));
            let scales = b[4..16].to_vec();
            let (qh, qs) = if dt == DType::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &scales);
                for l in 0..32 {
                    let byte = qs[32 * (j / 2) + l];
                    let mut q = if j % 2 == 0 { byte & 0xF } else { byte >> 4 } as f64;
                    if let Some(qh) = qh {
                        q += (((qh[l] >> j) & 1) as f64) * 16.0;
                    }
                    w[32 * j + l] = d * sc * q - dmin * m;
                    off[32 * j + l] = (dmin * m).abs();
                }
            }
        }
        DType::Q6_K => {
            b[208..210].copy_from_slice(&h16(rng.f(0.0003, 0.001)));
            let d = f16_at(&b, 208);
            let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
            for (e, v) in w.iter_mut().enumerate() {
                let (n, qt, l) = (e / 128, (e % 128) / 32, e % 32);
                let lo = ql[64 * n + 32 * (qt % 2) + l];
                let nib = if qt < 2 { lo & 0xF } else { lo >> 4 };
                let hi = (qh[32 * n + l] >> (2 * qt)) & 3;
                let q = (nib | (hi << 4)) as f64 - 32.0;
                *v = d * (sc[8 * n + 2 * qt + l / 16] as i8) as f64 * q;
            }
        }
        _ => unreachable!("{dt} is not block-quantized"),
    }
    (b, w, off)
}

fn weights(dt: DType, rows: usize, cols: usize, seed: u64) -> Weights {
    let mut rng = Rng::new(seed);
    let n = rows * cols;
    let (mut bytes, mut w, mut off) = (Vec::new(), Vec::with_capacity(n), Vec::new());
    let mut row_scale = vec![1f32; rows];
    let mut per_row = false;
    match dt {
        DType::F32 | DType::F16 | DType::BF16 => {
            for _ in 0..n {
                let v = rng.f(-1.0, 1.0);
                let (b, back): (Vec<u8>, f64) = match dt {
                    DType::F32 => ((v as f32).to_le_bytes().to_vec(), v as f32 as f64),
                    DType::F16 => {
                        let h = f16::from_f64(v);
                        (h.to_bits().to_le_bytes().to_vec(), h.to_f64())
                    }
                    _ => {
                        let h = bf16::from_f64(v);
                        (h.to_bits().to_le_bytes().to_vec(), h.to_f64())
                    }
                };
                bytes.extend(b);
                w.push(back);
            }
            off = vec![0.0; n];
        }
        DType::F8E4M3 | DType::F8E5M2 => {
            per_row = dt == DType::F8E4M3;
            let tensor = rng.f(0.001, 0.01) as f32;
            for s in row_scale.iter_mut() {
                *s = if per_row {
                    rng.f(0.001, 0.01) as f32
                } else {
                    tensor
                };
            }
            for &scale in &row_scale {
                for _ in 0..cols {
                    let (code, v) = loop {
                        let c = rng.byte();
                        if let Some(v) = fp8_value(dt, c) {
                            break (c, v);
                        }
                    };
                    bytes.push(code);
                    w.push(v * scale as f64);
                }
            }
            off = vec![0.0; n];
        }
        _ => {
            let e = dt.block().0;
            assert_eq!(cols % e, 0, "{dt}: {cols} columns");
            for _ in 0..rows * cols / e {
                let (b, bw, bo) = block(dt, &mut rng);
                bytes.extend(b);
                w.extend(bw);
                off.extend(bo);
            }
        }
    }
    assert_eq!(bytes.len(), rows * dt.row_bytes(cols), "{dt}");
    let interleaved =
        interleave::wanted(dt, cols).then(|| interleave::interleave(dt, &bytes, rows, cols));
    Weights {
        dt,
        rows,
        cols,
        bytes,
        w,
        off,
        row_scale,
        per_row,
        interleaved,
    }
}

/// Activations `[n, k]` in [−1, 1), one value per 32-block stretched (so blocks have
/// different scales), one block all zero, and exact halves after scaling (ties).
fn activations(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x: Vec<f32> = (0..n * k).map(|_| rng.f(-1.0, 1.0) as f32).collect();
    for (b, blk) in x.chunks_mut(32).enumerate() {
        if blk.len() < 32 {
            continue;
        }
        match b % 7 {
            3 => blk.fill(0.0),
            5 => {
                // max 127/128, so d = 2^-7 and 1/d = 128 exactly: x·(1/d) = 0.5, −2.5 and
                // 126.5 sit exactly halfway (ggml rounds them away from zero).
                let s = 1.0 / 128.0;
                blk.iter_mut().for_each(|v| *v *= 0.9);
                blk[0] = 127.0 * s;
                blk[1] = 0.5 * s;
                blk[2] = -2.5 * s;
                blk[3] = 126.5 * s;
            }
            _ => blk[(b * 11) % 32] *= rng.f(1.0, 6.0) as f32,
        }
    }
    x
}

/// ggml's `quantize_row_q8_0_ref` (and nemo's documented rule), in f32 as ggml computes
/// it: per block of 32, d = max|x|/127, x̂ = d·round(x·(1/d)); returns (x̂, d) per element.
fn ggml_q8_rounding(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (mut xq, mut ds) = (Vec::with_capacity(x.len()), Vec::with_capacity(x.len()));
    for blk in x.chunks(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for v in blk {
            xq.push(d as f64 * (v * id).round() as f64);
            ds.push(amax as f64 / 127.0);
        }
    }
    (xq, ds)
}

/// The types whose matmuls round activations to 8 bits (integer dot products), decode and
/// prefill alike.
fn rounds_activations(dt: DType) -> bool {
    matches!(
        dt,
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q4_K | DType::Q5_K | DType::Q6_K
    )
}

/// How a path rounds x before it multiplies.
#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    /// f32 x.
    None,
    /// ggml's Q8_0 blocks (the integer-dot types).
    Q8,
    /// bf16, nearest even (BF16 prefill in bf16 products, `bf16_gemm`).
    Bf16,
}

/// x rounded to bf16 (nearest even, by `half`) and d_i = |x_i|·2^-7, so that R's d_i/2 is
/// bf16's unit roundoff (8 significant bits: |x − x̂| ≤ 2^-8·|x|).
fn bf16_rounding(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let xq = x.iter().map(|v| bf16::from_f32(*v).to_f64()).collect();
    let ds = x.iter().map(|v| v.abs() as f64 / 128.0).collect();
    (xq, ds)
}

/// The rounding of a matmul of `dt` over n tokens at this process's settings.
fn rounding_of(dt: DType, n: usize) -> Rounding {
    if rounds_activations(dt) {
        Rounding::Q8
    } else if dt == DType::BF16 && n > 1 && bf16_gemm::enabled() {
        Rounding::Bf16
    } else {
        Rounding::None
    }
}

/// Checks `out` (`[n, rows]`) for `x · Wᵀ` against the references and bounds above.
/// `rounding`: how this call's path rounds x.
fn check(label: &str, w: &Weights, x: &[f32], n: usize, out: &[f32], rounding: Rounding) {
    let k = w.cols;
    let rounded = rounding != Rounding::None;
    for t in 0..n {
        let xt = &x[t * k..(t + 1) * k];
        let (xq, ds) = if rounding == Rounding::Bf16 {
            bf16_rounding(xt)
        } else {
            ggml_q8_rounding(xt)
        };
        for r in 0..w.rows {
            let (wr, or) = (&w.w[r * k..(r + 1) * k], &w.off[r * k..(r + 1) * k]);
            let got = out[t * w.rows + r] as f64;
            let exact: f64 = wr.iter().zip(xt).map(|(a, b)| a * *b as f64).sum();
            let mut arith = 0f64;
            let mut rounding = 0f64;
            for i in 0..k {
                let d = if rounded { ds[i] } else { 0.0 };
                arith += (wr[i].abs() + 2.0 * or[i]) * (xt[i].abs() as f64 + d);
                rounding += wr[i].abs() * d * (0.5 + 256.0 * U);
            }
            let e = (k + 16) as f64 * U * arith;
            let err = (got - exact).abs();
            assert!(
                err <= rounding + e,
                "{label}: out[{t}][{r}] = {got}, Σw·x = {exact}: |Δ| {err:e} > R + E = {:e} + {e:e}",
                rounding
            );
            if rounded {
                let want: f64 = wr.iter().zip(&xq).map(|(a, b)| a * b).sum();
                let err = (got - want).abs();
                assert!(
                    err <= e,
                    "{label}: out[{t}][{r}] = {got}, Σw·x̂ (x rounded as the path does) = {want}: |Δ| {err:e} > E = {e:e}"
                );
            }
        }
    }
}

/// Every type, decode and prefill, ragged shapes; then `matmul_many` as the models call it.
fn check_every_type(level: &str) {
    let types = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];
    for (i, &dt) in types.iter().enumerate() {
        assert_eq!(
            quant::supports_q8_dot(dt),
            rounds_activations(dt),
            "{dt}: which types round activations changed; update this test's bound"
        );
        // K-quants: 1 and 3 super-blocks; 32-blocks: 1 and 9 blocks (an odd count: the
        // VNNI path takes blocks in pairs); element types: SIMD tails too. 100 rows make
        // several decode chunks with a ragged last one.
        let shapes: &[usize] = match dt.block().0 {
            256 => &[256, 768],
            32 => &[32, 288],
            _ => &[33, 288],
        };
        for (s, &k) in shapes.iter().enumerate() {
            let w = weights(dt, 100, k, 1000 + 10 * i as u64 + s as u64);
            // 50 tokens: the AVX2 level's panels (from 48), for the types they take.
            let ns: &[usize] = if dt.block().0 == 1 && !matches!(dt, DType::F8E4M3 | DType::F8E5M2)
            {
                &[1, 2, 5, 50]
            } else {
                &[1, 2, 5]
            };
            for &n in ns {
                let x = activations(n, k, 77 + n as u64 + k as u64);
                let mut out = vec![f32::NAN; n * w.rows];
                matmul(&x, n, w.mat(), &mut out);
                let label = format!("{level}: matmul {dt} n={n} k={k}");
                check(&label, &w, &x, n, &out, rounding_of(dt, n));
            }
        }
    }
    // matmul_many at decode and prefill: q/k/v of a Q4_K_M file (Q4_K, Q4_K, Q6_K), Q4_0
    // with Q8_0, Q4_K with Q5_K, a part without an integer dot (BF16: x stays f32 for it)
    // beside one with, and two BF16 parts (bf16 products round x once for both).
    for (j, group) in [
        &[DType::Q4_K, DType::Q4_K, DType::Q6_K][..],
        &[DType::Q4_0, DType::Q8_0][..],
        &[DType::Q4_K, DType::Q5_K][..],
        &[DType::BF16, DType::Q6_K][..],
        &[DType::BF16, DType::BF16][..],
    ]
    .iter()
    .enumerate()
    {
        let k = 512;
        let ws: Vec<Weights> = group
            .iter()
            .enumerate()
            .map(|(p, &dt)| weights(dt, 24 + 16 * p, k, 5000 + 10 * j as u64 + p as u64))
            .collect();
        for n in [1usize, 3] {
            let x = activations(n, k, 900 + j as u64);
            let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
            {
                let mut parts: Vec<(MatRef<'_>, &mut [f32])> = ws
                    .iter()
                    .zip(outs.iter_mut())
                    .map(|(w, o)| (w.mat(), o.as_mut_slice()))
                    .collect();
                matmul_many(&x, n, &mut parts);
            }
            for (w, out) in ws.iter().zip(&outs) {
                let label = format!("{level}: matmul_many {group:?} n={n} part {}", w.dt);
                check(&label, w, &x, n, out, rounding_of(w.dt, n));
            }
        }
    }
}

/// Why this CPU cannot run `level`, if it cannot.
fn missing(level: &str) -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        match level {
            "avx2" if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) => {
                Some("this CPU has no AVX2 + FMA".into())
            }
            "avx512" if !is_x86_feature_detected!("avx512f") => {
                Some("this CPU has no AVX-512F".into())
            }
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (level != "scalar").then(|| format!("{level} is an x86-64 level; this CPU is not one"))
    }
}

fn expected_level(level: &str) -> simd::Level {
    match level {
        "scalar" => simd::Level::Scalar,
        "avx2" => simd::Level::Avx2,
        _ => simd::Level::Avx512,
    }
}

const CHILD: &str = "NEMO_TEST_MATMUL_LEVEL";

/// Runs the checks at `level`: here when this process is the child started for it,
/// else in a child of this test binary with `NEMO_SIMD=level`.
fn at_level(level: &str) {
    if let Some(why) = missing(level) {
        skip(&why);
        return;
    }
    if std::env::var(CHILD).is_ok_and(|v| v == level) {
        assert_eq!(
            simd::level(),
            expected_level(level),
            "NEMO_SIMD={level} did not select that level"
        );
        let ints = if simd::vnni() {
            "VNNI for Q4_0/Q4_1/Q8_0, AVX2 for the K-quants"
        } else if simd::avx2_f16c() {
            "AVX2"
        } else {
            "plain"
        };
        println!("level {level}: integer dots {ints}");
        // BF16 prefill both ways where the CPU multiplies in bf16: f32 x, then bf16 x.
        bf16_gemm::set_exact(true);
        check_every_type(level);
        if bf16_gemm::available() {
            println!("level {level}: BF16 prefill in bf16 products");
            bf16_gemm::set_exact(false);
            check_every_type(&format!("{level} (bf16 products)"));
        }
        return;
    }
    let (ok, text) = common::rerun_in_child(&[("NEMO_SIMD", level), (CHILD, level)], &[]);
    assert!(ok, "NEMO_SIMD={level}:\n{text}");
    assert!(
        text.contains("1 passed") && text.contains(&format!("level {level}: integer dots")),
        "the child did not run the checks at {level}:\n{text}"
    );
}

#[test]
fn matmul_of_every_weight_type_matches_the_f64_reference_at_the_scalar_level() {
    at_level("scalar");
}

#[test]
fn matmul_of_every_weight_type_matches_the_f64_reference_at_the_avx2_level() {
    at_level("avx2");
}

#[test]
fn matmul_of_every_weight_type_matches_the_f64_reference_at_the_avx512_level() {
    at_level("avx512");
}
