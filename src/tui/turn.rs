//! One turn of the transcript (the user's message and the reply to it) and its rendering:
//! the unit the view stacks, as codex's history cells are.
//!
//! Invariants:
//! - [`TurnView::lines`] is a pure function of the turn's fields (its tool cards
//!   included), the width, whether reasoning is shown, the approval waiting for an answer
//!   and the theme; it keeps its last result and renders again only when one of those
//!   changed (the theme is fixed for an app's life). Markdown, syntax
//!   highlighting and wrapping so run once per change of the turn, not once per frame, and
//!   drawing a frame clones only the lines on screen.
//! - A turn's text only grows while it streams, so the texts are compared by length.

use std::cell::{Ref, RefCell};

use ratatui::text::{Line, Span};

use super::markdown;
use super::theme::Theme;
use super::tool_card::{CardState, ToolCard};
use crate::chat::session_store::{Turn, TurnStats};
use crate::protocol::ApprovalRequest;

/// Reasoning lines shown while thinking streams (the tail; the rest is a key away).
const REASONING_PANE_LINES: usize = 10;

#[derive(Clone, Debug, PartialEq)]
pub enum TurnState {
    Streaming,
    Done,
    Interrupted,
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct TurnView {
    pub user: String,
    pub reasoning: String,
    pub answer: String,
    pub state: TurnState,
    pub stats: Option<TurnStats>,
    /// Folded to one line once the answer starts; a key unfolds it.
    pub reasoning_folded: bool,
    pub reasoning_tokens: usize,
    pub thinking_ms: Option<u64>,
    pub thinking_forced: bool,
    /// The turn's tool calls, in order (shown between the reasoning and the answer).
    pub tools: Vec<ToolCard>,
    /// Model steps that have ended (the agent loop runs one per round of calls).
    pub steps: usize,
    /// The last rendering and what it was rendered from.
    rendered: RefCell<Rendered>,
}

#[derive(Clone, Debug, Default)]
struct Rendered {
    key: Option<RenderKey>,
    lines: Vec<Line<'static>>,
}

/// Everything [`TurnView::lines`] depends on besides the theme: the view's width and
/// reasoning switch, the approval preview shown under one of the turn's cards, and every
/// field of the turn that is drawn (texts by length: they only grow).
#[derive(Clone, Debug, PartialEq)]
struct RenderKey {
    width: u16,
    show_reasoning: bool,
    /// The waiting call's id and preview, when the call is one of this turn's.
    approval: Option<(String, Option<String>)>,
    /// Per card: state, output length, truncated, folded, duration.
    tools: Vec<(CardState, usize, bool, bool, Option<u64>)>,
    user: usize,
    reasoning: usize,
    answer: usize,
    state: TurnState,
    stats: bool,
    reasoning_folded: bool,
    reasoning_tokens: usize,
    thinking_ms: Option<u64>,
    thinking_forced: bool,
}

impl TurnView {
    /// A turn that starts streaming the reply to `user`.
    pub fn new(user: String) -> Self {
        TurnView {
            user,
            reasoning: String::new(),
            answer: String::new(),
            state: TurnState::Streaming,
            stats: None,
            reasoning_folded: false,
            reasoning_tokens: 0,
            thinking_ms: None,
            thinking_forced: false,
            tools: Vec::new(),
            steps: 0,
            rendered: RefCell::default(),
        }
    }

    /// A finished turn from a saved session, its reasoning and tool outputs folded.
    pub fn restored(t: &Turn) -> Self {
        TurnView {
            reasoning: t.reasoning.clone(),
            answer: t.answer.clone(),
            state: TurnState::Done,
            reasoning_folded: true,
            reasoning_tokens: t.stats.as_ref().map_or(0, |s| s.reasoning_tokens),
            stats: t.stats.clone(),
            steps: t.tools.iter().map(|r| r.step).max().unwrap_or(0),
            tools: t.tools.iter().map(ToolCard::from_record).collect(),
            ..TurnView::new(t.user.clone())
        }
    }

    /// The turn's lines at `width` columns; `pending` is the call waiting for the user's
    /// answer, whose preview shows under its card (see the module doc: rendered again only
    /// when something they depend on changed).
    pub fn lines(
        &self,
        width: u16,
        show_reasoning: bool,
        pending: Option<&ApprovalRequest>,
        theme: &Theme,
    ) -> Ref<'_, [Line<'static>]> {
        let pending = pending.filter(|r| {
            self.tools
                .iter()
                .any(|c| c.state == CardState::WaitingApproval && c.call.id == r.call.id)
        });
        let key = RenderKey {
            width,
            show_reasoning,
            approval: pending.map(|r| (r.call.id.clone(), r.preview.clone())),
            tools: self
                .tools
                .iter()
                .map(|c| {
                    (
                        c.state,
                        c.output.len(),
                        c.truncated,
                        c.folded,
                        c.duration_ms,
                    )
                })
                .collect(),
            user: self.user.len(),
            reasoning: self.reasoning.len(),
            answer: self.answer.len(),
            state: self.state.clone(),
            stats: self.stats.is_some(),
            reasoning_folded: self.reasoning_folded,
            reasoning_tokens: self.reasoning_tokens,
            thinking_ms: self.thinking_ms,
            thinking_forced: self.thinking_forced,
        };
        if self.rendered.borrow().key.as_ref() != Some(&key) {
            let lines = self.render(width, show_reasoning, pending, theme);
            *self.rendered.borrow_mut() = Rendered {
                key: Some(key),
                lines,
            };
        }
        Ref::map(self.rendered.borrow(), |r| r.lines.as_slice())
    }

