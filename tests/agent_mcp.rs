//! MCP servers as tools, against a real third-party server nemo did not write:
//! `@modelcontextprotocol/server-everything` from npm (pinned in tests/mcp/package-lock.json;
//! `.ci/run` installs it and sets `NEMO_MCP_EVERYTHING` to its `mcp-server-everything`).
//! The servers are configured through config.toml, as a user would. Without the server the
//! tests say `SKIP`, and fail under CI (tests/common/skip.rs).

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemo::agent::mcp::McpServers;
use nemo::agent::registry::Registry;
use nemo::agent::{Effect, Sandbox, Tool, ToolContext, ToolError, Workspace};
use nemo::config::{Config, McpConfig};
use serde_json::json;

fn everything() -> Option<PathBuf> {
    let Some(p) = std::env::var_os("NEMO_MCP_EVERYTHING").map(PathBuf::from) else {
        common::skip::require_or_skip(
            "NEMO_MCP_EVERYTHING is not set (the mcp-server-everything npm package; see .ci/run)",
        );
        return None;
    };
    if !p.is_file() {
        common::skip::require_or_skip(&format!(
            "NEMO_MCP_EVERYTHING={} is not a file",
            p.display()
        ));
        return None;
    }
    Some(p)
}

/// `text` as a config.toml in `dir`, read the way nemo reads it.
fn config(dir: &Path, text: &str) -> McpConfig {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap().mcp
}

/// A TOML string.
fn q(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

fn everything_table(name: &str, bin: &Path, extra: &str) -> String {
    format!(
        "[mcp.servers.{name}]\ncommand = {}\nargs = [\"stdio\"]\n{extra}\n",
        q(bin.display().to_string())
    )
}

fn ctx(dir: &Path, timeout: Duration) -> ToolContext {
    ToolContext {
        workspace: Workspace::new(dir).unwrap(),
        cancel: Arc::new(AtomicBool::new(false)),
        output_cap: 64 * 1024,
        timeout,
        sandbox: Sandbox::Off,
    }
}

fn find<'a>(tools: &'a [Arc<dyn Tool>], name: &str) -> &'a Arc<dyn Tool> {
    tools
        .iter()
        .find(|t| t.spec().name == name)
        .unwrap_or_else(|| {
            let names: Vec<_> = tools.iter().map(|t| t.spec().name.clone()).collect();
            panic!("no tool {name} among {names:?}")
        })
}

/// The processes of process group `pgid` that are alive (zombies count as gone), as
/// `(pid, command name)`.
fn live_group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
        {
            found.push((pid, comm));
        }
    }
    found
}

/// Polls `check` until it holds or `limit` passes.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn everything_tools_are_offered_as_server_dot_tool_and_ask_unless_listed_read_only() {
    let Some(bin) = everything() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mcp = config(
        dir.path(),
        &everything_table("everything", &bin, "read_only_tools = [\"echo\", \"ecoh\"]"),
    );
    let (servers, tools) = McpServers::start(&mcp).unwrap();
    assert_eq!(servers.names().collect::<Vec<_>>(), ["everything"]);
    // The typo in read_only_tools is reported, naming the server and the entry.
    assert_eq!(servers.warnings().len(), 1, "{:?}", servers.warnings());
    let warning = &servers.warnings()[0];
    assert!(
        warning.contains("`everything`") && warning.contains("`ecoh`"),
        "{warning}"
    );

    let echo = find(&tools, "everything.echo");
    assert_eq!(echo.effect(), Effect::ReadOnly);
    assert_eq!(
        echo.spec().parameters["properties"]["message"]["type"],
        "string"
    );
    assert_eq!(echo.spec().parameters["required"], json!(["message"]));
    assert!(!echo.spec().description.is_empty());
    // The server marks get-sum `readOnlyHint: true`; only config.toml decides.
    let sum = find(&tools, "everything.get-sum");
    assert_eq!(sum.effect(), Effect::Executes);
    assert!(tools
        .iter()
        .all(|t| t.spec().name.starts_with("everything.")));
    assert!(tools.len() >= 10, "{}", tools.len());
    let preview = sum
        .preview(&json!({}), &ctx(dir.path(), Duration::from_secs(60)))
        .unwrap();
    assert!(
        preview.contains("get-sum") && preview.contains(&bin.display().to_string()),
        "{preview}"
    );

    let mut registry = Registry::new();
    for t in &tools {
        registry.add(Arc::clone(t)).unwrap();
    }
    let ctx = ctx(dir.path(), Duration::from_secs(60));
    let out = registry
        .get("everything.echo")
        .unwrap()
        .run(&json!({"message": "hi from nemo"}), &ctx)
        .unwrap();
    assert!(out.ok, "{out:?}");
    assert_eq!(out.text, "Echo: hi from nemo");
    assert!(!out.truncated);
    let out = sum.run(&json!({"a": 2, "b": 40}), &ctx).unwrap();
    assert!(out.ok, "{out:?}");
    assert!(out.text.contains("42"), "{}", out.text);
    // An image is described by its type and size, not pasted as base64.
    let out = find(&tools, "everything.get-tiny-image")
        .run(&json!({}), &ctx)
        .unwrap();
    assert!(out.ok, "{out:?}");
    assert!(out.text.contains("[image image/png, "), "{}", out.text);
    assert!(!out.text.contains("iVBOR"), "{}", out.text);
    // The output cap holds for server results too.
    let small = ToolContext {
        output_cap: 8,
        ..ctx.clone()
    };
    let out = echo
        .run(&json!({"message": "a longer message"}), &small)
        .unwrap();
    assert!(out.truncated);
    assert_eq!(out.text, "Echo: a \n[output cut at 8 of 22 bytes]");
}

