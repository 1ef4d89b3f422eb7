//! One turn against the endpoint: the streamed chat request, its chunks as engine events,
//! and the budget paths (`BudgetPath`).
//!
//! Invariants:
//! - The content of a chunk goes through nemo's own stream parser: `<think>` … `</think>`
//!   in the content becomes reasoning (a server without a reasoning parser), a tool call
//!   written as text becomes `Event::ToolCall` (a server without a tool parser). Calls the
//!   server returns as `tool_calls` deltas are joined by `index` and sent when whole.
//! - Two requests (the ThinkingBudgetClient's way): the first asks for at most `budget`
//!   tokens; when it stops there while still reasoning, the end of thinking is written
//!   (`</think>`, after a newline) and the answer continues through `/v1/completions`
//!   from the conversation rendered here with the model's own template, the reasoning and
//!   any answer so far appended. Wrap-up (or a budget lowered below what was used) stops
//!   the first stream and continues the same way, whatever the path, when the template
//!   is at hand.
//! - `Done` always comes last, after every text event; timings are measured here, tokens
//!   are the server's `usage` where it sends one (else counted chunks).

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::Sender;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::body;
use super::local_template::with_thinking;
use super::{error_message, BudgetPath, Inner, RemoteError};
use crate::chat::reasoning_parser::ReasoningParser;
use crate::chat::stream_parser::{Piece, StreamParser};
use crate::chat::tool_parser::ToolParser;
use crate::engine::prompt::{ThinkingStyle, THINK_END, THINK_START};
use crate::protocol::{
    Done, Event, FinishReason, Request, Timings, ToolCall, ToolChoice, ToolFormat, Usage,
};

/// Why a stream stopped being read.
enum End {
    /// `[DONE]` or the end of the body.
    Finished,
    /// The caller stopped reading (wrap-up, a lowered budget).
    Stopped,
    Cancelled,
}

/// What a chunk handler tells the reader.
enum Flow {
    Go,
    Stop,
}

/// A call streamed as `tool_calls` deltas, until it is whole.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Everything one turn has seen so far.
struct State<'a> {
    tx: &'a Sender<Event>,
    parser: StreamParser,
    t0: Instant,
    t_first: Option<Instant>,
    /// Reasoning and answer text sent, for the second request.
    reasoning: String,
    content: String,
    /// Text pieces sent (tokens, near enough, where no usage comes back).
    reasoning_pieces: usize,
    pieces: usize,
    calls: Vec<PartialCall>,
    emitted_calls: usize,
    finish: Option<String>,
    usage: Option<Value>,
}

