//! `nemo serve` against the official `openai` Python client (and raw HTTP where the
//! client hides the wire): each test starts the real binary on a fixture model on a free
//! loopback port. Python's `openai` package is needed (`NEMO_TEST_PYTHON`, else
//! `python3`); without it the tests say SKIP (and fail under CI, whose venv has it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::serve::{python_with, run_py, Server};
use common::skip::require_or_skip;
use serde_json::{json, Value};

fn python() -> Option<String> {
    let py = python_with("NEMO_TEST_PYTHON", "openai");
    if py.is_none() {
        require_or_skip("Python's `openai` package (pip install openai; or NEMO_TEST_PYTHON)");
    }
    py
}

fn tiny() -> std::path::PathBuf {
    common::fixture("nemotron_h_tiny")
}

/// Runs `body` (Python, with `client = openai.OpenAI(...)` on the server) and returns
/// the JSON it prints last.
fn client(py: &str, server: &Server, key: &str, body: &str) -> Value {
    let script = format!(
        "import json, os, openai\nclient = openai.OpenAI(base_url=os.environ['BASE'], api_key=os.environ['KEY'], max_retries=0, timeout=120)\n{body}"
    );
    run_py(py, &script, &[("BASE", &server.base), ("KEY", key)])
}

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather",
    "description": "The weather in a city", "parameters": {"type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"], "additionalProperties": false}}}]"#;

#[test]
fn chat_answers_plain_and_streamed_alike_with_usage_and_reasoning_fields() {
    let Some(py) = python() else { return };
    let server = Server::start(&tiny(), &[]);
    let v = client(
        &py,
        &server,
        "none",
        r#"
args = dict(model="nemotron_h_tiny", messages=[{"role": "user", "content": "Hi there"}],
            max_tokens=24, temperature=0, seed=1, extra_body={"thinking_token_budget": 6})
r = client.chat.completions.create(**args)
m = r.choices[0].message
extra = m.model_extra or {}
chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks if c.choices)
reasoning_c = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
usage = [c.usage.model_dump() for c in chunks if c.usage]
print(json.dumps({"content": m.content, "reasoning": extra.get("reasoning"),
  "reasoning_content": extra.get("reasoning_content"), "finish": r.choices[0].finish_reason,
  "usage": r.usage.model_dump(), "s_content": content, "s_reasoning": reasoning,
  "s_reasoning_content": reasoning_c, "s_finish": finish, "s_usage": usage,
  "first_role": chunks[0].choices[0].delta.role, "id": r.id, "object": r.object}))
"#,
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["first_role"], "assistant");
    // Greedy and seeded: the streamed answer is the same answer.
    assert_eq!(v["content"], v["s_content"], "{v}");
    assert_eq!(v["reasoning"], v["s_reasoning"], "{v}");
    let reasoning = v["reasoning"].as_str().unwrap_or_default();
    assert!(!reasoning.is_empty(), "{v}");
    assert_eq!(v["reasoning"], v["reasoning_content"]);
    assert_eq!(v["s_reasoning"], v["s_reasoning_content"]);
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 24, "{v}");
    assert_eq!(v["finish"], "length");
    assert_eq!(v["s_finish"], json!(["length"]));
    // The budget of 6 reasoning tokens held (the engine counts the forced end of
    // thinking, `\n</think>\n\n`, as reasoning too: a few tokens more).
    let r = u["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert!((1..=12).contains(&r), "{v}");
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 24
    );
    assert_eq!(v["s_usage"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["s_usage"][0]["completion_tokens"], 24);
}

