//! `nemo chat` end to end: the real binary in a tmux pseudo terminal on a fixture model.
//! One test sets `/budget 16`, sends a message, waits for the turn to finish, quits, and
//! checks the screen and the exit code. The others run a model whose chat template spins
//! (a render that would take hours) and check that Esc gives control back, that `/quit`,
//! Ctrl+D, SIGTERM and SIGHUP end the process with the terminal out of the alternate
//! screen, and that the interrupted turn is saved. Needs tmux (`.ci/run` installs it);
//! without it each test says `SKIP`, and fails under CI
//! (tests/common/skip.rs). Each test runs its own tmux server (`-L`,
//! no config file), so a developer's tmux setup changes nothing. One more runs the chat
//! with `--endpoint` against `nemo serve` on the fixture.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A chat template that renders for hours: 10^12 loop iterations, no output.
const SPINNING_TEMPLATE: &str = "{% for i in range(10000) %}{% for j in range(10000) %}\
{% for k in range(10000) %}{% endfor %}{% endfor %}{% endfor %}";

/// One tmux server with one session running `nemo chat` under `sh`, which writes nemo's
/// exit code to `exit` and then stays, so the pane (and its alternate-screen flag) can
/// be read after nemo ended.
struct Chat {
    socket: String,
    session: String,
    exit_file: PathBuf,
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Chat {
    /// None when tmux is not installed.
    fn start(name: &str, model: &Path, flags: &str) -> Option<Chat> {
        Chat::start_with_config(name, model, flags, "")
    }

    /// `start` with `config` as the chat's config.toml.
    fn start_with_config(name: &str, model: &Path, flags: &str, config: &str) -> Option<Chat> {
        let args = format!("--model {} {flags}", model.display());
        Chat::start_command(name, "", &args, config)
    }

    /// `nemo chat ARGS` (shell words after `chat`) with `env` (shell assignments) in its
    /// environment and `config` as its config.toml.
    fn start_command(name: &str, env: &str, args: &str, config: &str) -> Option<Chat> {
        if Command::new("tmux").arg("-V").output().is_err() {
            common::skip::require_or_skip("tmux is not installed (apt-get install tmux)");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.toml"), config).unwrap();
        let exit_file = tmp.path().join("exit");
        let data_dir = tmp.path().join("data");
        let cmd = format!(
            "{env} NEMO_DEVICE=cpu NEMO_CONFIG={cfg} NEMO_DATA_DIR={data} {bin} chat {args}; echo $? > {exit}; sleep 600",
            cfg = tmp.path().join("config.toml").display(),
            data = data_dir.display(),
            bin = common::nemo_bin().display(),
            exit = exit_file.display(),
        );
        let chat = Chat {
            socket: format!("nemo-test-{}-{name}", std::process::id()),
            session: "chat".into(),
            exit_file,
            data_dir,
            _tmp: tmp,
        };
        chat.tmux(&[
            "new-session",
            "-d",
            "-s",
            &chat.session,
            "-x",
            "100",
            "-y",
            "32",
            &cmd,
        ]);
        Some(chat)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.session])
    }

    fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            if t0.elapsed() > timeout {
                panic!("`{what}` did not appear within {timeout:?}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Sends a message and waits until its turn runs (the status bar says so).
    fn send_message(&self, text: &str) {
        self.wait_for("Type a message", Duration::from_secs(60));
        self.keys(&[text, "Enter"]);
        self.wait_for("● generating", Duration::from_secs(10));
    }

    /// nemo's exit code, once it has exited; panics if that takes longer than `timeout`.
    fn exit_code(&self, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Ok(code) = std::fs::read_to_string(&self.exit_file) {
                if code.ends_with('\n') {
                    return code.trim().to_string();
                }
            }
            if t0.elapsed() > timeout {
                panic!(
                    "nemo chat did not exit within {timeout:?}; the screen:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alternate_screen_on(&self) -> bool {
        self.tmux(&[
            "display-message",
            "-p",
            "-t",
            &self.session,
            "#{alternate_on}",
        ])
        .trim()
            == "1"
    }

    /// The pid of nemo: the only child of the pane's shell.
    fn nemo_pid(&self) -> String {
        let shell = self
            .tmux(&["display-message", "-p", "-t", &self.session, "#{pane_pid}"])
            .trim()
            .to_string();
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        let pids: Vec<&str> = children.split_whitespace().collect();
        assert_eq!(pids.len(), 1, "the pane's shell runs one process: {pids:?}");
        pids[0].to_string()
    }

    /// The saved sessions' contents.
    fn saved_sessions(&self) -> Vec<String> {
        let dir = self.data_dir.join("sessions");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let socket = self.tmux(&["display-message", "-p", "#{socket_path}"]);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        // tmux leaves the socket file behind.
        if !socket.trim().is_empty() {
            let _ = std::fs::remove_file(socket.trim());
        }
    }
}

/// A copy of the tiny fixture whose chat template spins.
fn spinning_model() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("spinning_template");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(common::fixture("nemotron_h_tiny")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(dst.join("chat_template.jinja"), SPINNING_TEMPLATE).unwrap();
    (tmp, dst)
}

#[test]
fn chat_in_a_terminal_with_budget_16_answers_and_quits_cleanly() {
    let Some(chat) = Chat::start(
        "budget",
        &common::fixture("nemotron_h_tiny"),
        // No tools: their schemas would change the prompt this greedy run depends on.
        "--temperature 0 --max-tokens 40 --tools none",
    ) else {
        return;
    };
    chat.wait_for("Type a message", Duration::from_secs(30));
    chat.keys(&["/budget 16", "Enter"]);
    chat.wait_for("budget 16 tokens", Duration::from_secs(10));
    chat.keys(&["Why is the sky blue?", "Enter"]);
    let screen = chat.wait_for("prompt tokens", Duration::from_secs(60));
    assert!(screen.contains("You"), "{screen}");
    assert!(screen.contains("Why is the sky blue?"), "{screen}");
    assert!(
        screen.contains("thought for"),
        "the reasoning did not fold into a summary:\n{screen}"
    );
    assert!(
        screen.contains("closed by budget"),
        "the budget did not close thinking:\n{screen}"
    );
    chat.keys(&["/quit", "Enter"]);
    assert_eq!(chat.exit_code(Duration::from_secs(10)), "0", "exit code");
    assert!(!chat.alternate_screen_on(), "the terminal was not restored");
    // The turn was autosaved.
    let saved = chat.saved_sessions();
    assert_eq!(saved.len(), 1, "no autosaved session");
    assert!(saved[0].contains("Why is the sky blue?"));
}

#[test]
fn chat_with_an_endpoint_shows_the_servers_answer_and_quits_cleanly() {
    // `nemo serve` on the fixture (stopped when `server` drops, the test failing or not),
    // and the chat against it. The server holds the answer to one text, which the chat
    // can only show if it came from there.
    let server = common::serve::Server::start(&common::fixture("nemotron_h_tiny"), &[]);
    let answer = "Rayleigh scattering makes it blue";
    let env = format!(
        r#"NEMO_ENDPOINT_EXTRA_BODY='{{"structured_outputs": {{"choice": ["{answer}"]}}}}' NEMO_API_KEY= OPENAI_API_KEY="#
    );
    let args = format!(
        "--endpoint {} --no-think --temperature 0 --max-tokens 40 --tools none",
        server.base
    );
    let Some(chat) = Chat::start_command("endpoint", &env, &args, "") else {
        return;
    };
    let screen = chat.wait_for("Type a message", Duration::from_secs(30));
    assert!(
        screen.contains("endpoint · 127.0.0.1:"),
        "the status bar does not name the endpoint:\n{screen}"
    );
    chat.keys(&["Why is the sky blue?", "Enter"]);
    let screen = chat.wait_for(answer, Duration::from_secs(60));
    assert!(screen.contains("Why is the sky blue?"), "{screen}");
    chat.wait_for("○ idle", Duration::from_secs(30));
    chat.keys(&["/quit", "Enter"]);
    assert_eq!(chat.exit_code(Duration::from_secs(10)), "0", "exit code");
    assert!(!chat.alternate_screen_on(), "the terminal was not restored");
    // The server answered it (one chat completion, 200).
    assert_eq!(
        server.metric("nemo_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"),
        1.0,
        "{}",
        server.log()
    );
}

#[test]
fn esc_gives_control_back_and_quit_exits_while_the_template_spins() {
    let (_model_dir, model) = spinning_model();
    let Some(chat) = Chat::start("esc", &model, "") else {
        return;
    };
    chat.send_message("first message");
    chat.keys(&["Escape"]);
    // The bug: the turn stayed "generating" until the render ended (hours).
    chat.wait_for("○ idle", Duration::from_secs(5));
    chat.keys(&["second message", "Enter"]);
    let screen = chat.wait_for("● generating", Duration::from_secs(10));
    assert!(
        !screen.contains("still being generated"),
        "the input was not accepted:\n{screen}"
    );
    // Quitting with that turn queued behind the spinning render.
    chat.keys(&["/quit", "Enter"]);
    assert_eq!(chat.exit_code(Duration::from_secs(10)), "0", "exit code");
    assert!(!chat.alternate_screen_on(), "the terminal was not restored");
    let saved = chat.saved_sessions();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(
        saved[0].contains("first message") && saved[0].contains("second message"),
        "{}",
        saved[0]
    );
}

#[test]
fn ctrl_d_quits_while_the_template_spins_and_saves_the_turn() {
    let (_model_dir, model) = spinning_model();
    let Some(chat) = Chat::start("ctrl-d", &model, "") else {
        return;
    };
    chat.send_message("a message to keep");
    chat.keys(&["C-d"]);
    assert_eq!(chat.exit_code(Duration::from_secs(10)), "0", "exit code");
    assert!(!chat.alternate_screen_on(), "the terminal was not restored");
    let saved = chat.saved_sessions();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].contains("a message to keep"), "{}", saved[0]);
}

#[test]
fn sigterm_and_sighup_restore_the_terminal_and_save_the_session() {
    let (_model_dir, model) = spinning_model();
    for (signal, code) in [("TERM", "143"), ("HUP", "129")] {
        let Some(chat) = Chat::start(&format!("sig{signal}"), &model, "") else {
            return;
        };
        chat.send_message(&format!("interrupted by SIG{signal}"));
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &chat.nemo_pid()])
            .status()
            .unwrap();
        assert!(killed.success());
        assert_eq!(chat.exit_code(Duration::from_secs(10)), code, "SIG{signal}");
        assert!(
            !chat.alternate_screen_on(),
            "SIG{signal}: the terminal was left in the alternate screen"
        );
        let saved = chat.saved_sessions();
        assert_eq!(saved.len(), 1, "SIG{signal}: {saved:?}");
        assert!(
            saved[0].contains(&format!("interrupted by SIG{signal}")),
            "{}",
            saved[0]
        );
    }
}

