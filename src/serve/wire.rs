//! OpenAI request bodies → `protocol::Request`: the fields of `/v1/chat/completions` and
//! `/v1/completions` as OpenAI, vLLM and NIM spell them.
//!
//! Invariants:
//! - Every field nemo reads is checked for its type and range; a bad one is a 400 naming
//!   it (`param`). Sampling ranges are `SamplingParams::validate`'s, the CLI's own.
//! - A field nemo cannot honour is refused by name, never ignored: `n` > 1,
//!   `frequency_penalty` ≠ 0, `echo`, `suffix`, `best_of` > 1, non-text content parts.
//!   Fields nemo has no use for (`user`, `metadata`, `parallel_tool_calls`, …) are ignored,
//!   as OpenAI-compatible servers do.
//! - Log-probabilities: chat's `logprobs: true` with `top_logprobs` 0 to 20 (a
//!   `top_logprobs` above 0 without `logprobs: true` is refused, as OpenAI does);
//!   completions' `logprobs` N, 0 to 20 (`false` or null: none). 20 is OpenAI's limit
//!   (`protocol::MAX_TOP_LOGPROBS`).
//! - At most one structured-output field: `response_format` (json_object, json_schema),
//!   `structured_outputs` (vLLM: json, regex, choice, grammar) or `guided_*` (vLLM's older
//!   names).
//! - The thinking budget comes from `chat_template_kwargs.enable_thinking` (false = off),
//!   vLLM's `thinking_token_budget` and NIM's `nvext.max_thinking_tokens` (the smaller
//!   when both are given).

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::protocol::{
    Budget, Constraint, FunctionCall, Message, Request, SamplingParams, ThinkingOptions, ToolCall,
    ToolChoice, ToolSpec, MAX_TOP_LOGPROBS,
};

/// What a request starts from: the served model and its defaults.
pub struct Defaults<'a> {
    /// The name `/v1/models` lists; requests must name it (or no model at all).
    pub served: &'a str,
    /// The model's sampling defaults (generation_config.json or the GGUF's).
    pub sampling: &'a SamplingParams,
    /// The context length: the default `max_tokens` (the engine stops at the context).
    pub context: usize,
}

/// A parsed request.
pub struct Parsed {
    pub req: Request,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `usage`.
    pub include_usage: bool,
    /// `/v1/completions`: the prompt is fed as it is, not through the chat template.
    pub raw: bool,
}

type Obj = Map<String, Value>;

fn as_object(body: &Value) -> Result<&Obj, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))
}

/// `obj[key]`, with JSON null read as absent.
fn get<'a>(obj: &'a Obj, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_f32(obj: &Obj, key: &str) -> Result<Option<f32>, ApiError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|f| Some(f as f32))
            .ok_or_else(|| ApiError::field(key, "must be a number")),
    }
}

fn opt_i64(obj: &Obj, key: &str) -> Result<Option<i64>, ApiError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::field(key, "must be an integer")),
    }
}

fn opt_bool(obj: &Obj, key: &str) -> Result<Option<bool>, ApiError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ApiError::field(key, "must be true or false")),
    }
}

fn opt_str<'a>(obj: &'a Obj, key: &str) -> Result<Option<&'a str>, ApiError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| ApiError::field(key, "must be a string")),
    }
}

fn opt_obj<'a>(obj: &'a Obj, key: &str) -> Result<Option<&'a Obj>, ApiError> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_object()
            .map(Some)
            .ok_or_else(|| ApiError::field(key, "must be an object")),
    }
}

/// Checks `model` against the served name (404 for another); absent is the served one.
pub fn check_model(body: &Value, served: &str) -> Result<(), ApiError> {
    let obj = as_object(body)?;
    match opt_str(obj, "model")? {
        Some(m) if m != served => Err(ApiError::model_not_found(m, served)),
        _ => Ok(()),
    }
}

