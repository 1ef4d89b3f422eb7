//! One answer on its way to the client: engine events → OpenAI deltas, and the whole
//! message for a response that is not streamed.
//!
//! Invariants:
//! - Reasoning goes out as `reasoning` (vLLM's field) and the same text as
//!   `reasoning_content` (llama.cpp's and older clients').
//! - Tool calls come from `Event::ToolCall`, or from the answer text through the family's
//!   own parser (`chat::tool_parser`) when tools were offered: a call's text is never
//!   shown as content. Each call gets an `index` in order; streamed, its first delta
//!   carries the id, type and name, the next one its arguments (JSON text).
//! - `finish_reason` is `tool_calls` when the answer holds a call, else the engine's
//!   (`stop` for EOS, a stop string or a completed grammar; `length`).
//! - Log-probabilities (`Event::Logprobs`) cover every generated token, the reasoning's
//!   included (as vLLM lists them in `logprobs.content`), in order, each once: streamed,
//!   a chunk carries those that arrived since the previous chunk (a token whose text is
//!   held back, for a stop string, a tag or a call, rides with a later chunk, at the
//!   latest the one with `finish_reason`). Chat's shape is
//!   `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`,
//!   completions' `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`
//!   (its dicts hold the chosen token too, so up to N + 1 entries, as OpenAI's legacy
//!   API; `text_offset` counts characters of the tokens' texts from the answer's start).
//!   A token's text is its bytes read as UTF-8 (a partial character as U+FFFD; `bytes`
//!   has the exact ones). JSON has no -inf: a token of probability 0 gets -9999.0, as
//!   OpenAI writes it.

use serde_json::{json, Map, Value};

use crate::chat::tool_parser::{ToolParser, ToolSegment};
use crate::protocol::{
    Done, Event, FinishReason, GeneratedLogprob, TokenLogprob, ToolCall, ToolFormat, ToolSpec,
};

/// A piece of the answer for the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Reasoning(String),
    Content(String),
    Call { index: usize, call: ToolCall },
}

pub struct Turn {
    parser: Option<ToolParser>,
    calls: Vec<ToolCall>,
    reasoning: String,
    content: String,
}

impl Turn {
    /// `tools`: the offered tools and their format, when the answer may hold calls.
    pub fn new(tools: Option<(ToolFormat, &[ToolSpec])>, id_prefix: &str) -> Turn {
        Turn {
            parser: tools.map(|(f, specs)| ToolParser::new(f, specs).with_id_prefix(id_prefix)),
            calls: Vec::new(),
            reasoning: String::new(),
            content: String::new(),
        }
    }

    /// The deltas an engine event gives (none for events the client does not see).
    pub fn push(&mut self, ev: &Event) -> Vec<Delta> {
        let mut out = Vec::new();
        match ev {
            Event::Reasoning(t) => {
                self.reasoning.push_str(t);
                out.push(Delta::Reasoning(t.clone()));
            }
            Event::Content(t) => match &mut self.parser {
                Some(p) => {
                    let segs = p.push(t);
                    self.segments(segs, &mut out);
                }
                None => {
                    self.content.push_str(t);
                    out.push(Delta::Content(t.clone()));
                }
            },
            Event::ToolCall(c) => self.call(c.clone(), &mut out),
            _ => {}
        }
        out
    }

    /// What the parser still holds, at the end of the answer.
    pub fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        if let Some(p) = &mut self.parser {
            let segs = p.finish();
            self.segments(segs, &mut out);
        }
        out
    }

    fn segments(&mut self, segs: Vec<ToolSegment>, out: &mut Vec<Delta>) {
        for s in segs {
            match s {
                ToolSegment::Call { call, .. } => self.call(call, out),
                ToolSegment::Text(t) | ToolSegment::Malformed { text: t, .. } => {
                    if !t.is_empty() {
                        self.content.push_str(&t);
                        out.push(Delta::Content(t));
                    }
                }
            }
        }
    }

    fn call(&mut self, call: ToolCall, out: &mut Vec<Delta>) {
        let index = self.calls.len();
        self.calls.push(call.clone());
        out.push(Delta::Call { index, call });
    }

    /// OpenAI's `finish_reason` for the answer as it ended.
    pub fn finish_reason(&self, d: &Done) -> &'static str {
        if !self.calls.is_empty() || d.finish_reason == FinishReason::ToolCalls {
            return "tool_calls";
        }
        match d.finish_reason {
            FinishReason::Length => "length",
            _ => "stop",
        }
    }

    /// The whole assistant message (non-streamed responses).
    pub fn message(&self) -> Value {
        let mut m = json!({"role": "assistant"});
        m["content"] = if self.content.is_empty() && !self.calls.is_empty() {
            Value::Null
        } else {
            json!(self.content)
        };
        if !self.reasoning.is_empty() {
            m["reasoning"] = json!(self.reasoning);
            m["reasoning_content"] = json!(self.reasoning);
        }
        if !self.calls.is_empty() {
            m["tool_calls"] = Value::Array(
                self.calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| call_json(i, c, true))
                    .collect(),
            );
        }
        m
    }

    #[cfg(test)]
    fn content(&self) -> &str {
        &self.content
    }
}

/// A call in OpenAI's shape; arguments as JSON text. `whole`: for a message (no index).
pub fn call_json(index: usize, c: &ToolCall, whole: bool) -> Value {
    let args = serde_json::to_string(&c.function.arguments).unwrap_or_else(|_| "{}".into());
    let mut v = json!({
        "id": c.id,
        "type": "function",
        "function": {"name": c.function.name, "arguments": args},
    });
    if !whole {
        v["index"] = json!(index);
    }
    v
}

