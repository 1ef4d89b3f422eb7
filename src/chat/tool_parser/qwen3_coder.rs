//! Nemotron 3 (30B-A3B, 4B): the Qwen3-Coder XML form inside ChatML, one function per
//! `<tool_call>` block, each parameter's value as raw text converted by the tool's
//! JSON-schema types; results in `<tool_response>` blocks of a user turn.
//!
//! The exact text (as the Nemotron 3 / Qwen3-Coder templates render `tool_calls`):
//!
//! ```text
//! <tool_call>
//! <function=NAME>
//! <parameter=P1>
//! VALUE1
//! </parameter>
//! <parameter=P2>
//! VALUE2
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! - Every tag is followed by a newline; blocks for several calls are joined by one
//!   newline. A string value is written as it is (no quotes, no escapes); any other value
//!   as `json.dumps` writes it. Results: `<tool_response>\nOUTPUT\n</tool_response>` per
//!   result, joined by a newline (as hermes).
//!
//! Read:
//! - Whitespace is allowed between tags; names are trimmed, must be non-empty, at most
//!   256 bytes, without `<` or a newline. A JSON body in `<tool_call>` is read as hermes.
//! - A value starts after `<parameter=P>` and the one newline after it (if any). It ends
//!   at the first `</parameter>` that is followed, after optional whitespace, by
//!   `<parameter=NAME>` or by `</function>` + whitespace + `</tool_call>`; one newline
//!   before that `</parameter>` is not part of the value. Any other marker inside a
//!   value (`</parameter>`, `<tool_call>`, `</tool_call>`, `<function=…>`,
//!   `</function>`) is text of the value. (This is stricter than vLLM's `qwen3_coder`
//!   parser, which ends a value at the first `</parameter>`, `<parameter=` or
//!   `</function>`, and than llama.cpp's, which ends it at the first `\n</parameter>`,
//!   `\n<parameter=` or `\n</function>`: a file written through a tool may well contain
//!   those.) The form cannot tell a value that contains exactly such a structural end
//!   from the end itself; the grammar must use the same rule.
//! - One `<function=…>` per block, no duplicate parameter, a `</tool_call>` after
//!   `</function>`: anything else is malformed.
//!
//! Types ([`convert`]): the parameter's schema in the offered tool gives its types (`type`
//! as a string or a list, the members of `anyOf`/`oneOf`, the values of `enum`/`const`;
//! vLLM's aliases such as `int`, `float`, `bool`, `dict`, `list` are understood).
//! - `string` alone: the text verbatim (so `"null"`, `" 42 "` stay strings).
//! - Otherwise the trimmed text is tried as `null` (or `None`), a boolean (`true`/`false`
//!   in any case: some templates write Python's `True`), an integer (`3.0` counts), a
//!   number, an object, an array, in that order, as far as the types allow; the first
//!   fit wins. With no fit the value stays the verbatim text, as in vLLM ("degenerating
//!   to string"): the tool's own argument check then tells the model what is wrong.
//! - No type known (the tool or the parameter is not in the offered tools, or its schema
//!   names no type): JSON if the text parses as JSON, else the text. vLLM keeps such
//!   values as strings; nemo reads them as the template would have written them, since
//!   the template writes every non-string with `tojson` (a string that happens to look
//!   like JSON is the one case read differently, and without a schema nothing can tell).

use serde_json::{Map, Number, Value};

use super::{literal, partial_suffix_len, python_json, skip_ws, Look, Step};
use crate::protocol::{ToolCall, ToolSpec};

/// Opens a call block (shared with hermes).
pub const OPEN: &str = super::hermes::OPEN;
/// Closes a call block (shared with hermes).
pub const CLOSE: &str = super::hermes::CLOSE;
/// Opens the function: `<function=NAME>`.
pub const FUNCTION_OPEN: &str = "<function=";
pub const FUNCTION_CLOSE: &str = "</function>";
/// Opens a parameter: `<parameter=NAME>`.
pub const PARAMETER_OPEN: &str = "<parameter=";
pub const PARAMETER_CLOSE: &str = "</parameter>";
/// Ends the name in `<function=NAME>` and `<parameter=NAME>`.
pub const NAME_END: &str = ">";
/// Longest function or parameter name read.
pub const MAX_NAME: usize = 256;