/// `POST /v1/chat/completions`.
pub fn chat(body: &Value, d: &Defaults) -> Result<Parsed, ApiError> {
    let obj = as_object(body)?;
    let messages = messages(obj)?;
    let tools = tools(obj)?;
    let tool_choice = tool_choice(obj, &tools)?;
    let thinking = thinking(obj)?;
    let mut req = Request::new(messages, thinking);
    req.tools = tools;
    req.tool_choice = tool_choice;
    common(obj, d, &mut req)?;
    req.constraint = constraint(obj, true)?;
    let (stream, include_usage) = stream(obj)?;
    let top = match opt_i64(obj, "top_logprobs")? {
        None => None,
        Some(n) => Some(top_count("top_logprobs", n)?),
    };
    req.logprobs = match (opt_bool(obj, "logprobs")?, top) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(n)) if n > 0 => {
            return Err(ApiError::field("top_logprobs", "needs `logprobs: true`"))
        }
        _ => None,
    };
    Ok(Parsed {
        req,
        stream,
        include_usage,
        raw: false,
    })
}

/// `POST /v1/completions`: `prompt` is one string (or an array holding one).
pub fn completion(body: &Value, d: &Defaults) -> Result<Parsed, ApiError> {
    let obj = as_object(body)?;
    let prompt = match get(obj, "prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::field(
                "prompt",
                "must be one string (batches and token ids are not supported)",
            ))
        }
        Some(_) => return Err(ApiError::field("prompt", "must be a string")),
        None => return Err(ApiError::field("prompt", "is required")),
    };
    if prompt.is_empty() {
        return Err(ApiError::field("prompt", "is empty"));
    }
    if get(obj, "suffix").is_some() {
        return Err(ApiError::field("suffix", "is not supported by nemo serve"));
    }
    if opt_bool(obj, "echo")? == Some(true) {
        return Err(ApiError::field("echo", "is not supported by nemo serve"));
    }
    if opt_i64(obj, "best_of")?.is_some_and(|n| n != 1) {
        return Err(ApiError::field("best_of", "only 1 is supported"));
    }
    let logprobs = match get(obj, "logprobs") {
        None | Some(Value::Bool(false)) => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(top_count("logprobs", n)?),
            None => {
                return Err(ApiError::field(
                    "logprobs",
                    "must be an integer from 0 to 20",
                ))
            }
        },
    };
    let thinking = thinking(obj)?;
    let mut req = Request::new(vec![Message::user(prompt)], thinking);
    req.logprobs = logprobs;
    common(obj, d, &mut req)?;
    req.constraint = constraint(obj, false)?;
    let (stream, include_usage) = stream(obj)?;
    Ok(Parsed {
        req,
        stream,
        include_usage,
        raw: true,
    })
}

/// The fields both endpoints share: model, n, max tokens, sampling, stop.
fn common(obj: &Obj, d: &Defaults, req: &mut Request) -> Result<(), ApiError> {
    if let Some(m) = opt_str(obj, "model")? {
        if m != d.served {
            return Err(ApiError::model_not_found(m, d.served));
        }
    }
    if let Some(n) = opt_i64(obj, "n")? {
        if n != 1 {
            return Err(ApiError::field(
                "n",
                format!("only 1 choice per request is supported, not {n}"),
            ));
        }
    }
    let max = match (
        opt_i64(obj, "max_completion_tokens")?,
        opt_i64(obj, "max_tokens")?,
    ) {
        (Some(n), _) => Some(("max_completion_tokens", n)),
        (None, Some(n)) => Some(("max_tokens", n)),
        (None, None) => None,
    };
    req.max_tokens = match max {
        Some((field, n)) if n < 1 => return Err(ApiError::field(field, "must be at least 1")),
        Some((_, n)) => usize::try_from(n).unwrap_or(usize::MAX),
        None => d.context,
    };
    let mut p = d.sampling.clone();
    if let Some(v) = opt_f32(obj, "temperature")? {
        p.temperature = v;
    }
    if let Some(v) = opt_f32(obj, "top_p")? {
        p.top_p = v;
    }
    if let Some(v) = opt_i64(obj, "top_k")? {
        // vLLM's -1 (and 0) switch top-k off.
        p.top_k = match v {
            -1 | 0 => 0,
            v if v < 0 => return Err(ApiError::field("top_k", "must be -1, 0 or more")),
            v => usize::try_from(v).unwrap_or(usize::MAX),
        };
    }
    if let Some(v) = opt_f32(obj, "min_p")? {
        p.min_p = v;
    }
    if let Some(v) = opt_f32(obj, "presence_penalty")? {
        p.presence_penalty = v;
    }
    if let Some(v) = opt_f32(obj, "repetition_penalty")? {
        p.repetition_penalty = v;
    }
    if let Some(v) = opt_f32(obj, "frequency_penalty")? {
        if v != 0.0 {
            return Err(ApiError::field(
                "frequency_penalty",
                "is not supported by nemo serve (use presence_penalty or repetition_penalty)",
            ));
        }
    }
    if let Some(v) = opt_i64(obj, "seed")? {
        p.seed = Some(v as u64);
    }
    p.validate()
        .map_err(|e| ApiError::field(e.field, format!("{} is outside {}", e.value, e.range)))?;
    req.sampling = p;
    req.stop = match get(obj, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::field("stop", "must be a string or strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::field("stop", "must be a string or strings")),
    };
    if req.stop.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "an empty stop string"));
    }
    Ok(())
}

