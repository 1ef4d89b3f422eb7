//! MCP servers as tools: each `[mcp.servers.NAME]` of config.toml is a program nemo starts
//! and speaks the Model Context Protocol to over its stdin and stdout, through the official
//! Rust SDK (`rmcp`, a client over a child process). Every tool `t` the server lists is
//! offered to the model as `NAME.t` ([`McpTool`]).
//!
//! Invariants:
//! - A server tool is [`Effect::Executes`] (the policy asks before it runs) unless the user
//!   listed it in the server's `read_only_tools`; the server's own `readOnlyHint` is never
//!   trusted.
//! - Names: a server's name is `[A-Za-z0-9_-]` (config.toml refuses others, and a dot), so
//!   `NAME.t` splits back at its first dot. A tool whose own name is not `[A-Za-z0-9_.-]`,
//!   1 to 128 characters (the MCP spec's advice), is not offered, with a warning: the name
//!   must pass through every family's tool-call format. The dot is the one character in
//!   these names outside OpenAI's function-name set; nemo's own parsers and templates take
//!   it as it is.
//! - A server that fails to start or to list its tools costs one warning line naming it
//!   and why (with the last line it wrote on stderr); the other servers still work.
//! - The API is blocking: the SDK's async code runs on a small tokio runtime owned here (one
//!   worker thread); callers never see tokio.
//! - Each server runs in a process group of its own (so a Ctrl-C in the terminal does not
//!   reach it, and everything it started can be stopped with it). Dropping [`McpServers`]
//!   closes each server's stdin, waits up to 1 s, sends SIGTERM to its group, waits up to
//!   1 s more, then SIGKILL; the group is killed once more at the end for anything the
//!   server left behind. No child outlives the drop.
//! - A server's stderr is read all the time (so it can never block on a full pipe) and only
//!   its last 4 KiB are kept, for error messages.

mod output;
mod tool;

pub use output::tool_output;
pub use tool::McpTool;

use std::collections::{BTreeSet, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use tokio::io::AsyncReadExt;
use tokio::runtime::Runtime;

use super::{Effect, Tool};
use crate::config::{McpConfig, McpServerConfig};
use crate::protocol::ToolSpec;

/// How long a server has to start and list its tools when config.toml does not say.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Each step of the shutdown (stdin closed, SIGTERM) waits this long before the next.
const SHUTDOWN_STEP: Duration = Duration::from_secs(1);
/// Bytes of a server's stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("cannot start the MCP client's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The running MCP servers. Dropping it stops them all.
pub struct McpServers {
    runtime: Arc<Runtime>,
    servers: Vec<Server>,
    warnings: Vec<String>,
}

/// One running server.
struct Server {
    name: String,
    /// Its process id, which is also its process group's id.
    pid: Option<u32>,
    client: RunningService<RoleClient, ClientConfig>,
}

impl McpServers {
    /// Starts every configured server (all at once), lists each one's tools and keeps the
    /// connections. A server that fails is left out with a line in [`McpServers::warnings`];
    /// only a runtime that cannot be built is an error.
    pub fn start(config: &McpConfig) -> Result<(McpServers, Vec<Arc<dyn Tool>>), McpError> {
        // One worker thread runs the connections; callers' threads wait on their calls. With
        // no server configured, nothing runs and no thread is started.
        let mut builder = if config.servers.is_empty() {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(1).thread_name("nemo-mcp");
            b
        };
        let runtime = Arc::new(builder.enable_all().build().map_err(McpError::Runtime)?);
        let started = runtime.block_on(async {
            let handles: Vec<_> = config
                .servers
                .iter()
                .map(|(name, server)| {
                    let (name, server) = (name.clone(), server.clone());
                    tokio::spawn(async move { start_one(name, server).await })
                })
                .collect();
            let mut started = Vec::with_capacity(handles.len());
            for (handle, name) in handles.into_iter().zip(config.servers.keys()) {
                started.push(match handle.await {
                    Ok(result) => result,
                    Err(e) => Err(StartFailure::warning(
                        name,
                        format!("its start failed: {e}"),
                    )),
                });
            }
            started
        });
        let mut servers = McpServers {
            runtime: Arc::clone(&runtime),
            servers: Vec::new(),
            warnings: Vec::new(),
        };
        let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
        for result in started {
            match result {
                Ok(started) => {
                    servers.warnings.extend(started.warnings);
                    for t in started.tools {
                        tools.push(Arc::new(McpTool::new(t, Arc::clone(&runtime))));
                    }
                    servers.servers.push(started.server);
                }
                Err(failure) => servers.warnings.push(failure.0),
            }
        }
        Ok((servers, tools))
    }

    /// One line per server that failed to start or to list its tools, and per tool left out
    /// or `read_only_tools` entry that names no tool, each naming the server and why.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The names of the servers that are running.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|s| s.name.as_str())
    }

    /// The process id of each running server's own process (the leader of its process
    /// group), by server name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.servers
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.pid?)))
            .collect()
    }
}

