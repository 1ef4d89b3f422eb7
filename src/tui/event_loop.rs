//! The main loop: merges terminal input and engine events on one channel, updates the
//! `App`, carries out its `Effect`s, and redraws at most ~30 times a second. Generic over
//! ratatui's `Backend`, so tests drive it with `TestBackend` and the real engine.
//!
//! Idle costs nothing: the loop blocks on the channel (waking once a second for timers,
//! or at the app's next deadline); it never polls in a busy loop. Engine events are
//! tagged with their request's number, and events of a request the user moved away from
//! (cancel, /clear, /undo, quit) are dropped.
//!
//! Nothing here waits on the engine: a cancelled request that does not end within
//! `app::CANCEL_GRACE` is abandoned by `App::tick`, and quitting (a key, a command, or
//! `AppMsg::Signal`) returns from `run` before anything else, even a redraw.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use ratatui::backend::Backend;
use ratatui::Terminal;

use super::app::{App, Effect, Overlay};
use super::view;
use crate::chat::export::export_markdown;
use crate::chat::session_store::{write_atomic, SessionStore, StoreError};
use std::sync::{Arc, Mutex};

use crate::agent::policy::ApprovalMode;
use crate::agent::turn::Agent;
use crate::protocol::Event;
use crate::remote::Backend as EngineBackend;

pub enum AppMsg {
    Term(crossterm::event::Event),
    Engine(u64, Event),
    /// A termination signal (its number: SIGTERM, SIGHUP, SIGINT from `kill`): quit as
    /// `/quit` does; `EventLoop::quit_signal` keeps it for the exit code.
    Signal(i32),
}

const FRAME: Duration = Duration::from_millis(33);

pub struct EventLoop {
    /// The in-process engine, or a remote endpoint (`--endpoint`).
    pub engine: EngineBackend,
    pub store: SessionStore,
    pub tx: Sender<AppMsg>,
    /// Where `/copy` sends its OSC 52 sequence (the terminal; a buffer in tests).
    pub clipboard: Box<dyn FnMut(&str)>,
    /// The signal that ended the loop, if one did.
    pub quit_signal: Option<i32>,
    /// Why the last save of the session failed (None after a save that worked): the chat
    /// prints it on exit, when the status line is gone.
    pub save_error: Option<String>,
    /// The agent that runs a turn offering tools (None: the chat has no tools). A turn's
    /// thread holds it for the turn.
    pub agent: Option<Arc<Mutex<Agent>>>,
    /// An `/approval` change, applied when the next turn takes the agent.
    approval: Arc<Mutex<Option<ApprovalMode>>>,
    request: u64,
}

/// OSC 52: asks the terminal to put `text` on the system clipboard (works over SSH).
pub fn osc52(text: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len() * 4 / 3 + 16);
    out.push_str("\x1b]52;c;");
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out.push('\x07');
    out
}

impl EventLoop {
    pub fn new(
        engine: impl Into<EngineBackend>,
        store: SessionStore,
        tx: Sender<AppMsg>,
        clipboard: Box<dyn FnMut(&str)>,
    ) -> Self {
        EventLoop {
            engine: engine.into(),
            store,
            tx,
            clipboard,
            quit_signal: None,
            save_error: None,
            agent: None,
            approval: Arc::default(),
            request: 0,
        }
    }

