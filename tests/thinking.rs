//! Thinking control through the real binary on the CPU: `--min-thinking` masks `</think>`
//! and EOS until the minimum, and the soft landing (`--closing-message`, `--grace-tokens`)
//! shapes the forced end of thinking (`thinking.rs` is tested as a state machine beside
//! it; these run the flags through `nemo run --json` and the session's loop).
//!
//! The fixture (`nemotron_h_tiny`, whose template opens `<think>`) has random weights, so
//! which run ends its reasoning early is found, not assumed: each test first looks for a
//! seed whose run without the flag shows the behaviour the flag must change (the model
//! closing thinking, or emitting EOS, before the minimum; a budget reached mid-sentence),
//! then runs the same seed with the flag. The same seed draws the same tokens up to the
//! first step the flag changes.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use serde_json::Value;

const MIN: u64 = 16;
const CLOSING: &str = "Time to answer.";

/// `nemo run --json` on the tiny fixture, sampled with `seed`; returns the events.
fn run_json(seed: u64, extra: &[&str]) -> Vec<Value> {
    let model = common::fixture("nemotron_h_tiny").display().to_string();
    let seed = seed.to_string();
    let mut args = vec![
        "run",
        "--model",
        model.as_str(),
        "--json",
        "--temperature",
        "1",
        "--seed",
        seed.as_str(),
    ];
    args.extend_from_slice(extra);
    args.push("Hi");
    let out = common::nemo_command()
        .args(&args)
        .env("NEMO_DEVICE", "cpu")
        .env_remove("NEMO_MODEL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "nemo {args:?}: {err}");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some("done".into()),
        "nemo {args:?}: no done event"
    );
    events
}

fn text(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["event"] == kind)
        .map(|e| e["text"].as_str().unwrap())
        .collect()
}

fn done(events: &[Value]) -> &Value {
    events.last().unwrap()
}

fn reasoning_tokens(events: &[Value]) -> u64 {
    done(events)["usage"]["reasoning_tokens"].as_u64().unwrap()
}

/// Whether the run closed its reasoning itself (`</think>`, then answer text) before `MIN`.
fn closed_early(events: &[Value]) -> bool {
    let d = done(events);
    d["thinking_forced"] == false && !text(events, "content").is_empty() && {
        // The answer came after fewer than MIN reasoning tokens.
        reasoning_tokens(events) < MIN
    }
}

/// Whether the run ended with EOS while still reasoning, before `MIN`.
fn eos_early(events: &[Value]) -> bool {
    let d = done(events);
    d["finish_reason"] == "stop"
        && text(events, "content").is_empty()
        && reasoning_tokens(events) < MIN
}

/// The first seed whose run (without `--min-thinking`) satisfies `pred`.
fn seed_where(pred: fn(&[Value]) -> bool, what: &str) -> u64 {
    (1..=80)
        .find(|&s| pred(&run_json(s, &["--max-tokens", "40"])))
        .unwrap_or_else(|| panic!("no seed in 1..=80 where the tiny model {what}"))
}

/// With the minimum, the same seed reasons at least `MIN` tokens: the end of thinking and
/// EOS were masked until then, and nothing else ended the run early.
fn assert_minimum_held(seed: u64, what: &str) {
    let min = MIN.to_string();
    let ev = run_json(seed, &["--max-tokens", "40", "--min-thinking", &min]);
    let d = done(&ev);
    assert!(
        reasoning_tokens(&ev) >= MIN,
        "seed {seed} ({what} without the minimum): {} reasoning tokens with --min-thinking {MIN}: {d}",
        reasoning_tokens(&ev)
    );
    assert_eq!(d["thinking_forced"], false, "no budget was set: {d}");
    assert_ne!(
        d["finish_reason"], "stop",
        "EOS is masked until the minimum, and 40 tokens leave room past it: {d}"
    );
    assert!(!text(&ev, "reasoning").contains("</think>"), "{d}");
}

#[test]
fn min_thinking_masks_the_end_of_thinking_until_the_minimum() {
    let seed = seed_where(closed_early, "closes thinking early");
    assert_minimum_held(seed, "closes thinking early");
}

