//! `out = x · Wᵀ` with W stored row-major `[rows, cols]` in its own dtype (a PyTorch
//! `nn.Linear` weight), x `[n, cols]` f32, out `[n, rows]` f32.
//!
//! Decode (n == 1, bf16 or f16) reads each weight byte once and widens it in registers. Prefill
//! widens a block of weight rows into an f32 tile once and runs the 4×4 micro-kernel over
//! all tokens, so the weights are read from memory once per call whatever n is; at the AVX2
//! level, from `panel::MIN_TOKENS` tokens, into 16-row panels for `panel`'s broadcast
//! kernel instead; at the AVX-512 level F16 and BF16 rows are read in place by a 4 × 6
//! kernel that widens them in registers (`matrix::half_rows_times_x`, the tile's sums).
//! Block-quantized weights (GGUF) decode through `quant::dot_row`, one stored row at a time;
//! prefill dequantizes a block of rows into the same f32 tile.
//! FP8 weights (with their `weight_scale`) go to `fp8_matmul`; BF16 prefill goes to
//! `bf16_gemm` (bf16 products) where the CPU has them, unless `NEMO_MATMUL=exact`.
//! Prefill splits work by blocks of rows and decode (n == 1) by chunks of rows, both on the
//! spinning thread team (`team::par_for`: rayon's sleeping workers took a wake-up per
//! matmul, and the team's worker, spinning between its calls, competed with them for the
//! cores: a 16-token F16 prefill at AVX2 74 → 59 ms), and `matmul_many` runs several
//! matrices that share x (q/k/v, gate/up) as one loop with x quantized once. Each task
//! writes only its rows.

use crate::backend::dtype::{widen_into, DType};

#[cfg(target_arch = "x86_64")]
use super::matrix::half_rows_times_x;
use super::matrix::{block_rows, tile_times_x, with_tile, MatRef, OutPtr};
use super::{bf16_gemm, fp8_matmul};
use super::{interleave, panel, qgemm, quant, simd};

fn check(x: &[f32], n: usize, w: &MatRef<'_>, out: &[f32]) {
    let (m, k) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        n * k,
        "matmul: x has {} values, want {n}×{k}",
        x.len()
    );
    assert_eq!(
        out.len(),
        n * m,
        "matmul: out has {} values, want {n}×{m}",
        out.len()
    );
    assert_eq!(w.data.len(), m * w.row_bytes(), "matmul: weight bytes");
}

pub fn matmul(x: &[f32], n: usize, w: MatRef<'_>, out: &mut [f32]) {
    check(x, n, &w, out);
    if fp8_matmul::is_fp8(w.dtype) {
        return fp8_matmul::matmul_fp8(x, n, w, out);
    }
    if n == 0 || w.rows == 0 {
        return;
    }
    if n == 1 {
        return gemv_many(x, &[(w, OutPtr(out.as_mut_ptr()))]);
    }
    if qgemm::supports(w.dtype, w.cols) {
        return qgemm::matmul_many(x, n, &[(w, OutPtr(out.as_mut_ptr()))]);
    }
    if w.dtype == DType::BF16 && bf16_gemm::enabled() {
        return bf16_gemm::matmul(x, n, w, out);
    }
    let m = w.rows;
    let mut br = block_rows(m, w.row_bytes());
    if panel::wanted(n) {
        // Whole panels per task: a part-filled one multiplies its zero rows too.
        br = br.div_ceil(panel::W) * panel::W;
    }
    let nblocks = m.div_ceil(br);
    let outp = OutPtr(out.as_mut_ptr());
    let run = |b: usize| {
        let r0 = b * br;
        let r1 = (r0 + br).min(m);
        tile_block(x, n, w, r0, r1, outp);
    };
    super::team::par_for(nblocks, &run);
}

