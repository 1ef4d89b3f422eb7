//! Nemotron Nano v2 (9B, 12B) and Llama-Nemotron: calls as one JSON list in a
//! `<TOOLCALL>` block, results as one JSON-ish list in a `<TOOL_RESPONSE>` block of the
//! next user turn, matched to the calls by order alone.
//!
//! The exact text (as the Nano v2 chat template renders an assistant's `tool_calls`):
//!
//! ```text
//! <TOOLCALL>[{"name": "NAME", "arguments": ARGS}, {"name": "NAME", "arguments": ARGS}]</TOOLCALL>
//! ```
//!
//! - No whitespace around the list; calls separated by `", "`; `ARGS` is the arguments
//!   object as `json.dumps` writes it (`", "` and `": "` separators, non-ASCII kept).
//! - Results: `<TOOL_RESPONSE>[OUT1, OUT2]</TOOL_RESPONSE>`, each output as it is
//!   (not quoted), joined by `", "`.
//!
//! Read (see `json_body` for the details): whitespace is allowed around the list and
//! inside it; a single object instead of a list is read as one call.

use crate::protocol::ToolCall;

use super::python_json;

/// Opens a call block.
pub const OPEN: &str = "<TOOLCALL>";
/// Closes a call block.
pub const CLOSE: &str = "</TOOLCALL>";
/// Opens the results block (in a user turn).
pub const RESULT_OPEN: &str = "<TOOL_RESPONSE>";
/// Closes the results block.
pub const RESULT_CLOSE: &str = "</TOOL_RESPONSE>";
/// Between two calls of the list, and between two results.
pub const SEPARATOR: &str = ", ";

/// `<TOOLCALL>[…]</TOOLCALL>` with these calls.
pub(super) fn render(calls: &[ToolCall]) -> String {
    let items: Vec<String> = calls
        .iter()
        .map(|call| {
            let name = python_json(&call.function.name.clone().into());
            let args = match call.arguments() {
                args @ serde_json::Value::Object(_) => python_json(args),
                _ => "{}".to_string(),
            };
            format!("{{\"name\": {name}, \"arguments\": {args}}}")
        })
        .collect();
    format!("{OPEN}[{}]{CLOSE}", items.join(SEPARATOR))
}

