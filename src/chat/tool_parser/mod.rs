//! Streaming tool-call parsers, one per model family: the answer text (what follows the
//! reasoning) is split into visible text and whole tool calls written in the family's own
//! format, and [`render_call`] writes a call back in that format. [`detect`] chooses the
//! format from the chat template and the vocabulary (`--tool-format auto`).
//!
//! | family | [`ToolFormat`] | a call as the model writes it | results go back as |
//! |---|---|---|---|
//! | Nemotron Nano v2, Llama-Nemotron | `nano-v2` | `<TOOLCALL>[{"name": …, "arguments": {…}}, …]</TOOLCALL>` | `<TOOL_RESPONSE>[…, …]</TOOL_RESPONSE>`, by order |
//! | Nemotron 3 | `qwen3-coder` | `<tool_call>\n<function=NAME>\n<parameter=P>\nvalue\n</parameter>\n</function>\n</tool_call>` | `<tool_response>\n…\n</tool_response>` |
//! | SmolLM2, most GGUFs | `hermes` | `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` | `<tool_response>\n…\n</tool_response>` |
//!
//! The exact text of each form, whitespace included, is stated once, in the family's file
//! ([`nano_v2`], [`qwen3_coder`], [`hermes`]): its constants, its module doc and its
//! `render` are what the parser reads, what [`render_call`] writes, and what a grammar for
//! constrained decoding must produce.
//!
//! Invariants:
//! - Nothing is lost: concatenating, in order, every `Text`, the `raw` of every `Call`
//!   and the `text` of every `Malformed` reproduces the input exactly, however it was
//!   chunked.
//! - Chunking changes nothing but where `Text` is cut: the calls, the malformed blocks
//!   and the whole text are the same for every split of the same input.
//! - Outside a call, text is emitted from the same `push` unless it could still be the
//!   start of the open tag (only that suffix is held back). From the open tag on, a block
//!   is held back until it is whole (one `Call` per call in it) or known not to be a call
//!   (`Malformed`), so a tag split across chunks is never printed.
//! - A block that does not parse is never dropped and never a panic: its text comes back
//!   as `Malformed` with a one-line warning. A block is all or nothing: when one call in
//!   it is malformed, so is the block. A block still open at `finish` is malformed. A
//!   broken block ends at its close tag, or just before the next open tag, whichever
//!   comes first (that open tag starts a fresh block).
//! - Markers inside values are text: inside a JSON string nothing ends a block; in a
//!   Qwen3-Coder value only the structural end stated in [`qwen3_coder`] does.
//! - A `<tool_call>` block (hermes and qwen3-coder) is read in either body, JSON or XML,
//!   whichever it holds: the tag is shared and models drift between the two.
//! - Call ids are `{prefix}{n}`, `n` counting from 0 in each parser (one parser per
//!   turn); the prefix defaults to `call_`.

mod detect;
pub mod hermes;
mod json_body;
pub mod nano_v2;
pub mod qwen3_coder;

use serde_json::Value;

use super::reasoning_parser::partial_suffix_len;
use crate::protocol::{ToolCall, ToolFormat, ToolSpec};
pub use detect::detect;
use json_body::JsonBody;
use qwen3_coder::XmlBody;

/// A piece of the parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolSegment {
    /// Visible answer text.
    Text(String),
    /// One whole call, its arguments parsed; `raw` is the text it was read from (the
    /// calls of one `<TOOLCALL>` list share the list's text, cut between its elements).
    Call { call: ToolCall, raw: String },
    /// Text that opened a call but is not one: shown as it was, with a one-line warning.
    Malformed { text: String, warning: String },
}

impl ToolSegment {
    /// The input text this segment stands for.
    pub fn source(&self) -> &str {
        match self {
            ToolSegment::Text(t) => t,
            ToolSegment::Call { raw, .. } => raw,
            ToolSegment::Malformed { text, .. } => text,
        }
    }
}