    fn thought_summary(&self) -> String {
        let secs = self
            .thinking_ms
            .map(|ms| format!(", {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let forced = if self.thinking_forced {
            ", closed by budget"
        } else {
            ""
        };
        format!(
            "▸ thought for {} tokens{secs}{forced}  (Ctrl+O unfolds)",
            self.reasoning_tokens
        )
    }

    fn render(
        &self,
        width: u16,
        show_reasoning: bool,
        pending: Option<&ApprovalRequest>,
        theme: &Theme,
    ) -> Vec<Line<'static>> {
        let t = self;
        let mut out = Vec::new();
        out.push(Line::from(Span::styled("You", theme.user_label)));
        for l in markdown::plain_lines(&t.user, width.saturating_sub(2).max(1), theme.user_text) {
            let mut spans = vec![Span::raw("  ")];
            spans.extend(l.spans);
            out.push(Line::from(spans));
        }
        out.push(Line::from(""));
        let streaming = t.state == TurnState::Streaming;
        if show_reasoning && !t.reasoning.trim().is_empty() {
            if t.reasoning_folded {
                out.extend(markdown::plain_lines(
                    &t.thought_summary(),
                    width,
                    theme.reasoning,
                ));
            } else {
                let header = if streaming && t.answer.is_empty() {
                    format!("▾ thinking… {} tokens", t.reasoning_tokens)
                } else {
                    format!("▾ reasoning, {} tokens  (Ctrl+O folds)", t.reasoning_tokens)
                };
                out.push(Line::from(Span::styled(header, theme.reasoning)));
                let lines = markdown::plain_lines(
                    t.reasoning.trim(),
                    width.saturating_sub(2).max(1),
                    theme.reasoning,
                );
                let skip = if streaming && t.answer.is_empty() {
                    lines.len().saturating_sub(REASONING_PANE_LINES)
                } else {
                    0
                };
                if skip > 0 {
                    out.push(Line::from(Span::styled(
                        format!("│ … {skip} earlier lines"),
                        theme.reasoning,
                    )));
                }
                for l in lines.into_iter().skip(skip) {
                    let mut spans = vec![Span::styled("│ ", theme.reasoning)];
                    spans.extend(l.spans);
                    out.push(Line::from(spans));
                }
            }
            out.push(Line::from(""));
        }
        for card in &t.tools {
            out.extend(card.lines(theme, width));
            if card.state == CardState::WaitingApproval {
                if let Some(preview) = pending
                    .filter(|r| r.call.id == card.call.id)
                    .and_then(|r| r.preview.as_ref())
                {
                    for l in markdown::plain_lines(
                        preview,
                        width.saturating_sub(2).max(1),
                        theme.warning,
                    ) {
                        let mut spans = vec![Span::styled("┆ ", theme.warning)];
                        spans.extend(l.spans);
                        out.push(Line::from(spans));
                    }
                    out.push(Line::from(""));
                }
            }
        }
        if !t.answer.is_empty() {
            out.extend(markdown::render(&t.answer, width, theme));
        } else if streaming && t.reasoning.is_empty() {
            out.push(Line::from(Span::styled("…", theme.reasoning)));
        }
        match &t.state {
            TurnState::Interrupted => {
                out.push(Line::from(Span::styled("[stopped]", theme.warning)))
            }
            TurnState::Failed(e) => {
                out.push(Line::from(Span::styled(format!("error: {e}"), theme.error)))
            }
            _ => {}
        }
        if let Some(s) = &t.stats {
            let line = format!(
                "TTFT {:.0} ms · {:.1} tok/s · {} tokens ({} reasoning) · reused {} of {} prompt tokens",
                s.ttft_ms, s.decode_tokens_per_s, s.completion_tokens, s.reasoning_tokens, s.reused_tokens, s.prompt_tokens
            );
            out.extend(markdown::plain_lines(&line, width, theme.reasoning));
        }
        out.push(Line::from(""));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line<'_>]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    /// The kept rendering is what a fresh turn renders, after every kind of change.
    #[test]
    fn kept_lines_follow_every_change_of_the_turn() {
        let theme = Theme::dark();
        let mut t = TurnView::new("Why is the sky blue?".into());
        let fresh = |t: &TurnView, w: u16, show: bool| {
            let mut copy = t.clone();
            copy.rendered = RefCell::default();
            let lines = text(&copy.lines(w, show, None, &theme));
            lines
        };
        let check = |t: &TurnView, w: u16, show: bool| {
            assert_eq!(text(&t.lines(w, show, None, &theme)), fresh(t, w, show));
        };
        check(&t, 40, true);
        t.reasoning.push_str("Rayleigh scattering.");
        t.reasoning_tokens = 5;
        check(&t, 40, true);
        check(&t, 40, false);
        t.answer.push_str("Blue light scatters **more**.");
        t.reasoning_folded = true;
        t.thinking_ms = Some(1200);
        check(&t, 40, true);
        check(&t, 20, true);
        t.state = TurnState::Interrupted;
        check(&t, 20, true);
        t.thinking_forced = true;
        check(&t, 20, true);
        let call =
            crate::protocol::ToolCall::new("c1", "list_dir", serde_json::json!({"path": "."}));
        t.tools.push(ToolCard::new(call, 1));
        check(&t, 40, true);
        t.tools[0].start();
        check(&t, 40, true);
        t.tools[0].finish(
            &crate::protocol::ToolResult {
                id: "c1".into(),
                name: "list_dir".into(),
                ok: true,
                output: (1..=9).map(|i| format!("f{i}\n")).collect(),
                truncated: false,
            },
            false,
        );
        check(&t, 40, true);
        t.tools[0].folded = false;
        check(&t, 40, true);
    }
}
