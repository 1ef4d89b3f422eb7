//! `protocol::Request` → the JSON body of an OpenAI-compatible request.
//!
//! Invariants:
//! - Only what differs from the server's neutral value is sent beyond OpenAI's own fields
//!   (`top_k`, `min_p`, `repetition_penalty`), so a strict OpenAI-like server is not given
//!   fields it may refuse for nothing.
//! - Tool-call arguments go as JSON text (OpenAI's form); reasoning of earlier turns is
//!   not sent (templates drop it).
//! - A structured-output constraint goes as `response_format` (JSON schema) or vLLM's
//!   `structured_outputs` (regex, choice, grammar).

use serde_json::{json, Map, Value};

use crate::protocol::{Constraint, Message, Request, SamplingParams, ToolChoice};

/// A message in OpenAI's wire form.
pub fn message(m: &Message) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = Value::Array(
            m.tool_calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function", "function": {
                        "name": c.function.name,
                        "arguments": serde_json::to_string(&c.function.arguments)
                            .unwrap_or_else(|_| "{}".into()),
                    }})
                })
                .collect(),
        );
        if m.content.is_empty() {
            v["content"] = Value::Null;
        }
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(n) = &m.name {
        v["name"] = json!(n);
    }
    v
}

/// Sampling, stop strings and max tokens into `body`.
pub fn sampling(body: &mut Map<String, Value>, p: &SamplingParams, stop: &[String]) {
    body.insert("temperature".into(), json!(p.temperature));
    body.insert("top_p".into(), json!(p.top_p));
    if p.top_k > 0 {
        body.insert("top_k".into(), json!(p.top_k));
    }
    if p.min_p > 0.0 {
        body.insert("min_p".into(), json!(p.min_p));
    }
    if p.presence_penalty != 0.0 {
        body.insert("presence_penalty".into(), json!(p.presence_penalty));
    }
    if p.repetition_penalty != 1.0 {
        body.insert("repetition_penalty".into(), json!(p.repetition_penalty));
    }
    if let Some(s) = p.seed {
        // OpenAI's seed is a signed 64-bit integer.
        body.insert("seed".into(), json!(s as i64));
    }
    if !stop.is_empty() {
        body.insert("stop".into(), json!(stop));
    }
}

/// The chat body for `req` with `messages` (already adapted for thinking), streamed.
pub fn chat(
    model: &str,
    req: &Request,
    messages: &[Message],
    max_tokens: usize,
) -> Map<String, Value> {
    let mut b = Map::new();
    b.insert("model".into(), json!(model));
    b.insert(
        "messages".into(),
        Value::Array(messages.iter().map(message).collect()),
    );
    b.insert("stream".into(), json!(true));
    b.insert("stream_options".into(), json!({"include_usage": true}));
    b.insert("max_tokens".into(), json!(max_tokens));
    sampling(&mut b, &req.sampling, &req.stop);
    if !req.tools.is_empty() {
        b.insert(
            "tools".into(),
            serde_json::to_value(&req.tools).unwrap_or(Value::Null),
        );
        let choice = match &req.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
        };
        b.insert("tool_choice".into(), choice);
    }
    match &req.constraint {
        None => {}
        Some(Constraint::JsonSchema(s)) => {
            b.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": s, "strict": true}}),
            );
        }
        Some(Constraint::Regex(r)) => {
            b.insert("structured_outputs".into(), json!({"regex": r}));
        }
        Some(Constraint::Choice(c)) => {
            b.insert("structured_outputs".into(), json!({"choice": c}));
        }
        Some(Constraint::Lark(g)) => {
            b.insert("structured_outputs".into(), json!({"grammar": g}));
        }
    }
    b
}

/// The `/v1/completions` body that continues `prompt`, streamed.
pub fn completion(
    model: &str,
    req: &Request,
    prompt: &str,
    max_tokens: usize,
) -> Map<String, Value> {
    let mut b = Map::new();
    b.insert("model".into(), json!(model));
    b.insert("prompt".into(), json!(prompt));
    b.insert("stream".into(), json!(true));
    b.insert("stream_options".into(), json!({"include_usage": true}));
    b.insert("max_tokens".into(), json!(max_tokens.max(1)));
    sampling(&mut b, &req.sampling, &req.stop);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ThinkingOptions, ToolCall};

    #[test]
    fn calls_go_as_json_text_and_neutral_values_stay_home() {
        let mut m = Message::assistant("");
        m.tool_calls = vec![ToolCall::new("c1", "f", json!({"a": 1}))];
        let v = message(&m);
        assert_eq!(v["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(v["content"], Value::Null);
        let req = Request::new(vec![Message::user("hi")], ThinkingOptions::default());
        let b = chat("m", &req, &req.messages, 10);
        assert!(b.get("top_k").is_none() && b.get("repetition_penalty").is_none());
        assert_eq!(b["max_tokens"], 10);
    }
}
