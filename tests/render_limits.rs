//! What a downloaded model's chat template and a long session can cost: runaway templates
//! stop with one line naming the template and leave this process as it was; a request
//! renders and tokenizes a bounded amount however long the session already is; a prompt
//! that cannot fit is refused before tokenizing; a cancel ends a render at once.
//!
//! Templates render in the `nemo` binary's helper process here (`set_helper_exe`), as
//! they do in `nemo` itself.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixture, nemo_bin};
use nemo::chat::template::{ChatTemplate, RenderLimits};
use nemo::chat::template_sandbox::{set_helper_exe, TemplateRenderer};
use nemo::engine::prompt::{PromptBuilder, PromptStats};
use nemo::engine::{EngineError, Session, SessionOptions};
use nemo::model::ModelFolder;
use nemo::protocol::{Controls, Message, Request, ThinkingOptions};
use tokenizers::Tokenizer;

fn sandboxed() {
    set_helper_exe(nemo_bin());
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_file(fixture("nemotron_h_tiny").join("tokenizer.json")).unwrap())
}

fn fixture_template() -> String {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("nemotron_h_tiny").join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    config["chat_template"].as_str().unwrap().to_string()
}

fn builder(source: &str) -> PromptBuilder {
    sandboxed();
    let template = ChatTemplate::new(source, None, None)
        .unwrap()
        .with_name("models/bad/chat_template.jinja");
    PromptBuilder::new(Arc::new(template), tokenizer())
}

fn never() -> bool {
    false
}

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A copy of the tiny fixture model whose chat template is `source`.
fn model_with_template(source: &str) -> (tempfile::TempDir, ModelFolder) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("nemotron_h_tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("chat_template.jinja"), source).unwrap();
    let folder = ModelFolder::open(dir.path()).unwrap();
    (dir, folder)
}

fn request(messages: Vec<Message>) -> Request {
    let mut req = Request::new(messages, ThinkingOptions::default());
    req.max_tokens = 4;
    req
}

const NESTED_LOOP: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
const HUGE_STRING: &str = "{{ 'x' * 100000000 }}";
const DOUBLING: &str = "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(64) %}\
{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}";
/// Each step allocates and fills 10 MB for a few units of fuel: runs until killed. (The
/// length comes from the messages: minijinja would fold a constant while compiling.)
const SPIN: &str = "{% for i in range(100000) %}\
{% set x = 'y' * (10000000 + messages | length) %}{% endfor %}";
/// Spins when the last message says so, else renders it.
const SPIN_ON_REQUEST: &str = "{% if messages[-1].content == 'spin' %}\
{% for i in range(100000) %}{% set x = 'y' * (10000000 + messages | length) %}{% endfor %}\
{% endif %}\
<SPECIAL_11>User\n{{ messages[-1].content }}";

#[test]
fn runaway_templates_stop_with_one_line_naming_the_template() {
    let before = peak_rss();
    for (source, why) in [
        (NESTED_LOOP, &["step budget"][..]),
        // minijinja builds the 100 MB string; its output is then past the cap (or the
        // copy into the output is past the memory cap).
        (HUGE_STRING, &["more than a context", "memory cap"][..]),
        (DOUBLING, &["memory cap"][..]),
    ] {
        let mut b = builder(source);
        let t0 = Instant::now();
        let err = b
            .build(&[Message::user("hi")], true, None, 4096, &never)
            .unwrap_err()
            .to_string();
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "{source}: took {took:?} ({err})"
        );
        assert!(
            err.contains("models/bad/chat_template.jinja") && !err.contains('\n'),
            "{source}: {err}"
        );
        assert!(why.iter().any(|w| err.contains(w)), "{source}: {err}");
        // The same renderer still renders once the template is fixed: a new helper.
        eprintln!("{source}: {err} ({took:?})");
    }
    // The runaway work happened in the helper, not here.
    if let (Some(before), Some(after)) = (before, peak_rss()) {
        assert!(
            after < before + (512 << 20),
            "peak memory of this process grew from {before} to {after} bytes"
        );
    }
}

