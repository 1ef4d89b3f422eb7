//! The MoE mixer on the GPU (`model::cuda::moe_layer::GpuMoe`) against the CPU mixer
//! (`model::moe::Moe`), and its kernels (router, grouped GEMVs, gather, combine) against
//! plain CPU loops.
//!
//! Built with `--features cuda`. Without a usable GPU each GPU test prints `SKIP` and
//! returns; with `NEMO_REQUIRE_GPU=1` a missing GPU fails instead. The `supports` test
//! needs no GPU.
//!
//! Both sides load the same `WeightStore`, whose matrices are already bf16 (the GPU keeps
//! bf16) and whose router gate and bias are f32 (both sides keep f32), and both get the
//! same bf16-rounded inputs; what differs is only where the GPU rounds activations to
//! bf16 (see `bound`) and the f32 summation order. Routing compares ids exactly, so every
//! input row is drawn with a clear margin between the last chosen and the first unchosen
//! expert (and group): a near-tie, which summation order could flip, is redrawn.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::gpu::{assert_close, bf16s, gpu, rel_l2, seed, up, Rng};
    use half::bf16;
    use nemo::backend::cpu::moe::route;
    use nemo::backend::cuda::moe::{self, Experts};
    use nemo::backend::cuda::{self, Gpu};
    use nemo::backend::DType;
    use nemo::model::cuda::moe_layer::{GpuMoe, MoeBuffers, MoePath};
    use nemo::model::cuda::StoreWeights;
    use nemo::model::moe::{routing, Moe};
    use nemo::model::weights::{Tensor, WeightStore};
    use nemo::model::NemotronHConfig;
    use serde_json::json;

    /// Rounded to bf16 and widened back.
    fn rounded(v: &[f32]) -> Vec<f32> {
        v.iter().map(|x| bf16::from_f32(*x).to_f32()).collect()
    }

    const P: &str = "backbone.layers.1.mixer";

    /// One MoE configuration under test.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        experts: usize,
        top_k: usize,
        n_group: usize,
        topk_group: usize,
        hidden: usize,
        inter: usize,
        /// 0: no shared expert.
        shared: usize,
        latent: Option<usize>,
        stacked: bool,
        norm: bool,
        scale: f32,
    }

    fn config(c: &Case) -> NemotronHConfig {
        let mut v = nemo::model::synthetic::shape_config("tiny").unwrap();
        v["hidden_size"] = json!(c.hidden);
        v["hybrid_override_pattern"] = json!("ME");
        v["n_routed_experts"] = json!(c.experts);
        v["num_experts_per_tok"] = json!(c.top_k);
        v["n_group"] = json!(c.n_group);
        v["topk_group"] = json!(c.topk_group);
        v["moe_intermediate_size"] = json!(c.inter);
        v["moe_shared_expert_intermediate_size"] = json!(c.shared);
        v["norm_topk_prob"] = json!(c.norm);
        v["routed_scaling_factor"] = json!(c.scale);
        if let Some(l) = c.latent {
            v["moe_latent_size"] = json!(l);
        }
        NemotronHConfig::from_json(&v, std::path::Path::new("test config.json")).unwrap()
    }

    fn bf16_tensor(name: &str, shape: Vec<usize>, v: &[f32]) -> Tensor {
        let bytes = bf16s(v)
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect();
        Tensor::from_owned(name, DType::BF16, shape, bytes)
    }

    fn f32_tensor(name: &str, shape: Vec<usize>, v: &[f32]) -> Tensor {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Tensor::from_owned(name, DType::F32, shape, bytes)
    }

    /// Random weights for `c` (matrices bf16, gate and bias f32), scaled like a trained
    /// model (inputs √(3/in), outputs √(3/in)/4); also the gate and bias as the host has
    /// them, for choosing inputs away from routing ties.
    fn weights(c: &Case, r: &mut Rng) -> (WeightStore, Vec<f32>, Vec<f32>) {
        let (e, hs, mi) = (c.experts, c.hidden, c.inter);
        let inner = c.latent.unwrap_or(hs);
        let inv = |k: usize| (3.0 / k as f32).sqrt();
        let mut t = Vec::new();
        // Router logits of a few units: a spread of choices, not saturated.
        let gate = r.vec(e * hs, 4.5 / (hs as f32).sqrt());
        let bias = r.vec(e, 0.1);
        t.push(f32_tensor(&format!("{P}.gate.weight"), vec![e, hs], &gate));
        t.push(f32_tensor(
            &format!("{P}.gate.e_score_correction_bias"),
            vec![e],
            &bias,
        ));
        let ups: Vec<Vec<f32>> = (0..e).map(|_| r.vec(mi * inner, inv(inner))).collect();
        let downs: Vec<Vec<f32>> = (0..e).map(|_| r.vec(inner * mi, inv(mi) / 4.0)).collect();
        if c.stacked {
            t.push(bf16_tensor(
                &format!("{P}.experts.up_proj"),
                vec![e, mi, inner],
                &ups.concat(),
            ));
            t.push(bf16_tensor(
                &format!("{P}.experts.down_proj"),
                vec![e, inner, mi],
                &downs.concat(),
            ));
        } else {
            for j in 0..e {
                t.push(bf16_tensor(
                    &format!("{P}.experts.{j}.up_proj.weight"),
                    vec![mi, inner],
                    &ups[j],
                ));
                t.push(bf16_tensor(
                    &format!("{P}.experts.{j}.down_proj.weight"),
                    vec![inner, mi],
                    &downs[j],
                ));
            }
        }
        if c.shared > 0 {
            let si = c.shared;
            t.push(bf16_tensor(
                &format!("{P}.shared_experts.up_proj.weight"),
                vec![si, hs],
                &r.vec(si * hs, inv(hs)),
            ));
            t.push(bf16_tensor(
                &format!("{P}.shared_experts.down_proj.weight"),
                vec![hs, si],
                &r.vec(hs * si, inv(si) / 4.0),
            ));
        }
        if let Some(l) = c.latent {
            t.push(bf16_tensor(
                &format!("{P}.fc1_latent_proj.weight"),
                vec![l, hs],
                &r.vec(l * hs, inv(hs)),
            ));
            t.push(bf16_tensor(
                &format!("{P}.fc2_latent_proj.weight"),
                vec![hs, l],
                &r.vec(hs * l, inv(l)),
            ));
        }
        (WeightStore::from_tensors(t), gate, bias)
    }

    /// The smallest gap on which this token's routing depends: between the last kept and
    /// the first dropped group score, and between the last chosen and the first unchosen
    /// expert among the kept groups (the model's doc: group score = sum of its top 2).
    fn routing_margin(c: &Case, choice: &[f64]) -> f64 {
        let desc = |v: &mut Vec<f64>| v.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let per = c.experts / c.n_group;
        let mut margin = f64::INFINITY;
        let mut kept: Vec<f64> = choice.to_vec();
        if c.topk_group < c.n_group {
            let gs: Vec<f64> = (0..c.n_group)
                .map(|g| {
                    let mut v = choice[g * per..(g + 1) * per].to_vec();
                    desc(&mut v);
                    v.iter().take(2).sum()
                })
                .collect();
            let mut sorted = gs.clone();
            desc(&mut sorted);
            margin = margin.min(sorted[c.topk_group - 1] - sorted[c.topk_group]);
            let cut = sorted[c.topk_group - 1];
            kept.clear();
            for g in 0..c.n_group {
                if gs[g] >= cut {
                    kept.extend_from_slice(&choice[g * per..(g + 1) * per]);
                }
            }
        }
        desc(&mut kept);
        if kept.len() > c.top_k {
            margin = margin.min(kept[c.top_k - 1] - kept[c.top_k]);
        }
        margin
    }

    /// `n` input rows (bf16 values), each with a routing margin of at least 1e-3: the
    /// router's f32 logits differ between the sides by ~1e-6 (summation order), so no
    /// choice can flip.
    fn inputs(c: &Case, r: &mut Rng, gate: &[f32], bias: &[f32], n: usize) -> Vec<f32> {
        let hs = c.hidden;
        let mut x = Vec::with_capacity(n * hs);
        for _ in 0..n {
            let mut tries = 0;
            loop {
                let row = rounded(&r.vec(hs, 1.0));
                let choice: Vec<f64> = (0..c.experts)
                    .map(|j| {
                        let l: f64 = row
                            .iter()
                            .zip(&gate[j * hs..(j + 1) * hs])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        1.0 / (1.0 + (-l).exp()) + bias[j] as f64
                    })
                    .collect();
                if routing_margin(c, &choice) >= 1e-3 {
                    x.extend_from_slice(&row);
                    break;
                }
                tries += 1;
                assert!(tries < 1000, "no input row with a clear routing margin");
            }
        }
        x
    }

    /// bf16 unit roundoff (round to nearest, 8 significant bits).
    const U: f32 = 1.0 / 256.0;
    /// f32 accumulation in another order (a few × 2^-24 · √terms for our widths).
    const F32_ORDER: f32 = 3e-5;

    /// Relative L2 bound on one token's output row. Each bf16 rounding of an activation
    /// vector perturbs it by at most U relatively (per element, so in L2 as well); a
    /// linear map with weights independent of the rounding keeps that relative size,
    /// relu² doubles it, and separate roundings add. The GPU rounds, where the CPU keeps
    /// f32: the latent input (then relu²: 2U) and the routed sum before fc2 (U); on the
    /// grouped path the relu² output before down (U); the shared expert's relu² output (U).
    fn bound(c: &Case, path: MoePath) -> f32 {
        let mut units = 0.0;
        if c.latent.is_some() {
            units += 3.0;
        }
        if path == MoePath::Grouped {
            units += 1.0;
        }
        if c.shared > 0 {
            units += 1.0;
        }
        units * U + F32_ORDER
    }

    /// GpuMoe vs Moe on fresh inputs of each length in `ns`, on both paths: the chosen ids
    /// and weights (as the CPU op `backend::cpu::moe::route` gives them) and each token's
    /// output row.
    fn compare(g: &Gpu, c: &Case, ns: &[usize], s: u64) {
        let mut r = Rng::new(s);
        let cfg = config(c);
        let (store, gate, bias) = weights(c, &mut r);
        let cpu = Moe::load(&cfg, &store, P).unwrap();
        let dev = GpuMoe::load(g, &cfg, &mut StoreWeights(&store), P).unwrap();
        let max_n = ns.iter().copied().max().unwrap();
        let mut bufs = MoeBuffers::new(g, &cfg, max_n).unwrap();
        let (hs, e, k) = (c.hidden, c.experts, c.top_k);
        for &n in ns {
            let x = inputs(c, &mut r, &gate, &bias, n);
            let mut want = vec![0f32; n * hs];
            cpu.forward(&x, n, &mut want);
            let xd = up(g, &bf16s(&x));
            for path in [MoePath::Gemv, MoePath::Grouped] {
                let what = format!("seed {s} {c:?} n {n} {path:?}");
                let mut out = g.zeros::<f32>(n * hs).unwrap();
                dev.forward_with(g, &mut bufs, &xd, n, &mut out, path)
                    .unwrap();
                let got = g.download(&out).unwrap();
                let ids = g.download(&bufs.ids).unwrap();
                let wts = g.download(&bufs.weights).unwrap();
                for t in 0..n {
                    let xt = &x[t * hs..(t + 1) * hs];
                    let logits: Vec<f32> = (0..e)
                        .map(|j| {
                            xt.iter()
                                .zip(&gate[j * hs..(j + 1) * hs])
                                .map(|(a, b)| a * b)
                                .sum()
                        })
                        .collect();
                    let (mut rid, mut rw) = (vec![0u32; k], vec![0f32; k]);
                    route(&routing(&cfg), &logits, &bias, &mut rid, &mut rw, 1);
                    let mut route: Vec<(usize, f32)> = rid
                        .iter()
                        .zip(&rw)
                        .map(|(i, w)| (*i as usize, *w))
                        .collect();
                    let mut mine: Vec<(usize, f32)> = (0..k)
                        .map(|i| (ids[t * k + i] as usize, wts[t * k + i]))
                        .collect();
                    route.sort_by_key(|p| p.0);
                    mine.sort_by_key(|p| p.0);
                    for ((a, wa), (b, wb)) in mine.iter().zip(&route) {
                        assert_eq!(a, b, "{what} token {t}: ids {mine:?} vs {route:?}");
                        assert!(
                            (wa - wb).abs() <= 1e-5 * wb.abs().max(1.0),
                            "{what} token {t}: weight {wa} vs {wb}"
                        );
                    }
                    let e = rel_l2(&got[t * hs..(t + 1) * hs], &want[t * hs..(t + 1) * hs]);
                    let b = bound(c, path);
                    assert!(e <= b, "{what} token {t}: relative L2 error {e} > {b}");
                }
            }
        }
    }

    fn small(stacked: bool, shared: usize, latent: Option<usize>) -> Case {
        Case {
            experts: 16,
            top_k: 4,
            n_group: 4,
            topk_group: 2,
            hidden: 128,
            inter: 96,
            shared,
            latent,
            stacked,
            norm: true,
            scale: 2.5,
        }
    }

    #[test]
    fn moe_mixer_matches_the_cpu_per_expert_storage_without_shared_or_latent() {
        let Some(g) = gpu("moe mixer") else { return };
        let mut c = small(false, 0, None);
        c.n_group = 1;
        c.topk_group = 1;
        compare(&g, &c, &[1, 3, 37, 300], seed());
    }

    #[test]
    fn moe_mixer_matches_the_cpu_stacked_storage_with_shared_expert_and_group_routing() {
        let Some(g) = gpu("moe mixer") else { return };
        let mut c = small(true, 160, None);
        c.norm = false;
        c.scale = 1.0;
        compare(&g, &c, &[1, 3, 37, 300], seed());
    }

    #[test]
    fn moe_mixer_matches_the_cpu_with_latent_projection_and_shared_expert() {
        let Some(g) = gpu("moe mixer") else { return };
        compare(&g, &small(false, 160, Some(64)), &[1, 3, 37, 300], seed());
        compare(&g, &small(true, 0, Some(64)), &[1, 3, 37, 300], seed());
    }

    #[test]
    fn moe_mixer_matches_the_cpu_at_the_nano_30b_a3b_widths() {
        // Hidden 2688, experts 1856 wide, shared expert 3712, top-6, scale 2.5 (the
        // 30B-A3B layer) with 8 experts instead of 128 to keep the host side small.
        let Some(g) = gpu("moe mixer 30b widths") else {
            return;
        };
        let c = Case {
            experts: 8,
            top_k: 6,
            n_group: 1,
            topk_group: 1,
            hidden: 2688,
            inter: 1856,
            shared: 3712,
            latent: None,
            stacked: false,
            norm: true,
            scale: 2.5,
        };
        compare(&g, &c, &[1, 3, 37], seed());
    }

    #[test]
    fn moe_decode_replays_from_a_cuda_graph_with_new_inputs() {
        // The decode path captured once, replayed on new inputs: no host sync, allocation
        // or host-side routing decision can hide in it. `Gpu`'s stream is a created one
        // (capturable) and cuBLAS's handle is bound to it.
        let Some(g) = gpu("moe graph") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        let c = small(false, 160, Some(64));
        let cfg = config(&c);
        let (store, gate, bias) = weights(&c, &mut r);
        let cpu = Moe::load(&cfg, &store, P).unwrap();
        let dev = GpuMoe::load(&g, &cfg, &mut StoreWeights(&store), P).unwrap();
        let mut bufs = MoeBuffers::new(&g, &cfg, 1).unwrap();
        let hs = c.hidden;
        let mut xd = g.zeros::<bf16>(hs).unwrap();
        let mut out = g.zeros::<f32>(hs).unwrap();
        // One eager call first (loads the kernels, lets cuBLAS set itself up).
        dev.forward(&g, &mut bufs, &xd, 1, &mut out).unwrap();
        g.sync().unwrap();
        g.stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .unwrap();
        dev.forward(&g, &mut bufs, &xd, 1, &mut out).unwrap();
        let graph = g
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .unwrap()
            .expect("a captured graph");
        for step in 0..3 {
            let x = inputs(&c, &mut r, &gate, &bias, 1);
            g.stream.memcpy_htod(&bf16s(&x), &mut xd).unwrap();
            graph.launch().unwrap();
            let got = g.download(&out).unwrap();
            let mut want = vec![0f32; hs];
            cpu.forward(&x, 1, &mut want);
            let e = rel_l2(&got, &want);
            let b = bound(&c, MoePath::Gemv);
            assert!(e <= b, "seed {s} step {step}: relative L2 error {e} > {b}");
        }
    }

    #[test]
    fn router_kernel_matches_a_plain_loop() {
        let Some(g) = gpu("moe router") else { return };
        let s = seed();
        let mut r = Rng::new(s);
        // Ragged: 9 tokens (groups of 4), 13 experts (warps of 4).
        for (n, e, hs) in [(1, 128, 2688), (9, 13, 64), (37, 16, 128)] {
            let x = rounded(&r.vec(n * hs, 1.0));
            let gate = r.vec(e * hs, 0.1);
            let mut logits = g.zeros::<f32>(n * e).unwrap();
            moe::router(
                &g,
                &up(&g, &bf16s(&x)),
                &up(&g, &gate),
                &mut logits,
                n,
                e,
                hs,
            )
            .unwrap();
            let got = g.download(&logits).unwrap();
            let mut want = vec![0f32; n * e];
            for t in 0..n {
                for j in 0..e {
                    want[t * e + j] = (0..hs)
                        .map(|c| x[t * hs + c] as f64 * gate[j * hs + c] as f64)
                        .sum::<f64>() as f32;
                }
            }
            assert_close(
                &format!("seed {s} router {n}×{e}×{hs}"),
                &got,
                &want,
                1e-5,
                1.0,
            );
        }
    }

    #[test]
    fn grouped_gemv_kernels_match_a_plain_loop() {
        let Some(g) = gpu("moe grouped gemv") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        // Ragged row groups (inter 40, inner 24: fewer 8-wide chunks than lanes), repeated
        // ids (a token may even pick one expert twice here), and the 30B-A3B widths (with
        // 8 experts, to keep the host copies small).
        for (n, experts, top_k, inter, inner) in
            [(4, 5, 3, 40, 24), (3, 8, 6, 1856, 2688), (16, 7, 2, 8, 8)]
        {
            let x = rounded(&r.vec(n * inner, 1.0));
            let upw = rounded(&r.vec(experts * inter * inner, (3.0 / inner as f32).sqrt()));
            let downw = rounded(&r.vec(experts * inner * inter, (3.0 / inter as f32).sqrt()));
            let ids: Vec<u32> = (0..n * top_k).map(|_| r.below(experts) as u32).collect();
            let wts = r.vec(n * top_k, 1.0);
            let sh = Experts {
                experts,
                top_k,
                inter,
                inner,
            };
            // Up + relu², against f64 loops.
            let mut hd = g.zeros::<f32>(n * top_k * inter).unwrap();
            let ids_d = up(&g, &ids);
            let upd = up(&g, &bf16s(&upw));
            moe::up_gemv(&g, &sh, &up(&g, &bf16s(&x)), &upd, &ids_d, &mut hd, n).unwrap();
            let mut h = vec![0f32; n * top_k * inter];
            for p in 0..n * top_k {
                let (t, e) = (p / top_k, ids[p] as usize);
                for row in 0..inter {
                    let w = &upw[(e * inter + row) * inner..(e * inter + row + 1) * inner];
                    let d: f64 = (0..inner)
                        .map(|c| w[c] as f64 * x[t * inner + c] as f64)
                        .sum();
                    h[p * inter + row] = (d.max(0.0) * d.max(0.0)) as f32;
                }
            }
            let what = format!("seed {s} n {n} {experts}×{inter}×{inner} top {top_k}");
            assert_close(
                &format!("{what} up"),
                &g.download(&hd).unwrap(),
                &h,
                1e-5,
                1e-3,
            );
            // Down per pair on the loop's h (independent of the up kernel), then the
            // weighted sum over each token's picks.
            let mut ys = g.zeros::<f32>(n * top_k * inner).unwrap();
            moe::down_gemv(
                &g,
                &sh,
                &up(&g, &h),
                &up(&g, &bf16s(&downw)),
                &ids_d,
                &mut ys,
                n,
            )
            .unwrap();
            let mut want_ys = vec![0f32; n * top_k * inner];
            for p in 0..n * top_k {
                let e = ids[p] as usize;
                for row in 0..inner {
                    let w = &downw[(e * inner + row) * inter..(e * inner + row + 1) * inter];
                    want_ys[p * inner + row] = (0..inter)
                        .map(|c| w[c] as f64 * h[p * inter + c] as f64)
                        .sum::<f64>() as f32;
                }
            }
            let got_ys = g.download(&ys).unwrap();
            assert_close(&format!("{what} down"), &got_ys, &want_ys, 1e-5, 1e-3);
            let mut out = g.zeros::<f32>(n * inner).unwrap();
            let mut out_b = g.zeros::<bf16>(n * inner).unwrap();
            moe::combine(
                &g,
                &ys,
                n * top_k,
                None,
                &up(&g, &wts),
                &mut out,
                Some(&mut out_b),
                n,
                top_k,
                inner,
            )
            .unwrap();
            let mut want = vec![0f32; n * inner];
            for t in 0..n {
                for row in 0..inner {
                    want[t * inner + row] = (0..top_k)
                        .map(|k| {
                            let p = t * top_k + k;
                            wts[p] as f64 * got_ys[p * inner + row] as f64
                        })
                        .sum::<f64>() as f32;
                }
            }
            let got = g.download(&out).unwrap();
            assert_close(&format!("{what} combine"), &got, &want, 1e-6, 1e-3);
            let got_b: Vec<f32> = g
                .download(&out_b)
                .unwrap()
                .iter()
                .map(|v| v.to_f32())
                .collect();
            assert_eq!(
                got_b,
                rounded(&got),
                "{what}: the bf16 copy is the rounding of out"
            );
        }
    }

    #[test]
    fn gather_and_combine_kernels_match_a_plain_loop() {
        let Some(g) = gpu("moe gather/combine") else {
            return;
        };
        let s = seed();
        let mut r = Rng::new(s);
        let (n, top_k, dim) = (11, 3, 40);
        let x = rounded(&r.vec(n * dim, 1.0));
        let count = n * top_k;
        let rows: Vec<u32> = (0..count).map(|_| r.below(n) as u32).collect();
        let mut xs = g.zeros::<bf16>(count * dim).unwrap();
        moe::gather_rows(
            &g,
            &up(&g, &bf16s(&x)),
            n,
            &up(&g, &rows),
            &mut xs,
            count,
            dim,
        )
        .unwrap();
        let got: Vec<f32> = g
            .download(&xs)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let want: Vec<f32> = rows
            .iter()
            .flat_map(|&t| x[t as usize * dim..(t as usize + 1) * dim].to_vec())
            .collect();
        assert_eq!(got, want, "seed {s}: gathered rows");
        let ys_rows = 50;
        let ys = r.vec(ys_rows * dim, 1.0);
        let pos: Vec<u32> = (0..count).map(|_| r.below(ys_rows) as u32).collect();
        let wts = r.vec(count, 1.0);
        let mut out = g.zeros::<f32>(n * dim).unwrap();
        moe::combine(
            &g,
            &up(&g, &ys),
            ys_rows,
            Some(&up(&g, &pos)),
            &up(&g, &wts),
            &mut out,
            None,
            n,
            top_k,
            dim,
        )
        .unwrap();
        let mut want = vec![0f32; n * dim];
        for t in 0..n {
            for c in 0..dim {
                want[t * dim + c] = (0..top_k)
                    .map(|k| {
                        let p = t * top_k + k;
                        wts[p] as f64 * ys[pos[p] as usize * dim + c] as f64
                    })
                    .sum::<f64>() as f32;
            }
        }
        assert_close(
            &format!("seed {s}: combine"),
            &g.download(&out).unwrap(),
            &want,
            1e-6,
            1.0,
        );
    }

    #[test]
    fn moe_forward_rejects_more_tokens_than_planned_and_short_buffers() {
        let Some(g) = gpu("moe bounds") else { return };
        let mut r = Rng::new(seed());
        let c = small(false, 0, None);
        let cfg = config(&c);
        let (store, _, _) = weights(&c, &mut r);
        let dev = GpuMoe::load(&g, &cfg, &mut StoreWeights(&store), P).unwrap();
        let mut bufs = MoeBuffers::new(&g, &cfg, 4).unwrap();
        let x = g.zeros::<bf16>(8 * c.hidden).unwrap();
        let mut out = g.zeros::<f32>(8 * c.hidden).unwrap();
        let e = dev.forward(&g, &mut bufs, &x, 5, &mut out).unwrap_err();
        assert!(
            e.to_string().contains("5 tokens, buffers planned for 4"),
            "{e}"
        );
        let mut short = g.zeros::<f32>(c.hidden).unwrap();
        let e = dev.forward(&g, &mut bufs, &x, 2, &mut short).unwrap_err();
        assert!(e.to_string().contains("buffer `out`"), "{e}");
        // Buffers of another MoE shape are refused, not read out of bounds.
        let other = config(&small(false, 0, Some(64)));
        let mut wrong = MoeBuffers::new(&g, &other, 4).unwrap();
        let e = dev.forward(&g, &mut wrong, &x, 1, &mut out).unwrap_err();
        assert!(e.to_string().contains("another MoE shape"), "{e}");
    }

    #[test]
    fn moe_shapes_of_nano_30b_a3b_are_supported_and_bad_ones_are_refused() {
        // No GPU needed: `supports` is the shape check the model load runs first.
        let v = nemo::model::synthetic::shape_config("nano-30b-a3b").unwrap();
        let cfg = NemotronHConfig::from_json(&v, std::path::Path::new("nano-30b-a3b")).unwrap();
        GpuMoe::supports(&cfg).unwrap();
        let mut bad = cfg.clone();
        bad.moe_intermediate_size = 1850;
        let e = GpuMoe::supports(&bad).unwrap_err().to_string();
        assert!(
            e.contains("moe_intermediate_size 1850 (a multiple of 8)"),
            "{e}"
        );
        let mut bad = cfg.clone();
        bad.moe_latent_size = Some(30000);
        let e = GpuMoe::supports(&bad).unwrap_err().to_string();
        assert!(e.contains("expert width 30000"), "{e}");
        let mut bad = cfg;
        bad.num_experts_per_tok = 40;
        assert!(matches!(
            GpuMoe::supports(&bad),
            Err(cuda::CudaError::Unsupported { .. })
        ));
    }
}
