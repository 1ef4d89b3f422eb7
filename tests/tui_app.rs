//! The chat app driven like a user drives it — keys in, the real engine on a fixture model,
//! a `TestBackend` terminal — through every command, including bad arguments.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use nemo::chat::session_store::{ModelIdentity, SessionFile, SessionStore};
use nemo::engine::sampler::SamplingParams;
use nemo::engine::{Engine, Session, SessionOptions};
use nemo::model::ModelFolder;
use nemo::protocol::ThinkingOptions;
use nemo::tui::app::{App, Level, ModelInfo, Overlay};
use nemo::tui::input::History;
use nemo::tui::runner::{AppMsg, Runner};
use nemo::tui::theme::Theme;

struct Harness {
    app: App,
    runner: Runner,
    rx: Receiver<AppMsg>,
    term: Terminal<TestBackend>,
    clipboard: Rc<RefCell<Vec<String>>>,
    _dir: tempfile::TempDir,
    store_dir: std::path::PathBuf,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let folder = ModelFolder::open(&common::fixture("nemotron_h_tiny")).unwrap();
        let engine = Engine::spawn(Session::new(&folder, SessionOptions::default()).unwrap());
        let store_dir = dir.path().join("sessions");
        let (tx, rx) = channel();
        let clipboard = Rc::new(RefCell::new(Vec::new()));
        let c = clipboard.clone();
        let runner = Runner::new(
            engine,
            SessionStore::new(store_dir.clone()),
            tx,
            Box::new(move |s: &str| c.borrow_mut().push(s.to_string())),
        );
        let session = SessionFile::new(
            ModelIdentity {
                path: "tiny".into(),
                config_hash: "0".into(),
            },
            SamplingParams::default(),
            ThinkingOptions {
                budget: Some(8),
                ..Default::default()
            },
            None,
        );
        let info = ModelInfo {
            name: "tiny".into(),
            backend: "cpu".into(),
            context: 4096,
            ..Default::default()
        };
        let mut app = App::new(
            Theme::dark(),
            info,
            session,
            History::load(&dir.path().join("history")),
        );
        app.max_tokens = 20;
        Harness {
            app,
            runner,
            rx,
            term: Terminal::new(TestBackend::new(100, 30)).unwrap(),
            clipboard,
            _dir: dir,
            store_dir,
        }
    }

    fn key(&mut self, code: KeyCode, m: KeyModifiers) {
        self.runner
            .send(
                &mut self.term,
                &mut self.app,
                AppMsg::Term(TermEvent::Key(KeyEvent::new(code, m))),
            )
            .unwrap();
    }

    fn type_line(&mut self, s: &str) {
        self.app.input.set_text(s);
        self.key(KeyCode::Enter, KeyModifiers::NONE);
    }

    /// Sends a message and waits for the turn to finish.
    fn turn(&mut self, s: &str) {
        self.type_line(s);
        self.runner
            .pump(
                &mut self.term,
                &mut self.app,
                &self.rx,
                Duration::from_secs(30),
            )
            .unwrap();
        assert!(self.app.running.is_none(), "the turn did not finish");
    }

    fn message(&self) -> (String, Level) {
        self.app.message.clone().expect("a message")
    }

    fn screen(&self) -> String {
        let buf = self.term.backend().buffer();
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }
}

#[test]
fn a_turn_streams_folds_reasoning_and_autosaves() {
    let mut h = Harness::new();
    h.turn("Why is the sky blue?");
    let t = h.app.turns.last().unwrap();
    assert!(!t.reasoning.is_empty() && !t.answer.is_empty());
    assert!(t.thinking_forced, "budget 8 should close thinking");
    assert!(t.reasoning_folded);
    assert!(h.screen().contains("thought for"), "{}", h.screen());
    let saved = SessionStore::new(h.store_dir.clone())
        .latest()
        .unwrap()
        .unwrap();
    assert_eq!(saved.turns.len(), 1);
    assert_eq!(saved.turns[0].answer, t.answer);
}

