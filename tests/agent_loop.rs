//! Tool calls and the agent loop end to end through `nemo run` with the real engine:
//! calls to tools from a schema file end the turn (`tool_calls`, exit 0, one JSON line per
//! call), a user tool from config.toml runs and its result goes back to the model, the
//! next step feeds only the new tokens, `--max-steps` ends the turn with exit 1, the
//! oldest tool output is elided when the context fills, and bad tool flags exit 2 before
//! the model loads. The fixtures have random weights, so every call here is forced
//! (`--tool-choice NAME`) and every tool's argument is an `enum`: no test runs text a
//! random model wrote. With `NEMO_SMOLLM2_GGUF`, a real model fills a forced call.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::fixture;
use common::skip::require_or_skip;
use serde_json::Value;

const FAMILIES: [&str; 2] = ["nemotron_h_tools", "nemotron3_tiny"];

/// A temp dir holding config.toml (with `tools_toml`) and an empty workspace.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(tools_toml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), tools_toml).unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn nemo(&self, args: &[&str]) -> Output {
        common::nemo_command()
            .env("NEMO_DEVICE", "cpu")
            .env("NEMO_CONFIG", self.path("config.toml"))
            .env("NEMO_DATA_DIR", self.path("data"))
            .env_remove("NEMO_MODEL")
            .env_remove("NEMO_APPROVAL")
            .env_remove("NEMO_SANDBOX")
            .arg("run")
            .arg("--workspace")
            .arg(self.path("ws"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn events(o: &Output) -> Vec<Value> {
    text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn of_kind<'a>(evs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == kind).collect()
}

const WEATHER: &str = r#"[{"type": "function", "function": {"name": "get_weather",
  "description": "The weather in a city",
  "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
                 "required": ["city"], "additionalProperties": false}}}]"#;

const PICK: &str = r#"
[tools.pick]
command = "echo picked {color}"
description = "Pick a color"
parameters = { type = "object", properties = { color = { type = "string", enum = ["red", "green", "blue"] } }, required = ["color"], additionalProperties = false }
read_only = true
"#;

fn weather_file(s: &Setup) -> String {
    let p = s.path("weather.json");
    std::fs::write(&p, WEATHER).unwrap();
    format!("@{}", p.display())
}

#[test]
fn a_call_to_a_schema_file_tool_ends_the_turn_with_tool_calls() {
    let s = Setup::new("");
    let tools = weather_file(&s);
    for m in FAMILIES {
        let model = fixture(m).display().to_string();
        let base = [
            "--model",
            &model,
            "--tools",
            &tools,
            "--tool-choice",
            "get_weather",
            "--no-think",
            "--max-tokens",
            "80",
            "weather?",
        ];
        let o = s.nemo(&[&base[..], &["--json"]].concat());
        assert!(o.status.success(), "{m}: {}", text(&o.stderr));
        let evs = events(&o);
        let calls = of_kind(&evs, "tool_call");
        assert_eq!(calls.len(), 1, "{m}: {evs:?}");
        assert_eq!(calls[0]["name"], "get_weather");
        let city = calls[0]["arguments"]["city"].as_str().unwrap();
        assert!(["Paris", "Oslo", "Lima"].contains(&city), "{m}: {city}");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert!(
            of_kind(&evs, "tool_result").is_empty(),
            "nemo has no runner for it"
        );
        let done = of_kind(&evs, "done");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0]["finish_reason"], "tool_calls", "{m}");
        assert_eq!(done[0]["steps"], 1);
        assert_eq!(of_kind(&evs, "step").len(), 1);

        // Without --json: the call is one JSON line on stdout.
        let o = s.nemo(&base);
        assert!(o.status.success(), "{m}: {}", text(&o.stderr));
        let out = text(&o.stdout);
        let lines: Vec<Value> = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{m}: {out:?}");
        assert_eq!(lines[0]["name"], "get_weather");
        assert!(lines[0]["arguments"]["city"].is_string());
    }
}

#[test]
fn the_loop_runs_a_user_tool_and_the_next_step_feeds_only_what_it_added() {
    let s = Setup::new(PICK);
    for m in FAMILIES {
        let model = fixture(m).display().to_string();
        let o = s.nemo(&[
            "--model",
            &model,
            "--tools",
            "pick",
            "--tool-choice",
            "pick",
            "--no-think",
            "--max-tokens",
            "40",
            "--max-steps",
            "4",
            "--json",
            "pick a color",
        ]);
        let evs = events(&o);
        let done = of_kind(&evs, "done");
        assert_eq!(done.len(), 1, "{m}: {}", text(&o.stderr));
        let steps = of_kind(&evs, "step");
        let n = done[0]["steps"].as_u64().unwrap() as usize;
        assert_eq!(n, steps.len());
        assert!((2..=4).contains(&n), "{m}: {n} steps");
        let finish = done[0]["finish_reason"].as_str().unwrap();
        // Later steps are `auto`: the model may call again, up to the limit.
        assert_eq!(o.status.success(), finish != "max_steps", "{m}: {finish}");
        assert!(
            ["stop", "length", "max_steps"].contains(&finish),
            "{m}: {finish}"
        );

        // The forced first call ran, and its result is the tool's real output.
        let call = of_kind(&evs, "tool_call")[0];
        let result = of_kind(&evs, "tool_result")[0];
        assert_eq!(call["id"], result["id"]);
        assert_eq!(result["ok"], true, "{m}: {result}");
        let color = call["arguments"]["color"].as_str().unwrap();
        assert!(
            result["output"]
                .as_str()
                .unwrap()
                .starts_with(&format!("picked {color}\n")),
            "{m}: {result}"
        );
        assert_eq!(steps[0]["finish_reason"], "tool_calls");

        // Step 2 restores step 1's prompt from a checkpoint: it feeds the call and the
        // result (and the generation prompt), not the conversation again.
        let p1 = steps[0]["usage"]["prompt_tokens"].as_u64().unwrap();
        let p2 = steps[1]["usage"]["prompt_tokens"].as_u64().unwrap();
        let reused2 = steps[1]["reused_tokens"].as_u64().unwrap();
        assert!(p2 > p1, "{m}");
        assert!(
            reused2 + 16 >= p1,
            "{m}: step 2 reused {reused2} of {p2}; step 1 had {p1}"
        );
        let usage_sum: u64 = steps
            .iter()
            .map(|s| s["usage"]["completion_tokens"].as_u64().unwrap())
            .sum();
        assert_eq!(done[0]["usage"]["completion_tokens"], usage_sum);
    }
}

