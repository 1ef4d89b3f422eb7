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

use serde_json::{json, Value};

use crate::chat::tool_parser::{ToolParser, ToolSegment};
use crate::protocol::{Done, Event, FinishReason, ToolCall, ToolFormat, ToolSpec};

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