impl<'a> State<'a> {
    fn new(tx: &'a Sender<Event>, parser: StreamParser) -> State<'a> {
        State {
            tx,
            parser,
            t0: Instant::now(),
            t_first: None,
            reasoning: String::new(),
            content: String::new(),
            reasoning_pieces: 0,
            pieces: 0,
            calls: Vec::new(),
            emitted_calls: 0,
            finish: None,
            usage: None,
        }
    }

    fn first(&mut self) {
        self.t_first.get_or_insert_with(Instant::now);
    }

    fn send(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Reasoning(r) => {
                    self.first();
                    self.reasoning.push_str(&r);
                    let _ = self.tx.send(Event::Reasoning(r));
                }
                Piece::Content(c) | Piece::Malformed { text: c, .. } => {
                    self.first();
                    self.content.push_str(&c);
                    let _ = self.tx.send(Event::Content(c));
                }
                Piece::Call { call, .. } => {
                    self.emitted_calls += 1;
                    let _ = self.tx.send(Event::ToolCall(call));
                }
            }
        }
    }

    /// Reasoning that came in its own field.
    fn reasoning_field(&mut self, r: &str) {
        if r.is_empty() {
            return;
        }
        self.reasoning_pieces += 1;
        self.pieces += 1;
        self.send(vec![Piece::Reasoning(r.to_string())]);
        self.progress();
    }

    /// Content text (maybe with `<think>` tags or a call in it).
    fn text(&mut self, t: &str) {
        if t.is_empty() {
            return;
        }
        self.pieces += 1;
        if self.parser.in_reasoning() {
            self.reasoning_pieces += 1;
        }
        let pieces = self.parser.push(t);
        self.send(pieces);
        self.progress();
    }

    fn progress(&mut self) {
        if self.pieces.is_multiple_of(8) {
            let dt = self.t_first.map_or(0.0, |t| t.elapsed().as_secs_f64());
            let _ = self.tx.send(Event::Progress {
                reasoning_tokens: self.reasoning_pieces,
                completion_tokens: self.pieces,
                tokens_per_s: if dt > 0.0 {
                    (self.pieces.saturating_sub(1)) as f64 / dt
                } else {
                    0.0
                },
            });
        }
    }

    /// Whether the answer is still in its reasoning (nothing answered yet).
    fn in_reasoning(&self) -> bool {
        self.content.is_empty() && self.calls.is_empty() && self.emitted_calls == 0
    }

    /// A chat chunk.
    fn chat_chunk(&mut self, v: &Value) {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v["choices"].get(0) else {
            return;
        };
        let d = &choice["delta"];
        let r = d["reasoning"]
            .as_str()
            .or_else(|| d["reasoning_content"].as_str())
            .unwrap_or("");
        self.reasoning_field(r);
        if let Some(c) = d["content"].as_str() {
            self.text(c);
        }
        if let Some(calls) = d["tool_calls"].as_array() {
            for c in calls {
                let i = c["index"].as_u64().unwrap_or(self.calls.len() as u64) as usize;
                while self.calls.len() <= i {
                    self.calls.push(PartialCall::default());
                }
                let p = &mut self.calls[i];
                if let Some(id) = c["id"].as_str() {
                    p.id = id.to_string();
                }
                if let Some(n) = c["function"]["name"].as_str() {
                    p.name.push_str(n);
                }
                match &c["function"]["arguments"] {
                    Value::String(a) => p.arguments.push_str(a),
                    Value::Object(_) => p.arguments = c["function"]["arguments"].to_string(),
                    _ => {}
                }
                self.first();
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
    }

    /// A completions chunk (the second request).
    fn completion_chunk(&mut self, v: &Value) {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v["choices"].get(0) else {
            return;
        };
        if let Some(t) = choice["text"].as_str() {
            self.text(t);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
    }

    /// Flushes the parser and sends the calls the server streamed as deltas.
    fn flush(&mut self) {
        let pieces = self.parser.finish();
        self.send(pieces);
        for p in std::mem::take(&mut self.calls) {
            let args = if p.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&p.arguments).unwrap_or(Value::String(p.arguments))
            };
            self.emitted_calls += 1;
            let _ = self
                .tx
                .send(Event::ToolCall(ToolCall::new(p.id, p.name, args)));
        }
    }
}

fn usage_num(u: &Option<Value>, path: &[&str]) -> Option<usize> {
    let mut v = u.as_ref()?;
    for k in path {
        v = v.get(k)?;
    }
    v.as_u64().map(|n| n as usize)
}

impl Inner {
    /// POSTs `body` to `path` and feeds each SSE data object to `on`, until `[DONE]`, the
    /// end, a cancel or `Flow::Stop`.
    fn stream(
        &self,
        path: &str,
        body: &Map<String, Value>,
        req: &Request,
        on: &mut dyn FnMut(&Value) -> Flow,
    ) -> Result<End, RemoteError> {
        let url = format!("{}{path}", self.base);
        let mut post = self
            .agent
            .post(&url)
            .set("Accept", "text/event-stream")
            .set("Content-Type", "application/json");
        if let Some(k) = &self.api_key {
            post = post.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = match post.send_string(&Value::Object(body.clone()).to_string()) {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                return Err(RemoteError::Status {
                    url,
                    status,
                    msg: error_message(r),
                })
            }
            Err(e) => {
                return Err(RemoteError::Unreachable {
                    url,
                    msg: e.to_string(),
                })
            }
        };
        let reader: Box<dyn Read + Send> = resp.into_reader();
        let mut reader = BufReader::new(reader);
        let mut line = String::new();
        // A body that ends before `[DONE]` or a finish reason was cut off.
        let mut finished = false;
        loop {
            if req.controls().is_cancelled() {
                return Ok(End::Cancelled);
            }
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) if finished => return Ok(End::Finished),
                Ok(0) => {
                    return Err(RemoteError::Dropped {
                        host: self.host.clone(),
                        msg: "the stream ended before the answer did".into(),
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(RemoteError::Dropped {
                        host: self.host.clone(),
                        msg: e.to_string(),
                    })
                }
            }
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                return Ok(End::Finished);
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(err) = v.get("error") {
                let msg = err["message"]
                    .as_str()
                    .or(err.as_str())
                    .unwrap_or("error")
                    .to_string();
                return Err(RemoteError::Server {
                    host: self.host.clone(),
                    msg,
                });
            }
            if req.controls().is_cancelled() {
                return Ok(End::Cancelled);
            }
            if v["choices"]
                .get(0)
                .is_some_and(|c| c["finish_reason"].is_string())
            {
                finished = true;
            }
            if let Flow::Stop = on(&v) {
                return Ok(End::Stopped);
            }
        }
    }
}

