//! The whole Nemotron-H forward on the GPU (`model::cuda::nemotron_h`) against the CPU
//! model (`model::NemotronH`) on the dense tiny fixtures, for every cache dtype, for a
//! prompt fed in several prefill chunks and for decode steps after it; and on the MoE
//! fixtures (with and without the latent projection) with their routing pinned (see
//! `moe_fixture`).
//!
//! The CPU reference runs the same bf16 weights as the GPU: every 2-D tensor (the
//! projections, the embedding table, the LM head — exactly the tensors the GPU keeps in
//! bf16) is rounded to bf16 the way the upload rounds it, the rest (norms, conv, A, D,
//! dt_bias) stays as stored on both sides. The GPU itself loads the original files, so the
//! upload's rounding is checked too.
//!
//! Bound (relative L2 error over all compared logits), and why:
//! - The GPU rounds each GEMM's input activations to bf16 (the normed residual, the gated
//!   y, the attention output, relu²'s output, the final norm); the CPU keeps them f32. That
//!   is one bf16 rounding per GEMM operand, the same count and size as rounding every
//!   weight to bf16, which moves these fixtures' logits by 6.7e-3 to 7.2e-3 relative L2
//!   (measured on the CPU: original vs bf16-rounded weights, tiny and f16 fixtures). The
//!   bound is 2^-6 = 1.56e-2, about twice that.
//! - A rounded cache (bf16/f16 SSM state, FP8 KV) is rounded on both sides, but from
//!   inputs that differ by ~2^-8: an element near a rounding boundary rounds the other way
//!   with probability ~2^-8/u, so the per-element RMS difference is √(2^-8·u). That term is
//!   added for the SSM state (u = 2^-8 bf16, 2^-11 f16) and for the KV cache (u = 2^-4
//!   e4m3, 2^-3 e5m2, 2^-8 bf16).
//!
//! The decode step as a CUDA graph is checked against the same step run eagerly
//! (`set_cuda_graph(false)`): the graph replays the very kernels the eager step launches,
//! with the same arguments, in the same order, on the same buffers (the position, token
//! and draw args are read on the device in both), and none of them depends on timing
//! (the only float atomics, in the sampler's top-k/top-p histogram, are not on the greedy
//! path; cuBLAS is deterministic for a given handle, workspace and shape). So logits and
//! ids must be equal bit for bit, not within a bound.
//!
//! Without a usable GPU each test prints `SKIP` and returns; `NEMO_REQUIRE_GPU=1` makes
//! that a failure (scripts/gpu-check.sh sets it).

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

