//! `nemo bench`: load time, prefill and decode speed, per-token latency, memory and the
//! memory bandwidth decode achieves, on a model folder or on synthetic weights at a named
//! shape (no download).
//!
//! Invariants: every run feeds the same pseudo-random prompt (ids below the vocabulary
//! size) and decodes greedily (argmax, EOS ignored), so every run does the same work.
//! `--gen-tokens N` is N decode steps after the prompt; the first sampled token comes from
//! the prefill logits and is what TTFT waits for. Top-level numbers are medians over runs;
//! per-token percentiles are nearest-rank within a run. Only stdout carries the report.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use rayon::prelude::*;
use serde_json::{json, Value};

use nemo::backend::DType;
use nemo::model::memory::{self, RunBytes};
use nemo::model::{synthetic, Logits, Model, ModelFolder};
use nemo::state::SequenceState;

use super::{usage, ModelArgs};

#[cfg(feature = "cuda")]
mod cuda;
mod grammar;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    // Help text built from `synthetic::SHAPES` so the list of names stays in step.
    #[arg(long, value_name = "NAME", help = shape_help())]
    pub shape: Option<String>,
    /// Weight dtype of --shape: bf16 | f16 | f32 [default: bf16].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Only the first N layers of --shape's layer pattern.
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Prompt length in tokens (pseudo-random ids, the same every run).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Decode steps after the prompt (greedy, EOS ignored).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub gen_tokens: usize,
    /// Runs to take medians over.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub runs: usize,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also measure this machine's memory read and copy bandwidth, after the runs
    /// (alone when neither --model nor --shape is given).
    #[arg(long)]
    pub copy_bandwidth: bool,
    /// Also time the first token after N new tokens, for each N of this comma-separated
    /// list (empty: none): fresh (an empty context) and as a chat follow-up (restoring the
    /// checkpoint after --follow-up tokens, as a chat's next turn does).
    #[arg(long, value_name = "N,N,...", default_value = "16,30,200")]
    pub ttft: String,
    /// The context a follow-up's new tokens come after (see --ttft).
    #[arg(long, value_name = "N", default_value_t = 164)]
    pub follow_up: usize,
    /// Decode under this JSON schema too (llguidance): tok/s with and without the mask,
    /// the grammar's time per token (p50/p99); a --shape uses a synthetic vocabulary.
    #[arg(long, value_name = "FILE", conflicts_with = "copy_bandwidth")]
    pub json_schema: Option<PathBuf>,
}

fn shape_help() -> String {
    format!(
        "Synthetic random weights at a named shape instead of --model: {}",
        synthetic::SHAPES.join(", ")
    )
}

/// Where the weights come from.
enum Source {
    Folder(PathBuf),
    Shape {
        name: String,
        dtype: DType,
        layers: Option<usize>,
    },
}

/// One run's timings.
struct Run {
    prefill_s: f64,
    ttft_s: f64,
    /// Per decode step: forward of one token + argmax.
    step_s: Vec<f64>,
    cache_bytes: usize,
    last_token: u32,
    logits_finite: bool,
}

impl Run {
    fn decode_s(&self) -> f64 {
        self.step_s.iter().sum()
    }
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.json_schema.is_some() {
        return grammar::run(&a);
    }
    #[cfg(feature = "cuda")]
    if a.model.device == "cuda" {
        return cuda::run(&a);
    }
    let source = source(&a)?;
    let ttft_sizes = parse_sizes(&a.ttft)?;
    if source.is_some() {
        if a.prompt_tokens == 0 {
            return Err(usage("--prompt-tokens must be at least 1"));
        }
        if a.gen_tokens == 0 {
            return Err(usage("--gen-tokens must be at least 1"));
        }
        if a.runs == 0 {
            return Err(usage("--runs must be at least 1"));
        }
    }
    a.model.init_threads()?;
    let threads = rayon::current_num_threads();
    let Some(source) = source else {
        // --copy-bandwidth alone.
        progress("measuring memory bandwidth");
        let copy = copy_bandwidth();
        let text = if a.json {
            let v =
                json!({ "threads": threads, "machine": machine(), "copy_bandwidth": copy.json() });
            format!("{v}\n")
        } else {
            machine_line(threads) + &copy_line(&copy)
        };
        return emit(&text);
    };

