//! The common form (Hermes, Qwen 2.5, SmolLM2 and most GGUF models, and nemo's own tool
//! preamble for templates that show no format): one JSON object per `<tool_call>` block,
//! results in `<tool_response>` blocks.
//!
//! The exact text (as the Hermes / Qwen 2.5 templates render an assistant's
//! `tool_calls`):
//!
//! ```text
//! <tool_call>
//! {"name": "NAME", "arguments": ARGS}
//! </tool_call>
//! <tool_call>
//! {"name": "NAME", "arguments": ARGS}
//! </tool_call>
//! ```
//!
//! - A newline after the open tag and before the close tag; blocks joined by one newline.
//!   `ARGS` is the arguments object as `json.dumps` writes it (`", "` and `": "`
//!   separators, non-ASCII kept).
//! - Results: `<tool_response>\nOUTPUT\n</tool_response>` per result, joined by a newline.
//!
//! Read (see `json_body`): any whitespace around the object; a list of objects is read as
//! several calls; a Qwen3-Coder XML body in the same tags is read too (`qwen3_coder`).

use crate::protocol::ToolCall;

use super::python_json;

/// Opens a call block (also qwen3-coder's).
pub const OPEN: &str = "<tool_call>";
/// Closes a call block (also qwen3-coder's).
pub const CLOSE: &str = "</tool_call>";
/// Opens one result.
pub const RESULT_OPEN: &str = "<tool_response>";
/// Closes one result.
pub const RESULT_CLOSE: &str = "</tool_response>";
/// Between two blocks, and between two results.
pub const SEPARATOR: &str = "\n";

/// One `<tool_call>` block per call, joined by [`SEPARATOR`].
pub(super) fn render(calls: &[ToolCall]) -> String {
    let blocks: Vec<String> = calls
        .iter()
        .map(|call| {
            let name = python_json(&call.function.name.clone().into());
            let args = match call.arguments() {
                args @ serde_json::Value::Object(_) => python_json(args),
                _ => "{}".to_string(),
            };
            format!("{OPEN}\n{{\"name\": {name}, \"arguments\": {args}}}\n{CLOSE}")
        })
        .collect();
    blocks.join(SEPARATOR)
}

