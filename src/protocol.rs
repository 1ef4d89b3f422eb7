//! The only bridge between a front end (`nemo run`, the chat UI, later `nemo serve`) and
//! the engine and agent below it: `Op`s go down (a `Request` with its `Controls`, a reset),
//! `Event`s come up. Plain data and a few atomics, in the style of codex's protocol.
//!
//! Invariants:
//! - This module is the leaf of the crate's data: it imports nothing from `engine`,
//!   `chat`, `model`, `agent` or any UI module, so every layer can name these types.
//! - A `Request` has exactly one live thinking budget: `Request::new` builds its
//!   `Controls` from the `ThinkingOptions`, and the engine reads the budget from the
//!   controls only (a front end changes it mid-turn with `Controls::set_budget`).
//! - [`Budget`] is the one spelling of "how much may the model think": `off`, a token
//!   count, or `unlimited`, parsed by `FromStr` and printed by `Display` for every front
//!   end (flags, `/budget`, config.toml, session files).
//! - [`SamplingParams::validate`] holds the one range of every sampling value; every
//!   source (flags, `NEMO_*`, config.toml, `/set`, session files, HTTP) goes through it.
//! - [`Message`] serializes to the shape Hugging Face chat templates expect
//!   (`{"role", "content", "reasoning_content"?, "tool_calls"?, "tool_call_id"?, "name"?}`);
//!   absent optional fields are omitted entirely so templates can test them with
//!   `is defined`. Tool-call arguments are a JSON mapping, as transformers passes them.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

// ---------------------------------------------------------------------------------------
// Conversation

/// One turn of a conversation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The visible text of the turn (for the assistant: the answer, without reasoning; for
    /// a tool: its output).
    #[serde(default)]
    pub content: String,
    /// The assistant's reasoning, when it was kept apart from `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The calls an assistant turn made (OpenAI form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` turn: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a `tool` turn: the tool's name (some templates read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    fn with_role(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
            ..Self::default()
        }
    }

    /// A `system` turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self::with_role("system", content)
    }

    /// A `user` turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::with_role("user", content)
    }

    /// An `assistant` turn with no separate reasoning.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::with_role("assistant", content)
    }

    /// A `tool` turn: the output of the call `call_id` to `name`.
    pub fn tool(
        call_id: impl Into<String>,
        name: impl Into<String>,
        output: impl Into<String>,
    ) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            name: Some(name.into()),
            ..Self::with_role("tool", output)
        }
    }
}

/// A call the model made to one of the offered tools, in OpenAI's shape:
/// `{"id", "type": "function", "function": {"name", "arguments": {…}}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON value (an object for every well-formed call).
    pub arguments: serde_json::Value,
}

impl ToolCall {
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: serde_json::Value,
    ) -> Self {
        ToolCall {
            id: id.into(),
            kind: function_kind(),
            function: FunctionCall {
                name: name.into(),
                arguments,
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.function.name
    }

    pub fn arguments(&self) -> &serde_json::Value {
        &self.function.arguments
    }
}

/// A tool offered to the model, in OpenAI's function-schema form:
/// `{"type": "function", "function": {"name", "description", "parameters": <JSON schema>}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON schema of the arguments object.
    pub parameters: serde_json::Value,
}

impl Serialize for ToolSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
        .serialize(s)
    }
}

/// Reads the OpenAI form, and also the bare `{"name", "description", "parameters"}`.
impl<'de> Deserialize<'de> for ToolSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Function {
            name: String,
            #[serde(default)]
            description: String,
            #[serde(default = "empty_object_schema")]
            parameters: serde_json::Value,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Wrapped { function: Function },
            Bare(Function),
        }
        let f = match Wire::deserialize(d)? {
            Wire::Wrapped { function } | Wire::Bare(function) => function,
        };
        if f.name.trim().is_empty() {
            return Err(serde::de::Error::custom("a tool needs a non-empty `name`"));
        }
        Ok(ToolSpec {
            name: f.name,
            description: f.description,
            parameters: f.parameters,
        })
    }
}

fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// Whether the model must, may or must not call a tool (OpenAI's `tool_choice`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No call: the answer is text.
    None,
    /// The answer after reasoning is a call to one of the offered tools.
    Required,
    /// The answer after reasoning is a call to this tool.
    Named(String),
}

impl fmt::Display for ToolChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolChoice::Auto => f.write_str("auto"),
            ToolChoice::None => f.write_str("none"),
            ToolChoice::Required => f.write_str("required"),
            ToolChoice::Named(n) => f.write_str(n),
        }
    }
}

impl FromStr for ToolChoice {
    type Err = String;

    /// `auto`, `none`, `required`, or a tool's name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" => Err("tool choice must be auto, none, required or a tool name".into()),
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            name => Ok(ToolChoice::Named(name.to_string())),
        }
    }
}

/// The text form of tool calls a model family was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToolFormat {
    /// Nemotron Nano v2 and Llama-Nemotron:
    /// `<TOOLCALL>[{"name": …, "arguments": {…}}]</TOOLCALL>`.
    NanoV2,
    /// Nemotron 3 (Qwen3-Coder XML): `<tool_call>\n<function=NAME>\n<parameter=P>\nvalue\n
    /// </parameter>\n</function>\n</tool_call>`.
    Qwen3Coder,
    /// The common `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
    Hermes,
}

impl fmt::Display for ToolFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ToolFormat::NanoV2 => "nano-v2",
            ToolFormat::Qwen3Coder => "qwen3-coder",
            ToolFormat::Hermes => "hermes",
        })
    }
}

impl FromStr for ToolFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nano-v2" | "nano_v2" => Ok(ToolFormat::NanoV2),
            "qwen3-coder" | "qwen3_coder" => Ok(ToolFormat::Qwen3Coder),
            "hermes" => Ok(ToolFormat::Hermes),
            other => Err(format!(
                "tool format must be nano-v2, qwen3-coder or hermes, not {other:?}"
            )),
        }
    }
}

/// What the answer (after any reasoning) must be: structured output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// JSON valid against this schema.
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression (whole answer).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
}

/// What became of a tool call, for the front end and the next model step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The call's id.
    pub id: String,
    pub name: String,
    /// False when the tool failed, was refused or was denied.
    pub ok: bool,
    pub output: String,
    /// The output was cut to the per-result cap (and says so at the cut).
    pub truncated: bool,
}

/// A call that waits for the user before it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub call: ToolCall,
    /// Why it asks (it writes, it runs a command, …).
    pub reason: String,
    /// What it would change, when that can be shown (a diff for file edits).
    pub preview: Option<String>,
}

/// The user's answer to an [`ApprovalRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    /// Run this call once.
    Once,
    /// Run it, and this exact call again without asking for the rest of the session.
    Session,
    /// Do not run it; the note (if any) goes back to the model.
    Deny { note: Option<String> },
}

// ---------------------------------------------------------------------------------------
// Sampling

/// How to pick the next token. Neutral values switch a step off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// 0 = off.
    pub presence_penalty: f32,
    /// None = seeded from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// Greedy decoding with every filter and penalty off.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            seed: None,
        }
    }
}

/// A sampling value outside its range. `field` is the parameter's name as in
/// [`SamplingParams`]; front ends spell it their way (`--top-p`, `/set top_p`, …).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {value} is outside {range}")]
pub struct RangeError {
    pub field: &'static str,
    pub value: String,
    pub range: &'static str,
}

impl SamplingParams {
    /// The ranges, as `validate` checks them (closed intervals; NaN is never inside).
    pub const TEMPERATURE: (f32, f32) = (0.0, 5.0);
    pub const TOP_P: (f32, f32) = (0.0, 1.0);
    pub const MIN_P: (f32, f32) = (0.0, 1.0);
    pub const REPETITION_PENALTY: (f32, f32) = (0.01, 100.0);
    pub const PRESENCE_PENALTY: (f32, f32) = (-2.0, 2.0);
    /// Larger than any vocabulary nemo loads; 0 = off.
    pub const TOP_K_MAX: usize = 1 << 24;

