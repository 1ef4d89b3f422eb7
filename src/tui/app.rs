//! The chat interface's state and logic, with no terminal in it: keys, commands and
//! engine events go in; `Effect`s (submit a request, save, copy, …) come out for the
//! event loop to carry out. Everything here is testable without a terminal.
//!
//! Invariants: at most one request runs at a time (`running`); a turn's text only grows
//! while it streams; the transcript follows the bottom unless the user scrolled up.
//!
//! Cancel and quit never wait on the engine: a cancelled request the engine has not ended
//! within `CANCEL_GRACE` (it may be inside work it cannot interrupt, such as a chat
//! template that renders for minutes) is abandoned by `tick`: the turn is kept as
//! interrupted with what arrived, saved, and the event loop drops the request's later events.
//! Quitting abandons a running turn the same way, so it is saved before the app exits.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

use super::commands::{self, Command, SetArg};
use super::history::History;
use super::input::{InputAction, InputEditor};
use super::theme::Theme;
use super::tool_card::{CardState, ToolCard};
pub use super::turn::{TurnState, TurnView};
use crate::chat::session_store::{ModelIdentity, SessionFile, Turn, TurnStats};
use crate::protocol::{
    ApprovalDecision, ApprovalRequest, Budget, Controls, Event, FinishReason, Message, Request,
    SamplingParams, ToolChoice, ToolSpec,
};

/// What the loaded model is, for the status bar and `/model`.
#[derive(Clone, Debug, Default)]
pub struct ModelInfo {
    pub name: String,
    pub backend: String,
    pub arch: String,
    pub dtype: String,
    pub pattern: String,
    pub params: String,
    pub context: usize,
    pub kv_cache_dtype: String,
    pub ssm_cache_dtype: String,
    /// The model's chat template has no thinking switch (e.g. SmolLM2): the slider says so.
    pub no_thinking_switch: bool,
    /// How tools reach the model: the call format and what its template renders.
    pub tools: String,
}

/// A request in flight.
#[derive(Clone, Debug)]
pub struct Running {
    pub controls: Controls,
    pub started: Instant,
    pub reasoning_tokens: usize,
    pub completion_tokens: usize,
    pub tokens_per_s: f64,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub answer_started: bool,
    /// When Esc / Ctrl+C cancelled it; `tick` abandons it `CANCEL_GRACE` later.
    pub cancelled_at: Option<Instant>,
}

/// How long a cancelled request may take to end before the app stops waiting for it, so
/// control returns within 100 ms in every phase (template, tokenization, prefill, decode).
pub const CANCEL_GRACE: Duration = Duration::from_millis(80);