    // Synthetic weights are allocated by `build`: refuse a shape that cannot fit first.
    if let Source::Shape {
        name,
        dtype,
        layers,
    } = &source
    {
        let cfg = synthetic::shape(name, *layers)?;
        let run = RunBytes::nemotron_h(&cfg, a.model.cache_config(*dtype)?);
        check_fits(
            &a,
            synthetic::weight_bytes(&cfg, *dtype),
            run,
            memory::available(),
        )?;
    }
    let load_start = Instant::now();
    let (model, model_json) = match &source {
        Source::Folder(spec) => {
            let dir = &super::pull::resolve_model(Some(spec), super::pull::Missing::Required)?.path;
            progress(&format!("loading {}", dir.display()));
            let folder = ModelFolder::open(dir)?;
            let m = folder.model;
            let desc = json!({
                "source": "folder", "path": dir.display().to_string(), "dtype": m.weight_dtype().name(),
                "layers": m.layer_count(), "pattern": m.pattern(),
            });
            (m, desc)
        }
        Source::Shape {
            name,
            dtype,
            layers,
        } => {
            progress(&format!(
                "generating random {dtype} weights at shape {name}"
            ));
            let m = Arc::new(Model::NemotronH(synthetic::build(name, *dtype, *layers)?));
            let full = synthetic::shape_pattern(name)
                .map(|p| p.len())
                .unwrap_or_default();
            let desc = json!({
                "source": "synthetic", "shape": name, "dtype": dtype.name(),
                "layers": m.layer_count(), "of_layers": full, "pattern": m.pattern(),
            });
            (m, desc)
        }
    };
    let load_s = load_start.elapsed().as_secs_f64();

    let cache = a.model.cache_config(model.weight_dtype())?;
    if let Source::Folder(_) = &source {
        // The weights are mapped, not allocated; what the run adds is checked.
        check_fits(&a, 0, model.run_bytes(cache), memory::available())?;
    }
    let mut state = model.new_state(cache);
    let prompt = prompt_ids(a.prompt_tokens, model.vocab_size());
    let mut runs = Vec::with_capacity(a.runs);
    for i in 0..a.runs {
        progress(&format!("run {}/{}", i + 1, a.runs));
        runs.push(one_run(&model, &mut state, &prompt, a.gen_tokens)?);
    }
    let mut ttft = Vec::with_capacity(ttft_sizes.len());
    for &size in &ttft_sizes {
        progress(&format!("TTFT after {size} new tokens"));
        ttft.push(ttft_at(&model, &mut state, size, a.follow_up, a.runs)?);
    }

    let mut report = Report::new(&a, threads, &model, model_json, load_s, runs);
    report.ttft = ttft;
    // After the runs, so that peak RSS is the model's and not the copy buffers'.
    if a.copy_bandwidth {
        progress("measuring memory bandwidth");
        report.copy = Some(copy_bandwidth());
    }
    let text = if a.json {
        format!("{}\n", report.json())
    } else {
        report.render()
    };
    emit(&text)
}