/// minijinja folds constant expressions while compiling: this one would be a 4 GB string
/// (and 80 GB of copying) before any render.
#[test]
fn a_template_that_folds_to_gigabytes_while_compiling_is_refused_at_load() {
    sandboxed();
    let source = format!("{{{{ {} }}}}", vec!["('x' * 100000000)"; 40].join(" ~ "));
    let before = peak_rss();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("nemotron_h_tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("chat_template.jinja");
    std::fs::write(&path, source).unwrap();
    let Err(err) = ModelFolder::open(dir.path()) else {
        panic!("the template was accepted");
    };
    let err = err.to_string();
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(
        err.contains(&path.display().to_string()) && err.contains("memory cap"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    if let (Some(before), Some(after)) = (before, peak_rss()) {
        assert!(after < before + (512 << 20), "{before} -> {after}");
    }
}

/// The helper keeps the messages of the last request; after one that failed (a template
/// error) or was cancelled it must still render exactly the messages it is given.
#[test]
fn the_helper_renders_each_request_s_own_messages_after_a_failed_one() {
    let mut b = builder(
        "{% if messages[-1].content == 'fail' %}{{ raise_exception('no') }}{% endif %}\
{% if messages[-1].content == 'spin' %}{% for i in range(100000) %}\
{% set x = 'y' * (10000000 + messages | length) %}{% endfor %}{% endif %}{% for m in messages %}{{ m.content }}|{% endfor %}",
    );
    let m = |texts: &[&str]| -> Vec<Message> { texts.iter().map(|t| Message::user(*t)).collect() };
    assert_eq!(
        b.build(&m(&["a", "b"]), true, None, 4096, &never)
            .unwrap()
            .text,
        "a|b|"
    );
    let err = b
        .build(&m(&["a", "fail"]), true, None, 4096, &never)
        .unwrap_err();
    assert!(err.to_string().contains("no"), "{err}");
    assert_eq!(
        b.build(&m(&["a", "b", "c"]), true, None, 4096, &never)
            .unwrap()
            .text,
        "a|b|c|"
    );
    let cancel = Instant::now();
    let spun = b.build(&m(&["a", "spin"]), true, None, 4096, &|| {
        cancel.elapsed() > Duration::from_millis(50)
    });
    assert!(matches!(spun, Err(EngineError::Cancelled)), "{spun:?}");
    assert_eq!(
        b.build(&m(&["a", "b", "c", "d"]), true, None, 4096, &never)
            .unwrap()
            .text,
        "a|b|c|d|"
    );
}

/// A helper killed from outside between requests is replaced without an error.
#[test]
fn a_helper_killed_between_requests_is_replaced() {
    sandboxed();
    let template = Arc::new(ChatTemplate::new(&fixture_template(), None, None).unwrap());
    let mut r = TemplateRenderer::new(template);
    let limits = RenderLimits::for_input(Default::default(), 1 << 20);
    let msgs = [Message::user("hi")];
    let extra = serde_json::Map::new();
    let first = r.render(&msgs, &extra, &[1], &limits, &never).unwrap();
    let pid = r.helper_pid().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(50));
    let again = r.render(&msgs, &extra, &[1], &limits, &never).unwrap();
    assert_eq!(again, first);
    assert_ne!(r.helper_pid(), Some(pid));
}

#[test]
fn a_template_named_by_its_file_stops_a_session_request_with_its_path() {
    sandboxed();
    let (dir, folder) = model_with_template(DOUBLING);
    let mut s = Session::new(&folder, SessionOptions::default()).unwrap();
    let err = s
        .generate(&request(vec![Message::user("hi")]), &mut |_| {})
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EngineError::Render(_)), "{text}");
    let path = dir.path().join("chat_template.jinja");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("memory cap"), "{text}");
}

#[test]
fn a_long_session_and_a_large_message_still_render() {
    let mut b = builder(&fixture_template());
    let mut msgs = vec![Message::system("You are a test.")];
    for t in 0..1000 {
        msgs.push(Message::user(format!("question {t} about the tiny model?")));
        msgs.push(Message::assistant(format!(
            "<think>\nthinking {t}\n</think>\n\nanswer {t}."
        )));
    }
    msgs.push(Message::user("x ".repeat(1 << 18)));
    let plan = b.build(&msgs, true, None, 4 << 20, &never).unwrap();
    assert!(plan
        .text
        .starts_with("<SPECIAL_10>System\nYou are a test.\n/think\n"));
    assert!(plan.text.contains("answer 999.<SPECIAL_12>"));
    assert!(plan.text.ends_with("<SPECIAL_11>Assistant\n<think>\n"));
    assert_eq!(plan.ids, encode(&plan.text));
}

fn encode(text: &str) -> Vec<u32> {
    tokenizer().encode(text, false).unwrap().get_ids().to_vec()
}

fn delta(after: PromptStats, before: PromptStats) -> PromptStats {
    PromptStats {
        renders: after.renders - before.renders,
        tokenizations: after.tokenizations - before.tokenizations,
        tokenized_bytes: after.tokenized_bytes - before.tokenized_bytes,
    }
}