#[test]
fn a_tool_error_from_the_server_is_a_failed_result_and_bad_arguments_an_error() {
    let Some(bin) = everything() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mcp = config(dir.path(), &everything_table("ev", &bin, ""));
    let (_servers, tools) = McpServers::start(&mcp).unwrap();
    let ctx = ctx(dir.path(), Duration::from_secs(60));
    let echo = find(&tools, "ev.echo");
    // The server answers `isError: true` for arguments its schema refuses.
    let out = echo.run(&json!({}), &ctx).unwrap();
    assert!(!out.ok, "{out:?}");
    assert!(out.text.contains("message"), "{}", out.text);
    match echo.run(&json!(["hi"]), &ctx) {
        Err(ToolError::BadArguments { tool, message }) => {
            assert_eq!(tool, "ev.echo");
            assert!(message.contains("an array"), "{message}");
        }
        other => panic!("expected BadArguments, got {other:?}"),
    }
}

#[test]
fn cancel_stops_waiting_and_tells_the_server() {
    let Some(bin) = everything() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("to-server.jsonl");
    // A shell between nemo and the server copies everything nemo sends into `log`.
    let wrapper = format!(
        "[mcp.servers.ev]\ncommand = \"sh\"\nargs = [\"-c\", {}, {}]\n",
        q(format!("tee -a {} | exec \"$0\" stdio", log.display())),
        q(bin.display().to_string())
    );
    let (_servers, tools) = McpServers::start(&config(dir.path(), &wrapper)).unwrap();
    let long = find(&tools, "ev.trigger-long-running-operation");
    let ctx = ctx(dir.path(), Duration::from_secs(600));
    let cancel = Arc::clone(&ctx.cancel);
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        cancel.store(true, Ordering::SeqCst);
    });
    let start = Instant::now();
    let result = long.run(&json!({"duration": 120, "steps": 120}), &ctx);
    let took = start.elapsed();
    canceller.join().unwrap();
    assert!(matches!(result, Err(ToolError::Cancelled)), "{result:?}");
    assert!(took < Duration::from_secs(30), "cancel took {took:?}");
    let told = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("notifications/cancelled"))
    });
    assert!(
        told,
        "no notifications/cancelled in {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The connection is still good.
    let out = find(&tools, "ev.echo")
        .run(
            &json!({"message": "still here"}),
            &self::ctx(dir.path(), Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(out.text, "Echo: still here");
    // A cancel already set stops the call before it is sent.
    let cancelled = self::ctx(dir.path(), Duration::from_secs(60));
    cancelled.cancel.store(true, Ordering::SeqCst);
    let result = find(&tools, "ev.echo").run(&json!({"message": "x"}), &cancelled);
    assert!(matches!(result, Err(ToolError::Cancelled)), "{result:?}");
}

#[test]
fn a_call_past_its_timeout_stops_waiting_with_a_failed_result() {
    let Some(bin) = everything() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mcp = config(
        dir.path(),
        &format!(
            "{}{}",
            everything_table("ev", &bin, ""),
            everything_table("quick", &bin, "tool_timeout_sec = 1")
        ),
    );
    let (_servers, tools) = McpServers::start(&mcp).unwrap();
    let args = json!({"duration": 120, "steps": 120});
    // The context's timeout, then the server's own `tool_timeout_sec` over a long one.
    for (tool, timeout) in [
        ("ev.trigger-long-running-operation", Duration::from_secs(1)),
        (
            "quick.trigger-long-running-operation",
            Duration::from_secs(600),
        ),
    ] {
        let start = Instant::now();
        let out = find(&tools, tool)
            .run(&args, &ctx(dir.path(), timeout))
            .unwrap();
        let took = start.elapsed();
        assert!(!out.ok, "{out:?}");
        assert!(out.text.contains("no answer within 1 s"), "{}", out.text);
        assert!(took < Duration::from_secs(30), "{tool} took {took:?}");
    }
}

#[test]
fn dropping_the_servers_leaves_no_process_behind() {
    let Some(bin) = everything() else { return };
    let dir = tempfile::tempdir().unwrap();
    // One server started directly, and one through a shell that also leaves a process
    // running in the background, which no end of input stops: sh, sleep, cat and the server.
    let text = format!(
        "{}[mcp.servers.piped]\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 607 & cat | exec \\\"$0\\\" stdio\", {}]\n",
        everything_table("direct", &bin, ""),
        q(bin.display().to_string())
    );
    let (servers, tools) = McpServers::start(&config(dir.path(), &text)).unwrap();
    assert!(servers.warnings().is_empty(), "{:?}", servers.warnings());
    let out = find(&tools, "piped.echo")
        .run(
            &json!({"message": "up"}),
            &ctx(dir.path(), Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(out.text, "Echo: up");
    let pids = servers.pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for (name, pgid) in &pids {
        let members = live_group_members(*pgid);
        let want = if name == "piped" { 4 } else { 1 };
        assert!(members.len() >= want, "{name}: {members:?}");
    }
    let start = Instant::now();
    drop(servers);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "drop took {:?}",
        start.elapsed()
    );
    for (name, pgid) in &pids {
        let gone = eventually(Duration::from_secs(10), || {
            live_group_members(*pgid).is_empty()
        });
        assert!(gone, "{name}: left {:?}", live_group_members(*pgid));
    }
    // The tools outlive their servers only to say so.
    match find(&tools, "direct.echo").run(
        &json!({"message": "x"}),
        &ctx(dir.path(), Duration::from_secs(60)),
    ) {
        Err(ToolError::Failed { tool, message }) => {
            assert_eq!(tool, "direct.echo");
            assert!(message.contains("`direct` is not running"), "{message}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// The live processes that are children of this one and run `sleep <arg>`.
fn our_sleeps(arg: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline != format!("sleep\0{arg}\0").as_bytes() {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.len() > 1 && fields[1] == me && fields[0] != "Z" {
            found.push(pid);
        }
    }
    found
}

#[test]
fn servers_that_fail_to_start_are_one_warning_each_and_the_others_work() {
    let Some(bin) = everything() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{}
[mcp.servers.missing]
command = "/nonexistent/nemo-mcp-server"

[mcp.servers.crashes]
command = "sh"
args = ["-c", "echo 'config file /etc/x.json not found' >&2; exit 3"]

[mcp.servers.silent]
command = "sleep"
args = ["731"]
startup_timeout_sec = 1
"#,
        everything_table("everything", &bin, "")
    );
    let start = Instant::now();
    let (servers, tools) = McpServers::start(&config(dir.path(), &text)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "start took {:?}",
        start.elapsed()
    );
    assert_eq!(servers.names().collect::<Vec<_>>(), ["everything"]);
    let warnings = servers.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    let about = |name: &str| {
        let tag = format!("MCP server `{name}`: ");
        let found: Vec<_> = warnings.iter().filter(|w| w.starts_with(&tag)).collect();
        assert_eq!(found.len(), 1, "{name}: {warnings:?}");
        assert!(!found[0].contains('\n'), "{}", found[0]);
        found[0].clone()
    };
    let w = about("missing");
    assert!(
        w.contains("cannot start `/nonexistent/nemo-mcp-server`"),
        "{w}"
    );
    let w = about("crashes");
    assert!(w.contains("config file /etc/x.json not found"), "{w}");
    let w = about("silent");
    assert!(w.contains("within 1 s"), "{w}");
    assert!(tools
        .iter()
        .all(|t| t.spec().name.starts_with("everything.")));
    let out = find(&tools, "everything.echo")
        .run(
            &json!({"message": "ok"}),
            &ctx(dir.path(), Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(out.text, "Echo: ok");
    // The server that never answered was stopped, not left running.
    assert!(
        eventually(Duration::from_secs(10), || our_sleeps("731").is_empty()),
        "{:?}",
        our_sleeps("731")
    );
}
