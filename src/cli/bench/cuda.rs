//! `nemo bench --device cuda`: the GPU model (`model::cuda`) on a model folder
//! (safetensors) or on random weights at a named shape, generated on the device, driven
//! through the sequence `nemo run` and `nemo chat` use (`model::cuda::CudaSequence`, the
//! engine's `Sequence::Cuda`): the same calls, the same buffers, the same CUDA graph.
//!
//! What it measures, each as a median over `--runs` (per-token figures over every step of
//! every run):
//! - TTFT for prompts of 128, 1k, 8k and 32k tokens (those that fit the model's context):
//!   prompt fed in chunks of `PREFILL_CHUNK` with the last position's logits left on the
//!   device (`forward_keep`), then the first token drawn on the device (greedy); the clock
//!   stops when its id is on the host.
//! - Decode at 1k and 32k context: `--gen-tokens` steps after that prompt, each one token
//!   in, its greedy successor's id out, as the generation loop does it: `forward_keep` of
//!   the id the device drew (no upload: it is already where the step reads its token),
//!   which runs the session's decode step as a CUDA graph (the first step of a session
//!   runs eagerly, the second captures the graph) unless `NEMO_CUDA_GRAPH=0`, then `draw`
//!   (its args in one small copy, the draw kernels, the 4-byte id back). p50, p99 and
//!   tok/s (steps over their total time). After the last run a short eager run
//!   (`EAGER_STEPS`, same kernels launched one by one) gives `eager_tokens_per_s` beside
//!   it, so the graph's gain shows.
//! - Device memory in use (total − free, sampled after loading and after every phase; the
//!   max) and before loading (the context's own share).
//! - Bytes one decode step reads (weights but the embedding table, plus every Mamba state
//!   and the KV cache at that context) over the p50 step: achieved bytes/s, next to the
//!   device's own copy bandwidth (a device-to-device copy of 1 GiB, read + write bytes
//!   over its time, best of 5).
//!
//! `--prompt-tokens` does not apply (the prompt sizes above are fixed); `--dtype` must be
//! bf16 (the GPU keeps weights in bf16).

use std::time::Instant;

use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use serde_json::{json, Value};

use nemo::backend::cuda::Gpu;
use nemo::backend::DType;
use nemo::model::cuda::{CudaSequence, GpuNemotronH, RandomWeights, StoreWeights};
use nemo::model::weights::WeightStore;
use nemo::model::{synthetic, NemotronHConfig};
use nemo::protocol::SamplingParams;

use super::{emit, median, percentile, progress, prompt_ids, source, usage, BenchArgs, Source};

const PROMPTS: [usize; 4] = [128, 1024, 8192, 32768];
const DECODE_AT: [usize; 2] = [1024, 32768];
const PREFILL_CHUNK: usize = 2048;
/// Most decode steps of the eager comparison run.
const EAGER_STEPS: usize = 32;

/// Greedy: the CPU sampler's defaults (every filter and penalty off).
fn greedy() -> SamplingParams {
    SamplingParams::default()
}

fn used_bytes(gpu: &Gpu) -> anyhow::Result<usize> {
    let (free, total) = gpu.ctx.mem_get_info().map_err(|e| anyhow!("CUDA: {e:?}"))?;
    Ok(total.saturating_sub(free))
}

