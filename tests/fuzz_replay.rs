//! The fuzz targets' stable replay: every file of the committed corpus
//! (`fuzz/corpus/<target>/`) and a bounded number of seeded mutations of each (byte flips,
//! truncations, length-field bumps, inserted tokens; a fixed seed) go through the same
//! entry points `cargo fuzz` runs (`nemo::fuzzing::TARGETS`). Each must return Ok or a
//! one-line error, without a panic, within a generous time, and allocating no more than
//! a small multiple of its input (counted by this binary's global allocator).
//!
//! The seeds this file makes (`seeds()`: the malformed cases of issue #10 and small valid
//! models) are committed under `fuzz/corpus/`; `committed_seeds_are_what_this_file_makes`
//! keeps the two in step (regenerate with `cargo test --test fuzz_replay -- --ignored
//! write_seeds`). Other files in a corpus folder (what `cargo fuzz run` adds) are replayed
//! as they are.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::gguf_file::{layout, llama_model, mamba_model, MambaShape};
use common::{fixture, root};

/// Counts live heap bytes and their peak, so each call's allocation can be bounded.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this binary take turns: the allocation counts are process-wide.
static TURN: Mutex<()> = Mutex::new(());

/// Mutated inputs per corpus file.
const MUTATIONS: usize = 1500;
/// Allowed allocation per call: this much plus `ALLOC_PER_INPUT_BYTE` per input byte
/// (the input is copied once; a tokenizer built from metadata costs several times its
/// bytes). One decoded value per byte of a metadata array was 32 per byte.
const ALLOC_BASE: usize = 8 << 20;
const ALLOC_PER_INPUT_BYTE: usize = 8;
/// "No hang": the slowest call in a debug build takes well under a second.
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// What a committed seed must give: Ok, or an error containing each string.
type Expect = Option<&'static [&'static str]>;

struct Seed {
    target: &'static str,
    name: String,
    bytes: Vec<u8>,
    expect: Expect,
}

fn seed(target: &'static str, name: &str, bytes: Vec<u8>, expect: Expect) -> Seed {
    Seed {
        target,
        name: name.to_string(),
        bytes,
        expect,
    }
}

/// Small weights that are not all the same.
fn weight(t: usize, e: u64) -> f32 {
    ((t as u64 * 7 + e) % 13) as f32 * 0.05 - 0.3
}