/// How many alternatives per token `field` asks for: 0 to `MAX_TOP_LOGPROBS`.
fn top_count(field: &str, n: i64) -> Result<usize, ApiError> {
    match usize::try_from(n) {
        Ok(n) if n <= MAX_TOP_LOGPROBS => Ok(n),
        _ => Err(ApiError::field(
            field,
            format!("must be from 0 to {MAX_TOP_LOGPROBS}, not {n}"),
        )),
    }
}

fn stream(obj: &Obj) -> Result<(bool, bool), ApiError> {
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
    let include_usage = match opt_obj(obj, "stream_options")? {
        Some(o) => opt_bool(o, "include_usage")
            .map_err(|_| ApiError::field("stream_options.include_usage", "must be true or false"))?
            .unwrap_or(false),
        None => false,
    };
    Ok((stream, include_usage))
}

/// The budget from the fields that carry it (module doc).
fn thinking(obj: &Obj) -> Result<ThinkingOptions, ApiError> {
    let count = |field: &str, v: &Value| -> Result<Budget, ApiError> {
        match v.as_i64() {
            Some(-1) => Ok(Budget::Unlimited),
            Some(n) if (0..=Budget::MAX_TOKENS as i64).contains(&n) => {
                Ok(Budget::tokens(n as usize))
            }
            _ => Err(ApiError::field(
                field,
                format!(
                    "must be a token count from 0 to {} (or -1 for no limit)",
                    Budget::MAX_TOKENS
                ),
            )),
        }
    };
    let mut budgets = Vec::new();
    if let Some(v) = get(obj, "thinking_token_budget") {
        budgets.push(count("thinking_token_budget", v)?);
    }
    if let Some(nv) = opt_obj(obj, "nvext")? {
        if let Some(v) = get(nv, "max_thinking_tokens") {
            budgets.push(count("nvext.max_thinking_tokens", v)?);
        }
    }
    let mut budget = budgets
        .into_iter()
        .min_by_key(|b| b.limit().unwrap_or(usize::MAX))
        .unwrap_or(Budget::Unlimited);
    if let Some(kw) = opt_obj(obj, "chat_template_kwargs")? {
        match get(kw, "enable_thinking") {
            None => {}
            Some(Value::Bool(false)) => budget = Budget::Off,
            Some(Value::Bool(true)) => {}
            Some(_) => {
                return Err(ApiError::field(
                    "chat_template_kwargs.enable_thinking",
                    "must be true or false",
                ))
            }
        }
    }
    Ok(ThinkingOptions {
        budget,
        ..ThinkingOptions::default()
    })
}