/// One block per call, joined by a newline.
pub(super) fn render(calls: &[ToolCall]) -> String {
    let blocks: Vec<String> = calls
        .iter()
        .map(|call| {
            let mut s = format!("{OPEN}\n{FUNCTION_OPEN}{}{NAME_END}\n", call.name());
            if let Value::Object(args) = call.arguments() {
                for (name, value) in args {
                    let text = match value {
                        Value::String(v) => v.clone(),
                        other => python_json(other),
                    };
                    s.push_str(&format!(
                        "{PARAMETER_OPEN}{name}{NAME_END}\n{text}\n{PARAMETER_CLOSE}\n"
                    ));
                }
            }
            s.push_str(&format!("{FUNCTION_CLOSE}\n{CLOSE}"));
            s
        })
        .collect();
    blocks.join("\n")
}

enum State {
    /// At `<function=NAME>`.
    Header,
    /// Between parameters: whitespace, then `<parameter=NAME>` or `</function>`.
    Params,
    /// Just after `<parameter=NAME>`: a newline may follow.
    ValueStart { name: String },
    /// In a value that starts at `start`; no end before `scan`.
    Value {
        name: String,
        start: usize,
        scan: usize,
    },
    /// After `</function>`: whitespace, then `</tool_call>`.
    Footer,
}

/// The XML body of one `<tool_call>` block, read incrementally: each byte of a value is
/// searched once (plus the bounded look past a candidate `</parameter>`).
pub(super) struct XmlBody {
    pos: usize,
    state: State,
    function: String,
    params: Vec<(String, String)>,
}

impl XmlBody {
    /// `pos` is where `<function=` starts.
    pub(super) fn new(pos: usize) -> Self {
        XmlBody {
            pos,
            state: State::Header,
            function: String::new(),
            params: Vec::new(),
        }
    }

    pub(super) fn step(&mut self, buf: &str, tools: &[ToolSpec]) -> Step {
        loop {
            match &mut self.state {
                State::Header => match named_tag(buf, self.pos, FUNCTION_OPEN) {
                    Look::Yes((name, end)) => {
                        self.function = name;
                        self.pos = end;
                        self.state = State::Params;
                    }
                    Look::Need => return Step::More,
                    Look::No => {
                        return Step::Broken {
                            at: self.pos,
                            reason: "expected <function=NAME>".into(),
                        }
                    }
                },
                State::Params => {
                    let at = skip_ws(buf, self.pos);
                    match named_tag(buf, at, PARAMETER_OPEN) {
                        Look::Yes((name, end)) => {
                            self.pos = end;
                            self.state = State::ValueStart { name };
                        }
                        Look::Need => return Step::More,
                        Look::No => match literal(buf, at, FUNCTION_CLOSE) {
                            Look::Yes(end) => {
                                self.pos = end;
                                self.state = State::Footer;
                            }
                            Look::Need => return Step::More,
                            Look::No => {
                                return Step::Broken {
                                    at,
                                    reason: "expected <parameter=NAME> or </function>".into(),
                                }
                            }
                        },
                    }
                }
                State::ValueStart { name } => {
                    let Some(&first) = buf.as_bytes().get(self.pos) else {
                        return Step::More;
                    };
                    let start = self.pos + usize::from(first == b'\n');
                    self.state = State::Value {
                        name: std::mem::take(name),
                        start,
                        scan: start,
                    };
                }
                State::Value { name, start, scan } => {
                    let Some(i) = buf[*scan..].find(PARAMETER_CLOSE) else {
                        *scan = buf.len() - partial_suffix_len(&buf[*scan..], PARAMETER_CLOSE);
                        return Step::More;
                    };
                    let close = *scan + i;
                    match value_ends(buf, close + PARAMETER_CLOSE.len()) {
                        Look::Yes(()) => {
                            let value = &buf[*start..close];
                            let value = value.strip_suffix('\n').unwrap_or(value);
                            self.params.push((std::mem::take(name), value.to_string()));
                            self.pos = close + PARAMETER_CLOSE.len();
                            self.state = State::Params;
                        }
                        Look::Need => {
                            *scan = close;
                            return Step::More;
                        }
                        // Text of the value; `<` is one byte, so close + 1 is a boundary.
                        Look::No => *scan = close + 1,
                    }
                }
                State::Footer => {
                    let at = skip_ws(buf, self.pos);
                    return match literal(buf, at, CLOSE) {
                        Look::Yes(end) => Step::Done {
                            end,
                            calls: self.call(tools).map(|call| vec![call]),
                            splits: Vec::new(),
                        },
                        Look::Need => Step::More,
                        Look::No => Step::Broken {
                            at,
                            reason: format!("expected {CLOSE} after {FUNCTION_CLOSE}"),
                        },
                    };
                }
            }
        }
    }