/// Writes the report to stdout in one go; a closed pipe (`nemo bench | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// Checks the flags and picks the weights' source; None with --copy-bandwidth alone.
fn source(a: &BenchArgs) -> anyhow::Result<Option<Source>> {
    let known = synthetic::SHAPES.join(", ");
    // NEMO_MODEL in the environment does not count against an explicit --shape.
    let from_env = std::env::var_os("NEMO_MODEL").map(PathBuf::from);
    let model = match (&a.model.model, &a.shape) {
        (Some(m), Some(_)) if from_env.as_ref() == Some(m) => None,
        (m, _) => m.clone(),
    };
    match (model, &a.shape) {
        (Some(_), Some(_)) => Err(usage("give either --model DIR or --shape NAME, not both")),
        (Some(dir), None) => {
            if a.layers.is_some() {
                return Err(usage(
                    "--layers only applies to --shape (synthetic weights)",
                ));
            }
            if a.dtype.is_some() {
                return Err(usage(
                    "--dtype only applies to --shape; a model folder has its own dtype",
                ));
            }
            Ok(Some(Source::Folder(dir)))
        }
        (None, Some(name)) => {
            let Some(pattern) = synthetic::shape_pattern(name) else {
                return Err(usage(format!(
                    "--shape: unknown shape `{name}` (known: {known})"
                )));
            };
            let dtype = match a.dtype.as_deref().unwrap_or("bf16") {
                "bf16" | "bfloat16" => DType::BF16,
                "f16" | "float16" => DType::F16,
                "f32" | "float32" => DType::F32,
                other => {
                    return Err(usage(format!(
                        "--dtype: `{other}` is not one of bf16, f16, f32"
                    )))
                }
            };
            if let Some(n) = a.layers {
                if n == 0 || n > pattern.len() {
                    return Err(usage(format!(
                        "--layers: `{name}` has layers 1 to {}, got {n}",
                        pattern.len()
                    )));
                }
            }
            Ok(Some(Source::Shape {
                name: name.clone(),
                dtype,
                layers: a.layers,
            }))
        }
        (None, None) if a.copy_bandwidth => Ok(None),
        (None, None) => Err(usage(format!(
            "give --model DIR or --shape NAME (known shapes: {known})"
        ))),
    }
}

/// Refuses, in one line and before anything is allocated, a run whose weights (`weights`:
/// synthetic ones, which are allocated; 0 for a mapped folder), prompt ids, state, KV cache
/// and prefill activations need more than `available` (MemAvailable; no check without
/// one).
fn check_fits(
    a: &BenchArgs,
    weights: u64,
    run: RunBytes,
    available: Option<u64>,
) -> anyhow::Result<()> {
    let (p, g) = (a.prompt_tokens as u64, a.gen_tokens as u64);
    let ids = p.saturating_mul(4);
    // The --ttft runs feed up to the largest size at once, after --follow-up tokens.
    let sizes = parse_sizes(&a.ttft).unwrap_or_default();
    let batch = sizes.iter().map(|&s| s as u64).fold(p, u64::max);
    let positions = sizes
        .iter()
        .map(|&s| (a.follow_up as u64).saturating_add(s as u64 + 1))
        .fold(p.saturating_add(g), u64::max);
    let activations = run.run(batch, positions, 1).saturating_add(ids);
    let need = weights.saturating_add(activations);
    let Some(free) = available.filter(|&free| need > free) else {
        return Ok(());
    };
    let tokens = format!("{p} prompt + {g} generated tokens (state, KV cache, activations)");
    Err(anyhow::anyhow!(
        "this run needs about {}: {} but {} of memory is available; {}",
        memory::human(need),
        if weights > 0 {
            format!(
                "{} of synthetic weights and {} for {tokens},",
                memory::human(weights),
                memory::human(activations)
            )
        } else {
            format!("{tokens},")
        },
        memory::human(free),
        if weights > 0 {
            "use a smaller --shape, fewer --layers, --dtype bf16 or fewer --prompt-tokens"
        } else {
            "use fewer --prompt-tokens or --gen-tokens"
        }
    ))
}

/// Deterministic pseudo-random ids below `vocab` (xorshift64).
fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab.max(1) as u64) as u32
        })
        .collect()
}

/// First index of the largest logit (NaN never wins).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