/// The one structured-output field given, as a constraint (module doc).
fn constraint(obj: &Obj, chat: bool) -> Result<Option<Constraint>, ApiError> {
    let mut found: Vec<(String, Constraint)> = Vec::new();
    let schema = |field: &str, v: &Value| -> Result<Value, ApiError> {
        match v {
            Value::String(s) => serde_json::from_str(s)
                .map_err(|e| ApiError::field(field, format!("not a JSON schema: {e}"))),
            Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
            _ => Err(ApiError::field(field, "must be a JSON schema")),
        }
    };
    let text = |field: &str, v: &Value| -> Result<String, ApiError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::field(field, "must be a string"))
    };
    let choice = |field: &str, v: &Value| -> Result<Vec<String>, ApiError> {
        let items: Option<Vec<String>> = v
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or(None);
        match items {
            Some(items) if !items.is_empty() => Ok(items),
            _ => Err(ApiError::field(
                field,
                "must be a non-empty array of strings",
            )),
        }
    };
    if chat {
        if let Some(rf) = opt_obj(obj, "response_format")? {
            match opt_str(rf, "type")
                .map_err(|_| ApiError::field("response_format.type", "must be a string"))?
            {
                None | Some("text") => {}
                Some("json_object") => found.push((
                    "response_format".into(),
                    Constraint::JsonSchema(serde_json::json!({"type": "object"})),
                )),
                Some("json_schema") => {
                    let js = get(rf, "json_schema")
                        .and_then(Value::as_object)
                        .ok_or_else(|| {
                            ApiError::field("response_format.json_schema", "must be an object")
                        })?;
                    let s = get(js, "schema").ok_or_else(|| {
                        ApiError::field("response_format.json_schema.schema", "is required")
                    })?;
                    found.push((
                        "response_format".into(),
                        Constraint::JsonSchema(schema("response_format.json_schema.schema", s)?),
                    ));
                }
                Some(other) => {
                    return Err(ApiError::field(
                        "response_format.type",
                        format!("must be text, json_object or json_schema, not `{other}`"),
                    ))
                }
            }
        }
    }
    if let Some(so) = opt_obj(obj, "structured_outputs")? {
        for (k, v) in so.iter().filter(|(_, v)| !v.is_null()) {
            let field = format!("structured_outputs.{k}");
            let c = match k.as_str() {
                "json" => Constraint::JsonSchema(schema(&field, v)?),
                "regex" => Constraint::Regex(text(&field, v)?),
                "choice" => Constraint::Choice(choice(&field, v)?),
                "grammar" => Constraint::Lark(text(&field, v)?),
                // Options of the kinds above, not kinds of their own.
                "disable_fallback"
                | "disable_any_whitespace"
                | "disable_additional_properties"
                | "whitespace_pattern" => continue,
                other => {
                    return Err(ApiError::field(
                        field.clone(),
                        format!("`{other}` is not supported (json, regex, choice or grammar)"),
                    ))
                }
            };
            found.push(("structured_outputs".into(), c));
        }
    }
    for (k, f) in [
        ("guided_json", 0),
        ("guided_regex", 1),
        ("guided_choice", 2),
        ("guided_grammar", 3),
    ] {
        if let Some(v) = get(obj, k) {
            let c = match f {
                0 => Constraint::JsonSchema(schema(k, v)?),
                1 => Constraint::Regex(text(k, v)?),
                2 => Constraint::Choice(choice(k, v)?),
                _ => Constraint::Lark(text(k, v)?),
            };
            found.push((k.into(), c));
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, c)| c)),
        _ => Err(ApiError::field(
            found[1].0.clone(),
            format!(
                "only one structured-output field may be given, and `{}` is one already",
                found[0].0
            ),
        )),
    }
}

