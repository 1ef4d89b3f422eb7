//! Hugging Face chat templates (Jinja2) rendered with minijinja, the way transformers'
//! `apply_chat_template` renders them.
//!
//! Invariants:
//! - The environment matches transformers' sandbox: `trim_blocks = true`,
//!   `lstrip_blocks = true`, `keep_trailing_newline = false`, lenient undefined values,
//!   Python string/dict/list methods (`.strip()`, `.split()`, `.items()`, `.get()`, ...)
//!   through `minijinja_contrib::pycompat`, and the globals transformers adds:
//!   `raise_exception(msg)` (fails the render with `msg`), `strftime_now(fmt)` and a
//!   `tojson` filter with Python `json.dumps` output (`", "`/`": "` separators,
//!   `ensure_ascii=False`, `indent`, `separators`, `sort_keys`; no HTML escaping).
//! - The render context is `bos_token`/`eos_token` (when known), `tools` and
//!   `documents` (None, as transformers passes them), then every key of
//!   `extra` (which may override them, as template kwargs do in transformers), then
//!   `messages` and `add_generation_prompt`, which `extra` cannot override.
//! - A template that fails to compile is rejected by [`ChatTemplate::new`]; nothing here
//!   panics on template or file content.
//! - Templates come with downloaded models, so no render is unbounded: every render runs
//!   on a step budget (minijinja fuel, [`RenderLimits`]: a floor plus a share per message
//!   value and per input byte, so long real sessions render and a loop that does not end
//!   stops in well under a second), and a render through [`ChatTemplate::render_prompt`]
//!   also refuses output past `output_bytes`. The memory cap, the wall-clock limit and
//!   cancel need a process to kill: `template_sandbox` renders there, and
//!   [`ChatTemplate::new`] compiles there first (minijinja folds constant expressions
//!   while compiling, so compiling is running the template too).
//! - Every render error names the template ([`ChatTemplate::with_name`]: the file it came
//!   from) in one line.
//! - `strftime_now` formats the current time in UTC (transformers uses local time); it
//!   supports the common `%` codes and copies unknown ones through unchanged.
//! - `{% break %}`/`{% continue %}` need minijinja's `loop_controls` feature and Python
//!   dict order in `tojson`/`.items()` needs its `preserve_order` feature (plus
//!   serde_json's); without them loop controls are a compile error and map keys come out
//!   sorted.

use std::path::Path;
use std::time::Duration;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::protocol::Message;

/// Name under which the template is stored in the environment; shows up in error text.
const TEMPLATE_NAME: &str = "chat_template";

/// Why a chat template could not be loaded, compiled or rendered. `template` fields hold
/// the template's label ("chat template `<file>`").
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template does not compile: {0}")]
    Compile(String),
    /// The template itself failed (`raise_exception`, a type error, ...); the text names
    /// the template.
    #[error("{0}")]
    Render(String),
    #[error("{template} exceeded its step budget of {steps} steps (a loop that does not end?)")]
    StepBudget { template: String, steps: u64 },
    #[error("{template} exceeded its memory cap of {mib} MiB")]
    MemoryCap { template: String, mib: u64 },
    #[error("{template} did not finish within {secs} s")]
    Timeout { template: String, secs: u64 },
    #[error("{template} rendered {bytes} bytes, more than the {cap} bytes the context can hold")]
    OutputTooLarge {
        template: String,
        bytes: usize,
        cap: usize,
    },
    /// The helper process that renders templates failed (could not start, crashed).
    #[error("{template}: {message}")]
    Renderer { template: String, message: String },
    #[error("cancelled")]
    Cancelled,
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: String, message: String },
}

/// How far one render may go. Built by [`RenderLimits::for_input`] from the size of what
/// is rendered, so the budget grows with real sessions and stays small for small ones.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenderLimits {
    /// minijinja fuel: instructions one render may execute.
    pub fuel: u64,
    /// Memory the renderer may add to its own size (enforced in the helper process only).
    pub memory_bytes: u64,
    /// Longest rendered prompt accepted.
    pub output_bytes: usize,
    /// Wall-clock limit for a whole request (enforced in the helper process only).
    pub timeout_ms: u64,
}

