//! Shared helpers for the integration tests: fixture paths and the reference logits the
//! committed script `tests/fixtures/make_fixtures.py` wrote with transformers.
#![allow(dead_code)]

pub mod gguf_file;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod serve;
pub mod skip;

use std::path::PathBuf;

use serde_json::Value;

/// The repository root: `NEMO_TEST_ROOT` when set, else the one cargo built from. Test
/// binaries built on one machine and run on another (scripts/gpu-check.sh with
/// `NEMO_GPU_CHECK_PREBUILT=1`) carry the build machine's paths; the script sets both
/// variables to the checkout it runs in.
pub fn root() -> PathBuf {
    std::env::var_os("NEMO_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The `nemo` binary under test: `NEMO_TEST_BIN` when set (see `root`), else the one
/// cargo built for this test run.
pub fn nemo_bin() -> PathBuf {
    std::env::var_os("NEMO_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nemo")))
}

/// The `nemo` binary ([`nemo_bin`]) with settings of the test's own: `NEMO_CONFIG` names a
/// config.toml that does not exist (so the built-in defaults hold) and `NEMO_DATA_DIR` a
/// folder of its own, both under the temp dir and unique to this call, and every other
/// `NEMO_*` settings variable (`Config::env_vars`) is removed from the environment. So a
/// developer's config.toml, chat data or exported settings cannot change what a test sees;
/// a test that wants settings writes its own file and sets `NEMO_CONFIG` (or a variable)
/// after this. Nothing is created unless nemo writes its data.
pub fn nemo_command() -> std::process::Command {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nemo-test-settings-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut cmd = std::process::Command::new(nemo_bin());
    for var in nemo::config::Config::env_vars() {
        cmd.env_remove(var);
    }
    cmd.env("NEMO_CONFIG", dir.join("config.toml"))
        .env("NEMO_DATA_DIR", dir.join("data"));
    cmd
}

/// The CPU math the f32 references assume: BF16 prefill multiplies f32 activations
/// (`bf16_gemm::set_exact(true)`), not bf16-rounded ones as it does by default where the
/// CPU has AVX-512 BF16. Every test that holds the CPU to an f32 reference calls this
/// first; tests/parity.rs checks the bf16 products against transformers' own bf16 run.
pub fn f32_math() {
    nemo::backend::cpu::bf16_gemm::set_exact(true);
}

/// Runs the calling test again, alone, in a child of this test binary with `set` added to
/// and `remove` taken from its environment (for settings chosen once per process, such as
/// the SIMD level): whether it passed, and its stdout and stderr.
pub fn rerun_in_child(set: &[(&str, &str)], remove: &[&str]) -> (bool, String) {
    let test = std::thread::current()
        .name()
        .expect("libtest names the test's thread")
        .to_string();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"]);
    for (k, v) in set {
        cmd.env(k, v);
    }
    for k in remove {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub const MODELS: &[&str] = &[
    "nemotron_h_tiny",
    "nemotron_h_bf16",
    "nemotron_h_f16",
    "nemotron_h_moe",
    "nemotron_h_moe_latent",
    "llama_tiny",
    "llama_tied",
];

pub struct Reference {
    pub json: Value,
    bin: Vec<u8>,
}

pub struct Prompt {
    pub name: String,
    pub ids: Vec<u32>,
    /// `[positions][vocab]`
    pub logits: Vec<Vec<f32>>,
}

impl Reference {
    pub fn load(model: &str) -> Reference {
        let dir = fixture(model);
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let bin = std::fs::read(dir.join(json["logits_file"].as_str().unwrap())).unwrap();
        Reference { json, bin }
    }

    pub fn vocab(&self) -> usize {
        self.json["vocab_size"].as_u64().unwrap() as usize
    }

    pub fn matrix(&self, spec: &Value) -> Vec<Vec<f32>> {
        let off = spec["byte_offset"].as_u64().unwrap() as usize;
        let rows = spec["shape"][0].as_u64().unwrap() as usize;
        let cols = spec["shape"][1].as_u64().unwrap() as usize;
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| {
                        let i = off + 4 * (r * cols + c);
                        f32::from_le_bytes([
                            self.bin[i],
                            self.bin[i + 1],
                            self.bin[i + 2],
                            self.bin[i + 3],
                        ])
                    })
                    .collect()
            })
            .collect()
    }

    pub fn prompts(&self) -> Vec<Prompt> {
        self.json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Prompt {
                name: p["name"].as_str().unwrap().to_string(),
                ids: p["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect(),
                logits: self.matrix(&p["logits"]),
            })
            .collect()
    }

    pub fn prompt(&self, name: &str) -> Prompt {
        self.prompts().into_iter().find(|p| p.name == name).unwrap()
    }
}