fn one_run(
    model: &Model,
    state: &mut SequenceState,
    prompt: &[u32],
    gen: usize,
) -> anyhow::Result<Run> {
    state.reset();
    let t0 = Instant::now();
    let logits = model.forward(prompt, state, Logits::Last)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut token = argmax(&logits);
    let ttft_s = t0.elapsed().as_secs_f64();
    let mut logits_finite = logits.iter().all(|v| v.is_finite());
    let mut step_s = Vec::with_capacity(gen);
    for _ in 0..gen {
        let t = Instant::now();
        let logits = model.forward(&[token], state, Logits::Last)?;
        token = argmax(&logits);
        step_s.push(t.elapsed().as_secs_f64());
        logits_finite &= logits.iter().all(|v| v.is_finite());
    }
    Ok(Run {
        prefill_s,
        ttft_s,
        step_s,
        cache_bytes: state.bytes(),
        last_token: token,
        logits_finite,
    })
}

/// `--ttft`: a comma-separated list of token counts, each at least 1 (empty: none).
fn parse_sizes(list: &str) -> anyhow::Result<Vec<usize>> {
    list.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(usage(format!(
                "--ttft: `{v}` is not a token count (a comma-separated list of numbers ≥ 1, e.g. 16,30,200)"
            ))),
        })
        .collect()
}

/// Time to the first token after `size` new tokens, medians over `runs` runs: fresh (an
/// empty context), and as a chat follow-up: the state after `follow_up` tokens is
/// checkpointed, one more token is decoded (the state moves on, as an answer does), then
/// the checkpoint is restored and the `size` new tokens fed. Both end at the argmax of the
/// last position's logits, as TTFT in `one_run` does.
fn ttft_at(
    model: &Model,
    state: &mut SequenceState,
    size: usize,
    follow_up: usize,
    runs: usize,
) -> anyhow::Result<Ttft> {
    let ids = prompt_ids(follow_up + size, model.vocab_size());
    let (mut fresh, mut follow) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        state.reset();
        let t = Instant::now();
        let logits = model.forward(&ids[..size], state, Logits::Last)?;
        std::hint::black_box(argmax(&logits));
        fresh.push(t.elapsed().as_secs_f64());

        state.reset();
        if follow_up > 0 {
            model.forward(&ids[..follow_up], state, Logits::None)?;
        }
        let snap = state.snapshot();
        model.forward(&ids[follow_up..follow_up + 1], state, Logits::Last)?;
        let t = Instant::now();
        state.restore(&snap);
        let logits = model.forward(&ids[follow_up..follow_up + size], state, Logits::Last)?;
        std::hint::black_box(argmax(&logits));
        follow.push(t.elapsed().as_secs_f64());
    }
    Ok(Ttft {
        new_tokens: size,
        fresh_ms: median(&fresh) * 1e3,
        follow_up_ms: median(&follow) * 1e3,
        fresh_runs_ms: fresh.iter().map(|s| s * 1e3).collect(),
        follow_up_runs_ms: follow.iter().map(|s| s * 1e3).collect(),
    })
}

/// TTFT after a number of new tokens (`ttft_at`).
struct Ttft {
    new_tokens: usize,
    fresh_ms: f64,
    follow_up_ms: f64,
    fresh_runs_ms: Vec<f64>,
    follow_up_runs_ms: Vec<f64>,
}

/// Median (mean of the middle two for an even count); 0 for none.
fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Nearest-rank percentile, `p` in (0, 100].
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// One metric per run, as shown in the table.
struct Metric {
    label: &'static str,
    unit: &'static str,
    per_run: Vec<f64>,
}

struct Report {
    model: Value,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    load_ms: f64,
    weights_bytes: usize,
    bytes_per_token: usize,
    runs: Vec<Run>,
    peak_rss_bytes: Option<u64>,
    copy: Option<CopyBandwidth>,
    follow_up: usize,
    ttft: Vec<Ttft>,
}