/// Two user tools that create a file each (so they ask first), with an `enum` argument so
/// the random-weight model's forced calls are harmless and known.
const MARK_TOOLS: &str = r#"
[tools.mark_a]
command = "touch {file}"
description = "Create a.txt"
parameters = { type = "object", properties = { file = { type = "string", enum = ["a.txt"] } }, required = ["file"], additionalProperties = false }
read_only = false

[tools.mark_b]
command = "touch {file}"
description = "Create b.txt"
parameters = { type = "object", properties = { file = { type = "string", enum = ["b.txt"] } }, required = ["file"], additionalProperties = false }
read_only = false
"#;

#[test]
fn chat_asks_before_a_tool_runs_and_obeys_y_and_n() {
    let ws = tempfile::tempdir().unwrap();
    let flags = format!(
        "--tools mark_a,mark_b --approval ask --max-steps 1 --no-think --max-tokens 80 --workspace {}",
        ws.path().display()
    );
    let Some(chat) = Chat::start_with_config(
        "approve",
        &common::fixture("nemotron3_tiny"),
        &flags,
        MARK_TOOLS,
    ) else {
        return;
    };
    chat.wait_for("Type a message", Duration::from_secs(30));
    chat.keys(&["/tool_choice mark_a", "Enter"]);
    chat.wait_for(
        "tool choice for the next turns: mark_a",
        Duration::from_secs(10),
    );
    chat.keys(&["mark it", "Enter"]);
    let screen = chat.wait_for("Approve?", Duration::from_secs(60));
    assert!(screen.contains("mark_a  waiting for approval"), "{screen}");
    assert!(
        !ws.path().join("a.txt").exists(),
        "it ran before the answer"
    );
    chat.keys(&["y"]);
    let screen = chat.wait_for("mark_a  done", Duration::from_secs(30));
    assert!(
        ws.path().join("a.txt").exists(),
        "y did not run it:\n{screen}"
    );

    chat.wait_for("Message · Enter sends", Duration::from_secs(30));
    chat.keys(&["/tool_choice mark_b", "Enter"]);
    chat.wait_for(
        "tool choice for the next turns: mark_b",
        Duration::from_secs(10),
    );
    chat.keys(&["and the other", "Enter"]);
    chat.wait_for("Approve?", Duration::from_secs(60));
    chat.keys(&["n"]);
    chat.wait_for("a note for the model", Duration::from_secs(10));
    chat.keys(&["not today", "Enter"]);
    let screen = chat.wait_for("mark_b  denied", Duration::from_secs(30));
    assert!(
        screen.contains("not today"),
        "the note is in the result:\n{screen}"
    );
    assert!(!ws.path().join("b.txt").exists(), "n ran it anyway");

    chat.wait_for("Message · Enter sends", Duration::from_secs(30));
    chat.keys(&["/quit", "Enter"]);
    assert_eq!(chat.exit_code(Duration::from_secs(10)), "0", "exit code");
    // Both calls are in the saved session, with what became of them.
    let saved = chat.saved_sessions();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(
        saved[0].contains("\"mark_a\"") && saved[0].contains("\"done\""),
        "{}",
        saved[0]
    );
    assert!(saved[0].contains("\"denied\""), "{}", saved[0]);
}
