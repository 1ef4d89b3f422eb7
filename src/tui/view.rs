//! Drawing the chat screen from `App` state: transcript (with the reasoning pane per
//! turn), thinking-budget slider, input editor with the command popup, status bar, and
//! overlays. Pure function of the state and the frame size (snapshot-tested).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Level, Overlay, TurnState, TurnView, BUDGET_STEPS};
use super::commands;
use super::markdown;
use super::tool_card::CardState;
use crate::protocol::Budget;

/// Reasoning lines shown while thinking streams (the tail; the rest is a key away).
const REASONING_PANE_LINES: usize = 10;

pub fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    f.render_widget(
        Block::default().style(
            Style::default()
                .bg(app.theme.background)
                .fg(app.theme.foreground),
        ),
        area,
    );
    let width = area.width.saturating_sub(2).max(1);
    let (input_lines, cursor) = match &app.tools.pending {
        // The approval prompt takes the input area until it is answered.
        Some(req) if !app.tools.deny_note => {
            let lines = vec![format!("`{}` {} — run it?", req.call.name(), req.reason)];
            (lines, (0, 0))
        }
        _ => app.input.render_lines(width),
    };
    let input_h = (input_lines.len().clamp(1, 8) + 2) as u16;
    let msg_h = u16::from(app.message.is_some());
    let [transcript, slider, message, input, status] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(msg_h),
        Constraint::Length(input_h),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_transcript(f, app, transcript);
    draw_slider(f, app, slider);
    if let Some((m, level)) = &app.message {
        let style = match level {
            Level::Info => app.theme.accent,
            Level::Warn => app.theme.warning,
            Level::Error => app.theme.error,
        };
        f.render_widget(
            Paragraph::new(Line::from(Span::styled(format!(" {m}"), style))),
            message,
        );
    }
    draw_input(f, app, input, &input_lines, cursor);
    draw_status(f, app, status);
    draw_completion(f, app, input);
    match app.overlay.clone() {
        Some(Overlay::Help) => draw_help(f, app, area),
        Some(Overlay::Model) => draw_model(f, app, area),
        Some(Overlay::Sessions(list)) => draw_list(f, app, area, " Sessions (/load NAME) ", &list),
        None => {}
    }
}

fn thought_summary(t: &TurnView) -> String {
    let secs = t
        .thinking_ms
        .map(|ms| format!(", {:.1} s", ms as f64 / 1000.0))
        .unwrap_or_default();
    let forced = if t.thinking_forced {
        ", closed by budget"
    } else {
        ""
    };
    format!(
        "▸ thought for {} tokens{secs}{forced}  (Ctrl+O unfolds)",
        t.reasoning_tokens
    )
}