    /// The call read, its values converted by the offered tool's schema.
    fn call(&mut self, tools: &[ToolSpec]) -> Result<(String, Value), String> {
        let function = std::mem::take(&mut self.function);
        let properties = tools
            .iter()
            .find(|t| t.name == function)
            .and_then(|t| t.parameters.get("properties"));
        let mut args = Map::new();
        for (name, text) in std::mem::take(&mut self.params) {
            if args.contains_key(&name) {
                return Err(format!("parameter {name:?} of {function:?} given twice"));
            }
            let schema = properties.and_then(|p| p.get(&name));
            let value = convert(&text, schema);
            args.insert(name, value);
        }
        Ok((function, Value::Object(args)))
    }
}

/// Whether the `</parameter>` just before `pos` ends its value (see the module doc).
fn value_ends(buf: &str, pos: usize) -> Look<()> {
    let at = skip_ws(buf, pos);
    if at == buf.len() {
        return Look::Need;
    }
    match named_tag(buf, at, PARAMETER_OPEN) {
        Look::Yes(_) => return Look::Yes(()),
        Look::Need => return Look::Need,
        Look::No => {}
    }
    match literal(buf, at, FUNCTION_CLOSE) {
        Look::Yes(end) => {
            let at = skip_ws(buf, end);
            if at == buf.len() {
                return Look::Need;
            }
            match literal(buf, at, CLOSE) {
                Look::Yes(_) => Look::Yes(()),
                Look::Need => Look::Need,
                Look::No => Look::No,
            }
        }
        Look::Need => Look::Need,
        Look::No => Look::No,
    }
}

/// `PREFIX NAME >` at `pos`: the trimmed name and the position after `>`.
fn named_tag(buf: &str, pos: usize, prefix: &str) -> Look<(String, usize)> {
    let start = match literal(buf, pos, prefix) {
        Look::Yes(start) => start,
        Look::Need => return Look::Need,
        Look::No => return Look::No,
    };
    for (i, &b) in buf.as_bytes()[start..].iter().enumerate() {
        if i > MAX_NAME {
            return Look::No;
        }
        match b {
            b'>' => {
                let name = buf[start..start + i].trim();
                return if name.is_empty() {
                    Look::No
                } else {
                    Look::Yes((name.to_string(), start + i + 1))
                };
            }
            b'<' | b'\n' => return Look::No,
            _ => {}
        }
    }
    if buf.len() - start > MAX_NAME {
        Look::No
    } else {
        Look::Need
    }
}

/// A JSON-schema type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    Object,
    Array,
    String,
}

/// The types a parameter's schema allows (empty: unknown).
fn kinds(schema: &Value, out: &mut Vec<Kind>) {
    match schema.get("type") {
        Some(Value::String(t)) => out.extend(kind_named(t)),
        Some(Value::Array(ts)) => {
            out.extend(ts.iter().filter_map(Value::as_str).filter_map(kind_named))
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(members)) = schema.get(key) {
            for member in members {
                kinds(member, out);
            }
        }
    }
    if let Some(Value::Array(values)) = schema.get("enum") {
        out.extend(values.iter().map(kind_of));
    }
    if let Some(value) = schema.get("const") {
        out.push(kind_of(value));
    }
    if out.is_empty() {
        if schema.get("properties").is_some() {
            out.push(Kind::Object);
        } else if schema.get("items").is_some() {
            out.push(Kind::Array);
        }
    }
}

/// A type name, with the aliases vLLM's parser accepts.
fn kind_named(name: &str) -> Option<Kind> {
    let n = name.trim().to_ascii_lowercase();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| n.starts_with(p));
    Some(match n.as_str() {
        "string" | "str" | "text" | "varchar" | "char" | "enum" => Kind::String,
        "boolean" | "bool" | "binary" => Kind::Boolean,
        "null" | "none" => Kind::Null,
        "object" => Kind::Object,
        "array" | "arr" => Kind::Array,
        _ if starts(&["int", "uint", "long", "short", "unsigned"]) => Kind::Integer,
        _ if starts(&["num", "float", "double"]) => Kind::Number,
        _ if starts(&["dict", "map"]) => Kind::Object,
        _ if starts(&["list", "tuple"]) => Kind::Array,
        _ => return None,
    })
}

