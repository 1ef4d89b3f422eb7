//! The agent's tools through the real code on real files: confinement of every file tool
//! (`..`, absolute paths, symlinks to files and folders outside, dangling links, for
//! reads and writes), `edit_file`'s exact-match rules, `shell`'s timeout, cancel and
//! output cap with no process left behind (checked by pid), Landlock, user tools from a
//! config file, the approval policy table and flow, `nemo run`'s tool rules, and
//! `nemo debug tool` through the binary. Every command run here is written by the test.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use nemo::agent::execute::{execute, Outcome};
use nemo::agent::policy::{offer_for_run, run_mode, ApprovalMode, Decision, Policy, ToolSelection};
use nemo::agent::registry::Registry;
use nemo::agent::sandbox::{self, Support};
use nemo::agent::user_tools::{self, UserTool};
use nemo::agent::{Sandbox, Tool, ToolContext, ToolError, Workspace};
use nemo::config::Config;
use nemo::protocol::{ApprovalDecision, ApprovalRequest, ToolCall};

// ---------------------------------------------------------------------------------------
// Fixtures

/// A workspace `ws/` beside a folder `outside/` that holds a secret, with links out of
/// the workspace and one that stays inside. Both live under cargo's target tmp dir, which
/// is neither the workspace nor the system temp dir (so Landlock tells them apart).
struct Fixture {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    outside: PathBuf,
}

const SECRET: &str = "secret text\n";

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let ws = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(outside.join("dir/secret.txt"), SECRET).unwrap();
        std::fs::write(ws.join("inner.txt"), "inner text\n").unwrap();
        std::fs::write(ws.join("sub/deep.txt"), "deep text\n").unwrap();
        let link =
            |target: &Path, name: &str| std::os::unix::fs::symlink(target, ws.join(name)).unwrap();
        link(&outside.join("secret.txt"), "link_file");
        link(&outside.join("dir"), "link_dir");
        link(Path::new("../outside/secret.txt"), "rel_link_file");
        link(&outside.join("new.txt"), "dangling_out");
        link(Path::new("inner.txt"), "ok_link");
        link(Path::new("sub"), "ok_dir_link");
        // A link inside that points to a link out: two hops.
        link(Path::new("link_dir"), "hop");
        Fixture {
            _dir: dir,
            ws,
            outside,
        }
    }

    fn ctx(&self) -> ToolContext {
        ToolContext::new(Workspace::new(&self.ws).unwrap())
    }

    fn outside_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.outside.join("secret.txt")).unwrap(),
            SECRET
        );
        assert_eq!(
            std::fs::read_to_string(self.outside.join("dir/secret.txt")).unwrap(),
            SECRET
        );
        assert!(!self.outside.join("new.txt").exists());
        assert!(!self.outside.join("dir/new.txt").exists());
    }
}

fn builtin(name: &str) -> Arc<dyn Tool> {
    Registry::builtins().get(name).unwrap().clone()
}

fn run(name: &str, args: Value, ctx: &ToolContext) -> Result<nemo::agent::ToolOutput, ToolError> {
    builtin(name).run(&args, ctx)
}

// ---------------------------------------------------------------------------------------
// Confinement

/// The arguments that make `tool` touch `path`.
fn args_for(tool: &str, path: &str) -> Value {
    match tool {
        "read_file" | "list_dir" => json!({ "path": path }),
        "write_file" => json!({ "path": path, "content": "overwritten\n" }),
        "edit_file" => json!({ "path": path, "old_text": "secret", "new_text": "changed" }),
        "search" => json!({ "pattern": "secret", "path": path }),
        other => panic!("{other}"),
    }
}