fn turn_lines(app: &mut App, i: usize, width: u16) -> Vec<Line<'static>> {
    let theme = app.theme.clone();
    let t = app.turns[i].clone();
    let mut out = Vec::new();
    out.push(Line::from(Span::styled("You", theme.user_label)));
    for l in markdown::plain_lines(&t.user, width.saturating_sub(2).max(1), theme.user_text) {
        let mut spans = vec![Span::raw("  ")];
        spans.extend(l.spans);
        out.push(Line::from(spans));
    }
    out.push(Line::from(""));
    let streaming = t.state == TurnState::Streaming;
    if app.show_reasoning && !t.reasoning.trim().is_empty() {
        if t.reasoning_folded {
            out.extend(markdown::plain_lines(
                &thought_summary(&t),
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
        out.extend(card.lines(&theme, width));
        if card.state == CardState::WaitingApproval {
            if let Some(preview) = app
                .tools
                .pending
                .as_ref()
                .filter(|r| r.call.id == card.call.id)
                .and_then(|r| r.preview.as_ref())
            {
                for l in
                    markdown::plain_lines(preview, width.saturating_sub(2).max(1), theme.warning)
                {
                    let mut spans = vec![Span::styled("┆ ", theme.warning)];
                    spans.extend(l.spans);
                    out.push(Line::from(spans));
                }
                out.push(Line::from(""));
            }
        }
    }
    if !t.answer.is_empty() {
        if app.answer_cache.len() <= i {
            app.answer_cache.resize(i + 1, None);
        }
        let cached = match &app.answer_cache[i] {
            Some((len, w, lines)) if *len == t.answer.len() && *w == width => lines.clone(),
            _ => {
                let lines = markdown::render(&t.answer, width, &theme);
                app.answer_cache[i] = Some((t.answer.len(), width, lines.clone()));
                lines
            }
        };
        out.extend(cached);
    } else if streaming && t.reasoning.is_empty() {
        out.push(Line::from(Span::styled("…", theme.reasoning)));
    }
    match &t.state {
        TurnState::Interrupted => out.push(Line::from(Span::styled("[stopped]", theme.warning))),
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

fn draw_transcript(f: &mut Frame, app: &mut App, area: Rect) {
    app.viewport_height = area.height as usize;
    let width = area.width.saturating_sub(2).max(1);
    if app.turns.is_empty() {
        let t = &app.theme;
        let lines = vec![
            Line::from(""),
            Line::from(Span::styled(
                format!("nemo · {}", app.model.name),
                t.heading,
            )),
            Line::from(""),
            Line::from("Type a message and press Enter. Shift+Enter or Alt+Enter: new line."),
            Line::from("/think, /no_think, /budget N: reasoning. Ctrl+G: wrap up thinking now."),
            Line::from("? or F1: keys and commands."),
        ];
        f.render_widget(
            Paragraph::new(lines).wrap(Wrap { trim: false }),
            area.inner(ratatui::layout::Margin::new(1, 0)),
        );
        return;
    }
    let mut lines = Vec::new();
    for i in 0..app.turns.len() {
        lines.extend(turn_lines(app, i, width));
    }
    let h = area.height as usize;
    let max_up = lines.len().saturating_sub(h);
    app.scroll_up = app.scroll_up.min(max_up);
    let start = lines.len().saturating_sub(h + app.scroll_up);
    let visible: Vec<Line> = lines.into_iter().skip(start).take(h).collect();
    f.render_widget(
        Paragraph::new(visible),
        area.inner(ratatui::layout::Margin::new(1, 0)),
    );
    if app.scroll_up > 0 {
        let tag = format!(" ↑ {} more lines · End to follow ", app.scroll_up);
        let w = tag.chars().count() as u16;
        if area.width > w {
            let r = Rect {
                x: area.x + area.width - w,
                y: area.y + area.height - 1,
                width: w,
                height: 1,
            };
            f.render_widget(Paragraph::new(Span::styled(tag, app.theme.accent)), r);
        }
    }
}

fn budget_text(b: Budget) -> String {
    match b {
        Budget::Tokens(n) => format!("{n} tokens"),
        other => other.to_string(),
    }
}

fn draw_slider(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    if app.model.no_thinking_switch {
        let line = Line::from(vec![
            Span::styled(" Thinking ", t.status),
            Span::styled("  this model has no thinking switch", t.reasoning),
        ]);
        f.render_widget(Paragraph::new(line), area);
        return;
    }
    if !app.budget().is_on() {
        let line = Line::from(vec![
            Span::styled(" Thinking off ", t.status),
            Span::styled("  /think or Alt+→ turns it on", t.reasoning),
        ]);
        f.render_widget(Paragraph::new(line), area);
        return;
    }
    let mut spans = vec![Span::styled(" Thinking ", t.status), Span::raw(" ")];
    let running = app.running.as_ref().filter(|r| !r.answer_started);
    let bar_w = 20usize;
    match (app.budget().limit(), running) {
        (Some(b), Some(r)) => {
            let used = r.reasoning_tokens;
            let frac = (used as f64 / b.max(1) as f64).min(1.0);
            let filled = (frac * bar_w as f64).round() as usize;
            let style = if used >= b {
                t.slider_over
            } else {
                t.slider_filled
            };
            spans.push(Span::styled("█".repeat(filled), style));
            spans.push(Span::styled("░".repeat(bar_w - filled), t.slider_empty));
            spans.push(Span::raw(format!(
                " {used}/{b} tokens ({:.0}%) · {:.1} tok/s",
                frac * 100.0,
                r.tokens_per_s
            )));
        }
        (None, Some(r)) => {
            spans.push(Span::styled("∞ ", t.slider_filled));
            spans.push(Span::raw(format!(
                "{} tokens · {:.1} tok/s",
                r.reasoning_tokens, r.tokens_per_s
            )));
        }
        (b, None) => {
            // Log scale from 1 to the largest finite stop; unlimited fills the bar.
            let top = BUDGET_STEPS
                .iter()
                .rev()
                .find_map(|s| s.limit())
                .unwrap_or(16384) as f64;
            let frac = match b {
                None => 1.0,
                Some(n) => ((n.max(1) as f64).log2() / top.log2()).clamp(0.0, 1.0),
            };
            let filled = (frac * bar_w as f64).round() as usize;
            spans.push(Span::styled("━".repeat(filled), t.slider_filled));
            spans.push(Span::styled("●", t.accent));
            spans.push(Span::styled("─".repeat(bar_w - filled), t.slider_empty));
            spans.push(Span::raw(format!(
                " budget {}",
                budget_text(Budget::from_limit(b))
            )));
        }
    }
    let used: usize = spans.iter().map(|s| s.width()).sum();
    let hint = "   Alt+←/→ budget · Ctrl+G wrap up now";
    if used + hint.chars().count() <= area.width as usize {
        spans.push(Span::styled(hint, t.reasoning));
    } else if used + 16 <= area.width as usize {
        spans.push(Span::styled("   Ctrl+G wrap up", t.reasoning));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_input(f: &mut Frame, app: &App, area: Rect, lines: &[String], cursor: (u16, u16)) {
    let t = &app.theme;
    let title = if app.tools.pending.is_some() && app.tools.deny_note {
        " Denied · a note for the model (optional) · Enter sends · Esc stops the turn "
    } else if app.tools.pending.is_some() {
        " Approve? y once · a this call, whole session · n deny (with a note) · Esc stops "
    } else if app.running.is_some() {
        " Generating… Esc stops · Ctrl+G wraps up thinking "
    } else {
        " Message · Enter sends · Shift+Enter new line · ? help "
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.accent)
        .title(Span::styled(title, t.reasoning));
    let inner = block.inner(area);
    let h = inner.height as usize;
    let skip = (cursor.1 as usize + 1).saturating_sub(h);
    let text: Vec<Line> = lines
        .iter()
        .skip(skip)
        .take(h)
        .map(|l| Line::from(l.clone()))
        .collect();
    f.render_widget(Paragraph::new(text).block(block), area);
    if app.overlay.is_none() {
        f.set_cursor_position((
            inner.x + cursor.0.min(inner.width.saturating_sub(1)),
            inner.y + (cursor.1 as usize - skip) as u16,
        ));
    }
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let think = if app.budget().is_on() {
        "think on"
    } else {
        "think off"
    };
    let speed = match (app.last_ttft_ms, app.last_tokens_per_s) {
        (Some(a), Some(b)) if b >= 100.0 => format!("TTFT {a:.0} ms · {b:.0} tok/s"),
        (Some(a), Some(b)) => format!("TTFT {a:.0} ms · {b:.1} tok/s"),
        _ => "TTFT –".into(),
    };
    let state = if app.running.is_some() {
        "● generating"
    } else {
        "○ idle"
    };
    // Segments by priority: the lowest ones go first when the terminal is narrow.
    let segments = [
        (0, format!("{} · {}", app.model.name, app.model.backend)),
        (1, format!("{think} · budget {}", budget_text(app.budget()))),
        (3, format!("ctx {}/{}", app.context_used, app.model.context)),
        (4, speed),
        (2, state.to_string()),
        (5, "? help".to_string()),
    ];
    let width = area.width as usize;
    let mut keep = 6;
    let text = loop {
        let parts: Vec<&str> = segments
            .iter()
            .filter(|(p, _)| *p < keep)
            .map(|(_, s)| s.as_str())
            .collect();
        let text = format!(" {} ", parts.join(" │ "));
        if text.chars().count() <= width || keep <= 1 {
            break text;
        }
        keep -= 1;
    };
    f.render_widget(
        Paragraph::new(Line::from(Span::styled(text, t.status))).style(t.status),
        area,
    );
}

fn draw_completion(f: &mut Frame, app: &App, input: Rect) {
    let c = app.completions();
    if c.is_empty() || app.overlay.is_some() {
        return;
    }
    let n = c.len().min(8);
    let h = n as u16 + 2;
    if input.y < h {
        return;
    }
    let w = input.width.min(70);
    let r = Rect {
        x: input.x,
        y: input.y - h,
        width: w,
        height: h,
    };
    let sel = app.completion_index.min(c.len() - 1);
    let lines: Vec<Line> = c
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, s)| {
            let style = if i == sel {
                app.theme.popup_selected
            } else {
                Style::default()
            };
            Line::from(vec![
                Span::styled(
                    format!("/{} {}", s.name, s.args),
                    style.add_modifier(Modifier::BOLD),
                ),
                Span::styled(format!("  {}", s.help), style),
            ])
        })
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Tab completes "),
        ),
        r,
    );
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Key bindings shown in the help overlay (and README).
pub const KEYS: &[(&str, &str)] = &[
    ("Enter", "send"),
    ("Shift+Enter / Alt+Enter", "new line"),
    ("Up / Down", "history (at the first / last line)"),
    (
        "Ctrl+A / E / W / U / K",
        "line start / end, delete word / to start / to end",
    ),
    ("Esc / Ctrl+C", "stop generating (keeps the partial answer)"),
    ("Ctrl+C twice, Ctrl+D", "quit"),
    (
        "Ctrl+G",
        "WRAP UP NOW: end thinking, answer from what it has",
    ),
    ("Alt+← / Alt+→", "thinking budget down / up"),
    ("Ctrl+O", "fold / unfold the last tool output or reasoning"),
    ("y / a / n", "approve a call once / for the session / deny"),
    ("Ctrl+R", "hide / show reasoning"),
    ("PgUp / PgDn, wheel", "scroll"),
    ("Home / End", "top / follow the bottom"),
    ("Tab", "complete a /command"),
    ("? / F1", "this help"),
];

fn draw_help(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let mut lines = vec![Line::from(Span::styled("Keys", t.heading))];
    for (k, v) in KEYS {
        lines.push(Line::from(vec![
            Span::styled(format!("  {k:<26}"), t.accent),
            Span::raw(*v),
        ]));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled("Commands", t.heading)));
    for s in commands::specs() {
        lines.push(Line::from(vec![
            Span::styled(format!("  /{:<10} {:<14}", s.name, s.args), t.accent),
            Span::raw(s.help),
        ]));
    }
    let r = centered(area, 90, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).style(t.help).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Help · Esc closes "),
        ),
        r,
    );
}