/// The open and close tag of a format's call block.
pub fn tags(format: ToolFormat) -> (&'static str, &'static str) {
    match format {
        ToolFormat::NanoV2 => (nano_v2::OPEN, nano_v2::CLOSE),
        ToolFormat::Qwen3Coder => (qwen3_coder::OPEN, qwen3_coder::CLOSE),
        ToolFormat::Hermes => (hermes::OPEN, hermes::CLOSE),
    }
}

/// The exact text a model of `format` writes for this one call (see the family files for
/// the shapes). Arguments that are not a JSON object are written as an empty object.
pub fn render_call(format: ToolFormat, call: &ToolCall) -> String {
    render_calls(format, std::slice::from_ref(call))
}

/// The exact text a model of `format` writes for these calls in one turn: one
/// `<TOOLCALL>` list for nano-v2, one block per call (joined by a newline) otherwise.
pub fn render_calls(format: ToolFormat, calls: &[ToolCall]) -> String {
    match format {
        ToolFormat::NanoV2 => nano_v2::render(calls),
        ToolFormat::Qwen3Coder => qwen3_coder::render(calls),
        ToolFormat::Hermes => hermes::render(calls),
    }
}

/// The body of the user turn that carries tool results back, for templates without a
/// `tool` role (the primary path is the template's own `tool` messages). Results are in
/// call order; nano-v2 matches them to calls by that order alone.
pub fn render_results(format: ToolFormat, outputs: &[&str]) -> String {
    match format {
        ToolFormat::NanoV2 => nano_v2::render_results(outputs),
        ToolFormat::Qwen3Coder | ToolFormat::Hermes => hermes::render_results(outputs),
    }
}

/// The family's tool preamble, for templates that never read `tools` (SmolLM2's and most
/// GGUFs'): nemo adds it to the system message so the model still learns what it may
/// call and in which form. Written here for nemo (each says what the family's training
/// format is: the tool list in the family's tags, then the call shape with an example).
pub fn preamble(format: ToolFormat, tools: &[ToolSpec]) -> String {
    let specs: Vec<String> = tools
        .iter()
        .map(|t| python_json(&serde_json::to_value(t).unwrap_or(Value::Null)))
        .collect();
    match format {
        ToolFormat::NanoV2 => format!(
            "You can use these tools when they help:\n<AVAILABLE_TOOLS>[{}]</AVAILABLE_TOOLS>\n\n\
             To call tools, reply with one list of calls:\n\
             <TOOLCALL>[{{\"name\": \"tool_name\", \"arguments\": {{\"arg\": \"value\"}}}}]</TOOLCALL>\n\
             The results come back in the order of the calls:\n\
             <TOOL_RESPONSE>[result_1, result_2]</TOOL_RESPONSE>",
            specs.join(", ")
        ),
        ToolFormat::Qwen3Coder => {
            let mut out = String::from(
                "# Tools\n\nYou can call these functions when they help:\n<tools>\n",
            );
            for s in &specs {
                out.push_str(s);
                out.push('\n');
            }
            out.push_str(
                "</tools>\n\nTo call a function, write exactly:\n<tool_call>\n<function=NAME>\n\
                 <parameter=PARAMETER>\nVALUE\n</parameter>\n</function>\n</tool_call>\n\
                 One <parameter> block per argument; strings as they are, other values as JSON. \
                 Results come back inside <tool_response></tool_response>.",
            );
            out
        }
        ToolFormat::Hermes => {
            let mut out = String::from(
                "# Tools\n\nYou can call these functions when they help. Their signatures, \
                 one JSON object per line, inside <tools></tools>:\n<tools>\n",
            );
            for s in &specs {
                out.push_str(s);
                out.push('\n');
            }
            out.push_str(
                "</tools>\n\nTo call one, write a JSON object with its name and arguments \
                 inside <tool_call></tool_call>:\n<tool_call>\n\
                 {\"name\": \"function_name\", \"arguments\": {\"arg\": \"value\"}}\n</tool_call>\n\
                 Results come back inside <tool_response></tool_response>.",
            );
            out
        }
    }
}