#[test]
fn min_thinking_masks_eos_until_the_minimum() {
    let seed = seed_where(eos_early, "ends with EOS while reasoning");
    assert_minimum_held(seed, "ends with EOS while reasoning");
}

/// As `thinking.rs` decides where a sentence ends: after spaces and tabs, a newline or
/// `. ! ? :`.
fn ends_sentence(t: &str) -> bool {
    let t = t.trim_end_matches([' ', '\t']);
    t.ends_with('\n') || t.ends_with(['.', '!', '?', ':'])
}

/// Tokens of the text the session forces at the budget after `sampled` reasoning text.
fn forced_tokens(sampled: &str) -> u64 {
    let tok = tokenizers::Tokenizer::from_file(common::fixture("nemotron_h_tiny/tokenizer.json"))
        .unwrap();
    let nl = if sampled.ends_with('\n') { "" } else { "\n" };
    let close = format!("{nl}{CLOSING}\n</think>\n\n");
    tok.encode(close.as_str(), false).unwrap().get_ids().len() as u64
}

/// The sampled part of a soft-landed reasoning stream: everything before the closing
/// message, which must end it (`\n` + message + `\n`; the tag itself goes to no stream).
fn sampled_part(reasoning: &str) -> &str {
    let tail = format!("{CLOSING}\n");
    let before = reasoning.strip_suffix(&tail).unwrap_or_else(|| {
        panic!("the reasoning does not end with the closing message: {reasoning:?}")
    });
    before.strip_suffix('\n').unwrap_or(before)
}

#[test]
fn closing_message_and_grace_window_land_the_budget_softly() {
    const BUDGET: u64 = 5;
    const GRACE: u64 = 4;
    let budget = BUDGET.to_string();
    let grace = GRACE.to_string();
    let args = |g: &str| -> Vec<String> {
        [
            "--max-tokens",
            "40",
            "--budget",
            &budget,
            "--closing-message",
            CLOSING,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--grace-tokens".to_string(), g.to_string()])
        .collect()
    };
    let run = |seed: u64, g: &str| {
        let a = args(g);
        run_json(seed, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // A seed whose budget is reached mid-sentence (so the grace window has work to do).
    let (seed, hard) = (1..=40)
        .map(|s| (s, run(s, "0")))
        .find(|(_, ev)| {
            done(ev)["thinking_forced"] == true
                && !ends_sentence(sampled_part(&text(ev, "reasoning")))
        })
        .expect("no seed in 1..=40 reaches the budget mid-sentence");

    // Grace 0: the message closes the reasoning right at the budget, the answer follows.
    let r0 = text(&hard, "reasoning");
    let s0 = sampled_part(&r0);
    assert_eq!(
        reasoning_tokens(&hard),
        BUDGET + forced_tokens(s0),
        "seed {seed}: the budget's sampled tokens plus the forced closing text: {r0:?}"
    );
    assert!(
        !text(&hard, "content").is_empty(),
        "seed {seed}: no answer after the forced end"
    );

    // Grace 4: the same tokens, then up to 4 more until a sentence ends, then the message.
    let soft = run(seed, &grace);
    assert_eq!(done(&soft)["thinking_forced"], true, "seed {seed}");
    let r1 = text(&soft, "reasoning");
    let s1 = sampled_part(&r1);
    assert!(
        s1.starts_with(s0) && s1.len() > s0.len(),
        "seed {seed}: the grace window did not let the sentence go on: {s0:?} then {s1:?}"
    );
    let extra = reasoning_tokens(&soft) - forced_tokens(s1) - BUDGET;
    assert!(
        (1..=GRACE).contains(&extra),
        "seed {seed}: {extra} tokens past the budget with --grace-tokens {GRACE}: {r1:?}"
    );
    if extra < GRACE {
        assert!(
            ends_sentence(s1),
            "seed {seed}: closed after {extra} grace tokens, not at a sentence end: {s1:?}"
        );
    }
    assert!(!text(&soft, "content").is_empty(), "seed {seed}: no answer");
}