fn draw_model(f: &mut Frame, app: &App, area: Rect) {
    let m = &app.model;
    let rows = [
        ("model", m.name.clone()),
        ("backend", m.backend.clone()),
        ("architecture", m.arch.clone()),
        ("layers", m.pattern.clone()),
        ("weights", format!("{} · {}", m.dtype, m.params)),
        ("context", format!("{} tokens", m.context)),
        ("KV cache", m.kv_cache_dtype.clone()),
        ("SSM state", m.ssm_cache_dtype.clone()),
        ("tools", m.tools.clone()),
    ];
    let lines: Vec<Line> = rows
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:<14}"), app.theme.accent),
                Span::raw(v.clone()),
            ])
        })
        .collect();
    let r = centered(area, 80, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Model · Esc closes "),
        ),
        r,
    );
}

fn draw_list(f: &mut Frame, app: &App, area: Rect, title: &str, items: &[String]) {
    let lines: Vec<Line> = if items.is_empty() {
        vec![Line::from("(none yet)")]
    } else {
        items.iter().map(|s| Line::from(s.clone())).collect()
    };
    let r = centered(area, 90, (lines.len() as u16 + 2).min(area.height));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).style(app.theme.help).block(
            Block::default()
                .borders(Borders::ALL)
                .title(title.to_string()),
        ),
        r,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;
    use crate::chat::session_store::{ModelIdentity, SessionFile};
    use crate::protocol::SamplingParams;
    use crate::protocol::{Done, Event, FinishReason, ThinkingOptions, Timings, Usage};
    use crate::tui::app::ModelInfo;
    use crate::tui::input::History;
    use crate::tui::theme::Theme;

    fn app() -> App {
        let model = ModelInfo {
            name: "nemotron_h_tiny".into(),
            backend: "cpu".into(),
            arch: "NemotronH · hidden 64 · 8 layers".into(),
            dtype: "f32".into(),
            pattern: "M-M*-M*-".into(),
            params: "0.00 GB of weights".into(),
            context: 4096,
            kv_cache_dtype: "f32".into(),
            ssm_cache_dtype: "f32".into(),
            no_thinking_switch: false,
            tools: "hermes format; tools in nemo's preamble".into(),
        };
        let session = SessionFile::new(
            ModelIdentity {
                path: "tests/fixtures/nemotron_h_tiny".into(),
                config_hash: "0".into(),
                weights: None,
            },
            SamplingParams::default(),
            ThinkingOptions {
                budget: Budget::tokens(512),
                ..Default::default()
            },
            None,
        );
        App::new(Theme::dark(), model, session, History::in_memory())
    }

    fn screen(app: &mut App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            let mut line = String::new();
            for x in 0..w {
                line.push_str(buf[(x, y)].symbol());
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Starts a turn the way the user does (typing + Enter) and streams reasoning into it.
    fn stream_reasoning(app: &mut App) {
        app.input.set_text("Why is the sky blue?");
        let fx = app.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Enter,
        ));
        assert!(matches!(
            fx.last(),
            Some(crate::tui::app::Effect::Submit(_))
        ));
        app.handle_engine(Event::Started {
            prompt_tokens: 40,
            reused_tokens: 0,
        });
        app.handle_engine(Event::Reasoning("The user asks about the sky. Sunlight is scattered by air molecules;\nshorter wavelengths scatter more (Rayleigh).".into()));
        app.handle_engine(Event::Progress {
            reasoning_tokens: 200,
            completion_tokens: 200,
            tokens_per_s: 31.5,
        });
    }

    fn finish(app: &mut App, answer: &str) {
        app.handle_engine(Event::Content(answer.into()));
        app.handle_engine(Event::Done(Done {
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 40,
                reasoning_tokens: 212,
                completion_tokens: 300,
            },
            timings: Timings {
                ttft_ms: 120.0,
                prefill_tokens_per_s: 800.0,
                decode_tokens_per_s: 31.5,
                total_ms: 9000.0,
            },
            reused_tokens: 23,
            thinking_forced: false,
            steps: 1,
            constraint: None,
        }));
        if let Some(t) = app.turns.last_mut() {
            t.thinking_ms = Some(3100); // wall-clock in real runs; fixed for the snapshot
        }
    }

    const ANSWER: &str = "## Rayleigh scattering\n\nBlue light is scattered **more** than red:\n\n```rust\nfn intensity(lambda: f64) -> f64 {\n    1.0 / lambda.powi(4)\n}\n```\n\n| colour | wavelength |\n|---|---|\n| blue | 450 nm |\n| red | 700 nm |\n";

    #[test]
    fn empty_screen() {
        insta::assert_snapshot!(screen(&mut app(), 80, 20));
    }

    #[test]
    fn reasoning_streaming() {
        let mut a = app();
        stream_reasoning(&mut a);
        insta::assert_snapshot!(screen(&mut a, 80, 20));
    }

    #[test]
    fn finished_answer_with_code_block_and_table() {
        let mut a = app();
        stream_reasoning(&mut a);
        finish(&mut a, ANSWER);
        insta::assert_snapshot!(screen(&mut a, 80, 30));
    }

    #[test]
    fn slider_at_several_values() {
        let mut shots = String::new();
        for b in [
            Budget::Off,
            Budget::tokens(64),
            Budget::tokens(1024),
            Budget::Unlimited,
        ] {
            let mut a = app();
            a.set_budget(b);
            let s = screen(&mut a, 80, 8);
            shots.push_str(s.lines().nth(3).unwrap_or_default());
            shots.push('\n');
        }
        let mut a = app();
        stream_reasoning(&mut a); // 200 of 512 used
        let s = screen(&mut a, 80, 20);
        shots.push_str(s.lines().nth(15).unwrap_or_default());
        shots.push('\n');
        let mut a = app();
        a.model.no_thinking_switch = true;
        let s = screen(&mut a, 80, 8);
        shots.push_str(s.lines().nth(3).unwrap_or_default());
        shots.push('\n');
        insta::assert_snapshot!(shots);
    }

    #[test]
    fn help_overlay() {
        let mut a = app();
        a.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::F(1),
        ));
        insta::assert_snapshot!(screen(&mut a, 100, 40));
    }

    #[test]
    fn narrow_forty_columns() {
        let mut a = app();
        stream_reasoning(&mut a);
        finish(&mut a, ANSWER);
        insta::assert_snapshot!(screen(&mut a, 40, 30));
    }

    fn call(id: &str, name: &str, args: serde_json::Value) -> crate::protocol::ToolCall {
        crate::protocol::ToolCall::new(id, name, args)
    }

    fn result(id: &str, name: &str, ok: bool, output: &str) -> crate::protocol::ToolResult {
        crate::protocol::ToolResult {
            id: id.into(),
            name: name.into(),
            ok,
            output: output.into(),
            truncated: false,
        }
    }

    /// A turn whose first step called four tools: one ran (long output, folded), one
    /// failed, one was denied, and one waits for approval with its diff; the input area
    /// holds the approval prompt. Then y runs it, and its card says so.
    #[test]
    fn tool_cards_in_each_state_and_the_approval_prompt() {
        use crate::protocol::ApprovalRequest;
        use serde_json::json;
        let mut a = app();
        a.tools.available = vec![];
        a.tools.on = true;
        stream_reasoning(&mut a);
        a.handle_engine(Event::ToolCall(call(
            "c1",
            "list_dir",
            json!({"path": "src"}),
        )));
        a.handle_engine(Event::ToolCall(call(
            "c2",
            "read_file",
            json!({"path": "nope.txt"}),
        )));
        a.handle_engine(Event::ToolCall(call(
            "c3",
            "shell",
            json!({"command": "rm -rf build"}),
        )));
        a.handle_engine(Event::ToolCall(call(
            "c4",
            "write_file",
            json!({"path": "a.txt", "content": "hi"}),
        )));
        let step = Done {
            finish_reason: FinishReason::ToolCalls,
            usage: Usage::default(),
            timings: Timings::default(),
            reused_tokens: 0,
            thinking_forced: false,
            steps: 1,
            constraint: None,
        };
        a.handle_engine(Event::Step {
            step: 1,
            done: step,
        });
        assert_eq!(a.turns[0].tools[0].state, CardState::Running);
        let listing: String = (1..=9).map(|i| format!("file  {i}0  f{i}.rs\n")).collect();
        a.handle_engine(Event::ToolResult(result("c1", "list_dir", true, &listing)));
        a.handle_engine(Event::ToolResult(result(
            "c2",
            "read_file",
            false,
            "nope.txt: no such file",
        )));
        a.handle_engine(Event::ApprovalNeeded(ApprovalRequest {
            call: call("c3", "shell", json!({"command": "rm -rf build"})),
            reason: "runs a command".into(),
            preview: Some("$ rm -rf build".into()),
        }));
        assert_eq!(a.turns[0].tools[2].state, CardState::WaitingApproval);
        // n, a note, Enter: denied, and the note goes with the answer.
        a.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Char('n'),
        ));
        assert!(a.tools.deny_note);
        for ch in "not now".chars() {
            a.handle_key(crossterm::event::KeyEvent::from(
                crossterm::event::KeyCode::Char(ch),
            ));
        }
        a.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Enter,
        ));
        assert!(a.tools.pending.is_none());
        let controls = a.running.as_ref().unwrap().controls.clone();
        assert_eq!(
            controls.wait_answer("c3", Some(std::time::Duration::ZERO)),
            Some(crate::protocol::ApprovalDecision::Deny {
                note: Some("not now".into())
            })
        );
        a.handle_engine(Event::ToolResult(result(
            "c3",
            "shell",
            false,
            "the user denied this call: not now",
        )));
        assert_eq!(a.turns[0].tools[2].state, CardState::Denied);
        a.handle_engine(Event::ApprovalNeeded(ApprovalRequest {
            call: call(
                "c4",
                "write_file",
                json!({"path": "a.txt", "content": "hi"}),
            ),
            reason: "writes a.txt".into(),
            preview: Some("--- a.txt\n+++ a.txt\n@@ -0,0 +1 @@\n+hi".into()),
        }));
        for c in a.turns[0].tools.iter_mut() {
            c.duration_ms = c.duration_ms.map(|_| 1200); // wall-clock in real runs
        }
        a.turns[0].thinking_ms = Some(3100);
        insta::assert_snapshot!("tool_cards_waiting", screen(&mut a, 80, 48));
        a.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Char('y'),
        ));
        assert_eq!(a.turns[0].tools[3].state, CardState::Running);
        assert_eq!(
            controls.wait_answer("c4", Some(std::time::Duration::ZERO)),
            Some(crate::protocol::ApprovalDecision::Once)
        );
        // Ctrl+O unfolds the most recent folded output (list_dir's).
        assert!(a.turns[0].tools[0].folded);
        a.handle_key(crossterm::event::KeyEvent::new(
            crossterm::event::KeyCode::Char('o'),
            crossterm::event::KeyModifiers::CONTROL,
        ));
        assert!(!a.turns[0].tools[0].folded);
    }
}
