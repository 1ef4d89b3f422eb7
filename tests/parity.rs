//! The CPU forward pass against transformers' `NemotronHForCausalLM` (reference logits
//! committed by `tests/fixtures/make_fixtures.py`).
//!
//! Tolerances, and why:
//! - `FULL_TOL` (2e-4 absolute on logits of magnitude ~1–10): the reference computes in
//!   f32 from the same stored weights (half-precision fixtures are upcast to f32 by the
//!   script, exactly what nemo does: weights widened, f32 math). What remains is f32
//!   summation order (our SIMD dot products and the chunked scan vs torch's einsums),
//!   which is ~1e-6 relative per op and grows over a handful of layers to ~1e-5.
//! - Decode vs one prefill: the same math in another order (recurrent step vs chunked
//!   scan), so the same bound.
//! - Cache dtypes vs f32 caches: bf16/f16 SSM state rounds the state to 8/11 mantissa
//!   bits every step; FP8 KV keeps 3 (e4m3) or 2 (e5m2) bits. The bound is the relative L2
//!   error of the logits against the format's unit roundoff (see the test).

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nemo::backend::DType;
use nemo::model::{Logits, ModelFolder};
use nemo::state::CacheConfig;

const FULL_TOL: f32 = 2e-4;

#[test]
fn full_prompt_logits_match_transformers_at_every_position() {
    f32_math();
    for model in MODELS {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let reference = Reference::load(model);
        for p in reference.prompts() {
            let mut state = folder.model.new_state(CacheConfig::default());
            let got = folder
                .model
                .forward(&p.ids, &mut state, Logits::All)
                .unwrap();
            let vocab = reference.vocab();
            let mut worst = 0f32;
            for (pos, want) in p.logits.iter().enumerate() {
                let row = &got[pos * vocab..(pos + 1) * vocab];
                worst = worst.max(max_abs_diff(row, want));
                assert_eq!(
                    argmax(row),
                    argmax(want),
                    "{model}/{} position {pos}: top token differs",
                    p.name
                );
            }
            assert!(
                worst < FULL_TOL,
                "{model}/{}: max |Δlogit| = {worst}",
                p.name
            );
            eprintln!(
                "{model}/{}: {} positions, max |Δlogit| {worst:.2e}",
                p.name,
                p.ids.len()
            );
        }
    }
}

const BF16_CHILD: &str = "NEMO_TEST_BF16_PRODUCTS";

/// BF16 prefill in bf16 products (the default where the CPU has AVX-512 BF16: x rounded
/// to bf16, f32 sums; `bf16_gemm`) against the f32 reference: on every prompt no further
/// from it than transformers' own bf16 run (`logits_native_dtype`, which rounds far more:
/// every activation and every output). The mode is process-wide and every other test here
/// wants f32 math, so this runs in a child of this test binary.
#[test]
fn bf16_products_stay_within_transformers_own_bf16_error() {
    if !nemo::backend::cpu::bf16_gemm::available() {
        return common::skip::skip("this CPU has no AVX-512 BF16");
    }
    if std::env::var(BF16_CHILD).is_err() {
        let (ok, text) = rerun_in_child(&[(BF16_CHILD, "1")], &["NEMO_MATMUL"]);
        assert!(ok && text.contains("1 passed"), "child:\n{text}");
        assert!(
            text.contains("bf16 products"),
            "the child checked nothing:\n{text}"
        );
        return;
    }
    nemo::backend::cpu::bf16_gemm::set_exact(false);
    assert!(nemo::backend::cpu::bf16_gemm::enabled());
    // The fixtures whose reference has transformers' bf16 run: the bf16 Nemotron-H and
    // the bf16 Llama.
    for model in ["nemotron_h_bf16", "llama_tied"] {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let reference = Reference::load(model);
        let vocab = reference.vocab();
        for (p, spec) in reference
            .prompts()
            .iter()
            .zip(reference.json["prompts"].as_array().unwrap())
        {
            let native = reference.matrix(&spec["logits_native_dtype"]);
            let mut state = folder.model.new_state(CacheConfig::default());
            let got = folder
                .model
                .forward(&p.ids, &mut state, Logits::All)
                .unwrap();
            let (mut ours, mut theirs) = (0f32, 0f32);
            for (pos, want) in p.logits.iter().enumerate() {
                ours = ours.max(max_abs_diff(&got[pos * vocab..(pos + 1) * vocab], want));
                theirs = theirs.max(max_abs_diff(&native[pos], want));
            }
            eprintln!(
                "{model}/{}: bf16 products max |Δlogit| {ours:.2e}, transformers bf16 {theirs:.2e}",
                p.name
            );
            // Not the f32 math (that would mean the bf16 path did not run), and within
            // transformers' own bf16 error.
            assert!(ours > FULL_TOL, "{model}/{}: {ours}", p.name);
            assert!(ours <= theirs, "{model}/{}: {ours} > {theirs}", p.name);
        }
    }
}