/// Read + write bytes per second of a device-to-device copy of 1 GiB, best of 5. Timed on
/// the host around a synchronised copy (≥ 300 µs of copy on any GPU, so the sync's few µs
/// do not matter): CUDA event timing with cudarc's CUDA 13 bindings needs
/// `cuEventElapsedTime_v2`, which drivers before 12.8 lack, and a missing symbol panics.
fn copy_bandwidth(gpu: &Gpu) -> anyhow::Result<f64> {
    let n = 1usize << 30;
    let src = gpu.zeros::<u8>(n)?;
    let mut dst = gpu.zeros::<u8>(n)?;
    let s = &gpu.stream;
    let err = |e| anyhow!("CUDA: {e:?}");
    s.memcpy_dtod(&src, &mut dst).map_err(err)?;
    gpu.sync()?;
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        s.memcpy_dtod(&src, &mut dst).map_err(err)?;
        gpu.sync()?;
        let secs = t0.elapsed().as_secs_f64();
        if secs > 0.0 {
            best = best.max(2.0 * n as f64 / secs);
        }
    }
    Ok(best)
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let Some(src) = source(a)? else {
        return Err(usage("--device cuda: give --model DIR or --shape NAME"));
    };
    if a.gen_tokens == 0 {
        return Err(usage("--gen-tokens must be at least 1"));
    }
    if a.runs == 0 {
        return Err(usage("--runs must be at least 1"));
    }
    // The config first: a shape or model the GPU cannot run is refused before any work.
    let (cfg, model_json, dir) = match &src {
        Source::Shape {
            name,
            dtype,
            layers,
        } => {
            if *dtype != DType::BF16 {
                return Err(usage(
                    "--dtype: the GPU keeps weights in bf16; --device cuda takes --dtype bf16",
                ));
            }
            let mut v = synthetic::shape_config(name)
                .ok_or_else(|| usage(format!("--shape: unknown shape `{name}`")))?;
            let full = synthetic::shape_pattern(name).unwrap_or_default();
            let pattern: String = match layers {
                Some(n) => full.chars().cycle().take((*n).max(1)).collect(),
                None => full.clone(),
            };
            v["hybrid_override_pattern"] = json!(pattern);
            let cfg = NemotronHConfig::from_json(&v, std::path::Path::new(name.as_str()))?;
            let desc = json!({
                "source": "synthetic", "shape": name, "dtype": "bf16",
                "layers": cfg.layers.len(), "of_layers": full.len(), "pattern": cfg.pattern(),
            });
            (cfg, desc, None)
        }
        Source::Folder(spec) => {
            let dir = super::super::pull::resolve_model(
                Some(spec),
                super::super::pull::Missing::Required,
            )?
            .path;
            if dir.is_file() {
                return Err(anyhow!(
                    "--device cuda: {}: GGUF files are not supported on cuda yet (a safetensors folder is)",
                    dir.display()
                ));
            }
            let cfg = NemotronHConfig::from_file(&dir.join("config.json"))?;
            let desc = json!({
                "source": "folder", "path": dir.display().to_string(),
                "layers": cfg.layers.len(), "pattern": cfg.pattern(),
            });
            (cfg, desc, Some(dir))
        }
    };
    GpuNemotronH::check(&cfg).map_err(|e| anyhow!("--device cuda: {e}"))?;
    let gpu = Arc::new(Gpu::new(0).map_err(|e| anyhow!("--device cuda: {e}"))?);
    let before_load = used_bytes(&gpu)?;
    let load_start = Instant::now();
    let mut model_json = model_json;
    let (model, weight_dtype) = match &dir {
        None => {
            progress(&format!(
                "generating random bf16 weights at shape {} on {}",
                model_json["shape"].as_str().unwrap_or(""),
                gpu.info.name
            ));
            let m = GpuNemotronH::load(&gpu, &cfg, &mut RandomWeights::new())
                .map_err(|e| anyhow!("--device cuda: {e}"))?;
            (m, DType::BF16)
        }
        Some(dir) => {
            progress(&format!("loading {} onto {}", dir.display(), gpu.info.name));
            let store = WeightStore::open_dir(dir)?;
            let m = GpuNemotronH::load(&gpu, &cfg, &mut StoreWeights(&store))
                .map_err(|e| anyhow!("--device cuda: {e}"))?;
            model_json["dtype"] = json!(store.main_dtype().name());
            (m, store.main_dtype())
        }
    };
    gpu.sync()?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let model = Arc::new(model);
    let cache = a.model.cache_config(weight_dtype);
    let ctx_limit = model.config.max_position_embeddings.max(1);
    let prompts: Vec<usize> = PROMPTS
        .iter()
        .copied()
        .filter(|p| p + a.gen_tokens <= ctx_limit)
        .collect();
    let eager_steps = a.gen_tokens.min(EAGER_STEPS);
    let max_context = prompts.iter().copied().max().unwrap_or(128) + a.gen_tokens + eager_steps;
    // A fixed context (no free-memory fit) and no checkpoints: nothing else to hold.
    let mut sequence = CudaSequence::new(
        gpu.clone(),
        model.clone(),
        cache,
        Some(max_context),
        PREFILL_CHUNK,
        0,
    )
    .map_err(|e| anyhow!("--device cuda: {e}"))?;
    let mut peak = used_bytes(&gpu)?;
    let vocab = model.config.vocab_size;
    let graph = sequence.cuda_graph();

    let mut ttft = Vec::new();
    let mut decode = Vec::new();
    for &p in &prompts {
        let prompt = prompt_ids(p, vocab);
        let mut times = Vec::new();
        let mut steps = Vec::new();
        let mut eager = Vec::new();
        let mut state_bytes = 0;
        for r in 0..a.runs {
            progress(&format!("prompt {p}: run {}/{}", r + 1, a.runs));
            sequence.reset();
            sequence.sync().context("--device cuda")?;
            let t0 = Instant::now();
            let mut id = next_token(&mut sequence, &prompt)?;
            times.push(t0.elapsed().as_secs_f64());
            peak = peak.max(used_bytes(&gpu)?);
            if DECODE_AT.contains(&p) {
                for _ in 0..a.gen_tokens {
                    let t = Instant::now();
                    id = next_token(&mut sequence, &[id])?;
                    steps.push(t.elapsed().as_secs_f64());
                }
                state_bytes = sequence.state_bytes_read();
                peak = peak.max(used_bytes(&gpu)?);
                if r + 1 == a.runs {
                    sequence.set_cuda_graph(false);
                    for _ in 0..eager_steps {
                        let t = Instant::now();
                        id = next_token(&mut sequence, &[id])?;
                        eager.push(t.elapsed().as_secs_f64());
                    }
                    sequence.set_cuda_graph(graph);
                }
            }
        }
        ttft.push(json!({ "prompt_tokens": p, "ttft_ms": median(&times) * 1e3 }));
        if !steps.is_empty() {
            let p50 = percentile(&steps, 50.0);
            let bytes = model.weight_bytes_per_token() + state_bytes;
            decode.push(json!({
                "context": p,
                "steps": steps.len(),
                "ms_p50": p50 * 1e3,
                "ms_p99": percentile(&steps, 99.0) * 1e3,
                "tokens_per_s": steps.len() as f64 / steps.iter().sum::<f64>(),
                "cuda_graph": graph,
                "eager_steps": eager.len(),
                "eager_ms_p50": percentile(&eager, 50.0) * 1e3,
                "eager_tokens_per_s": eager.len() as f64 / eager.iter().sum::<f64>(),
                "bytes_per_token": bytes,
                "achieved_gb_s": bytes as f64 / p50 / 1e9,
            }));
        }
    }
    drop(sequence);
    progress("measuring the device copy bandwidth");
    let copy = copy_bandwidth(&gpu)?;
    let report = json!({
        "device": "cuda",
        "gpu": gpu.info.name,
        "compute_capability": format!("{}.{}", gpu.info.compute_capability.0, gpu.info.compute_capability.1),
        "gpu_memory_bytes": gpu.info.total_memory,
        "model": model_json,
        "weights_device_bytes": model.weight_bytes,
        "cache": { "ssm": cache.ssm_dtype.name(), "kv": cache.kv_dtype.name() },
        "prefill_chunk": PREFILL_CHUNK,
        "gen_tokens": a.gen_tokens,
        "runs": a.runs,
        "load_ms": load_ms,
        "ttft": ttft,
        "decode": decode,
        "device_memory_before_load_bytes": before_load,
        "device_memory_peak_bytes": peak,
        "copy_bandwidth_gb_s": copy / 1e9,
    });
    let text = if a.json {
        format!("{report}\n")
    } else {
        render(&report)
    };
    emit(&text)
}