#[test]
fn a_named_tool_choice_comes_back_as_a_tool_call_streamed_or_not() {
    let Some(py) = python() else { return };
    let server = Server::start(&tiny(), &[]);
    let v = client(
        &py,
        &server,
        "none",
        &format!(
            r#"
tools = json.loads('''{TOOLS}''')
args = dict(model="nemotron_h_tiny", messages=[{{"role": "user", "content": "Weather in Paris?"}}],
            tools=tools, tool_choice={{"type": "function", "function": {{"name": "get_weather"}}}},
            max_tokens=200, temperature=0.8, seed=3,
            extra_body={{"chat_template_kwargs": {{"enable_thinking": False}}}})
r = client.chat.completions.create(**args)
c = r.choices[0]
calls = [dict(id=t.id, type=t.type, name=t.function.name, args=t.function.arguments) for t in c.message.tool_calls or []]
chunks = list(client.chat.completions.create(stream=True, **args))
deltas = [t.model_dump() for ch in chunks if ch.choices for t in (ch.choices[0].delta.tool_calls or [])]
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
print(json.dumps({{"finish": c.finish_reason, "calls": calls, "content": c.message.content,
  "deltas": deltas, "s_finish": finish}}))
"#
        ),
    );
    assert_eq!(v["finish"], "tool_calls", "{v}");
    let calls = v["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["name"], "get_weather");
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(calls[0]["args"].as_str().unwrap()).unwrap();
    assert!(args["city"] == "Paris" || args["city"] == "Rome", "{args}");
    assert!(
        !v["content"]
            .as_str()
            .unwrap_or_default()
            .contains("TOOLCALL"),
        "{v}"
    );
    // Streamed: the head (index, id, name) first, then the arguments.
    let d = v["deltas"].as_array().unwrap();
    assert!(d.len() >= 2, "{v}");
    assert_eq!(d[0]["index"], 0);
    assert_eq!(d[0]["function"]["name"], "get_weather");
    assert!(d[0]["id"].as_str().is_some_and(|s| !s.is_empty()));
    let streamed_args: String = d
        .iter()
        .filter_map(|x| x["function"]["arguments"].as_str())
        .collect();
    let streamed: Value = serde_json::from_str(&streamed_args).unwrap();
    assert!(streamed["city"].is_string(), "{v}");
    assert_eq!(v["s_finish"], json!(["tool_calls"]));
}

#[test]
fn response_format_json_schema_and_structured_outputs_hold_the_answer() {
    let Some(py) = python() else { return };
    let server = Server::start(&tiny(), &[]);
    let v = client(
        &py,
        &server,
        "none",
        r#"
schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
          "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
r = client.chat.completions.create(model="nemotron_h_tiny",
    messages=[{"role": "user", "content": "A person"}], max_tokens=300, temperature=0.7, seed=5,
    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
c = client.chat.completions.create(model="nemotron_h_tiny",
    messages=[{"role": "user", "content": "Pick"}], max_tokens=50, temperature=1, seed=2,
    extra_body={"structured_outputs": {"choice": ["yes", "no"]}, "chat_template_kwargs": {"enable_thinking": False}})
g = client.chat.completions.create(model="nemotron_h_tiny",
    messages=[{"role": "user", "content": "Digits"}], max_tokens=50, temperature=1, seed=2,
    extra_body={"guided_regex": "[0-9]{3}", "chat_template_kwargs": {"enable_thinking": False}})
print(json.dumps({"json": r.choices[0].message.content, "choice": c.choices[0].message.content,
   "regex": g.choices[0].message.content}))
"#,
    );
    let p: Value = serde_json::from_str(v["json"].as_str().unwrap()).unwrap();
    assert!(p["name"].as_str().unwrap().chars().count() <= 8, "{v}");
    assert!((0..=120).contains(&p["age"].as_i64().unwrap()), "{v}");
    assert!(v["choice"] == "yes" || v["choice"] == "no", "{v}");
    let digits = v["regex"].as_str().unwrap();
    assert!(
        digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()),
        "{v}"
    );
}

#[test]
fn the_thinking_switch_and_both_budget_names_reach_the_engine() {
    let Some(py) = python() else { return };
    let server = Server::start(&tiny(), &[]);
    let v = client(
        &py,
        &server,
        "none",
        r#"
def ask(extra):
    r = client.chat.completions.create(model="nemotron_h_tiny",
        messages=[{"role": "user", "content": "Think"}], max_tokens=40, temperature=0, extra_body=extra)
    return r.usage.completion_tokens_details.reasoning_tokens, (r.choices[0].message.model_extra or {}).get("reasoning")
print(json.dumps({"off": ask({"chat_template_kwargs": {"enable_thinking": False}}),
   "vllm": ask({"thinking_token_budget": 3}), "nim": ask({"nvext": {"max_thinking_tokens": 5}})}))
"#,
    );
    assert_eq!(v["off"][0], 0, "{v}");
    assert!(v["off"][1].is_null(), "{v}");
    // Greedy, both forced to close: the two budgets differ by exactly their difference
    // (each count includes the same forced end of thinking).
    let (vllm, nim) = (
        v["vllm"][0].as_u64().unwrap(),
        v["nim"][0].as_u64().unwrap(),
    );
    assert_eq!(nim - vllm, 2, "{v}");
    assert!(vllm < 12, "{v}");
}

#[test]
fn completions_continue_a_raw_prompt() {
    let Some(py) = python() else { return };
    let server = Server::start(&tiny(), &[]);
    let v = client(
        &py,
        &server,
        "none",
        r#"
args = dict(model="nemotron_h_tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
r = client.completions.create(**args)
s = "".join(c.choices[0].text for c in client.completions.create(stream=True, **args) if c.choices)
print(json.dumps({"text": r.choices[0].text, "s": s, "usage": r.usage.model_dump(), "object": r.object}))
"#,
    );
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["text"], v["s"], "{v}");
    assert!(!v["text"].as_str().unwrap().is_empty());
    assert_eq!(v["usage"]["completion_tokens"], 12);
}

/// Checks one choice's chat `logprobs.content` against itself and the answer: every entry
/// ≤ 0 with `top` alternatives, best first, holding at most all of the probability; the
/// tokens' bytes spell `text`. With `greedy`, each token is its step's most likely one.
fn check_chat_logprobs(v: &Value, content: &Value, text: &str, top: usize, greedy: bool) {
    let entries = content.as_array().unwrap();
    let mut bytes = Vec::new();
    for e in entries {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{e}");
        let alts = e["top_logprobs"].as_array().unwrap();
        assert_eq!(alts.len(), top, "{e}");
        let alt_lps: Vec<f64> = alts
            .iter()
            .map(|a| a["logprob"].as_f64().unwrap())
            .collect();
        assert!(alt_lps.windows(2).all(|w| w[0] >= w[1]), "not sorted: {e}");
        let mass: f64 = alt_lps.iter().map(|l| l.exp()).sum();
        assert!(mass <= 1.0 + 1e-6, "{mass}: {e}");
        if greedy {
            assert_eq!(alts[0]["token"], e["token"], "{e}");
            assert_eq!(alts[0]["bytes"], e["bytes"], "{e}");
            assert_eq!(alts[0]["logprob"], e["logprob"], "{e}");
        } else {
            // Below the best alternative (or it).
            assert!(lp <= alt_lps[0], "{e}");
        }
        for b in e["bytes"].as_array().unwrap() {
            bytes.push(b.as_u64().unwrap() as u8);
        }
    }
    assert_eq!(String::from_utf8_lossy(&bytes), text, "{v}");
}

#[test]
fn chat_logprobs_are_sorted_greedy_spell_the_answer_and_stream_alike() {
    let Some(py) = python() else { return };
    let server = Server::start(&tiny(), &[]);
    let v = client(
        &py,
        &server,
        "none",
        r#"
args = dict(model="nemotron_h_tiny", messages=[{"role": "user", "content": "Hi there"}],
            max_tokens=16, temperature=0, logprobs=True, top_logprobs=3,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
r = client.chat.completions.create(**args)
chunks = list(client.chat.completions.create(stream=True, **args))
s_lp = [t.model_dump() for c in chunks if c.choices and c.choices[0].logprobs
        for t in (c.choices[0].logprobs.content or [])]
s_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
# Structured: the grammar forces the rest of a choice once its first token is drawn.
choices = ["yes please", "no thanks"]
g = client.chat.completions.create(model="nemotron_h_tiny",
    messages=[{"role": "user", "content": "Pick"}], max_tokens=20, temperature=1, seed=4,
    logprobs=True, top_logprobs=5,
    extra_body={"structured_outputs": {"choice": choices}, "chat_template_kwargs": {"enable_thinking": False}})
plain = client.chat.completions.create(model="nemotron_h_tiny",
    messages=[{"role": "user", "content": "Hi there"}], max_tokens=4)
print(json.dumps({"content": r.choices[0].message.content,
  "lp": r.choices[0].logprobs.model_dump()["content"], "usage": r.usage.model_dump(),
  "s_lp": s_lp, "s_text": s_text,
  "g_content": g.choices[0].message.content, "g_lp": g.choices[0].logprobs.model_dump()["content"],
  "g_usage": g.usage.model_dump(), "plain_lp": plain.choices[0].logprobs}))
"#,
    );
    let text = v["content"].as_str().unwrap();
    check_chat_logprobs(&v, &v["lp"], text, 3, true);
    // One entry per generated token (an EOS that ends the answer is not one).
    assert_eq!(
        v["lp"].as_array().unwrap().len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        "{v}"
    );
    // Streamed: the same tokens with the same numbers, spread over the chunks.
    assert_eq!(v["s_text"], v["content"], "{v}");
    assert_eq!(v["s_lp"], v["lp"], "{v}");
    // Under the grammar: the answer is a choice, spelled by its tokens; a token the
    // grammar forced has logprob 0 and is its own only alternative, and a drawn one's
    // alternatives are all tokens the grammar allowed there (each continues a choice).
    let g = v["g_content"].as_str().unwrap();
    assert!(g == "yes please" || g == "no thanks", "{v}");
    let entries = v["g_lp"].as_array().unwrap();
    assert_eq!(
        entries.len() as u64,
        v["g_usage"]["completion_tokens"].as_u64().unwrap(),
        "{v}"
    );
    let mut spelled: Vec<u8> = Vec::new();
    let mut forced = 0;
    for e in entries {
        let alts = e["top_logprobs"].as_array().unwrap();
        if e["logprob"].as_f64().unwrap() == 0.0 && alts.len() == 1 {
            forced += 1;
            assert_eq!(alts[0]["token"], e["token"], "{e}");
        } else {
            assert!(!alts.is_empty() && alts.len() <= 5, "{e}");
            for a in alts {
                let mut next = spelled.clone();
                next.extend(
                    a["bytes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| b.as_u64().unwrap() as u8),
                );
                let next = String::from_utf8_lossy(&next).into_owned();
                assert!(
                    ["yes please", "no thanks"]
                        .iter()
                        .any(|c| c.starts_with(&next)),
                    "a masked-out alternative {next:?}: {e}"
                );
            }
        }
        spelled.extend(
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(String::from_utf8_lossy(&spelled), g, "{v}");
    assert!(forced > 0, "no token was forced: {v}");
    // Not asked for: none.
    assert!(v["plain_lp"].is_null(), "{v}");
}

/// log-softmax of `row` in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let z = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - z).collect()
}

#[test]
fn completion_logprobs_equal_the_log_softmax_of_the_reference_logits() {
    let Some(py) = python() else { return };
    // The fixture's reference (tests/fixtures/make_fixtures.py, transformers): the `long`
    // prompt's logits and the greedy tokens after it with their logits.
    let r = common::Reference::load("nemotron_h_tiny");
    let dec = &r.json["decode"];
    let prompt = r.prompt(dec["prompt"].as_str().unwrap());
    let generated: Vec<u32> = dec["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mut rows = vec![prompt.logits.last().unwrap().clone()];
    rows.extend(r.matrix(&dec["logits"]));
    // The prompt as text that nemo's raw completion tokenizes back to the same ids.
    let folder = nemo::model::ModelFolder::open(&tiny()).unwrap();
    let text = folder.tokenizer.decode(&prompt.ids, false).unwrap();
    let back = folder.tokenizer.encode(text.as_str(), false).unwrap();
    assert_eq!(back.get_ids(), prompt.ids.as_slice(), "{text:?}");

    let server = Server::start(&tiny(), &[]);
    let v = client(
        &py,
        &server,
        "none",
        &format!(
            r#"
r = client.completions.create(model="nemotron_h_tiny", prompt=json.loads({prompt}),
    max_tokens={n}, temperature=0, logprobs=3)
print(json.dumps(r.choices[0].logprobs.model_dump()))
"#,
            prompt = serde_json::to_string(&serde_json::to_string(&text).unwrap()).unwrap(),
            n = generated.len(),
        ),
    );
    let token_lps = v["token_logprobs"].as_array().unwrap();
    assert_eq!(token_lps.len(), generated.len(), "{v}");
    let tol = 1e-3;
    for (k, &id) in generated.iter().enumerate() {
        let want = log_softmax(&rows[k]);
        let got = token_lps[k].as_f64().unwrap();
        assert!(
            (got - want[id as usize]).abs() < tol,
            "token {k}: {got} against {}",
            want[id as usize]
        );
        // The dict: the 3 most likely, the greedy token first among them (two tokens
        // with the same text, e.g. two halves of characters as U+FFFD, share a key).
        let mut best = want.clone();
        best.sort_by(|a, b| b.total_cmp(a));
        let best = &best[..3];
        let mut alts: Vec<f64> = v["top_logprobs"][k]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_f64().unwrap())
            .collect();
        alts.sort_by(|a, b| b.total_cmp(a));
        assert!((1..=3).contains(&alts.len()), "{v}");
        assert!(
            (alts[0] - best[0]).abs() < tol,
            "token {k}: {alts:?} against {best:?}"
        );
        assert!(
            (got - best[0]).abs() < tol,
            "token {k} is not the greedy one"
        );
        for a in &alts {
            assert!(
                best.iter().any(|b| (a - b).abs() < tol),
                "token {k}: {alts:?} against {best:?}"
            );
        }
    }
    // Offsets: each token starts where the one before ended.
    let tokens = v["tokens"].as_array().unwrap();
    let offsets = v["text_offset"].as_array().unwrap();
    let mut at = 0;
    for (t, o) in tokens.iter().zip(offsets) {
        assert_eq!(o.as_u64().unwrap(), at, "{v}");
        at += t.as_str().unwrap().chars().count() as u64;
    }
}

/// A POST of a `len`-byte body (spaces) whose answer is read while the body is still being
/// written, on another thread: the status and body of the answer (10 s at most). The
/// server may answer and close before taking the rest, which a client that writes first and
/// reads after sees as a broken pipe instead of the answer.
fn post_reading_early(server: &Server, path: &str, key: &str, len: usize) -> (u16, Value) {
    use std::io::{Read, Write};
    let origin = server.origin();
    let host = origin.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&host).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut w = sock.try_clone().unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 16];
        let mut left = len;
        let mut ok = w.write_all(head.as_bytes()).is_ok();
        while ok && left > 0 {
            let n = left.min(chunk.len());
            ok = w.write_all(&chunk[..n]).is_ok();
            left -= n;
        }
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the headers and as many body bytes as they announce have arrived.
    let answer = loop {
        let n = sock.read(&mut buf).unwrap_or(0);
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let want = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= want || n == 0 {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                break (
                    status,
                    serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
                );
            }
        }
        assert!(n > 0, "no answer from the server: {text:?}");
    };
    let _ = sock.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    answer
}

/// Raw HTTP: status and body of `method path` with `body`.
fn http(server: &Server, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = ureq::request(method, &format!("{}{path}", server.origin()));
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = if method == "GET" {
        r.call()
    } else {
        r.set("Content-Type", "application/json").send_string(body)
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn check_error(v: &Value, param: Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

#[test]
fn errors_come_in_openai_shape_with_their_status() {
    let Some(py) = python() else { return };
    let server = Server::start(&tiny(), &["--api-key", "sekret"]);
    // Through the official client: its exception classes are the statuses.
    let v = client(
        &py,
        &server,
        "wrong",
        r#"
out = {}
try:
    client.models.list()
except openai.AuthenticationError as e:
    out["401"] = e.status_code
good = openai.OpenAI(base_url=os.environ['BASE'], api_key="sekret", max_retries=0)
try:
    good.chat.completions.create(model="nemotron_h_tiny", messages=[{"role": "user", "content": "x"}], temperature=9)
except openai.BadRequestError as e:
    out["400"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]
try:
    good.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
except openai.NotFoundError as e:
    out["404"] = e.status_code
try:
    good.chat.completions.create(model="nemotron_h_tiny", messages=[{"role": "user", "content": "x"}], n=2)
except openai.BadRequestError as e:
    out["n"] = e.body.get("param") if isinstance(e.body, dict) else None
out["models"] = [m.id for m in good.models.list().data]
print(json.dumps(out))
"#,
    );
    assert_eq!(v["401"], 401, "{v}");
    assert_eq!(v["400"], json!([400, "temperature"]), "{v}");
    assert_eq!(v["404"], 404, "{v}");
    assert_eq!(v["n"], "n", "{v}");
    assert_eq!(v["models"], json!(["nemotron_h_tiny"]));

    // The wire itself.
    let msgs = r#""messages": [{"role": "user", "content": "x"}]"#;
    let (s, b) = http(
        &server,
        "POST",
        "/v1/chat/completions",
        None,
        &format!("{{{msgs}}}"),
    );
    assert_eq!(s, 401);
    check_error(&b, None);
    let k = Some("sekret");
    let (s, b) = http(&server, "POST", "/v1/chat/completions", k, "{not json");
    assert_eq!(s, 400);
    check_error(&b, None);
    let (s, b) = http(
        &server,
        "POST",
        "/v1/chat/completions",
        k,
        &format!(r#"{{{msgs}, "logprobs": true, "top_logprobs": 21}}"#),
    );
    assert_eq!(s, 400);
    check_error(&b, Some("top_logprobs"));
    let (s, b) = http(
        &server,
        "POST",
        "/v1/completions",
        k,
        r#"{"prompt": "x", "logprobs": 21}"#,
    );
    assert_eq!(s, 400);
    check_error(&b, Some("logprobs"));
    let (s, b) = http(
        &server,
        "POST",
        "/v1/chat/completions",
        k,
        r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
    );
    assert_eq!(s, 400);
    check_error(&b, Some("messages[0].content[0].type"));
    let (s, b) = http(&server, "POST", "/v1/nothing", k, "{}");
    assert_eq!(s, 404);
    check_error(&b, None);
    // Over 32 MiB: 413, in the same shape (read while the body is still going out: the
    // server answers and closes without taking the rest).
    let (s, b) = post_reading_early(&server, "/v1/chat/completions", "sekret", 33 << 20);
    assert_eq!(s, 413, "{b}");
    check_error(&b, None);
    // A prompt over the context is the client's to fix: 400, never 500.
    let long = format!(
        r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "hello ".repeat(40_000)
    );
    let (s, b) = http(&server, "POST", "/v1/chat/completions", k, &long);
    assert_eq!(s, 400, "{b}");
    check_error(&b, None);
    // /health and /metrics need no key.
    let (s, _) = http(&server, "GET", "/health", None, "");
    assert_eq!(s, 200);
    let m = ureq::get(&format!("{}/metrics", server.origin()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for name in [
        "nemo_time_to_first_token_seconds_bucket",
        "nemo_inter_token_latency_seconds_count",
        "nemo_prompt_tokens_total",
        "nemo_generation_tokens_total",
        "nemo_prompt_tokens_cached_total",
        "nemo_queue_depth",
        "nemo_requests_total{endpoint=\"/v1/chat/completions\",status=\"401\"}",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
}

/// A streamed request that runs for a long while (a regex that needs thousands of
/// tokens), read by hand: the connection and the first bytes of its answer.
fn long_stream(server: &Server) -> TcpStream {
    let addr = server.origin().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    let body = r#"{"messages": [{"role": "user", "content": "go"}], "stream": true, "max_tokens": 100000,
        "temperature": 1, "seed": 1, "guided_regex": "[a-z]{60000}",
        "chat_template_kwargs": {"enable_thinking": false}}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait for content to flow: the request is running.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

#[test]
fn a_full_queue_answers_429_and_a_client_that_leaves_cancels_its_generation() {
    // A context far past the 60000 letters, so only a cancel ends the request early.
    let server = Server::start(&tiny(), &["--max-queue", "0", "--context", "200000"]);
    let running = long_stream(&server);
    assert_eq!(server.metric("nemo_requests_running"), 1.0);
    let (s, b) = http(
        &server,
        "POST",
        "/v1/chat/completions",
        None,
        r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}"#,
    );
    assert_eq!(s, 429, "{b}");
    check_error(&b, None);
    // The client goes away: its generation stops at once, long before 60000 letters.
    drop(running);
    let t0 = Instant::now();
    while server.metric("nemo_requests_running") != 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "still running after the client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let generated = server.metric("nemo_generation_tokens_total");
    assert!(generated < 5000.0, "{generated} tokens generated");
    // And the engine is free again.
    let (s, b) = http(
        &server,
        "POST",
        "/v1/chat/completions",
        None,
        r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}"#,
    );
    assert_eq!(s, 200, "{b}");
}

#[test]
fn a_client_that_leaves_a_plain_request_cancels_it_too() {
    let server = Server::start(&tiny(), &["--context", "200000"]);
    let addr = server.origin().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    let body = r#"{"messages": [{"role": "user", "content": "go"}], "max_tokens": 100000,
        "temperature": 1, "seed": 1, "guided_regex": "[a-z]{60000}",
        "chat_template_kwargs": {"enable_thinking": false}}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let t0 = Instant::now();
    while server.metric("nemo_requests_running") != 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    let t0 = Instant::now();
    while server.metric("nemo_requests_running") != 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "still running after the client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.metric("nemo_generation_tokens_total") < 5000.0);
}

/// Turn 1 and turn 2 of conversation A with conversation B's turn between them; returns
/// A's turn-2 `cached_tokens` and A's turn-1 prompt tokens.
fn interleaved(server: &Server) -> (u64, u64) {
    let ask = |msgs: Value| {
        let (s, b) = http(
            server,
            "POST",
            "/v1/chat/completions",
            None,
            &json!({"messages": msgs, "max_tokens": 8, "temperature": 0,
                "chat_template_kwargs": {"enable_thinking": false}})
            .to_string(),
        );
        assert_eq!(s, 200, "{b}");
        b
    };
    let a1 = json!([{"role": "system", "content": "You are A, a careful assistant."},
                    {"role": "user", "content": "First question from A, with some words."}]);
    let r1 = ask(a1.clone());
    let answer = r1["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    ask(
        json!([{"role": "system", "content": "Another system prompt, for B."},
               {"role": "user", "content": "B asks something else entirely."}]),
    );
    let mut a2 = a1.as_array().unwrap().clone();
    a2.push(json!({"role": "assistant", "content": answer}));
    a2.push(json!({"role": "user", "content": "A's second question."}));
    let r2 = ask(Value::Array(a2));
    (
        r2["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        r1["usage"]["prompt_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn turn_two_of_a_conversation_reuses_its_state_after_another_conversation_ran() {
    let server = Server::start(&tiny(), &[]);
    let (cached, first_prompt) = interleaved(&server);
    // Everything up to A's first question (its checkpoint) and more was kept.
    // (Not the generation prompt: the checkpoint is where A's first question ended.)
    assert!(
        cached + 10 >= first_prompt,
        "cached {cached} of a first prompt of {first_prompt}"
    );
    drop(server);
    // With one conversation kept, B's turn took A's place.
    let server = Server::start(&tiny(), &["--max-sessions", "1"]);
    let (cached, _) = interleaved(&server);
    assert!(cached < 4, "cached {cached} with --max-sessions 1");
}

#[test]
fn sigterm_finishes_the_running_request_then_exits() {
    let mut server = Server::start(&tiny(), &[]);
    let addr = server.origin().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    let body = r#"{"messages": [{"role": "user", "content": "go"}], "stream": true, "max_tokens": 400,
        "temperature": 1, "seed": 1, "guided_regex": "[a-z]{1000}",
        "chat_template_kwargs": {"enable_thinking": false}}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    while !String::from_utf8_lossy(&got).contains("\"content\":\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    server.terminate();
    // The running request goes on to its end.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    let status = server.wait(Duration::from_secs(30)).expect("did not exit");
    assert!(status.success(), "{status:?}: {}", server.log());
    assert!(TcpStream::connect(&addr).is_err());
}

#[test]
fn a_public_address_without_a_key_is_refused_in_one_line() {
    let out = common::nemo_command()
        .args(["serve", "--host", "0.0.0.0", "--model"])
        .arg(tiny())
        .env_remove("NEMO_SERVE_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--host 0.0.0.0") && err.contains("--api-key"),
        "{err}"
    );
}

#[test]
fn sigterm_answers_waiting_requests_503_and_finishes_the_running_one() {
    let mut server = Server::start(&tiny(), &["--context", "200000"]);
    let running = long_stream(&server);
    // A second request waits behind it.
    let origin = server.origin();
    let waiting = std::thread::spawn(move || {
        let r = ureq::post(&format!("{origin}/v1/chat/completions"))
            .set("Content-Type", "application/json")
            .send_string(r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}"#);
        match r {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    });
    let t0 = Instant::now();
    while server.metric("nemo_queue_depth") != 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.terminate();
    let t0 = Instant::now();
    let (status, body) = waiting.join().unwrap();
    assert_eq!(status, 503, "{body}");
    // At once, not after the running request's 60000 letters (a minute or more here).
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the waiting request was answered after {:?}",
        t0.elapsed()
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    check_error(&v, None);
    // The running one is not cut: it is still streaming (its client then leaves, which
    // ends it, and the server exits).
    let mut s = running;
    let mut buf = [0u8; 4096];
    assert!(s.read(&mut buf).unwrap() > 0);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited mid-request"
    );
    drop(s);
    let status = server.wait(Duration::from_secs(30)).expect("did not exit");
    assert!(status.success(), "{status:?}: {}", server.log());
}