/// Steps every render may take: real templates spend a few hundred per message, so a
/// short conversation never comes near it, and a loop that does not end stops after
/// about a second of work.
const FUEL_FLOOR: u64 = 5_000_000;
/// Steps per message field and per value in `extra` (tools): templates loop over these.
const FUEL_PER_VALUE: u64 = 2_000;
/// Memory every render may use on top of its input and output.
const MEMORY_FLOOR: u64 = 256 << 20;
/// Wall-clock floor for a render request, and the rate it grows by with the input
/// (bytes per second; rendering runs at hundreds of MB/s, this allows for a loaded machine).
const TIMEOUT_FLOOR_MS: u64 = 10_000;
const TIMEOUT_BYTES_PER_S: u64 = 4 << 20;

impl RenderLimits {
    /// Limits for rendering `input` (see [`InputSize`]) into at most `output_bytes`.
    pub fn for_input(input: InputSize, output_bytes: usize) -> Self {
        let bytes = input.bytes as u64;
        RenderLimits {
            fuel: FUEL_FLOOR
                .saturating_add(FUEL_PER_VALUE.saturating_mul(input.values as u64))
                .saturating_add(bytes / 4),
            memory_bytes: MEMORY_FLOOR
                .saturating_add(bytes.saturating_mul(4))
                .saturating_add((output_bytes as u64).saturating_mul(3)),
            output_bytes,
            timeout_ms: TIMEOUT_FLOOR_MS.saturating_add(bytes * 1000 / TIMEOUT_BYTES_PER_S),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The size of a render's input: bytes of text and number of values (message fields,
/// values in `extra`), what a template's work scales with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputSize {
    pub bytes: usize,
    pub values: usize,
}

impl InputSize {
    pub fn of(messages: &[Message], extra: &serde_json::Map<String, serde_json::Value>) -> Self {
        let mut size = InputSize::default();
        for m in messages {
            size.bytes += m.role.len()
                + m.content.len()
                + m.reasoning_content.as_ref().map_or(0, String::len);
            size.values += 3;
        }
        for (k, v) in extra {
            size.bytes += k.len();
            size.add_json(v);
        }
        size
    }

    fn add_json(&mut self, v: &serde_json::Value) {
        self.values += 1;
        match v {
            serde_json::Value::String(s) => self.bytes += s.len(),
            serde_json::Value::Array(a) => a.iter().for_each(|x| self.add_json(x)),
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    self.bytes += k.len();
                    self.add_json(x);
                }
            }
            _ => self.bytes += 8,
        }
    }
}

/// A full prompt and which message prefixes it starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The conversation with the generation prompt.
    pub text: String,
    /// For each requested prefix (a message count): the byte length of that prefix's
    /// render without a generation prompt, when `text` starts with it (and it is not
    /// empty); None otherwise, also when the template refused the prefix.
    pub prefixes: Vec<Option<usize>>,
}