impl Drop for McpServers {
    fn drop(&mut self) {
        let servers = std::mem::take(&mut self.servers);
        if servers.is_empty() {
            return;
        }
        self.runtime.block_on(async move {
            let handles: Vec<_> = servers.into_iter().map(|s| tokio::spawn(stop(s))).collect();
            for handle in handles {
                let _ = handle.await;
            }
        });
    }
}

/// What a started server brings: its connection, its tools and any warnings.
struct Started {
    server: Server,
    tools: Vec<tool::Remote>,
    warnings: Vec<String>,
}

/// One warning line.
struct StartFailure(String);

impl StartFailure {
    fn warning(name: &str, why: String) -> StartFailure {
        StartFailure(format!("MCP server `{name}`: {why}"))
    }
}

async fn start_one(name: String, config: McpServerConfig) -> Result<Started, StartFailure> {
    let fail = |why: String| StartFailure::warning(&name, why);
    let mut command = tokio::process::Command::new(&config.command);
    command.args(&config.args).envs(&config.env);
    // Its own process group: the terminal's Ctrl-C is nemo's to handle, and the group can be
    // stopped as a whole (a server started through `npx` or a shell is several processes).
    #[cfg(unix)]
    command.process_group(0);
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start `{}`: {e}", config.command)))?;
    let pid = transport.id();
    let tail = Arc::new(StderrTail::default());
    if let Some(stderr) = stderr {
        tokio::spawn(Arc::clone(&tail).drain(stderr));
    }
    let startup = config
        .startup_timeout_sec
        .map_or(DEFAULT_STARTUP_TIMEOUT, Duration::from_secs);
    let deadline = tokio::time::Instant::now() + startup;
    let client_info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("nemo", env!("CARGO_PKG_VERSION")),
    );
    // On any failure below, the child is stopped before the warning is returned.
    let killed = |why: String| {
        let (tail, name) = (Arc::clone(&tail), name.clone());
        async move {
            kill_group(pid, libc::SIGKILL);
            // Let the stderr reader take in what the server wrote last.
            tail.closed(Duration::from_millis(500)).await;
            StartFailure::warning(&name, with_stderr(why, &tail))
        }
    };
    let client = match tokio::time::timeout_at(deadline, client_info.serve(transport)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(killed(format!("did not start: {e}")).await),
        Err(_) => {
            return Err(killed(format!(
                "did not answer `initialize` within {} s",
                startup.as_secs()
            ))
            .await)
        }
    };
    let listed = match tokio::time::timeout_at(deadline, client.peer().list_all_tools()).await {
        Ok(Ok(tools)) => tools,
        Ok(Err(e)) => {
            let why = format!("could not list its tools: {e}");
            stop(Server {
                name: name.clone(),
                pid,
                client,
            })
            .await;
            tail.closed(Duration::from_millis(500)).await;
            return Err(StartFailure::warning(&name, with_stderr(why, &tail)));
        }
        Err(_) => {
            let why = format!("did not list its tools within {} s", startup.as_secs());
            stop(Server {
                name: name.clone(),
                pid,
                client,
            })
            .await;
            tail.closed(Duration::from_millis(500)).await;
            return Err(StartFailure::warning(&name, with_stderr(why, &tail)));
        }
    };
    let mut warnings = Vec::new();
    let read_only: BTreeSet<&str> = config.read_only_tools.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    let mut tools = Vec::new();
    for t in listed {
        let remote_name = t.name.to_string();
        if !valid_tool_name(&remote_name) {
            warnings.push(format!(
                "MCP server `{name}`: tool {remote_name:?} is not offered: a tool name is 1 to 128 of A-Z a-z 0-9 _ . -"
            ));
            continue;
        }
        if !seen.insert(remote_name.clone()) {
            warnings.push(format!(
                "MCP server `{name}`: tool `{remote_name}` is listed twice; the first is offered"
            ));
            continue;
        }
        let spec = ToolSpec {
            name: format!("{name}.{remote_name}"),
            description: t
                .description
                .as_deref()
                .or(t.title.as_deref())
                .unwrap_or_default()
                .to_string(),
            parameters: serde_json::Value::Object((*t.input_schema).clone()),
        };
        let effect = if read_only.contains(remote_name.as_str()) {
            Effect::ReadOnly
        } else {
            Effect::Executes
        };
        tools.push(tool::Remote {
            spec,
            server: name.clone(),
            remote_name,
            effect,
            command_line: command_line(&config),
            peer: client.peer().clone(),
            timeout: config.tool_timeout_sec.map(Duration::from_secs),
            stderr: Arc::clone(&tail),
        });
    }
    for missing in read_only.iter().filter(|t| !seen.contains(**t)) {
        warnings.push(format!(
            "MCP server `{name}`: read_only_tools names `{missing}`, which the server does not offer"
        ));
    }
    Ok(Started {
        server: Server { name, pid, client },
        tools,
        warnings,
    })
}