/// The tool format of a request's offered tools, when it may call one.
fn tool_format(inner: &Inner, req: &Request) -> Option<ToolFormat> {
    if req.tools.is_empty() || req.tool_choice == ToolChoice::None {
        return None;
    }
    Some(
        req.tool_format
            .or(inner.local.as_ref().and_then(|l| l.tool_format()))
            .unwrap_or(ToolFormat::Hermes),
    )
}

fn parser(inner: &Inner, req: &Request, starts_in_reasoning: bool) -> StreamParser {
    let tools = tool_format(inner, req).map(|f| ToolParser::new(f, &req.tools));
    StreamParser::new(
        ReasoningParser::new(THINK_START, THINK_END, starts_in_reasoning),
        tools,
    )
}

/// Runs one turn, sending its events to `tx`.
pub(crate) fn run(inner: &Inner, req: Request, tx: &Sender<Event>) {
    // As the engine does: a request cancelled before its turn ends at once.
    if req.controls().is_cancelled() {
        let _ = tx.send(Event::Error("cancelled".into()));
        return;
    }
    match run_turn(inner, &req, tx) {
        Ok(done) => {
            let _ = tx.send(Event::Done(done));
        }
        Err(e) => {
            let _ = tx.send(Event::Error(e.to_string()));
        }
    }
}