/// The deltas of a streamed chunk for `d` (chat): a call is two deltas, the head (id,
/// type, name, empty arguments) and then its arguments.
pub fn delta_json(d: &Delta) -> Vec<Value> {
    match d {
        Delta::Reasoning(t) => vec![json!({"reasoning": t, "reasoning_content": t})],
        Delta::Content(t) => vec![json!({"content": t})],
        Delta::Call { index, call } => {
            let args =
                serde_json::to_string(&call.function.arguments).unwrap_or_else(|_| "{}".into());
            vec![
                json!({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                    "function": {"name": call.function.name, "arguments": ""}}]}),
                json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]}),
            ]
        }
    }
}

/// ln p as JSON (module doc: -9999.0 for a probability of 0).
fn logprob_json(l: f32) -> Value {
    if l.is_finite() {
        json!(l)
    } else {
        json!(-9999.0)
    }
}

fn token_text(t: &TokenLogprob) -> String {
    String::from_utf8_lossy(&t.bytes).into_owned()
}

/// Chat's `logprobs` for `entries` (module doc).
pub fn chat_logprobs_json(entries: &[GeneratedLogprob]) -> Value {
    let one = |t: &TokenLogprob| json!({"token": token_text(t), "logprob": logprob_json(t.logprob), "bytes": t.bytes});
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = one(&e.token);
            v["top_logprobs"] = Value::Array(e.top.iter().map(one).collect());
            v
        })
        .collect();
    json!({ "content": content })
}

/// Completions' `logprobs` for `entries` (module doc); `offset`: characters of the answer
/// before the first of them, moved past them.
pub fn completion_logprobs_json(entries: &[GeneratedLogprob], offset: &mut usize) -> Value {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut token_logprobs = Vec::with_capacity(entries.len());
    let mut top_logprobs = Vec::with_capacity(entries.len());
    let mut text_offset = Vec::with_capacity(entries.len());
    for e in entries {
        let text = token_text(&e.token);
        let mut top = Map::new();
        for t in e.top.iter().chain([&e.token]) {
            top.entry(token_text(t))
                .or_insert_with(|| logprob_json(t.logprob));
        }
        text_offset.push(*offset);
        *offset += text.chars().count();
        tokens.push(Value::String(text));
        token_logprobs.push(logprob_json(e.token.logprob));
        top_logprobs.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
        "text_offset": text_offset})
}

/// OpenAI's `usage` with nemo's numbers.
pub fn usage_json(d: &Done) -> Value {
    json!({
        "prompt_tokens": d.usage.prompt_tokens,
        "completion_tokens": d.usage.completion_tokens,
        "total_tokens": d.usage.prompt_tokens + d.usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": d.reused_tokens},
        "completion_tokens_details": {"reasoning_tokens": d.usage.reasoning_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, text: &[u8], logprob: f32, top: &[(u32, &[u8], f32)]) -> GeneratedLogprob {
        let t = |id, b: &[u8], logprob| TokenLogprob {
            id,
            bytes: b.to_vec(),
            logprob,
        };
        GeneratedLogprob {
            token: t(id, text, logprob),
            top: top.iter().map(|&(i, b, l)| t(i, b, l)).collect(),
        }
    }

    #[test]
    fn logprobs_take_the_chat_and_the_completions_shapes() {
        let entries = [
            entry(7, b"He", -0.5, &[(7, b"He", -0.5), (9, b"A", -1.5)]),
            // Half of "é" (0xC3 0xA9), and a token of probability 0.
            entry(8, &[0xC3], f32::NEG_INFINITY, &[(3, b"llo", -0.25)]),
        ];
        let chat = chat_logprobs_json(&entries);
        let c = &chat["content"];
        assert_eq!(c[0]["token"], "He");
        assert_eq!(c[0]["logprob"], -0.5);
        assert_eq!(c[0]["bytes"], json!([72, 101]));
        assert_eq!(
            c[0]["top_logprobs"][1],
            json!({"token": "A", "logprob": -1.5, "bytes": [65]})
        );
        assert_eq!(c[1]["token"], "\u{fffd}");
        assert_eq!(c[1]["bytes"], json!([0xC3]));
        assert_eq!(c[1]["logprob"], -9999.0);
        let mut offset = 3;
        let v = completion_logprobs_json(&entries, &mut offset);
        assert_eq!(v["tokens"], json!(["He", "\u{fffd}"]));
        assert_eq!(v["token_logprobs"], json!([-0.5, -9999.0]));
        assert_eq!(v["text_offset"], json!([3, 5]));
        assert_eq!(offset, 6);
        // The chosen token is in the dict even when it is not among the best.
        assert_eq!(v["top_logprobs"][0], json!({"He": -0.5, "A": -1.5}));
        assert_eq!(
            v["top_logprobs"][1],
            json!({"llo": -0.25, "\u{fffd}": -9999.0})
        );
    }

    #[test]
    fn a_call_in_the_text_becomes_a_call_and_not_content() {
        let specs = vec![ToolSpec {
            name: "get_weather".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }];
        let mut t = Turn::new(Some((ToolFormat::Hermes, &specs)), "call_7_");
        let mut deltas = Vec::new();
        for piece in [
            "Let me look. <tool_",
            "call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        ] {
            deltas.extend(t.push(&Event::Content(piece.into())));
        }
        deltas.extend(t.finish());
        let calls: Vec<_> = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Call { index, call } => Some((*index, call.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1.id, "call_7_0");
        assert_eq!(calls[0].1.function.arguments["city"], "Paris");
        assert!(!t.content().contains("tool_call"), "{:?}", t.content());
        let m = t.message();
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
    }
}
