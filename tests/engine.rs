//! The engine on a real fixture model: thinking budget and wrap-up inside the loop,
//! checkpoint reuse across turns (checked against a fresh session's output), retry,
//! cancel, stop strings, seeds, and the context limit.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture;
use nemo::engine::{Engine, EngineError, Session, SessionOptions};
use nemo::model::ModelFolder;
use nemo::protocol::{
    Budget, Done, Event, FinishReason, Message, Request, SamplingParams, ThinkingOptions,
};

fn session(model: &str) -> Session {
    let folder = ModelFolder::open(&fixture(model)).unwrap();
    Session::new(&folder, SessionOptions::default()).unwrap()
}

fn request(messages: Vec<Message>, thinking: ThinkingOptions, max_tokens: usize) -> Request {
    let mut req = Request::new(messages, thinking);
    req.max_tokens = max_tokens;
    req
}

fn think(budget: Option<usize>) -> ThinkingOptions {
    ThinkingOptions {
        budget: Budget::from_limit(budget),
        ..Default::default()
    }
}

struct Output {
    reasoning: String,
    content: String,
    done: Done,
}

fn run(s: &mut Session, req: &Request) -> Output {
    let (mut reasoning, mut content) = (String::new(), String::new());
    let done = s
        .generate(req, &mut |e| match e {
            Event::Reasoning(t) => reasoning.push_str(&t),
            Event::Content(t) => content.push_str(&t),
            _ => {}
        })
        .unwrap();
    Output {
        reasoning,
        content,
        done,
    }
}

fn convo(turns: &[&str]) -> Vec<Message> {
    let mut m = vec![Message::system("You are a tiny test model.")];
    for (i, t) in turns.iter().enumerate() {
        m.push(if i % 2 == 0 {
            Message::user(*t)
        } else {
            Message::assistant(*t)
        });
    }
    m
}

#[test]
fn budget_forces_end_of_thinking_without_reprefill() {
    let mut s = session("nemotron_h_tiny");
    let req = request(convo(&["Why is the sky blue?"]), think(Some(6)), 20);
    let out = run(&mut s, &req);
    assert!(
        out.done.thinking_forced,
        "the budget did not force the end of thinking"
    );
    // 6 sampled reasoning tokens + the forced "\n</think>\n\n" tokens.
    let fed_after_prompt = s.tokens().len() - out.done.usage.prompt_tokens;
    assert!(
        out.done.usage.reasoning_tokens > 6 && out.done.usage.reasoning_tokens < 6 + 8,
        "{:?}",
        out.done.usage
    );
    assert!(!out.reasoning.is_empty());
    assert!(!out.reasoning.contains("</think>") && !out.content.contains("</think>"));
    // The prompt was fed exactly once: every token through the model is prompt or output.
    assert_eq!(
        s.fed_total(),
        out.done.usage.prompt_tokens + fed_after_prompt
    );
    // Every output token but the last sampled one (never fed) went through the model once.
    assert_eq!(fed_after_prompt, out.done.usage.completion_tokens - 1);
    assert_eq!(out.done.finish_reason, FinishReason::Length);
}

#[test]
fn budget_zero_turns_thinking_off() {
    let mut s = session("nemotron_h_tiny");
    let req = request(convo(&["Hi"]), think(Some(0)), 5);
    let plan = s.render(&req).unwrap();
    assert!(plan.text.contains("/no_think"), "{}", plan.text);
    assert!(!plan.starts_in_reasoning);
    let out = run(&mut s, &req);
    assert_eq!(out.done.usage.reasoning_tokens, 0);
    assert!(out.reasoning.is_empty());
}

#[test]
fn wrap_up_mid_stream_closes_thinking_and_the_answer_follows() {
    let mut s = session("nemotron_h_tiny");
    let req = request(convo(&["Tell me a story"]), think(None), 30);
    let controls = req.controls().clone();
    let mut seen = 0;
    let mut content = String::new();
    let done = s
        .generate(&req, &mut |e| match e {
            Event::Reasoning(_) => {
                seen += 1;
                if seen == 3 {
                    controls.wrap_up();
                }
            }
            Event::Content(t) => content.push_str(&t),
            _ => {}
        })
        .unwrap();
    assert!(done.thinking_forced);
    assert!(done.usage.reasoning_tokens < 12, "{:?}", done.usage);
    assert!(
        done.usage.completion_tokens > done.usage.reasoning_tokens,
        "no answer after wrap-up: {:?}",
        done.usage
    );
    assert!(!content.is_empty());
}

#[test]
fn live_budget_change_takes_effect_on_the_current_turn() {
    let mut s = session("nemotron_h_tiny");
    let req = request(convo(&["Count"]), think(Some(100)), 40);
    let controls = req.controls().clone();
    let mut n = 0;
    let done = s
        .generate(&req, &mut |e| {
            if let Event::Reasoning(_) = e {
                n += 1;
                if n == 2 {
                    controls.set_budget(Budget::tokens(3));
                }
            }
        })
        .unwrap();
    assert!(done.thinking_forced);
    assert!(done.usage.reasoning_tokens < 3 + 8, "{:?}", done.usage);
}