/// Stops one server: stdin closed (the MCP way to ask a stdio server to exit), then SIGTERM
/// and SIGKILL to its process group, each after [`SHUTDOWN_STEP`]; the child is waited
/// for, so it leaves no zombie.
async fn stop(mut server: Server) {
    let pid = server.pid;
    {
        // `close` cancels the client, which closes the transport: stdin is closed and the
        // child waited for (the SDK signals only the leader, after 3 s; the group is ours).
        let close = server.client.close();
        tokio::pin!(close);
        if tokio::time::timeout(SHUTDOWN_STEP, &mut close)
            .await
            .is_err()
        {
            kill_group(pid, libc::SIGTERM);
            if tokio::time::timeout(SHUTDOWN_STEP, &mut close)
                .await
                .is_err()
            {
                kill_group(pid, libc::SIGKILL);
                let _ = tokio::time::timeout(SHUTDOWN_STEP, &mut close).await;
            }
        }
    }
    // Whatever the server started and left running in its group.
    kill_group(pid, libc::SIGKILL);
}

/// Sends `signal` to the process group `pid` leads (each server is started as the leader of
/// a new group). A group with no process left is not an error.
fn kill_group(pid: Option<u32>, signal: libc::c_int) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        if pid > 1 {
            // SAFETY: killpg only sends a signal; the group id is the child's own pid.
            unsafe {
                libc::killpg(pid, signal);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (pid, signal);
}

/// `[A-Za-z0-9_.-]{1,128}`: a tool name every tool-call format carries as it is.
fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The server's command line, for approval prompts.
fn command_line(config: &McpServerConfig) -> String {
    std::iter::once(&config.command)
        .chain(&config.args)
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `why`, and the last line the server wrote on stderr if any.
fn with_stderr(why: String, tail: &StderrTail) -> String {
    match tail.last_line() {
        Some(line) => format!("{why} (its stderr: {line})"),
        None => why,
    }
}

/// The last [`STDERR_TAIL`] bytes a server wrote on stderr.
pub(crate) struct StderrTail {
    bytes: Mutex<VecDeque<u8>>,
    /// Becomes true when the pipe is closed (every process holding it has exited).
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for StderrTail {
    fn default() -> StderrTail {
        StderrTail {
            bytes: Mutex::default(),
            closed: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl StderrTail {
    async fn drain(self: Arc<Self>, mut stderr: tokio::process::ChildStderr) {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Ok(mut bytes) = self.bytes.lock() {
                bytes.extend(&buf[..n]);
                let excess = bytes.len().saturating_sub(STDERR_TAIL);
                bytes.drain(..excess);
            }
        }
        self.closed.send_replace(true);
    }

    /// Waits until the pipe is closed, or `limit` passes.
    async fn closed(&self, limit: Duration) {
        let mut closed = self.closed.subscribe();
        let _ = tokio::time::timeout(limit, closed.wait_for(|c| *c)).await;
    }

    /// The last non-empty line, cut to 200 characters.
    pub(crate) fn last_line(&self) -> Option<String> {
        let bytes = self.bytes.lock().ok()?;
        let (a, b) = bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
        let mut line: String = line.chars().filter(|c| !c.is_control()).collect();
        if line.chars().count() > 200 {
            line = line.chars().take(200).collect::<String>() + "…";
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_what_every_call_format_carries() {
        for ok in ["echo", "get-sum", "a.b", "x_1", &"t".repeat(128)] {
            assert!(valid_tool_name(ok), "{ok}");
        }
        for bad in ["", "two words", "é", "a/b", "<x>", &"t".repeat(129)] {
            assert!(!valid_tool_name(bad), "{bad}");
        }
    }

    #[test]
    fn stderr_tail_keeps_the_last_line_whole_and_short() {
        let tail = StderrTail::default();
        assert_eq!(tail.last_line(), None);
        tail.bytes
            .lock()
            .unwrap()
            .extend(b"npm ERR! 404\n\x1b[31mnot found\x1b[0m\n\n");
        assert_eq!(tail.last_line().as_deref(), Some("[31mnot found[0m"));
        tail.bytes.lock().unwrap().extend("é".repeat(300).bytes());
        assert_eq!(tail.last_line().unwrap().chars().count(), 201);
    }

    #[test]
    fn command_lines_quote_what_has_spaces() {
        let config = McpServerConfig {
            command: "npx".into(),
            args: vec!["-y".into(), "my server".into(), String::new()],
            env: Default::default(),
            read_only_tools: vec![],
            startup_timeout_sec: None,
            tool_timeout_sec: None,
        };
        assert_eq!(command_line(&config), r#"npx -y "my server" """#);
    }
}