#[derive(Clone, Debug, PartialEq)]
pub enum Overlay {
    Help,
    Model,
    Sessions(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Work the event loop does for the app.
#[derive(Clone, Debug)]
pub enum Effect {
    Submit(Box<Request>),
    /// Forget the engine's sequence state (`/clear`).
    ResetEngine,
    /// Write the session's own file, `<id>.json` (the autosave); quiet unless it fails.
    Save,
    /// `/save [NAME]`: write it as `NAME.json` (own file when `None`) and say where; a
    /// file holding another session is written over only with `replace` (`/save!`).
    SaveAs {
        name: Option<String>,
        replace: bool,
    },
    Load(String),
    ListSessions,
    Export(String),
    /// Put text on the clipboard (OSC 52).
    Copy(String),
    SaveHistory,
    /// `/approval`: the agent's policy changes mode (from the next call).
    SetApproval(crate::agent::policy::ApprovalMode),
    Quit,
}

/// The budget slider's stops (Alt+←/→ move along them).
pub const BUDGET_STEPS: &[Budget] = &[
    Budget::Off,
    Budget::tokens(64),
    Budget::tokens(128),
    Budget::tokens(256),
    Budget::tokens(512),
    Budget::tokens(1024),
    Budget::tokens(2048),
    Budget::tokens(4096),
    Budget::tokens(8192),
    Budget::tokens(16384),
    Budget::Unlimited,
];

pub struct App {
    pub theme: Theme,
    pub model: ModelInfo,
    pub turns: Vec<TurnView>,
    pub system: Option<String>,
    /// The budget `/think` returns to after `/no_think` (never `Off`). The budget itself
    /// lives in `session.thinking` (and, for a running turn, in its `Controls`).
    pub budget_when_on: Budget,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub input: InputEditor,
    pub history: History,
    /// Lines scrolled up from the bottom; 0 follows new output.
    pub scroll_up: usize,
    pub overlay: Option<Overlay>,
    pub message: Option<(String, Level)>,
    pub running: Option<Running>,
    pub show_reasoning: bool,
    pub ctrl_c_at: Option<Instant>,
    pub should_quit: bool,
    /// Tokens in the context after the last turn.
    pub context_used: usize,
    pub last_ttft_ms: Option<f64>,
    pub last_tokens_per_s: Option<f64>,
    /// Session file being written after each turn.
    pub session: SessionFile,
    /// The model this chat runs on: what `session.model` says from now on, and what a
    /// loaded session is checked against.
    pub loaded_model: ModelIdentity,
    /// Lines the transcript area showed at the last draw (for paging; `set_viewport`).
    pub viewport_height: usize,
    /// Completion popup selection.
    pub completion_index: usize,
    pub tools: ToolsState,
}

/// The tools side of the chat: what is offered, the next turn's tool choice, the
/// approval mode, and the call waiting for the user's answer.
#[derive(Clone, Debug, Default)]
pub struct ToolsState {
    /// Every tool the agent can run (empty: the chat has no agent).
    pub available: Vec<ToolSpec>,
    /// Whether turns offer them (`/tools on|off`).
    pub on: bool,
    /// The first step of each turn (`/tool_choice`).
    pub choice: ToolChoice,
    /// `--tool-format` (None: the model's own).
    pub format: Option<crate::protocol::ToolFormat>,
    /// Shown in `/tools`; the event loop applies a change to the agent's policy.
    pub approval: String,
    /// The call waiting for y / a / n.
    pub pending: Option<ApprovalRequest>,
    /// After `n`: the input holds an optional note for the model; Enter denies.
    pub deny_note: bool,
}

/// "it ran on A, not on the loaded B": both models by short name; by path or identity
/// when the names are the same.
fn model_change(was: &ModelIdentity, now: &ModelIdentity) -> String {
    let (a, b) = (was.short_name(), now.short_name());
    if a != b {
        return format!("it ran on {a}, not on the loaded {b}");
    }
    let differs = if was.path != now.path {
        format!("at {}; this one is at {}", was.path, now.path)
    } else if was.config_hash != now.config_hash {
        format!("identity {}; this one {}", was.config_hash, now.config_hash)
    } else {
        let w = |m: &ModelIdentity| m.weights.clone().unwrap_or_default();
        format!("weights {}; these are {}", w(was), w(now))
    };
    format!("it ran on another {a} ({differs})")
}

/// The budget thinking returns to when it is switched back on.
fn on_budget(b: Budget) -> Budget {
    if b.is_on() {
        b
    } else {
        Budget::Unlimited
    }
}

impl App {
    pub fn new(theme: Theme, model: ModelInfo, session: SessionFile, history: History) -> Self {
        let budget_when_on = on_budget(session.thinking.budget);
        App {
            theme,
            model,
            turns: Vec::new(),
            system: session.system.clone(),
            budget_when_on,
            sampling: session.sampling.clone(),
            max_tokens: 4096,
            input: InputEditor::default(),
            history,
            scroll_up: 0,
            overlay: None,
            message: None,
            running: None,
            show_reasoning: true,
            ctrl_c_at: None,
            should_quit: false,
            context_used: 0,
            last_ttft_ms: None,
            last_tokens_per_s: None,
            loaded_model: session.model.clone(),
            session,
            viewport_height: 20,
            completion_index: 0,
            tools: ToolsState::default(),
        }
    }

    /// What the last draw found (`view::draw`'s `Viewport`): the transcript's height, for
    /// paging, and how far up it can scroll, which bounds `scroll_up`.
    pub fn set_viewport(&mut self, height: usize, max_scroll: usize) {
        self.viewport_height = height;
        self.scroll_up = self.scroll_up.min(max_scroll);
    }

    /// Restores a saved session into the view. It goes on with the loaded model and is
    /// saved with that model's identity from now on; when it ran on another model, the
    /// returned warning names both (for the caller to show with what it loaded).
    pub fn load_session(&mut self, s: SessionFile) -> Option<String> {
        let warning = (!s.model.same_model(&self.loaded_model))
            .then(|| model_change(&s.model, &self.loaded_model));
        self.turns = s.turns.iter().map(TurnView::restored).collect();
        self.system = s.system.clone();
        self.sampling = s.sampling.clone();
        self.budget_when_on = on_budget(s.thinking.budget);
        self.session = s;
        self.session.model = self.loaded_model.clone();
        self.scroll_up = 0;
        warning
    }

    pub fn info(&mut self, msg: impl Into<String>) {
        self.message = Some((msg.into(), Level::Info));
    }
    pub fn warn(&mut self, msg: impl Into<String>) {
        self.message = Some((msg.into(), Level::Warn));
    }
    pub fn error(&mut self, msg: impl Into<String>) {
        self.message = Some((msg.into(), Level::Error));
    }

    /// The thinking budget for the next turn (and the running one).
    pub fn budget(&self) -> Budget {
        self.session.thinking.budget
    }

    /// The conversation as the template sees it, finished turns plus `next_user`.
    fn messages(&self, upto: usize, next_user: &str) -> Vec<Message> {
        let mut m = Vec::new();
        if let Some(s) = &self.system {
            m.push(Message::system(s.clone()));
        }
        for t in &self.turns[..upto] {
            m.push(Message::user(t.user.clone()));
            // Each step's calls as an assistant message, then their results.
            let mut step = 0;
            for card in &t.tools {
                if card.step != step {
                    step = card.step;
                    let mut a = Message::assistant(String::new());
                    a.tool_calls = t
                        .tools
                        .iter()
                        .filter(|c| c.step == step)
                        .map(|c| c.call.clone())
                        .collect();
                    m.push(a);
                    for c in t.tools.iter().filter(|c| c.step == step) {
                        m.push(Message::tool(
                            c.call.id.clone(),
                            c.call.name().to_string(),
                            c.output.clone(),
                        ));
                    }
                }
            }
            if !t.answer.is_empty() || !t.reasoning.is_empty() {
                let mut a = Message::assistant(t.answer.clone());
                if !t.reasoning.is_empty() {
                    a.reasoning_content = Some(t.reasoning.clone());
                }
                m.push(a);
            }
        }
        m.push(Message::user(next_user.to_string()));
        m
    }

    fn start_turn(&mut self, user: String) -> Vec<Effect> {
        let upto = self.turns.len();
        let messages = self.messages(upto, &user);
        self.turns.push(TurnView::new(user));
        let mut req = Request::new(messages, self.session.thinking.clone());
        req.sampling = self.sampling.clone();
        req.max_tokens = self.max_tokens;
        if self.tools.on {
            req.tools = self.tools.available.clone();
            req.tool_choice = self.tools.choice.clone();
            req.tool_format = self.tools.format;
        }
        self.running = Some(Running {
            controls: req.controls().clone(),
            started: Instant::now(),
            reasoning_tokens: 0,
            completion_tokens: 0,
            tokens_per_s: 0.0,
            prompt_tokens: 0,
            reused_tokens: 0,
            answer_started: false,
            cancelled_at: None,
        });
        self.scroll_up = 0;
        self.message = None;
        vec![Effect::Submit(Box::new(req))]
    }

    fn submit(&mut self, text: String) -> Vec<Effect> {
        let trimmed = text.trim();
        if trimmed.starts_with('/') {
            self.history.push(trimmed);
            let mut fx = vec![Effect::SaveHistory];
            match commands::parse(trimmed) {
                Ok(cmd) => fx.extend(self.run_command(cmd)),
                Err(e) => self.error(e.to_string()),
            }
            return fx;
        }
        if self.running.is_some() {
            self.input.set_text(&text);
            self.warn("a reply is still being generated: Esc stops it, Ctrl+G wraps up thinking");
            return vec![];
        }
        self.history.push(&text);
        let mut fx = vec![Effect::SaveHistory];
        fx.extend(self.start_turn(text));
        fx
    }

    /// Sets the budget for the next turns and the running one (from its next token).
    pub fn set_budget(&mut self, b: Budget) {
        self.session.thinking.budget = b;
        if b.is_on() {
            self.budget_when_on = b;
        }
        if let Some(r) = &self.running {
            r.controls.set_budget(b);
        }
    }

    fn step_budget(&mut self, up: bool) {
        let now = self.budget();
        let pos = BUDGET_STEPS
            .iter()
            .position(|s| *s == now)
            .unwrap_or_else(|| {
                // Between stops: the nearest one on the way.
                let v = now.limit().unwrap_or(usize::MAX);
                BUDGET_STEPS
                    .iter()
                    .position(|s| s.limit().unwrap_or(usize::MAX) >= v)
                    .unwrap_or(BUDGET_STEPS.len() - 1)
            });
        let next = if up {
            (pos + 1).min(BUDGET_STEPS.len() - 1)
        } else {
            pos.saturating_sub(1)
        };
        self.set_budget(BUDGET_STEPS[next]);
        self.info(format!("thinking budget: {}", self.budget()));
    }

    pub fn wrap_up(&mut self) {
        match &self.running {
            Some(r) if !r.answer_started => {
                r.controls.wrap_up();
                self.info("wrapping up: the model answers from the reasoning so far");
            }
            Some(_) => self.info("the answer has already started"),
            None => self.info("nothing to wrap up: no reply is being generated"),
        }
    }

    fn stop_generation(&mut self) {
        if let Some(r) = &mut self.running {
            r.controls.cancel();
            r.cancelled_at.get_or_insert_with(Instant::now);
        }
    }

    /// When `tick` next has something to do (a cancelled request's grace ends).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.running
            .as_ref()
            .and_then(|r| r.cancelled_at)
            .map(|t| t + CANCEL_GRACE)
    }

    /// Timers: a cancelled request the engine has not ended within `CANCEL_GRACE` is
    /// abandoned (its turn kept as interrupted and saved).
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        match self.next_deadline() {
            Some(d) if now >= d => self.abandon_turn(),
            _ => vec![],
        }
    }