/// A compiled chat template plus the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    name: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` in this process, unchecked: for built-in templates and in the
    /// helper process. A template that came with a model goes through
    /// [`ChatTemplate::new`] instead (in `template_sandbox`: it compiles in a helper process
    /// first).
    pub fn compile(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| TemplateError::Compile(describe(&e)))?;
        Ok(Self {
            env,
            source: source.to_string(),
            name: None,
            bos_token,
            eos_token,
        })
    }

    /// Names the template (the file it came from) in every render error.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// "chat template `<name>`", or "chat template" when it has no name.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("chat template `{n}`"),
            None => "chat template".to_string(),
        }
    }

    /// Renders the conversation; `extra` adds template variables such as
    /// `enable_thinking` or `tools`. Runs on the step budget [`RenderLimits::for_input`]
    /// gives this input.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        let fuel = RenderLimits::for_input(InputSize::of(messages, extra), usize::MAX).fuel;
        let ctx = self.context(
            Value::from_serialize(messages),
            add_generation_prompt,
            extra,
        );
        self.render_context(ctx, fuel)
    }

    /// The prompt for `messages` (with the generation prompt) and, for each message count
    /// in `prefixes`, whether the render of that many messages (without it) starts the
    /// prompt: the positions a session can checkpoint at. Messages are minijinja values
    /// (`Value::from_serialize(&Message)`), so a caller that keeps them converts each once.
    pub fn render_prompt(
        &self,
        messages: &[Value],
        extra: &serde_json::Map<String, serde_json::Value>,
        prefixes: &[usize],
        limits: &RenderLimits,
    ) -> Result<Rendered, TemplateError> {
        let ctx = self.context(Value::from(messages.to_vec()), true, extra);
        let text = self.render_context(ctx, limits.fuel)?;
        if text.len() > limits.output_bytes {
            return Err(TemplateError::OutputTooLarge {
                template: self.label(),
                bytes: text.len(),
                cap: limits.output_bytes,
            });
        }
        let prefixes = prefixes
            .iter()
            .map(|&k| {
                let ctx = self.context(
                    Value::from(messages[..k.min(messages.len())].to_vec()),
                    false,
                    extra,
                );
                // A template may refuse a prefix (e.g. one that must end with a user turn);
                // then there is simply no checkpoint there.
                match self.render_context(ctx, limits.fuel) {
                    Ok(p) if !p.is_empty() && text.starts_with(&p) => Some(p.len()),
                    _ => None,
                }
            })
            .collect();
        Ok(Rendered { text, prefixes })
    }

    fn context(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Value {
        let mut ctx = std::collections::BTreeMap::<String, Value>::new();
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token".into(), Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token".into(), Value::from(eos.as_str()));
        }
        // transformers always passes `tools` and `documents`, as None when absent.
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        for (key, value) in extra {
            ctx.insert(key.clone(), Value::from_serialize(value));
        }
        ctx.insert("messages".into(), messages);
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        Value::from(ctx)
    }

    /// One render on `fuel` steps. The environment is cloned for its fuel setting (its
    /// parts are shared, the compiled template too).
    fn render_context(&self, ctx: Value, fuel: u64) -> Result<String, TemplateError> {
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.render_error(&e, fuel))?;
        template
            .render(ctx)
            .map_err(|e| self.render_error(&e, fuel))
    }

    fn render_error(&self, err: &Error, fuel: u64) -> TemplateError {
        if err.kind() == ErrorKind::OutOfFuel {
            TemplateError::StepBudget {
                template: self.label(),
                steps: fuel,
            }
        } else {
            TemplateError::Render(format!(
                "{} failed to render: {}",
                self.label(),
                describe(err)
            ))
        }
    }

    /// The template text (to tell which thinking convention the model family uses).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
}

/// minijinja's message plus the chain of causes (the display already names the line).
/// One line: a template's own text (`raise_exception('…\n…')`) may hold line breaks and
/// other control characters, which become spaces.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> String {
    super::clock::strftime_utc(&format, super::clock::unix_secs_now())
}

/// Python `json.dumps` layout options, as transformers' `tojson` passes them.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => {
            if let Some(s) = v.as_str() {
                Some(s.to_string())
            } else if let Some(n) = v.as_i64() {
                Some(" ".repeat(n.max(0) as usize))
            } else {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        }
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(seps) if seps.len() == 2 => (seps[0].clone(), seps[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

fn write_newline_indent(out: &mut String, style: &JsonStyle, depth: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let text = value.to_string();
            match text.as_str() {
                "NaN" | "nan" => out.push_str("NaN"),
                "inf" => out.push_str("Infinity"),
                "-inf" => out.push_str("-Infinity"),
                _ => out.push_str(&text),
            }
        }
        ValueKind::String => {
            write_json_string(out, value.as_str().unwrap_or(""), style.ensure_ascii)
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                write_newline_indent(out, style, depth + 1);
                match key.as_str() {
                    Some(s) => write_json_string(out, s, style.ensure_ascii),
                    None => write_json_string(out, &key.to_string(), style.ensure_ascii),
                }
                out.push_str(&style.key_sep);
                write_json(out, &value.get_item(key)?, style, depth + 1)?;
            }
            write_newline_indent(out, style, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                write_newline_indent(out, style, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            write_newline_indent(out, style, depth);
            out.push(']');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of type {}", value.kind()),
            ))
        }
    }
    Ok(())
}