    /// Checks every value against its one range.
    pub fn validate(&self) -> Result<(), RangeError> {
        fn check(
            field: &'static str,
            v: f32,
            (lo, hi): (f32, f32),
            range: &'static str,
        ) -> Result<(), RangeError> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(RangeError {
                    field,
                    value: v.to_string(),
                    range,
                })
            }
        }
        check("temperature", self.temperature, Self::TEMPERATURE, "0..=5")?;
        check("top_p", self.top_p, Self::TOP_P, "0..=1")?;
        check("min_p", self.min_p, Self::MIN_P, "0..=1")?;
        check(
            "repetition_penalty",
            self.repetition_penalty,
            Self::REPETITION_PENALTY,
            "0.01..=100",
        )?;
        check(
            "presence_penalty",
            self.presence_penalty,
            Self::PRESENCE_PENALTY,
            "-2..=2",
        )?;
        if self.top_k > Self::TOP_K_MAX {
            return Err(RangeError {
                field: "top_k",
                value: self.top_k.to_string(),
                range: "0..=16777216",
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Thinking

/// How much the model may think: off, at most N reasoning tokens, or without a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Thinking off (`--no-think`, `/no_think`, `enable_thinking: false`, budget 0).
    Off,
    /// At most this many reasoning tokens, then the end of thinking is forced.
    Tokens(NonZeroUsize),
    #[default]
    Unlimited,
}

/// Why a budget text was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("budget must be `off`, `unlimited` or a token count up to 1000000, not {0:?}")]
pub struct BudgetError(pub String);

impl Budget {
    /// The largest token count accepted.
    pub const MAX_TOKENS: usize = 1_000_000;

    /// `n` tokens; 0 is `Off`.
    pub const fn tokens(n: usize) -> Budget {
        match NonZeroUsize::new(n) {
            Some(n) => Budget::Tokens(n),
            None => Budget::Off,
        }
    }

    /// Whether the model thinks at all.
    pub fn is_on(self) -> bool {
        self != Budget::Off
    }

    /// The reasoning-token limit: `Some(0)` off, `Some(n)`, `None` unlimited.
    pub fn limit(self) -> Option<usize> {
        match self {
            Budget::Off => Some(0),
            Budget::Tokens(n) => Some(n.get()),
            Budget::Unlimited => None,
        }
    }

    /// The inverse of `limit`.
    pub fn from_limit(limit: Option<usize>) -> Budget {
        limit.map_or(Budget::Unlimited, Budget::tokens)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Off => f.write_str("off"),
            Budget::Tokens(n) => write!(f, "{n}"),
            Budget::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl FromStr for Budget {
    type Err = BudgetError;

    /// `off` (or `0`), `unlimited` (or `inf`), or a token count up to
    /// [`Budget::MAX_TOKENS`]; case and surrounding blanks do not matter.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "off" => Ok(Budget::Off),
            "unlimited" | "inf" => Ok(Budget::Unlimited),
            _ => match t.parse::<usize>() {
                Ok(n) if n <= Self::MAX_TOKENS => Ok(Budget::tokens(n)),
                _ => Err(BudgetError(s.to_string())),
            },
        }
    }
}

/// Written as its text (`"off"`, `"512"`, `"unlimited"`); read from that, from a number
/// (0 = off) or from null (unlimited, as session files before `Budget` wrote it).
impl Serialize for Budget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Count(u64),
            Text(String),
            Null(()),
        }
        match Option::<Wire>::deserialize(d)? {
            None | Some(Wire::Null(())) => Ok(Budget::Unlimited),
            Some(Wire::Count(n)) if n <= Budget::MAX_TOKENS as u64 => {
                Ok(Budget::tokens(n as usize))
            }
            Some(Wire::Count(n)) => Err(serde::de::Error::custom(BudgetError(n.to_string()))),
            Some(Wire::Text(t)) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How the model should think on this request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThinkingOptions {
    /// The budget the request starts with (the live one is in its `Controls`).
    pub budget: Budget,
    /// The end-of-thinking tag (and EOS) are masked until this many reasoning tokens.
    pub min_tokens: usize,
    /// Soft landing: text added before the forced end tag, e.g. "Time to answer.".
    pub closing_message: Option<String>,
    /// Soft landing: up to this many extra tokens to finish the current sentence once the
    /// budget is reached (0 = close at once).
    pub grace_tokens: usize,
}

impl Default for ThinkingOptions {
    fn default() -> Self {
        ThinkingOptions {
            budget: Budget::Unlimited,
            min_tokens: 0,
            closing_message: None,
            grace_tokens: 0,
        }
    }
}

/// Reads today's form and the one before `Budget` (`enabled` + `budget: N|null`, where
/// `enabled: false` or budget 0 meant off), so older session files still load.
impl<'de> Deserialize<'de> for ThinkingOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(default)]
        struct Wire {
            enabled: Option<bool>,
            budget: Budget,
            min_tokens: usize,
            closing_message: Option<String>,
            grace_tokens: usize,
        }
        impl Default for Wire {
            fn default() -> Self {
                let o = ThinkingOptions::default();
                Wire {
                    enabled: None,
                    budget: o.budget,
                    min_tokens: o.min_tokens,
                    closing_message: o.closing_message,
                    grace_tokens: o.grace_tokens,
                }
            }
        }
        let w = Wire::deserialize(d)?;
        Ok(ThinkingOptions {
            budget: if w.enabled == Some(false) {
                Budget::Off
            } else {
                w.budget
            },
            min_tokens: w.min_tokens,
            closing_message: w.closing_message,
            grace_tokens: w.grace_tokens,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Requests and their live controls

/// Approval answers by call id, and the condition variable their waiter sleeps on.
type Answers = (Mutex<Vec<(String, ApprovalDecision)>>, Condvar);

/// Live handles a front end keeps while a request runs; checked by the engine every step.
#[derive(Clone, Debug)]
pub struct Controls {
    cancel: Arc<AtomicBool>,
    wrap_up: Arc<AtomicBool>,
    /// The live budget: -1 unlimited, 0 off, n tokens. Takes effect on the next token.
    budget: Arc<AtomicI64>,
    /// Answers to `Event::ApprovalNeeded`, by call id, waited for by the agent loop.
    approvals: Arc<Answers>,
}

fn budget_code(b: Budget) -> i64 {
    match b.limit() {
        None => -1,
        Some(n) => n as i64,
    }
}

impl Default for Controls {
    /// Fresh controls (not cancelled, budget unlimited), for a front end that must be able
    /// to cancel before its request exists; `Request::with_controls` sets the budget.
    fn default() -> Self {
        Controls::new(Budget::Unlimited)
    }
}

impl Controls {
    fn new(budget: Budget) -> Self {
        Controls {
            cancel: Arc::new(AtomicBool::new(false)),
            wrap_up: Arc::new(AtomicBool::new(false)),
            budget: Arc::new(AtomicI64::new(budget_code(budget))),
            approvals: Arc::new((Mutex::new(Vec::new()), Condvar::new())),
        }
    }
    /// Stop generating; what was produced so far is kept.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        // Wake an agent loop waiting for an approval.
        self.approvals.1.notify_all();
    }
    /// The cancel flag itself, for work that checks it outside the engine (a tool run).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    /// End thinking now and answer from the reasoning so far.
    pub fn wrap_up(&self) {
        self.wrap_up.store(true, Ordering::SeqCst)
    }
    pub fn wants_wrap_up(&self) -> bool {
        self.wrap_up.load(Ordering::SeqCst)
    }
    /// Changes the budget of the running request from its next token on.
    pub fn set_budget(&self, budget: Budget) {
        self.budget.store(budget_code(budget), Ordering::SeqCst)
    }
    pub fn budget(&self) -> Budget {
        let b = self.budget.load(Ordering::SeqCst);
        if b < 0 {
            Budget::Unlimited
        } else {
            Budget::tokens(b as usize)
        }
    }
    /// The front end's answer to `Event::ApprovalNeeded` for call `id`.
    pub fn answer(&self, id: impl Into<String>, decision: ApprovalDecision) {
        let (lock, cv) = &*self.approvals;
        if let Ok(mut q) = lock.lock() {
            q.push((id.into(), decision));
        }
        cv.notify_all();
    }
    /// Waits for the answer to call `id`; None when the request is cancelled or
    /// `timeout` passes first.
    pub fn wait_answer(&self, id: &str, timeout: Option<Duration>) -> Option<ApprovalDecision> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let (lock, cv) = &*self.approvals;
        let mut q = lock.lock().ok()?;
        loop {
            if let Some(i) = q.iter().position(|(k, _)| k == id) {
                return Some(q.remove(i).1);
            }
            if self.is_cancelled() {
                return None;
            }
            // Wake at least every 100 ms to see a cancel made without a notify.
            let mut wait = Duration::from_millis(100);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                wait = wait.min(left);
            }
            q = cv.wait_timeout(q, wait).ok()?.0;
        }
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub messages: Vec<Message>,
    pub sampling: SamplingParams,
    /// Most new tokens (reasoning included).
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Tools offered to the model (rendered through its chat template).
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    /// The tool-call format; None = chosen from the template and vocabulary.
    pub tool_format: Option<ToolFormat>,
    /// Structured output for the answer.
    pub constraint: Option<Constraint>,
    /// Log-probabilities: None, none computed; `Some(n)`, each generated token's and its
    /// step's `n` most likely tokens (at most [`MAX_TOP_LOGPROBS`]), as `Event::Logprobs`.
    pub logprobs: Option<usize>,
    thinking: ThinkingOptions,
    controls: Controls,
}

impl Request {
    /// A request for `messages` with `thinking`; its `Controls` start from
    /// `thinking.budget`. Sampling is greedy, `max_tokens` 4096 and no stop strings until
    /// the caller sets them.
    pub fn new(messages: Vec<Message>, thinking: ThinkingOptions) -> Request {
        let controls = Controls::new(thinking.budget);
        Request {
            messages,
            sampling: SamplingParams::default(),
            max_tokens: 4096,
            stop: Vec::new(),
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            tool_format: None,
            constraint: None,
            logprobs: None,
            thinking,
            controls,
        }
    }

    /// `Request::new` with controls the caller already holds (e.g. a Ctrl+C handler set
    /// before the prompt was read); their budget is set from `thinking.budget`, so the
    /// request still has one budget.
    pub fn with_controls(
        messages: Vec<Message>,
        thinking: ThinkingOptions,
        controls: Controls,
    ) -> Request {
        controls.set_budget(thinking.budget);
        Request {
            controls,
            ..Request::new(messages, thinking)
        }
    }

    /// The thinking options (the starting budget among them; the live one is
    /// `controls().budget()`).
    pub fn thinking(&self) -> &ThinkingOptions {
        &self.thinking
    }

    pub fn controls(&self) -> &Controls {
        &self.controls
    }
}

/// What a front end asks of the engine thread.
pub enum Op {
    /// Run `Request`; its events go to the sender, ending with `Done` or `Error`.
    Generate(Box<Request>, Sender<Event>),
    /// Forget the sequence state and every checkpoint (`/clear`).
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn (EOS).
    Stop,
    /// A stop string matched.
    StopString,
    /// `max_tokens` or the context limit was reached.
    Length,
    /// The model called tools; the turn waits for their results.
    ToolCalls,
    /// The agent loop reached its step limit with the model still calling tools.
    MaxSteps,
    /// The user cancelled.
    Cancelled,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub reasoning_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub ttft_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// Prompt tokens not processed again thanks to a session checkpoint.
    pub reused_tokens: usize,
    /// Whether the end of thinking was forced (budget, wrap-up).
    pub thinking_forced: bool,
    /// Model steps in the turn (the agent loop runs one per round of tool calls).
    #[serde(default = "one_step")]
    pub steps: usize,
    /// How the grammar went, when the answer was constrained (structured output or tool
    /// calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<ConstraintStats>,
}

fn one_step() -> usize {
    1
}

/// A constrained answer's numbers (`engine::grammar`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConstraintStats {
    /// The answer as it ended is a sentence of the grammar (false when `max_tokens`, the
    /// context, a stop string or a cancel cut it first).
    pub complete: bool,
    /// Tokens drawn under the grammar's mask.
    pub masked_tokens: usize,
    /// Tokens the grammar forced, fed without a draw.
    pub forced_tokens: usize,
    /// Masked draws made by the host sampler on a sequence that otherwise draws on the
    /// device (the logits come to the host for the mask).
    pub host_steps: usize,
    /// The grammar's time per drawn token (fast-forward check, mask, consume), on the
    /// decode thread.
    pub mask_ms_p50: f64,
    pub mask_ms_p99: f64,
}