    /// Ends the running turn without waiting for the engine: cancelled, kept as interrupted
    /// with the text that arrived, recorded in the session and saved. The event loop drops the
    /// request's later events (`running` is gone).
    fn abandon_turn(&mut self) -> Vec<Effect> {
        self.stop_generation();
        self.tools.pending = None;
        self.tools.deny_note = false;
        let Some(r) = self.running.take() else {
            return vec![];
        };
        let Some(turn) = self.turns.last_mut() else {
            return vec![];
        };
        turn.state = TurnState::Interrupted;
        turn.reasoning_folded = !turn.answer.is_empty();
        if turn.thinking_ms.is_none() && !turn.reasoning.is_empty() {
            turn.thinking_ms = Some(r.started.elapsed().as_millis() as u64);
        }
        if !r.answer_started {
            turn.reasoning_tokens = r.reasoning_tokens;
        }
        let record = Turn {
            user: turn.user.clone(),
            reasoning: turn.reasoning.clone(),
            answer: turn.answer.clone(),
            stats: None,
            tools: turn.tools.iter().map(ToolCard::record).collect(),
        };
        self.session.turns.truncate(self.turns.len() - 1);
        self.session.turns.push(record);
        vec![Effect::Save]
    }

    /// Quit (`/quit`, Ctrl+D, Ctrl+C twice, a termination signal): a running turn is
    /// abandoned and saved first; nothing waits on the engine.
    pub fn quit(&mut self) -> Vec<Effect> {
        let mut fx = self.abandon_turn();
        self.should_quit = true;
        fx.push(Effect::Quit);
        fx
    }