#[test]
fn every_file_tool_refuses_every_way_out_of_the_workspace() {
    let f = Fixture::new();
    let ctx = f.ctx();
    let abs_file = f.outside.join("secret.txt").display().to_string();
    let abs_dir = f.outside.join("dir").display().to_string();
    let escapes = [
        "../outside/secret.txt".to_string(),
        "sub/../../outside/secret.txt".to_string(),
        "../outside/dir".to_string(),
        abs_file,
        abs_dir,
        "/etc/passwd".to_string(),
        "link_file".to_string(),
        "rel_link_file".to_string(),
        "link_dir".to_string(),
        "link_dir/secret.txt".to_string(),
        "link_dir/new.txt".to_string(),
        "hop/secret.txt".to_string(),
        "dangling_out".to_string(),
        "../outside/new.txt".to_string(),
    ];
    for tool in ["read_file", "write_file", "edit_file", "list_dir", "search"] {
        for path in &escapes {
            let args = args_for(tool, path);
            let t = builtin(tool);
            match t.check(&args, &ctx) {
                Err(ToolError::OutsideWorkspace { path: shown, .. }) => {
                    assert!(
                        shown.starts_with(path.as_str()),
                        "{tool} {path}: names {shown}"
                    )
                }
                other => panic!("{tool} {path}: check gave {other:?}"),
            }
            match t.run(&args, &ctx) {
                Err(e @ ToolError::OutsideWorkspace { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("outside the workspace"), "{msg}");
                    assert!(!msg.contains(SECRET.trim()), "{tool} {path} leaked: {msg}");
                }
                other => panic!("{tool} {path}: run gave {other:?}"),
            }
            f.outside_untouched();
        }
    }
    // The message says where a link leads.
    let e = run("read_file", json!({"path": "link_file"}), &ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a symlink to"), "{e}");
}

#[test]
fn paths_and_links_that_stay_inside_work_for_reads_and_writes() {
    let f = Fixture::new();
    let ctx = f.ctx();
    let read = |p: &str| run("read_file", json!({"path": p}), &ctx).unwrap().text;
    assert_eq!(read("ok_link"), "inner text\n");
    assert_eq!(read("sub/../inner.txt"), "inner text\n");
    assert_eq!(read("ok_dir_link/deep.txt"), "deep text\n");
    assert_eq!(
        read(&f.ws.join("inner.txt").display().to_string()),
        "inner text\n"
    );
    // Writing through a link inside writes the file it points to.
    run(
        "write_file",
        json!({"path": "ok_link", "content": "new\n"}),
        &ctx,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(f.ws.join("inner.txt")).unwrap(),
        "new\n"
    );
    assert!(std::fs::symlink_metadata(f.ws.join("ok_link"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A new file in new folders inside.
    run(
        "write_file",
        json!({"path": "a/b/c.txt", "content": "c\n"}),
        &ctx,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(f.ws.join("a/b/c.txt")).unwrap(),
        "c\n"
    );
    let listing = run("list_dir", json!({}), &ctx).unwrap().text;
    assert!(listing.contains("dir  -  sub/"), "{listing}");
    assert!(listing.contains("file  4  inner.txt"), "{listing}");
    assert!(listing.contains("link  -  link_dir -> "), "{listing}");
    f.outside_untouched();
}

#[test]
fn search_honours_gitignore_and_never_follows_links_out() {
    let f = Fixture::new();
    let ctx = f.ctx();
    std::fs::write(f.ws.join(".gitignore"), "ignored.txt\n").unwrap();
    std::fs::write(f.ws.join("ignored.txt"), "needle here\n").unwrap();
    std::fs::write(f.ws.join("sub/kept.txt"), "one\nneedle there\n").unwrap();
    let out = run("search", json!({"pattern": "need+le"}), &ctx).unwrap();
    assert_eq!(out.text, "sub/kept.txt:2: needle there");
    // The secret is only reachable through links out of the workspace.
    let out = run("search", json!({"pattern": "secret"}), &ctx).unwrap();
    assert_eq!(out.text, "no matches");
    let e = run("search", json!({"pattern": "("}), &ctx).unwrap_err();
    assert!(matches!(e, ToolError::BadArguments { .. }), "{e}");
}

#[test]
fn read_file_reads_line_ranges_and_refuses_fifos_and_binaries() {
    let f = Fixture::new();
    let ctx = f.ctx();
    std::fs::write(f.ws.join("lines.txt"), "1\n2\n3\n4\n5\n").unwrap();
    let out = run(
        "read_file",
        json!({"path": "lines.txt", "start_line": 2, "end_line": 4}),
        &ctx,
    )
    .unwrap();
    assert_eq!(out.text, "2\n3\n4\n");
    std::fs::write(f.ws.join("bin"), b"\x00\x01\x02").unwrap();
    let e = run("read_file", json!({"path": "bin"}), &ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("binary"), "{e}");
    let fifo = f.ws.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    let e = run("read_file", json!({"path": "fifo"}), &ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a FIFO must not block"
    );
    let e = run(
        "read_file",
        json!({"path": "lines.txt", "start_line": 0}),
        &ctx,
    )
    .unwrap_err();
    assert!(matches!(e, ToolError::BadArguments { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------
// write_file and edit_file

#[test]
fn edit_file_needs_the_text_exactly_once_and_leaves_the_file_alone_otherwise() {
    let f = Fixture::new();
    let ctx = f.ctx();
    let path = f.ws.join("e.txt");
    std::fs::write(&path, "alpha\nbeta\nalpha\n").unwrap();
    let edit = |old: &str, new: &str| {
        run(
            "edit_file",
            json!({"path": "e.txt", "old_text": old, "new_text": new}),
            &ctx,
        )
    };
    let e = edit("gamma", "x").unwrap_err().to_string();
    assert!(e.contains("old_text not found in e.txt"), "{e}");
    let e = edit("alpha", "x").unwrap_err().to_string();
    assert!(e.contains("occurs 2 times"), "{e}");
    let e = edit("", "x").unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "alpha\nbeta\nalpha\n"
    );
    let preview = builtin("edit_file")
        .preview(
            &json!({"path": "e.txt", "old_text": "beta\n", "new_text": "BETA\n"}),
            &ctx,
        )
        .unwrap();
    assert!(preview.contains("-beta\n+BETA\n"), "{preview}");
    assert!(preview.contains("--- a/e.txt"), "{preview}");
    edit("beta\n", "BETA\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "alpha\nBETA\nalpha\n"
    );
    let e = run(
        "edit_file",
        json!({"path": "none.txt", "old_text": "a", "new_text": "b"}),
        &ctx,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no such file"), "{e}");
}

#[test]
fn write_file_preview_is_a_diff_and_the_write_keeps_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let ctx = f.ctx();
    let path = f.ws.join("w.sh");
    std::fs::write(&path, "one\ntwo\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
    let args = json!({"path": "w.sh", "content": "one\n2\n"});
    let preview = builtin("write_file").preview(&args, &ctx).unwrap();
    assert!(preview.contains("-two\n+2\n"), "{preview}");
    let new = builtin("write_file")
        .preview(&json!({"path": "n.txt", "content": "x\n"}), &ctx)
        .unwrap();
    assert!(new.contains("--- /dev/null") && new.contains("+x"), "{new}");
    run("write_file", args, &ctx).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n2\n");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o750
    );
    let leftovers: Vec<_> = std::fs::read_dir(&f.ws)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let e = run("write_file", json!({"path": "sub", "content": "x"}), &ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a folder"), "{e}");
}

// ---------------------------------------------------------------------------------------
// shell

/// Gone within 5 s (it would live 1000 s): no such process, or only a zombie waiting for
/// init to reap it. A SIGKILLed process may take a moment to be scheduled and die.
fn process_gone(pid: i32) -> bool {
    let gone = || {
        if unsafe { libc::kill(pid, 0) } != 0 {
            return true;
        }
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if gone() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn pid_in(text: &str) -> i32 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("pid ").and_then(|p| p.parse().ok()))
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

fn shell_ctx(f: &Fixture, sandbox: Sandbox) -> ToolContext {
    ToolContext { sandbox, ..f.ctx() }
}

#[test]
fn shell_timeout_kills_the_whole_process_group() {
    let f = Fixture::new();
    let mut ctx = shell_ctx(&f, Sandbox::Off);
    ctx.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let out = run(
        "shell",
        json!({"command": "sleep 1000 & echo pid $!; sleep 1000"}),
        &ctx,
    )
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.ok);
    assert!(
        out.text
            .ends_with("[timed out after 0.5 s; its processes were killed]"),
        "{}",
        out.text
    );
    let pid = pid_in(&out.text);
    assert!(
        process_gone(pid),
        "background child {pid} outlived the timeout"
    );
}

#[test]
fn shell_cancel_kills_the_whole_process_group() {
    let f = Fixture::new();
    let ctx = shell_ctx(&f, Sandbox::Off);
    let cancel = Arc::clone(&ctx.cancel);
    let pid_file = f.ws.join("pid");
    let watcher = {
        let pid_file = pid_file.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')) {
                assert!(Instant::now() < until, "the command never wrote its pid");
                std::thread::sleep(Duration::from_millis(20));
            }
            cancel.store(true, Ordering::SeqCst);
            Instant::now()
        })
    };
    let e = run(
        "shell",
        json!({"command": "sleep 1000 & echo pid $! > pid; sleep 1000"}),
        &ctx,
    )
    .unwrap_err();
    let cancelled_at = watcher.join().unwrap();
    assert!(matches!(e, ToolError::Cancelled), "{e}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
    let pid = pid_in(&std::fs::read_to_string(&pid_file).unwrap());
    assert!(
        process_gone(pid),
        "background child {pid} outlived the cancel"
    );
}

#[test]
fn shell_kills_what_the_command_left_running_when_it_ends() {
    let f = Fixture::new();
    let ctx = shell_ctx(&f, Sandbox::Off);
    let started = Instant::now();
    let out = run(
        "shell",
        json!({"command": "sleep 1000 & echo pid $!"}),
        &ctx,
    )
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(out.ok, "{}", out.text);
    assert!(out.text.ends_with("[exit code 0]"), "{}", out.text);
    let pid = pid_in(&out.text);
    assert!(
        process_gone(pid),
        "background child {pid} outlived the command"
    );
}

#[test]
fn shell_output_is_capped_marked_and_carries_stderr_and_the_exit_code() {
    let f = Fixture::new();
    let mut ctx = shell_ctx(&f, Sandbox::Off);
    ctx.output_cap = 1000;
    let out = run(
        "shell",
        json!({"command": "head -c 100000 /dev/zero | tr '\\0' a; echo; echo tail-line"}),
        &ctx,
    )
    .unwrap();
    assert!(out.truncated);
    assert!(out.ok);
    assert!(
        out.text.contains("\n[… 99011 bytes cut …]\n"),
        "{}",
        &out.text[..100]
    );
    assert!(
        out.text.ends_with("tail-line\n[exit code 0]"),
        "{}",
        out.text
    );
    let out = run(
        "shell",
        json!({"command": "echo out; echo err >&2; pwd; exit 7"}),
        &ctx,
    )
    .unwrap();
    assert!(!out.ok);
    assert!(!out.truncated);
    let ws = f.ws.canonicalize().unwrap();
    assert_eq!(
        out.text,
        format!("out\nerr\n{}\n[exit code 7]", ws.display())
    );
}

#[test]
fn landlock_stops_writes_outside_the_workspace_and_the_temp_dir() {
    if let Support::Unavailable { why } = sandbox::support() {
        common::skip::skip(&format!("this kernel has no Landlock ({why})"));
        return;
    }
    let f = Fixture::new();
    // The sandbox lets commands write in the temp dir, so "outside" must be somewhere
    // else: the fixture's own folder unless the checkout lives under the temp dir (a
    // clone in /tmp), else a folder made in the home directory.
    let temp = std::env::temp_dir().canonicalize().unwrap();
    let outside_root = [
        Some(f.outside.clone()),
        std::env::var_os("HOME").map(PathBuf::from),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.canonicalize().is_ok_and(|c| !c.starts_with(&temp)));
    let Some(outside_root) = outside_root else {
        common::skip::skip("no writable folder outside the temp dir to test Landlock against");
        return;
    };
    let outside_dir = tempfile::tempdir_in(&outside_root).unwrap();
    let target = outside_dir.path().join("made-by-shell");
    let tmp_file = std::env::temp_dir().join(format!("nemo-landlock-{}", std::process::id()));
    let command = format!(
        "touch inside.txt && echo inside-ok; touch '{}' && echo tmp-ok; echo x > /dev/null && echo null-ok; touch '{}'; echo outside=$?",
        tmp_file.display(),
        target.display()
    );
    let out = run(
        "shell",
        json!({ "command": command }),
        &shell_ctx(&f, Sandbox::Landlock),
    )
    .unwrap();
    assert!(out.text.contains("inside-ok\n"), "{}", out.text);
    assert!(out.text.contains("tmp-ok\n"), "{}", out.text);
    assert!(out.text.contains("null-ok\n"), "{}", out.text);
    assert!(out.text.contains("Permission denied"), "{}", out.text);
    assert!(out.text.contains("outside=1"), "{}", out.text);
    assert!(!target.exists(), "Landlock let the command write outside");
    let _ = std::fs::remove_file(&tmp_file);
    // The same command without the sandbox writes there.
    let out = run(
        "shell",
        json!({ "command": command }),
        &shell_ctx(&f, Sandbox::Off),
    )
    .unwrap();
    assert!(out.text.contains("outside=0"), "{}", out.text);
    assert!(target.exists());
    let _ = std::fs::remove_file(&tmp_file);
}

// ---------------------------------------------------------------------------------------
// User tools

const USER_TOOLS: &str = r#"
[tools.show_args]
command = "printf '[%s]\n' fixed {msg} --msg={msg} {count}"
description = "Echo its arguments, one a line"
read_only = true
parameters = { type = "object", properties = { msg = { type = "string" }, count = { type = "integer" } }, required = ["msg"], additionalProperties = false }

[tools.touch_it]
command = "touch {name}"
parameters = { type = "object", properties = { name = { type = "string" } }, required = ["name"] }
"#;

fn user_registry(config_text: &str) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text).unwrap();
    let cfg = Config::load(&path).unwrap();
    let mut r = Registry::builtins();
    for t in user_tools::from_config(&cfg.tools).unwrap() {
        r.add(Arc::new(t)).unwrap();
    }
    r
}

fn call(name: &str, args: Value) -> ToolCall {
    ToolCall::new("call_1", name, args)
}

fn never_asked(req: &ApprovalRequest) -> Option<ApprovalDecision> {
    panic!("asked about {:?}", req.call)
}

#[test]
fn user_tool_arguments_stay_one_argv_word_and_never_reach_a_shell() {
    let f = Fixture::new();
    let ctx = shell_ctx(&f, Sandbox::Off);
    let r = user_registry(USER_TOOLS);
    let mut policy = Policy::new(
        ApprovalMode::Ask,
        Sandbox::Off,
        &Support::Landlock { abi: 1 },
    );
    let hostile = "two words 'single' \"double\"; touch pwned $(touch pwned2) `touch pwned3` > out";
    let (res, outcome) = execute(
        &r,
        &mut policy,
        &call("show_args", json!({"msg": hostile, "count": 3})),
        &ctx,
        &mut never_asked,
    );
    assert_eq!(outcome, Outcome::Ran, "{}", res.output);
    assert!(res.ok, "{}", res.output);
    assert_eq!(
        res.output,
        format!("[fixed]\n[{hostile}]\n[--msg={hostile}]\n[3]\n[exit code 0]")
    );
    for f2 in ["pwned", "pwned2", "pwned3", "out"] {
        assert!(!f.ws.join(f2).exists(), "{f2} was created: a shell ran");
    }
    // An optional argument left out drops its word.
    let (res, _) = execute(
        &r,
        &mut policy,
        &call("show_args", json!({"msg": "m"})),
        &ctx,
        &mut never_asked,
    );
    assert_eq!(res.output, "[fixed]\n[m]\n[--msg=m]\n[exit code 0]");
}

#[test]
fn user_tool_schema_violations_are_refused_before_anything_runs() {
    let f = Fixture::new();
    let ctx = shell_ctx(&f, Sandbox::Off);
    let r = user_registry(USER_TOOLS);
    let mut policy = Policy::new(
        ApprovalMode::Auto,
        Sandbox::Off,
        &Support::Landlock { abi: 1 },
    );
    for (args, want) in [
        (json!({}), "missing required argument `name`"),
        (json!({"name": 5}), "`name`: expected string, got integer"),
    ] {
        let (res, outcome) = execute(
            &r,
            &mut policy,
            &call("touch_it", args),
            &ctx,
            &mut never_asked,
        );
        assert_eq!(outcome, Outcome::BadCall);
        assert!(!res.ok);
        assert!(res.output.contains(want), "{}", res.output);
    }
    let (res, outcome) = execute(
        &r,
        &mut policy,
        &call("show_args", json!({"msg": "x", "extra": 1})),
        &ctx,
        &mut never_asked,
    );
    assert_eq!(outcome, Outcome::BadCall);
    assert!(
        res.output.contains("unknown argument `extra`"),
        "{}",
        res.output
    );
    assert_eq!(
        std::fs::read_dir(&f.ws).unwrap().count(),
        std::fs::read_dir(&f.ws).unwrap().count()
    );
    // In auto a good call runs; the command is the user's, the file name the model's.
    let (res, outcome) = execute(
        &r,
        &mut policy,
        &call("touch_it", json!({"name": "a b"})),
        &ctx,
        &mut never_asked,
    );
    assert_eq!(outcome, Outcome::Ran, "{}", res.output);
    assert!(f.ws.join("a b").exists());
}

#[test]
fn user_tools_ask_unless_marked_read_only() {
    let f = Fixture::new();
    let ctx = shell_ctx(&f, Sandbox::Off);
    let r = user_registry(USER_TOOLS);
    let mut policy = Policy::new(
        ApprovalMode::Ask,
        Sandbox::Off,
        &Support::Landlock { abi: 1 },
    );
    let mut asked = Vec::new();
    let mut ask = |req: &ApprovalRequest| {
        asked.push(req.clone());
        Some(ApprovalDecision::Deny { note: None })
    };
    let (res, outcome) = execute(
        &r,
        &mut policy,
        &call("touch_it", json!({"name": "x y"})),
        &ctx,
        &mut ask,
    );
    assert_eq!(outcome, Outcome::Denied);
    assert!(!res.ok);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].preview.as_deref(), Some("$ touch 'x y'"));
    assert!(!f.ws.join("x y").exists());
}

// ---------------------------------------------------------------------------------------
// The policy

#[test]
fn policy_table_mode_by_effect_by_remembered_approval() {
    let f = Fixture::new();
    let ctx = f.ctx();
    let read = builtin("read_file");
    let write = builtin("write_file");
    let shell = builtin("shell");
    let with = Support::Landlock { abi: 4 };
    let without = Support::Unavailable { why: "test".into() };
    let r_call = call("read_file", json!({"path": "inner.txt"}));
    let w_call = call("write_file", json!({"path": "n.txt", "content": "x"}));
    let s_call = call("shell", json!({"command": "true"}));
    let is = |d: Decision, want: &str| match (&d, want) {
        (Decision::Run, "run")
        | (Decision::Ask { .. }, "ask")
        | (Decision::Refuse(_), "refuse") => {}
        _ => panic!("{d:?}, wanted {want}"),
    };
    for (mode, sandbox, support, r, w, s) in [
        (
            ApprovalMode::ReadOnly,
            Sandbox::Landlock,
            &with,
            "run",
            "refuse",
            "refuse",
        ),
        (
            ApprovalMode::ReadOnly,
            Sandbox::Off,
            &without,
            "run",
            "refuse",
            "refuse",
        ),
        (
            ApprovalMode::Ask,
            Sandbox::Landlock,
            &with,
            "run",
            "ask",
            "ask",
        ),
        (
            ApprovalMode::Ask,
            Sandbox::Landlock,
            &without,
            "run",
            "ask",
            "ask",
        ),
        (ApprovalMode::Ask, Sandbox::Off, &with, "run", "ask", "ask"),
        (
            ApprovalMode::Auto,
            Sandbox::Landlock,
            &with,
            "run",
            "run",
            "run",
        ),
        (
            ApprovalMode::Auto,
            Sandbox::Landlock,
            &without,
            "run",
            "run",
            "refuse",
        ),
        (
            ApprovalMode::Auto,
            Sandbox::Off,
            &without,
            "run",
            "run",
            "run",
        ),
    ] {
        let p = Policy::new(mode, sandbox, support);
        is(p.decide(read.as_ref(), &r_call, &ctx), r);
        is(p.decide(write.as_ref(), &w_call, &ctx), w);
        is(p.decide(shell.as_ref(), &s_call, &ctx), s);
    }
    // What the user is told.
    let p = Policy::new(ApprovalMode::Ask, Sandbox::Landlock, &without);
    match p.decide(shell.as_ref(), &s_call, &ctx) {
        Decision::Ask { reason, preview } => {
            assert!(
                reason.contains("unconfined (this kernel has no Landlock)"),
                "{reason}"
            );
            assert_eq!(preview.as_deref(), Some("$ true"));
        }
        d => panic!("{d:?}"),
    }
    let p = Policy::new(ApprovalMode::Auto, Sandbox::Landlock, &without);
    match p.decide(shell.as_ref(), &s_call, &ctx) {
        Decision::Refuse(why) => assert!(why.contains("--sandbox off"), "{why}"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn session_approval_covers_exactly_that_call_for_that_session_only() {
    let f = Fixture::new();
    let ctx = f.ctx();
    let write = builtin("write_file");
    let support = Support::Landlock { abi: 4 };
    let mut p = Policy::new(ApprovalMode::Ask, Sandbox::Landlock, &support);
    let c = call("write_file", json!({"path": "n.txt", "content": "x"}));
    let same_reordered = call("write_file", json!({"content": "x", "path": "n.txt"}));
    let other = call("write_file", json!({"path": "n.txt", "content": "y"}));
    assert!(p.answer(&c, &ApprovalDecision::Once));
    assert!(
        matches!(p.decide(write.as_ref(), &c, &ctx), Decision::Ask { .. }),
        "once is not remembered"
    );
    assert!(!p.answer(&c, &ApprovalDecision::Deny { note: None }));
    assert!(matches!(
        p.decide(write.as_ref(), &c, &ctx),
        Decision::Ask { .. }
    ));
    assert!(p.answer(&c, &ApprovalDecision::Session));
    assert_eq!(p.decide(write.as_ref(), &c, &ctx), Decision::Run);
    assert_eq!(
        p.decide(write.as_ref(), &same_reordered, &ctx),
        Decision::Run
    );
    assert!(matches!(
        p.decide(write.as_ref(), &other, &ctx),
        Decision::Ask { .. }
    ));
    // Read-only mode refuses even what was approved; a new session asks again.
    p.set_mode(ApprovalMode::ReadOnly);
    assert!(matches!(
        p.decide(write.as_ref(), &c, &ctx),
        Decision::Refuse(_)
    ));
    let fresh = Policy::new(ApprovalMode::Ask, Sandbox::Landlock, &support);
    assert!(matches!(
        fresh.decide(write.as_ref(), &c, &ctx),
        Decision::Ask { .. }
    ));
}

#[test]
fn approval_flow_shows_the_diff_and_obeys_the_answer() {
    let f = Fixture::new();
    let ctx = f.ctx();
    let r = Registry::builtins();
    let support = Support::Landlock { abi: 4 };
    let mut p = Policy::new(ApprovalMode::Ask, Sandbox::Landlock, &support);
    let c = call(
        "edit_file",
        json!({"path": "inner.txt", "old_text": "inner", "new_text": "outer"}),
    );
    let mut seen = Vec::new();
    let mut deny = |req: &ApprovalRequest| {
        seen.push(req.clone());
        Some(ApprovalDecision::Deny {
            note: Some("not that file".into()),
        })
    };
    let (res, outcome) = execute(&r, &mut p, &c, &ctx, &mut deny);
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(res.output, "the user denied this call: not that file");
    assert_eq!(res.id, "call_1");
    assert_eq!(seen[0].reason, "writes files in the workspace");
    let preview = seen[0].preview.clone().unwrap();
    assert!(preview.contains("-inner text\n+outer text\n"), "{preview}");
    assert_eq!(
        std::fs::read_to_string(f.ws.join("inner.txt")).unwrap(),
        "inner text\n"
    );
    // No one to answer: refused, not run.
    let (res, outcome) = execute(&r, &mut p, &c, &ctx, &mut |_| None);
    assert_eq!(outcome, Outcome::Unanswered);
    assert!(
        res.output.contains("needs the user's approval"),
        "{}",
        res.output
    );
    assert_eq!(
        std::fs::read_to_string(f.ws.join("inner.txt")).unwrap(),
        "inner text\n"
    );
    // A call that cannot run is answered without asking.
    let bad = call(
        "edit_file",
        json!({"path": "inner.txt", "old_text": "absent", "new_text": "x"}),
    );
    let (res, outcome) = execute(&r, &mut p, &bad, &ctx, &mut never_asked);
    assert_eq!(outcome, Outcome::Ran);
    assert!(res.output.contains("old_text not found"), "{}", res.output);
    let out = call("write_file", json!({"path": "link_dir/x", "content": "x"}));
    let (_, outcome) = execute(&r, &mut p, &out, &ctx, &mut never_asked);
    assert_eq!(outcome, Outcome::OutsideWorkspace);
    // Approved once: it runs.
    let (res, outcome) = execute(&r, &mut p, &c, &ctx, &mut |_| Some(ApprovalDecision::Once));
    assert_eq!(outcome, Outcome::Ran);
    assert!(res.ok, "{}", res.output);
    assert_eq!(
        std::fs::read_to_string(f.ws.join("inner.txt")).unwrap(),
        "outer text\n"
    );
    f.outside_untouched();
}

#[test]
fn nemo_run_rules_read_only_by_default_and_named_side_effects_need_auto() {
    let r = Registry::builtins();
    let with = Support::Landlock { abi: 4 };
    let without = Support::Unavailable { why: "test".into() };
    assert_eq!(run_mode(None), Ok(ApprovalMode::ReadOnly));
    assert_eq!(run_mode(Some(ApprovalMode::Auto)), Ok(ApprovalMode::Auto));
    assert!(run_mode(Some(ApprovalMode::Ask))
        .unwrap_err()
        .contains("no one to ask"));
    let ro = Policy::new(ApprovalMode::ReadOnly, Sandbox::Landlock, &with);
    let all: ToolSelection = "all".parse().unwrap();
    let offered = offer_for_run(&r, &all, &ro).unwrap();
    assert_eq!(
        offered.names().collect::<Vec<_>>(),
        ["list_dir", "read_file", "search"]
    );
    let named: ToolSelection = "read_file,shell".parse().unwrap();
    let e = offer_for_run(&r, &named, &ro).unwrap_err();
    assert!(
        e.contains("`shell` runs a command") && e.contains("--approval auto"),
        "{e}"
    );
    let auto = Policy::new(ApprovalMode::Auto, Sandbox::Landlock, &with);
    let offered = offer_for_run(&r, &named, &auto).unwrap();
    assert_eq!(offered.names().collect::<Vec<_>>(), ["read_file", "shell"]);
    assert_eq!(offer_for_run(&r, &all, &auto).unwrap().names().count(), 6);
    let auto_bare = Policy::new(ApprovalMode::Auto, Sandbox::Landlock, &without);
    let e = offer_for_run(&r, &named, &auto_bare).unwrap_err();
    assert!(e.contains("--sandbox off"), "{e}");
    assert!(!offer_for_run(&r, &all, &auto_bare)
        .unwrap()
        .names()
        .any(|n| n == "shell"));
    let e = offer_for_run(&r, &"nope".parse().unwrap(), &auto).unwrap_err();
    assert!(e.contains("no tool `nope`"), "{e}");
    assert!(offer_for_run(&r, &"none".parse().unwrap(), &auto)
        .unwrap()
        .is_empty());
}

#[test]
fn user_tool_tables_check_their_commands() {
    let mut tables = BTreeMap::new();
    tables.insert(
        "t".to_string(),
        toml::from_str(
            r#"command = "sh -c {code}"
parameters = { type = "object", properties = { code = { type = "string" } } }"#,
        )
        .unwrap(),
    );
    // Nothing stops a user from naming sh themselves; what nemo never does is add one.
    let tools = user_tools::from_config(&tables).unwrap();
    assert_eq!(
        tools[0].argv(&json!({"code": "echo hi"})).unwrap(),
        ["sh", "-c", "echo hi"]
    );
    let bad: BTreeMap<String, _> = [("bad name".to_string(), tables["t"].clone())].into();
    let e = user_tools::from_config(&bad).unwrap_err();
    assert_eq!(e.field, "name");
    let _: Vec<UserTool> = tools;
}

// ---------------------------------------------------------------------------------------
// `nemo debug tool`

fn nemo_tool(f: &Fixture, config: Option<&str>, args: &[&str]) -> Output {
    let cfg = f.ws.parent().unwrap().join("config.toml");
    match config {
        Some(text) => std::fs::write(&cfg, text).unwrap(),
        None => {
            let _ = std::fs::remove_file(&cfg);
        }
    }
    let mut cmd = common::nemo_command();
    cmd.args(["debug", "tool"])
        .args(args)
        .current_dir(&f.ws)
        .env("NEMO_CONFIG", &cfg)
        .env("NEMO_DATA_DIR", f.ws.parent().unwrap().join("data"))
        .env_remove("NEMO_APPROVAL")
        .env_remove("NEMO_SANDBOX")
        .stdin(Stdio::null());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("nemo debug tool {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr_line(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(s.trim_end().lines().count(), 1, "not one line: {s:?}");
    s.trim_end().to_string()
}

#[test]
fn debug_tool_runs_a_call_through_the_policy_with_exit_codes() {
    let f = Fixture::new();
    let out = nemo_tool(&f, None, &["read_file", r#"{"path": "inner.txt"}"#]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inner text\n");

    let out = nemo_tool(
        &f,
        None,
        &["read_file", r#"{"path": "link_dir/secret.txt"}"#],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_line(&out).contains("outside the workspace"));
    assert!(out.stdout.is_empty());

    // No terminal to ask on: what would ask is refused, and nothing is written.
    let out = nemo_tool(
        &f,
        None,
        &["write_file", r#"{"path": "new.txt", "content": "x"}"#],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_line(&out).contains("no terminal to ask on"));
    assert!(!f.ws.join("new.txt").exists());
    let out = nemo_tool(
        &f,
        None,
        &[
            "write_file",
            r#"{"path": "new.txt", "content": "x"}"#,
            "--approval",
            "read-only",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_line(&out).contains("read-only"));
    let out = nemo_tool(
        &f,
        None,
        &[
            "write_file",
            r#"{"path": "new.txt", "content": "x"}"#,
            "--approval",
            "auto",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(f.ws.join("new.txt")).unwrap(), "x");

    // The tool ran and failed: its output on stdout, exit 1.
    let out = nemo_tool(
        &f,
        None,
        &[
            "shell",
            r#"{"command": "echo bye; exit 4"}"#,
            "--approval",
            "auto",
            "--sandbox",
            "off",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n[exit code 4]\n");
    assert_eq!(stderr_line(&out), "nemo: shell failed");

    // Bad usage: exit 2, one line.
    for (args, want) in [
        (vec!["nope", "{}"], "no tool `nope`"),
        (vec!["read_file", "{not json"], "not JSON"),
        (vec!["read_file", "[1]"], "JSON object"),
        (
            vec!["read_file", r#"{"path": 3}"#],
            "`path`: expected string",
        ),
        (
            vec![
                "read_file",
                r#"{"path": "a"}"#,
                "--workspace",
                "/no/such/dir",
            ],
            "--workspace",
        ),
        (
            vec!["read_file", "{}", "--approval", "sometimes"],
            "sometimes",
        ),
        (
            vec!["shell", r#"{"command": "true"}"#, "--timeout=-1"],
            "--timeout",
        ),
    ] {
        let out = nemo_tool(&f, None, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stderr_line(&out);
        assert!(line.contains(want), "{args:?}: {line}");
    }
    f.outside_untouched();
}

#[test]
fn debug_tool_reads_user_tools_and_approval_from_the_config_file() {
    let f = Fixture::new();
    let config = format!("approval = \"auto\"\nsandbox = \"off\"\n{USER_TOOLS}");
    let out = nemo_tool(
        &f,
        Some(&config),
        &["touch_it", r#"{"name": "made by user tool"}"#],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(f.ws.join("made by user tool").exists());
    let out = nemo_tool(
        &f,
        Some(&config),
        &[
            "show_args",
            r#"{"msg": "a; b"}"#,
            "--workspace",
            f.ws.join("sub").to_str().unwrap(),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[fixed]\n[a; b]\n[--msg=a; b]\n[exit code 0]\n"
    );
    // A bad table names the file, the line and the key.
    let out = nemo_tool(
        &f,
        Some("[tools.t]\ncommand = \"echo {x}\"\n"),
        &["read_file", r#"{"path": "inner.txt"}"#],
    );
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(
        line.contains("config.toml") && line.contains("line 2") && line.contains("tools.t.command"),
        "{line}"
    );
}

/// `nemo debug tool` in a tmux pseudo terminal, answering its approval question. Each
/// test runs its own tmux server (`-L`, no config file).
struct Term {
    socket: String,
    exit_file: PathBuf,
}

impl Term {
    /// None (after a SKIP line) when tmux is not installed.
    fn start(name: &str, f: &Fixture, args: &str) -> Option<Term> {
        if Command::new("tmux").arg("-V").output().is_err() {
            common::skip::require_or_skip("tmux is not installed (apt-get install tmux)");
            return None;
        }
        let base = f.ws.parent().unwrap();
        let exit_file = base.join(format!("exit-{name}"));
        let script = base.join(format!("run-{name}.sh"));
        std::fs::write(
            &script,
            format!(
                "cd '{ws}' && NEMO_CONFIG='{base}/none.toml' NEMO_DATA_DIR='{base}/data' '{bin}' debug tool {args}; echo $? > '{exit}'; sleep 600\n",
                ws = f.ws.display(),
                base = base.display(),
                bin = common::nemo_bin().display(),
                exit = exit_file.display(),
            ),
        )
        .unwrap();
        let term = Term {
            socket: format!("nemo-tools-{}-{name}", std::process::id()),
            exit_file,
        };
        let script = format!("sh '{}'", script.display());
        term.tmux(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            &script,
        ]);
        Some(term)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.tmux(&["capture-pane", "-p", "-t", "t"]);
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < until,
                "`{what}` never appeared; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answer(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
        self.tmux(&["send-keys", "-t", "t", "Enter"]);
    }

    fn exit_code(&self) -> String {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(code) = std::fs::read_to_string(&self.exit_file) {
                if code.ends_with('\n') {
                    return code.trim().to_string();
                }
            }
            assert!(Instant::now() < until, "nemo debug tool did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let socket = self.tmux(&["display-message", "-p", "#{socket_path}"]);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        if !socket.trim().is_empty() {
            let _ = std::fs::remove_file(socket.trim());
        }
    }
}

#[test]
fn debug_tool_on_a_terminal_shows_the_diff_and_obeys_y_and_n() {
    let f = Fixture::new();
    let edit = r#"edit_file '{"path": "inner.txt", "old_text": "inner", "new_text": "outer"}'"#;
    let Some(t) = Term::start("deny", &f, edit) else {
        return;
    };
    let screen = t.wait_for("Run it?");
    assert!(
        screen.contains("It writes files in the workspace."),
        "{screen}"
    );
    assert!(
        screen.contains("-inner text") && screen.contains("+outer text"),
        "{screen}"
    );
    t.answer("n not this one");
    assert_eq!(t.exit_code(), "3");
    t.wait_for("the user denied this call: not this one");
    assert_eq!(
        std::fs::read_to_string(f.ws.join("inner.txt")).unwrap(),
        "inner text\n"
    );
    drop(t);

    let Some(t) = Term::start("allow", &f, edit) else {
        return;
    };
    t.wait_for("Run it?");
    t.answer("y");
    assert_eq!(t.exit_code(), "0");
    t.wait_for("edited inner.txt");
    assert_eq!(
        std::fs::read_to_string(f.ws.join("inner.txt")).unwrap(),
        "outer text\n"
    );
}