fn gguf_seeds() -> Vec<Seed> {
    let shape = MambaShape {
        hidden: 8,
        heads: 2,
        head_dim: 4,
        d_state: 4,
        groups: 1,
        vocab: 16,
        layers: 2,
    };
    let valid = mamba_model(&shape, 2).bytes(weight);
    let l = layout(&valid);
    let patched = |at: usize, v: &[u8]| {
        let mut b = valid.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let kv = |key: &str| l.kv_at(key) + 4;
    let eps = kv("nemotron_h.attention.layer_norm_rms_epsilon");
    let dims = |name: &str| l.info_at(name) + 4;
    let offset = |name: &str| {
        let at = l.info_at(name);
        let nd = u32::from_le_bytes(valid[at..at + 4].try_into().unwrap()) as usize;
        at + 4 + 8 * nd + 4
    };
    let attn0 = valid[offset("blk.0.attn_norm.weight")..][..8].to_vec();
    let mut f32_count = valid.clone();
    let at = l.kv_at("nemotron_h.ssm.state_size");
    f32_count[at..at + 4].copy_from_slice(&6u32.to_le_bytes());
    let mut overflow = patched(kv("nemotron_h.ssm.state_size"), &u32::MAX.to_le_bytes());
    let g = kv("nemotron_h.ssm.group_count");
    overflow[g..g + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut big = common::gguf_file::Writer::new();
    big.str("general.architecture", "nemotron_h")
        .zero_bytes("junk", 1_000_000);
    let fixture_gguf = std::fs::read(fixture("gguf/nemotron_h_tiny.q8_0.gguf")).unwrap();
    let fixture_header = fixture_gguf[..layout(&fixture_gguf).data_start].to_vec();
    let eps_err: Expect = Some(&["layer_norm_rms_epsilon", "greater than 0"]);
    vec![
        seed("gguf", "valid-mamba.gguf", valid.clone(), None),
        seed(
            "gguf",
            "valid-llama.gguf",
            llama_model(2).bytes(weight),
            None,
        ),
        seed(
            "gguf",
            "fixture-header.gguf",
            fixture_header,
            Some(&["truncated"]),
        ),
        seed(
            "gguf",
            "big-array.gguf",
            big.header(),
            Some(&["embedding_length"]),
        ),
        seed(
            "gguf",
            "tensor-count-low.gguf",
            patched(8, &(l.n_tensors - 1).to_le_bytes()),
            Some(&["tensor count"]),
        ),
        seed(
            "gguf",
            "block-count-low.gguf",
            patched(kv("nemotron_h.block_count"), &1u32.to_le_bytes()),
            Some(&["nemotron_h.block_count", "blk.1."]),
        ),
        seed(
            "gguf",
            "eps-nan.gguf",
            patched(eps, &f32::NAN.to_le_bytes()),
            eps_err,
        ),
        seed(
            "gguf",
            "eps-inf.gguf",
            patched(eps, &f32::INFINITY.to_le_bytes()),
            eps_err,
        ),
        seed(
            "gguf",
            "eps-zero.gguf",
            patched(eps, &0f32.to_le_bytes()),
            eps_err,
        ),
        seed(
            "gguf",
            "eps-negative.gguf",
            patched(eps, &(-1e-5f32).to_le_bytes()),
            eps_err,
        ),
        seed(
            "gguf",
            "eos-past-vocab.gguf",
            patched(kv("tokenizer.ggml.eos_token_id"), &16u32.to_le_bytes()),
            Some(&["tokenizer.ggml.eos_token_id", "vocabulary"]),
        ),
        seed(
            "gguf",
            "float-for-count.gguf",
            f32_count,
            Some(&["nemotron_h.ssm.state_size", "integer"]),
        ),
        seed("gguf", "sizes-overflow.gguf", overflow, Some(&["overflow"])),
        seed(
            "gguf",
            "shape-mismatch.gguf",
            patched(dims("blk.0.attn_norm.weight"), &4u64.to_le_bytes()),
            Some(&["blk.0.attn_norm.weight", "metadata"]),
        ),
        seed(
            "gguf",
            "vocab-mismatch.gguf",
            patched(dims("token_embd.weight") + 8, &15u64.to_le_bytes()),
            Some(&["tokenizer.ggml.tokens", "15 rows"]),
        ),
        seed(
            "gguf",
            "cut-at-data.gguf",
            valid[..l.data_start].to_vec(),
            Some(&["truncated"]),
        ),
        seed(
            "gguf",
            "tensors-overlap.gguf",
            patched(offset("blk.1.attn_norm.weight"), &attn0),
            Some(&["overlaps"]),
        ),
    ]
}

/// A safetensors file of `tensors` (name, dtype, shape, data).
fn safetensors_file(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype, "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()]
            }),
        );
        data.extend(bytes);
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(data);
    b
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn safetensors_seeds() -> Vec<Seed> {
    let fp8 = |scale: Vec<u8>, scale_shape: &'static [usize]| {
        safetensors_file(&[
            ("m.weight", "F8_E4M3", &[2, 2], vec![0x38, 0x40, 0xb8, 0x00]),
            ("m.weight_scale", "F32", scale_shape, scale),
        ])
    };
    let fixture_st = std::fs::read(fixture("nemotron_h_tiny/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(fixture_st[..8].try_into().unwrap()) as usize;
    let mut huge = safetensors_file(&[("a", "F32", &[1], f32s(&[1.0]))]);
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut past_end = safetensors_file(&[("a", "F32", &[4], f32s(&[1.0; 4]))]);
    past_end.truncate(past_end.len() - 4);
    vec![
        seed(
            "safetensors",
            "valid.safetensors",
            safetensors_file(&[
                (
                    "model.layers.0.norm.weight",
                    "F32",
                    &[2, 3],
                    f32s(&[0.5; 6]),
                ),
                (
                    "b",
                    "BF16",
                    &[4],
                    vec![0x80, 0x3f, 0, 0x40, 0, 0, 0x80, 0xbf],
                ),
                ("c", "F16", &[1], vec![0, 0x3c]),
            ]),
            None,
        ),
        seed(
            "safetensors",
            "fp8.safetensors",
            fp8(f32s(&[0.5]), &[1]),
            None,
        ),
        seed(
            "safetensors",
            "fp8-row-scales.safetensors",
            fp8(f32s(&[0.5, 2.0]), &[2, 1]),
            None,
        ),
        seed(
            "safetensors",
            "fp8-nan-scale.safetensors",
            fp8(f32s(&[f32::NAN]), &[1]),
            Some(&["m.weight_scale", "finite"]),
        ),
        seed(
            "safetensors",
            "fp8-scale-shape.safetensors",
            fp8(f32s(&[1.0, 1.0, 1.0]), &[3]),
            Some(&["m.weight_scale", "shape"]),
        ),
        seed(
            "safetensors",
            "fp8-no-scale.safetensors",
            safetensors_file(&[("m.weight", "F8_E4M3", &[2, 2], vec![0; 4])]),
            Some(&["m.weight_scale", "missing"]),
        ),
        seed(
            "safetensors",
            "dtype-i64.safetensors",
            safetensors_file(&[("a", "I64", &[1], vec![0; 8])]),
            Some(&["`a`", "dtype"]),
        ),
        seed(
            "safetensors",
            "header-length-huge.safetensors",
            huge,
            Some(&["fuzz.safetensors"]),
        ),
        seed(
            "safetensors",
            "data-past-end.safetensors",
            past_end,
            Some(&["truncated"]),
        ),
        seed(
            "safetensors",
            "fixture-header.safetensors",
            fixture_st[..8 + n].to_vec(),
            Some(&["truncated"]),
        ),
        seed(
            "safetensors",
            "not-json.safetensors",
            [&16u64.to_le_bytes()[..], b"{\"a\": [1, 2, 3  "].concat(),
            Some(&["not a valid safetensors file"]),
        ),
    ]
}

fn index_seeds() -> Vec<Seed> {
    let index = |v: serde_json::Value| {
        serde_json::json!({ "weight_map": v })
            .to_string()
            .into_bytes()
    };
    let escape: Expect = Some(&["weight_map", "inside the model folder"]);
    vec![
        seed(
            "safetensors_index",
            "fixture.json",
            std::fs::read(fixture("nemotron_h_bf16/model.safetensors.index.json")).unwrap(),
            None,
        ),
        seed(
            "safetensors_index",
            "parent.json",
            index(serde_json::json!({"a": "../model.safetensors"})),
            escape,
        ),
        seed(
            "safetensors_index",
            "absolute.json",
            index(serde_json::json!({"a": "/etc/model.safetensors"})),
            escape,
        ),
        seed(
            "safetensors_index",
            "nested-parent.json",
            index(serde_json::json!({"a": "shards/../../m.safetensors"})),
            escape,
        ),
        seed(
            "safetensors_index",
            "empty-name.json",
            index(serde_json::json!({"a": ""})),
            escape,
        ),
        seed(
            "safetensors_index",
            "not-a-name.json",
            index(serde_json::json!({"a": 42})),
            Some(&["weight_map.a"]),
        ),
        seed(
            "safetensors_index",
            "no-weight-map.json",
            b"{\"metadata\": {}}".to_vec(),
            Some(&["weight_map", "missing"]),
        ),
    ]
}

fn config_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    for f in [
        "nemotron_h_tiny",
        "nemotron_h_bf16",
        "nemotron_h_f16",
        "nemotron_h_moe",
        "nemotron_h_moe_latent",
        "nemotron_h_tiny_fp8",
        "nemotron_h_moe_fp8",
        "llama_tiny",
        "llama_tied",
        "llama_tiny_fp8",
    ] {
        let b = std::fs::read(fixture(f).join("config.json")).unwrap();
        out.push(seed("config", &format!("{f}.json"), b, None));
    }
    let tiny = std::fs::read_to_string(fixture("nemotron_h_tiny/config.json")).unwrap();
    let llama = std::fs::read_to_string(fixture("llama_tiny/config.json")).unwrap();
    let edit = |text: &str, from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        text.replace(from, to).into_bytes()
    };
    let eps = "\"layer_norm_epsilon\": 1e-05";
    let positive: Expect = Some(&["greater than 0"]);
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "eps-nan.json",
            edit(&tiny, eps, "\"layer_norm_epsilon\": NaN"),
            positive,
        ),
        (
            "eps-inf.json",
            edit(&tiny, eps, "\"layer_norm_epsilon\": Infinity"),
            positive,
        ),
        (
            "eps-zero.json",
            edit(&tiny, eps, "\"layer_norm_epsilon\": 0"),
            positive,
        ),
        (
            "eps-negative.json",
            edit(&tiny, eps, "\"layer_norm_epsilon\": -1e-05"),
            positive,
        ),
        (
            "eps-string.json",
            edit(&tiny, eps, "\"layer_norm_epsilon\": \"1e-05\""),
            Some(&["layer_norm_epsilon", "expected a number"]),
        ),
        (
            "hidden-string.json",
            edit(&tiny, "\"hidden_size\": 64", "\"hidden_size\": \"64\""),
            Some(&["hidden_size"]),
        ),
        (
            "eos-past-vocab.json",
            edit(&tiny, "\"eos_token_id\": 5", "\"eos_token_id\": [5, 512]"),
            Some(&["eos_token_id", "512"]),
        ),
        (
            "sizes-overflow.json",
            edit(
                &tiny,
                "\"mamba_num_heads\": 8",
                "\"mamba_num_heads\": 4611686018427387904",
            ),
            Some(&["overflow"]),
        ),
        (
            "pattern-bad.json",
            edit(&tiny, "\"M-M*-M*-\"", "\"M-M*-X*-\""),
            Some(&["hybrid_override_pattern"]),
        ),
        (
            "llama-rope-theta-zero.json",
            edit(&llama, "\"rope_theta\": 10000.0", "\"rope_theta\": 0"),
            Some(&["rope_theta", "greater than 0"]),
        ),
        (
            "llama-rope-theta-nan.json",
            edit(&llama, "\"rope_theta\": 10000.0", "\"rope_theta\": NaN"),
            Some(&["rope_theta", "greater than 0"]),
        ),
        (
            "llama-eps-string.json",
            edit(
                &llama,
                "\"rms_norm_eps\": 1e-05",
                "\"rms_norm_eps\": \"1e-05\"",
            ),
            Some(&["rms_norm_eps"]),
        ),
        (
            "llama-scaling-flat.json",
            edit(
                &llama,
                "\"high_freq_factor\": 4.0",
                "\"high_freq_factor\": 1.0",
            ),
            Some(&["rope_scaling.high_freq_factor"]),
        ),
        (
            "llama-heads-overflow.json",
            edit(
                &llama,
                "\"head_dim\": 16",
                "\"head_dim\": 4611686018427387904",
            ),
            Some(&["head_dim"]),
        ),
        (
            "generation-temperature-string.json",
            edit(
                &tiny,
                eps,
                "\"temperature\": \"hot\", \"layer_norm_epsilon\": 1e-05",
            ),
            Some(&["generation_config.json", "temperature"]),
        ),
    ];
    for (name, b, e) in cases {
        out.push(seed("config", name, b, e));
    }
    out
}

