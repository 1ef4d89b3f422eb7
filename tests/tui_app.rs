//! The chat app driven like a user drives it — keys in, the real engine on a fixture model,
//! a `TestBackend` terminal — through every command, including bad arguments.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use nemo::chat::session_store::{ModelIdentity, SessionFile, SessionStore, Turn};
use nemo::engine::{Engine, Session, SessionOptions};
use nemo::model::ModelFolder;
use nemo::protocol::SamplingParams;
use nemo::protocol::{Budget, ThinkingOptions};
use nemo::tui::app::{App, Level, ModelInfo, Overlay};
use nemo::tui::event_loop::{AppMsg, EventLoop};
use nemo::tui::history::History;
use nemo::tui::theme::Theme;

struct Harness {
    app: App,
    event_loop: EventLoop,
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
        let event_loop = EventLoop::new(
            engine,
            SessionStore::new(store_dir.clone()),
            tx,
            Box::new(move |s: &str| c.borrow_mut().push(s.to_string())),
        );
        let session = SessionFile::new(
            ModelIdentity::of(&common::fixture("nemotron_h_tiny")).unwrap(),
            SamplingParams::default(),
            ThinkingOptions {
                budget: Budget::tokens(8),
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
            event_loop,
            rx,
            term: Terminal::new(TestBackend::new(100, 30)).unwrap(),
            clipboard,
            _dir: dir,
            store_dir,
        }
    }

    fn key(&mut self, code: KeyCode, m: KeyModifiers) {
        self.event_loop
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
        self.event_loop
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
    h.event_loop
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
    assert_eq!(h.app.budget(), Budget::Off);
    h.type_line("/think");
    // Back to the budget the session had before /no_think.
    assert_eq!(h.app.budget(), Budget::tokens(8));
    h.type_line("/budget 256");
    assert_eq!(h.app.budget(), Budget::tokens(256));
    h.key(KeyCode::Right, KeyModifiers::ALT);
    assert_eq!(h.app.budget(), Budget::tokens(512));
    h.key(KeyCode::Left, KeyModifiers::ALT);
    h.key(KeyCode::Left, KeyModifiers::ALT);
    assert_eq!(h.app.budget(), Budget::tokens(128));
    h.type_line("/budget off");
    assert_eq!(h.app.budget(), Budget::Off);
    assert!(h.screen().contains("Thinking off"));
    h.type_line("/think");
    assert_eq!(h.app.budget(), Budget::tokens(128));
    h.type_line("/budget unlimited");
    assert_eq!(h.app.budget(), Budget::Unlimited);
    // The session file keeps the one budget.
    assert_eq!(h.app.session.thinking.budget, Budget::Unlimited);
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
                h.event_loop.send(&mut h.term, &mut h.app, m).unwrap();
            }
        }
        h.key(KeyCode::Esc, KeyModifiers::NONE);
        h.event_loop
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
            h.event_loop
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

#[test]
fn quit_while_a_turn_runs_saves_it_without_waiting_for_the_engine() {
    let mut h = Harness::new();
    h.app.max_tokens = 4000;
    h.type_line("/budget unlimited");
    h.type_line("keep this turn");
    assert!(h.app.running.is_some());
    h.type_line("/quit");
    assert!(h.app.should_quit);
    assert!(h.app.running.is_none());
    let saved = SessionStore::new(h.store_dir.clone())
        .latest()
        .unwrap()
        .expect("the running turn was not saved on quit");
    assert_eq!(saved.turns.len(), 1);
    assert_eq!(saved.turns[0].user, "keep this turn");
    assert!(saved.turns[0].stats.is_none(), "the turn never finished");
}

#[test]
fn a_cancelled_request_the_engine_does_not_end_is_abandoned_after_the_grace() {
    let mut h = Harness::new();
    h.app.max_tokens = 4000;
    h.type_line("/budget unlimited");
    h.type_line("never mind");
    h.key(KeyCode::Esc, KeyModifiers::NONE);
    assert!(h.app.running.is_some(), "Esc waits for the engine a moment");
    // The engine's events are not read, as when it is stuck in a template render.
    std::thread::sleep(nemo::tui::app::CANCEL_GRACE + Duration::from_millis(20));
    h.event_loop.tick(&mut h.app);
    assert!(h.app.running.is_none(), "control did not come back");
    let t = h.app.turns.last().unwrap();
    assert_eq!(t.state, nemo::tui::app::TurnState::Interrupted);
    assert!(t.stats.is_none());
    // Its late events are dropped.
    while let Ok(m) = h.rx.recv_timeout(Duration::from_secs(2)) {
        h.event_loop.send(&mut h.term, &mut h.app, m).unwrap();
    }
    let t = h.app.turns.last().unwrap();
    assert_eq!(t.state, nemo::tui::app::TurnState::Interrupted);
    assert!(t.stats.is_none(), "a late Done was applied");
    let saved = SessionStore::new(h.store_dir.clone())
        .latest()
        .unwrap()
        .unwrap();
    assert_eq!(saved.turns.len(), 1);
    assert_eq!(saved.turns[0].user, "never mind");
}

/// A session with one finished turn, as another chat on `model` would have saved it.
fn saved_session(model: ModelIdentity, user: &str) -> SessionFile {
    let mut s = SessionFile::new(
        model,
        SamplingParams::default(),
        ThinkingOptions::default(),
        None,
    );
    s.turns.push(Turn {
        user: user.to_string(),
        answer: "an answer".into(),
        ..Turn::default()
    });
    s
}

