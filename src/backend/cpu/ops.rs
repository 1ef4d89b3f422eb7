//! Element-wise and normalisation ops of the Nemotron-H forward pass, in f32.
//! Formulas follow transformers' `modeling_nemotron_h.py` (cited per function).
//! Row-wise ops of more than a few rows run on the thread team (`team::par_rows`).

use super::{simd, team};

/// Values per team task of a row-wise norm (about a microsecond of work each).
const NORM_GRAIN: usize = 8192;

/// RMSNorm (`NemotronHRMSNorm`): `w * x / sqrt(mean(x²) + eps)`, in f32, per row of `dim`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    assert_eq!(x.len(), out.len(), "rms_norm: x and out lengths");
    team::par_rows(out, dim, NORM_GRAIN, &|r, or| {
        let xr = &x[r * dim..(r + 1) * dim];
        let ms = sum_squares(xr) / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    });
}

/// `Σ v²` in eight interleaved partial sums (lane `i mod 8`), added pairwise at the end: the
/// same order at every SIMD level, and one the compiler vectorises (a single running sum
/// waited on the add's latency for every value).
#[inline(always)]
fn sum_squares(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * x;
        }
    }
    for (a, x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x * x;
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
}

/// Gated RMSNorm (`NemotronHRMSNormGated`, norm_before_gate=False):
/// `y ← y · silu(z)`, then RMS-normalise each group of `group_size` channels, times weight.
pub fn gated_rms_norm(y: &mut [f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32) {
    assert_eq!(y.len(), z.len(), "gated_rms_norm: y and z lengths");
    gated_rms_norm_strided(y, z, weight.len(), weight, group_size, eps);
}

/// `gated_rms_norm` with row r of z at `z[r·z_stride..]` (z read in place from the Mamba2
/// in_proj output, whose rows hold z first).
pub fn gated_rms_norm_strided(
    y: &mut [f32],
    z: &[f32],
    z_stride: usize,
    weight: &[f32],
    group_size: usize,
    eps: f32,
) {
    let dim = weight.len();
    let rows = y.len() / dim.max(1);
    assert!(
        rows == 0 || z.len() >= (rows - 1) * z_stride + dim,
        "gated_rms_norm: z holds {} values, want {rows} rows {z_stride} apart",
        z.len()
    );
    let level = simd::level();
    team::par_rows(y, dim, NORM_GRAIN, &|r, yr| {
        let zr = &z[r * z_stride..r * z_stride + dim];
        #[cfg(target_arch = "x86_64")]
        match level {
            // SAFETY: the features were detected at run time.
            simd::Level::Avx512 => {
                return unsafe { gated_row_avx512(yr, zr, weight, group_size, eps) }
            }
            // SAFETY: as above.
            simd::Level::Avx2 => return unsafe { gated_row_avx2(yr, zr, weight, group_size, eps) },
            simd::Level::Scalar | simd::Level::Neon => {}
        }
        let _ = level;
        gated_row(yr, zr, weight, group_size, eps)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_row_avx2(y: &mut [f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32) {
    gated_row(y, z, weight, group_size, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gated_row_avx512(y: &mut [f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32) {
    gated_row(y, z, weight, group_size, eps)
}

/// One row of `gated_rms_norm_strided`, inlined into each level's copy (the same operations
/// in the same order at every level; FMA is never contracted).
#[inline(always)]
fn gated_row(y: &mut [f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32) {
    for (v, g) in y.iter_mut().zip(z) {
        *v *= silu(*g);
    }
    for (grp, wg) in y
        .chunks_exact_mut(group_size)
        .zip(weight.chunks_exact(group_size))
    {
        let ms = sum_squares(grp) / group_size as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, w) in grp.iter_mut().zip(wg) {
            *v = w * (*v * inv);
        }
    }
}

/// e^x for f32, vectorisable (no table, no branch the compiler cannot turn into a
/// select): Cephes' `expf` (range reduction x = n·ln 2 + r with ln 2 in two parts, a
/// degree-6 polynomial on r, 2^n put into the exponent bits). Within 2 ulp of the exact
/// value for x in [−87, 88]; 0 below (f32's normal range ends there), so exp(−∞) = 0;
/// +∞ above (early by 0.7: e^88 is 2^127 and the softmax callers only pass x ≤ 0).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2^23 trick (|xc·log2 e| < 2^22): t's low mantissa bits
    // hold n, so the integer comes from t's bits (`n as i32`, a saturating cast, kept every
    // loop that calls this scalar: no compiler vectorises it).
    let t = xc * LOG2E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let ni = t.to_bits() as i32 - 12_582_912f32.to_bits() as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = (p * r2 + r) + 1.0;
    let scaled = y * f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        scaled
    }
}

/// SiLU, `x·sigmoid(x)`, with the vectorisable `exp` (libm's `expf` kept the gated norm's
/// and the MLPs' loops scalar).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// softplus as torch computes it (threshold 20: linear above).
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// relu² (`mlp_hidden_act = "relu2"`).
pub fn relu2_inplace(x: &mut [f32]) {
    for v in x {
        let r = v.max(0.0);
        *v = r * r;
    }
}

/// Numerically stable softmax in place.
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_gives_unit_rms_times_weight() {
        let x = [1.0, -2.0, 3.0, -4.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[2.0; 4], 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 2.0).abs() < 1e-5);
        assert!(out[0] > 0.0 && out[1] < 0.0);
    }

    #[test]
    fn gated_norm_normalises_each_group_separately() {
        let mut y = [1.0, 1.0, 10.0, 10.0];
        let z = [30.0; 4]; // silu(30) ≈ 30
        gated_rms_norm(&mut y, &z, &[1.0; 4], 2, 0.0);
        for v in y {
            assert!((v - 1.0).abs() < 1e-4, "{v}");
        }
    }

    #[test]
    fn gated_norm_reads_z_rows_in_place_at_their_stride() {
        // 300 rows: enough for several team tasks. z's rows sit 7 values apart inside a
        // wider buffer (the in_proj output), with junk between them.
        let (rows, dim, stride) = (300, 4, 7);
        let y: Vec<f32> = (0..rows * dim).map(|i| (i % 13) as f32 - 6.0).collect();
        let z: Vec<f32> = (0..rows * dim)
            .map(|i| (i % 5) as f32 * 0.7 - 1.0)
            .collect();
        let mut wide = vec![f32::NAN; rows * stride];
        for r in 0..rows {
            wide[r * stride..r * stride + dim].copy_from_slice(&z[r * dim..(r + 1) * dim]);
        }
        let w = [0.5, 1.0, 1.5, 2.0];
        let mut want = y.clone();
        for r in 0..rows {
            gated_rms_norm(
                &mut want[r * dim..(r + 1) * dim],
                &z[r * dim..(r + 1) * dim],
                &w,
                2,
                1e-5,
            );
        }
        let mut got = y;
        gated_rms_norm_strided(&mut got, &wide, stride, &w, 2, 1e-5);
        assert_eq!(got, want);
    }

    /// The gated row at every SIMD level this CPU has gives the plain loop's values bit for
    /// bit, and both are within f32 rounding of an f64 evaluation of the formula (with
    /// libm's exp), at a model's group size and a ragged one.
    #[test]
    fn the_gated_row_is_the_same_at_every_simd_level_and_near_f64() {
        for (dim, group) in [(2048usize, 256usize), (45, 15)] {
            let y: Vec<f32> = (0..dim)
                .map(|i| ((i * 37) % 101) as f32 / 13.0 - 3.8)
                .collect();
            let z: Vec<f32> = (0..dim)
                .map(|i| ((i * 53) % 89) as f32 / 7.0 - 6.1)
                .collect();
            let w: Vec<f32> = (0..dim).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
            let mut plain = y.clone();
            gated_row(&mut plain, &z, &w, group, 1e-5);
            for (gi, (got, wg)) in plain.chunks(group).zip(w.chunks(group)).enumerate() {
                let gated: Vec<f64> = (0..group)
                    .map(|j| {
                        let (yv, zv) = (y[gi * group + j] as f64, z[gi * group + j] as f64);
                        yv * zv / (1.0 + (-zv).exp())
                    })
                    .collect();
                let ms = gated.iter().map(|v| v * v).sum::<f64>() / group as f64;
                let inv = 1.0 / (ms + 1e-5).sqrt();
                for j in 0..group {
                    let want = wg[j] as f64 * gated[j] * inv;
                    let d = (got[j] as f64 - want).abs();
                    assert!(
                        d <= 1e-5 * want.abs().max(1.0),
                        "{dim}/{group} [{gi}][{j}]: {} vs {want}",
                        got[j]
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                if simd::level() != simd::Level::Scalar {
                    let mut v = y.clone();
                    // SAFETY: avx2 and fma are there at these levels.
                    unsafe { gated_row_avx2(&mut v, &z, &w, group, 1e-5) };
                    assert_eq!(v, plain, "avx2, {dim}/{group}");
                }
                if simd::level() == simd::Level::Avx512 {
                    let mut v = y.clone();
                    // SAFETY: avx512f is there at this level.
                    unsafe { gated_row_avx512(&mut v, &z, &w, group, 1e-5) };
                    assert_eq!(v, plain, "avx512, {dim}/{group}");
                }
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn softplus_matches_definition_and_threshold() {
        assert!((softplus(0.0) - 2f32.ln()).abs() < 1e-6);
        assert_eq!(softplus(25.0), 25.0);
        assert!((softplus(-5.0) - (1.0 + (-5f32).exp()).ln()).abs() < 1e-7);
    }
}
