//! The tensor-core prompt kernels against CPU references: the Mamba2 chunked scan
//! (kernels/ssm.cu `ssd_scan_mma_*`) against its CPU op (`backend::cpu::ssm::ssd_chunked`,
//! which equals the recurrence up to f32 rounding), and flash prefill attention
//! (kernels/flash_attention.cu) against softmax attention written out in f64.
//!
//! Built with `--features cuda`; without a usable GPU each test prints `SKIP` and returns,
//! and with `NEMO_REQUIRE_GPU=1` a missing GPU fails instead (as tests/cuda_ops.rs).
//!
//! The scan feeds tf32 to the MMA (u = 2^-11: 11 significant bits, cvt.rna rounds to
//! nearest), attention bf16 (u = 2^-8), both accumulating in f32, so their error against
//! an f32 reference is not "a few f32 ulps": every bound below is derived from u, the
//! number of roundings a term goes through, and the f32 accumulation lengths, applied to
//! the sum of the absolute values of the terms (computed by the reference alongside the
//! value). Tensor cores add in f32 with truncation rather than rounding (Fasi, Higham,
//! Mikaitis, Pranesh 2021, "Numerical behavior of NVIDIA tensor cores"), so each of their
//! additions counts 2^-23 (two f32 unit roundoffs 2^-24). Nothing here is a tolerance
//! picked to pass.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::gpu::{gpu, rounded, run_scan, scan_case, seed, up, Rng, ScanCase};
    use half::bf16;
    use nemo::backend::cpu::ssm;
    use nemo::backend::cuda::attention::{DevicePosition, GpuKvCache};
    use nemo::backend::cuda::flash::{self, KvView, Queries};
    use nemo::backend::cuda::{ssm::ScanShape, Gpu};
    use nemo::backend::DType;

    /// bf16 unit roundoff (round to nearest, 8 significant bits).
    const U_BF16: f64 = 1.0 / 256.0;
    /// tf32 unit roundoff (11 significant bits).
    const U_TF32: f64 = 1.0 / 2048.0;
    /// f16 unit roundoff (11 significant bits).
    const U_F16: f64 = 1.0 / 2048.0;
    /// f32 unit roundoff.
    const U_F32: f64 = 1.0 / 16_777_216.0;

    fn bf16r(x: f32) -> f32 {
        bf16::from_f32(x).to_f32()
    }

    /// |got − want| ≤ bound element by element; the worst element (by |Δ| / bound) named.
    fn assert_within(what: &str, got: &[f32], want: &[f64], bound: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let (mut worst, mut at) = (0f64, 0);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let r = (*g as f64 - w).abs() / bound[i];
            if r > worst || r.is_nan() {
                worst = r;
                at = i;
            }
        }
        assert!(
            worst <= 1.0,
            "{what}: at {at} got {} want {} |Δ| = {:e} > bound {:e}",
            got[at],
            want[at],
            (got[at] as f64 - want[at]).abs(),
            bound[at]
        );
    }

    // ---- chunked scan ------------------------------------------------------------------

    /// The CPU op the kernel is tested against (`backend::cpu::ssm::ssd_chunked`, chunks of
    /// `chunk`, state from `state0` in f32), run twice: on the case, and on its absolute
    /// values (|x|, |B|, |C|, |D|, |S₀|; dt and the decays are positive), which gives Σ over
    /// the terms of each output of |term|. Returns (y, |y|-terms, S, |S|-terms) in f64.
    fn scan_ref(
        c: &ScanCase,
        n: usize,
        chunk: usize,
        dt_stride: usize,
        dt_min: f32,
        state0: &[f32],
    ) -> [Vec<f64>; 4] {
        let run = |xbc: &[f32], d: &[f32], state: &[f32]| {
            let mut st = state.to_vec();
            let mut y = vec![0f32; n * c.sh.heads * c.sh.head_dim];
            ssm::ssd_chunked(
                &c.sh, n, chunk, xbc, &c.dt_raw, 0, dt_stride, &c.dt_bias, &c.a, d, dt_min,
                &mut st, &mut y,
            );
            let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
            (wide(y), wide(st))
        };
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        let (y, st) = run(&c.xbc, &c.d, state0);
        let (ya, sa) = run(&abs(&c.xbc), &abs(&c.d), &abs(state0));
        [y, ya, st, sa]
    }

    /// Rounding to the state dtype: (unit roundoff, absolute floor). f16 values below its
    /// smallest normal (2^-14) are subnormals spaced 2^-24 apart, so they round by up to
    /// 2^-25 whatever their size; bf16 and f32 subnormals are far below these states.
    fn state_rounding(dtype: DType) -> (f64, f64) {
        match dtype {
            DType::F16 => (U_F16, 1.0 / 33_554_432.0),
            DType::BF16 => (U_BF16, 0.0),
            _ => (0.0, 0.0),
        }
    }

    #[test]
    fn tensor_core_scan_matches_the_recurrence_within_the_tf32_error_model() {
        let Some(g) = gpu("ssd_scan_mma") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        let sh = |heads, head_dim, d_state, n_groups| ScanShape {
            heads,
            head_dim,
            d_state,
            n_groups,
        };
        let all_n = vec![1, 5, 127, 128, 129, 300, 1000];
        let cases = [
            (sh(16, 64, 128, 8), 128, all_n.clone()),
            (sh(8, 80, 128, 4), 256, all_n),
            (sh(4, 50, 256, 1), 256, vec![17, 300]),
            (sh(6, 16, 40, 3), 128, vec![33]),
            // The shapes of tests/cuda_ops.rs's scan test (d_state 16 and 256, chunks 16/256).
            (sh(8, 16, 16, 2), 16, vec![1, 7, 16, 37]),
            (sh(4, 24, 256, 1), 256, vec![257]),
        ];
        for (shape, chunk, ns) in cases {
            for n in ns {
                for dtype in [DType::F32, DType::F16, DType::BF16] {
                    let signs: &[bool] = if dtype == DType::F32 {
                        &[false, true]
                    } else {
                        &[false]
                    };
                    for &positive in signs {
                        let dt_stride = shape.heads + 3;
                        let c = scan_case(&mut r, shape, n, dt_stride, positive);
                        let start = rounded(dtype, &c.state);
                        let [y, ya, st, sa] = scan_ref(&c, n, chunk, dt_stride, 1e-3, &start);
                        let (gy, gst) = run_scan(&g, &c, n, dt_stride, Some(chunk), 1e-3, dtype);
                        // Error model. Each term of y is a product of f32 values; on its
                        // way to y the kernel rounds it to tf32 at most 4 times: C, B,
                        // M = (C·B)·decay·dt and x for a term of the same chunk; W =
                        // decay·dt·x, B, the f32 state rounded for C·S, and C for a term
                        // carried over from an earlier chunk; the state and C for the
                        // incoming state's own term. Hence, with u the tf32 unit roundoff,
                        //   |Δy| ≤ ((1+u)^4 (1+γ) − 1) · Σ|terms|   (Σ|terms| = ya),
                        // γ bounding the f32 work: MMA chains of ≤ d_state + 2·32 products
                        // (2^-23 each), two f32 roundings of the state per chunk (≤ 2n),
                        // decays exp(Σ a·dt) whose dt differ from the CPU's softplus by ≤ 4
                        // ulps (≤ 6·X ulps for a span of X ≤ 88 before f32 underflows, so
                        // ≤ 512), the D·x product. γ = (2·d_state + 4·n + 512)·2^-24.
                        // The reference is the CPU op in f32, itself off the exact values by
                        // at most the same kind of f32 work over its own chunks (dots of
                        // d_state, decay sums over ≤ chunk terms, the state rounded once per
                        // token it passes): γ_ref = (2·d_state + 2·chunk + 4·n + 512)·2^-24
                        // of Σ|terms|, added to the kernel's bound (and Σ|terms|, computed
                        // the same way, is taken (1 + γ_ref) larger). Measured against the
                        // recurrence in f64 on these cases, the op is within 12·2^-24 of
                        // Σ|terms|, under 2% of γ_ref.
                        let gamma = (2 * shape.d_state + 4 * n + 512) as f64 * U_F32;
                        let g_ref = (2 * shape.d_state + 2 * chunk + 4 * n + 512) as f64 * U_F32;
                        let fy = (1.0 + U_TF32).powi(4) * (1.0 + gamma) - 1.0 + g_ref;
                        let by: Vec<f64> =
                            ya.iter().map(|v| fy * (1.0 + g_ref) * v + 1e-30).collect();
                        let what = format!(
                            "seed {s} {shape:?} chunk {chunk} n {n} state {dtype} positive {positive}"
                        );
                        assert_within(&what, &gy, &y, &by);
                        // The state's terms pass 2 roundings (W, B); then it is stored in its
                        // dtype once (unit u_T, plus f16's subnormal floor).
                        let fs = (1.0 + U_TF32).powi(2) * (1.0 + gamma) - 1.0 + g_ref;
                        let (ut, floor) = state_rounding(dtype);
                        let bs: Vec<f64> = st
                            .iter()
                            .zip(&sa)
                            .map(|(v, a)| {
                                ut * v.abs() + (1.0 + ut) * fs * (1.0 + g_ref) * a + floor + 1e-30
                            })
                            .collect();
                        assert_within(&format!("{what} state"), &gst, &st, &bs);
                    }
                }
            }
        }
    }

    // ---- flash prefill attention ---------------------------------------------------------

    const KV_DTYPES: [DType; 5] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    /// Widened cache rows `[positions, kvh, hd]`, and the same rows as the kernel feeds the
    /// MMA (f32 and f16 values rounded to bf16; bf16 values and FP8 codes are exact in bf16,
    /// the FP8 scale is applied outside the MMA, so those rows are the widened values).
    fn widen_kv(dtype: DType, bytes: &[u8], scales: &[f32], hd: usize) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0f32; bytes.len() / dtype.size()];
        nemo::backend::dtype::widen_into(dtype, bytes, &mut out);
        let mut mma = out.clone();
        match dtype {
            DType::F8E4M3 | DType::F8E5M2 => {
                for (row, sc) in out.chunks_exact_mut(hd).zip(scales) {
                    row.iter_mut().for_each(|v| *v *= sc);
                }
                for (row, sc) in mma.chunks_exact_mut(hd).zip(scales) {
                    row.iter_mut().for_each(|v| *v *= sc);
                }
            }
            DType::F32 | DType::F16 => mma.iter_mut().for_each(|v| *v = bf16r(*v)),
            _ => {}
        }
        (out, mma)
    }

    /// Softmax attention of query `q` (`[hd]`) over rows `k`, `v` (`[visible, hd]`), in f64.
    /// Returns (output, Σ_t p_t·|v_t| per d, the largest Σ_d |q_d·k_td|·scale over t).
    fn attend(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        hd: usize,
        visible: usize,
    ) -> (Vec<f64>, Vec<f64>, f64) {
        let scale = (hd as f64).powf(-0.5);
        let mut scores = vec![0f64; visible];
        let mut qk_abs = 0f64;
        for (t, sc) in scores.iter_mut().enumerate() {
            let kr = &k[t * hd..(t + 1) * hd];
            let (mut s, mut sa) = (0f64, 0f64);
            for d in 0..hd {
                s += q[d] as f64 * kr[d] as f64;
                sa += (q[d] as f64 * kr[d] as f64).abs();
            }
            *sc = s * scale;
            qk_abs = qk_abs.max(sa * scale);
        }
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = w.iter().sum();
        let (mut o, mut oa) = (vec![0f64; hd], vec![0f64; hd]);
        for t in 0..visible {
            let p = w[t] / z;
            for d in 0..hd {
                o[d] += p * v[t * hd + d] as f64;
                oa[d] += p * (v[t * hd + d] as f64).abs();
            }
        }
        (o, oa, qk_abs)
    }

    #[test]
    fn flash_prefill_matches_softmax_attention_after_cached_positions() {
        let Some(g) = gpu("flash_prefill") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        // (heads, kv_heads, head_dim, start, n): GQA 5 (Nemotron-H's 40/8) and 1.
        let mut cases = vec![];
        for n in [1, 17, 64, 65] {
            cases.push((40, 8, 128, 37, n));
        }
        cases.push((10, 2, 128, 5, 300));
        for n in [1, 17, 64, 65, 300] {
            cases.push((4, 4, 64, 100, n));
        }
        cases.push((8, 8, 128, 200, 65));
        for dtype in KV_DTYPES {
            for &(heads, kvh, hd, start, n) in &cases {
                let q_kinds: &[bool] = if dtype == DType::BF16 {
                    &[false, true]
                } else {
                    &[false]
                };
                for &q_bf16 in q_kinds {
                    flash_case(&g, &mut r, s, dtype, (heads, kvh, hd, start, n), q_bf16);
                }
            }
        }
    }

    fn flash_case(
        g: &Gpu,
        r: &mut Rng,
        s: u64,
        dtype: DType,
        (heads, kvh, hd, start, n): (usize, usize, usize, usize, usize),
        q_bf16: bool,
    ) {
        let len = start + n;
        // The cache as the model fills it: the earlier positions, then the prompt's.
        let mut dev = GpuKvCache::new(g, dtype, heads, kvh, hd, len).unwrap();
        let mut pos = DevicePosition::new(g).unwrap();
        for m in [start, n] {
            let k = r.vec(m * kvh * hd, 2.0);
            let v = r.vec(m * kvh * hd, 2.0);
            dev.append(g, &up(g, &k), &up(g, &v), m, &pos).unwrap();
            pos.advance(g, m).unwrap();
        }
        let (kb, vb, ks, vs) = dev.download(g, len).unwrap();
        let (kw, kmma) = widen_kv(dtype, &kb, &ks, hd);
        let (vw, vmma) = widen_kv(dtype, &vb, &vs, hd);
        let (kd, vd, ksd, vsd) = (up(g, &kb), up(g, &vb), up(g, &ks), up(g, &vs));
        let view = KvView {
            dtype,
            kv_heads: kvh,
            head_dim: hd,
            positions: len,
            k: &kd,
            v: &vd,
            k_scale: &ksd,
            v_scale: &vsd,
        };
        let mut q = r.vec(n * heads * hd, 2.0);
        if q_bf16 {
            q.iter_mut().for_each(|v| *v = bf16r(*v));
        }
        let mut out = g.zeros::<f32>(n * heads * hd).unwrap();
        let mut out_b = g.zeros::<bf16>(n * heads * hd).unwrap();
        if q_bf16 {
            let qb: Vec<bf16> = q.iter().map(|v| bf16::from_f32(*v)).collect();
            let qd = up(g, &qb);
            flash::prefill(
                g,
                &view,
                heads,
                n,
                Queries::BF16(&qd),
                &mut out,
                Some(&mut out_b),
            )
            .unwrap();
        } else {
            let qd = up(g, &q);
            flash::prefill(
                g,
                &view,
                heads,
                n,
                Queries::F32(&qd),
                &mut out,
                Some(&mut out_b),
            )
            .unwrap();
        }
        let got = g.download(&out).unwrap();
        let got_b = g.download(&out_b).unwrap();
        // Per kv head, rows [positions, hd].
        let head_rows = |all: &[f32], kh: usize| -> Vec<f32> {
            (0..len)
                .flat_map(|t| all[(t * kvh + kh) * hd..(t * kvh + kh + 1) * hd].to_vec())
                .collect()
        };
        let (kh_w, vh_w, kh_m, vh_m): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = (
            (0..kvh).map(|kh| head_rows(&kw, kh)).collect(),
            (0..kvh).map(|kh| head_rows(&vw, kh)).collect(),
            (0..kvh).map(|kh| head_rows(&kmma, kh)).collect(),
            (0..kvh).map(|kh| head_rows(&vmma, kh)).collect(),
        );
        // Unit roundoff of the k and v values on their way into the MMA (0 where exact).
        let (rk, rv) = if matches!(dtype, DType::F32 | DType::F16) {
            (U_BF16, U_BF16)
        } else {
            (0.0, 0.0)
        };
        let rq = if q_bf16 { 0.0 } else { U_BF16 };
        let n_el = n * heads * hd;
        let (mut want, mut bound) = (vec![0f64; n_el], vec![0f64; n_el]);
        let (mut want_m, mut bound_m) = (vec![0f64; n_el], vec![0f64; n_el]);
        for i in 0..n {
            let visible = start + i + 1;
            // f32 work of the kernel per output: ≤ visible tensor-core additions in P·V
            // (2^-23 each), the rescalings and the normaliser's sum, 2 exp/scale roundings
            // per weight, the division.
            let gamma_o = (2 * visible + hd + 16) as f64 * U_F32;
            for h in 0..heads {
                let kh = h / (heads / kvh);
                let at = (i * heads + h) * hd;
                let qi = &q[at..at + hd];
                // 1. Against the exact attention of the cache's values. A score's inputs
                // carry relative errors rq (q) and rk (k); its sum of hd products on the
                // tensor cores (2^-23 each) and the scale products ≤ (2·hd + 4)·2^-24:
                //   |Δs_t| ≤ E = ((1+rq)(1+rk)(1 + (2hd+4)·2^-24) − 1)·max_t Σ_d |q_d k_td|·scale.
                // Softmax weights then move by a factor in [e^-2E, e^2E]; each weight is
                // rounded to bf16 (u) and each v by rv, so
                //   |Δo_d| ≤ (e^2E (1+u)(1+rv)(1+γ_o) − 1) · Σ_t p_t |v_td|.
                let (o, oa, qk) = attend(qi, &kh_w[kh], &vh_w[kh], hd, visible);
                let e = ((1.0 + rq) * (1.0 + rk) * (1.0 + (2 * hd + 4) as f64 * U_F32) - 1.0) * qk;
                let f = (2.0 * e).exp() * (1.0 + U_BF16) * (1.0 + rv) * (1.0 + gamma_o) - 1.0;
                // 2. Against the attention of exactly the values the MMA sees (q and the
                // cache rounded as the kernel rounds them): only the f32 sums and the
                // bf16 weights are left, so the bound is ~u·Σ p|v| — tight enough that a
                // wrong mask or a wrong position shows.
                let qm: Vec<f32> = qi.iter().map(|v| bf16r(*v)).collect();
                let (om, oam, qkm) = attend(&qm, &kh_m[kh], &vh_m[kh], hd, visible);
                let em = (2 * hd + 4) as f64 * U_F32 * qkm;
                let fm = (2.0 * em).exp() * (1.0 + U_BF16) * (1.0 + gamma_o) - 1.0;
                for d in 0..hd {
                    want[at + d] = o[d];
                    bound[at + d] = f * oa[d] + 1e-30;
                    want_m[at + d] = om[d];
                    bound_m[at + d] = fm * oam[d] + 1e-30;
                }
            }
        }
        let what =
            format!("seed {s} kv {dtype} q bf16 {q_bf16} {heads}/{kvh}x{hd} start {start} n {n}");
        assert_within(&what, &got, &want, &bound);
        assert_within(&format!("{what} (MMA inputs)"), &got, &want_m, &bound_m);
        // The bf16 copy is the f32 output rounded once.
        for (b, f) in got_b.iter().zip(&got) {
            assert_eq!(
                b.to_bits(),
                bf16::from_f32(*f).to_bits(),
                "{what}: bf16 copy"
            );
        }
    }

    #[test]
    fn flash_prefill_rejects_what_it_cannot_run() {
        let Some(g) = gpu("flash_prefill") else {
            return;
        };
        for (dtype, heads, kvh, hd) in [
            (DType::BF16, 40, 8, 80),
            (DType::BF16, 40, 7, 128),
            (DType::Q4_0, 4, 4, 64),
        ] {
            assert!(
                flash::supports(dtype, heads, kvh, hd).is_err(),
                "{dtype} {heads}/{kvh}x{hd}"
            );
        }
        // Short buffers are an error before anything is launched.
        let k = g.zeros::<u8>(10).unwrap();
        let sc = g.zeros::<f32>(1).unwrap();
        let view = KvView {
            dtype: DType::BF16,
            kv_heads: 1,
            head_dim: 64,
            positions: 4,
            k: &k,
            v: &k,
            k_scale: &sc,
            v_scale: &sc,
        };
        let q = g.zeros::<f32>(4 * 64).unwrap();
        let mut out = g.zeros::<f32>(4 * 64).unwrap();
        let err = flash::prefill(&g, &view, 1, 4, Queries::F32(&q), &mut out, None).unwrap_err();
        assert!(err.to_string().contains("k_cache"), "{err}");
    }
}