/// Turn 2 renders turn 1's answer without its reasoning; the session must restore the
/// checkpoint where the first user message ended and feed only the rest, and the result
/// must equal a fresh session reading the whole conversation.
#[test]
fn second_turn_reuses_checkpoint_and_matches_a_fresh_session() {
    let mut s = session("nemotron_h_tiny");
    let t1 = run(
        &mut s,
        &request(convo(&["What is a tiny model?"]), think(Some(5)), 12),
    );
    let mut answer = Message::assistant(t1.content.clone());
    answer.reasoning_content = Some(t1.reasoning.clone());
    let mut msgs = convo(&["What is a tiny model?"]);
    msgs.push(answer);
    msgs.push(Message::user("And why test it?"));
    let req2 = request(msgs, think(Some(5)), 12);
    let fed_before = s.fed_total();
    let t2 = run(&mut s, &req2);
    assert!(t2.done.reused_tokens > 0, "nothing reused");
    assert_eq!(
        s.fed_total() - fed_before,
        t2.done.usage.prompt_tokens - t2.done.reused_tokens
            + (s.tokens().len() - t2.done.usage.prompt_tokens)
    );

    let mut fresh = session("nemotron_h_tiny");
    let f2 = run(&mut fresh, &req2);
    assert_eq!(f2.done.reused_tokens, 0);
    assert_eq!(
        (t2.reasoning.as_str(), t2.content.as_str()),
        (f2.reasoning.as_str(), f2.content.as_str())
    );
}

#[test]
fn retry_restores_a_checkpoint_and_reproduces_the_answer() {
    let mut s = session("nemotron_h_bf16");
    let req = request(convo(&["Say something"]), think(Some(4)), 10);
    let a = run(&mut s, &req);
    let b = run(&mut s, &req);
    assert!(b.done.reused_tokens > 0 && b.done.reused_tokens < b.done.usage.prompt_tokens);
    assert_eq!((a.reasoning, a.content), (b.reasoning, b.content));
}

#[test]
fn cancel_stops_generation_with_cancelled() {
    let mut s = session("nemotron_h_tiny");
    let req = request(convo(&["Go"]), think(None), 50);
    let controls = req.controls().clone();
    let mut n = 0;
    let done = s
        .generate(&req, &mut |e| {
            if let Event::Reasoning(_) = e {
                n += 1;
                if n == 2 {
                    controls.cancel();
                }
            }
        })
        .unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert!(done.usage.completion_tokens < 10);
}

#[test]
fn stop_string_ends_the_answer_before_it() {
    let mut s = session("nemotron_h_tiny");
    let base = request(convo(&["Hi"]), think(Some(0)), 24);
    let full = run(&mut s, &base).content;
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 8, "answer too short to test: {full:?}");
    let stop: String = chars[5..8].iter().collect();
    let before: String = full[..full.find(&stop).unwrap()].to_string();
    let mut req = request(convo(&["Hi"]), think(Some(0)), 24);
    req.stop = vec![stop];
    let out = run(&mut s, &req);
    assert_eq!(out.done.finish_reason, FinishReason::StopString);
    assert_eq!(out.content, before);
}

#[test]
fn same_seed_same_output_and_another_seed_differs() {
    let sample = |seed: u64| {
        let mut s = session("nemotron_h_f16");
        let mut req = request(convo(&["Hi"]), think(None), 24);
        req.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        };
        let o = run(&mut s, &req);
        o.reasoning + &o.content
    };
    assert_eq!(sample(7), sample(7));
    assert_ne!(sample(7), sample(8));
}

#[test]
fn prompt_longer_than_context_is_a_clear_error() {
    let folder = ModelFolder::open(&fixture("nemotron_h_tiny")).unwrap();
    let mut s = Session::new(
        &folder,
        SessionOptions {
            context: Some(16),
            ..Default::default()
        },
    )
    .unwrap();
    let req = request(
        convo(&["a long enough message to overflow sixteen tokens of context"]),
        think(None),
        4,
    );
    match s.generate(&req, &mut |_| {}) {
        Err(EngineError::ContextOverflow {
            prompt,
            context: 16,
        }) => assert!(prompt >= 16),
        other => panic!("expected a context overflow, got {other:?}"),
    }
}

#[test]
fn engine_thread_streams_events_ending_with_done() {
    let engine = Engine::spawn(session("nemotron_h_tiny"));
    let events: Vec<Event> = engine
        .submit(request(convo(&["Hi"]), think(Some(3)), 8))
        .into_iter()
        .collect();
    assert!(matches!(events.first(), Some(Event::Started { .. })));
    assert!(events.iter().any(|e| matches!(e, Event::Reasoning(_))));
    assert!(matches!(events.last(), Some(Event::Done(_))));
}

#[test]
fn llama_nemotron_reads_detailed_thinking_from_the_system_message() {
    let mut s = session("llama_tiny");
    let on = s.render(&request(convo(&["Hi"]), think(None), 4)).unwrap();
    assert!(on.text.contains("detailed thinking on"), "{}", on.text);
    assert!(on.starts_in_reasoning);
    assert!(
        on.text.starts_with("<s>"),
        "the template's own BOS: {}",
        on.text
    );
    let off = s
        .render(&request(convo(&["Hi"]), think(Some(0)), 4))
        .unwrap();
    assert!(
        off.text.contains("detailed thinking off") && !off.starts_in_reasoning,
        "{}",
        off.text
    );
    let out = run(&mut s, &request(convo(&["Hi"]), think(Some(3)), 10));
    assert!(out.done.thinking_forced);
}