/// JSON as Python's `json.dumps` writes it with its default separators (`", "`, `": "`)
/// and `ensure_ascii=False`: the `tojson` of Hugging Face's template renderer, so the
/// spacing the models saw in training.
fn python_json(value: &Value) -> String {
    use serde::Serialize;
    use std::io::{self, Write};

    struct PythonSpacing;
    impl serde_json::ser::Formatter for PythonSpacing {
        fn begin_array_value<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b": ")
        }
    }

    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonSpacing);
    match value.serialize(&mut ser) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| value.to_string()),
        Err(_) => value.to_string(),
    }
}

/// What a block parser found in the held block (offsets are into the held text, which
/// starts with the open tag).
enum Step {
    /// Undecided: wait for more text.
    More,
    /// The block is whole and ends at `end`. `calls` are the (name, arguments) read from
    /// it, or why it is not a call; `splits` are where the raw text of one call ends and
    /// the next one's begins (one fewer than the calls).
    Done {
        end: usize,
        calls: Result<Vec<(String, Value)>, String>,
        splits: Vec<usize>,
    },
    /// Not a call: the structure broke at `at`.
    Broken { at: usize, reason: String },
}

/// How a block's body is being read.
enum Body {
    /// After the open tag: whitespace, then the first character decides the body.
    Start {
        pos: usize,
    },
    Json(JsonBody),
    Xml(XmlBody),
}

enum Mode {
    /// Visible text; `held` is at most a possible prefix of the open tag.
    Text,
    /// `held` starts with an open tag.
    Block(Body),
    /// `held` starts with an open tag whose block broke: looking, from `from`, for its
    /// close tag or the next open tag.
    Recover { from: usize, reason: String },
}

/// The streaming parser of one answer in one format.
pub struct ToolParser {
    format: ToolFormat,
    open: &'static str,
    close: &'static str,
    tools: Vec<ToolSpec>,
    id_prefix: String,
    next_id: usize,
    held: String,
    mode: Mode,
}

impl ToolParser {
    /// `tools` are the offered tools: qwen3-coder reads its parameter values by their
    /// JSON-schema types.
    pub fn new(format: ToolFormat, tools: &[ToolSpec]) -> Self {
        let (open, close) = tags(format);
        ToolParser {
            format,
            open,
            close,
            tools: tools.to_vec(),
            id_prefix: "call_".into(),
            next_id: 0,
            held: String::new(),
            mode: Mode::Text,
        }
    }