impl Report {
    fn new(
        a: &BenchArgs,
        threads: usize,
        model: &Model,
        model_json: Value,
        load_s: f64,
        runs: Vec<Run>,
    ) -> Self {
        Report {
            model: model_json,
            threads,
            prompt_tokens: a.prompt_tokens,
            gen_tokens: a.gen_tokens,
            load_ms: load_s * 1e3,
            weights_bytes: model.weight_bytes(),
            bytes_per_token: model.bytes_per_token(),
            runs,
            peak_rss_bytes: peak_rss_bytes(),
            copy: None,
            follow_up: a.follow_up,
            ttft: Vec::new(),
        }
    }

    fn metrics(&self) -> [Metric; 5] {
        let per = |f: &dyn Fn(&Run) -> f64| self.runs.iter().map(f).collect::<Vec<f64>>();
        let (p, g) = (self.prompt_tokens as f64, self.gen_tokens as f64);
        [
            Metric {
                label: "prefill",
                unit: "tok/s",
                per_run: per(&|r| p / r.prefill_s),
            },
            Metric {
                label: "TTFT",
                unit: "ms",
                per_run: per(&|r| r.ttft_s * 1e3),
            },
            Metric {
                label: "decode",
                unit: "tok/s",
                per_run: per(&|r| g / r.decode_s()),
            },
            Metric {
                label: "decode p50",
                unit: "ms/tok",
                per_run: per(&|r| percentile(&r.step_s, 50.0) * 1e3),
            },
            Metric {
                label: "decode p99",
                unit: "ms/tok",
                per_run: per(&|r| percentile(&r.step_s, 99.0) * 1e3),
            },
        ]
    }

    /// Weight bytes one decode step reads over the median step latency.
    fn bandwidth_gb_s(&self, p50_ms: f64) -> f64 {
        if p50_ms > 0.0 {
            self.bytes_per_token as f64 / (p50_ms / 1e3) / 1e9
        } else {
            0.0
        }
    }

    fn cache_bytes(&self) -> usize {
        self.runs.last().map(|r| r.cache_bytes).unwrap_or(0)
    }

