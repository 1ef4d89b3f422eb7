//! The model's streamed output split three ways, for the generation loop: reasoning,
//! visible answer, and tool calls (a [`ReasoningParser`] in front of a [`ToolParser`]).
//!
//! Invariants:
//! - The reasoning parser's invariants hold for the reasoning; the tool parser's for the
//!   answer: concatenating every `Content`, the `raw` of every `Call` and the `text` of
//!   every `Malformed` gives exactly the answer the reasoning parser alone would give.
//! - With a tool parser, its open tag inside reasoning ends the reasoning there and starts
//!   the answer with the call, which is then read whole (models such as Nemotron 3 open a
//!   call without `</think>` first; other runtimes lose those calls in the reasoning).
//!   Without one, tool tags are plain text everywhere.
//! - Pieces are never empty; one call never returns two adjacent `Reasoning` or two
//!   adjacent `Content` pieces; reasoning never follows content.

use super::reasoning_parser::{ReasoningParser, Segment};
use super::tool_parser::{ToolParser, ToolSegment};
use crate::protocol::ToolCall;

/// A piece of parsed output.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Reasoning(String),
    /// Visible answer text.
    Content(String),
    /// A whole tool call; `raw` is the text it was read from.
    Call {
        call: ToolCall,
        raw: String,
    },
    /// Text that opened a call but is not one: show it as content, and the warning.
    Malformed {
        text: String,
        warning: String,
    },
}

/// Reasoning, then answer text and tool calls.
pub struct StreamParser {
    reasoning: ReasoningParser,
    tools: Option<ToolParser>,
}

impl StreamParser {
    /// `tools`: None when no tools are offered (nothing is read as a call).
    pub fn new(reasoning: ReasoningParser, tools: Option<ToolParser>) -> Self {
        let reasoning = match &tools {
            Some(t) => reasoning.with_interrupts([t.open_tag()]),
            None => reasoning,
        };
        StreamParser { reasoning, tools }
    }

    /// Whether text now being generated belongs to the reasoning.
    pub fn in_reasoning(&self) -> bool {
        self.reasoning.in_reasoning()
    }

    /// Whether a tool call is open (its text is held back until it is whole).
    pub fn in_call(&self) -> bool {
        self.tools.as_ref().is_some_and(ToolParser::in_call)
    }

    /// Feeds a chunk of output; returns what can be decided now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        for seg in self.reasoning.push(text) {
            self.route(seg, &mut out);
        }
        out
    }

    /// Flushes at the end of generation (see the two parsers' `finish`).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        for seg in self.reasoning.finish() {
            self.route(seg, &mut out);
        }
        if let Some(tools) = &mut self.tools {
            for seg in tools.finish() {
                emit(&mut out, seg.into());
            }
        }
        out
    }

    fn route(&mut self, seg: Segment, out: &mut Vec<Piece>) {
        match (seg, &mut self.tools) {
            (Segment::Reasoning(r), _) => emit(out, Piece::Reasoning(r)),
            (Segment::Content(c), None) => emit(out, Piece::Content(c)),
            (Segment::Content(c), Some(tools)) => {
                for seg in tools.push(&c) {
                    emit(out, seg.into());
                }
            }
        }
    }
}

impl From<ToolSegment> for Piece {
    fn from(seg: ToolSegment) -> Piece {
        match seg {
            ToolSegment::Text(t) => Piece::Content(t),
            ToolSegment::Call { call, raw } => Piece::Call { call, raw },
            ToolSegment::Malformed { text, warning } => Piece::Malformed { text, warning },
        }
    }
}

/// Appends `piece` unless it is empty text, merging text with text of the same kind.
fn emit(out: &mut Vec<Piece>, piece: Piece) {
    match (out.last_mut(), piece) {
        (_, Piece::Reasoning(s) | Piece::Content(s)) if s.is_empty() => {}
        (Some(Piece::Reasoning(prev)), Piece::Reasoning(s)) => prev.push_str(&s),
        (Some(Piece::Content(prev)), Piece::Content(s)) => prev.push_str(&s),
        (_, piece) => out.push(piece),
    }
}

/// Test helper: all pieces of `chunks` (and `finish`), adjacent text of one kind merged
/// across pushes.
#[cfg(test)]
pub(crate) fn run(p: &mut StreamParser, chunks: &[&str]) -> Vec<Piece> {
    let mut out = Vec::new();
    for chunk in chunks {
        for piece in p.push(chunk) {
            emit(&mut out, piece);
        }
    }
    for piece in p.finish() {
        emit(&mut out, piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ToolFormat;
    use serde_json::json;

    fn stream(starts_in_reasoning: bool, format: Option<ToolFormat>) -> StreamParser {
        StreamParser::new(
            ReasoningParser::new("<think>", "</think>", starts_in_reasoning),
            format.map(|f| ToolParser::new(f, &[])),
        )
    }

    #[test]
    fn reasoning_answer_and_calls_at_every_split() {
        let call =
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"é</think>\"}}\n</tool_call>";
        let input = format!("<think>\nplan 😀\n</think>\n\nOK, calling.\n{call}\nbye");
        let want = vec![
            Piece::Reasoning("\nplan 😀\n".into()),
            Piece::Content("OK, calling.\n".into()),
            Piece::Call {
                call: ToolCall::new("call_0", "f", json!({"q": "é</think>"})),
                raw: call.into(),
            },
            Piece::Content("\nbye".into()),
        ];
        let cuts: Vec<usize> = (0..=input.len())
            .filter(|&i| input.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            for &j in cuts.iter().filter(|&&j| j >= i) {
                let chunks = [&input[..i], &input[i..j], &input[j..]];
                let got = run(&mut stream(false, Some(ToolFormat::Hermes)), &chunks);
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn each_push_returns_no_empty_or_repeated_kinds() {
        let mut p = stream(true, Some(ToolFormat::NanoV2));
        for chunk in [
            "a",
            "b<TOOL",
            "CALL>[{\"name\": \"x\"}]</TOOLCALL>",
            "c",
            "d",
        ] {
            let pieces = p.push(chunk);
            assert!(pieces.windows(2).all(|w| !matches!(
                (&w[0], &w[1]),
                (Piece::Reasoning(_), Piece::Reasoning(_)) | (Piece::Content(_), Piece::Content(_))
            )));
            assert!(pieces
                .iter()
                .all(|p| !matches!(p, Piece::Reasoning(s) | Piece::Content(s) if s.is_empty())));
        }
    }

    #[test]
    fn without_tools_tool_tags_are_plain_text() {
        let got = run(
            &mut stream(true, None),
            &["why <tool_call>{\"name\": \"f\"}</tool_call></think>x <tool_call>"],
        );
        assert_eq!(
            got,
            vec![
                Piece::Reasoning("why <tool_call>{\"name\": \"f\"}</tool_call>".into()),
                Piece::Content("x <tool_call>".into()),
            ]
        );
    }

    #[test]
    fn a_malformed_call_inside_reasoning_is_shown_not_lost() {
        let mut p = stream(true, Some(ToolFormat::Hermes));
        assert!(p.in_reasoning());
        let mut got = p.push("hmm <tool_call>{\"name\": ");
        assert!(!p.in_reasoning());
        assert!(p.in_call());
        got.extend(p.finish());
        assert!(!p.in_call());
        assert_eq!(got[0], Piece::Reasoning("hmm ".into()));
        assert!(matches!(&got[1],
            Piece::Malformed { text, warning } if text == "<tool_call>{\"name\": " && warning.contains("cut off")));
        assert_eq!(got.len(), 2);
    }
}