    /// Call ids become `{prefix}0`, `{prefix}1`, …
    pub fn with_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = prefix.into();
        self
    }

    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// The tag that opens a call block in this format.
    pub fn open_tag(&self) -> &'static str {
        self.open
    }

    /// Whether a call block is open (its text is being held back).
    pub fn in_call(&self) -> bool {
        !matches!(self.mode, Mode::Text)
    }

    /// Feeds a chunk of the answer; returns what can be decided now.
    pub fn push(&mut self, text: &str) -> Vec<ToolSegment> {
        let mut out = Vec::new();
        self.held.push_str(text);
        while self.step(&mut out) {}
        out
    }

    /// Flushes at the end of the answer: held text is text, an open block is malformed.
    pub fn finish(&mut self) -> Vec<ToolSegment> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.held);
        match std::mem::replace(&mut self.mode, Mode::Text) {
            Mode::Text => emit_text(&mut out, rest),
            Mode::Block(_) => {
                let reason = format!("cut off: no {} before the end of the answer", self.close);
                self.malformed(&mut out, rest, &reason);
            }
            Mode::Recover { reason, .. } => self.malformed(&mut out, rest, &reason),
        }
        out
    }

    /// One move of the state machine; false when it must wait for more text.
    fn step(&mut self, out: &mut Vec<ToolSegment>) -> bool {
        match &mut self.mode {
            Mode::Text => {
                if let Some(pos) = self.held.find(self.open) {
                    let block = self.held.split_off(pos);
                    emit_text(out, std::mem::replace(&mut self.held, block));
                    self.mode = Mode::Block(Body::Start {
                        pos: self.open.len(),
                    });
                    return true;
                }
                let keep = partial_suffix_len(&self.held, self.open);
                let rest = self.held.split_off(self.held.len() - keep);
                emit_text(out, std::mem::replace(&mut self.held, rest));
                false
            }
            Mode::Block(body) => {
                let step = match body {
                    Body::Start { pos } => match start_body(&self.held, pos, self.format) {
                        Ok(Some(next)) => {
                            *body = next;
                            return true;
                        }
                        Ok(None) => Step::More,
                        Err(broken) => broken,
                    },
                    Body::Json(json) => json.step(&self.held, self.close),
                    Body::Xml(xml) => xml.step(&self.held, &self.tools),
                };
                match step {
                    Step::More => false,
                    Step::Done { end, calls, splits } => {
                        let rest = self.held.split_off(end);
                        let block = std::mem::replace(&mut self.held, rest);
                        self.mode = Mode::Text;
                        match calls {
                            Ok(calls) => self.calls(out, block, calls, &splits),
                            Err(reason) => self.malformed(out, block, &reason),
                        }
                        true
                    }
                    Step::Broken { at, reason } => {
                        self.mode = Mode::Recover { from: at, reason };
                        true
                    }
                }
            }
            Mode::Recover { from, reason } => {
                let tail = &self.held[*from..];
                let close = tail.find(self.close).map(|i| *from + i + self.close.len());
                let open = tail.find(self.open).map(|i| *from + i);
                // Whichever comes first ends the broken block; an open tag is not part of it.
                let end = match (close, open) {
                    (Some(c), Some(o)) if o < c - self.close.len() => Some(o),
                    (Some(c), _) => Some(c),
                    (None, o) => o,
                };
                match end {
                    Some(end) => {
                        let reason = std::mem::take(reason);
                        let rest = self.held.split_off(end);
                        let block = std::mem::replace(&mut self.held, rest);
                        self.mode = Mode::Text;
                        self.malformed(out, block, &reason);
                        true
                    }
                    None => {
                        let keep = partial_suffix_len(tail, self.close)
                            .max(partial_suffix_len(tail, self.open));
                        *from = self.held.len() - keep;
                        false
                    }
                }
            }
        }
    }

    fn calls(
        &mut self,
        out: &mut Vec<ToolSegment>,
        block: String,
        calls: Vec<(String, Value)>,
        splits: &[usize],
    ) {
        let mut start = 0;
        let count = calls.len();
        for (i, (name, arguments)) in calls.into_iter().enumerate() {
            let end = if i + 1 < count {
                splits.get(i).copied().unwrap_or(start)
            } else {
                block.len()
            };
            let id = format!("{}{}", self.id_prefix, self.next_id);
            self.next_id += 1;
            out.push(ToolSegment::Call {
                call: ToolCall::new(id, name, arguments),
                raw: block[start..end].to_string(),
            });
            start = end;
        }
    }

    fn malformed(&self, out: &mut Vec<ToolSegment>, text: String, reason: &str) {
        if text.is_empty() {
            return;
        }
        // One line, whatever the model wrote.
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        out.push(ToolSegment::Malformed {
            text,
            warning: format!(
                "{} tool call not understood ({reason}); shown as text",
                self.format
            ),
        });
    }
}

/// Reads past the whitespace after the open tag; the first character chooses the body.
/// `Ok(None)`: wait for more; `Err`: the block broke.
fn start_body(buf: &str, pos: &mut usize, format: ToolFormat) -> Result<Option<Body>, Step> {
    *pos = skip_ws(buf, *pos);
    let Some(&first) = buf.as_bytes().get(*pos) else {
        return Ok(None);
    };
    if first == b'{' || first == b'[' {
        return Ok(Some(Body::Json(JsonBody::new(*pos))));
    }
    if format != ToolFormat::NanoV2 {
        match literal(buf, *pos, qwen3_coder::FUNCTION_OPEN) {
            Look::Yes(_) => return Ok(Some(Body::Xml(XmlBody::new(*pos)))),
            Look::Need => return Ok(None),
            Look::No => {}
        }
    }
    let expected = match format {
        ToolFormat::NanoV2 => "a JSON list",
        _ => "a JSON object or <function=…>",
    };
    Err(Step::Broken {
        at: *pos,
        reason: format!("expected {expected} after the open tag"),
    })
}