/// Several matmuls of the same `x` (q, k and v; gate and up): `parts[i].1 = x · parts[i].0ᵀ`.
/// Decode (n == 1) quantizes x once for all of them and runs them as one parallel loop.
pub fn matmul_many(x: &[f32], n: usize, parts: &mut [(MatRef<'_>, &mut [f32])]) {
    for (w, out) in parts.iter() {
        check(x, n, w, out);
    }
    // Quantized prefill: x quantized once for all parts.
    if n > 1
        && parts
            .iter()
            .all(|(w, _)| qgemm::supports(w.dtype, w.cols) && w.rows > 0)
    {
        let ps: Vec<(MatRef<'_>, OutPtr)> = parts
            .iter_mut()
            .map(|(w, out)| (*w, OutPtr(out.as_mut_ptr())))
            .collect();
        return qgemm::matmul_many(x, n, &ps);
    }
    // BF16 prefill in bf16 products: x rounded once for all parts.
    if n > 1 && bf16_gemm::enabled() && parts.iter().all(|(w, _)| w.dtype == DType::BF16) {
        return bf16_gemm::matmul_many(x, n, parts);
    }
    // FP8 weights have their own kernels (fp8_matmul): run each part on its own.
    if n != 1 || parts.iter().any(|(w, _)| fp8_matmul::is_fp8(w.dtype)) {
        for (w, out) in parts.iter_mut() {
            matmul(x, n, *w, out);
        }
        return;
    }
    let ps: Vec<(MatRef<'_>, OutPtr)> = parts
        .iter_mut()
        .filter(|(w, _)| w.rows > 0)
        .map(|(w, out)| (*w, OutPtr(out.as_mut_ptr())))
        .collect();
    gemv_many(x, &ps);
}

/// Rows per decode chunk on the team: claiming a chunk costs one atomic add, so chunks are
/// small (16 KiB of weights, at least 8 per thread) for balance.
fn gemv_chunk_rows(rows: usize, row_bytes: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let b = rows
        .div_ceil(threads * 8)
        .max((16 << 10) / row_bytes.max(1));
    b.clamp(4, 256).div_ceil(4) * 4
}

thread_local! {
    static ACTS: std::cell::RefCell<quant::QuantizedActs> =
        std::cell::RefCell::new(quant::QuantizedActs::default());
}

/// n == 1 over one or more matrices sharing x (checked by the callers), on the team.
fn gemv_many(x: &[f32], parts: &[(MatRef<'_>, OutPtr)]) {
    let k = x.len();
    // x is quantized once if any part multiplies in integers; each such part does.
    let q8 = |dtype: DType| k.is_multiple_of(32) && quant::supports_q8_dot(dtype);
    ACTS.with(|acts| {
        let mut acts = acts.borrow_mut();
        if parts.iter().any(|(w, _)| q8(w.dtype)) {
            quant::quantize_acts_into(x, &mut acts);
        }
        let acts = &*acts;
        // Chunk i of the loop is chunk i - starts[p] of part p.
        let mut starts = Vec::with_capacity(parts.len() + 1);
        let mut total = 0;
        // Interleaved rows (whole groups per chunk) where this level has their kernel.
        let grouped =
            |w: &MatRef<'_>| w.interleaved.is_some() && q8(w.dtype) && interleave::usable();
        let chunk = |w: &MatRef<'_>| {
            let br = gemv_chunk_rows(w.rows, w.row_bytes());
            if grouped(w) {
                br.next_multiple_of(interleave::ROWS)
            } else {
                br
            }
        };
        for (w, _) in parts {
            starts.push(total);
            total += w.rows.div_ceil(chunk(w));
        }
        starts.push(total);
        let run = |i: usize| {
            let p = starts.partition_point(|&s| s <= i) - 1;
            let (w, o) = (&parts[p].0, parts[p].1);
            let br = chunk(w);
            let r0 = (i - starts[p]) * br;
            let r1 = (r0 + br).min(w.rows);
            if let Some(groups) = w.interleaved.filter(|_| grouped(w)) {
                let each = interleave::group_bytes(w.dtype, w.cols);
                let (g0, g1) = (r0 / interleave::ROWS, r1.div_ceil(interleave::ROWS));
                // SAFETY: rows r0..r1 < rows belong to this chunk only; n == 1.
                let out = unsafe { std::slice::from_raw_parts_mut(o.0.add(r0), r1 - r0) };
                let groups = &groups[g0 * each..g1 * each];
                interleave::gemv(w.dtype, groups, w.cols, &acts.view(), out);
            } else if w.dtype == DType::BF16 {
                gemv_rows4_block(x, *w, r0, r1, o, simd::dot_bf16_rows4);
            } else if w.dtype == DType::F16 {
                gemv_rows4_block(x, *w, r0, r1, o, simd::dot_f16_rows4);
            } else if q8(w.dtype) {
                let rb = w.row_bytes();
                // SAFETY: rows r0..r1 < rows belong to this chunk only; n == 1.
                let out = unsafe { std::slice::from_raw_parts_mut(o.0.add(r0), r1 - r0) };
                quant::dot_rows_q8(w.dtype, &w.data[r0 * rb..r1 * rb], &acts.view(), out);
            } else if w.dtype.is_quantized() {
                for r in r0..r1 {
                    // SAFETY: row r < rows belongs to this chunk only; n == 1.
                    unsafe { *o.0.add(r) = quant::dot_row(w.dtype, w.row(r), x) };
                }
            } else {
                tile_block(x, 1, *w, r0, r1, o);
            }
        };
        super::team::par_for(total, &run);
    });
}

/// Rows `r0..r1` four at a time through `dot4` (the bf16 or f16 decode kernel).
fn gemv_rows4_block(
    x: &[f32],
    w: MatRef<'_>,
    r0: usize,
    r1: usize,
    o: OutPtr,
    dot4: fn([&[u8]; 4], &[f32]) -> [f32; 4],
) {
    let mut r = r0;
    while r < r1 {
        // Pad the last group of rows by repeating the last row; extra results are dropped.
        let idx = [
            r,
            (r + 1).min(r1 - 1),
            (r + 2).min(r1 - 1),
            (r + 3).min(r1 - 1),
        ];
        let d = dot4(
            [w.row(idx[0]), w.row(idx[1]), w.row(idx[2]), w.row(idx[3])],
            x,
        );
        for (i, di) in d.iter().enumerate().take(4.min(r1 - r)) {
            // SAFETY: row r+i < m belongs to this task only; n == 1 so the index is r+i.
            unsafe { *o.0.add(r + i) = *di };
        }
        r += 4;
    }
}

/// Whether F16 and BF16 prefill reads the rows where they are stored
/// (`half_rows_times_x`): at the AVX-512 level with F16C. Widening each block to an f32
/// tile first read the weights from memory in a pass of its own; read in place, the
/// products overlap the reads: Nemotron-H F16 prefill of 200 tokens 435 → 469 tok/s,
/// 30-token TTFT 88 → 82 ms (alternated, 5 rounds, Zen 4). At AVX2 the same in-place
/// reading measured no gain (its kernel's conversions take FMA slots; the panels and the
/// tile stay there).
#[cfg(target_arch = "x86_64")]
fn half_in_place() -> bool {
    simd::level() == simd::Level::Avx512 && simd::avx2_f16c()
}

fn tile_block(x: &[f32], n: usize, w: MatRef<'_>, r0: usize, r1: usize, o: OutPtr) {
    let rb = w.row_bytes();
    if panel::wanted(n) {
        let (k, nr) = (w.cols, r1 - r0);
        let len = panel::panels_len(nr, k);
        return with_tile(len + 8 * k, |buf| {
            let (panels, scratch) = buf.split_at_mut(len);
            panel::widen_panels(w.dtype, &w.data[r0 * rb..r1 * rb], nr, k, panels, scratch);
            // SAFETY: rows r0..r1 of the `[n, rows]` output belong to this task; the panel
            // kernels' features are there (`usable`).
            unsafe { panel::panels_times_x(panels, nr, x, n, w.rows, r0, o.0) };
        });
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(w.dtype, DType::F16 | DType::BF16) && half_in_place() {
        let rows = &w.data[r0 * rb..r1 * rb];
        // SAFETY: the features checked (`half_in_place`); rows r0..r1 of the `[n, rows]`
        // output belong to this task.
        return unsafe {
            if w.dtype == DType::BF16 {
                half_rows_times_x::<true>(rows, x, n, w.rows, r0, o.0)
            } else {
                half_rows_times_x::<false>(rows, x, n, w.rows, r0, o.0)
            }
        };
    }
    with_tile((r1 - r0) * w.cols, |tile| {
        widen_into(w.dtype, &w.data[r0 * rb..r1 * rb], tile);
        // SAFETY: rows r0..r1 of the `[n, rows]` output belong to this task.
        unsafe { tile_times_x(tile, x, n, w.rows, r0, o.0) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::WeightScale;
    use crate::backend::dtype::narrow_into;

    fn naive(x: &[f32], n: usize, w: &[f32], m: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * m];
        for t in 0..n {
            for r in 0..m {
                out[t * m + r] = (0..k)
                    .map(|i| x[t * k + i] as f64 * w[r * k + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn quantized_matmul_matches_dequantized_naive_for_decode_and_prefill() {
        let (m, k) = (45, 64);
        let wf: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729) % 89) as f32 / 44.0 - 1.0)
            .collect();
        for dt in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let mut bytes = vec![0u8; m * dt.row_bytes(k)];
            for (src, dst) in wf.chunks(k).zip(bytes.chunks_mut(dt.row_bytes(k))) {
                narrow_into(dt, src, dst);
            }
            let mut wide = vec![0f32; m * k];
            for (src, dst) in bytes.chunks(dt.row_bytes(k)).zip(wide.chunks_mut(k)) {
                widen_into(dt, src, dst);
            }
            for n in [1, 5] {
                let x: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0)
                    .collect();
                let want = naive(&x, n, &wide, m, k);
                let mut out = vec![0f32; n * m];
                let w = MatRef {
                    dtype: dt,
                    data: &bytes,
                    rows: m,
                    cols: k,
                    scale: WeightScale::None,
                    interleaved: None,
                };
                matmul(&x, n, w, &mut out);
                // Decode and prefill quantize x to 8 bits (ggml's Q8 activations), an error
                // relative to the row's scale, not its (possibly cancelling) sum.
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-2 * scale, "{dt} n={n}: {a} vs {b}");
                }
                // With the interleaved copy the loader makes for Q4_0 (Q4_1, Q4_K) on x86: the
                // same integer dots, summed in another order.
                if interleave::wanted(dt, k) {
                    let groups = interleave::interleave(dt, &bytes, m, k);
                    let wi = MatRef {
                        interleaved: Some(&groups),
                        ..w
                    };
                    let mut got = vec![f32::NAN; n * m];
                    matmul(&x, n, wi, &mut got);
                    for (i, (a, b)) in got.iter().zip(&out).enumerate() {
                        let (t, r) = (i / m, i % m);
                        let mag: f32 = (0..k).map(|j| (wide[r * k + j] * x[t * k + j]).abs()).sum();
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + mag),
                            "interleaved {dt} n={n} row {r}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_matches_naive_for_every_dtype_and_ragged_shapes() {
        for &(n, m, k) in &[
            (1, 1, 1),
            (1, 37, 19),
            (3, 5, 33),
            (7, 70, 48),
            (1, 300, 64),
            (9, 130, 17),
            // k = 4099: 12 tokens per pass of the prefill tile (`token_pass`), so 37 tokens
            // take four passes, the last a ragged one.
            (37, 6, 4099),
            // 60 tokens: the AVX2 level's panels (`panel::MIN_TOKENS`), rows not a multiple
            // of 16, k not of 8.
            (60, 21, 1029),
        ] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0)
                .collect();
            let wf: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729) % 89) as f32 / 44.0 - 1.0)
                .collect();
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let (bytes, wide) = crate::backend::cpu::test_stored(dt, &wf, m, k);
                // BF16 prefill multiplies x rounded to bf16 where `bf16_gemm` runs (its own
                // tests check it against a plain loop); the naive sum takes the same x.
                let xr: Vec<f32> = if dt == DType::BF16 && n > 1 && bf16_gemm::enabled() {
                    x.iter()
                        .map(|v| half::bf16::from_f32(*v).to_f32())
                        .collect()
                } else {
                    x.clone()
                };
                let want = naive(&xr, n, &wide, m, k);
                let mut out = vec![0f32; n * m];
                matmul(
                    &x,
                    n,
                    MatRef {
                        dtype: dt,
                        data: &bytes,
                        rows: m,
                        cols: k,
                        scale: WeightScale::None,
                        interleaved: None,
                    },
                    &mut out,
                );
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{dt} n={n} m={m} k={k}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