    pub fn run_command(&mut self, cmd: Command) -> Vec<Effect> {
        match cmd {
            Command::Think => {
                if !self.budget().is_on() {
                    self.session.thinking.budget = self.budget_when_on;
                }
                self.info(format!("thinking on (budget {})", self.budget()));
            }
            Command::NoThink => {
                // The running turn keeps its own budget; the next turn starts without
                // thinking.
                self.session.thinking.budget = Budget::Off;
                self.info("thinking off");
            }
            Command::Budget(b) => {
                self.set_budget(b);
                self.info(format!("thinking budget: {b}"));
            }
            Command::System(s) => {
                self.system = if s.trim().is_empty() { None } else { Some(s) };
                self.session.system = self.system.clone();
                self.info("system message set; it applies from the next turn");
            }
            Command::Clear => {
                self.stop_generation();
                self.running = None;
                self.turns.clear();
                self.context_used = 0;
                self.session.turns.clear();
                self.info("conversation cleared");
                return vec![Effect::ResetEngine, Effect::Save];
            }
            Command::Retry => {
                if self.running.is_some() {
                    self.warn("wait for the reply to finish (or press Esc) before /retry");
                } else if let Some(last) = self.turns.pop() {
                    self.session.turns.truncate(self.turns.len());
                    return self.start_turn(last.user);
                } else {
                    self.warn("nothing to retry yet");
                }
            }
            Command::Undo => {
                if self.running.is_some() {
                    self.stop_generation();
                    self.running = None;
                    self.tools.pending = None;
                    self.tools.deny_note = false;
                }
                if let Some(t) = self.turns.pop() {
                    self.session.turns.truncate(self.turns.len());
                    self.input.set_text(&t.user);
                    let wrote = t.tools.iter().any(|c| {
                        matches!(
                            c.state,
                            CardState::Done | CardState::Failed | CardState::Running
                        )
                    });
                    self.info(if wrote {
                        "last exchange removed; its message is back in the input (the tools it ran are not undone: files stay as they are)"
                    } else {
                        "last exchange removed; its message is back in the input"
                    });
                    return vec![Effect::Save];
                }
                self.warn("nothing to undo");
            }
            Command::Save { name, replace } => return vec![Effect::SaveAs { name, replace }],
            Command::Load(name) => {
                if self.running.is_some() {
                    self.warn("wait for the reply to finish before /load");
                } else {
                    return vec![Effect::Load(name)];
                }
            }
            Command::Sessions => return vec![Effect::ListSessions],
            Command::Export(file) => return vec![Effect::Export(file)],
            Command::Model => self.overlay = Some(Overlay::Model),
            Command::Tools(None) => {
                if self.tools.available.is_empty() {
                    self.info("no tools: this chat was started with --tools none");
                } else {
                    let names: Vec<&str> = self
                        .tools
                        .available
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect();
                    self.info(format!(
                        "tools {} · choice {} · approval {}: {}",
                        if self.tools.on { "on" } else { "off" },
                        self.tools.choice,
                        self.tools.approval,
                        names.join(", ")
                    ));
                }
            }
            Command::Tools(Some(on)) => {
                if on && self.tools.available.is_empty() {
                    self.warn("no tools to offer: this chat was started with --tools none");
                } else {
                    self.tools.on = on;
                    self.info(if on {
                        "tools on: the next turns offer them"
                    } else {
                        "tools off: the next turns offer none"
                    });
                }
            }
            Command::ToolChoice(c) => {
                if let ToolChoice::Named(n) = &c {
                    if !self.tools.available.iter().any(|t| &t.name == n) {
                        self.error(format!("/tool_choice: no tool `{n}` (/tools lists them)"));
                        return vec![];
                    }
                }
                self.info(format!("tool choice for the next turns: {c}"));
                self.tools.choice = c;
            }
            Command::Approval(mode) => {
                self.tools.approval = mode.to_string();
                self.info(format!("approval: {mode}"));
                return vec![Effect::SetApproval(mode)];
            }
            Command::Set(s) => {
                let msg = match s {
                    SetArg::Temperature(v) => {
                        self.sampling.temperature = v;
                        format!("temperature = {v}")
                    }
                    SetArg::TopP(v) => {
                        self.sampling.top_p = v;
                        format!("top_p = {v}")
                    }
                    SetArg::TopK(v) => {
                        self.sampling.top_k = v;
                        format!("top_k = {v}")
                    }
                    SetArg::Seed(v) => {
                        self.sampling.seed = v;
                        format!(
                            "seed = {}",
                            v.map(|s| s.to_string()).unwrap_or_else(|| "random".into())
                        )
                    }
                    SetArg::MaxTokens(v) => {
                        self.max_tokens = v;
                        format!("max_tokens = {v}")
                    }
                };
                self.session.sampling = self.sampling.clone();
                self.info(msg);
            }
            Command::Copy => match self.turns.iter().rev().find(|t| !t.answer.is_empty()) {
                Some(t) => {
                    let text = t.answer.clone();
                    self.info("last answer copied to the clipboard");
                    return vec![Effect::Copy(text)];
                }
                None => self.warn("no answer to copy yet"),
            },
            Command::Wrap => self.wrap_up(),
            Command::Help => self.overlay = Some(Overlay::Help),
            Command::Quit => return self.quit(),
        }
        vec![]
    }

