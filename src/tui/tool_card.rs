//! One tool call in the transcript: a card with the tool, its arguments pretty-printed,
//! its state (waiting for approval, running, done, failed, denied) and duration, and its
//! output folded to a few head and tail lines ("… +N lines") until Ctrl+O unfolds it.
//! The lines are a pure function of the card, the theme and the width.

use std::time::Instant;

use ratatui::style::Style;
use ratatui::text::{Line, Span};
use serde::{Deserialize, Serialize};

use super::markdown;
use super::theme::Theme;
use crate::chat::session_store::ToolRecord;
use crate::protocol::{ToolCall, ToolResult};

/// Output lines kept at each end of a folded output.
pub const FOLD_HEAD: usize = 3;
pub const FOLD_TAIL: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardState {
    /// Called; waits for the step to end and its turn to run.
    Queued,
    WaitingApproval,
    Running,
    Done,
    Failed,
    Denied,
}

impl CardState {
    pub fn label(self) -> &'static str {
        match self {
            CardState::Queued => "queued",
            CardState::WaitingApproval => "waiting for approval",
            CardState::Running => "running…",
            CardState::Done => "done",
            CardState::Failed => "failed",
            CardState::Denied => "denied",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ToolCard {
    pub call: ToolCall,
    /// The model step that made the call (1-based).
    pub step: usize,
    pub state: CardState,
    pub output: String,
    pub truncated: bool,
    pub started: Option<Instant>,
    pub duration_ms: Option<u64>,
    pub folded: bool,
}

impl ToolCard {
    pub fn new(call: ToolCall, step: usize) -> ToolCard {
        ToolCard {
            call,
            step,
            state: CardState::Queued,
            output: String::new(),
            truncated: false,
            started: None,
            duration_ms: None,
            folded: true,
        }
    }

    pub fn start(&mut self) {
        self.state = CardState::Running;
        self.started.get_or_insert_with(Instant::now);
    }

    /// The call's result arrived; `denied`: the user said no.
    pub fn finish(&mut self, r: &ToolResult, denied: bool) {
        self.state = if denied {
            CardState::Denied
        } else if r.ok {
            CardState::Done
        } else {
            CardState::Failed
        };
        self.output = r.output.clone();
        self.truncated = r.truncated;
        self.duration_ms = self.started.map(|t| t.elapsed().as_millis() as u64);
    }

    /// The card as saved in the session file.
    pub fn record(&self) -> ToolRecord {
        ToolRecord {
            call: self.call.clone(),
            step: self.step,
            state: self.state.label().trim_end_matches('…').replace(' ', "_"),
            output: self.output.clone(),
            truncated: self.truncated,
            duration_ms: self.duration_ms,
        }
    }

    /// A saved call, as a finished card (folded).
    pub fn from_record(r: &ToolRecord) -> ToolCard {
        let state = match r.state.as_str() {
            "done" => CardState::Done,
            "denied" => CardState::Denied,
            // What was not done when the turn ended did not finish.
            _ => CardState::Failed,
        };
        ToolCard {
            call: r.call.clone(),
            step: r.step,
            state,
            output: r.output.clone(),
            truncated: r.truncated,
            started: None,
            duration_ms: r.duration_ms,
            folded: true,
        }
    }

    /// Whether the card has output lines to fold.
    pub fn foldable(&self) -> bool {
        self.output.lines().count() > FOLD_HEAD + FOLD_TAIL
    }

    pub fn lines(&self, theme: &Theme, width: u16) -> Vec<Line<'static>> {
        let mut out = Vec::new();
        let style = match self.state {
            CardState::Done => theme.accent,
            CardState::Failed | CardState::Denied => theme.error,
            CardState::WaitingApproval => theme.warning,
            _ => theme.reasoning,
        };
        let duration = self
            .duration_ms
            .map(|ms| format!(" · {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        out.push(Line::from(vec![
            Span::styled("⚙ ", style),
            Span::styled(self.call.name().to_string(), theme.user_label),
            Span::styled(format!("  {}{duration}", self.state.label()), style),
        ]));
        let args = serde_json::to_string_pretty(self.call.arguments())
            .unwrap_or_else(|_| self.call.arguments().to_string());
        let inner = width.saturating_sub(2).max(1);
        for l in markdown::plain_lines(&args, inner, theme.reasoning) {
            out.push(prefixed(l, "│ ", theme.reasoning));
        }
        if !self.output.is_empty() {
            out.push(Line::from(Span::styled("├ output", theme.reasoning)));
            let lines: Vec<&str> = self.output.lines().collect();
            let fold = self.folded && self.foldable();
            let shown: Vec<&str> = if fold {
                let mut v = lines[..FOLD_HEAD].to_vec();
                v.push("");
                v.extend(&lines[lines.len() - FOLD_TAIL..]);
                v
            } else {
                lines.clone()
            };
            let hidden = lines.len().saturating_sub(FOLD_HEAD + FOLD_TAIL);
            for (k, text) in shown.iter().enumerate() {
                if fold && k == FOLD_HEAD {
                    out.push(Line::from(Span::styled(
                        format!("│ … +{hidden} lines  (Ctrl+O unfolds)"),
                        theme.reasoning,
                    )));
                    continue;
                }
                for l in markdown::plain_lines(text, inner, theme.assistant_text) {
                    out.push(prefixed(l, "│ ", theme.reasoning));
                }
            }
        }
        out.push(Line::from(""));
        out
    }
}

fn prefixed(l: Line<'static>, prefix: &'static str, style: Style) -> Line<'static> {
    let mut spans = vec![Span::styled(prefix, style)];
    spans.extend(l.spans);
    Line::from(spans)
}