#[test]
fn max_steps_ends_the_turn_with_exit_1() {
    let s = Setup::new(PICK);
    let model = fixture("nemotron3_tiny").display().to_string();
    let o = s.nemo(&[
        "--model",
        &model,
        "--tools",
        "pick",
        "--tool-choice",
        "pick",
        "--no-think",
        "--max-tokens",
        "60",
        "--max-steps",
        "1",
        "--json",
        "pick",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--max-steps 1"), "{err}");
    let evs = events(&o);
    assert_eq!(of_kind(&evs, "tool_result").len(), 1, "the call still ran");
    let done = of_kind(&evs, "done");
    assert_eq!(done[0]["finish_reason"], "max_steps");
    assert_eq!(done[0]["steps"], 1);
}

#[test]
fn the_oldest_tool_output_is_elided_when_the_context_fills() {
    let s = Setup::new(
        r#"
[tools.numbers]
command = "seq 1 {count}"
description = "Count"
parameters = { type = "object", properties = { count = { type = "string", enum = ["3000"] } }, required = ["count"], additionalProperties = false }
read_only = true
"#,
    );
    let model = fixture("nemotron_h_tools").display().to_string();
    let o = s.nemo(&[
        "--model",
        &model,
        "--tools",
        "numbers",
        "--tool-choice",
        "numbers",
        "--no-think",
        "--max-tokens",
        "48",
        "--max-steps",
        "2",
        "--context",
        "1024",
        "--json",
        "count",
    ]);
    let evs = events(&o);
    let result = of_kind(&evs, "tool_result")[0];
    // 3000 lines: about 14 KB, far more than 1024 tokens.
    assert!(result["output"].as_str().unwrap().len() > 10_000);
    let warnings = of_kind(&evs, "warning");
    assert!(
        warnings
            .iter()
            .any(|w| w["text"].as_str().unwrap().contains("elided")),
        "{evs:?}"
    );
    let steps = of_kind(&evs, "step");
    assert_eq!(
        steps.len(),
        2,
        "the step after the elision ran: {}",
        text(&o.stderr)
    );
    assert!(steps[1]["usage"]["prompt_tokens"].as_u64().unwrap() < 1024);
}

#[test]
fn bad_tool_flags_exit_2_before_the_model_loads() {
    let s = Setup::new(PICK);
    // No such model: each of these must fail on the flag first.
    let missing = s.path("no-model").display().to_string();
    let bad_file = s.path("bad.json");
    std::fs::write(&bad_file, "[{\"type\": \"function\"}]").unwrap();
    let bad_file = format!("@{}", bad_file.display());
    for (args, says) in [
        (vec!["--tools", "shell"], "--approval auto"),
        (
            vec!["--tools", "pick", "--approval", "ask"],
            "--approval ask",
        ),
        (
            vec!["--tool-choice", "required"],
            "--tool-choice needs tools",
        ),
        (vec!["--tools", "nope"], "no tool `nope`"),
        (vec!["--tools", &bad_file], "not OpenAI function schemas"),
        (
            vec!["--tools", "pick", "--tool-choice", "other"],
            "`other` is not among",
        ),
        (vec!["--tools", "pick", "--max-steps", "0"], "--max-steps"),
        (
            vec!["--tools", "pick", "--regex", "a"],
            "exclude each other",
        ),
    ] {
        let o = s.nemo(&[&["--model", missing.as_str()], &args[..], &["hi"]].concat());
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

fn smollm2() -> Option<PathBuf> {
    match std::env::var_os("NEMO_SMOLLM2_GGUF").map(PathBuf::from) {
        Some(p) if Path::new(&p).is_file() => Some(p),
        _ => {
            require_or_skip("NEMO_SMOLLM2_GGUF (the SmolLM2 GGUF) is not set to a file");
            None
        }
    }
}

#[test]
fn smollm2_fills_a_forced_get_weather_call_with_paris() {
    let Some(gguf) = smollm2() else { return };
    let s = Setup::new("");
    let p = s.path("weather.json");
    std::fs::write(
        &p,
        r#"[{"type": "function", "function": {"name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": false}}}]"#,
    )
    .unwrap();
    let o = s.nemo(&[
        "--model",
        &gguf.display().to_string(),
        "--tools",
        &format!("@{}", p.display()),
        "--tool-choice",
        "get_weather",
        "--temperature",
        "0",
        "--json",
        "What is the weather in Paris?",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let evs = events(&o);
    let calls = of_kind(&evs, "tool_call");
    assert_eq!(calls.len(), 1, "{evs:?}");
    assert_eq!(calls[0]["arguments"]["city"], "Paris");
    assert_eq!(of_kind(&evs, "done")[0]["finish_reason"], "tool_calls");
}