/// A JSON string literal escaped like Python's `json.dumps`.
fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Our own template for Nemotron Nano v2 style chats, used when a model directory
/// ships none.
///
/// - System turn `<SPECIAL_10>System\n{content}\n`; with `enable_thinking` given, the
///   line `/think` or `/no_think` is appended to the system content (a system turn is
///   created when there is none). Without it, thinking is on unless the system message
///   contains `/no_think`.
/// - User turns `<SPECIAL_11>User\n{content}\n`.
/// - Assistant turns `<SPECIAL_11>Assistant\n{content}<SPECIAL_12>\n`; turns before the
///   last user turn keep only the answer (text after the last `</think>`, stripped);
///   later turns keep `reasoning_content` as `<think>\n..\n</think>\n` before the content.
/// - Generation prompt `<SPECIAL_11>Assistant\n` then `<think>\n` (thinking on) or
///   `<think></think>` (off).
/// - A system message anywhere but first, or any other role, fails the render.
pub fn nano_v2_fallback() -> &'static str {
    NANO_V2_FALLBACK
}

const NANO_V2_FALLBACK: &str = r#"{%- set ns = namespace(system='', has_system=false, last_user=-1, thinking=true) -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.system = messages[0].content -%}
{%- set ns.has_system = true -%}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- if enable_thinking is defined and enable_thinking is not none -%}
{%- set ns.thinking = true if enable_thinking else false -%}
{%- set switch = '/think' if ns.thinking else '/no_think' -%}
{%- if ns.system -%}
{%- set ns.system = ns.system ~ '\n' ~ switch -%}
{%- else -%}
{%- set ns.system = switch -%}
{%- endif -%}
{%- set ns.has_system = true -%}
{%- elif '/no_think' in ns.system -%}
{%- set ns.thinking = false -%}
{%- endif -%}
{%- if ns.has_system -%}
{{- '<SPECIAL_10>System\n' ~ ns.system ~ '\n' -}}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
{%- if not loop.first -%}
{{- raise_exception('a system message is only allowed as the first message') -}}
{%- endif -%}
{%- elif m.role == 'user' -%}
{{- '<SPECIAL_11>User\n' ~ m.content ~ '\n' -}}
{%- elif m.role == 'assistant' -%}
{%- set content = m.content if m.content is string else '' -%}
{%- if loop.index0 < ns.last_user -%}
{%- set content = content.split('</think>')[-1].strip() -%}
{%- elif m.reasoning_content is defined and m.reasoning_content -%}
{%- set content = '<think>\n' ~ m.reasoning_content ~ '\n</think>\n' ~ content -%}
{%- endif -%}
{{- '<SPECIAL_11>Assistant\n' ~ content ~ '<SPECIAL_12>\n' -}}
{%- else -%}
{{- raise_exception('the built-in Nemotron Nano v2 template has no role ' ~ m.role) -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<SPECIAL_11>Assistant\n' ~ ('<think>\n' if ns.thinking else '<think></think>') -}}
{%- endif -%}"#;

/// A template's source with the model's `bos_token` and `eos_token`.
pub type TemplateSource = (String, Option<String>, Option<String>);

/// Reads a model directory's chat template: `chat_template.jinja` if present, else the
/// `chat_template` field of `tokenizer_config.json` (a string, or a list of
/// `{name, template}` from which `default` is taken). Returns (source, bos, eos) with
/// bos/eos from `tokenizer_config.json`; `Ok(None)` when no template is found.
pub fn load_from_dir(dir: &Path) -> Result<Option<TemplateSource>, TemplateError> {
    let config_path = dir.join("tokenizer_config.json");
    let config: Option<serde_json::Value> = match std::fs::read_to_string(&config_path) {
        Ok(text) => Some(
            serde_json::from_str(&text).map_err(|source| TemplateError::Json {
                path: config_path.display().to_string(),
                source,
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(TemplateError::Io {
                path: config_path.display().to_string(),
                source,
            })
        }
    };
    let special = |key: &str| -> Option<String> {
        match config.as_ref()?.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(obj) => obj.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let (bos, eos) = (special("bos_token"), special("eos_token"));

    let jinja_path = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja_path) {
        Ok(source) => return Ok(Some((source, bos, eos))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TemplateError::Io {
                path: jinja_path.display().to_string(),
                source,
            })
        }
    }

    let Some(field) = config.as_ref().and_then(|c| c.get("chat_template")) else {
        return Ok(None);
    };
    let bad = |message: &str| TemplateError::Config {
        path: config_path.display().to_string(),
        message: message.to_string(),
    };
    let source = match field {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(list) => {
            let named = list
                .iter()
                .find(|entry| entry.get("name").and_then(|n| n.as_str()) == Some("default"));
            match named {
                Some(entry) => entry
                    .get("template")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| bad("the `default` chat_template has no string `template`"))?
                    .to_string(),
                None => return Err(bad("chat_template lists no template named `default`")),
            }
        }
        _ => {
            return Err(bad(
                "chat_template must be a string or a list of {name, template}",
            ))
        }
    };
    Ok(Some((source, bos, eos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_extra() -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    fn thinking(on: bool) -> serde_json::Map<String, serde_json::Value> {
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), serde_json::Value::Bool(on));
        extra
    }

    #[test]
    fn a_loop_that_never_ends_runs_out_of_steps_naming_the_template() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            None,
            None,
        )
        .unwrap()
        .with_name("m/chat_template.jinja");
        let t0 = std::time::Instant::now();
        let err = t
            .render(&[Message::user("x")], true, &no_extra())
            .unwrap_err();
        assert!(matches!(err, TemplateError::StepBudget { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "chat template `m/chat_template.jinja` exceeded its step budget of {} steps (a loop that does not end?)",
                FUEL_FLOOR + 3 * FUEL_PER_VALUE + 5 / 4
            )
        );
        // Generous: a few million steps take well under a second.
        assert!(t0.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn render_errors_name_the_template() {
        let t = ChatTemplate::new("{{ raise_exception('no') }}", None, None)
            .unwrap()
            .with_name("m/tokenizer_config.json");
        let err = t.render(&[], true, &no_extra()).unwrap_err().to_string();
        assert!(
            err.starts_with("chat template `m/tokenizer_config.json` failed to render: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn limits_have_a_floor_and_grow_with_the_input() {
        let small = RenderLimits::for_input(InputSize::default(), 100);
        assert_eq!(small.fuel, FUEL_FLOOR);
        assert_eq!(small.memory_bytes, MEMORY_FLOOR + 300);
        assert_eq!(small.timeout_ms, TIMEOUT_FLOOR_MS);
        let msgs: Vec<Message> = (0..1000)
            .map(|i| Message::user(format!("{i:09}")))
            .collect();
        let size = InputSize::of(&msgs, &thinking(true));
        assert_eq!(size.values, 3001);
        assert_eq!(size.bytes, 1000 * (4 + 9) + "enable_thinking".len() + 8);
        let big = RenderLimits::for_input(size, 100);
        assert!(big.fuel > small.fuel + 1000 * 3 * FUEL_PER_VALUE - 1);
        assert!(big.memory_bytes > small.memory_bytes && big.timeout_ms >= small.timeout_ms);
    }

    #[test]
    fn render_prompt_finds_the_prefixes_the_prompt_starts_with() {
        let t = ChatTemplate::new(nano_v2_fallback(), None, None).unwrap();
        let mut answer = Message::assistant("4");
        answer.reasoning_content = Some("add".into());
        let msgs = [
            Message::system("s"),
            Message::user("2+2?"),
            answer,
            Message::user("thanks"),
        ];
        let values: Vec<Value> = msgs.iter().map(Value::from_serialize).collect();
        let limits = RenderLimits::for_input(InputSize::of(&msgs, &no_extra()), 1 << 20);
        let r = t
            .render_prompt(&values, &no_extra(), &[1, 2, 3, 4], &limits)
            .unwrap();
        assert_eq!(r.text, t.render(&msgs, true, &no_extra()).unwrap());
        let len = |k: usize| t.render(&msgs[..k], false, &no_extra()).unwrap().len();
        // Three messages end with the answer and its reasoning, which the whole
        // conversation drops (it is before the last user message): no prefix there.
        assert_eq!(r.prefixes, [Some(len(1)), Some(len(2)), None, Some(len(4))]);
        let tight = RenderLimits {
            output_bytes: r.text.len() - 1,
            ..limits
        };
        match t.render_prompt(&values, &no_extra(), &[], &tight) {
            Err(TemplateError::OutputTooLarge { bytes, cap, .. }) => {
                assert_eq!((bytes, cap), (r.text.len(), r.text.len() - 1))
            }
            other => panic!("expected OutputTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn renders_a_simple_template_with_bos_and_generation_prompt() {
        let source = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
        let t = ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into())).unwrap();
        let out = t
            .render(
                &[Message::system("be brief"), Message::user("hi")],
                true,
                &no_extra(),
            )
            .unwrap();
        assert_eq!(
            out,
            "<s><|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_behave_like_transformers() {
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(source, None, None).unwrap();
        let out = t
            .render(
                &[Message::user("a"), Message::user("b")],
                false,
                &no_extra(),
            )
            .unwrap();
        assert_eq!(out, "U:a\nU:b\n");
    }

    #[test]
    fn trailing_newline_of_the_template_is_dropped() {
        let t = ChatTemplate::new("x\n", None, None).unwrap();
        assert_eq!(t.render(&[], false, &no_extra()).unwrap(), "x");
    }

    #[test]
    fn extra_variables_reach_the_template_but_cannot_replace_messages() {
        let t = ChatTemplate::new(
            "{{ tools | length }}{{ messages | length }}{{ enable_thinking }}",
            None,
            None,
        )
        .unwrap();
        let mut extra = thinking(false);
        extra.insert("tools".into(), serde_json::json!([{"a": 1}, {"b": 2}]));
        extra.insert("messages".into(), serde_json::json!([]));
        let out = t.render(&[Message::user("x")], false, &extra).unwrap();
        assert_eq!(out, "21False", "booleans print the Python way");
    }

    #[test]
    fn tools_and_documents_are_none_unless_given() {
        let t = ChatTemplate::new(
            "{{ tools is defined }} {{ tools is none }} {{ documents is none }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.render(&[], false, &no_extra()).unwrap(), "True True True");
        let mut extra = no_extra();
        extra.insert("tools".into(), serde_json::json!([]));
        assert_eq!(t.render(&[], false, &extra).unwrap(), "True False True");
    }

    #[test]
    fn break_compiles_only_with_minijinja_loop_controls() {
        let source = "{% for m in messages %}{{ m.content }}{% break %}{% endfor %}";
        match ChatTemplate::new(source, None, None) {
            Ok(t) => {
                let out = t.render(
                    &[Message::user("a"), Message::user("b")],
                    false,
                    &no_extra(),
                );
                assert_eq!(out.unwrap(), "a");
            }
            Err(e) => assert!(matches!(e, TemplateError::Compile(_)), "{e}"),
        }
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'system' %}{{ raise_exception('need a system prompt') }}{% endif %}",
            None,
            None,
        )
        .unwrap();
        let err = t
            .render(&[Message::user("x")], false, &no_extra())
            .unwrap_err();
        assert!(matches!(err, TemplateError::Render(_)));
        assert!(err.to_string().contains("need a system prompt"), "{err}");
    }

    #[test]
    fn python_string_and_dict_methods_work() {
        let source = "{{ messages[0].content.strip() }}|{{ messages[0].content.split(',') | length }}|\
{{ messages[0].content.strip().startswith('a') }}|{{ 'x.py'.endswith('.py') }}|\
{{ messages[0].get('role') }}|{{ messages[0].get('missing', 'dflt') }}|\
{% for k, v in {'k': 'v'}.items() %}{{ k }}={{ v }}{% endfor %}|{{ 'AB'.lower() }}|{{ ' x '.rstrip() }}.";
        let t = ChatTemplate::new(source, None, None).unwrap();
        let out = t
            .render(&[Message::user("  a,b,c  ")], false, &no_extra())
            .unwrap();
        assert_eq!(out, "a,b,c|3|True|True|user|dflt|k=v|ab| x.");
    }

    #[test]
    fn namespace_and_loop_variables_work() {
        let source = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% if loop.last %}{{ ns.n }}:{{ loop.index0 }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(source, None, None).unwrap();
        let out = t
            .render(
                &[
                    Message::user("a"),
                    Message::assistant("b"),
                    Message::user("c"),
                ],
                false,
                &no_extra(),
            )
            .unwrap();
        assert_eq!(out, "3:2");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ tools | tojson }}\n{{ tools[0] | tojson(indent=2) }}\n{{ 'é\"' | tojson(ensure_ascii=true) }}",
            None,
            None,
        )
        .unwrap();
        let mut extra = no_extra();
        extra.insert(
            "tools".into(),
            serde_json::json!([{"name": "f<x>", "n": [1, 2.5, true, null], "e": {}}]),
        );
        let out = t.render(&[], false, &extra).unwrap();
        let lines: Vec<&str> = out.splitn(2, '\n').collect();
        // Key order depends on minijinja's `preserve_order`; check each key/value pair
        // is rendered with Python's separators and no HTML escaping.
        assert!(
            lines[0].starts_with("[{") && lines[0].ends_with("}]"),
            "{out}"
        );
        assert!(lines[0].contains(r#""name": "f<x>""#), "{out}");
        assert!(lines[0].contains(r#""n": [1, 2.5, true, null]"#), "{out}");
        assert!(lines[0].contains(r#""e": {}"#), "{out}");
        assert!(out.contains("{\n  \""), "{out}");
        assert!(
            out.contains("\"n\": [\n    1,\n    2.5,\n    true,\n    null\n  ]"),
            "{out}"
        );
        assert!(out.ends_with(r#""\u00e9\"""#), "{out}");
    }

    #[test]
    fn strftime_now_renders_a_date() {
        let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", None, None).unwrap();
        let out = t.render(&[], false, &no_extra()).unwrap();
        assert_eq!(out.len(), 10);
        assert!(out.starts_with("20"), "{out}");
    }

    #[test]
    fn broken_template_is_a_compile_error_with_a_line() {
        let err = ChatTemplate::new("ok\n{% for m in messages %}\n{{ m.content }", None, None)
            .unwrap_err();
        assert!(matches!(err, TemplateError::Compile(_)));
        assert!(err.to_string().contains(":3"), "{err}");
    }

    #[test]
    fn runtime_type_error_is_a_render_error_not_a_panic() {
        let t = ChatTemplate::new("{{ messages[0].content + 1 }}{{ foo.bar.baz }}", None, None)
            .unwrap();
        assert!(t.render(&[Message::user("x")], false, &no_extra()).is_err());
    }

    #[test]
    fn fallback_with_thinking_on_opens_a_think_block() {
        let t = ChatTemplate::new(nano_v2_fallback(), None, None).unwrap();
        let out = t
            .render(
                &[Message::system("You are nemo."), Message::user("Hi")],
                true,
                &thinking(true),
            )
            .unwrap();
        assert_eq!(
            out,
            "<SPECIAL_10>System\nYou are nemo.\n/think\n<SPECIAL_11>User\nHi\n<SPECIAL_11>Assistant\n<think>\n"
        );
    }

    #[test]
    fn fallback_with_thinking_off_creates_a_system_turn_and_closes_think() {
        let t = ChatTemplate::new(nano_v2_fallback(), None, None).unwrap();
        let out = t
            .render(&[Message::user("Hi")], true, &thinking(false))
            .unwrap();
        assert_eq!(
            out,
            "<SPECIAL_10>System\n/no_think\n<SPECIAL_11>User\nHi\n<SPECIAL_11>Assistant\n<think></think>"
        );
    }

    #[test]
    fn fallback_without_enable_thinking_reads_no_think_from_the_system_message() {
        let t = ChatTemplate::new(nano_v2_fallback(), None, None).unwrap();
        let off = t
            .render(
                &[Message::system("/no_think"), Message::user("Hi")],
                true,
                &no_extra(),
            )
            .unwrap();
        assert!(
            off.ends_with("<SPECIAL_11>Assistant\n<think></think>"),
            "{off}"
        );
        let on = t.render(&[Message::user("Hi")], true, &no_extra()).unwrap();
        assert_eq!(on, "<SPECIAL_11>User\nHi\n<SPECIAL_11>Assistant\n<think>\n");
    }

    #[test]
    fn fallback_drops_reasoning_from_earlier_assistant_turns() {
        let t = ChatTemplate::new(nano_v2_fallback(), None, None).unwrap();
        let mut with_field = Message::assistant("Four.");
        with_field.reasoning_content = Some("hidden".into());
        let messages = [
            Message::user("2+2?"),
            Message::assistant("<think>\nadd them\n</think>\n\n 4 \n"),
            Message::user("and 2+2 again?"),
            with_field,
            Message::user("thanks"),
        ];
        let out = t.render(&messages, false, &no_extra()).unwrap();
        assert_eq!(
            out,
            "<SPECIAL_11>User\n2+2?\n<SPECIAL_11>Assistant\n4<SPECIAL_12>\n\
<SPECIAL_11>User\nand 2+2 again?\n<SPECIAL_11>Assistant\nFour.<SPECIAL_12>\n\
<SPECIAL_11>User\nthanks\n"
        );
        assert!(!out.contains("add them") && !out.contains("hidden"));
    }

    #[test]
    fn fallback_keeps_reasoning_of_the_turn_after_the_last_user_message() {
        let t = ChatTemplate::new(nano_v2_fallback(), None, None).unwrap();
        let mut last = Message::assistant("4");
        last.reasoning_content = Some("add".into());
        let out = t
            .render(&[Message::user("2+2?"), last], false, &no_extra())
            .unwrap();
        assert_eq!(
            out,
            "<SPECIAL_11>User\n2+2?\n<SPECIAL_11>Assistant\n<think>\nadd\n</think>\n4<SPECIAL_12>\n"
        );
    }

    #[test]
    fn fallback_rejects_unknown_roles() {
        let t = ChatTemplate::new(nano_v2_fallback(), None, None).unwrap();
        let odd = Message {
            role: "narrator".into(),
            content: "x".into(),
            ..Message::default()
        };
        let err = t.render(&[odd], false, &no_extra()).unwrap_err();
        assert!(err.to_string().contains("narrator"), "{err}");
    }

    #[test]
    fn load_from_dir_prefers_the_jinja_file_and_reads_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": "C", "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}"#,
        )
        .unwrap();
        let loaded = load_from_dir(dir.path()).unwrap();
        assert_eq!(
            loaded,
            Some(("J".into(), Some("<s>".into()), Some("</s>".into())))
        );
    }

    #[test]
    fn load_from_dir_picks_the_default_of_a_template_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(
            load_from_dir(dir.path()).unwrap(),
            Some(("D".into(), None, None))
        );
    }

    #[test]
    fn load_from_dir_without_files_is_none_and_bad_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_from_dir(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").unwrap();
        let err = load_from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, TemplateError::Json { .. }));
        assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    }
}