#[test]
fn loading_a_session_from_another_model_warns_naming_both_and_goes_on() {
    let mut h = Harness::new();
    let store = SessionStore::new(h.store_dir.clone());
    let llama = ModelIdentity::of(&common::fixture("llama_tiny")).unwrap();
    store
        .save_as(&saved_session(llama, "asked llama"), "from-llama")
        .unwrap();
    let gguf = ModelIdentity::of(&common::fixture("gguf/nemotron_h_tiny.q8_0.gguf")).unwrap();
    store
        .save_as(&saved_session(gguf, "asked the gguf"), "from-gguf")
        .unwrap();
    let here = h.app.loaded_model.clone();
    store
        .save_as(&saved_session(here.clone(), "asked this one"), "same")
        .unwrap();

    h.type_line("/load from-llama");
    let (msg, level) = h.message();
    assert_eq!(level, Level::Warn, "{msg}");
    assert!(
        msg.contains("it ran on llama_tiny, not on the loaded nemotron_h_tiny"),
        "{msg}"
    );
    assert!(h
        .screen()
        .contains("ran on llama_tiny, not on the loaded nemotron_h_tiny"));
    assert_eq!(h.app.turns[0].user, "asked llama");
    // It goes on with this model, and says so when saved.
    assert_eq!(h.app.session.model, here);

    h.type_line("/load from-gguf");
    let (msg, level) = h.message();
    assert_eq!(level, Level::Warn, "{msg}");
    assert!(msg.contains("nemotron_h_tiny.q8_0.gguf"), "{msg}");

    // The same folder, changed since: told apart by its identity.
    let changed = ModelIdentity {
        config_hash: "ffffffffffffffff".into(),
        ..here.clone()
    };
    store
        .save_as(&saved_session(changed, "asked before"), "changed")
        .unwrap();
    h.type_line("/load changed");
    let (msg, level) = h.message();
    assert_eq!(level, Level::Warn, "{msg}");
    assert!(
        msg.contains(&format!(
            "it ran on another nemotron_h_tiny (identity ffffffffffffffff; this one {})",
            here.config_hash
        )),
        "{msg}"
    );

    h.type_line("/load same");
    let (msg, level) = h.message();
    assert_eq!(level, Level::Info, "{msg}");
    assert_eq!(msg, "loaded `same` (1 turns)");
}

#[test]
fn save_name_over_another_sessions_file_asks_for_save_bang_first() {
    let mut h = Harness::new();
    h.turn("mine");
    let store = SessionStore::new(h.store_dir.clone());
    let other = saved_session(h.app.loaded_model.clone(), "theirs");
    let keep = store.save_as(&other, "keep").unwrap();
    let before = std::fs::read(&keep).unwrap();

    h.type_line("/save keep");
    let (msg, level) = h.message();
    assert_eq!(level, Level::Warn, "{msg}");
    assert!(msg.contains("/save! keep replaces it"), "{msg}");
    assert!(msg.contains(&other.id), "names what is there: {msg}");
    assert!(h
        .screen()
        .contains("not saved: keep.json exists; /save! keep replaces it"));
    assert_eq!(std::fs::read(&keep).unwrap(), before, "left as it was");

    // A file that is no session at all is not written over either.
    let notes = h.store_dir.join("notes.json");
    std::fs::write(&notes, "my notes").unwrap();
    h.type_line("/save notes");
    assert_eq!(h.message().1, Level::Warn);
    assert!(
        h.message().0.contains("not a readable session"),
        "{:?}",
        h.message()
    );
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes");

    h.type_line("/save! keep");
    let (msg, level) = h.message();
    assert_eq!(level, Level::Info, "{msg}");
    assert!(msg.contains("keep.json"), "{msg}");
    assert_eq!(store.load("keep").unwrap().id, h.app.session.id);

    // This session's own copy is updated without a question.
    h.type_line("/save mine");
    assert_eq!(h.message().1, Level::Info);
    h.turn("more");
    h.type_line("/save mine");
    assert_eq!(h.message().1, Level::Info, "{:?}", h.message());
    assert_eq!(store.load("mine").unwrap().turns.len(), 2);
    // And a plain /save says where it went.
    h.type_line("/save");
    assert!(h.message().0.starts_with("saved "), "{:?}", h.message());
}

#[cfg(unix)]
#[test]
fn sessions_and_load_never_block_on_a_fifo_in_the_sessions_folder() {
    let mut h = Harness::new();
    std::fs::create_dir_all(&h.store_dir).unwrap();
    let fifo = h.store_dir.join("pipe.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Watchdog: a reader blocked for 10 s is released (opening the FIFO for writing), so
    // a regression fails the assertions below instead of hanging the test run.
    let (done, rx) = channel::<()>();
    let f = fifo.clone();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            use std::os::unix::fs::OpenOptionsExt;
            for _ in 0..100 {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&f);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    h.type_line("/sessions");
    let rows = match &h.app.overlay {
        Some(Overlay::Sessions(rows)) => rows.clone(),
        other => panic!("no session list: {other:?}"),
    };
    h.key(KeyCode::Esc, KeyModifiers::NONE);
    h.type_line("/load pipe");
    let _ = done.send(());
    watchdog.join().unwrap();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("pipe") && r.contains("is a FIFO, not a regular file")),
        "{rows:?}"
    );
    let (msg, level) = h.message();
    assert_eq!(level, Level::Error);
    assert!(msg.contains("pipe.json is a FIFO"), "{msg}");
}