fn run_turn(inner: &Inner, req: &Request, tx: &Sender<Event>) -> Result<Done, RemoteError> {
    let budget = req.controls().budget();
    let path = inner.budget_path(budget);
    let thinking = budget.is_on();
    let messages = with_thinking(&req.messages, inner.style, thinking);
    let first_max = match (path, budget.limit()) {
        (BudgetPath::TwoRequest, Some(n)) => n.min(req.max_tokens),
        _ => req.max_tokens,
    };
    let mut b = body::chat(&inner.model, req, &messages, first_max);
    if inner.style == ThinkingStyle::TemplateVariable && !thinking {
        b.insert(
            "chat_template_kwargs".into(),
            json!({"enable_thinking": false}),
        );
    }
    for (k, v) in &inner.extra_body {
        b.insert(k.clone(), v.clone());
    }
    if path == BudgetPath::ServerField {
        if let (Some(n), Some(field)) = (budget.limit(), inner.kind.budget_field()) {
            match field.split_once('.') {
                Some((outer, key)) => {
                    b.insert(outer.into(), json!({ key: n }));
                }
                None => {
                    b.insert(field.into(), json!(n));
                }
            }
        }
    }
    // Where the template tells, the answer may start inside `<think>`.
    let starts_in_reasoning = match &inner.local {
        Some(l) if thinking => l
            .prompt(
                &req.messages,
                thinking,
                tool_format(inner, req).map(|f| (req.tools.as_slice(), f)),
            )
            .map(|(_, s)| s)
            .unwrap_or(false),
        _ => false,
    };
    let mut st = State::new(tx, parser(inner, req, starts_in_reasoning));
    let can_continue = inner.local.is_some();
    let mut wrapped = false;
    let end = inner.stream("/chat/completions", &b, req, &mut |v| {
        st.chat_chunk(v);
        let c = req.controls();
        let over = c
            .budget()
            .limit()
            .is_some_and(|n| st.reasoning_pieces >= n && path != BudgetPath::TwoRequest);
        if can_continue && st.in_reasoning() && (c.wants_wrap_up() || over) {
            wrapped = true;
            return Flow::Stop;
        }
        Flow::Go
    });
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            st.flush();
            return Err(e);
        }
    };
    let mut completion = usage_num(&st.usage, &["completion_tokens"]).unwrap_or(st.pieces);
    let prompt_tokens = usage_num(&st.usage, &["prompt_tokens"]).unwrap_or(0);
    let reused = usage_num(&st.usage, &["prompt_tokens_details", "cached_tokens"]).unwrap_or(0);
    let mut reasoning_tokens = usage_num(
        &st.usage,
        &["completion_tokens_details", "reasoning_tokens"],
    )
    .filter(|n| *n > 0)
    .unwrap_or(st.reasoning_pieces);
    let budget_hit = path == BudgetPath::TwoRequest
        && st.finish.as_deref() == Some("length")
        && first_max < req.max_tokens;
    let mut forced = false;
    let mut finish = match end {
        End::Cancelled => Some(FinishReason::Cancelled),
        _ => None,
    };
    if finish.is_none() && (budget_hit || wrapped) && st.emitted_calls == 0 && st.calls.is_empty() {
        // The second request: the answer from the reasoning so far.
        let Some(local) = &inner.local else {
            return Err(RemoteError::Tokenizer(
                "the two-request path needs the model's template (--tokenizer)".into(),
            ));
        };
        st.flush();
        let tools = tool_format(inner, req).map(|f| (req.tools.as_slice(), f));
        let (mut prompt, in_think) = local.prompt(&req.messages, thinking, tools)?;
        if !in_think {
            prompt.push_str(THINK_START);
            prompt.push('\n');
        }
        let mut closed = st.reasoning.clone();
        if st.content.is_empty() {
            if !closed.ends_with('\n') {
                closed.push('\n');
            }
            closed.push_str(THINK_END);
            closed.push_str("\n\n");
            forced = true;
        } else {
            // Thinking ended in the first request; the answer goes on from where it was.
            if !closed.ends_with('\n') {
                closed.push('\n');
            }
            closed.push_str(THINK_END);
            closed.push_str("\n\n");
            closed.push_str(&st.content);
        }
        prompt.push_str(&closed);
        let left = req
            .max_tokens
            .saturating_sub(completion.max(local.count(&st.reasoning)));
        if left > 0 && !req.controls().is_cancelled() {
            let cb = body::completion(&inner.model, req, &prompt, left);
            st.parser = parser(inner, req, false);
            st.usage = None;
            st.finish = None;
            let pieces_before = st.pieces;
            let end2 = inner.stream("/completions", &cb, req, &mut |v| {
                st.completion_chunk(v);
                Flow::Go
            });
            match end2 {
                Ok(End::Cancelled) => finish = Some(FinishReason::Cancelled),
                Ok(_) => {}
                Err(e) => {
                    st.flush();
                    return Err(e);
                }
            }
            completion +=
                usage_num(&st.usage, &["completion_tokens"]).unwrap_or(st.pieces - pieces_before);
        } else {
            st.finish = Some("length".into());
        }
        reasoning_tokens = reasoning_tokens.max(st.reasoning_pieces);
    }
    st.flush();
    let finish = finish.unwrap_or(if st.emitted_calls > 0 {
        FinishReason::ToolCalls
    } else {
        match st.finish.as_deref() {
            Some("length") => FinishReason::Length,
            Some("tool_calls") => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        }
    });
    let total = st.t0.elapsed().as_secs_f64();
    let ttft = st.t_first.map_or(total, |t| (t - st.t0).as_secs_f64());
    let decode = st.t_first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(Done {
        finish_reason: finish,
        usage: Usage {
            prompt_tokens,
            reasoning_tokens,
            completion_tokens: completion,
        },
        timings: Timings {
            ttft_ms: ttft * 1e3,
            prefill_tokens_per_s: if ttft > 0.0 {
                prompt_tokens.saturating_sub(reused) as f64 / ttft
            } else {
                0.0
            },
            decode_tokens_per_s: if completion > 1 && decode > 0.0 {
                (completion - 1) as f64 / decode
            } else {
                0.0
            },
            total_ms: total * 1e3,
        },
        reused_tokens: reused,
        thinking_forced: forced,
        constraint: None,
        steps: 1,
    })
}