    fn scroll_by(&mut self, lines: isize) {
        if lines > 0 {
            self.scroll_up = self.scroll_up.saturating_add(lines as usize);
        } else {
            self.scroll_up = self.scroll_up.saturating_sub((-lines) as usize);
        }
    }

    /// Completion candidates for the input, when it is a command being typed.
    pub fn completions(&self) -> Vec<commands::SlashCommand> {
        let t = self.input.text();
        if t.starts_with('/') && !t.contains(' ') && !t.contains('\n') {
            commands::complete(&t[1..])
        } else {
            vec![]
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        use KeyCode::*;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if key.kind == crossterm::event::KeyEventKind::Release {
            return vec![];
        }
        // Overlays take keys first.
        if self.overlay.is_some() {
            match key.code {
                Esc | Char('q') | Enter | F(1) | Char('?') => self.overlay = None,
                _ if ctrl && key.code == Char('c') => self.overlay = None,
                _ => {}
            }
            return vec![];
        }
        if ctrl && key.code != Char('c') {
            self.ctrl_c_at = None;
        }
        // A call waiting for approval takes y / a / n (then an optional note and Enter).
        if self.tools.pending.is_some() && !ctrl && !alt {
            if self.tools.deny_note {
                if key.code == Enter {
                    let note = self.input.text().trim().to_string();
                    self.input.clear();
                    self.answer_approval(ApprovalDecision::Deny {
                        note: (!note.is_empty()).then_some(note),
                    });
                    return vec![];
                }
                if key.code != Esc {
                    self.input.handle_key(key);
                    return vec![];
                }
            } else {
                match key.code {
                    Char('y') | Char('Y') => {
                        self.answer_approval(ApprovalDecision::Once);
                        return vec![];
                    }
                    Char('a') | Char('A') => {
                        self.answer_approval(ApprovalDecision::Session);
                        return vec![];
                    }
                    Char('n') | Char('N') => {
                        self.tools.deny_note = true;
                        self.input.clear();
                        return vec![];
                    }
                    Esc => {}
                    _ => return vec![],
                }
            }
        }
        match key.code {
            Char('c') if ctrl => {
                if self.running.is_some() {
                    self.stop_generation();
                    self.info("stopped; the partial answer is kept");
                    return vec![];
                }
                if !self.input.is_empty() {
                    self.input.clear();
                    return vec![];
                }
                if self
                    .ctrl_c_at
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
                {
                    return self.quit();
                }
                self.ctrl_c_at = Some(Instant::now());
                self.info("press Ctrl+C again to quit (or Ctrl+D)");
                return vec![];
            }
            Char('d') if ctrl && self.input.is_empty() => return self.quit(),
            Esc => {
                if self.running.is_some() {
                    self.stop_generation();
                    self.info("stopped; the partial answer is kept");
                } else {
                    self.message = None;
                }
                return vec![];
            }
            F(1) => {
                self.overlay = Some(Overlay::Help);
                return vec![];
            }
            Char('?') if self.input.is_empty() => {
                self.overlay = Some(Overlay::Help);
                return vec![];
            }
            Char('g') if ctrl => {
                self.wrap_up();
                return vec![];
            }
            Char('o') if ctrl => {
                self.toggle_latest_fold();
                return vec![];
            }
            Char('r') if ctrl => {
                self.show_reasoning = !self.show_reasoning;
                self.info(if self.show_reasoning {
                    "reasoning shown"
                } else {
                    "reasoning hidden"
                });
                return vec![];
            }
            Char('l') if ctrl => {
                self.scroll_up = 0;
                return vec![];
            }
            Left if alt => {
                self.step_budget(false);
                return vec![];
            }
            Right if alt => {
                self.step_budget(true);
                return vec![];
            }
            PageUp => {
                self.scroll_by(self.viewport_height.saturating_sub(2).max(1) as isize);
                return vec![];
            }
            PageDown => {
                self.scroll_by(-(self.viewport_height.saturating_sub(2).max(1) as isize));
                return vec![];
            }
            Home if ctrl || self.input.is_empty() => {
                self.scroll_up = usize::MAX / 2;
                return vec![];
            }
            End if ctrl || self.input.is_empty() => {
                self.scroll_up = 0;
                return vec![];
            }
            Tab => {
                let c = self.completions();
                if let Some(command) = c.get(self.completion_index.min(c.len().saturating_sub(1))) {
                    let text = if command.args().is_empty() {
                        format!("/{}", command.name())
                    } else {
                        format!("/{} ", command.name())
                    };
                    self.input.set_text(&text);
                    self.completion_index = 0;
                }
                return vec![];
            }
            Up | Down if !self.completions().is_empty() && self.input.text().len() > 1 => {
                let n = self.completions().len();
                self.completion_index = if key.code == Up {
                    (self.completion_index + n - 1) % n
                } else {
                    (self.completion_index + 1) % n
                };
                return vec![];
            }
            _ => {}
        }
        match self.input.handle_key(key) {
            InputAction::Submit(text) => {
                self.completion_index = 0;
                // A command picked from the popup with Enter.
                let c = self.completions_for(&text);
                if let Some(spec) = c {
                    return self.submit(spec);
                }
                self.submit(text)
            }
            InputAction::HistoryPrev => {
                let draft = self.input.text();
                if let Some(h) = self.history.prev(&draft) {
                    let h = h.to_string();
                    self.input.set_text(&h);
                }
                vec![]
            }
            InputAction::HistoryNext => {
                if let Some(h) = self.history.next() {
                    self.input.set_text(&h);
                }
                vec![]
            }
            _ => {
                self.completion_index = 0;
                vec![]
            }
        }
    }

    /// When Enter is pressed on a partial command name with the popup open, the selected
    /// command (if it takes no arguments) runs; otherwise the text is submitted as typed.
    fn completions_for(&self, text: &str) -> Option<String> {
        if !text.starts_with('/') || text.contains(' ') || commands::parse(text).is_ok() {
            return None;
        }
        let c = commands::complete(&text[1..]);
        let command = c.get(self.completion_index.min(c.len().saturating_sub(1)))?;
        command
            .args()
            .is_empty()
            .then(|| format!("/{}", command.name()))
    }

    pub fn handle_paste(&mut self, text: &str) {
        self.input.insert_str(text);
    }

    pub fn handle_mouse(&mut self, m: MouseEvent) {
        match m.kind {
            MouseEventKind::ScrollUp => self.scroll_by(3),
            MouseEventKind::ScrollDown => self.scroll_by(-3),
            _ => {}
        }
    }

    /// An event from the engine for the running request.
    pub fn handle_engine(&mut self, ev: Event) -> Vec<Effect> {
        let ev = match ev {
            Event::ContextFull(e) => Event::Error(e),
            Event::Warning(w) => {
                self.warn(w);
                return vec![];
            }
            ev => ev,
        };
        // A request the user stopped before it produced anything ends with an error
        // ("cancelled", e.g. from inside the template render): the turn is kept as
        // interrupted and saved, like one the engine was too slow to end.
        if matches!(ev, Event::Error(_))
            && self
                .running
                .as_ref()
                .is_some_and(|r| r.controls.is_cancelled())
        {
            return self.abandon_turn();
        }
        let Some(turn) = self.turns.last_mut() else {
            return vec![];
        };
        match ev {
            Event::Started {
                prompt_tokens,
                reused_tokens,
            } => {
                if let Some(r) = &mut self.running {
                    r.prompt_tokens = prompt_tokens;
                    r.reused_tokens = reused_tokens;
                }
                self.context_used = prompt_tokens;
            }
            // The chat offers the model no tools yet, so no call, approval or result
            // reaches it.
            Event::ToolCall(c) => {
                // A call ends the reasoning as the answer's start does.
                if let Some(r) = &mut self.running {
                    if !r.answer_started {
                        r.answer_started = true;
                        turn.reasoning_folded = true;
                        turn.thinking_ms = Some(r.started.elapsed().as_millis() as u64);
                        turn.reasoning_tokens = r.reasoning_tokens;
                    }
                }
                let step = turn.steps + 1;
                turn.tools.push(ToolCard::new(c, step));
            }
            Event::Step { .. } => {
                turn.steps += 1;
                start_next_card(turn);
            }
            Event::ApprovalNeeded(r) => {
                if let Some(card) = turn.tools.iter_mut().find(|c| c.call.id == r.call.id) {
                    card.state = CardState::WaitingApproval;
                }
                self.tools.pending = Some(r);
                self.tools.deny_note = false;
                self.scroll_up = 0;
            }
            Event::ToolResult(r) => {
                if let Some(card) = turn.tools.iter_mut().find(|c| c.call.id == r.id) {
                    let denied = card.state == CardState::Denied;
                    card.finish(&r, denied);
                }
                start_next_card(turn);
            }
            Event::Warning(_) | Event::ContextFull(_) | Event::Logprobs(_) => {}
            Event::Reasoning(t) => {
                turn.reasoning.push_str(&t);
            }
            Event::Content(t) => {
                if let Some(r) = &mut self.running {
                    if !r.answer_started {
                        r.answer_started = true;
                        turn.reasoning_folded = true;
                        turn.thinking_ms = Some(r.started.elapsed().as_millis() as u64);
                        turn.reasoning_tokens = r.reasoning_tokens;
                    }
                }
                turn.answer.push_str(&t);
            }
            Event::Progress {
                reasoning_tokens,
                completion_tokens,
                tokens_per_s,
            } => {
                if let Some(r) = &mut self.running {
                    r.reasoning_tokens = reasoning_tokens;
                    r.completion_tokens = completion_tokens;
                    r.tokens_per_s = tokens_per_s;
                }
                if !self.running.as_ref().is_some_and(|r| r.answer_started) {
                    turn.reasoning_tokens = reasoning_tokens;
                }
            }
            Event::Done(d) => {
                self.tools.pending = None;
                self.tools.deny_note = false;
                turn.state = if d.finish_reason == FinishReason::Cancelled {
                    TurnState::Interrupted
                } else {
                    TurnState::Done
                };
                turn.reasoning_tokens = d.usage.reasoning_tokens;
                turn.thinking_forced = d.thinking_forced;
                if turn.thinking_ms.is_none() && !turn.reasoning.is_empty() {
                    turn.thinking_ms = self
                        .running
                        .as_ref()
                        .map(|r| r.started.elapsed().as_millis() as u64);
                }
                turn.reasoning_folded = !turn.answer.is_empty();
                let stats = TurnStats::from(&d);
                turn.stats = Some(stats.clone());
                self.context_used = d.usage.prompt_tokens + d.usage.completion_tokens;
                self.last_ttft_ms = Some(d.timings.ttft_ms);
                self.last_tokens_per_s = Some(d.timings.decode_tokens_per_s);
                self.running = None;
                let turn_record = Turn {
                    user: turn.user.clone(),
                    reasoning: turn.reasoning.clone(),
                    answer: turn.answer.clone(),
                    stats: Some(stats),
                    tools: turn.tools.iter().map(ToolCard::record).collect(),
                };
                self.session.turns.truncate(self.turns.len() - 1);
                self.session.turns.push(turn_record);
                self.check_context();
                return vec![Effect::Save];
            }
            Event::Error(e) => {
                self.tools.pending = None;
                self.tools.deny_note = false;
                turn.state = TurnState::Failed(e.clone());
                self.running = None;
                self.error(e);
            }
        }
        vec![]
    }

    /// Ctrl+O: folds or unfolds the most recent foldable cell: a tool output, or the
    /// reasoning of the latest turn that has one.
    fn toggle_latest_fold(&mut self) {
        for t in self.turns.iter_mut().rev() {
            if let Some(c) = t.tools.iter_mut().rev().find(|c| c.foldable()) {
                c.folded = !c.folded;
                return;
            }
            if !t.reasoning.is_empty() {
                t.reasoning_folded = !t.reasoning_folded;
                return;
            }
        }
    }

    /// The user's answer to the pending approval (y / a / n [note]).
    fn answer_approval(&mut self, decision: ApprovalDecision) {
        let Some(req) = self.tools.pending.take() else {
            return;
        };
        self.tools.deny_note = false;
        if let Some(card) = self
            .turns
            .last_mut()
            .and_then(|t| t.tools.iter_mut().find(|c| c.call.id == req.call.id))
        {
            match decision {
                ApprovalDecision::Deny { .. } => card.state = CardState::Denied,
                _ => card.start(),
            }
        }
        if let Some(r) = &self.running {
            r.controls.answer(req.call.id.clone(), decision);
        }
    }

    fn check_context(&mut self) {
        let ctx = self.model.context.max(1);
        let pct = self.context_used * 100 / ctx;
        if pct >= 85 {
            self.warn(format!(
                "context {pct}% full ({}/{ctx} tokens): /clear starts over, /undo drops the last exchange",
                self.context_used
            ));
        }
    }
}

/// The first queued call of the turn starts running (calls run one at a time, in order),
/// unless one is waiting for the user or running.
fn start_next_card(turn: &mut TurnView) {
    if turn
        .tools
        .iter()
        .any(|c| matches!(c.state, CardState::WaitingApproval | CardState::Running))
    {
        return;
    }
    if let Some(c) = turn.tools.iter_mut().find(|c| c.state == CardState::Queued) {
        c.start();
    }
}