/// One `<tool_response>` block per output, joined by [`SEPARATOR`] (qwen3-coder too).
pub(super) fn render_results(outputs: &[&str]) -> String {
    let blocks: Vec<String> = outputs
        .iter()
        .map(|out| format!("{RESULT_OPEN}\n{out}\n{RESULT_CLOSE}"))
        .collect();
    blocks.join(SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_split_invariant, run};
    use super::super::{render_calls, render_results, ToolParser, ToolSegment};
    use crate::chat::reasoning_parser::ReasoningParser;
    use crate::chat::stream_parser::{run as stream_run, Piece, StreamParser};
    use crate::protocol::{ToolCall, ToolFormat};
    use serde_json::json;

    fn parser() -> ToolParser {
        ToolParser::new(ToolFormat::Hermes, &[])
    }

    fn text(s: &str) -> ToolSegment {
        ToolSegment::Text(s.into())
    }

    fn call(id: &str, name: &str, args: serde_json::Value, raw: &str) -> ToolSegment {
        ToolSegment::Call {
            call: ToolCall::new(id, name, args),
            raw: raw.into(),
        }
    }

    #[test]
    fn a_complete_call_becomes_text_and_a_call() {
        let block = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let segs = run(&mut parser(), &[&format!("Checking.\n{block}")]);
        assert_eq!(
            segs,
            vec![
                text("Checking.\n"),
                call("call_0", "get_weather", json!({"city": "Paris"}), block),
            ]
        );
    }

    #[test]
    fn text_two_calls_and_text_split_at_every_byte_boundary() {
        let first = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>";
        let second =
            "<tool_call>{\"name\":\"note\",\"arguments\":{\"text\":\"😀 <b>\"}}</tool_call>";
        let input = format!("Both é:\n{first}\n{second}\nDone 😀.");
        let whole = run(&mut parser(), &[&input]);
        assert_eq!(
            whole,
            vec![
                text("Both é:\n"),
                call("call_0", "get_weather", json!({"city": "Zürich"}), first),
                text("\n"),
                call("call_1", "note", json!({"text": "😀 <b>"}), second),
                text("\nDone 😀."),
            ]
        );
        assert_split_invariant(&parser, &input);
    }

    /// SmolLM2's prompt asks for a list inside the tags: several calls in one block.
    #[test]
    fn a_list_in_one_block_gives_one_call_per_element() {
        let block = "<tool_call>[{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\"}]</tool_call>";
        let cut = block.find(", {").unwrap();
        assert_eq!(
            run(&mut parser(), &[block]),
            vec![
                call("call_0", "a", json!({"x": 1}), &block[..cut]),
                call("call_1", "b", json!({}), &block[cut..]),
            ]
        );
        assert_split_invariant(&parser, block);
    }

    #[test]
    fn malformed_blocks_are_shown_with_a_warning() {
        let cases = [
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1,}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}\n</tool_call>",
            "<tool_call>\n{\"function_name\": \"f\"}\n</tool_call>",
            "<tool_call>\nf(a=1)\n</tool_call>",
            "<tool_call>{\"name\": \"f\"} {\"name\": \"g\"}</tool_call>",
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
                warning.starts_with("hermes tool call not understood ("),
                "{warning}"
            );
            assert_split_invariant(&parser, &input);
        }
        // Unterminated at the end of the answer.
        let input = "a <tool_call>\n{\"name\": \"f\", \"arguments\": {\"path\": \"/tm";
        let segs = run(&mut parser(), &[input]);
        assert!(matches!(&segs[1],
            ToolSegment::Malformed { text, warning } if text == &input[2..] && warning.contains("cut off")));
        assert_split_invariant(&parser, input);
    }

    #[test]
    fn markers_inside_json_strings_stay_text() {
        let block = "<tool_call>{\"name\": \"write\", \"arguments\": {\"content\": \"</tool_call>\\n<tool_call>{\\\"name\\\": 1}\"}}</tool_call>";
        let segs = run(&mut parser(), &[block]);
        assert_eq!(
            segs,
            vec![call(
                "call_0",
                "write",
                json!({"content": "</tool_call>\n<tool_call>{\"name\": 1}"}),
                block
            )]
        );
        assert_split_invariant(&parser, block);
    }

    #[test]
    fn a_call_that_starts_inside_reasoning_ends_it_and_is_kept() {
        let input = "Need the weather.<tool_call>\n{\"name\": \"w\", \"arguments\": {\"c\": \"é\"}}\n</tool_call>";
        let cut = "Need the weather.".len();
        for i in (0..=input.len()).filter(|&i| input.is_char_boundary(i)) {
            let mut stream = StreamParser::new(
                ReasoningParser::new("<think>", "</think>", false),
                Some(parser()),
            );
            let pieces = stream_run(&mut stream, &["<think>", &input[..i], &input[i..]]);
            assert_eq!(
                pieces,
                vec![
                    Piece::Reasoning(input[..cut].into()),
                    Piece::Call {
                        call: ToolCall::new("call_0", "w", json!({"c": "é"})),
                        raw: input[cut..].into(),
                    },
                ],
                "split at {i}"
            );
            assert!(!stream.in_reasoning());
        }
    }

    #[test]
    fn render_writes_the_template_form() {
        let calls = [
            ToolCall::new("a", "get_weather", json!({"city": "Paris"})),
            ToolCall::new("b", "now", json!({})),
        ];
        assert_eq!(
            render_calls(ToolFormat::Hermes, &calls),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"
        );
        assert_eq!(
            render_results(ToolFormat::Hermes, &["21 C", "12:00"]),
            "<tool_response>\n21 C\n</tool_response>\n<tool_response>\n12:00\n</tool_response>"
        );
    }
}
