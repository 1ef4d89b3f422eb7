//! `nemo chat --resume` through the real binary: which session it continues, what it says
//! about the files it cannot read (which, and why), and the warning in the interface when
//! the session ran on another model. The screen tests run the binary in a tmux pseudo
//! terminal and are skipped with a message when tmux is missing (`.ci/run` installs it).

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nemo::chat::session_store::{ModelIdentity, SessionFile, SessionStore, Turn};
use nemo::protocol::{SamplingParams, ThinkingOptions};

/// A data dir with a sessions folder, and a config path that does not exist.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("data/sessions")).unwrap();
        Env { tmp }
    }
    fn sessions(&self) -> PathBuf {
        self.tmp.path().join("data/sessions")
    }
    fn config(&self) -> PathBuf {
        self.tmp.path().join("config.toml")
    }
    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
}

fn session_on(model: &Path, user: &str) -> SessionFile {
    let mut s = SessionFile::new(
        ModelIdentity::of(model).unwrap(),
        SamplingParams::default(),
        ThinkingOptions::default(),
        None,
    );
    s.turns.push(Turn {
        user: user.to_string(),
        answer: "an earlier answer".into(),
        ..Turn::default()
    });
    s
}

fn set_mtime(path: &Path, secs_after_epoch: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs_after_epoch))
        .unwrap();
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Runs `nemo chat --resume` without a terminal; it must finish within 60 s (a reader
/// blocked on a FIFO is released and the process killed, and the test fails).
fn resume_without_terminal(env: &Env, fifos: &[PathBuf]) -> Output {
    let mut child = Command::new(common::nemo_bin())
        .args(["chat", "--resume", "--model"])
        .arg(common::fixture("nemotron_h_tiny"))
        .env("NEMO_CONFIG", env.config())
        .env("NEMO_DATA_DIR", env.data())
        .env("NEMO_DEVICE", "cpu")
        .env_remove("NEMO_MODEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            #[cfg(unix)]
            for f in fifos {
                use std::os::unix::fs::OpenOptionsExt;
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(f);
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("nemo chat --resume hung for 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn resume_with_no_readable_session_names_each_unreadable_file_and_why() {
    let env = Env::new();
    let corrupt = env.sessions().join("20250101-000000-000.json");
    std::fs::write(&corrupt, "{\"version\": 1, \"id\": ").unwrap();
    let fifo = env.sessions().join("pipe.json");
    mkfifo(&fifo);
    let out = resume_without_terminal(&env, &[fifo]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("no saved session yet"), "{err}");
    assert!(err.contains("no saved session in"), "{err}");
    assert!(
        err.contains("20250101-000000-000.json (corrupt at line 1"),
        "{err}"
    );
    assert!(
        err.contains("pipe.json (a FIFO, not a regular file)"),
        "{err}"
    );
    // Left as they were.
    assert_eq!(
        std::fs::read_to_string(&corrupt).unwrap(),
        "{\"version\": 1, \"id\": "
    );
}

#[test]
fn resume_with_an_empty_sessions_folder_says_there_is_none_yet() {
    let env = Env::new();
    let out = resume_without_terminal(&env, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("--resume: there is no saved session yet"),
        "{err}"
    );
}

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

struct KillSession(String);

impl Drop for KillSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[test]
fn resume_skips_a_newer_unreadable_file_and_warns_that_the_session_ran_on_another_model() {
    if Command::new("tmux").arg("-V").output().is_err() {
        common::skip::require_or_skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let env = Env::new();
    let store = SessionStore::new(env.sessions());
    let good = store
        .save_as(
            &session_on(&common::fixture("llama_tiny"), "asked the llama"),
            "good",
        )
        .unwrap();
    set_mtime(&good, 2_000_000_000);
    let newer = env.sessions().join("newer.json");
    std::fs::write(&newer, "{\"version\": 1, \"id\": ").unwrap();
    set_mtime(&newer, 2_000_000_100);

    let exit_file = env.tmp.path().join("exit");
    let stderr_file = env.tmp.path().join("stderr");
    let session = format!("nemo-resume-{}", std::process::id());
    let cmd = format!(
        "NEMO_DEVICE=cpu NEMO_CONFIG={cfg} NEMO_DATA_DIR={data} {bin} chat --resume --model {model} 2>{stderr}; echo $? > {exit}",
        cfg = env.config().display(),
        data = env.data().display(),
        bin = common::nemo_bin().display(),
        model = common::fixture("nemotron_h_tiny").display(),
        stderr = stderr_file.display(),
        exit = exit_file.display(),
    );
    // Wide enough for the whole warning line.
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "400",
        "-y",
        "30",
        &cmd,
    ]);
    let guard = KillSession(session.clone());
    let screen = wait_for(&session, "asked the llama", Duration::from_secs(60));
    let screen = if screen.contains("resumed `good`") {
        screen
    } else {
        wait_for(&session, "resumed `good`", Duration::from_secs(10))
    };
    assert!(
        screen.contains(
            "resumed `good`, but it ran on llama_tiny, not on the loaded nemotron_h_tiny"
        ),
        "{screen}"
    );
    assert!(
        screen.contains("skipped the newer, unreadable newer.json (corrupt at line 1"),
        "{screen}"
    );
    tmux(&["send-keys", "-t", &session, "/quit", "Enter"]);
    let t0 = Instant::now();
    while !exit_file.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(&exit_file)
            .unwrap_or_default()
            .trim(),
        "0"
    );
    let err = std::fs::read_to_string(&stderr_file).unwrap();
    assert!(
        err.contains("nemo: --resume skipped session file")
            && err.contains("newer.json is corrupt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&newer).unwrap(),
        "{\"version\": 1, \"id\": ",
        "left as it was"
    );
    drop(guard);
}