/// Feeds `tokens` (a prompt, or the id the device drew last: then no upload), leaves the
/// last position's logits on the device and draws the greedy next id there, as the
/// generation loop does; returns it. (Greedy has no penalty: the draw reads no history.)
fn next_token(sequence: &mut CudaSequence, tokens: &[u32]) -> anyhow::Result<u32> {
    sequence.forward_keep(tokens).context("--device cuda")?;
    sequence
        .draw(&greedy(), &[], &[], 0.5)
        .context("--device cuda")
}

fn render(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let gb = |v: &Value| v.as_f64().unwrap_or(0.0) / 1e9;
    let m = &r["model"];
    let what = match m["source"].as_str() {
        Some("synthetic") => format!(
            "shape {} (random bf16, {} of {} layers {})",
            m["shape"].as_str().unwrap_or(""),
            m["layers"],
            m["of_layers"],
            m["pattern"].as_str().unwrap_or("")
        ),
        _ => format!(
            "{} ({}, {} layers)",
            m["path"].as_str().unwrap_or(""),
            m["dtype"].as_str().unwrap_or(""),
            m["layers"]
        ),
    };
    let _ = writeln!(o, "nemo bench --device cuda: {what}");
    let _ = writeln!(
        o,
        "GPU {} (sm {}), weights {:.2} GB on the device, load {:.0} ms, caches ssm {} kv {}",
        r["gpu"].as_str().unwrap_or(""),
        r["compute_capability"].as_str().unwrap_or(""),
        gb(&r["weights_device_bytes"]),
        r["load_ms"].as_f64().unwrap_or(0.0),
        r["cache"]["ssm"].as_str().unwrap_or(""),
        r["cache"]["kv"].as_str().unwrap_or("")
    );
    for t in r["ttft"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  TTFT   {:>6} prompt tokens   {:>10.1} ms",
            t["prompt_tokens"],
            t["ttft_ms"].as_f64().unwrap_or(0.0)
        );
    }
    let copy = r["copy_bandwidth_gb_s"].as_f64().unwrap_or(0.0);
    for d in r["decode"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  decode at {:>6}: p50 {:.2} ms  p99 {:.2} ms  {:.1} tok/s ({}; eager {:.1} tok/s)  {:.1} GB/s of {:.2} GB/token ({:.0}% of copy bandwidth)",
            d["context"],
            d["ms_p50"].as_f64().unwrap_or(0.0),
            d["ms_p99"].as_f64().unwrap_or(0.0),
            d["tokens_per_s"].as_f64().unwrap_or(0.0),
            if d["cuda_graph"].as_bool().unwrap_or(false) {
                "CUDA graph"
            } else {
                "eager: NEMO_CUDA_GRAPH=0"
            },
            d["eager_tokens_per_s"].as_f64().unwrap_or(0.0),
            d["achieved_gb_s"].as_f64().unwrap_or(0.0),
            gb(&d["bytes_per_token"]),
            if copy > 0.0 {
                100.0 * d["achieved_gb_s"].as_f64().unwrap_or(0.0) / copy
            } else {
                0.0
            }
        );
    }
    let _ = writeln!(
        o,
        "  device memory: peak {:.2} GB in use ({:.2} GB before loading); device copy bandwidth {:.0} GB/s (read + write)",
        gb(&r["device_memory_peak_bytes"]),
        gb(&r["device_memory_before_load_bytes"]),
        copy
    );
    o
}