#[test]
fn retry_reuses_the_checkpoint_and_undo_returns_the_message() {
    let mut h = Harness::new();
    h.turn("first");
    h.turn("second");
    let reused_second = h.app.turns[1].stats.as_ref().unwrap().reused_tokens;
    assert!(reused_second > 0, "turn 2 reused nothing");
    h.type_line("/retry");
    h.runner
        .pump(&mut h.term, &mut h.app, &h.rx, Duration::from_secs(30))
        .unwrap();
    assert_eq!(h.app.turns.len(), 2);
    let s = h.app.turns[1].stats.as_ref().unwrap();
    assert!(
        s.reused_tokens > 0 && s.reused_tokens < s.prompt_tokens,
        "{s:?}"
    );
    h.type_line("/undo");
    assert_eq!(h.app.turns.len(), 1);
    assert_eq!(h.app.input.text(), "second");
}

#[test]
fn thinking_commands_and_the_slider_keys() {
    let mut h = Harness::new();
    h.type_line("/no_think");
    assert!(!h.app.thinking);
    h.type_line("/think");
    assert!(h.app.thinking);
    h.type_line("/budget 256");
    assert_eq!(h.app.budget, Some(256));
    h.key(KeyCode::Right, KeyModifiers::ALT);
    assert_eq!(h.app.budget, Some(512));
    h.key(KeyCode::Left, KeyModifiers::ALT);
    h.key(KeyCode::Left, KeyModifiers::ALT);
    assert_eq!(h.app.budget, Some(128));
    h.type_line("/budget off");
    assert_eq!(h.app.budget, Some(0));
    assert!(h.screen().contains("Thinking off"));
    h.type_line("/budget unlimited");
    assert_eq!(h.app.budget, None);
    h.type_line("/budget lots");
    assert_eq!(h.message().1, Level::Error);
    h.type_line("/wrap");
    assert!(h.message().0.contains("nothing to wrap up"));
}

#[test]
fn sessions_save_load_export_and_list() {
    let mut h = Harness::new();
    h.turn("remember this");
    h.type_line("/save keep-me");
    assert!(h.message().0.contains("keep-me"), "{:?}", h.message());
    h.type_line("/clear");
    assert!(h.app.turns.is_empty());
    h.type_line("/load keep-me");
    assert_eq!(h.app.turns.len(), 1);
    assert_eq!(h.app.turns[0].user, "remember this");
    h.type_line("/sessions");
    match &h.app.overlay {
        Some(Overlay::Sessions(rows)) => {
            assert!(rows.iter().any(|r| r.contains("keep-me")), "{rows:?}")
        }
        other => panic!("no session list: {other:?}"),
    }
    h.key(KeyCode::Esc, KeyModifiers::NONE);
    let md = h._dir.path().join("chat.md");
    h.type_line(&format!("/export {}", md.display()));
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("remember this"));
    h.type_line("/load ../etc/passwd");
    assert_eq!(h.message().1, Level::Error);
    h.type_line("/load missing-one");
    assert_eq!(h.message().1, Level::Error);
    h.type_line("/export notes.txt");
    assert_eq!(h.message().1, Level::Error);
}

#[test]
fn set_model_copy_system_help_and_quit() {
    let mut h = Harness::new();
    h.type_line("/set temperature 0.7");
    assert_eq!(h.app.sampling.temperature, 0.7);
    h.type_line("/set top_p 0.9");
    assert_eq!(h.app.sampling.top_p, 0.9);
    h.type_line("/set top_k 40");
    assert_eq!(h.app.sampling.top_k, 40);
    h.type_line("/set seed 7");
    assert_eq!(h.app.sampling.seed, Some(7));
    h.type_line("/set max_tokens 40");
    assert_eq!(h.app.max_tokens, 40);
    h.type_line("/set temperature 99");
    assert_eq!(h.message().1, Level::Error);
    h.type_line("/set colour red");
    assert_eq!(h.message().1, Level::Error);
    h.type_line("/copy");
    assert_eq!(h.message().1, Level::Warn, "nothing to copy yet");
    h.type_line("/system Be brief.");
    assert_eq!(h.app.system.as_deref(), Some("Be brief."));
    h.turn("hi");
    h.type_line("/copy");
    let clip = h.clipboard.borrow();
    assert_eq!(clip.len(), 1);
    assert!(clip[0].starts_with("\x1b]52;c;"));
    drop(clip);
    h.type_line("/model");
    assert_eq!(h.app.overlay, Some(Overlay::Model));
    h.key(KeyCode::Esc, KeyModifiers::NONE);
    h.type_line("/help");
    assert_eq!(h.app.overlay, Some(Overlay::Help));
    assert!(h.screen().contains("WRAP UP NOW"));
    h.key(KeyCode::Esc, KeyModifiers::NONE);
    h.type_line("/frobnicate");
    assert!(h.message().0.contains("frobnicate"));
    h.type_line("/quit");
    assert!(h.app.should_quit);
}

