//! Lark grammars for tool calls in each family's own text format (`ToolFormat`), given
//! the offered tools and the tool choice.
//!
//! The text shapes, byte for byte (`NAME` an offered tool's name, `ARGS` its arguments as
//! JSON valid for its `parameters` schema, written with `", "` and `": "` separators and no
//! other whitespace; `WS` up to 8 spaces/newlines, allowed only before the first call):
//!
//! - `NanoV2`: `WS? <TOOLCALL>[CALL, CALL, ...]</TOOLCALL>`, one tag pair holding a JSON
//!   array of the calls, `CALL = {"name": "NAME", "arguments": ARGS}`.
//! - `Hermes`: `WS? <tool_call>CALL</tool_call>`, one block per call, blocks joined by
//!   one `\n`, one optional `\n` after the last; `CALL` as for `NanoV2`.
//! - `Qwen3Coder`: `WS? <tool_call>\n<function=NAME>\nPARAM...</function>\n</tool_call>`,
//!   one block per call joined by one `\n`, one optional `\n` after the last. Each
//!   `PARAM` is `<parameter=P>\nVALUE\n</parameter>\n`, in the schema's `properties`
//!   order, the required ones always, the others optionally. `VALUE` is the raw text for
//!   a `"type": "string"` parameter (any text without `\n</parameter>`, within its
//!   `minLength`/`maxLength`; its `pattern` and `format` are not enforced on raw text),
//!   one of the strings for a string `enum`, and JSON valid for the parameter's schema
//!   otherwise.
//!
//! A tag that is one special token of the vocabulary (Nano v2's `<TOOLCALL>`) is matched
//! as that token; otherwise as text. `ToolChoice::Required` makes the answer one or more
//! calls to the offered tools, `Named` exactly one call to that tool, then the end. `Auto`
//! leaves text free until the opening tag, then holds the rest of the answer to the
//! calls; text without the tag is also a whole answer. `None` (or no tools): no grammar.
//! A parameters schema's `$defs` / `definitions` are lifted to the root of the schema
//! each `%json` compiles, so its local `$ref`s resolve.

use serde_json::{json, Map, Value};

use super::{json_defaults, lark_string, GrammarError, Vocabulary};
use crate::protocol::{ToolChoice, ToolFormat, ToolSpec};

const WS: &str = r"/[ \n]{1,8}/";