/// Turn by turn, as a chat does: every request after the first
/// renders at most 3 times (the prompt, the last answer's prefix, the new message's
/// prefix) and tokenizes only what follows the last shared turn marker, and its ids are
/// those of tokenizing the whole prompt.
fn turns(mut b: PromptBuilder, tok: &Tokenizer, thinking: bool, turns: usize) {
    let mut msgs = vec![Message::system("You are a test.")];
    let mut last_tokens = 0;
    for t in 0..turns {
        msgs.push(Message::user(format!("question {t}: why?")));
        let before = b.stats();
        let plan = b.build(&msgs, thinking, None, 1 << 20, &never).unwrap();
        let d = delta(b.stats(), before);
        if t > 0 {
            assert!(d.renders <= 3, "turn {t}: {d:?}");
            assert!(
                d.tokenized_bytes < 200,
                "turn {t}: tokenized {} bytes of {}",
                d.tokenized_bytes,
                plan.text.len()
            );
            // The checkpoint before the new user message is a boundary.
            assert!(
                plan.boundaries.iter().any(|b| *b >= last_tokens - 8),
                "turn {t}: {:?} (last prompt {last_tokens} tokens)",
                &plan.boundaries
            );
        }
        if t % 97 == 0 || t + 1 == turns {
            let full = tok.encode(plan.text.as_str(), false).unwrap();
            assert_eq!(plan.ids, full.get_ids(), "turn {t}");
        }
        last_tokens = plan.ids.len();
        let mut answer = Message::assistant(format!("answer {t}."));
        answer.reasoning_content = Some(format!("thinking about {t}"));
        msgs.push(answer);
    }
}

#[test]
fn a_thousand_turn_session_renders_at_most_three_times_per_request() {
    sandboxed();
    let tok = tokenizer();
    let template = Arc::new(ChatTemplate::new(&fixture_template(), None, None).unwrap());
    let b = PromptBuilder::new(template.clone(), tok.clone());
    turns(b, &tok, true, 1000);
    // The same in this process (no helper), shorter.
    let b = PromptBuilder::with_renderer(TemplateRenderer::in_process(template), tok.clone());
    turns(b, &tok, false, 300);
}

/// SmolLM2's GGUF tokenizer (byte-level BPE with its digit split) and its ChatML template.
#[test]
fn a_long_smollm2_session_tokenizes_incrementally_to_the_same_ids() {
    let Some(path) = std::env::var_os("NEMO_SMOLLM2_GGUF") else {
        eprintln!("skipped: NEMO_SMOLLM2_GGUF is not set (see .ci/run)");
        return;
    };
    if !Path::new(&path).is_file() {
        eprintln!("skipped: NEMO_SMOLLM2_GGUF is not a file");
        return;
    }
    sandboxed();
    let folder = ModelFolder::open(Path::new(&path)).unwrap();
    let template = folder.template.clone().unwrap();
    let b = PromptBuilder::new(template, folder.tokenizer.clone());
    turns(b, &folder.tokenizer, false, 1000);
}

#[test]
fn a_prompt_far_past_the_context_is_refused_without_tokenizing() {
    let mut b = builder(&fixture_template());
    let max = b.max_token_bytes().unwrap();
    let msgs = [Message::user("word ".repeat(1 << 20))];
    let err = b.build(&msgs, true, None, 1000, &never).unwrap_err();
    match &err {
        EngineError::PromptTooLong {
            bytes,
            context: 1000,
            max_bytes,
            ..
        } => {
            assert!(*bytes > 5 << 20 && *max_bytes == 1000 * max, "{err}")
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    assert_eq!(b.stats().tokenizations, 0, "{err}");
    assert!(err.to_string().contains("1000 tokens"), "{err}");
}

#[test]
fn cancel_during_a_spinning_render_returns_cancelled_at_once() {
    let mut b = builder(SPIN_ON_REQUEST);
    let controls = Controls::default();
    let c = controls.clone();
    let t0 = Instant::now();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c.cancel();
    });
    let result = b.build(&[Message::user("spin")], true, None, 4096, &|| {
        controls.is_cancelled()
    });
    let took = t0.elapsed();
    canceller.join().unwrap();
    assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    // The render's own time limit is 10 s; a cancel is seen within 10 ms of polling.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The killed helper is replaced on the next request.
    let plan = b
        .build(&[Message::user("hi")], true, None, 4096, &never)
        .unwrap();
    assert_eq!(plan.text, "<SPECIAL_11>User\nhi");
}

#[test]
fn a_session_request_cancelled_while_its_template_spins_ends_quickly() {
    sandboxed();
    let (_dir, folder) = model_with_template(SPIN);
    let mut s = Session::new(&folder, SessionOptions::default()).unwrap();
    let req = request(vec![Message::user("hi")]);
    // Cancelled before it starts: nothing is rendered.
    let early = request(vec![Message::user("hi")]);
    early.controls().cancel();
    assert!(matches!(
        s.generate(&early, &mut |_| {}),
        Err(EngineError::Cancelled)
    ));
    assert_eq!(s.prompt_stats().renders, 0);

    let c = req.controls().clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c.cancel();
    });
    let t0 = Instant::now();
    let result = s.generate(&req, &mut |_| {});
    let took = t0.elapsed();
    canceller.join().unwrap();
    assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