#[test]
fn esc_stops_generation_and_keeps_the_partial_answer() {
    let mut h = Harness::new();
    h.app.max_tokens = 4000;
    h.type_line("/budget unlimited");
    // The random tiny model sometimes ends a turn by itself (EOS) within a few tokens, before
    // Esc reaches the engine: such a turn says nothing about Esc, so try again (a broken Esc
    // fails every attempt). Each attempt has its own seed, so an early end can be checked:
    // it must be a real EOS, which `/retry` (same prompt, same seed) reproduces token for
    // token; a cancel that ended the turn as if finished would not come back the same.
    for attempt in 0..8 {
        h.app.sampling.seed = Some(100 + attempt);
        h.type_line("go on forever");
        // Let reasoning arrive, then stop. Wait on content, not on a count of events: under
        // a loaded machine the first events can be status messages only.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while h.app.running.is_some()
            && h.app.turns.last().is_none_or(|t| t.reasoning.is_empty())
            && std::time::Instant::now() < deadline
        {
            if let Ok(m) = h.rx.recv_timeout(Duration::from_secs(1)) {
                h.runner.send(&mut h.term, &mut h.app, m).unwrap();
            }
        }
        h.key(KeyCode::Esc, KeyModifiers::NONE);
        h.runner
            .pump(&mut h.term, &mut h.app, &h.rx, Duration::from_secs(30))
            .unwrap();
        let t = h.app.turns.last().unwrap().clone();
        if t.state == nemo::tui::app::TurnState::Done {
            let stats = t.stats.clone().expect("a finished turn has stats");
            assert_eq!(
                stats.finish_reason, "stop",
                "attempt {attempt}: the turn ended before Esc without EOS: {stats:?}"
            );
            h.type_line("/retry");
            h.runner
                .pump(&mut h.term, &mut h.app, &h.rx, Duration::from_secs(60))
                .unwrap();
            let again = h.app.turns.last().unwrap();
            assert_eq!(
                again.state,
                nemo::tui::app::TurnState::Done,
                "attempt {attempt}"
            );
            let again_stats = again.stats.clone().unwrap();
            assert_eq!(
                (
                    again_stats.finish_reason.as_str(),
                    again_stats.completion_tokens,
                    again.reasoning.as_str(),
                    again.answer.as_str()
                ),
                (
                    "stop",
                    stats.completion_tokens,
                    t.reasoning.as_str(),
                    t.answer.as_str()
                ),
                "attempt {attempt}: the turn that ended before Esc did not end at EOS"
            );
            eprintln!("attempt {attempt}: the model ended the turn (EOS) before Esc; again");
            continue;
        }
        assert_eq!(t.state, nemo::tui::app::TurnState::Interrupted);
        assert!(!t.reasoning.is_empty());
        assert_eq!(
            t.stats.as_ref().map(|s| s.finish_reason.as_str()),
            Some("cancelled")
        );
        return;
    }
    panic!("Esc never interrupted a turn in 8 attempts");
}

#[test]
fn ctrl_c_twice_on_an_empty_prompt_quits() {
    let mut h = Harness::new();
    h.key(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(!h.app.should_quit);
    h.key(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(h.app.should_quit);
}