/// The Lark source for `format` (see the module doc); None when `choice` is `None` or no
/// tool is offered.
pub fn tool_call_grammar(
    vocab: &Vocabulary,
    format: ToolFormat,
    tools: &[ToolSpec],
    choice: &ToolChoice,
) -> Result<Option<String>, GrammarError> {
    let offered: Vec<&ToolSpec> = match choice {
        ToolChoice::None => return Ok(None),
        _ if tools.is_empty() => return Ok(None),
        ToolChoice::Named(name) => {
            let t = tools.iter().filter(|t| &t.name == name).collect::<Vec<_>>();
            if t.is_empty() {
                return Err(GrammarError::Invalid {
                    field: "tool_choice",
                    msg: format!("no offered tool is named `{name}`"),
                });
            }
            t
        }
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    let mut g = Lark::default();
    let (open, close) = match format {
        ToolFormat::NanoV2 => (tag(vocab, "<TOOLCALL>"), tag(vocab, "</TOOLCALL>")),
        ToolFormat::Hermes | ToolFormat::Qwen3Coder => {
            (tag(vocab, "<tool_call>"), tag(vocab, "</tool_call>"))
        }
    };
    let (o, c) = (&open.atom, &close.atom);
    // More than one call, except for a named tool (one call to it).
    let many = !matches!(choice, ToolChoice::Named(_));
    let more = |one: String, sep: &str| {
        if many {
            format!("({sep} {one})*")
        } else {
            String::new()
        }
    };
    let calls = match format {
        ToolFormat::NanoV2 => {
            let call = g.json_calls(&offered)?;
            let rest = more(call.to_string(), "\", \"");
            format!("\"[\" {call} {rest} \"]\" {c}")
        }
        ToolFormat::Hermes => {
            let call = g.json_calls(&offered)?;
            let rest = more(format!("{o} {call} {c}"), "\"\\n\"");
            format!("{call} {c} {rest} \"\\n\"?")
        }
        ToolFormat::Qwen3Coder => {
            let func = g.xml_functions(&offered)?;
            let rest = more(format!("{o} \"\\n\" {func} {c}"), "\"\\n\"");
            format!("\"\\n\" {func} {c} {rest} \"\\n\"?")
        }
    };
    g.rule("calls", &calls);
    match (choice, open.special) {
        // A special-token tag: text can never contain it.
        (ToolChoice::Auto, true) => {
            g.rule("start", &format!("TEXT? | TEXT? {o} calls"));
            g.rule("TEXT", r"/(?s:.+)/");
        }
        // A text tag: free text is text without the tag; the call starts at the first
        // tag (a lazy lexeme ends at its first match).
        (ToolChoice::Auto, false) => {
            let t = regex_literal(open.text);
            g.rule("start", "TEXT? | head calls");
            g.rule("TEXT", &format!(r"/(?s:.+)/ & ~/(?s:.*){t}(?s:.*)/"));
            g.rule("head[lazy]", &format!(r"/(?s:.*){t}/"));
        }
        _ => {
            g.rule("start", &format!("WS? {o} calls"));
            g.rule("WS", WS);
        }
    }
    Ok(Some(g.finish()))
}

/// A tag of a tool-call format, as a Lark atom.
struct Tag {
    text: &'static str,
    /// `<[id]>` for a special token, a string literal otherwise.
    atom: String,
    special: bool,
}

fn tag(vocab: &Vocabulary, text: &'static str) -> Tag {
    match vocab.special_token(text) {
        Some(id) => Tag {
            text,
            atom: format!("<[{id}]>"),
            special: true,
        },
        None => Tag {
            text,
            atom: lark_string(text),
            special: false,
        },
    }
}

/// `s` escaped for a Lark `/regex/` (Rust regex syntax; `\<` would be a word boundary).
fn regex_literal(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '/' => out.push_str(r"\/"),
            '\n' => out.push_str(r"\n"),
            '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
            | '#' | '&' | '-' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A Lark source being written, one rule per line.
#[derive(Default)]
struct Lark {
    lines: Vec<String>,
}

impl Lark {
    fn rule(&mut self, name: &str, body: &str) {
        self.lines.push(format!("{name}: {body}"));
    }

    fn finish(mut self) -> String {
        // `start` first, for the reader.
        if let Some(i) = self.lines.iter().position(|l| l.starts_with("start:")) {
            let s = self.lines.remove(i);
            self.lines.insert(0, s);
        }
        self.lines.join("\n") + "\n"
    }

    /// `call: call_0 | call_1 ...`, each `{"name": "NAME", "arguments": ARGS}` as `%json`.
    fn json_calls(&mut self, tools: &[&ToolSpec]) -> Result<&'static str, GrammarError> {
        let mut alts = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let (params, defs) = split_defs(&t.parameters);
            let mut schema = json!({
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": params,
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            });
            attach(&mut schema, defs);
            self.rule(
                &format!("call_{i}"),
                &format!("%json {}", compact(&schema)?),
            );
            alts.push(format!("call_{i}"));
        }
        self.rule("call", &alts.join(" | "));
        Ok("call")
    }

    /// `func: fn_0 | fn_1 ...`, each `<function=NAME>\nPARAM...</function>\n`.
    fn xml_functions(&mut self, tools: &[&ToolSpec]) -> Result<&'static str, GrammarError> {
        let mut alts = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let (params, defs) = split_defs(&t.parameters);
            let props = params
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let required: Vec<&str> = params
                .get("required")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
                return Err(GrammarError::Invalid {
                    field: "tools",
                    msg: format!(
                        "tool `{}`: required parameter `{missing}` is not in `properties`",
                        t.name
                    ),
                });
            }
            let mut seq = vec![lark_string(&format!("<function={}>\n", t.name))];
            for (j, (p, schema)) in props.iter().enumerate() {
                let rule = format!("p_{i}_{j}");
                let value = format!("v_{i}_{j}");
                self.xml_value(&value, schema, &defs)?;
                self.rule(
                    &rule,
                    &format!(
                        "{} {value} {}",
                        lark_string(&format!("<parameter={p}>\n")),
                        lark_string("\n</parameter>\n")
                    ),
                );
                seq.push(if required.contains(&p.as_str()) {
                    rule
                } else {
                    format!("{rule}?")
                });
            }
            seq.push(lark_string("</function>\n"));
            self.rule(&format!("fn_{i}"), &seq.join(" "));
            alts.push(format!("fn_{i}"));
        }
        self.rule("func", &alts.join(" | "));
        Ok("func")
    }

    /// A parameter's value: raw text for a string, one of the strings of a string enum,
    /// JSON for anything else.
    fn xml_value(
        &mut self,
        name: &str,
        schema: &Value,
        defs: &Map<String, Value>,
    ) -> Result<(), GrammarError> {
        let enum_strings: Option<Vec<&str>> = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_str).collect());
        if let Some(items) = enum_strings.filter(|v| !v.is_empty()) {
            let alts: Vec<String> = items.iter().map(|s| lark_string(s)).collect();
            self.rule(name, &alts.join(" | "));
        } else if schema.get("type").and_then(Value::as_str) == Some("string") {
            let bound = |k: &str| schema.get(k).and_then(Value::as_u64);
            let (min, max) = (bound("minLength").unwrap_or(0), bound("maxLength"));
            let length = match max {
                Some(max) => format!("{{{min},{max}}}"),
                None => format!("{{{min},}}"),
            };
            let upper = name.to_uppercase();
            self.rule(name, &upper);
            self.rule(
                &upper,
                &format!(r"/(?s:.{length})/ & ~/(?s:.*)\n<\/parameter>(?s:.*)/"),
            );
        } else {
            let mut s = schema.clone();
            attach(&mut s, defs.clone());
            self.rule(name, &format!("%json {}", compact(&s)?));
        }
        Ok(())
    }
}

/// `params` without its `$defs` / `definitions`, and those (keyed by where they were).
fn split_defs(params: &Value) -> (Value, Map<String, Value>) {
    let mut p = params.clone();
    let mut defs = Map::new();
    if let Value::Object(m) = &mut p {
        for key in ["$defs", "definitions"] {
            if let Some(d) = m.remove(key) {
                defs.insert(key.to_string(), d);
            }
        }
    }
    (p, defs)
}

/// Puts `defs` at the root of `schema`, with nemo's JSON layout options.
fn attach(schema: &mut Value, defs: Map<String, Value>) {
    if let Value::Object(m) = schema {
        m.extend(defs);
        m.entry("x-guidance").or_insert_with(json_defaults);
    }
}

fn compact(v: &Value) -> Result<String, GrammarError> {
    serde_json::to_string(v).map_err(|e| GrammarError::Invalid {
        field: "tools",
        msg: e.to_string(),
    })
}