/// Appends visible text, merging with a previous `Text`.
fn emit_text(out: &mut Vec<ToolSegment>, text: String) {
    if text.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(ToolSegment::Text(prev)) => prev.push_str(&text),
        _ => out.push(ToolSegment::Text(text)),
    }
}

/// The first position at or after `pos` that is not JSON/XML whitespace.
fn skip_ws(buf: &str, pos: usize) -> usize {
    let bytes = buf.as_bytes();
    let mut p = pos;
    while p < bytes.len() && matches!(bytes[p], b' ' | b'\t' | b'\n' | b'\r') {
        p += 1;
    }
    p
}

/// Whether a literal starts at `pos`.
enum Look<T> {
    /// Yes; the value (for a literal: the position after it).
    Yes(T),
    /// The text ends before it can be told.
    Need,
    No,
}

fn literal(buf: &str, pos: usize, lit: &str) -> Look<usize> {
    let rest = &buf.as_bytes()[pos.min(buf.len())..];
    if rest.starts_with(lit.as_bytes()) {
        Look::Yes(pos + lit.len())
    } else if lit.as_bytes().starts_with(rest) {
        Look::Need
    } else {
        Look::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs `chunks` through a fresh parser (finish included).
    pub(super) fn run(parser: &mut ToolParser, chunks: &[&str]) -> Vec<ToolSegment> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(parser.push(chunk));
        }
        out.extend(parser.finish());
        merge_text(out)
    }

    /// Merges adjacent `Text` segments (chunking may cut text anywhere).
    pub(super) fn merge_text(segments: Vec<ToolSegment>) -> Vec<ToolSegment> {
        let mut out: Vec<ToolSegment> = Vec::new();
        for seg in segments {
            match (out.last_mut(), seg) {
                (Some(ToolSegment::Text(prev)), ToolSegment::Text(t)) => prev.push_str(&t),
                (_, seg) => out.push(seg),
            }
        }
        out
    }

    /// Checks every two-cut split of `text` (and one character at a time) against the
    /// unsplit result, the reassembly invariant, and that no segment is empty.
    pub(super) fn assert_split_invariant(make: &dyn Fn() -> ToolParser, text: &str) {
        let whole = run(&mut make(), &[text]);
        let reassembled: String = whole.iter().map(ToolSegment::source).collect();
        assert_eq!(reassembled, text);
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            for &j in cuts.iter().filter(|&&j| j >= i) {
                let mut p = make();
                let mut raw = Vec::new();
                for chunk in [&text[..i], &text[i..j], &text[j..]] {
                    raw.extend(p.push(chunk));
                }
                raw.extend(p.finish());
                assert!(
                    raw.iter().all(|s| !s.source().is_empty()),
                    "empty segment at {i},{j}: {raw:?}"
                );
                assert_eq!(merge_text(raw), whole, "split at {i},{j} of {text:?}");
            }
        }
        let singles: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        assert_eq!(run(&mut make(), &singles), whole, "one character at a time");
    }

    /// Only a possible prefix of the open tag is ever held back outside a call.
    #[test]
    fn text_is_emitted_at_once_except_a_possible_open_tag() {
        let mut p = ToolParser::new(ToolFormat::Hermes, &[]);
        assert_eq!(p.push("Hi <tool"), vec![ToolSegment::Text("Hi ".into())]);
        assert!(!p.in_call());
        assert_eq!(
            p.push("box> x"),
            vec![ToolSegment::Text("<toolbox> x".into())]
        );
        assert_eq!(p.push("<tool_call>"), vec![]);
        assert!(p.in_call());
    }

    #[test]
    fn python_json_uses_the_spacing_of_json_dumps() {
        let v = json!({"a": [1, 2.5, null, true], "b": {"c": "é\"\n<"}, "d": {}, "e": []});
        assert_eq!(
            python_json(&v),
            r#"{"a": [1, 2.5, null, true], "b": {"c": "é\"\n<"}, "d": {}, "e": []}"#
        );
    }

    /// A long value streamed in small chunks is scanned once, not once per chunk (a
    /// rescan would take minutes here; the bound only proves there is no such hang).
    #[test]
    fn a_long_call_streamed_in_small_chunks_is_read_in_linear_time() {
        let content = "line </parameter> <tool_call> \\\" é\n".repeat(8 * 1024);
        let call = ToolCall::new("call_0", "write", serde_json::json!({"content": content}));
        for format in [
            ToolFormat::NanoV2,
            ToolFormat::Qwen3Coder,
            ToolFormat::Hermes,
        ] {
            let text = render_call(format, &call);
            let cuts: Vec<usize> = (0..=text.len())
                .step_by(3)
                .filter(|&i| text.is_char_boundary(i))
                .chain([text.len()])
                .collect();
            let t0 = std::time::Instant::now();
            let mut p = ToolParser::new(format, &[]);
            let mut segs = Vec::new();
            for w in cuts.windows(2) {
                segs.extend(p.push(&text[w[0]..w[1]]));
            }
            segs.extend(p.finish());
            assert!(t0.elapsed().as_secs() < 10, "{format}: {:?}", t0.elapsed());
            assert_eq!(segs.len(), 1, "{format}");
            assert!(
                matches!(&segs[0], ToolSegment::Call { call: c, .. } if c == &call),
                "{format}"
            );
        }
    }

    #[test]
    fn ids_count_per_parser_with_the_prefix() {
        let text =
            "<tool_call>{\"name\": \"a\"}</tool_call><tool_call>{\"name\": \"b\"}</tool_call>";
        let mut p = ToolParser::new(ToolFormat::Hermes, &[]).with_id_prefix("turn3_");
        let ids: Vec<String> = run(&mut p, &[text])
            .into_iter()
            .filter_map(|s| match s {
                ToolSegment::Call { call, .. } => Some(call.id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, ["turn3_0", "turn3_1"]);
    }

    #[test]
    fn a_broken_block_ends_before_the_next_open_tag() {
        let text = "<tool_call>oops <tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>";
        let segs = run(&mut ToolParser::new(ToolFormat::Hermes, &[]), &[text]);
        assert!(
            matches!(&segs[0], ToolSegment::Malformed { text, .. } if text == "<tool_call>oops ")
        );
        assert!(matches!(&segs[1], ToolSegment::Call { call, .. } if call.name() == "a"));
        assert_eq!(segs.len(), 2);
    }

    #[test]
    fn render_then_parse_gives_the_call_back_in_every_format() {
        let tools: Vec<ToolSpec> = serde_json::from_value(json!([{
            "name": "write_file",
            "parameters": {"type": "object", "properties": {
                "path": {"type": "string"}, "content": {"type": "string"},
                "mode": {"type": "integer"}, "opts": {"type": "object"},
                "tags": {"type": "array"}, "force": {"type": "boolean"}}}
        }]))
        .unwrap();
        let calls = [
            ToolCall::new(
                "call_0",
                "write_file",
                json!({"path": "a é😀.txt", "content": "line 1\n</parameter>\n\"quoted\"\n",
                       "mode": 420, "opts": {"x": [1, 2.5, null]}, "tags": ["a", "b"], "force": true}),
            ),
            ToolCall::new("call_1", "write_file", json!({"path": "42"})),
        ];
        for format in [
            ToolFormat::NanoV2,
            ToolFormat::Qwen3Coder,
            ToolFormat::Hermes,
        ] {
            let text = format!("Writing.\n{}", render_calls(format, &calls));
            let segs = run(&mut ToolParser::new(format, &tools), &[&text]);
            let got: Vec<&ToolCall> = segs
                .iter()
                .filter_map(|s| match s {
                    ToolSegment::Call { call, .. } => Some(call),
                    _ => None,
                })
                .collect();
            assert_eq!(got, calls.iter().collect::<Vec<_>>(), "{format}: {text}");
        }
    }
}