#[test]
fn prefill_then_token_by_token_decode_matches_one_prefill() {
    f32_math();
    for model in MODELS {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let reference = Reference::load(model);
        let p = reference.prompt("long");
        for split in [1usize, 7, 20] {
            let worst = prefill_then_decode_worst(&folder.model, &p, split);
            assert!(
                worst < FULL_TOL,
                "{model} split {split}: max |Δlogit| = {worst}"
            );
        }
    }
}

#[test]
fn greedy_decode_reproduces_the_reference_generation() {
    f32_math();
    for model in MODELS {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let reference = Reference::load(model);
        let d = greedy_generation_worst(model, &folder.model, &reference);
        assert!(d < FULL_TOL, "{model}: max |Δlogit| over the steps = {d}");
    }
}

/// Each cache dtype against f32 caches on the same prompt (30 tokens of prefill, then
/// decode): the relative L2 error of all logits must stay below the unit roundoff of the
/// cache format (2^-8 bf16, 2^-11 f16, 2^-4 e4m3, 2^-3 e5m2). Per-element rounding errors
/// of at most u are partly averaged out by the dot products, so the bound holds with room.
#[test]
fn cache_dtypes_stay_within_stated_tolerance_of_f32() {
    f32_math();
    // (ssm dtype, kv dtype, unit roundoff of the coarser format)
    let cases = [
        (DType::BF16, DType::F32, 2f32.powi(-8)),
        (DType::F16, DType::F32, 2f32.powi(-11)),
        (DType::F32, DType::BF16, 2f32.powi(-8)),
        (DType::F32, DType::F8E4M3, 2f32.powi(-4)),
        (DType::F32, DType::F8E5M2, 2f32.powi(-3)),
        (DType::BF16, DType::F8E4M3, 2f32.powi(-4)),
    ];
    for model in MODELS {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let reference = Reference::load(model);
        let p = reference.prompt("long");
        let run = |cache: CacheConfig| {
            let mut state = folder.model.new_state(cache);
            let mut out = folder
                .model
                .forward(&p.ids[..30], &mut state, Logits::All)
                .unwrap();
            for id in &p.ids[30..] {
                out.extend(
                    folder
                        .model
                        .forward(&[*id], &mut state, Logits::Last)
                        .unwrap(),
                );
            }
            out
        };
        let base = run(CacheConfig::default());
        let norm = base.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (ssm, kv, u) in cases {
            let got = run(CacheConfig {
                ssm_dtype: ssm,
                kv_dtype: kv,
            });
            let rel = got
                .iter()
                .zip(&base)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt()
                / norm;
            eprintln!("{model}: ssm {ssm} kv {kv}: relative error {rel:.2e}, unit roundoff {u:.2e}, max |Δlogit| {:.2e}", max_abs_diff(&got, &base));
            assert!(
                rel < u,
                "{model}: ssm {ssm} kv {kv}: relative logit error {rel} ≥ unit roundoff {u}"
            );
        }
    }
}

/// The Llama fixtures' `chat_cases.json` (transformers' renderings and token ids of their
/// shared Llama-3.1-Nemotron-style template): nemo's template code renders every case to the
/// same text and its tokenizer to the same ids, from both folders' template files
/// (`llama_tiny`: tokenizer_config.json, `llama_tied`: chat_template.jinja); and the
/// engine's prompt for a user message with thinking on / off is the thinking on / off case.
#[test]
fn llama_template_and_tokenizer_reproduce_transformers_chat_cases() {
    f32_math();
    use nemo::engine::{Session, SessionOptions};
    use nemo::protocol::{Budget, Message, Request, ThinkingOptions};

    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama_tiny/chat_cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["chat_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5, "the five cases of tests/fixtures/README.md");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    for model in ["llama_tiny", "llama_tied"] {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let template = folder
            .template
            .as_ref()
            .expect("the fixture has a template");
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let text = template
                .render(
                    &messages,
                    case["add_generation_prompt"].as_bool().unwrap(),
                    &Default::default(),
                )
                .unwrap();
            assert_eq!(text, case["rendered"].as_str().unwrap(), "{model}/{name}");
            let got = folder.tokenizer.encode(text.as_str(), false).unwrap();
            assert_eq!(got.get_ids(), ids(&case["ids"]), "{model}/{name}: ids");
        }
        // The engine writes the reasoning switch as the system message itself.
        let mut session = Session::new(&folder, SessionOptions::default()).unwrap();
        for (case_name, user, on) in [
            (
                "thinking_on_generation_prompt",
                "Is a naïve café in 日本 open today?",
                true,
            ),
            ("thinking_off_generation_prompt", "Say hi.", false),
        ] {
            let case = cases.iter().find(|c| c["name"] == case_name).unwrap();
            let thinking = ThinkingOptions {
                budget: if on { Budget::Unlimited } else { Budget::Off },
                ..Default::default()
            };
            let mut req = Request::new(vec![Message::user(user)], thinking);
            req.max_tokens = 1;
            let plan = session.render(&req).unwrap();
            assert_eq!(
                plan.text,
                case["rendered"].as_str().unwrap(),
                "{model}/{case_name}"
            );
            assert_eq!(plan.ids, ids(&case["ids"]), "{model}/{case_name}: ids");
            assert_eq!(plan.starts_in_reasoning, on, "{model}/{case_name}");
        }
    }
}