/// `nemo bench --device cuda` on a GPU: every figure is there and positive. Elsewhere
/// (no GPU, no driver, a build without CUDA): exit 1 with one line saying why, nothing on
/// stdout.
#[test]
fn bench_on_cuda_reports_every_figure_or_says_in_one_line_why_not() {
    let out = common::nemo_command()
        .args([
            "bench",
            "--device",
            "cuda",
            "--shape",
            "tiny",
            "--gen-tokens",
            "4",
            "--runs",
            "1",
            "--json",
        ])
        .env_remove("NEMO_MODEL")
        .env_remove("NEMO_DEVICE")
        .env_remove("NEMO_CUDA_GRAPH")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let usable = cfg!(feature = "cuda") && nemo::backend::cuda::probe().is_ok();
    if !usable {
        if std::env::var("NEMO_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("NEMO_REQUIRE_GPU=1 but no usable GPU: {err}");
        }
        assert_eq!(out.status.code(), Some(1), "stderr: {err}");
        assert!(out.stdout.is_empty());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.starts_with("nemo: --device cuda: "), "{err}");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pos = |x: &serde_json::Value| x.as_f64().is_some_and(|f| f > 0.0 && f.is_finite());
    let ttft = v["ttft"].as_array().unwrap();
    let sizes: Vec<u64> = ttft
        .iter()
        .map(|t| t["prompt_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(&sizes[..2], &[128, 1024], "{v}");
    assert!(ttft.iter().all(|t| pos(&t["ttft_ms"])), "{v}");
    let d = &v["decode"][0];
    assert_eq!(d["context"].as_u64(), Some(1024), "{v}");
    assert_eq!(d["steps"].as_u64(), Some(4), "{v}");
    for k in [
        "ms_p50",
        "ms_p99",
        "tokens_per_s",
        "eager_tokens_per_s",
        "eager_ms_p50",
        "bytes_per_token",
        "achieved_gb_s",
    ] {
        assert!(pos(&d[k]), "decode {k}: {v}");
    }
    assert_eq!(d["eager_steps"].as_u64(), Some(4), "{v}");
    assert_eq!(d["cuda_graph"].as_bool(), Some(true), "{v}");
    for k in [
        "weights_device_bytes",
        "device_memory_peak_bytes",
        "copy_bandwidth_gb_s",
    ] {
        assert!(pos(&v[k]), "{k}: {v}");
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::gpu::{bf16_reference, gpu, model_bound, rel_l2};
    use nemo::backend::cuda::sampling::SampleArgs;
    use nemo::backend::cuda::Gpu;
    use nemo::backend::DType;
    use nemo::model::cuda::{GpuNemotronH, GpuSession, Plan, RandomWeights, StoreWeights};
    use nemo::model::weights::{Tensor, WeightStore};
    use nemo::model::{Logits, NemotronH, NemotronHConfig};
    use nemo::state::CacheConfig;

    const DENSE: [&str; 3] = ["nemotron_h_tiny", "nemotron_h_bf16", "nemotron_h_f16"];

    struct Fixture {
        name: &'static str,
        cfg: NemotronHConfig,
        /// As stored.
        store: WeightStore,
        /// The CPU reference: 2-D tensors rounded to bf16.
        cpu: NemotronH,
    }

    fn fixture(name: &'static str) -> Fixture {
        let (cfg, store, cpu) = bf16_reference(name, |_, t| t, |_| false);
        Fixture {
            name,
            cfg,
            store,
            cpu,
        }
    }

    fn caches() -> Vec<CacheConfig> {
        let mut v = vec![];
        for ssm in [DType::F32, DType::F16, DType::BF16] {
            for kv in [DType::BF16, DType::F8E4M3, DType::F8E5M2] {
                v.push(CacheConfig {
                    ssm_dtype: ssm,
                    kv_dtype: kv,
                });
            }
        }
        v
    }

    /// Every SSM state dtype with every KV cache dtype.
    fn all_caches() -> Vec<CacheConfig> {
        let mut v = vec![];
        for ssm in [DType::F32, DType::F16, DType::BF16] {
            for kv in [
                DType::F32,
                DType::F16,
                DType::BF16,
                DType::F8E4M3,
                DType::F8E5M2,
            ] {
                v.push(CacheConfig {
                    ssm_dtype: ssm,
                    kv_dtype: kv,
                });
            }
        }
        v
    }

    /// Pseudo-random ids below `vocab`.
    fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
        nemo::model::synthetic::token_ids(seed | 1, n, vocab)
    }

    #[test]
    fn prompt_logits_match_the_cpu_model_at_every_position_for_every_cache_dtype() {
        let Some(g) = gpu("gpu prefill") else { return };
        for name in DENSE {
            let f = fixture(name);
            let model = GpuNemotronH::load(&g, &f.cfg, &mut StoreWeights(&f.store)).unwrap();
            // Several prefill chunks, each cutting a Mamba chunk in the middle, and a ragged tail.
            let chunk = f.cfg.chunk_size + 3;
            let prompt = ids(3 * chunk + 5, f.cfg.vocab_size, 7);
            for cache in caches() {
                let mut st = f.cpu.new_state(cache);
                let want = f.cpu.forward(&prompt, &mut st, Logits::All).unwrap();
                let plan = Plan {
                    max_context: prompt.len() + 4,
                    prefill_chunk: chunk,
                };
                let mut s = model.new_session(&g, cache, plan).unwrap();
                let got = model.forward(&g, &mut s, &prompt, Logits::All).unwrap();
                assert_eq!(s.len(), prompt.len());
                let e = rel_l2(&got, &want);
                let b = model_bound(cache);
                eprintln!(
                    "{} ssm {} kv {}: prompt relative L2 {e:.2e} (bound {b:.2e})",
                    f.name, cache.ssm_dtype, cache.kv_dtype
                );
                assert!(
                    e <= b,
                    "{} ssm {} kv {}: relative L2 {e} > {b}",
                    f.name,
                    cache.ssm_dtype,
                    cache.kv_dtype
                );
            }
        }
    }

    /// An MoE fixture for the whole-model comparison: every router's
    /// `e_score_correction_bias` is replaced by 2·j for expert j, so the choice (score in
    /// (0, 1) + bias) is decided by the bias alone and no activation rounding can flip it
    /// (a flipped expert would be an O(1) difference, not a rounding one). The routing
    /// kernel on random, unpinned inputs is tested in tests/cuda_moe.rs. The routing
    /// weights still come from the input-dependent scores. Returns the store the GPU
    /// loads (as stored, bias pinned) and the CPU reference (2-D tensors rounded to bf16
    /// except the router gate, which both sides keep in f32).
    fn moe_fixture(name: &str) -> (NemotronHConfig, WeightStore, NemotronH) {
        let pin = |tname: &str, t: Tensor| {
            if !tname.ends_with(".gate.e_score_correction_bias") {
                return t;
            }
            let e = t.shape[0];
            let b: Vec<u8> = (0..e)
                .flat_map(|j| (2.0 * j as f32).to_le_bytes())
                .collect();
            Tensor::from_owned(tname, DType::F32, vec![e], b)
        };
        bf16_reference(name, pin, |tname| tname.ends_with(".gate.weight"))
    }

    #[test]
    fn moe_models_match_the_cpu_model_in_prompt_chunks_and_decode_steps() {
        let Some(g) = gpu("gpu moe model") else {
            return;
        };
        for name in ["nemotron_h_moe", "nemotron_h_moe_latent"] {
            let (cfg, store, cpu) = moe_fixture(name);
            let model = GpuNemotronH::load(&g, &cfg, &mut StoreWeights(&store)).unwrap();
            // Chunks of 40 take the MoE prompt path (per-expert GEMMs), the 5-token tail
            // and the decode steps the GEMV path the decode graph captures.
            let tokens = ids(2 * 40 + 5 + 12, cfg.vocab_size, 13);
            let (prompt, steps) = tokens.split_at(85);
            for cache in [
                CacheConfig {
                    ssm_dtype: DType::F32,
                    kv_dtype: DType::BF16,
                },
                CacheConfig {
                    ssm_dtype: DType::BF16,
                    kv_dtype: DType::F8E4M3,
                },
            ] {
                let mut st = cpu.new_state(cache);
                let mut want = cpu.forward(prompt, &mut st, Logits::All).unwrap();
                let plan = Plan {
                    max_context: tokens.len(),
                    prefill_chunk: 40,
                };
                let mut s = model.new_session(&g, cache, plan).unwrap();
                let mut got = model.forward(&g, &mut s, prompt, Logits::All).unwrap();
                for t in steps {
                    want.extend(cpu.forward(&[*t], &mut st, Logits::Last).unwrap());
                    got.extend(model.forward(&g, &mut s, &[*t], Logits::Last).unwrap());
                }
                let e = rel_l2(&got, &want);
                let b = model_bound(cache);
                eprintln!(
                    "{name} ssm {} kv {}: relative L2 {e:.2e} (bound {b:.2e})",
                    cache.ssm_dtype, cache.kv_dtype
                );
                assert!(
                    e <= b,
                    "{name} ssm {} kv {}: relative L2 {e} > {b}",
                    cache.ssm_dtype,
                    cache.kv_dtype
                );
            }
        }
    }

    #[test]
    fn decode_steps_after_a_prompt_match_the_cpu_model_for_every_cache_dtype() {
        let Some(g) = gpu("gpu decode") else { return };
        for name in DENSE {
            let f = fixture(name);
            let model = GpuNemotronH::load(&g, &f.cfg, &mut StoreWeights(&f.store)).unwrap();
            let tokens = ids(30, f.cfg.vocab_size, 11);
            let (prompt, steps) = tokens.split_at(20);
            for cache in caches() {
                let mut st = f.cpu.new_state(cache);
                let mut want = f.cpu.forward(prompt, &mut st, Logits::Last).unwrap();
                let plan = Plan {
                    max_context: tokens.len(),
                    prefill_chunk: 8,
                };
                let mut s = model.new_session(&g, cache, plan).unwrap();
                let mut got = model.forward(&g, &mut s, prompt, Logits::Last).unwrap();
                for t in steps {
                    want.extend(f.cpu.forward(&[*t], &mut st, Logits::Last).unwrap());
                    got.extend(model.forward(&g, &mut s, &[*t], Logits::Last).unwrap());
                }
                assert_eq!(s.len(), tokens.len());
                let e = rel_l2(&got, &want);
                let b = model_bound(cache);
                eprintln!(
                    "{} ssm {} kv {}: decode relative L2 {e:.2e} (bound {b:.2e})",
                    f.name, cache.ssm_dtype, cache.kv_dtype
                );
                assert!(
                    e <= b,
                    "{} ssm {} kv {}: relative L2 {e} > {b}",
                    f.name,
                    cache.ssm_dtype,
                    cache.kv_dtype
                );
            }
        }
    }

    #[test]
    fn greedy_sampling_on_the_device_returns_the_argmax_of_the_logits() {
        let Some(g) = gpu("gpu greedy") else { return };
        let f = fixture("nemotron_h_tiny");
        let model = GpuNemotronH::load(&g, &f.cfg, &mut StoreWeights(&f.store)).unwrap();
        let prompt = ids(12, f.cfg.vocab_size, 5);
        let plan = Plan {
            max_context: 16,
            prefill_chunk: 16,
        };
        let cache = CacheConfig::default();
        let greedy = SampleArgs::from(&nemo::protocol::SamplingParams::default());
        let mut a = model.new_session(&g, cache, plan).unwrap();
        let mut b = model.new_session(&g, cache, plan).unwrap();
        let logits = model.forward(&g, &mut a, &prompt, Logits::Last).unwrap();
        model.forward_keep(&g, &mut b, &prompt).unwrap();
        let id = model.draw(&g, &mut b, &greedy, &[], 0.5).unwrap();
        let best = argmax(&logits);
        assert_eq!(
            id, best,
            "logit {} vs {}",
            logits[id as usize], logits[best as usize]
        );
    }

    /// The first index of the largest logit.
    fn argmax(logits: &[f32]) -> u32 {
        logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |m, (i, &v)| if v > m.1 { (i, v) } else { m },
            )
            .0 as u32
    }

    /// Bitwise equality of two logit vectors, naming the first difference.
    fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            panic!(
                "{what}: logit {i} is {} replayed, {} eager",
                got[i], want[i]
            );
        }
    }

    #[test]
    fn graph_replay_gives_the_eager_logits_bit_for_bit_for_every_cache_dtype() {
        let Some(g) = gpu("gpu graph logits") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let model = GpuNemotronH::load(&g, &f.cfg, &mut StoreWeights(&f.store)).unwrap();
            let tokens = ids(37, f.cfg.vocab_size, 13);
            let (prompt, steps) = tokens.split_at(12);
            let plan = Plan {
                max_context: tokens.len(),
                prefill_chunk: 8,
            };
            for cache in all_caches() {
                let mut graph = model.new_session(&g, cache, plan).unwrap();
                let mut eager = model.new_session(&g, cache, plan).unwrap();
                graph.set_cuda_graph(true);
                eager.set_cuda_graph(false);
                let a = model.forward(&g, &mut graph, prompt, Logits::Last).unwrap();
                let b = model.forward(&g, &mut eager, prompt, Logits::Last).unwrap();
                let what = format!("{name} ssm {} kv {}", cache.ssm_dtype, cache.kv_dtype);
                assert_bitwise(&format!("{what} prompt"), &a, &b);
                // 25 decode steps: the first eager (warm-up), the second captured, the
                // rest replayed.
                for (i, t) in steps.iter().enumerate() {
                    let a = model.forward(&g, &mut graph, &[*t], Logits::Last).unwrap();
                    let b = model.forward(&g, &mut eager, &[*t], Logits::Last).unwrap();
                    assert_bitwise(&format!("{what} decode step {i}"), &a, &b);
                }
                assert_eq!(graph.len(), tokens.len());
                assert_eq!(eager.len(), tokens.len());
            }
        }
    }

    /// Greedy generation the way `CudaSequence` does it: `forward_keep` of the last id (the
    /// device drew it into the decode step's input, so nothing is uploaded), then the
    /// device draw with the bans in its args. Replayed and eager ids are equal, no banned
    /// id is drawn, and the ids are the host's argmax of downloaded logits fed back by
    /// upload (the step really read the drawn id); a token other than the drawn one is
    /// uploaded (the step reads it, not the drawn id).
    #[test]
    fn greedy_device_draws_fed_back_give_the_eager_ids_and_the_host_argmax() {
        let Some(g) = gpu("gpu graph greedy") else {
            return;
        };
        let greedy = SampleArgs::from(&nemo::protocol::SamplingParams::default());
        for name in DENSE {
            let f = fixture(name);
            let model = GpuNemotronH::load(&g, &f.cfg, &mut StoreWeights(&f.store)).unwrap();
            let prompt = ids(10, f.cfg.vocab_size, 17);
            let steps = 24;
            let plan = Plan {
                max_context: prompt.len() + steps + 1,
                prefill_chunk: 16,
            };
            for cache in all_caches() {
                let what = format!("{name} ssm {} kv {}", cache.ssm_dtype, cache.kv_dtype);
                let run = |graph: bool, banned: &[u32]| -> Vec<u32> {
                    let mut s = model.new_session(&g, cache, plan).unwrap();
                    s.set_cuda_graph(graph);
                    model.forward_keep(&g, &mut s, &prompt).unwrap();
                    let mut out = vec![model.draw(&g, &mut s, &greedy, &[], 0.5).unwrap()];
                    for _ in 0..steps {
                        let prev = out[out.len() - 1];
                        model.forward_keep(&g, &mut s, &[prev]).unwrap();
                        out.push(model.draw(&g, &mut s, &greedy, banned, 0.5).unwrap());
                    }
                    out
                };
                let free = run(true, &[]);
                assert_eq!(free, run(false, &[]), "{what}");
                // The host's argmax, every token uploaded (nothing was drawn on the device).
                let mut s = model.new_session(&g, cache, plan).unwrap();
                let mut host = vec![argmax(
                    &model.forward(&g, &mut s, &prompt, Logits::Last).unwrap(),
                )];
                for _ in 0..steps {
                    let prev = host[host.len() - 1];
                    host.push(argmax(
                        &model.forward(&g, &mut s, &[prev], Logits::Last).unwrap(),
                    ));
                }
                assert_eq!(free, host, "{what}: device draws fed back vs host argmax");
                // Ban the first ids the unbanned run drew after the prompt (the first of
                // them must then change): bans ride in the device args.
                let mut banned: Vec<u32> = vec![];
                for id in &free[1..] {
                    if banned.len() < 3 && !banned.contains(id) {
                        banned.push(*id);
                    }
                }
                let replayed = run(true, &banned);
                let eager = run(false, &banned);
                assert_eq!(replayed, eager, "{what} banned {banned:?}");
                assert!(
                    eager[1..].iter().all(|id| !banned.contains(id)),
                    "{what}: a banned id was drawn: {eager:?} {banned:?}"
                );
                // After a draw, another token (as a forced one) is uploaded and read.
                let other = (free[0] + 1) % f.cfg.vocab_size as u32;
                let mut a = model.new_session(&g, cache, plan).unwrap();
                model.forward_keep(&g, &mut a, &prompt).unwrap();
                model.draw(&g, &mut a, &greedy, &[], 0.5).unwrap();
                let got = model.forward(&g, &mut a, &[other], Logits::Last).unwrap();
                let mut b = model.new_session(&g, cache, plan).unwrap();
                model.forward(&g, &mut b, &prompt, Logits::None).unwrap();
                let want = model.forward(&g, &mut b, &[other], Logits::Last).unwrap();
                assert_bitwise(&format!("{what}: token {other} after a draw"), &got, &want);
            }
        }
    }

    #[test]
    fn device_draw_refuses_penalties_and_feeding_refuses_ids_outside_the_vocabulary() {
        let Some(g) = gpu("gpu sampling refusals") else {
            return;
        };
        let f = fixture("nemotron_h_tiny");
        let model = GpuNemotronH::load(&g, &f.cfg, &mut StoreWeights(&f.store)).unwrap();
        let plan = Plan {
            max_context: 16,
            prefill_chunk: 8,
        };
        let mut s = model.new_session(&g, CacheConfig::default(), plan).unwrap();
        let prompt = ids(4, f.cfg.vocab_size, 29);
        model.forward_keep(&g, &mut s, &prompt).unwrap();
        let greedy = SampleArgs::from(&nemo::protocol::SamplingParams::default());
        let penalised = SampleArgs {
            repetition_penalty: 1.2,
            ..greedy
        };
        let e = model
            .draw(&g, &mut s, &penalised, &[], 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("penalties need the token history"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert_eq!(s.len(), prompt.len());
        let e = model
            .forward_keep(&g, &mut s, &[f.cfg.vocab_size as u32])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        // Neither refusal fed anything.
        assert_eq!(s.len(), prompt.len());
    }

    /// A model with attention and MLP layers only (random weights at the `tiny` shape): no
    /// Mamba state, so rewinding the KV caches is all a rewind needs.
    fn attention_only_model(g: &Gpu) -> GpuNemotronH {
        let mut v = nemo::model::synthetic::shape_config("tiny").unwrap();
        v["hybrid_override_pattern"] = serde_json::json!("*-*-");
        let cfg = NemotronHConfig::from_json(&v, std::path::Path::new("tiny")).unwrap();
        GpuNemotronH::load(g, &cfg, &mut RandomWeights::new()).unwrap()
    }

    #[test]
    fn rewind_then_refeed_gives_the_first_logits_again() {
        let Some(g) = gpu("gpu rewind") else { return };
        let model = attention_only_model(&g);
        let vocab = model.config.vocab_size;
        let tokens = ids(40, vocab, 23);
        let (prompt, rest) = tokens.split_at(17);
        let (chunk, steps) = rest.split_at(9);
        let plan = Plan {
            max_context: tokens.len(),
            prefill_chunk: 8,
        };
        for kv in [DType::BF16, DType::F8E4M3, DType::F8E5M2, DType::F32] {
            let cache = CacheConfig {
                ssm_dtype: DType::F32,
                kv_dtype: kv,
            };
            for graph in [true, false] {
                let mut s = model.new_session(&g, cache, plan).unwrap();
                s.set_cuda_graph(graph);
                let feed = |s: &mut GpuSession| {
                    let mut out = model.forward(&g, s, chunk, Logits::All).unwrap();
                    for t in steps {
                        out.extend(model.forward(&g, s, &[*t], Logits::Last).unwrap());
                    }
                    out
                };
                model.forward(&g, &mut s, prompt, Logits::None).unwrap();
                let first = feed(&mut s);
                assert_eq!(s.len(), tokens.len());
                s.rewind(&g, prompt.len()).unwrap();
                assert_eq!(s.len(), prompt.len());
                let again = feed(&mut s);
                assert_bitwise(&format!("kv {kv} graph {graph}"), &again, &first);
                // Forward past what is held is refused.
                assert!(s.rewind(&g, tokens.len() + 1).is_err());
            }
        }
    }

    #[test]
    fn a_session_refuses_positions_past_its_context_and_resets_to_empty() {
        let Some(g) = gpu("gpu context") else { return };
        let f = fixture("nemotron_h_tiny");
        let model = GpuNemotronH::load(&g, &f.cfg, &mut StoreWeights(&f.store)).unwrap();
        let plan = Plan {
            max_context: 8,
            prefill_chunk: 4,
        };
        let mut s = model.new_session(&g, CacheConfig::default(), plan).unwrap();
        let prompt = ids(6, f.cfg.vocab_size, 3);
        let first = model.forward(&g, &mut s, &prompt, Logits::Last).unwrap();
        let e = model
            .forward(&g, &mut s, &prompt, Logits::Last)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceed the session's context of 8"), "{e}");
        s.reset(&g).unwrap();
        assert!(s.is_empty());
        let again = model.forward(&g, &mut s, &prompt, Logits::Last).unwrap();
        assert_eq!(
            first, again,
            "after reset the same prompt gives the same logits"
        );
    }

    #[test]
    fn fp8_weights_are_refused_with_one_line() {
        let Some(g) = gpu("gpu fp8 weights") else {
            return;
        };
        let dir = super::common::fixture("nemotron_h_tiny_fp8");
        let cfg = NemotronHConfig::from_file(&dir.join("config.json")).unwrap();
        let store = WeightStore::open_dir(&dir).unwrap();
        let e = match GpuNemotronH::load(&g, &cfg, &mut StoreWeights(&store)) {
            Ok(_) => panic!("FP8 weights were accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("not supported on cuda yet"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    /// Needs no GPU: the check reads only the config. Every fixture and the real MoE
    /// shape pass; an expert width the GEMV kernels cannot read (16-byte rows: a multiple
    /// of 8) is refused in one line, never sent to the CPU.
    #[test]
    fn moe_shapes_are_checked_before_anything_is_uploaded() {
        for name in ["nemotron_h_moe", "nemotron_h_moe_latent"] {
            let dir = super::common::fixture(name);
            let cfg = NemotronHConfig::from_file(&dir.join("config.json")).unwrap();
            GpuNemotronH::check(&cfg).unwrap();
        }
        let mut v = nemo::model::synthetic::shape_config("nano-30b-a3b").unwrap();
        let real = NemotronHConfig::from_json(&v, std::path::Path::new("nano-30b-a3b")).unwrap();
        GpuNemotronH::check(&real).unwrap();
        v["moe_intermediate_size"] = serde_json::json!(1850);
        let odd = NemotronHConfig::from_json(&v, std::path::Path::new("odd")).unwrap();
        let e = GpuNemotronH::check(&odd).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("1850"), "{e}");
        for name in DENSE {
            let dir = super::common::fixture(name);
            let cfg = NemotronHConfig::from_file(&dir.join("config.json")).unwrap();
            GpuNemotronH::check(&cfg).unwrap();
        }
    }
}