    fn json(&self) -> Value {
        let [prefill, ttft, decode, p50, p99] = self.metrics();
        let p50_ms = median(&p50.per_run);
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "prefill_ms": r.prefill_s * 1e3,
                    "prefill_tokens_per_s": self.prompt_tokens as f64 / r.prefill_s,
                    "ttft_ms": r.ttft_s * 1e3,
                    "decode_ms": r.decode_s() * 1e3,
                    "decode_tokens_per_s": self.gen_tokens as f64 / r.decode_s(),
                    "decode_ms_p50": percentile(&r.step_s, 50.0) * 1e3,
                    "decode_ms_p99": percentile(&r.step_s, 99.0) * 1e3,
                    "decode_ms_max": r.step_s.iter().copied().fold(0.0, f64::max) * 1e3,
                    "cache_bytes": r.cache_bytes,
                    "last_token": r.last_token,
                    "logits_finite": r.logits_finite,
                })
            })
            .collect();
        let mut v = json!({
            "prefill_tokens_per_s": median(&prefill.per_run),
            "decode_tokens_per_s": median(&decode.per_run),
            "ttft_ms": median(&ttft.per_run),
            "decode_ms_p50": p50_ms,
            "decode_ms_p99": median(&p99.per_run),
            "load_ms": self.load_ms,
            "model": self.model,
            "threads": self.threads,
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.gen_tokens,
            "weights_bytes": self.weights_bytes,
            "bytes_per_token": self.bytes_per_token,
            "cache_bytes": self.cache_bytes(),
            "peak_rss_bytes": self.peak_rss_bytes,
            "bandwidth_gb_s": self.bandwidth_gb_s(p50_ms),
            "runs": runs,
            "machine": machine(),
        });
        if let Some(c) = &self.copy {
            v["copy_bandwidth"] = c.json();
        }
        if !self.ttft.is_empty() {
            v["follow_up_tokens"] = json!(self.follow_up);
            v["ttft_sizes"] = self
                .ttft
                .iter()
                .map(|t| {
                    json!({
                        "new_tokens": t.new_tokens, "fresh_ms": t.fresh_ms,
                        "follow_up_ms": t.follow_up_ms, "fresh_runs_ms": t.fresh_runs_ms,
                        "follow_up_runs_ms": t.follow_up_runs_ms,
                    })
                })
                .collect();
        }
        v
    }

    fn render(&self) -> String {
        let mut o = String::new();
        let m = &self.model;
        let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
        let what = match m["source"].as_str() {
            Some("synthetic") => format!(
                "{} (synthetic {}, {} of {} layers: {})",
                s("shape"),
                s("dtype"),
                m["layers"],
                m["of_layers"],
                s("pattern")
            ),
            _ => format!("{} ({}, {} layers)", s("path"), s("dtype"), m["layers"]),
        };
        let _ = writeln!(o, "model    {what}");
        o += &machine_line(self.threads);
        let _ = writeln!(
            o,
            "work     {} prompt tokens, {} decode steps, {} run{}",
            self.prompt_tokens,
            self.gen_tokens,
            self.runs.len(),
            if self.runs.len() == 1 { "" } else { "s" }
        );
        o.push('\n');
        let metrics = self.metrics();
        let _ = writeln!(
            o,
            "{:<12} {:<7} {:>10} {:>10} {:>10}",
            "", "", "median", "min", "max"
        );
        for mt in &metrics {
            let (lo, hi) = min_max(&mt.per_run);
            let _ = writeln!(
                o,
                "{:<12} {:<7} {:>10} {:>10} {:>10}",
                mt.label,
                mt.unit,
                num(median(&mt.per_run)),
                num(lo),
                num(hi)
            );
        }
        for t in &self.ttft {
            let _ = writeln!(
                o,
                "{:<12} {:<7} {:>10}   after {} new tokens; follow-up (after {} tokens): {} ms",
                "TTFT",
                "ms",
                num(t.fresh_ms),
                t.new_tokens,
                self.follow_up,
                num(t.follow_up_ms)
            );
        }
        let p50_ms = median(&metrics[3].per_run);
        o.push('\n');
        let load_note = if m["source"] == "synthetic" {
            " (generating random weights)"
        } else {
            ""
        };
        let _ = writeln!(o, "{:<20} {} ms{load_note}", "load", num(self.load_ms));
        let bw = self.bandwidth_gb_s(p50_ms);
        let share = match &self.copy {
            Some(c) if c.read_gb_s > 0.0 => format!(
                ", {:.0}% of the measured read bandwidth",
                100.0 * bw / c.read_gb_s
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "{:<20} {} GB/s ({} of weights per decode step{share})",
            "decode bandwidth",
            num(bw),
            bytes(self.bytes_per_token as u64)
        );
        let _ = writeln!(o, "{:<20} {}", "weights", bytes(self.weights_bytes as u64));
        let _ = writeln!(
            o,
            "{:<20} {} after {} tokens",
            "cache",
            bytes(self.cache_bytes() as u64),
            self.prompt_tokens + self.gen_tokens
        );
        let rss = self
            .peak_rss_bytes
            .map(bytes)
            .unwrap_or_else(|| "unknown on this system".into());
        let _ = writeln!(o, "{:<20} {rss}", "peak RSS");
        if self.runs.iter().any(|r| !r.logits_finite) {
            let _ = writeln!(
                o,
                "warning: some logits were not finite; the timings may not reflect real work"
            );
        }
        if let Some(c) = &self.copy {
            o += &copy_line(c);
        }
        o
    }
}

/// Three significant-ish digits without scientific notation.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("nemo bench: {msg}");
    }
}

