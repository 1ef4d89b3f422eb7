//! `nemo chat` end to end: the real binary in a tmux pseudo terminal on a fixture model.
//! Sets `/budget 16`, sends a message, waits for the turn to finish, quits, and checks the
//! screen and the exit code. Needs tmux (`.ci/run` installs it): without it the test says
//! `SKIP`, and fails under CI (tests/common/skip.rs).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(session: &str, what: &str, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(what) {
            return screen;
        }
        if t0.elapsed() > timeout {
            panic!("`{what}` did not appear within {timeout:?}; the screen:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn chat_in_a_terminal_with_budget_16_answers_and_quits_cleanly() {
    if Command::new("tmux").arg("-V").output().is_err() {
        common::skip::require_or_skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exit_file = tmp.path().join("exit");
    let session = format!("nemo-e2e-{}", std::process::id());
    let cmd = format!(
        "NEMO_CONFIG={cfg} NEMO_DATA_DIR={data} {bin} chat --model {model} --temperature 0 --max-tokens 40; echo $? > {exit}",
        cfg = tmp.path().join("config.toml").display(),
        data = tmp.path().join("data").display(),
        bin = env!("CARGO_BIN_EXE_nemo"),
        model = common::fixture("nemotron_h_tiny").display(),
        exit = exit_file.display(),
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "32",
        &cmd,
    ]);
    let guard = scopeguard(&session);
    wait_for(&session, "Type a message", Duration::from_secs(30));
    tmux(&["send-keys", "-t", &session, "/budget 16", "Enter"]);
    wait_for(&session, "budget 16 tokens", Duration::from_secs(10));
    tmux(&["send-keys", "-t", &session, "Why is the sky blue?", "Enter"]);
    let screen = wait_for(&session, "prompt tokens", Duration::from_secs(60));
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
    tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
    let t0 = Instant::now();
    while !exit_file.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = std::fs::read_to_string(&exit_file).unwrap_or_default();
    assert_eq!(code.trim(), "0", "nemo chat exit code");
    // The turn was autosaved.
    let sessions = tmp.path().join("data").join("sessions");
    let saved: Vec<_> = std::fs::read_dir(&sessions)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert_eq!(
        saved.len(),
        1,
        "no autosaved session in {}",
        sessions.display()
    );
    assert!(std::fs::read_to_string(saved[0].path())
        .unwrap()
        .contains("Why is the sky blue?"));
    drop(guard);
}

struct KillSession(String);

impl Drop for KillSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

fn scopeguard(session: &str) -> KillSession {
    KillSession(session.to_string())
}
