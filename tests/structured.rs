//! Constrained decoding end to end with the real engine on the random-weight fixtures:
//! `nemo run --json-schema/--regex/--choice/--grammar` answers that parse and validate
//! (unconstrained, these models write noise, so a valid answer proves the constraint),
//! the exit-1 line when `--max-tokens` cuts an answer, forced tool calls in each family's
//! format whose arguments validate, forced tokens fed through the model, and (with
//! `NEMO_SMOLLM2_GGUF`) a real model filling a forced `get_weather` call.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{fixture, nemo_bin};
use nemo::engine::grammar::{Grammar, Guide, Vocabulary};
use nemo::engine::sampler::Sampler;
use nemo::engine::{Session, SessionOptions};
use nemo::model::{Logits, ModelFolder};
use nemo::protocol::{
    Budget, Constraint, Done, Event, FinishReason, Message, Request, SamplingParams,
    ThinkingOptions, ToolChoice, ToolFormat, ToolSpec,
};
use nemo::state::CacheConfig;
use serde_json::{json, Value};

fn nemo(args: &[&str]) -> Output {
    Command::new(nemo_bin())
        .env("NEMO_DEVICE", "cpu")
        .env_remove("NEMO_MODEL")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const PERSON: &str = r#"{"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    "ok": {"type": "boolean"}},
  "required": ["name", "age", "tags", "ok"], "additionalProperties": false}"#;

/// `v` against `PERSON`, checked by hand.
fn check_person(v: &Value) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["age", "name", "ok", "tags"], "{v}");
    assert!(o["name"].as_str().unwrap().chars().count() <= 6, "{v}");
    let age = o["age"].as_f64().unwrap();
    assert!(age.fract() == 0.0 && (0.0..=120.0).contains(&age), "{v}");
    let tags = o["tags"].as_array().unwrap();
    assert!(tags.len() <= 3, "{v}");
    assert!(
        tags.iter()
            .all(|t| ["a", "b", "c"].contains(&t.as_str().unwrap())),
        "{v}"
    );
    assert!(o["ok"].is_boolean(), "{v}");
}

fn models() -> Vec<String> {
    [
        "nemotron_h_tiny",
        "llama_tiny",
        "gguf/nemotron_h_tiny.q8_0.gguf",
    ]
    .iter()
    .map(|m| fixture(m).display().to_string())
    .collect()
}

#[test]
fn run_json_schema_answers_parse_and_validate() {
    let schema_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(schema_file.path(), PERSON).unwrap();
    let file = schema_file.path().display().to_string();
    for model in models() {
        for (schema, extra) in [
            // Greedy, thinking off, the schema inline.
            (PERSON, vec!["--no-think", "--temperature", "0"]),
            // Sampled, thinking on and cut by the budget: the grammar starts after the
            // forced `</think>`; the schema from a file.
            (
                file.as_str(),
                vec!["--budget", "4", "--temperature", "1.0", "--top-k", "40"],
            ),
        ] {
            for seed in ["1", "2"] {
                let mut args = vec!["run", "-m", &model, "--json-schema", schema, "--seed", seed];
                args.extend(&extra);
                args.extend(["--max-tokens", "400", "Describe someone."]);
                let out = nemo(&args);
                let stdout = text(&out.stdout);
                assert!(
                    out.status.success(),
                    "{model} {extra:?}: {}",
                    text(&out.stderr)
                );
                let v: Value = serde_json::from_str(stdout.trim_end_matches('\n'))
                    .unwrap_or_else(|e| panic!("{model} {extra:?}: {stdout:?}: {e}"));
                check_person(&v);
            }
        }
    }
}