fn kind_of(value: &Value) -> Kind {
    match value {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Integer,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Object,
    }
}

/// A parameter's raw text as a JSON value, by its schema (see the module doc).
pub fn convert(text: &str, schema: Option<&Value>) -> Value {
    let mut allowed = Vec::new();
    if let Some(schema) = schema {
        kinds(schema, &mut allowed);
    }
    if allowed.is_empty() {
        return serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
    }
    let t = text.trim();
    let order = [
        Kind::Null,
        Kind::Boolean,
        Kind::Integer,
        Kind::Number,
        Kind::Object,
        Kind::Array,
    ];
    for kind in order.into_iter().filter(|k| allowed.contains(k)) {
        let value = match kind {
            Kind::Null => (t.eq_ignore_ascii_case("null") || t == "None").then_some(Value::Null),
            Kind::Boolean => {
                if t.eq_ignore_ascii_case("true") {
                    Some(Value::Bool(true))
                } else if t.eq_ignore_ascii_case("false") {
                    Some(Value::Bool(false))
                } else {
                    None
                }
            }
            Kind::Integer => serde_json::from_str::<Number>(t).ok().and_then(|n| {
                if n.is_i64() || n.is_u64() {
                    Some(Value::Number(n))
                } else {
                    // 3.0 is an integer to JSON schema; beyond 2^53 a float is not exact.
                    let f = n.as_f64()?;
                    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| Value::from(f as i64))
                }
            }),
            Kind::Number => serde_json::from_str::<Number>(t).ok().map(Value::Number),
            Kind::Object => serde_json::from_str::<Value>(t)
                .ok()
                .filter(Value::is_object),
            Kind::Array => serde_json::from_str::<Value>(t)
                .ok()
                .filter(Value::is_array),
            Kind::String => None,
        };
        if let Some(value) = value {
            return value;
        }
    }
    Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_split_invariant, run};
    use super::super::{render_calls, ToolParser, ToolSegment};
    use super::*;
    use crate::chat::reasoning_parser::ReasoningParser;
    use crate::chat::stream_parser::{run as stream_run, Piece, StreamParser};
    use crate::protocol::ToolFormat;
    use serde_json::json;

    fn tools() -> Vec<ToolSpec> {
        serde_json::from_value(json!([
            {"name": "get_weather", "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"}}}},
            {"name": "write_file", "parameters": {"type": "object", "properties": {
                "path": {"type": "string"}, "content": {"type": "string"}}}}
        ]))
        .unwrap()
    }

    fn parser() -> ToolParser {
        ToolParser::new(ToolFormat::Qwen3Coder, &tools())
    }

    fn text(s: &str) -> ToolSegment {
        ToolSegment::Text(s.into())
    }

    fn call(id: &str, name: &str, args: Value, raw: &str) -> ToolSegment {
        ToolSegment::Call {
            call: ToolCall::new(id, name, args),
            raw: raw.into(),
        }
    }

    const WEATHER: &str = "<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";

    #[test]
    fn a_complete_call_becomes_text_and_a_call_with_typed_values() {
        let segs = run(&mut parser(), &[&format!("Let me check.\n\n{WEATHER}")]);
        assert_eq!(
            segs,
            vec![
                text("Let me check.\n\n"),
                call(
                    "call_0",
                    "get_weather",
                    json!({"city": "São Paulo", "days": 3}),
                    WEATHER
                ),
            ]
        );
    }

    #[test]
    fn text_two_calls_and_text_split_at_every_byte_boundary() {
        let write = "<tool_call>\n<function=write_file>\n<parameter=path>\nnotes/é.md\n</parameter>\n<parameter=content>\n# 😀 Title\n\nline two\n</parameter>\n</function>\n</tool_call>";
        let input = format!("Two steps ü:\n{WEATHER}\n{write}\nDone 😀");
        let whole = run(&mut parser(), &[&input]);
        assert_eq!(
            whole,
            vec![
                text("Two steps ü:\n"),
                call(
                    "call_0",
                    "get_weather",
                    json!({"city": "São Paulo", "days": 3}),
                    WEATHER
                ),
                text("\n"),
                call(
                    "call_1",
                    "write_file",
                    json!({"path": "notes/é.md", "content": "# 😀 Title\n\nline two"}),
                    write
                ),
                text("\nDone 😀"),
            ]
        );
        assert_split_invariant(&parser, &input);
    }

    #[test]
    fn markers_inside_values_stay_text() {
        let content = "a </parameter> b\n</parameter>\nmore <tool_call> </tool_call>\n<function=x>\n</function>\nend\n</parameter>\n</function>\ntail";
        let block = format!(
            "<tool_call>\n<function=write_file>\n<parameter=content>\n{content}\n</parameter>\n<parameter=path>\nx.txt\n</parameter>\n</function>\n</tool_call>"
        );
        let segs = run(&mut parser(), &[&block]);
        assert_eq!(
            segs,
            vec![call(
                "call_0",
                "write_file",
                json!({"content": content, "path": "x.txt"}),
                &block
            )]
        );
        assert_split_invariant(&parser, &block);
    }

    #[test]
    fn malformed_blocks_are_shown_with_a_warning() {
        let cases = [
            // No function header.
            "<tool_call>\nget_weather(city=Paris)\n</tool_call>",
            // Empty function name.
            "<tool_call>\n<function=>\n</function>\n</tool_call>",
            // Not a parameter tag.
            "<tool_call>\n<function=get_weather>\n<param=city>\nParis\n</param>\n</function>\n</tool_call>",
            // Two functions in one block.
            "<tool_call>\n<function=a>\n</function>\n<function=b>\n</function>\n</tool_call>",
            // A parameter given twice.
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nA\n</parameter>\n<parameter=city>\nB\n</parameter>\n</function>\n</tool_call>",
        ];
        for block in cases {
            let input = format!("a {block} b");
            let segs = run(&mut parser(), &[&input]);
            assert_eq!(segs.len(), 3, "{block}: {segs:?}");
            assert_eq!((&segs[0], &segs[2]), (&text("a "), &text(" b")));
            let ToolSegment::Malformed {
                text: shown,
                warning,
            } = &segs[1]
            else {
                panic!("{block}: {segs:?}");
            };
            assert_eq!(shown, block);
            assert!(
                warning.starts_with("qwen3-coder tool call not understood ("),
                "{warning}"
            );
            assert!(!warning.contains('\n'));
            assert_split_invariant(&parser, &input);
        }
    }

    #[test]
    fn an_unterminated_call_at_the_end_is_malformed() {
        for input in [
            "x <tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
            // The value never ends: its </parameter> is not followed by </tool_call>.
            "x <tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n",
            "x <tool_call>\n<function=get_weather>\n</function>\n",
        ] {
            let segs = run(&mut parser(), &[input]);
            assert_eq!(segs[0], text("x "), "{input:?}");
            assert!(
                matches!(&segs[1], ToolSegment::Malformed { text, warning }
                    if text == &input[2..] && warning.contains("cut off")),
                "{input:?}: {segs:?}"
            );
            assert_split_invariant(&parser, input);
        }
    }

    #[test]
    fn a_call_that_starts_inside_reasoning_ends_it_and_is_kept() {
        // The known Nemotron 3 failure: no </think> before the call.
        let reasoning = "The user wants the weather, so I call the tool.\n";
        let input = format!("{reasoning}{WEATHER}");
        for i in (0..=input.len()).filter(|&i| input.is_char_boundary(i)) {
            let mut stream = StreamParser::new(
                ReasoningParser::new("<think>", "</think>", true),
                Some(parser()),
            );
            let pieces = stream_run(&mut stream, &[&input[..i], &input[i..]]);
            assert_eq!(
                pieces,
                vec![
                    Piece::Reasoning(reasoning.into()),
                    Piece::Call {
                        call: ToolCall::new(
                            "call_0",
                            "get_weather",
                            json!({"city": "São Paulo", "days": 3})
                        ),
                        raw: WEATHER.into(),
                    },
                ],
                "split at {i}"
            );
        }
    }

    #[test]
    fn a_json_body_in_tool_call_tags_is_read_too() {
        let block = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        assert_eq!(
            run(&mut parser(), &[block]),
            vec![call(
                "call_0",
                "get_weather",
                json!({"city": "Oslo"}),
                block
            )]
        );
    }

    #[test]
    fn values_are_converted_by_their_schema_types() {
        let c = |text: &str, schema: Value| convert(text, Some(&schema));
        // string: verbatim, whatever it looks like.
        assert_eq!(c(" 42 ", json!({"type": "string"})), json!(" 42 "));
        assert_eq!(c("null", json!({"type": "string"})), json!("null"));
        // scalars
        assert_eq!(c("42", json!({"type": "integer"})), json!(42));
        assert_eq!(c("3.0", json!({"type": "integer"})), json!(3));
        assert_eq!(c("3.5", json!({"type": "integer"})), json!("3.5"));
        assert_eq!(c("-2.5e1", json!({"type": "number"})), json!(-25.0));
        assert_eq!(c("True", json!({"type": "boolean"})), json!(true));
        assert_eq!(c("false", json!({"type": "bool"})), json!(false));
        assert_eq!(c("yes", json!({"type": "boolean"})), json!("yes"));
        assert_eq!(c("null", json!({"type": "null"})), Value::Null);
        // object / array
        let obj = "{\"a\": [1, \"x\"]}";
        assert_eq!(c(obj, json!({"type": "object"})), json!({"a": [1, "x"]}));
        assert_eq!(c("[1, 2]", json!({"type": "array"})), json!([1, 2]));
        assert_eq!(c("[1, 2]", json!({"type": "object"})), json!("[1, 2]"));
        assert_eq!(c("{", json!({"type": "object"})), json!("{"));
        // unions: the first fit in the fixed order, else the text
        let union = json!({"type": ["integer", "null", "string"]});
        assert_eq!(c("7", union.clone()), json!(7));
        assert_eq!(c("null", union.clone()), Value::Null);
        assert_eq!(c("seven", union), json!("seven"));
        let any_of = json!({"anyOf": [{"type": "number"}, {"type": "array"}]});
        assert_eq!(c("[0.5]", any_of.clone()), json!([0.5]));
        assert_eq!(c("0.5", any_of), json!(0.5));
        assert_eq!(c("2", json!({"enum": [1, 2, 3]})), json!(2));
        assert_eq!(c("2", json!({"enum": ["1", "2"]})), json!("2"));
        assert_eq!(c("{}", json!({"properties": {}})), json!({}));
        // no type known: JSON if it parses, else the text
        assert_eq!(convert("42", None), json!(42));
        assert_eq!(
            c("{\"a\": 1}", json!({"description": "x"})),
            json!({"a": 1})
        );
        assert_eq!(convert("hello", None), json!("hello"));
        assert_eq!(convert("", None), json!(""));
    }

    #[test]
    fn parameters_of_unknown_tools_are_read_by_best_effort() {
        let block = "<tool_call>\n<function=other>\n<parameter=n>\n5\n</parameter>\n<parameter=s>\nfive\n</parameter>\n</function>\n</tool_call>";
        assert_eq!(
            run(&mut parser(), &[block]),
            vec![call("call_0", "other", json!({"n": 5, "s": "five"}), block)]
        );
    }

    #[test]
    fn compact_and_loosely_spaced_forms_are_read() {
        let block = "<tool_call><function= get_weather ><parameter=city>Rome</parameter>  <parameter=days>\n2</parameter></function></tool_call>";
        assert_eq!(
            run(&mut parser(), &[block]),
            vec![call(
                "call_0",
                "get_weather",
                json!({"city": "Rome", "days": 2}),
                block
            )]
        );
    }

    #[test]
    fn render_writes_the_template_form() {
        let calls = [
            ToolCall::new(
                "a",
                "get_weather",
                json!({"city": "Paris", "days": 3, "opts": {"u": "C"}}),
            ),
            ToolCall::new("b", "now", json!({})),
        ];
        assert_eq!(
            render_calls(ToolFormat::Qwen3Coder, &calls),
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n\
             <parameter=days>\n3\n</parameter>\n<parameter=opts>\n{\"u\": \"C\"}\n</parameter>\n\
             </function>\n</tool_call>\n<tool_call>\n<function=now>\n</function>\n</tool_call>"
        );
    }
}
