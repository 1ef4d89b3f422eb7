//! The two tool fixtures (`nemotron_h_tools`: Nano v2 `<TOOLCALL>` form; `nemotron3_tiny`:
//! Nemotron 3 ChatML with Qwen3-Coder XML calls) against what transformers wrote for them
//! (`tests/fixtures/make_fixtures.py`, `tests/fixtures/tool_chat_cases.json`):
//! - nemo's chat template renders every tool chat case exactly as transformers'
//!   `apply_chat_template(messages, tools=…, add_generation_prompt=…, **template_kwargs)`
//!   did, with the messages going through `protocol::Message` and the tools through
//!   `protocol::ToolSpec` (what the engine passes), and the fixture's tokenizer gives the
//!   same ids;
//! - the models' logits match transformers' at every position of every reference prompt
//!   (one of them a tool conversation), and greedy decode picks the same tokens;
//!   tolerances as in `tests/parity.rs`;
//! - `nemo run` answers on the Nemotron 3 fixture.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::*;
use nemo::model::{Logits, ModelFolder};
use nemo::protocol::{Message, ToolSpec};
use nemo::state::CacheConfig;
use serde_json::Value;

const TOOL_FIXTURES: &[&str] = &["nemotron_h_tools", "nemotron3_tiny"];

/// See `tests/parity.rs`: f32 math on the same (upcast) weights, summation order apart.
const FULL_TOL: f32 = 2e-4;

fn tool_cases() -> Value {
    let path = fixture("tool_chat_cases.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The template variables transformers passed: `tools` (re-serialized from nemo's
/// `ToolSpec`, as the engine would hand them over) and the case's template kwargs.
fn extra_for(case: &Value) -> serde_json::Map<String, Value> {
    let mut extra = serde_json::Map::new();
    if !case["tools"].is_null() {
        let specs: Vec<ToolSpec> = serde_json::from_value(case["tools"].clone()).unwrap();
        let tools = serde_json::to_value(&specs).unwrap();
        assert_eq!(
            tools, case["tools"],
            "{}: ToolSpec does not write the tools back as transformers got them",
            case["name"]
        );
        extra.insert("tools".into(), tools);
    }
    for (k, v) in case["template_kwargs"].as_object().unwrap() {
        extra.insert(k.clone(), v.clone());
    }
    extra
}

fn messages_of(case: &Value) -> Vec<Message> {
    let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
    // The template sees nemo's serialization of the messages: it must be what transformers
    // was given, or the comparison below would test another conversation.
    assert_eq!(
        serde_json::to_value(&messages).unwrap(),
        case["messages"],
        "{}: protocol::Message does not round-trip the case's messages",
        case["name"]
    );
    messages
}

#[test]
fn tool_chat_cases_render_exactly_as_transformers_renders_them() {
    f32_math();
    let all = tool_cases();
    for name in TOOL_FIXTURES {
        let entry = &all["fixtures"][*name];
        let folder = ModelFolder::open(&fixture(name)).unwrap();
        let template = folder
            .template
            .as_ref()
            .expect("the fixture has a chat template");
        assert_eq!(
            template.source(),
            entry["chat_template"].as_str().unwrap(),
            "{name}: the template nemo loaded is not the one the cases were rendered with"
        );
        for (token, id) in entry["special_tokens"].as_object().unwrap() {
            assert_eq!(
                folder.tokenizer.token_to_id(token),
                Some(id.as_u64().unwrap() as u32),
                "{name}: special token {token}"
            );
        }
        let cases = entry["chat_cases"].as_array().unwrap();
        assert!(cases.len() >= 7, "{name}: {} cases", cases.len());
        for case in cases {
            let label = format!("{name}/{}", case["name"].as_str().unwrap());
            let messages = messages_of(case);
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let got = template
                .render(&messages, agp, &extra_for(case))
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let want = case["rendered"].as_str().unwrap();
            if got != want {
                let at = got
                    .char_indices()
                    .zip(want.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(got.len().min(want.len()), |((i, _), _)| i);
                panic!(
                    "{label}: rendering differs at byte {at}\n nemo: {:?}\n want: {:?}",
                    &got[at..(at + 80).min(got.len())],
                    want.get(at..(at + 80).min(want.len())).unwrap_or("")
                );
            }
            let ids: Vec<u32> = folder
                .tokenizer
                .encode(got.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            let want_ids: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want_ids, "{label}: token ids differ");
        }
    }
}

#[test]
fn tool_fixture_logits_match_transformers_at_every_position() {
    f32_math();
    for name in TOOL_FIXTURES {
        let folder = ModelFolder::open(&fixture(name)).unwrap();
        let reference = Reference::load(name);
        let vocab = reference.vocab();
        let prompts = reference.prompts();
        assert!(
            prompts.iter().any(|p| p.name == "tool_chat"),
            "{name}: no tool_chat prompt"
        );
        for p in prompts {
            let mut state = folder.model.new_state(CacheConfig::default());
            let got = folder
                .model
                .forward(&p.ids, &mut state, Logits::All)
                .unwrap();
            assert_eq!(got.len(), p.ids.len() * vocab);
            let mut worst = 0f32;
            for (pos, want) in p.logits.iter().enumerate() {
                let row = &got[pos * vocab..(pos + 1) * vocab];
                worst = worst.max(max_abs_diff(row, want));
                assert_eq!(
                    argmax(row),
                    argmax(want),
                    "{name}/{} position {pos}: top token differs",
                    p.name
                );
            }
            assert!(
                worst < FULL_TOL,
                "{name}/{}: max |Δlogit| = {worst}",
                p.name
            );
            eprintln!(
                "{name}/{}: {} positions, max |Δlogit| {worst:.2e}",
                p.name,
                p.ids.len()
            );
        }
    }
}

#[test]
fn tool_fixtures_decode_like_transformers() {
    f32_math();
    for name in TOOL_FIXTURES {
        let folder = ModelFolder::open(&fixture(name)).unwrap();
        let reference = Reference::load(name);
        let tool_chat = reference.prompt("tool_chat");
        for split in [1usize, 17, tool_chat.ids.len() - 3] {
            let worst = prefill_then_decode_worst(&folder.model, &tool_chat, split);
            assert!(
                worst < FULL_TOL,
                "{name} tool_chat split {split}: max |Δlogit| = {worst}"
            );
        }
        let d = greedy_generation_worst(name, &folder.model, &reference);
        assert!(d < FULL_TOL, "{name}: max |Δlogit| over the steps = {d}");
    }
}

/// `nemo run` on the Nemotron 3 fixture: the template's `enable_thinking` switch works
/// end to end (the prompt opens `<think>\n`, so greedy output is reasoning; with
/// `--no-think` it closes the block and nothing is reasoning).
#[test]
fn nemo_run_answers_on_the_nemotron3_fixture_with_thinking_on_and_off() {
    f32_math();
    let model = fixture("nemotron3_tiny").display().to_string();
    let reasoning_tokens = |extra: &[&str]| -> u64 {
        let mut args = vec!["run", "--model", &model, "--json", "--temperature", "0"];
        args.extend_from_slice(&["--max-tokens", "6"]);
        args.extend_from_slice(extra);
        args.push("Hi");
        let out = common::nemo_command()
            .env("NEMO_DEVICE", "cpu")
            .env_remove("NEMO_MODEL")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let done: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(done["event"], "done", "{args:?}: {stdout}");
        done["usage"]["reasoning_tokens"].as_u64().unwrap()
    };
    assert!(reasoning_tokens(&[]) > 0);
    assert_eq!(reasoning_tokens(&["--no-think"]), 0);
}