fn messages(obj: &Obj) -> Result<Vec<Message>, ApiError> {
    let list = match get(obj, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::field("messages", "is empty")),
        Some(_) => return Err(ApiError::field("messages", "must be an array")),
        None => return Err(ApiError::field("messages", "is required")),
    };
    let mut out: Vec<Message> = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let m = m
            .as_object()
            .ok_or_else(|| ApiError::field(format!("messages[{i}]"), "must be an object"))?;
        let role = opt_str(m, "role")
            .map_err(|_| ApiError::field(at("role"), "must be a string"))?
            .ok_or_else(|| ApiError::field(at("role"), "is required"))?;
        let role = match role {
            "system" | "developer" => "system",
            "user" | "assistant" | "tool" => role,
            other => {
                return Err(ApiError::field(
                    at("role"),
                    format!("must be system, developer, user, assistant or tool, not `{other}`"),
                ))
            }
        };
        let content = match get(m, "content") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let field = format!("messages[{i}].content[{j}]");
                    let p = p
                        .as_object()
                        .ok_or_else(|| ApiError::field(field.clone(), "must be an object"))?;
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => match p.get("text").and_then(Value::as_str) {
                            Some(t) => text.push_str(t),
                            None => {
                                return Err(ApiError::field(
                                    format!("{field}.text"),
                                    "must be a string",
                                ))
                            }
                        },
                        Some(other) => {
                            return Err(ApiError::field(
                                format!("{field}.type"),
                                format!("`{other}` parts are not supported (text only)"),
                            ))
                        }
                        None => {
                            return Err(ApiError::field(format!("{field}.type"), "is required"))
                        }
                    }
                }
                text
            }
            Some(_) => {
                return Err(ApiError::field(
                    at("content"),
                    "must be a string or an array of text parts",
                ))
            }
        };
        let mut msg = Message {
            role: role.into(),
            content,
            ..Message::default()
        };
        if role == "assistant" {
            for key in ["reasoning_content", "reasoning"] {
                if let Some(r) =
                    opt_str(m, key).map_err(|_| ApiError::field(at(key), "must be a string"))?
                {
                    msg.reasoning_content = Some(r.to_string());
                    break;
                }
            }
            if let Some(calls) = get(m, "tool_calls") {
                msg.tool_calls = tool_calls(calls, i)?;
            }
        }
        if role == "tool" {
            let id = opt_str(m, "tool_call_id")
                .map_err(|_| ApiError::field(at("tool_call_id"), "must be a string"))?;
            let name = opt_str(m, "name")
                .map_err(|_| ApiError::field(at("name"), "must be a string"))?
                .map(str::to_string)
                .or_else(|| {
                    // The name of the call it answers, for templates that read it.
                    let id = id?;
                    out.iter()
                        .rev()
                        .flat_map(|m| &m.tool_calls)
                        .find(|c| c.id == id)
                        .map(|c| c.function.name.clone())
                });
            msg.tool_call_id = id.map(str::to_string);
            msg.name = name;
        }
        out.push(msg);
    }
    Ok(out)
}

fn tool_calls(v: &Value, i: usize) -> Result<Vec<ToolCall>, ApiError> {
    let field = format!("messages[{i}].tool_calls");
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::field(field.clone(), "must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(j, c)| {
            let at = format!("{field}[{j}]");
            let f = c
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| ApiError::field(format!("{at}.function"), "must be an object"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::field(format!("{at}.function.name"), "is required"))?;
            // OpenAI sends the arguments as JSON text; templates want the mapping.
            let arguments = match f.get("arguments") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
                Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                    ApiError::field(format!("{at}.function.arguments"), format!("not JSON: {e}"))
                })?,
                Some(other) => other.clone(),
            };
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{i}_{j}"));
            Ok(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name: name.to_string(),
                    arguments,
                },
            })
        })
        .collect()
}

fn tools(obj: &Obj) -> Result<Vec<ToolSpec>, ApiError> {
    match get(obj, "tools") {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if let Some(kind) = t.get("type").and_then(Value::as_str) {
                    if kind != "function" {
                        return Err(ApiError::field(
                            format!("tools[{i}].type"),
                            format!("only function tools are supported, not `{kind}`"),
                        ));
                    }
                }
                serde_json::from_value::<ToolSpec>(t.clone())
                    .map_err(|e| ApiError::field(format!("tools[{i}]"), e.to_string()))
            })
            .collect(),
        Some(_) => Err(ApiError::field("tools", "must be an array")),
    }
}