fn seeds() -> Vec<Seed> {
    let mut s = gguf_seeds();
    s.extend(safetensors_seeds());
    s.extend(index_seeds());
    s.extend(config_seeds());
    s
}

fn corpus_dir(target: &str) -> PathBuf {
    root().join("fuzz/corpus").join(target)
}

/// xorshift64*: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens a text format's parser should meet in odd places.
const DICTIONARY: &[&[u8]] = &[
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"-1",
    b"0",
    b"18446744073709551616",
    b"\"",
    b"[",
    b"{",
    b"null",
    b"..",
    b"\xff",
];

/// One mutation of `b`: flipped bits, a truncation, a bumped length-like u64 (a value
/// below the input's length is likely a count, length or offset), or an inserted token.
fn mutate(b: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut m = b.to_vec();
    if m.is_empty() {
        return vec![rng.next() as u8];
    }
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(m.len());
                m[at] ^= 1 << rng.below(8);
            }
        }
        1 => m.truncate(rng.below(m.len())),
        2 if m.len() >= 8 => {
            let field = (0..64)
                .map(|_| rng.below(m.len() - 7))
                .find(|&at| u64::from_le_bytes(m[at..at + 8].try_into().unwrap()) < b.len() as u64)
                .unwrap_or(0);
            let v = u64::from_le_bytes(m[field..field + 8].try_into().unwrap());
            let bumped = match rng.below(6) {
                0 => v.wrapping_add(1),
                1 => v.wrapping_sub(1),
                2 => v.wrapping_add(8),
                3 => v.wrapping_mul(2),
                4 => v | 1 << (32 + rng.below(31)),
                _ => u64::MAX - v,
            };
            m[field..field + 8].copy_from_slice(&bumped.to_le_bytes());
        }
        _ => {
            let at = rng.below(m.len() + 1);
            let tok = DICTIONARY[rng.below(DICTIONARY.len())];
            m.splice(at..at, tok.iter().copied());
        }
    }
    m
}