/// Largest |a - b| over two rows, and the largest |b| (for relative statements).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// The largest |Δlogit| against `p`'s reference when its first `split` tokens go in as one
/// prefill and the rest one token at a time (every position checked).
pub fn prefill_then_decode_worst(model: &nemo::model::Model, p: &Prompt, split: usize) -> f32 {
    use nemo::model::Logits;
    let mut state = model.new_state(nemo::state::CacheConfig::default());
    let first = model
        .forward(&p.ids[..split], &mut state, Logits::Last)
        .unwrap();
    let mut worst = max_abs_diff(&first, &p.logits[split - 1]);
    for pos in split..p.ids.len() {
        let got = model
            .forward(&p.ids[pos..pos + 1], &mut state, Logits::Last)
            .unwrap();
        assert_eq!(got.len(), p.logits[pos].len());
        worst = worst.max(max_abs_diff(&got, &p.logits[pos]));
    }
    worst
}

/// Greedy decode after the reference's `decode` prompt: asserts every step picks the token
/// transformers' cached generation picked, and returns the largest |Δlogit| over the steps.
pub fn greedy_generation_worst(label: &str, model: &nemo::model::Model, r: &Reference) -> f32 {
    use nemo::model::Logits;
    let dec = &r.json["decode"];
    let p = r.prompt(dec["prompt"].as_str().unwrap());
    let ids: Vec<u32> = dec["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want = r.matrix(&dec["logits"]);
    let mut state = model.new_state(nemo::state::CacheConfig::default());
    let mut logits = model.forward(&p.ids, &mut state, Logits::Last).unwrap();
    let mut worst = 0f32;
    for (step, id) in ids.iter().enumerate() {
        assert_eq!(
            argmax(&logits) as u32,
            *id,
            "{label}: step {step} picks another token"
        );
        logits = model.forward(&[*id], &mut state, Logits::Last).unwrap();
        worst = worst.max(max_abs_diff(&logits, &want[step]));
    }
    worst
}

/// What the engine itself generates with these caches for `nemo run --json --temperature 1
/// --seed SEED --max-tokens 32 hi` (the request `run` builds), reasoning as `R<text>` and
/// the answer as `C<text>`.
pub fn engine_text(dir: &std::path::Path, kv: &str, ssm: &str, seed: u64) -> String {
    use nemo::engine::{Session, SessionOptions};
    use nemo::protocol::{Event, Message, Request, SamplingParams, ThinkingOptions};
    let folder = nemo::model::ModelFolder::open(dir).unwrap();
    let cache = nemo::state::CacheConfig {
        kv_dtype: kv
            .parse::<nemo::config::KvCacheDtype>()
            .unwrap()
            .resolve(folder.model.weight_dtype()),
        ssm_dtype: ssm.parse::<nemo::config::SsmCacheDtype>().unwrap().dtype(),
    };
    let mut s = Session::new(
        &folder,
        SessionOptions {
            cache,
            ..Default::default()
        },
    )
    .unwrap();
    let mut sampling = SamplingParams::default();
    folder.generation.apply(&mut sampling);
    sampling.temperature = 1.0;
    sampling.seed = Some(seed);
    let mut req = Request::new(vec![Message::user("hi")], ThinkingOptions::default());
    req.sampling = sampling;
    req.max_tokens = 32;
    let mut out = String::new();
    s.generate(&req, &mut |e| match e {
        Event::Reasoning(t) => out.push_str(&format!("R{t}")),
        Event::Content(t) => out.push_str(&format!("C{t}")),
        _ => {}
    })
    .unwrap();
    out
}