fn machine_line(threads: usize) -> String {
    let cpu = cpu_model().unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = proc_kb("/proc/meminfo", "MemTotal:")
        .map(|b| format!(", {} RAM", bytes(b)))
        .unwrap_or_default();
    format!("machine  {cpu}, {cores} cores{mem}; {threads} threads\n")
}

fn machine() -> Value {
    json!({
        "cpu": cpu_model(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_bytes": proc_kb("/proc/meminfo", "MemTotal:"),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// A `NAME:  123 kB` line of a /proc file, in bytes (None where /proc does not exist).
fn proc_kb(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of this process (Linux: VmHWM).
fn peak_rss_bytes() -> Option<u64> {
    proc_kb("/proc/self/status", "VmHWM:")
}

/// Memory bandwidth of this machine over buffers far larger than any cache; GB are 10^9
/// bytes. `copy` counts bytes read plus bytes written (the STREAM convention); `read` is
/// what a decode step does with the weights. Medians over passes (comparable with the
/// median decode step), and the best pass (STREAM's convention), since a shared or
/// virtual machine's bandwidth varies from pass to pass.
#[derive(Default)]
struct CopyBandwidth {
    buffer_bytes: usize,
    memcpy_1_thread_gb_s: f64,
    copy_gb_s: f64,
    read_gb_s: f64,
    read_gb_s_best: f64,
}

impl CopyBandwidth {
    fn json(&self) -> Value {
        json!({
            "buffer_bytes": self.buffer_bytes,
            "memcpy_1_thread_gb_s": self.memcpy_1_thread_gb_s,
            "copy_gb_s": self.copy_gb_s,
            "read_gb_s": self.read_gb_s,
            "read_gb_s_best": self.read_gb_s_best,
        })
    }
}

fn copy_line(c: &CopyBandwidth) -> String {
    format!(
        "{:<20} read {} GB/s (best {}), copy {} GB/s (read+write; one-thread memcpy {}); medians over {} buffers\n",
        "memory bandwidth",
        num(c.read_gb_s),
        num(c.read_gb_s_best),
        num(c.copy_gb_s),
        num(c.memcpy_1_thread_gb_s),
        bytes(c.buffer_bytes as u64)
    )
}

fn copy_bandwidth() -> CopyBandwidth {
    const BYTES: usize = 512 << 20;
    const PASSES: usize = 9;
    let words = BYTES / 8;
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![1u64; words];
    let chunk = words.div_ceil(rayon::current_num_threads().max(1) * 4);
    // Seconds per pass after one warm-up pass (page faults, frequency ramp).
    let passes = |f: &mut dyn FnMut()| -> Vec<f64> {
        f();
        (0..PASSES)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect()
    };
    let one = passes(&mut || {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
    });
    let par = passes(&mut || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&mut dst);
    });
    let read = passes(&mut || {
        let sum: u64 = src
            .par_chunks(chunk)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .sum();
        std::hint::black_box(sum);
    });
    let gb_s = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    CopyBandwidth {
        buffer_bytes: BYTES,
        memcpy_1_thread_gb_s: gb_s(2 * BYTES, median(&one)),
        copy_gb_s: gb_s(2 * BYTES, median(&par)),
        read_gb_s: gb_s(BYTES, median(&read)),
        read_gb_s_best: gb_s(BYTES, read.iter().copied().fold(f64::INFINITY, f64::min)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank_and_medians_average_the_middle_pair() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn prompt_ids_are_deterministic_and_inside_the_vocabulary() {
        let a = prompt_ids(500, 4096);
        assert_eq!(a, prompt_ids(500, 4096));
        assert!(a.iter().all(|&t| t < 4096));
        assert!(a.iter().any(|&t| t != a[0]));
    }

    #[test]
    fn argmax_takes_the_first_largest_and_skips_nan() {
        assert_eq!(argmax(&[0.5, f32::NAN, 2.0, 2.0, -1.0]), 2);
    }
}