/// The most alternatives a request may ask for per token (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A token and its log-probability at a step (`engine::sampler` says over which
/// distribution).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// What the token adds to the text (a special token: its name, e.g. `<think>`); one
    /// token may hold part of a UTF-8 character.
    pub bytes: Vec<u8>,
    /// ln p ≤ 0; `-inf` for a token the distribution excluded.
    pub logprob: f32,
}

/// One generated token's log-probability and its step's most likely tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedLogprob {
    pub token: TokenLogprob,
    /// Best first, as many as `Request::logprobs` asked for.
    pub top: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt is rendered and tokenized; prefill starts.
    Started {
        prompt_tokens: usize,
        reused_tokens: usize,
    },
    Reasoning(String),
    Content(String),
    /// With `Request::logprobs`: the tokens just generated, in order, sent before the
    /// text they make (which may come later: held for a stop string, a tag or a call).
    /// Every token counted in `completion_tokens` is listed once (not an EOS that ended
    /// the turn); a token nemo forced (the grammar's only continuation, the end of
    /// thinking a budget closes) has logprob 0 and is its own only alternative.
    Logprobs(Vec<GeneratedLogprob>),
    /// The model called a tool (parsed whole from its output).
    ToolCall(ToolCall),
    /// One model step of an agent turn ended (its own `Done`); the turn goes on with the
    /// calls' results, or ends with `Done`.
    Step {
        step: usize,
        done: Done,
    },
    /// The prompt does not fit the context (like `Error`, but the agent loop can make
    /// room by eliding old tool outputs and try again).
    ContextFull(String),
    /// Something the user should know that does not end the request (text that opened a
    /// tool call but is not one: it is shown as content too).
    Warning(String),
    /// A call waits for the user: answer with `Controls::answer`.
    ApprovalNeeded(ApprovalRequest),
    /// A call ran (or was refused or denied).
    ToolResult(ToolResult),
    /// Live numbers during generation (about every few tokens).
    Progress {
        reasoning_tokens: usize,
        completion_tokens: usize,
        tokens_per_s: f64,
    },
    Done(Done),
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_without_optional_fields_omits_them_in_json() {
        let json = serde_json::to_string(&Message::user("hi")).unwrap();
        assert_eq!(json, r#"{"role":"user","content":"hi"}"#);
    }

    #[test]
    fn message_round_trips_reasoning_and_tool_calls() {
        let mut m = Message::assistant("42");
        m.reasoning_content = Some("think".into());
        m.tool_calls = vec![ToolCall::new(
            "call_1",
            "get_weather",
            serde_json::json!({"city": "Paris"}),
        )];
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(
            r#""tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}}]"#
        ));
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let plain: Message = serde_json::from_str(r#"{"role":"system","content":"s"}"#).unwrap();
        assert_eq!(plain, Message::system("s"));
        let tool = Message::tool("call_1", "get_weather", "sunny");
        assert_eq!(
            serde_json::to_string(&tool).unwrap(),
            r#"{"role":"tool","content":"sunny","tool_call_id":"call_1","name":"get_weather"}"#
        );
    }

    #[test]
    fn budget_parses_and_prints_one_dialect() {
        assert_eq!("off".parse(), Ok(Budget::Off));
        assert_eq!(" 0 ".parse(), Ok(Budget::Off));
        assert_eq!("Unlimited".parse(), Ok(Budget::Unlimited));
        assert_eq!("inf".parse(), Ok(Budget::Unlimited));
        assert_eq!("256".parse(), Ok(Budget::tokens(256)));
        assert_eq!("1000000".parse(), Ok(Budget::tokens(1_000_000)));
        for bad in ["", "-1", "1000001", "lots", "none", "2.5"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad:?} was accepted");
        }
        for b in [Budget::Off, Budget::tokens(64), Budget::Unlimited] {
            assert_eq!(b.to_string().parse(), Ok(b));
        }
        assert_eq!(Budget::tokens(0), Budget::Off);
        assert_eq!(Budget::from_limit(None), Budget::Unlimited);
        assert_eq!(Budget::from_limit(Some(0)), Budget::Off);
        assert_eq!(Budget::tokens(5).limit(), Some(5));
    }

    #[test]
    fn budget_serializes_as_text_and_reads_older_forms() {
        assert_eq!(
            serde_json::to_string(&Budget::tokens(512)).unwrap(),
            r#""512""#
        );
        assert_eq!(serde_json::to_string(&Budget::Off).unwrap(), r#""off""#);
        let b: Budget = serde_json::from_str("512").unwrap();
        assert_eq!(b, Budget::tokens(512));
        let b: Budget = serde_json::from_str("null").unwrap();
        assert_eq!(b, Budget::Unlimited);
        assert!(serde_json::from_str::<Budget>(r#""lots""#).is_err());
    }

    #[test]
    fn thinking_options_read_the_form_before_budget() {
        let old: ThinkingOptions =
            serde_json::from_str(r#"{"enabled":false,"budget":256,"min_tokens":3}"#).unwrap();
        assert_eq!(old.budget, Budget::Off);
        assert_eq!(old.min_tokens, 3);
        let old: ThinkingOptions =
            serde_json::from_str(r#"{"enabled":true,"budget":null}"#).unwrap();
        assert_eq!(old.budget, Budget::Unlimited);
        let old: ThinkingOptions = serde_json::from_str(r#"{"enabled":true,"budget":0}"#).unwrap();
        assert_eq!(old.budget, Budget::Off);
        let now = ThinkingOptions {
            budget: Budget::tokens(100),
            ..ThinkingOptions::default()
        };
        let json = serde_json::to_string(&now).unwrap();
        assert!(!json.contains("enabled"));
        assert_eq!(serde_json::from_str::<ThinkingOptions>(&json).unwrap(), now);
    }

    #[test]
    fn a_request_carries_one_budget() {
        let thinking = ThinkingOptions {
            budget: Budget::tokens(32),
            ..ThinkingOptions::default()
        };
        let req = Request::new(vec![Message::user("hi")], thinking);
        assert_eq!(req.controls().budget(), Budget::tokens(32));
        req.controls().set_budget(Budget::Off);
        assert_eq!(req.controls().budget(), Budget::Off);
        req.controls().set_budget(Budget::Unlimited);
        assert_eq!(req.clone().controls().budget(), Budget::Unlimited);
    }

    #[test]
    fn sampling_values_have_one_range_each() {
        assert_eq!(SamplingParams::default().validate(), Ok(()));
        let bad = |f: fn(&mut SamplingParams)| {
            let mut p = SamplingParams::default();
            f(&mut p);
            p.validate().unwrap_err().field
        };
        assert_eq!(bad(|p| p.temperature = -5.0), "temperature");
        assert_eq!(bad(|p| p.temperature = 5.5), "temperature");
        assert_eq!(bad(|p| p.temperature = f32::NAN), "temperature");
        assert_eq!(bad(|p| p.top_p = 1.5), "top_p");
        assert_eq!(bad(|p| p.min_p = -0.1), "min_p");
        assert_eq!(bad(|p| p.repetition_penalty = 0.0), "repetition_penalty");
        assert_eq!(bad(|p| p.presence_penalty = 3.0), "presence_penalty");
        assert_eq!(bad(|p| p.top_k = usize::MAX), "top_k");
        let ok = SamplingParams {
            temperature: 5.0,
            top_p: 0.0,
            min_p: 1.0,
            repetition_penalty: 100.0,
            presence_penalty: -2.0,
            top_k: 40,
            seed: Some(1),
        };
        assert_eq!(ok.validate(), Ok(()));
        let e = SamplingParams {
            temperature: -5.0,
            ..SamplingParams::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.to_string(), "temperature: -5 is outside 0..=5");
    }

    #[test]
    fn tool_specs_read_both_forms_and_write_the_openai_one() {
        let wrapped: ToolSpec = serde_json::from_str(
            r#"{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}"#,
        )
        .unwrap();
        let bare: ToolSpec = serde_json::from_str(
            r#"{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}"#,
        )
        .unwrap();
        assert_eq!(wrapped, bare);
        let v = serde_json::to_value(&wrapped).unwrap();
        assert_eq!(v["type"], "function");
        assert_eq!(v["function"]["name"], "get_weather");
        assert_eq!(
            v["function"]["parameters"]["properties"]["city"]["type"],
            "string"
        );
        let no_params: ToolSpec = serde_json::from_str(r#"{"name":"now"}"#).unwrap();
        assert_eq!(no_params.parameters["type"], "object");
        assert!(serde_json::from_str::<ToolSpec>(r#"{"name":""}"#).is_err());
    }

    #[test]
    fn tool_choice_and_format_parse_their_words() {
        assert_eq!("auto".parse(), Ok(ToolChoice::Auto));
        assert_eq!("none".parse(), Ok(ToolChoice::None));
        assert_eq!("required".parse(), Ok(ToolChoice::Required));
        assert_eq!(
            "get_weather".parse(),
            Ok(ToolChoice::Named("get_weather".into()))
        );
        assert!("".parse::<ToolChoice>().is_err());
        for f in [
            ToolFormat::NanoV2,
            ToolFormat::Qwen3Coder,
            ToolFormat::Hermes,
        ] {
            assert_eq!(f.to_string().parse(), Ok(f));
        }
        assert!("xml".parse::<ToolFormat>().is_err());
    }

    #[test]
    fn an_approval_answer_reaches_the_waiter_and_cancel_wakes_it() {
        let c = Request::new(vec![], ThinkingOptions::default())
            .controls()
            .clone();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_answer("call_1", None));
        c.answer("call_0", ApprovalDecision::Once);
        c.answer(
            "call_1",
            ApprovalDecision::Deny {
                note: Some("no".into()),
            },
        );
        assert_eq!(
            t.join().unwrap(),
            Some(ApprovalDecision::Deny {
                note: Some("no".into())
            })
        );
        let c3 = c.clone();
        let t = std::thread::spawn(move || c3.wait_answer("call_9", None));
        c.cancel();
        assert_eq!(t.join().unwrap(), None);
        assert_eq!(
            c.wait_answer("call_0", Some(Duration::from_millis(1))),
            Some(ApprovalDecision::Once)
        );
    }
}
