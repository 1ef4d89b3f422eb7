//! `shell`: `sh -c TEXT` in the workspace.
//!
//! Invariants:
//! - The command runs in its own process group (`process_group(0)`), stdin from
//!   `/dev/null`, stdout and stderr into one pipe (interleaved as written), under the
//!   Landlock sandbox unless `ToolContext::sandbox` is `Off` or the kernel has none
//!   (`sandbox.rs`; the policy decides beforehand whether an unconfined command may run).
//! - Output is kept under the cap, start and end (`output::Cut::Middle`), marked where cut;
//!   memory stays bounded whatever the command prints.
//! - On timeout or cancel the whole group gets SIGTERM, then SIGKILL once `sh` has ended
//!   or after [`KILL_GRACE`]; when `sh` itself ends, whatever it left running in its group is
//!   killed too, so no process of the call outlives it (one that left the group with
//!   `setsid` is beyond reach, and the pipe is then read for at most [`DRAIN`] more).
//! - The result ends with the exit status: `[exit code N]`, `[killed by signal N]` or
//!   `[timed out after N s; its processes were killed]`; `ok` is exit code 0. A cancel is
//!   `ToolError::Cancelled`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{failed, spec, Args};
use crate::agent::output::{CappedText, Cut};
use crate::agent::{sandbox, Effect, Sandbox, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

pub const NAME: &str = "shell";

/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_millis(1500);
/// How long the pipe is still read after the command's group is gone.
pub const DRAIN: Duration = Duration::from_millis(500);

pub struct Shell {
    spec: ToolSpec,
}

impl Shell {
    pub fn new() -> Shell {
        Shell {
            spec: spec(
                NAME,
                "Run a shell command (sh -c) in the workspace folder and get its output \
                 (stdout and stderr together) and exit code. No input; it is stopped after a \
                 timeout; anything it starts in the background is stopped when it ends.",
                json!({
                    "type": "object",
                    "properties": {
                        "command": {"type": "string", "description": "The command line"}
                    },
                    "required": ["command"],
                    "additionalProperties": false
                }),
            ),
        }
    }
}

impl Default for Shell {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for Shell {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effect(&self) -> Effect {
        Effect::Executes
    }

    fn runs_in_sandbox(&self) -> bool {
        true
    }

    fn check(&self, args: &Value, _ctx: &ToolContext) -> Result<(), ToolError> {
        Args::new(NAME, args, &self.spec).map(|_| ())
    }

    fn preview(&self, args: &Value, _ctx: &ToolContext) -> Option<String> {
        args.get("command")
            .and_then(Value::as_str)
            .map(|c| format!("$ {c}"))
    }

    fn run(&self, args: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let a = Args::new(NAME, args, &self.spec)?;
        let text = a.str("command")?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(text);
        run_command(NAME, cmd, ctx)
    }
}

/// Runs `cmd` in the workspace under the context's limits (cwd, group, pipe, sandbox,
/// timeout, cancel, cap). Shared with user tools, which build their argv without a shell.
pub fn run_command(
    tool: &str,
    mut cmd: Command,
    ctx: &ToolContext,
) -> Result<ToolOutput, ToolError> {
    if ctx.is_cancelled() {
        return Err(ToolError::Cancelled);
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| failed(tool, format!("{what}: {e}"));
    // std's pipe: both ends close on exec; the child gets the write end as stdout/stderr.
    let (read_end, write_end) = std::io::pipe().map_err(|e| fail("cannot make a pipe", &e))?;
    let write_end2 = write_end
        .try_clone()
        .map_err(|e| fail("cannot make a pipe", &e))?;
    cmd.current_dir(ctx.workspace.root())
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_end2))
        .process_group(0);
    if ctx.sandbox == Sandbox::Landlock {
        match sandbox::prepare(ctx.workspace.root()) {
            Ok(Some(p)) => sandbox::apply(&mut cmd, p),
            Ok(None) => {} // no Landlock here: the policy allowed running unconfined
            Err(e) => return Err(failed(tool, e.to_string())),
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| fail("cannot start the command", &e));
    // The parent's copies of the write end must go, or the pipe never reaches EOF.
    drop(cmd);
    let child = child?;
    let pgid = child.id() as libc::pid_t;
    let mut run = Running {
        child,
        pgid,
        out: CappedText::new(ctx.output_cap, Cut::Middle),
        pipe: Some(read_end),
    };
    let outcome = run.wait(ctx);
    let (mut text, truncated) =
        std::mem::replace(&mut run.out, CappedText::new(0, Cut::End)).finish();
    let (ok, status) = match outcome {
        Outcome::Cancelled => return Err(ToolError::Cancelled),
        Outcome::TimedOut => (
            false,
            format!(
                "[timed out after {} s; its processes were killed]",
                ctx.timeout.as_secs_f64()
            ),
        ),
        Outcome::Exited(s) => describe(s),
        Outcome::Error(e) => return Err(fail("waiting for the command", &e)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&status);
    Ok(ToolOutput {
        ok,
        text,
        truncated,
    })
}

fn describe(s: ExitStatus) -> (bool, String) {
    match (s.code(), s.signal()) {
        (Some(c), _) => (c == 0, format!("[exit code {c}]")),
        (None, Some(sig)) => (false, format!("[killed by signal {sig}]")),
        _ => (false, "[ended]".into()),
    }
}

enum Outcome {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
    Error(std::io::Error),
}

/// A started command: its child, its group and the read end of its pipe.
struct Running {
    child: Child,
    pgid: libc::pid_t,
    out: CappedText,
    pipe: Option<std::io::PipeReader>,
}

impl Running {
    fn wait(&mut self, ctx: &ToolContext) -> Outcome {
        let deadline = Instant::now() + ctx.timeout;
        loop {
            self.read_for(Duration::from_millis(50));
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // `sh` is done: what it left behind in its group goes with it.
                    self.signal_group(libc::SIGKILL);
                    self.drain();
                    return Outcome::Exited(status);
                }
                Ok(None) => {}
                Err(e) => {
                    self.stop();
                    return Outcome::Error(e);
                }
            }
            if ctx.is_cancelled() {
                self.stop();
                return Outcome::Cancelled;
            }
            if Instant::now() >= deadline {
                self.stop();
                return Outcome::TimedOut;
            }
        }
    }

    /// SIGTERM to the group; SIGKILL to what is left once the command's own process has
    /// ended or the grace period is over; the child reaped.
    fn stop(&mut self) {
        self.signal_group(libc::SIGTERM);
        let grace = Instant::now() + KILL_GRACE;
        while Instant::now() < grace {
            self.read_for(Duration::from_millis(20));
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
        self.drain();
    }

    fn signal_group(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a negative pid signals the process group we made.
        unsafe {
            libc::kill(-self.pgid, sig);
        }
    }

    /// Reads what the pipe has until it closes, for at most [`DRAIN`].
    fn drain(&mut self) {
        let until = Instant::now() + DRAIN;
        while self.pipe.is_some() && Instant::now() < until {
            self.read_for(Duration::from_millis(20));
        }
    }

    /// Waits up to `wait` for output and reads what is there; drops the pipe at EOF.
    fn read_for(&mut self, wait: Duration) {
        let Some(pipe) = self.pipe.as_mut() else {
            std::thread::sleep(wait);
            return;
        };
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
        if n <= 0 {
            return;
        }
        let mut buf = [0u8; 16384];
        // poll said readable (or hung up), so this read does not block.
        match pipe.read(&mut buf) {
            Ok(0) => self.pipe = None,
            Ok(k) => self.out.push(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.pipe = None,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Whatever happened, nothing of the call outlives it.
        if let Ok(None) = self.child.try_wait() {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
