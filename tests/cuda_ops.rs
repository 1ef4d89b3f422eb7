//! The CUDA backend against the CPU.
//!
//! `--device` behaviour is tested in every build with the real binary. The op tests are
//! built with `--features cuda` and compare each kernel with its CPU oracle on fresh
//! random inputs of several sizes (ragged tails, multi-chunk scans, multi-split decode).
//! Without a usable GPU each op test prints `SKIP` and returns; with
//! `NEMO_REQUIRE_GPU=1` (scripts/gpu-check.sh sets it) a missing GPU fails instead.
//!
//! Where the CPU op is not callable on its own (the conv and scan inside
//! `model::mamba2`, MoE routing inside `model::moe`), the reference here is the formula of
//! that module's doc written out plainly (the sequential recurrence for the chunked scan),
//! independent of both implementations.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Output, Stdio};

fn nemo(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = common::nemo_command();
    cmd.args(args)
        .env_remove("NEMO_MODEL")
        .env_remove("NEMO_DEVICE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn tiny() -> String {
    common::fixture("nemotron_h_tiny").display().to_string()
}

/// Whether this build can run on a GPU of this machine (then `--device cuda` runs; its
/// runs are tested in tests/cuda_session.rs).
fn gpu_usable() -> bool {
    #[cfg(feature = "cuda")]
    {
        nemo::backend::cuda::Gpu::new(0).is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

#[test]
fn device_cuda_fails_with_one_line_when_this_machine_cannot_run_it() {
    // Here (no GPU, or a build without CUDA) `--device cuda` must never fall back: exit 1,
    // one line saying why.
    if gpu_usable() {
        common::skip::skip("this machine runs --device cuda");
        return;
    }
    let t = tiny();
    let out = nemo(
        &[
            "run",
            "--model",
            &t,
            "--max-tokens",
            "2",
            "--device",
            "cuda",
            "hi",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "no output may be produced: {:?}",
        out.stdout
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("nemo: --device cuda: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let expected: &[&str] = if cfg!(feature = "cuda") {
        &[
            "no CUDA kernels",
            "no NVIDIA driver",
            "no CUDA GPU",
            "the kernels were",
        ]
    } else {
        &["this build has no CUDA support"]
    };
    assert!(expected.iter().any(|e| err.contains(e)), "{err}");
}

#[test]
fn device_from_the_environment_is_honoured_and_checked() {
    let t = tiny();
    let out = nemo(
        &["run", "--model", &t, "--max-tokens", "2", "hi"],
        &[("NEMO_DEVICE", "tpu")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "usage error: {err}");
    assert!(
        err.contains("NEMO_DEVICE") && err.contains("`tpu` is not one of auto, cpu, cuda"),
        "{err}"
    );
}

#[test]
fn device_auto_and_cpu_run_on_the_cpu() {
    let t = tiny();
    for dev in ["cpu", "auto"] {
        let out = nemo(
            &[
                "run",
                "--model",
                &t,
                "--max-tokens",
                "2",
                "--device",
                dev,
                "hi",
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "--device {dev}: {err}");
        if dev == "cpu" || !nemo::backend::cuda::driver_present() || gpu_usable() {
            assert!(
                !err.contains("running on the CPU"),
                "no notice on --device cpu, without a driver, or on a usable GPU: {err}"
            );
        } else {
            // A driver nemo cannot use: said once, then it runs on the CPU.
            assert!(err.contains("nemo: running on the CPU: "), "{err}");
        }
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::gpu::{
        assert_close, bf16s, gpu, rel_l2, rounded, run_scan, scan_case, seed, up, Rng,
    };
    use half::bf16;
    use nemo::backend::cpu::{matmul, moe, ops, ssm, MatRef};
    use nemo::backend::cuda::attention::{DevicePosition, GpuKvCache};
    use nemo::backend::cuda::{self, ssm::ScanShape};
    use nemo::backend::{fp8, DType};
    use nemo::engine::sampler::Sampler;
    use nemo::protocol::SamplingParams;
    use nemo::state::KvCache;

    fn widen(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }

    #[test]
    fn embedding_gather_matches_the_table_rows_exactly() {
        let Some(g) = gpu("embedding") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for hidden in [64, 333, 2688] {
            let vocab = 1000;
            let table = bf16s(&r.vec(vocab * hidden, 2.0));
            let ids: Vec<u32> = (0..17).map(|_| r.below(vocab) as u32).collect();
            let dt = up(&g, &table);
            let di = up(&g, &ids);
            let mut out = g.zeros::<f32>(ids.len() * hidden).unwrap();
            cuda::embedding::gather(&g, &dt, vocab, hidden, &di, ids.len(), &mut out).unwrap();
            let got = g.download(&out).unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&id| widen(&table[id as usize * hidden..(id as usize + 1) * hidden]))
                .collect();
            assert_eq!(got, want, "seed {s} hidden {hidden}");
            // An id outside the vocabulary is an error on the host, as on the CPU; one that
            // reaches the device (ids are read there) gives a NaN row, not a wild read.
            let bad = [vocab as u32];
            assert!(cuda::embedding::check_ids(&bad, vocab).is_err());
            cuda::embedding::check_ids(&ids, vocab).unwrap();
            let db = up(&g, &bad);
            cuda::embedding::gather(&g, &dt, vocab, hidden, &db, 1, &mut out).unwrap();
            let row = g.download(&out).unwrap();
            assert!(row[..hidden].iter().all(|v| v.is_nan()), "seed {s}");
        }
    }

    #[test]
    fn rms_norm_with_residual_add_matches_the_cpu() {
        let Some(g) = gpu("rms_norm") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for (rows, dim) in [(1, 64), (5, 1000), (17, 4480)] {
            let res = r.vec(rows * dim, 3.0);
            let delta = r.vec(rows * dim, 1.0);
            let w = r.vec(dim, 1.5);
            let mut dres = up(&g, &res);
            let ddelta = up(&g, &delta);
            let dw = up(&g, &w);
            let mut out = g.zeros::<f32>(rows * dim).unwrap();
            let mut outb = g.zeros::<bf16>(rows * dim).unwrap();
            cuda::norm::rms_norm_residual(
                &g,
                &mut dres,
                Some(&ddelta),
                &dw,
                Some(&mut out),
                Some(&mut outb),
                rows,
                dim,
                1e-5,
            )
            .unwrap();
            let sum: Vec<f32> = res.iter().zip(&delta).map(|(a, b)| a + b).collect();
            let mut want = vec![0f32; rows * dim];
            ops::rms_norm(&sum, &w, 1e-5, &mut want);
            assert_eq!(
                g.download(&dres).unwrap(),
                sum,
                "seed {s}: residual sum is exact"
            );
            assert_close(
                &format!("seed {s} {rows}x{dim}"),
                &g.download(&out).unwrap(),
                &want,
                2e-6,
                1.0,
            );
            // bf16 output: the f32 result rounded once (within one bf16 ulp of the CPU's).
            let gotb = widen(&g.download(&outb).unwrap());
            for (a, b) in gotb.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= b.abs() / 128.0 + 1e-6,
                    "seed {s}: bf16 {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn gated_rms_norm_matches_the_cpu_per_group() {
        let Some(g) = gpu("gated_rms_norm") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        for (rows, dim, groups) in [(1, 64, 2), (3, 256, 1), (9, 4096, 8)] {
            let group = dim / groups;
            // z is a slice of a wider projection row: stride > dim, offset 5.
            let stride = dim + 37;
            let zrow = r.vec(5 + rows * stride, 3.0);
            let y = r.vec(rows * dim, 2.0);
            let w = r.vec(dim, 1.0);
            let z: Vec<f32> = (0..rows)
                .flat_map(|t| zrow[5 + t * stride..5 + t * stride + dim].to_vec())
                .collect();
            let mut want = y.clone();
            ops::gated_rms_norm(&mut want, &z, &w, group, 1e-5);
            let mut dy = up(&g, &y);
            cuda::norm::gated_rms_norm(
                &g,
                &mut dy,
                &up(&g, &zrow),
                5,
                stride,
                &up(&g, &w),
                None,
                rows,
                dim,
                group,
                1e-5,
            )
            .unwrap();
            assert_close(
                &format!("seed {s} {rows}x{dim}/{groups}"),
                &g.download(&dy).unwrap(),
                &want,
                1e-5,
                1.0,
            );
        }
    }

    #[test]
    fn relu2_matches_the_cpu_exactly() {
        let Some(g) = gpu("relu2") else { return };
        let mut r = Rng::new(seed());
        for n in [1, 255, 256, 100_003] {
            let x = r.vec(n, 4.0);
            let mut want = x.clone();
            ops::relu2_inplace(&mut want);
            let mut dx = up(&g, &x);
            cuda::elementwise::relu2(&g, &mut dx, None, n).unwrap();
            assert_eq!(g.download(&dx).unwrap(), want);
        }
    }

    #[test]
    fn gemm_bf16_matches_the_cpu_matmul() {
        let Some(g) = gpu("gemm") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for (n, out_dim, in_dim) in [(1, 64, 64), (7, 300, 129), (33, 1024, 4480)] {
            let x = bf16s(&r.vec(n * in_dim, 1.0));
            let w = bf16s(&r.vec(out_dim * in_dim, 0.1));
            let wb: Vec<u8> = w.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
            let mut want = vec![0f32; n * out_dim];
            matmul(
                &widen(&x),
                n,
                MatRef {
                    dtype: DType::BF16,
                    data: &wb,
                    rows: out_dim,
                    cols: in_dim,
                    scale: nemo::backend::cpu::WeightScale::None,
                    interleaved: None,
                },
                &mut want,
            );
            let mut y = g.zeros::<f32>(n * out_dim).unwrap();
            cuda::gemm::matmul_bf16(
                &g,
                &up(&g, &x),
                n,
                &up(&g, &w),
                out_dim,
                in_dim,
                &mut y,
                0.0,
            )
            .unwrap();
            assert_close(
                &format!("seed {s} gemm {n}x{out_dim}x{in_dim}"),
                &g.download(&y).unwrap(),
                &want,
                1e-4,
                1e-3,
            );
        }
    }

    #[test]
    fn conv1d_prompt_and_step_match_the_cpu_op_and_carry_the_window() {
        let Some(g) = gpu("conv1d") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for (cd, k, n) in [
            (96, 4, 1),
            (96, 4, 2),
            (300, 4, 37),
            (6144, 4, 129),
            (50, 2, 5),
        ] {
            let stride = cd + 11; // rows of a wider projection, offset 3
            let xrow = r.vec(3 + n * stride, 2.0);
            let w = r.vec(cd * k, 0.5);
            let b = r.vec(cd, 0.5);
            let mut st = r.vec((k - 1) * cd, 1.0);
            let mut dst = up(&g, &st);
            let (dw, db) = (up(&g, &w), up(&g, &b));
            let mut out = g.zeros::<f32>(n * cd).unwrap();
            cuda::conv1d::prefill(
                &g,
                &up(&g, &xrow),
                3,
                stride,
                &mut dst,
                &dw,
                &db,
                &mut out,
                n,
                cd,
                k,
            )
            .unwrap();
            // The CPU op reads the same strided rows.
            let mut want = vec![0f32; n * cd];
            ssm::causal_conv1d(&xrow, 3, stride, n, &mut st, &w, &b, &mut want, cd, k);
            let what = format!("seed {s} cd {cd} k {k} n {n}");
            assert_close(&what, &g.download(&out).unwrap(), &want, 1e-5, 1.0);
            assert_eq!(g.download(&dst).unwrap(), st, "{what}: window");
            // Then three decode steps on the carried window.
            for _ in 0..3 {
                let x1 = r.vec(cd, 2.0);
                let mut want = vec![0f32; cd];
                ssm::causal_conv1d(&x1, 0, cd, 1, &mut st, &w, &b, &mut want, cd, k);
                let mut o1 = g.zeros::<f32>(cd).unwrap();
                cuda::conv1d::update(&g, &up(&g, &x1), 0, &mut dst, &dw, &db, &mut o1, cd, k)
                    .unwrap();
                assert_close(
                    &format!("{what} step"),
                    &g.download(&o1).unwrap(),
                    &want,
                    1e-5,
                    1.0,
                );
                assert_eq!(g.download(&dst).unwrap(), st, "{what}: window after a step");
            }
        }
    }

    /// Relative bound for a state kept in `dtype` (rounded once per call).
    fn state_rel(dtype: DType) -> f32 {
        match dtype {
            DType::F16 => 2e-3,
            DType::BF16 => 1.6e-2,
            _ => 2e-5,
        }
    }

    #[test]
    fn ssm_decode_step_matches_the_cpu_step_for_every_state_dtype() {
        let Some(g) = gpu("ssm_update") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        let shapes = [
            ScanShape {
                heads: 8,
                head_dim: 16,
                d_state: 16,
                n_groups: 2,
            },
            ScanShape {
                heads: 128,
                head_dim: 64,
                d_state: 128,
                n_groups: 8,
            },
            ScanShape {
                heads: 6,
                head_dim: 50,
                d_state: 40,
                n_groups: 3,
            },
        ];
        for sh in shapes {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let c = scan_case(&mut r, sh, 1, sh.heads, false);
                let start = rounded(dtype, &c.state);
                let mut st = start.clone();
                let mut want = vec![0f32; sh.heads * sh.head_dim];
                ssm::ssm_step(
                    &sh, &c.xbc, &c.dt_raw, 0, &c.dt_bias, &c.a, &c.d, &mut st, &mut want,
                );
                let (y, back) = run_scan(&g, &c, 1, sh.heads, None, 0.0, dtype);
                let what = format!("seed {s} {sh:?} {dtype}");
                assert_close(&what, &y, &want, 1e-5, 1.0);
                assert_close(&format!("{what} state"), &back, &st, state_rel(dtype), 0.1);
            }
        }
    }

    // The chunked scan (tensor cores, tf32) is checked against the recurrence in
    // tests/cuda_tc.rs, with the bound its rounding model gives, on these shapes and more.

    const KV_DTYPES: [DType; 5] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    fn widen_kv(dtype: DType, bytes: &[u8], scales: &[f32], hd: usize) -> Vec<f32> {
        let sz = dtype.size();
        let mut out = vec![0f32; bytes.len() / sz];
        nemo::backend::dtype::widen_into(dtype, bytes, &mut out);
        if matches!(dtype, DType::F8E4M3 | DType::F8E5M2) {
            for (row, sc) in out.chunks_exact_mut(hd).zip(scales) {
                row.iter_mut().for_each(|v| *v *= sc);
            }
        }
        out
    }

    #[test]
    fn kv_append_stores_what_the_cpu_cache_stores_with_the_same_scales() {
        let Some(g) = gpu("kv_append") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for dtype in KV_DTYPES {
            let (kvh, hd) = (2, 128);
            let mut cpu = KvCache::new(dtype, kvh, hd);
            let mut dev = GpuKvCache::new(&g, dtype, 8, kvh, hd, 64).unwrap();
            let mut pos = DevicePosition::new(&g).unwrap();
            for n in [5, 1, 3] {
                let k = r.vec(n * kvh * hd, 4.0);
                let v: Vec<f32> = r.vec(n * kvh * hd, 0.01);
                cpu.append(&k, &v);
                dev.append(&g, &up(&g, &k), &up(&g, &v), n, &pos).unwrap();
                pos.advance(&g, n).unwrap();
            }
            let len = cpu.len();
            assert_eq!(pos.get(), len);
            let (kb, vb, ks, vs) = dev.download(&g, len).unwrap();
            let gk = widen_kv(dtype, &kb, &ks, hd);
            let gv = widen_kv(dtype, &vb, &vs, hd);
            for head in 0..kvh {
                let (mut ck, mut cv) = (vec![0f32; len * hd], vec![0f32; len * hd]);
                cpu.read_head(head, len, &mut ck, &mut cv);
                for t in 0..len {
                    let row = (t * kvh + head) * hd;
                    for (gpu_row, cpu_row, name) in [(&gk, &ck, "k"), (&gv, &cv, "v")] {
                        let want = &cpu_row[t * hd..(t + 1) * hd];
                        let got = &gpu_row[row..row + hd];
                        // Same scale, same round-to-nearest-even: equal values, except that
                        // a value exactly between two codes may round either way in the
                        // CPU's tie test; allow one code there and nowhere else.
                        let amax = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                        let quantum = match dtype {
                            DType::F8E4M3 => amax / 8.0,
                            DType::F8E5M2 => amax / 4.0,
                            _ => 0.0,
                        };
                        let off = got.iter().zip(want).filter(|(a, b)| a != b).count();
                        assert!(
                            off <= 1,
                            "seed {s} {dtype} {name} t {t}: {off} values differ"
                        );
                        for (a, b) in got.iter().zip(want) {
                            assert!(
                                (a - b).abs() <= quantum,
                                "seed {s} {dtype} {name}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Reference attention: query `q` `[hd]` of head `h` over positions `0..visible` of the
    /// CPU cache (widened by `KvCache::read_head`), in f64.
    fn attend_ref(cpu: &KvCache, q: &[f32], h: usize, heads: usize, visible: usize) -> Vec<f32> {
        let hd = cpu.head_dim;
        let kvh = cpu.kv_heads;
        let (mut k, mut v) = (vec![0f32; cpu.len() * hd], vec![0f32; cpu.len() * hd]);
        cpu.read_head(h / (heads / kvh), cpu.len(), &mut k, &mut v);
        let scale = (hd as f64).powf(-0.5);
        let scores: Vec<f64> = (0..visible)
            .map(|t| {
                (0..hd)
                    .map(|d| q[d] as f64 * k[t * hd + d] as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = w.iter().sum();
        (0..hd)
            .map(|d| {
                ((0..visible)
                    .map(|t| w[t] * v[t * hd + d] as f64)
                    .sum::<f64>()
                    / z) as f32
            })
            .collect()
    }

    #[test]
    fn decode_attention_matches_the_cpu_cache_for_every_kv_dtype_and_split() {
        let Some(g) = gpu("attn_decode") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for dtype in KV_DTYPES {
            for (heads, kvh, hd, len) in [
                (4, 2, 16, 1),
                (8, 2, 128, 130),
                (40, 8, 128, 1000),
                (6, 1, 256, 5000),
                (3, 3, 80, 77),
            ] {
                let mut cpu = KvCache::new(dtype, kvh, hd);
                let mut dev = GpuKvCache::new(&g, dtype, heads, kvh, hd, len).unwrap();
                let mut pos = DevicePosition::new(&g).unwrap();
                let k = r.vec(len * kvh * hd, 2.0);
                let v = r.vec(len * kvh * hd, 2.0);
                cpu.append(&k, &v);
                dev.append(&g, &up(&g, &k), &up(&g, &v), len, &pos).unwrap();
                // The query sits at the last position: it sees all `len`.
                pos.set(&g, len - 1).unwrap();
                let q = r.vec(heads * hd, 2.0);
                let mut out = g.zeros::<f32>(heads * hd).unwrap();
                dev.decode(&g, &up(&g, &q), &mut out, None, &pos).unwrap();
                let got = g.download(&out).unwrap();
                let want: Vec<f32> = (0..heads)
                    .flat_map(|h| attend_ref(&cpu, &q[h * hd..(h + 1) * hd], h, heads, len))
                    .collect();
                // The caches hold the same values (kv_append test); what is left is f32
                // summation order, plus FP8 codes that may differ at exact ties.
                let rel = if matches!(dtype, DType::F8E4M3 | DType::F8E5M2) {
                    2e-2
                } else {
                    1e-4
                };
                assert_close(
                    &format!("seed {s} {dtype} {heads}/{kvh}x{hd} len {len}"),
                    &got,
                    &want,
                    rel,
                    0.1,
                );
            }
        }
    }

    /// The decode path of a captured graph: k/v appended one position at a time at the
    /// device position, decode reading its length on the device, with a fixed split count
    /// that the lengths do not divide (and that exceeds the shortest ones, leaving splits
    /// empty), then a rewind of the position: the query sees only what is left.
    #[test]
    fn decode_attention_reads_the_device_position_with_a_fixed_split_count() {
        let Some(g) = gpu("attn_decode device position") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        for dtype in KV_DTYPES {
            for (heads, kvh, hd, splits, len) in [
                (4, 2, 16, 7, 1),
                (4, 2, 16, 7, 5),
                (8, 2, 128, 7, 130),
                (8, 4, 64, 7, 7 * 128 + 3),
                (6, 1, 256, 16, 16 * 128 + 77),
                (3, 3, 80, 3, 1000),
            ] {
                let mut cpu = KvCache::new(dtype, kvh, hd);
                let mut dev =
                    GpuKvCache::with_splits(&g, dtype, heads, kvh, hd, len + 4, splits).unwrap();
                assert_eq!(dev.splits(), splits);
                let mut pos = DevicePosition::new(&g).unwrap();
                // All but the last position in one append, then the last as a decode step
                // appends it: at the device position, which the step then advances.
                let k = r.vec(len * kvh * hd, 2.0);
                let v = r.vec(len * kvh * hd, 2.0);
                cpu.append(&k, &v);
                let row = kvh * hd;
                let (k0, k1) = k.split_at((len - 1) * row);
                let (v0, v1) = v.split_at((len - 1) * row);
                if len > 1 {
                    dev.append(&g, &up(&g, k0), &up(&g, v0), len - 1, &pos)
                        .unwrap();
                    pos.advance(&g, len - 1).unwrap();
                }
                dev.append(&g, &up(&g, k1), &up(&g, v1), 1, &pos).unwrap();
                let q = r.vec(heads * hd, 2.0);
                let dq = up(&g, &q);
                let mut out = g.zeros::<f32>(heads * hd).unwrap();
                dev.decode(&g, &dq, &mut out, None, &pos).unwrap();
                pos.advance(&g, 1).unwrap();
                assert_eq!(pos.get(), len);
                let got = g.download(&out).unwrap();
                let want: Vec<f32> = (0..heads)
                    .flat_map(|h| attend_ref(&cpu, &q[h * hd..(h + 1) * hd], h, heads, len))
                    .collect();
                let rel = if matches!(dtype, DType::F8E4M3 | DType::F8E5M2) {
                    2e-2
                } else {
                    1e-4
                };
                let what = format!("seed {s} {dtype} {heads}/{kvh}x{hd} splits {splits} len {len}");
                assert_close(&what, &got, &want, rel, 0.1);
                // Rewind to half: a query at the last kept position sees only those.
                let keep = len.div_ceil(2);
                pos.set(&g, keep - 1).unwrap();
                dev.decode(&g, &dq, &mut out, None, &pos).unwrap();
                let got = g.download(&out).unwrap();
                let want: Vec<f32> = (0..heads)
                    .flat_map(|h| attend_ref(&cpu, &q[h * hd..(h + 1) * hd], h, heads, keep))
                    .collect();
                assert_close(&format!("{what} rewound to {keep}"), &got, &want, rel, 0.1);
            }
        }
    }

    #[test]
    fn prefill_attention_off_the_tensor_core_head_dims_is_causal_and_matches_the_cpu_cache() {
        let Some(g) = gpu("attn_prefill") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for dtype in [DType::BF16, DType::F8E4M3, DType::F32] {
            // Head dims 64 and 128 take the tensor-core kernel (tests/cuda_tc.rs checks it
            // with its bf16 bound); these take the CUDA-core one.
            for (heads, kvh, hd, past, n) in [
                (4, 2, 16, 0, 1),
                (8, 2, 96, 0, 9),
                (8, 4, 32, 20, 33),
                (2, 1, 256, 3, 40),
            ] {
                let mut cpu = KvCache::new(dtype, kvh, hd);
                let mut dev = GpuKvCache::new(&g, dtype, heads, kvh, hd, past + n).unwrap();
                let mut pos = DevicePosition::new(&g).unwrap();
                for m in [past, n] {
                    let k = r.vec(m * kvh * hd, 2.0);
                    let v = r.vec(m * kvh * hd, 2.0);
                    cpu.append(&k, &v);
                    dev.append(&g, &up(&g, &k), &up(&g, &v), m, &pos).unwrap();
                    if m == past {
                        pos.advance(&g, m).unwrap();
                    }
                }
                let q = r.vec(n * heads * hd, 2.0);
                let mut out = g.zeros::<f32>(n * heads * hd).unwrap();
                dev.prefill(&g, &up(&g, &q), n, past, &mut out, None)
                    .unwrap();
                let got = g.download(&out).unwrap();
                let mut want = vec![0f32; n * heads * hd];
                for i in 0..n {
                    for h in 0..heads {
                        let qi = &q[(i * heads + h) * hd..(i * heads + h + 1) * hd];
                        want[(i * heads + h) * hd..(i * heads + h + 1) * hd]
                            .copy_from_slice(&attend_ref(&cpu, qi, h, heads, past + i + 1));
                    }
                }
                let rel = if dtype == DType::F8E4M3 { 2e-2 } else { 1e-4 };
                assert_close(
                    &format!("seed {s} {dtype} {heads}/{kvh}x{hd} past {past} n {n}"),
                    &got,
                    &want,
                    rel,
                    0.1,
                );
            }
        }
    }

    #[test]
    fn moe_routing_picks_the_same_experts_and_weights_as_the_cpu() {
        let Some(g) = gpu("moe_route") else { return };
        let s = seed();
        let mut rng = Rng::new(s);
        let configs = [
            cuda::moe::Routing {
                n_routed_experts: 128,
                n_group: 1,
                topk_group: 1,
                top_k: 6,
                norm_topk_prob: true,
                routed_scaling_factor: 2.5,
            },
            cuda::moe::Routing {
                n_routed_experts: 64,
                n_group: 8,
                topk_group: 3,
                top_k: 8,
                norm_topk_prob: false,
                routed_scaling_factor: 1.0,
            },
            cuda::moe::Routing {
                n_routed_experts: 512,
                n_group: 4,
                topk_group: 2,
                top_k: 22,
                norm_topk_prob: true,
                routed_scaling_factor: 1.5,
            },
        ];
        for rt in configs {
            let (e, n) = (rt.n_routed_experts, 13);
            let logits = rng.vec(n * e, 4.0);
            let bias = rng.vec(e, 0.3);
            let mut ids = g.zeros::<u32>(n * rt.top_k).unwrap();
            let mut w = g.zeros::<f32>(n * rt.top_k).unwrap();
            cuda::moe::route(
                &g,
                &rt,
                &up(&g, &logits),
                &up(&g, &bias),
                &mut ids,
                &mut w,
                n,
            )
            .unwrap();
            let (ids, w) = (g.download(&ids).unwrap(), g.download(&w).unwrap());
            let (mut want_ids, mut want_w) = (vec![0u32; n * rt.top_k], vec![0f32; n * rt.top_k]);
            moe::route(&rt, &logits, &bias, &mut want_ids, &mut want_w, n);
            for t in 0..n {
                for k in 0..rt.top_k {
                    let i = t * rt.top_k + k;
                    assert_eq!(ids[i], want_ids[i], "seed {s} {rt:?} token {t} pick {k}");
                    let (got, wt) = (w[i], want_w[i]);
                    assert!(
                        (got - wt).abs() <= 1e-5 * wt.abs().max(1.0),
                        "seed {s}: weight {got} vs {wt}"
                    );
                }
            }
        }
    }

    #[test]
    fn greedy_sampling_with_penalties_and_bans_matches_the_cpu_sampler() {
        let Some(g) = gpu("sample greedy") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        for vocab in [10, 1000, 131_072] {
            for (rep, presence) in [(1.0, 0.0), (1.3, 0.0), (1.0, 0.7), (2.0, 1.5)] {
                let logits = r.vec(vocab, 8.0);
                let history: Vec<u32> = (0..20).map(|_| r.below(vocab) as u32).collect();
                let banned = vec![r.below(vocab) as u32];
                let p = SamplingParams {
                    temperature: 0.0,
                    repetition_penalty: rep,
                    presence_penalty: presence,
                    seed: Some(1),
                    ..SamplingParams::default()
                };
                let want = Sampler::new(p.clone()).sample(&mut logits.clone(), &history, &banned);
                let mut dl = up(&g, &logits);
                let mut out = g.zeros::<u32>(1).unwrap();
                let got = cuda::sampling::sample(
                    &g,
                    &mut dl,
                    vocab,
                    &cuda::sampling::SampleArgs::from(&p),
                    &history,
                    &banned,
                    0.5,
                    &mut out,
                )
                .unwrap();
                assert_eq!(
                    got, want,
                    "seed {s} vocab {vocab} rep {rep} presence {presence}"
                );
                // top_k = 1 and a tiny top_p are greedy too, at any temperature and draw.
                for q in [
                    SamplingParams {
                        temperature: 0.8,
                        top_k: 1,
                        ..p.clone()
                    },
                    SamplingParams {
                        temperature: 1.3,
                        top_p: 1e-6,
                        ..p.clone()
                    },
                ] {
                    let mut dl = up(&g, &logits);
                    let got = cuda::sampling::sample(
                        &g,
                        &mut dl,
                        vocab,
                        &cuda::sampling::SampleArgs::from(&q),
                        &history,
                        &banned,
                        0.999,
                        &mut out,
                    )
                    .unwrap();
                    assert_eq!(got, want, "seed {s} vocab {vocab} {q:?}");
                }
            }
        }
    }

    /// The draw a captured decode step makes: knobs, uniform and bans from the device
    /// args struct (one copy), bans masked in place before the draw.
    #[test]
    fn device_draw_masks_the_bans_in_its_args_like_the_cpu_sampler() {
        let Some(g) = gpu("sample device bans") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        let mut args = g.zeros::<cuda::sampling::DrawArgs>(1).unwrap();
        let mut out = g.zeros::<u32>(1).unwrap();
        for vocab in [10, 1000, 131_072] {
            for nb in [0, 1, 5, cuda::sampling::MAX_DEVICE_BANS] {
                let logits = r.vec(vocab, 8.0);
                // Ban the best ids, so that every ban changes the argmax.
                let mut order: Vec<usize> = (0..vocab).collect();
                order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
                let banned: Vec<u32> = order[..nb.min(vocab - 1)]
                    .iter()
                    .map(|i| *i as u32)
                    .collect();
                let p = SamplingParams::default();
                let want = Sampler::new(p.clone()).sample(&mut logits.clone(), &[], &banned);
                for q in [
                    p.clone(),
                    SamplingParams {
                        temperature: 0.8,
                        top_k: 1,
                        ..p.clone()
                    },
                ] {
                    let a = cuda::sampling::SampleArgs::from(&q);
                    let mut dl = up(&g, &logits);
                    cuda::sampling::write_args(&g, &a, 0.7, &banned, &mut args).unwrap();
                    cuda::sampling::draw(&g, &mut dl, vocab, &args, &mut out).unwrap();
                    let got = g.download(&out).unwrap()[0];
                    assert_eq!(got, want, "seed {s} vocab {vocab} bans {nb} {q:?}");
                    let after = g.download(&dl).unwrap();
                    for (i, (x, y)) in after.iter().zip(&logits).enumerate() {
                        if banned.contains(&(i as u32)) {
                            assert_eq!(*x, f32::NEG_INFINITY, "seed {s}: banned {i}");
                        } else {
                            assert_eq!(x.to_bits(), y.to_bits(), "seed {s}: logit {i}");
                        }
                    }
                }
            }
        }
        let too_many: Vec<u32> = (0..cuda::sampling::MAX_DEVICE_BANS as u32 + 1).collect();
        let a = cuda::sampling::SampleArgs::from(&SamplingParams::default());
        let e = cuda::sampling::write_args(&g, &a, 0.5, &too_many, &mut args)
            .unwrap_err()
            .to_string();
        assert!(e.contains("banned tokens"), "{e}");
    }

    #[test]
    fn sampled_token_is_the_reference_draw_over_the_kept_set() {
        let Some(g) = gpu("sample") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        let vocab = 50_000;
        for (t, k, tp, mp) in [
            (1.0, 0, 1.0, 0.0),
            (0.7, 40, 1.0, 0.0),
            (1.2, 0, 0.9, 0.0),
            (1.0, 100, 0.8, 0.05),
            (0.5, 0, 1.0, 0.1),
        ] {
            for _ in 0..5 {
                let logits = r.vec(vocab, 6.0);
                let u = (r.next() >> 11) as f64 / (1u64 << 53) as f64;
                // Reference in f64: scaled logits, top-k, softmax, top-p, min-p; the draw
                // walks kept tokens in id order (as the kernel does).
                let sc: Vec<f64> = logits.iter().map(|l| (*l * (1.0 / t)) as f64).collect();
                let mut order: Vec<usize> = (0..vocab).collect();
                order.sort_by(|a, b| sc[*b].partial_cmp(&sc[*a]).unwrap().then(a.cmp(b)));
                let kept_k = if k > 0 { k } else { vocab };
                let m = sc[order[0]];
                let z: f64 = order[..kept_k].iter().map(|i| (sc[*i] - m).exp()).sum();
                let mut keep = vec![false; vocab];
                let mut cum = 0.0;
                for &i in &order[..kept_k] {
                    let pr = (sc[i] - m).exp() / z;
                    if pr < mp as f64 * (1.0 / z) {
                        break;
                    }
                    keep[i] = true;
                    cum += pr;
                    if tp < 1.0 && cum >= tp as f64 {
                        break;
                    }
                }
                let total: f64 = (0..vocab)
                    .filter(|i| keep[*i])
                    .map(|i| (sc[i] - m).exp())
                    .sum();
                let target = u * total;
                let (mut acc, mut want, mut margin) = (0.0, 0usize, f64::INFINITY);
                for i in (0..vocab).filter(|i| keep[*i]) {
                    let w = (sc[i] - m).exp();
                    if target < acc + w {
                        want = i;
                        margin = (target - acc).min(acc + w - target);
                        break;
                    }
                    acc += w;
                }
                let p = SamplingParams {
                    temperature: t,
                    top_k: k,
                    top_p: tp,
                    min_p: mp,
                    ..SamplingParams::default()
                };
                let mut dl = up(&g, &logits);
                let mut out = g.zeros::<u32>(1).unwrap();
                let got = cuda::sampling::sample(
                    &g,
                    &mut dl,
                    vocab,
                    &cuda::sampling::SampleArgs::from(&p),
                    &[],
                    &[],
                    u as f32,
                    &mut out,
                )
                .unwrap() as usize;
                assert!(
                    keep[got],
                    "seed {s} {p:?}: token {got} is outside the kept set"
                );
                // f32 sums on the device against f64 here: only a draw within rounding of a
                // boundary may land on a neighbour.
                if margin > 1e-4 * total {
                    assert_eq!(got, want, "seed {s} {p:?} u {u}");
                }
            }
        }
    }

    /// Ties at a top-k / top-p cut keep the lowest ids, and a draw with nothing finite
    /// left falls back as the CPU's does: the set of ids the device draw gives over a sweep
    /// of uniforms is the set the CPU sampler gives over many draws.
    #[test]
    fn device_draw_keeps_the_cpu_samplers_set_at_ties_and_when_nothing_is_finite() {
        let Some(g) = gpu("sample ties") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        let mut args = g.zeros::<cuda::sampling::DrawArgs>(1).unwrap();
        let mut out = g.zeros::<u32>(1).unwrap();
        let mut device_set = |logits: &[f32], p: &SamplingParams, banned: &[u32]| {
            let a = cuda::sampling::SampleArgs::from(p);
            let mut set = std::collections::BTreeSet::new();
            for j in 0..200 {
                let u = j as f32 / 200.0;
                let mut dl = up(&g, logits);
                cuda::sampling::write_args(&g, &a, u, banned, &mut args).unwrap();
                cuda::sampling::draw(&g, &mut dl, logits.len(), &args, &mut out).unwrap();
                set.insert(g.download(&out).unwrap()[0]);
            }
            set
        };
        let cpu_set = |logits: &[f32], p: &SamplingParams, banned: &[u32]| {
            let mut smp = Sampler::new(SamplingParams {
                seed: Some(s),
                ..p.clone()
            });
            (0..2000)
                .map(|_| smp.sample(&mut logits.to_vec(), &[], banned))
                .collect::<std::collections::BTreeSet<u32>>()
        };
        let sp = |temperature: f32, top_k: usize, top_p: f32| SamplingParams {
            temperature,
            top_k,
            top_p,
            ..SamplingParams::default()
        };
        for vocab in [1000, 131_072] {
            // Four ids tied at the top, far above the rest.
            let mut top = r.vec(vocab, 4.0);
            for i in [7, 300, 512, 900] {
                top[i] = 10.0;
            }
            // One best id, three tied just below it.
            let mut below = r.vec(vocab, 4.0);
            below[50] = 12.0;
            for i in [3, 60, 700] {
                below[i] = 11.5;
            }
            // Four equal ids holding all the mass: top-p 0.6 keeps three of them.
            let mut flat = vec![-30.0f32; vocab];
            for i in [5, 6, 7, 8] {
                flat[i] = 0.0;
            }
            let cases: [(&[f32], SamplingParams, &[u32]); 7] = [
                (&top, sp(1.0, 1, 1.0), &[]),
                (&top, sp(1.0, 2, 1.0), &[]),
                (&top, sp(0.7, 0, 0.0), &[]),
                (&below, sp(1.0, 3, 1.0), &[]),
                (&below, sp(1.0, 3, 1.0), &[3]),
                (&flat, sp(1.0, 0, 0.6), &[]),
                (&flat, sp(1.0, 0, 0.6), &[6]),
            ];
            for (logits, p, banned) in cases {
                let want = cpu_set(logits, &p, banned);
                let got = device_set(logits, &p, banned);
                assert_eq!(got, want, "seed {s} vocab {vocab} {p:?} bans {banned:?}");
            }
            // Nothing finite: greedy's rule (a +inf id, else the lowest id not banned).
            let mut none = vec![f32::NEG_INFINITY; vocab];
            for p in [sp(0.0, 0, 1.0), sp(1.0, 0, 1.0)] {
                let want = cpu_set(&none, &p, &[0, 1]);
                assert_eq!(want.len(), 1);
                assert_eq!(device_set(&none, &p, &[0, 1]), want, "seed {s} {p:?}");
            }
            none[9] = f32::INFINITY;
            let p = sp(1.0, 0, 1.0);
            let want = cpu_set(&none, &p, &[]);
            assert_eq!(want, std::collections::BTreeSet::from([9u32]));
            assert_eq!(device_set(&none, &p, &[]), want, "seed {s}");
        }
    }

    #[test]
    fn mamba2_mixer_on_the_gpu_matches_the_cpu_mixer_for_prompt_and_steps() {
        use nemo::model::mamba2::Mamba2;
        use nemo::model::weights::{Tensor, WeightStore};
        use nemo::model::{LayerKind, NemotronHConfig};
        use nemo::state::MambaState;
        let Some(g) = gpu("mamba2 mixer") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        for fixture in ["nemotron_h_tiny", "nemotron_h_bf16", "nemotron_h_f16"] {
            let dir = super::common::fixture(fixture);
            let cfg_path = dir.join("config.json");
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
            let cfg = NemotronHConfig::from_json(&json, &cfg_path).unwrap();
            let w = WeightStore::open_dir(&dir).unwrap();
            let pre = if w.names().any(|n| n.starts_with("backbone.")) {
                "backbone"
            } else {
                "model"
            };
            let li = cfg
                .layers
                .iter()
                .position(|k| *k == LayerKind::Mamba2)
                .unwrap();
            let p = format!("{pre}.layers.{li}.mixer");
            let (hs, h, di, cd, k) = (
                cfg.hidden_size,
                cfg.mamba_num_heads,
                cfg.d_inner(),
                cfg.conv_dim(),
                cfg.conv_kernel,
            );
            let pd = cfg.in_proj_dim();
            // The projections in bf16 for both sides (the GPU keeps weights in bf16), the
            // small tensors as stored: the CPU oracle then sees exactly the GPU's weights.
            let as_bf16 = |t: Tensor| -> (Tensor, Vec<bf16>) {
                let v = bf16s(&t.to_f32());
                let bytes = v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
                (
                    Tensor::from_owned(&t.name, DType::BF16, t.shape.clone(), bytes),
                    v,
                )
            };
            let (inp, inp_h) = as_bf16(w.get(&format!("{p}.in_proj.weight"), &[pd, hs]).unwrap());
            let (outp, outp_h) =
                as_bf16(w.get(&format!("{p}.out_proj.weight"), &[hs, di]).unwrap());
            let conv_w = w
                .get_squeezed(&format!("{p}.conv1d.weight"), &[cd, 1, k])
                .unwrap();
            let conv_b = w.get(&format!("{p}.conv1d.bias"), &[cd]).unwrap();
            let dt_bias = w.get_squeezed(&format!("{p}.dt_bias"), &[h]).unwrap();
            let a_log = w.get_squeezed(&format!("{p}.A_log"), &[h]).unwrap();
            let d = w.get_squeezed(&format!("{p}.D"), &[h]).unwrap();
            let norm_w = w.get(&format!("{p}.norm.weight"), &[di]).unwrap();
            let host_a: Vec<f32> = a_log.to_f32().iter().map(|x| -x.exp()).collect();
            let (cw, cb, db, dd, nw) = (
                conv_w.to_f32(),
                conv_b.to_f32(),
                dt_bias.to_f32(),
                d.to_f32(),
                norm_w.to_f32(),
            );
            let store = WeightStore::from_tensors(vec![
                inp, outp, conv_w, conv_b, dt_bias, a_log, d, norm_w,
            ]);
            let cpu = Mamba2::load(&cfg, &store, &p).unwrap();
            let shape = ScanShape {
                heads: h,
                head_dim: cfg.mamba_head_dim,
                d_state: cfg.ssm_state_size,
                n_groups: cfg.n_groups,
            };
            let host = cuda::mamba2::Mamba2Host {
                shape,
                hidden: hs,
                conv_kernel: k,
                chunk_size: cfg.chunk_size,
                time_step_min: cfg.time_step_min,
                eps: cfg.layer_norm_epsilon,
                in_proj: &inp_h,
                in_proj_bias: None,
                conv_w: &cw,
                conv_b: &cb,
                dt_bias: &db,
                a: &host_a,
                d: &dd,
                norm_w: &nw,
                out_proj: &outp_h,
                out_proj_bias: None,
            };
            let dev = cuda::mamba2::GpuMamba2::new(&g, &host).unwrap();
            let mut st_cpu =
                MambaState::new(cd, k, h, cfg.mamba_head_dim, cfg.ssm_state_size, DType::F32);
            let mut st_gpu = dev.new_state::<f32>(&g).unwrap();
            // A prompt over several chunks with a ragged tail, then decode steps.
            for n in [3 * cfg.chunk_size + 5, 1, 1, 1] {
                let x = widen(&bf16s(&r.vec(n * hs, 1.0)));
                let mut want = vec![0f32; n * hs];
                if n == 1 {
                    cpu.step(&x, &mut st_cpu, &mut want);
                } else {
                    cpu.forward_chunked(&x, n, &mut st_cpu, &mut want);
                }
                let mut out = g.zeros::<f32>(n * hs).unwrap();
                dev.forward(&g, &up(&g, &bf16s(&x)), n, &mut st_gpu, &mut out)
                    .unwrap();
                let got = g.download(&out).unwrap();
                // The GPU rounds the normed y to bf16 before out_proj (the CPU keeps f32):
                // one bf16 rounding, so the bound is bf16's unit roundoff 2^-8.
                let e = rel_l2(&got, &want);
                assert!(
                    e <= 1.0 / 256.0,
                    "seed {s} {fixture} n {n}: relative L2 error {e}"
                );
                assert_close(
                    &format!("seed {s} {fixture} n {n} conv window"),
                    &g.download(&st_gpu.conv).unwrap(),
                    &st_cpu.conv_state,
                    1e-5,
                    1.0,
                );
            }
        }
    }

    #[test]
    fn launchers_reject_short_buffers_and_unsupported_shapes() {
        let Some(g) = gpu("bounds") else { return };
        let mut x = g.zeros::<f32>(10).unwrap();
        let w = g.zeros::<f32>(64).unwrap();
        let e = cuda::norm::rms_norm_residual(&g, &mut x, None, &w, None, None, 1, 64, 1e-5)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("`residual` holds 10 elements, the shape needs 64"),
            "{e}"
        );
        let e = GpuKvCache::new(&g, DType::BF16, 8, 2, 512, 4)
            .err()
            .unwrap();
        assert!(e.to_string().contains("head_dim 512"), "{e}");
        let sh = ScanShape {
            heads: 8,
            head_dim: 16,
            d_state: 512,
            n_groups: 2,
        };
        assert!(cuda::ssm::supports_scan(&sh, 128).is_err());
        assert!(cuda::conv1d::supports(64, 9, 1).is_err());
        let _ = fp8::E4M3_MAX;
    }
}