/// `<TOOL_RESPONSE>[…]</TOOL_RESPONSE>` with these outputs, in call order.
pub(super) fn render_results(outputs: &[&str]) -> String {
    format!("{RESULT_OPEN}[{}]{RESULT_CLOSE}", outputs.join(SEPARATOR))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_split_invariant, run};
    use super::super::{render_results, ToolParser, ToolSegment};
    use crate::chat::reasoning_parser::ReasoningParser;
    use crate::chat::stream_parser::{run as stream_run, Piece, StreamParser};
    use crate::protocol::{ToolCall, ToolFormat};
    use serde_json::json;

    fn parser() -> ToolParser {
        ToolParser::new(ToolFormat::NanoV2, &[])
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

    fn warning_of(seg: &ToolSegment) -> Option<(&str, &str)> {
        match seg {
            ToolSegment::Malformed { text, warning } => Some((text, warning)),
            _ => None,
        }
    }

    #[test]
    fn a_complete_call_becomes_text_and_a_call() {
        let block =
            r#"<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</TOOLCALL>"#;
        let segs = run(&mut parser(), &[&format!("Let me look.\n\n{block}")]);
        assert_eq!(
            segs,
            vec![
                text("Let me look.\n\n"),
                call("call_0", "get_weather", json!({"city": "Paris"}), block),
            ]
        );
    }

    #[test]
    fn a_list_and_a_second_block_split_at_every_byte_boundary() {
        let list =
            "<TOOLCALL>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}, \
                    {\"name\": \"note\", \"arguments\": {\"text\": \"😀 ok\"}}]</TOOLCALL>";
        let second = "<TOOLCALL> [ {\"name\": \"wait\"} ] </TOOLCALL>";
        let input = format!("Two things: é\n{list}\nthen 😀 {second} done.");
        let whole = run(&mut parser(), &[&input]);
        let cut = list.find(", {").unwrap();
        assert_eq!(
            whole,
            vec![
                text("Two things: é\n"),
                call(
                    "call_0",
                    "get_weather",
                    json!({"city": "Zürich"}),
                    &list[..cut]
                ),
                call("call_1", "note", json!({"text": "😀 ok"}), &list[cut..]),
                text("\nthen 😀 "),
                call("call_2", "wait", json!({}), second),
                text(" done."),
            ]
        );
        assert_split_invariant(&parser, &input);
    }

    #[test]
    fn malformed_blocks_are_shown_with_a_warning() {
        let cases = [
            // Bad JSON (a brace closes the list).
            r#"<TOOLCALL>[{"name": "f", "arguments": {"a": 1}}}</TOOLCALL>"#,
            // Unbalanced: the close tag comes first.
            r#"<TOOLCALL>[{"name": "f", "arguments": {"a": 1}</TOOLCALL>"#,
            // Unknown structure.
            r#"<TOOLCALL>[{"tool": "f", "args": {}}]</TOOLCALL>"#,
            r#"<TOOLCALL>[]</TOOLCALL>"#,
            // Not JSON at all.
            r#"<TOOLCALL>call f(1)</TOOLCALL>"#,
            // Text after the list.
            r#"<TOOLCALL>[{"name": "f"}] and more</TOOLCALL>"#,
        ];
        for block in cases {
            let input = format!("a {block} b");
            let segs = run(&mut parser(), &[&input]);
            assert_eq!(segs.len(), 3, "{block}: {segs:?}");
            assert_eq!((&segs[0], &segs[2]), (&text("a "), &text(" b")), "{block}");
            let (shown, warning) = warning_of(&segs[1]).unwrap();
            assert_eq!(shown, block);
            assert!(
                warning.starts_with("nano-v2 tool call not understood ("),
                "{warning}"
            );
            assert!(!warning.contains('\n'));
            assert_split_invariant(&parser, &input);
        }
    }

    #[test]
    fn an_unterminated_block_at_the_end_is_malformed() {
        for input in [
            r#"x <TOOLCALL>[{"name": "f", "arguments": {"a": "b"#,
            r#"x <TOOLCALL>[{"name": "f"}]"#,
            "x <TOOLCALL>",
        ] {
            let segs = run(&mut parser(), &[input]);
            assert_eq!(segs[0], text("x "));
            let (shown, warning) = warning_of(&segs[1]).unwrap();
            assert_eq!(shown, &input[2..]);
            assert!(warning.contains("cut off"), "{warning}");
            assert_split_invariant(&parser, input);
        }
    }

    #[test]
    fn markers_inside_json_strings_stay_text() {
        let block = r#"<TOOLCALL>[{"name": "echo", "arguments": {"text": "</TOOLCALL> <TOOLCALL>[ \"]</TOOLCALL>"}}]</TOOLCALL>"#;
        let segs = run(&mut parser(), &[block]);
        assert_eq!(
            segs,
            vec![call(
                "call_0",
                "echo",
                json!({"text": "</TOOLCALL> <TOOLCALL>[ \"]</TOOLCALL>"}),
                block
            )]
        );
        assert_split_invariant(&parser, block);
    }

    #[test]
    fn a_call_that_starts_inside_reasoning_ends_it_and_is_kept() {
        let input = "I should check.\n<TOOLCALL>[{\"name\": \"f\", \"arguments\": {}}]</TOOLCALL>";
        let mut stream = StreamParser::new(
            ReasoningParser::new("<think>", "</think>", true),
            Some(parser()),
        );
        let pieces = stream_run(&mut stream, &[input]);
        assert_eq!(
            pieces,
            vec![
                Piece::Reasoning("I should check.\n".into()),
                Piece::Call {
                    call: ToolCall::new("call_0", "f", json!({})),
                    raw: input["I should check.\n".len()..].into(),
                },
            ]
        );
    }

    #[test]
    fn results_go_back_as_one_list_in_call_order() {
        assert_eq!(
            render_results(ToolFormat::NanoV2, &[r#"{"temp_c": 21}"#, "sunny"]),
            r#"<TOOL_RESPONSE>[{"temp_c": 21}, sunny]</TOOL_RESPONSE>"#
        );
    }

    #[test]
    fn render_writes_the_template_form() {
        let calls = [
            ToolCall::new("a", "get_weather", json!({"city": "Paris", "days": [1, 2]})),
            ToolCall::new("b", "now", json!({})),
        ];
        assert_eq!(
            super::super::render_calls(ToolFormat::NanoV2, &calls),
            r#"<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}, {"name": "now", "arguments": {}}]</TOOLCALL>"#
        );
    }
}