#[test]
fn run_regex_choice_and_grammar_answers_match() {
    let lark = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        lark.path(),
        "start: expr\nexpr: NUM (OP NUM){0,3}\nNUM: /[1-9][0-9]{0,2}/\nOP: \" + \" | \" * \"\n",
    )
    .unwrap();
    let lark = lark.path().display().to_string();
    for model in models() {
        for seed in ["3", "4"] {
            let run = |flag: &str, value: &str| {
                let out = nemo(&[
                    "run",
                    "-m",
                    &model,
                    flag,
                    value,
                    "--seed",
                    seed,
                    "--temperature",
                    "1.0",
                    "--no-think",
                    "--max-tokens",
                    "64",
                    "Go.",
                ]);
                assert!(
                    out.status.success(),
                    "{model} {flag}: {}",
                    text(&out.stderr)
                );
                text(&out.stdout).trim_end_matches('\n').to_string()
            };
            let t = run("--regex", "[a-c]{2,4}-[0-9]{2}");
            let (l, r) = t
                .split_once('-')
                .unwrap_or_else(|| panic!("{model}: {t:?}"));
            assert!(
                (2..=4).contains(&l.len()) && l.chars().all(|c| ('a'..='c').contains(&c)),
                "{model}: {t:?}"
            );
            assert!(
                r.len() == 2 && r.chars().all(|c| c.is_ascii_digit()),
                "{model}: {t:?}"
            );

            let t = run("--choice", "red,green, blue ,dark violet");
            assert!(
                ["red", "green", "blue", "dark violet"].contains(&t.as_str()),
                "{model}: {t:?}"
            );

            let t = run("--grammar", &lark);
            let terms: Vec<&str> = t.split([' ']).collect();
            assert!(terms.len() % 2 == 1 && terms.len() <= 7, "{model}: {t:?}");
            for (i, term) in terms.iter().enumerate() {
                if i % 2 == 1 {
                    assert!(*term == "+" || *term == "*", "{model}: {t:?}");
                } else {
                    assert!(
                        (1..=3).contains(&term.len())
                            && !term.starts_with('0')
                            && term.chars().all(|c| c.is_ascii_digit()),
                        "{model}: {t:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn run_exits_1_in_one_line_when_max_tokens_cuts_the_answer() {
    let model = fixture("nemotron_h_tiny").display().to_string();
    let out = nemo(&[
        "run",
        "-m",
        &model,
        "--json-schema",
        PERSON,
        "--no-think",
        "--max-tokens",
        "3",
        "--seed",
        "1",
        "Describe someone.",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--max-tokens 3") && err.contains("--json-schema"),
        "{err}"
    );
    // What was written stays on stdout: the start of the object.
    assert!(
        text(&out.stdout).starts_with('{'),
        "{:?}",
        text(&out.stdout)
    );
    // The JSON done event says so too.
    let out = nemo(&[
        "run",
        "-m",
        &model,
        "--choice",
        "a long answer,another long answer",
        "--no-think",
        "--max-tokens",
        "1",
        "--json",
        "Go.",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let done: Value = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap();
    assert_eq!(done["constraint"]["complete"], json!(false), "{done}");
    assert_eq!(done["finish_reason"], json!("length"), "{done}");
}

#[test]
fn run_refuses_bad_constraints_naming_the_flag() {
    let model = fixture("nemotron_h_tiny").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let bad_lark = dir.path().join("bad.lark");
    std::fs::write(&bad_lark, "start: nosuchrule\n").unwrap();
    let bad_lark = bad_lark.display().to_string();
    let missing = dir.path().join("missing.json").display().to_string();
    for (args, want) in [
        (vec!["--regex", "[a-"], "--regex: "),
        (vec!["--grammar", &bad_lark], "--grammar: "),
        (
            vec!["--json-schema", "{\"type\": \"nonsense\"}"],
            "--json-schema: ",
        ),
        (
            vec!["--json-schema", &missing],
            "--json-schema: cannot read",
        ),
        (
            vec!["--json-schema", "{not json"],
            "--json-schema: not JSON",
        ),
        (vec!["--choice", "a,,b"], "--choice: choice 2 is empty"),
        (vec!["--regex", "a", "--choice", "a"], "cannot be used with"),
    ] {
        let mut all = vec!["run", "-m", &model, "--no-think"];
        all.extend(&args);
        all.push("hi");
        let out = nemo(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// The engine directly

fn session(model: &str) -> (ModelFolder, Session) {
    let folder = ModelFolder::open(&fixture(model)).unwrap();
    // Room for several calls on the Llama fixtures too (trained for 128 positions; the
    // weights are random anyway).
    let opts = SessionOptions {
        context: Some(4096),
        ..SessionOptions::default()
    };
    let s = Session::new(&folder, opts).unwrap();
    (folder, s)
}

fn request(question: &str) -> Request {
    let thinking = ThinkingOptions {
        budget: Budget::Off,
        ..Default::default()
    };
    let mut req = Request::new(vec![Message::user(question)], thinking);
    req.max_tokens = 300;
    req
}

fn generate(s: &mut Session, req: &Request) -> (String, Done) {
    let (content, _, done) = generate_calls(s, req);
    (content, done)
}

/// The answer's text, the calls the session parsed from it (`Event::ToolCall`), and Done.
fn generate_calls(s: &mut Session, req: &Request) -> (String, Vec<(String, Value)>, Done) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let done = s
        .generate(req, &mut |e| match e {
            Event::Content(t) => content.push_str(&t),
            Event::ToolCall(c) => calls.push((c.name().to_string(), c.arguments().clone())),
            _ => {}
        })
        .unwrap();
    (content, calls, done)
}

fn tools() -> Vec<ToolSpec> {
    serde_json::from_value(json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 999},
                           "b": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["a", "b"], "additionalProperties": false}}}
    ]))
    .unwrap()
}

fn check_args(name: &str, args: &Value) {
    let o = args.as_object().unwrap_or_else(|| panic!("{args}"));
    match name {
        "get_weather" => {
            assert!(o["city"].as_str().unwrap().chars().count() <= 12, "{args}");
            assert!(o.keys().all(|k| k == "city" || k == "unit"), "{args}");
            if let Some(u) = o.get("unit") {
                assert!(u == "celsius" || u == "fahrenheit", "{args}");
            }
        }
        "add" => {
            assert_eq!(o.len(), 2, "{args}");
            let a = o["a"].as_f64().unwrap();
            assert!(a.fract() == 0.0 && (-99.0..=999.0).contains(&a), "{args}");
            assert!((0.0..=1.0).contains(&o["b"].as_f64().unwrap()), "{args}");
        }
        other => panic!("called {other}"),
    }
}

#[test]
fn forced_tool_calls_in_each_format_have_valid_arguments() {
    for model in ["nemotron_h_tiny", "llama_tiny"] {
        let (_f, mut s) = session(model);
        for format in [
            ToolFormat::NanoV2,
            ToolFormat::Hermes,
            ToolFormat::Qwen3Coder,
        ] {
            for (choice, seed) in [
                (ToolChoice::Required, 1),
                (ToolChoice::Required, 2),
                (ToolChoice::Named("add".into()), 3),
                (ToolChoice::Named("get_weather".into()), 4),
            ] {
                let mut req = request("What is the weather in Paris?");
                req.tools = tools();
                req.tool_choice = choice.clone();
                req.tool_format = Some(format);
                req.max_tokens = 1500;
                req.sampling = SamplingParams {
                    temperature: 1.0,
                    seed: Some(seed),
                    ..SamplingParams::default()
                };
                // The grammar writes the calls in the format's text shape (checked byte for
                // byte in engine::grammar's tests); the session's parser for the same
                // format reads them back as calls, leaving no text.
                let (content, calls, done) = generate_calls(&mut s, &req);
                let c = done.constraint.clone().unwrap();
                assert!(
                    c.complete,
                    "{model} {format} {choice}: {content:?} {done:?}"
                );
                assert_eq!(done.finish_reason, FinishReason::ToolCalls, "{content:?}");
                assert!(content.trim().is_empty(), "{model} {format}: {content:?}");
                assert!(!calls.is_empty(), "{content:?}");
                for (name, args) in &calls {
                    if let ToolChoice::Named(n) = &choice {
                        assert_eq!(name, n, "{content:?}");
                        assert_eq!(calls.len(), 1, "{content:?}");
                    }
                    check_args(name, args);
                }
            }
        }
    }
}

#[test]
fn forced_tokens_are_fed_through_the_model_before_the_next_draw() {
    // `hello world, ` is forced; the letters after it are the model's (greedy) choice,
    // which must come from the logits after the forced tokens. The oracle runs the
    // model and the grammar by hand.
    let c = Constraint::Regex("hello world, [a-z]{4}".into());
    for model in ["nemotron_h_tiny", "nemotron_h_bf16", "llama_tiny"] {
        let (folder, mut s) = session(model);
        let mut req = request("Say hello.");
        req.constraint = Some(c.clone());
        let prompt = s.render(&req).unwrap().ids;
        let (content, done) = generate(&mut s, &req);
        let stats = done.constraint.clone().unwrap();
        assert!(
            stats.complete && stats.forced_tokens > 0,
            "{model}: {stats:?}"
        );

        let m = folder.model.clone();
        let vocab = std::sync::Arc::new(
            Vocabulary::from_tokenizer(&folder.tokenizer, m.vocab_size(), &folder.eos_token_ids)
                .unwrap(),
        );
        let mut guide = Guide::new(vocab, &Grammar::from_constraint(&c).unwrap()).unwrap();
        let mut state = m.new_state(CacheConfig::default());
        let mut logits = m.forward(&prompt, &mut state, Logits::Last).unwrap();
        let mut sampler = Sampler::new(SamplingParams::default());
        let mut out: Vec<u32> = Vec::new();
        while !guide.done().unwrap() {
            let ff = guide.forced().unwrap();
            if !ff.is_empty() {
                guide.consume(&ff, true).unwrap();
                logits = m.forward(&ff, &mut state, Logits::Last).unwrap();
                out.extend(&ff);
                continue;
            }
            let mask = guide.mask().unwrap().to_vec();
            let id = sampler.sample_masked(&mut logits, &[], &[], Some(&mask));
            guide.consume(&[id], false).unwrap();
            out.push(id);
            if guide.done().unwrap() {
                break;
            }
            logits = m.forward(&[id], &mut state, Logits::Last).unwrap();
        }
        let want = folder.tokenizer.decode(&out, false).unwrap();
        assert_eq!(content, want, "{model}");
        assert!(want.starts_with("hello world, "), "{want:?}");
        // What the session fed after the prompt is the answer (the last drawn token, which
        // completed the grammar, is not fed: nothing follows it).
        let fed = &s.tokens()[prompt.len()..];
        assert_eq!(fed, &out[..out.len() - 1], "{model}");
    }
}

fn smollm2() -> Option<PathBuf> {
    match std::env::var_os("NEMO_SMOLLM2_GGUF").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        _ => {
            common::skip::require_or_skip(
                "NEMO_SMOLLM2_GGUF (the SmolLM2 GGUF) is not set to a file",
            );
            None
        }
    }
}

#[test]
fn smollm2_fills_a_forced_get_weather_call_with_paris() {
    let Some(p) = smollm2() else { return };
    let folder = ModelFolder::open(&p).unwrap();
    let mut s = Session::new(&folder, SessionOptions::default()).unwrap();
    let tool: ToolSpec = serde_json::from_value(json!({
        "type": "function",
        "function": {"name": "get_weather", "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": false}}
    }))
    .unwrap();
    // Named: exactly one call. (With `required`, several calls are allowed and SmolLM2,
    // which is not trained on tools and is not shown them until the chat template
    // renders `tools`, greedily repeats the same call until `max_tokens`.)
    {
        let choice = ToolChoice::Named("get_weather".into());
        let mut req = request("What is the weather in Paris?");
        req.messages
            .insert(0, Message::system("You are a helpful assistant."));
        req.tools = vec![tool.clone()];
        req.tool_choice = choice;
        req.max_tokens = 60;
        let (content, calls, done) = generate_calls(&mut s, &req);
        assert!(done.constraint.as_ref().unwrap().complete, "{content:?}");
        // SmolLM2 has no `<TOOLCALL>` token and no Qwen3-Coder template: Hermes.
        assert_eq!(s.tool_format(&req), ToolFormat::Hermes);
        assert_eq!(calls.len(), 1, "{content:?}");
        assert_eq!(calls[0].0, "get_weather");
        assert_eq!(calls[0].1, json!({"city": "Paris"}), "{content:?}");
    }
}

#[test]
fn bench_json_schema_compares_decode_with_and_without_the_grammar() {
    let schema = common::root().join("benches/person.schema.json");
    let out = nemo(&[
        "bench",
        "--shape",
        "tiny",
        "--json-schema",
        &schema.display().to_string(),
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "24",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vocab_size"], json!(4096), "{v}");
    assert_eq!(v["vocabulary"]["source"], json!("synthetic"), "{v}");
    for mode in ["plain", "masked", "fast_forward"] {
        assert!(
            v["decode_tokens_per_s"][mode].as_f64().unwrap() > 0.0,
            "{v}"
        );
    }
    let (p50, p99) = (
        v["grammar_ms_p50"].as_f64().unwrap(),
        v["grammar_ms_p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{v}");
    // A schema that does not compile is a usage error naming the flag.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), r#"{"type": "nonsense"}"#).unwrap();
    let out = nemo(&[
        "bench",
        "--shape",
        "tiny",
        "--json-schema",
        &bad.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--json-schema"),
        "{}",
        text(&out.stderr)
    );
}