fn tool_choice(obj: &Obj, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    let choice = match get(obj, "tool_choice") {
        None => return Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!("must be auto, none, required or a named function, not `{other}`"),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::field("tool_choice.function.name", "is required"))?;
            ToolChoice::Named(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::field(
                "tool_choice",
                "must be a string or {\"type\": \"function\", \"function\": {\"name\": …}}",
            ))
        }
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => {
            Err(ApiError::field("tool_choice", "`required` needs `tools`"))
        }
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => Err(ApiError::field(
            "tool_choice",
            format!("names `{n}`, which is not among `tools`"),
        )),
        _ => Ok(choice),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> (SamplingParams, &'static str) {
        (SamplingParams::default(), "tiny")
    }

    fn parse(body: Value) -> Result<Parsed, ApiError> {
        let (s, served) = defaults();
        chat(
            &body,
            &Defaults {
                served,
                sampling: &s,
                context: 100,
            },
        )
    }

    #[test]
    fn a_bad_field_is_named_in_param_and_message() {
        let e = parse(json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}))
            .err()
            .unwrap();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        assert!(e.message.contains("0..=5"), "{}", e.message);
        let e = parse(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}))
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = parse(json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}))
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = parse(json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": "yes"}))
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        let e = parse(json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]}))
            .err()
            .unwrap();
        assert_eq!(e.status, 404);
    }

    #[test]
    fn logprobs_fields_in_the_chat_and_the_completions_shape() {
        let hi = || json!({"messages": [{"role": "user", "content": "hi"}]});
        let with = |fields: Value| {
            let mut b = hi();
            for (k, v) in fields.as_object().unwrap() {
                b[k] = v.clone();
            }
            parse(b)
        };
        assert_eq!(parse(hi()).unwrap().req.logprobs, None);
        let lp = |v: Value| with(v).map(|p| p.req.logprobs);
        assert_eq!(lp(json!({"logprobs": true})).unwrap(), Some(0));
        assert_eq!(
            lp(json!({"logprobs": true, "top_logprobs": 20})).unwrap(),
            Some(20)
        );
        assert_eq!(
            lp(json!({"logprobs": false, "top_logprobs": 0})).unwrap(),
            None
        );
        for bad in [
            json!({"logprobs": true, "top_logprobs": 21}),
            json!({"logprobs": true, "top_logprobs": -1}),
            json!({"top_logprobs": 3}),
            json!({"logprobs": false, "top_logprobs": 3}),
        ] {
            let e = with(bad.clone()).err().unwrap();
            assert_eq!(e.status, 400, "{bad}");
            assert_eq!(e.param.as_deref(), Some("top_logprobs"), "{bad}");
        }
        let (s, served) = defaults();
        let d = Defaults {
            served,
            sampling: &s,
            context: 100,
        };
        let c = |v: Value| {
            let mut b = json!({"prompt": "Once"});
            b["logprobs"] = v;
            completion(&b, &d).map(|p| p.req.logprobs)
        };
        assert_eq!(c(json!(5)).unwrap(), Some(5));
        assert_eq!(c(json!(0)).unwrap(), Some(0));
        assert_eq!(c(json!(false)).unwrap(), None);
        assert_eq!(c(Value::Null).unwrap(), None);
        for bad in [json!(21), json!(-1), json!("5"), json!(true)] {
            let e = c(bad.clone()).err().unwrap();
            assert_eq!(e.param.as_deref(), Some("logprobs"), "{bad}");
        }
    }

    #[test]
    fn budget_fields_and_the_thinking_switch() {
        let p = parse(json!({"messages": [{"role": "user", "content": "hi"}],
            "thinking_token_budget": 64, "nvext": {"max_thinking_tokens": 32}}))
        .unwrap();
        assert_eq!(p.req.controls().budget(), Budget::tokens(32));
        let p = parse(json!({"messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": {"enable_thinking": false}}))
        .unwrap();
        assert_eq!(p.req.controls().budget(), Budget::Off);
        assert!(
            parse(json!({"messages": [{"role": "user", "content": "hi"}],
            "thinking_token_budget": "lots"}))
            .is_err()
        );
    }

    #[test]
    fn structured_output_in_each_spelling_and_only_one() {
        let base = || json!({"messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            parse(b).map(|p| p.req.constraint)
        };
        assert_eq!(
            with("response_format", json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}})).unwrap(),
            Some(Constraint::JsonSchema(json!({"type": "integer"})))
        );
        assert_eq!(
            with("structured_outputs", json!({"choice": ["a", "b"]})).unwrap(),
            Some(Constraint::Choice(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            with("guided_regex", json!("[0-9]+")).unwrap(),
            Some(Constraint::Regex("[0-9]+".into()))
        );
        let mut both = base();
        both["guided_regex"] = json!("a");
        both["response_format"] = json!({"type": "json_object"});
        assert!(parse(both).is_err());
    }

    #[test]
    fn tool_messages_and_calls_read_openai_shapes() {
        let p = parse(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
        .unwrap();
        assert_eq!(
            p.req.messages[1].tool_calls[0].function.arguments["city"],
            "Paris"
        );
        assert_eq!(p.req.messages[2].name.as_deref(), Some("get_weather"));
        assert_eq!(p.req.tool_choice, ToolChoice::Named("get_weather".into()));
        let e = parse(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [], "tool_choice": {"type": "function", "function": {"name": "nope"}}}))
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
    }
}
