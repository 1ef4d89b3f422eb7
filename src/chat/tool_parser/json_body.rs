//! The JSON body of a call block (nano-v2's list, hermes' object): found in the stream by
//! a scanner that follows strings and nesting only, then parsed whole by serde_json.
//!
//! Invariants:
//! - Each byte is scanned once; a `push` costs time in proportion to its own length.
//! - The block's close tag ends the body only outside a JSON string: inside one it is
//!   text. Outside strings it ends the block at any depth (a body the model left
//!   unbalanced is then malformed rather than swallowing the rest of the answer).
//! - After the value, only whitespace may come before the close tag.
//! - A body is read as calls if it is one `{"name", "arguments"}` object or a non-empty
//!   list of them (both formats accept both). `arguments` may also be spelled
//!   `parameters`, may be a string holding a JSON object (some models write it so), and
//!   when absent or null means no arguments. The OpenAI wrapping
//!   `{"type": "function", "function": {…}}` is read too. Anything else is malformed.

use serde_json::{Map, Value};

use super::{literal, skip_ws, Look, Step};

pub(super) struct JsonBody {
    /// Where the value starts (its `{` or `[`).
    start: usize,
    /// The next byte to scan.
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Positions of the top-level list's commas: where one call's raw text ends.
    commas: Vec<usize>,
    /// One past the value's last byte, once it closed.
    end: Option<usize>,
}

impl JsonBody {
    /// `start` is the position of the value's first byte, `{` or `[`.
    pub(super) fn new(start: usize) -> Self {
        JsonBody {
            start,
            pos: start,
            depth: 0,
            in_string: false,
            escaped: false,
            commas: Vec::new(),
            end: None,
        }
    }

    pub(super) fn step(&mut self, buf: &str, close: &str) -> Step {
        let bytes = buf.as_bytes();
        while self.end.is_none() && self.pos < bytes.len() {
            let b = bytes[self.pos];
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            self.end = Some(self.pos + 1);
                        }
                    }
                    b',' if self.depth == 1 && bytes[self.start] == b'[' => {
                        self.commas.push(self.pos)
                    }
                    b'<' => match literal(buf, self.pos, close) {
                        Look::Yes(end) => {
                            return Step::Done {
                                end,
                                calls: Err(format!("the JSON is not closed before {close}")),
                                splits: Vec::new(),
                            }
                        }
                        Look::Need => return Step::More,
                        Look::No => {}
                    },
                    _ => {}
                }
            }
            self.pos += 1;
        }
        let Some(value_end) = self.end else {
            return Step::More;
        };
        let at = skip_ws(buf, value_end.max(self.pos));
        self.pos = at;
        match literal(buf, at, close) {
            Look::Need => Step::More,
            Look::No => Step::Broken {
                at,
                reason: format!("text after the JSON, before {close}"),
            },
            Look::Yes(end) => {
                let calls = serde_json::from_str::<Value>(&buf[self.start..value_end])
                    .map_err(|e| format!("not valid JSON: {e}"))
                    .and_then(calls_from_value);
                Step::Done {
                    end,
                    calls,
                    splits: std::mem::take(&mut self.commas),
                }
            }
        }
    }
}

/// The calls in a parsed body (see the module invariants for what is read).
fn calls_from_value(value: Value) -> Result<Vec<(String, Value)>, String> {
    match value {
        Value::Array(items) if items.is_empty() => Err("the list holds no call".into()),
        Value::Array(items) => items.into_iter().map(call_from_value).collect(),
        other => Ok(vec![call_from_value(other)?]),
    }
}

fn call_from_value(value: Value) -> Result<(String, Value), String> {
    let Value::Object(mut obj) = value else {
        return Err("a call must be a JSON object".into());
    };
    if !obj.contains_key("name") {
        if let Some(Value::Object(function)) = obj.remove("function") {
            obj = function;
        }
    }
    let name = match obj.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.trim().to_string(),
        _ => return Err("a call needs a non-empty \"name\" string".into()),
    };
    let args = obj.remove("arguments").or_else(|| obj.remove("parameters"));
    let arguments = match args {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(map)) => Value::Object(map),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => return Err(format!("\"arguments\" of {name:?} is not a JSON object")),
        },
        Some(_) => return Err(format!("\"arguments\" of {name:?} is not a JSON object")),
    };
    Ok((name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn calls(text: &str) -> Result<Vec<(String, Value)>, String> {
        calls_from_value(serde_json::from_str(text).unwrap())
    }

    #[test]
    fn objects_lists_and_the_usual_spellings_are_read() {
        let want = Ok(vec![("f".to_string(), json!({"a": 1}))]);
        assert_eq!(calls(r#"{"name": "f", "arguments": {"a": 1}}"#), want);
        assert_eq!(calls(r#"[{"name": "f", "parameters": {"a": 1}}]"#), want);
        assert_eq!(calls(r#"{"name": "f", "arguments": "{\"a\": 1}"}"#), want);
        assert_eq!(
            calls(r#"{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}"#),
            want
        );
        assert_eq!(calls(r#"{"name": "f"}"#), Ok(vec![("f".into(), json!({}))]));
    }

    #[test]
    fn other_shapes_are_refused_with_a_reason() {
        for bad in [
            r#"[]"#,
            r#"{"tool": "f"}"#,
            r#"{"name": ""}"#,
            r#"{"name": 3}"#,
            r#"{"name": "f", "arguments": [1]}"#,
            r#"{"name": "f", "arguments": "not json"}"#,
            r#"[{"name": "f"}, 7]"#,
            r#""f""#,
        ] {
            let err = calls(bad).unwrap_err();
            assert!(!err.is_empty() && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn the_scanner_finds_the_end_of_the_value_and_its_top_level_commas() {
        let buf = r#"<X>[{"a": "}],<\"/X>"}, {"b": [1, 2]}] </X>tail"#;
        let mut body = JsonBody::new(3);
        match body.step(buf, "</X>") {
            Step::Done { end, splits, .. } => {
                assert_eq!(&buf[end..], "tail");
                assert_eq!(splits.len(), 1);
                assert_eq!(&buf[splits[0]..splits[0] + 2], ", ");
            }
            _ => panic!("not done"),
        }
    }
}