/// Runs one input through `target`, holding it to the contract; returns its result.
fn run_one(
    target: nemo::fuzzing::Target,
    label: &str,
    data: &[u8],
    worst: &mut Worst,
) -> Result<(), String> {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(|| target(data));
    let took = t0.elapsed();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let r = r.unwrap_or_else(|_| panic!("{label}: panicked"));
    if let Err(e) = &r {
        assert!(
            !e.trim().is_empty() && !e.contains('\n'),
            "{label}: not one line: {e:?}"
        );
    }
    assert!(took < TIME_LIMIT, "{label}: took {took:?}");
    let allowed = ALLOC_BASE + ALLOC_PER_INPUT_BYTE * data.len();
    assert!(
        grew <= allowed,
        "{label}: allocated {grew} bytes for {} input bytes (allowed {allowed})",
        data.len()
    );
    if took > worst.slowest.0 {
        worst.slowest = (took, label.to_string());
    }
    if grew > worst.largest.0 {
        worst.largest = (grew, data.len(), label.to_string());
    }
    r
}

/// The slowest call and the largest allocation seen, for the summary line.
#[derive(Default)]
struct Worst {
    slowest: (Duration, String),
    largest: (usize, usize, String),
}

#[test]
fn committed_corpus_and_seeded_mutations_are_ok_or_one_line_errors() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let expected: Vec<(String, Expect)> = seeds()
        .into_iter()
        .map(|s| (format!("{}/{}", s.target, s.name), s.expect))
        .collect();
    let mut runs = 0usize;
    let mut worst = Worst::default();
    let t0 = Instant::now();
    for (name, target) in nemo::fuzzing::TARGETS {
        let dir = corpus_dir(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus", dir.display());
        // One stream per target: adding a target leaves the others' mutations as they were.
        let mut rng = Rng(0x5EED_F00D_F11E_0001
            ^ name
                .bytes()
                .fold(0u64, |h, c| h.wrapping_mul(31) ^ c as u64));
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let label = format!("{name}/{}", f.file_name().unwrap().to_string_lossy());
            let r = run_one(*target, &label, &data, &mut worst);
            runs += 1;
            if let Some((_, expect)) = expected.iter().find(|(l, _)| *l == label) {
                match (expect, &r) {
                    (None, Err(e)) => panic!("{label}: a valid seed failed: {e}"),
                    (Some(want), Ok(())) => panic!("{label}: opened, expected {want:?}"),
                    (Some(want), Err(e)) => {
                        for w in *want {
                            assert!(e.contains(w), "{label}: `{w}` missing from: {e}");
                        }
                    }
                    (None, Ok(())) => {}
                }
            }
            for k in 0..MUTATIONS {
                let m = mutate(&data, &mut rng);
                let _ = run_one(*target, &format!("{label} mutation {k}"), &m, &mut worst);
                runs += 1;
            }
        }
    }
    let (w, l) = (&worst.slowest, &worst.largest);
    eprintln!(
        "fuzz replay: {runs} inputs in {:.1} s; slowest {:?} ({}); largest allocation {} bytes for {} input bytes ({})",
        t0.elapsed().as_secs_f64(),
        w.0,
        w.1,
        l.0,
        l.1,
        l.2
    );
}

#[test]
fn committed_seeds_are_what_this_file_makes() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    for s in seeds() {
        let p = corpus_dir(s.target).join(&s.name);
        let committed = std::fs::read(&p).unwrap_or_default();
        assert!(
            committed == s.bytes,
            "{} differs from what tests/fuzz_replay.rs makes; run \
             `cargo test --test fuzz_replay -- --ignored write_seeds`",
            p.display()
        );
    }
}

/// Writes `seeds()` into `fuzz/corpus/` (run by hand when the seeds change).
#[test]
#[ignore]
fn write_seeds() {
    for s in seeds() {
        let dir = corpus_dir(s.target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&s.name), &s.bytes).unwrap();
    }
}