    fn apply(&mut self, app: &mut App, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Submit(req) if !req.tools.is_empty() && self.agent.is_some() => {
                    self.request += 1;
                    let id = self.request;
                    let tx = self.tx.clone();
                    let submitter = self.engine.submitter();
                    let agent = self.agent.clone();
                    let approval = self.approval.clone();
                    // The loop runs tools and waits for approvals: never on this thread.
                    std::thread::spawn(move || {
                        let Some(agent) = agent else { return };
                        let mut agent = agent.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(mode) =
                            approval.lock().unwrap_or_else(|e| e.into_inner()).take()
                        {
                            agent.policy.set_mode(mode);
                        }
                        let mut emit = |ev: Event| {
                            let _ = tx.send(AppMsg::Engine(id, ev));
                        };
                        let _ = agent.run_turn(&submitter, *req, &mut emit);
                    });
                }
                Effect::SetApproval(mode) => {
                    *self.approval.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
                }
                Effect::Submit(req) => {
                    self.request += 1;
                    let id = self.request;
                    let events = self.engine.submit(*req);
                    let tx = self.tx.clone();
                    std::thread::spawn(move || {
                        for ev in events {
                            if tx.send(AppMsg::Engine(id, ev)).is_err() {
                                break;
                            }
                        }
                    });
                }
                Effect::ResetEngine => {
                    self.request += 1;
                    self.engine.reset();
                }
                Effect::Save => {
                    app.session.touch();
                    if let Err(e) = self.store.save(&app.session) {
                        app.error(format!("could not save the session: {e}"));
                    }
                }
                Effect::SaveAs { name, replace } => {
                    app.session.touch();
                    let r = match &name {
                        Some(n) => self.store.save_named(&app.session, n, replace),
                        None => self.store.save(&app.session),
                    };
                    self.save_error = r.as_ref().err().map(|e| e.to_string());
                    match (r, name) {
                        (Ok(p), _) => app.info(format!("saved {}", p.display())),
                        // The way on first: a long line is cut at the terminal's edge.
                        (Err(StoreError::Exists { what, .. }), Some(n)) => app.warn(format!(
                            "not saved: {n}.json exists; /save! {n} replaces it, or pick another name (it holds {what})"
                        )),
                        (Err(e), _) => app.error(format!("could not save the session: {e}")),
                    }
                }
                Effect::Load(name) => match self.store.load(&name) {
                    Ok(s) => {
                        let n = s.turns.len();
                        let other_model = app.load_session(s);
                        match other_model {
                            Some(w) => app.warn(format!("loaded `{name}` ({n} turns), but {w}")),
                            None => app.info(format!("loaded `{name}` ({n} turns)")),
                        }
                    }
                    Err(e) => app.error(e.to_string()),
                },
                Effect::ListSessions => match self.store.list() {
                    Ok(list) => {
                        let rows = list
                            .iter()
                            .map(|s| match &s.corrupt {
                                Some(why) => format!("{:<28} (unreadable: {why})", s.name),
                                None => format!(
                                    "{:<28} {:<20} {:>3} turns  {}",
                                    s.name,
                                    s.updated.get(..16).unwrap_or(&s.updated),
                                    s.turns,
                                    s.preview
                                ),
                            })
                            .collect();
                        app.overlay = Some(Overlay::Sessions(rows));
                    }
                    Err(e) => app.error(e.to_string()),
                },
                Effect::Export(file) => {
                    let path = PathBuf::from(&file);
                    match write_atomic(&path, export_markdown(&app.session).as_bytes()) {
                        Ok(()) => app.info(format!("exported to {}", path.display())),
                        Err(e) => app.error(format!("{}: {e}", path.display())),
                    }
                }
                Effect::Copy(text) => (self.clipboard)(&osc52(&text)),
                Effect::SaveHistory => {
                    if let Err(e) = app.history.save() {
                        app.warn(format!("could not save the input history: {e}"));
                    }
                }
                Effect::Quit => app.should_quit = true,
            }
        }
    }

    fn handle(&mut self, app: &mut App, msg: AppMsg) {
        let effects = match msg {
            AppMsg::Term(crossterm::event::Event::Key(k)) => app.handle_key(k),
            AppMsg::Term(crossterm::event::Event::Paste(p)) => {
                app.handle_paste(&p);
                vec![]
            }
            AppMsg::Term(crossterm::event::Event::Mouse(m)) => {
                app.handle_mouse(m);
                vec![]
            }
            AppMsg::Term(_) => vec![], // resize: the redraw picks up the new size
            AppMsg::Engine(id, ev) => {
                if id != self.request || app.running.is_none() {
                    return;
                }
                app.handle_engine(ev)
            }
            AppMsg::Signal(sig) => {
                self.quit_signal.get_or_insert(sig);
                app.quit()
            }
        };
        self.apply(app, effects);
    }

    /// Carries out the app's timers (a cancelled request abandoned after its grace).
    pub fn tick(&mut self, app: &mut App) {
        let effects = app.tick(Instant::now());
        self.apply(app, effects);
    }

    /// Quits as `/quit` does (a running turn saved) unless the app already did: for a loop
    /// that ended another way (the terminal gone, an error).
    pub fn quit(&mut self, app: &mut App) {
        if !app.should_quit {
            let effects = app.quit();
            self.apply(app, effects);
        }
    }

    /// Runs until the app quits or the channel closes.
    pub fn run<B: Backend>(
        &mut self,
        terminal: &mut Terminal<B>,
        app: &mut App,
        rx: &Receiver<AppMsg>,
    ) -> std::io::Result<()> {
        let mut dirty = true;
        let mut last_draw = Instant::now() - FRAME;
        loop {
            // Quit first: a redraw could block on a terminal that stopped reading.
            if app.should_quit {
                return Ok(());
            }
            if dirty && last_draw.elapsed() >= FRAME {
                draw(terminal, app)?;
                dirty = false;
                last_draw = Instant::now();
            }
            let mut wait = if dirty {
                FRAME.saturating_sub(last_draw.elapsed())
            } else {
                Duration::from_secs(1)
            };
            if let Some(d) = app.next_deadline() {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    self.handle(app, msg);
                    while let Ok(m) = rx.try_recv() {
                        self.handle(app, m);
                    }
                    dirty = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if app.next_deadline().is_some_and(|d| Instant::now() >= d) {
                self.tick(app);
                dirty = true;
            }
        }
    }

    /// Feeds messages (and the app's timers) until the turn ends or nothing happens for
    /// `idle` (tests: wait for a turn to finish).
    pub fn pump<B: Backend>(
        &mut self,
        terminal: &mut Terminal<B>,
        app: &mut App,
        rx: &Receiver<AppMsg>,
        idle: Duration,
    ) -> std::io::Result<()> {
        let mut last = Instant::now();
        while app.running.is_some() {
            let mut wait = idle.saturating_sub(last.elapsed());
            if let Some(d) = app.next_deadline() {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    self.handle(app, msg);
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    if app.next_deadline().is_none() && last.elapsed() >= idle {
                        break;
                    }
                }
            }
            self.tick(app);
        }
        draw(terminal, app)?;
        Ok(())
    }

    /// One message, as the loop would handle it (tests).
    pub fn send<B: Backend>(
        &mut self,
        terminal: &mut Terminal<B>,
        app: &mut App,
        msg: AppMsg,
    ) -> std::io::Result<()> {
        self.handle(app, msg);
        draw(terminal, app)?;
        Ok(())
    }
}

/// Draws `app` and hands it what the draw found (the transcript's height and scroll
/// bound).
fn draw<B: Backend>(terminal: &mut Terminal<B>, app: &mut App) -> std::io::Result<()> {
    let mut viewport = view::Viewport::default();
    terminal.draw(|f| viewport = view::draw(f, app))?;
    app.set_viewport(viewport.height, viewport.max_scroll);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::osc52;

    #[test]
    fn osc52_encodes_base64_with_padding() {
        assert_eq!(osc52("hi"), "\x1b]52;c;aGk=\x07");
        assert_eq!(osc52("héllo!"), "\x1b]52;c;aMOpbGxvIQ==\x07");
    }
}
