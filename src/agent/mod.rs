//! The agent: the tools the model can call, the policy that decides which run, ask or are
//! refused, and (next) the loop that runs approved calls and feeds their results back.
//! It sits above the engine (`cli`/`tui`/`server` → `protocol` → `agent` → `engine`): the
//! engine never runs a tool, it only reports `Event::ToolCall`s.
//!
//! Invariants:
//! - Every tool declares its [`Effect`]. Nothing that writes or executes runs without the
//!   policy's consent (`policy.rs`), and the policy never trusts a tool's own claim to be
//!   read-only unless the tool is nemo's own or the user said so in config.toml.
//! - File tools are confined to the [`Workspace`] root: `..`, absolute paths elsewhere and
//!   symlinks that lead out are refused with a message naming the path.
//! - A tool run is bounded: its output is capped (and marked where cut), a command has a
//!   timeout, and a cancel stops it (the whole process group of a command).
//! - Errors a tool meets are results for the model (`ToolOutput { ok: false, .. }`), never
//!   panics; `ToolError` is for calls that could not be made at all (bad arguments,
//!   refused paths) and becomes a failed result too.

pub mod execute;
pub mod mcp;
pub mod output;
pub mod policy;
pub mod registry;
pub mod sandbox;
pub mod schema;
pub mod tools;
pub mod turn;
pub mod user_tools;
mod workspace;

pub use workspace::Workspace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::ToolSpec;

/// What running a tool can do to the user's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    /// Reads files or state; changes nothing.
    ReadOnly,
    /// Writes files inside the workspace.
    Writes,
    /// Runs a program.
    Executes,
}

/// Limits and handles every tool run gets.
#[derive(Clone, Debug)]
pub struct ToolContext {
    pub workspace: Workspace,
    /// Set when the user cancels the turn: a long tool stops (a command's whole process
    /// group is killed).
    pub cancel: Arc<AtomicBool>,
    /// Most bytes of output kept per result; the rest is cut with a marker.
    pub output_cap: usize,
    /// Longest a command may run.
    pub timeout: Duration,
    /// Whether commands run under Landlock (`--sandbox landlock|off`).
    pub sandbox: Sandbox,
}

impl ToolContext {
    /// Output cap when none is configured: 32 KiB, about 8k tokens.
    pub const DEFAULT_OUTPUT_CAP: usize = 32 * 1024;
    /// Command timeout when none is configured.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    /// The defaults: not cancelled, 32 KiB of output, 120 s per command, Landlock on.
    pub fn new(workspace: Workspace) -> ToolContext {
        ToolContext {
            workspace,
            cancel: Arc::new(AtomicBool::new(false)),
            output_cap: Self::DEFAULT_OUTPUT_CAP,
            timeout: Self::DEFAULT_TIMEOUT,
            sandbox: Sandbox::Landlock,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// `--sandbox`: how commands are confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sandbox {
    /// Landlock: writes only in the workspace and the temp dir.
    Landlock,
    Off,
}

impl std::fmt::Display for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sandbox::Landlock => "landlock",
            Sandbox::Off => "off",
        })
    }
}

impl std::str::FromStr for Sandbox {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "landlock" => Ok(Sandbox::Landlock),
            "off" => Ok(Sandbox::Off),
            other => Err(format!("sandbox must be landlock or off, not {other:?}")),
        }
    }
}

/// What a tool gives back to the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolOutput {
    /// False when the tool ran and failed (non-zero exit, a missing file, …).
    pub ok: bool,
    pub text: String,
    /// The text was cut to `ToolContext::output_cap` (and says so at the cut).
    pub truncated: bool,
}

impl ToolOutput {
    /// `text` cut to `cap` bytes (`output::Cut::End`), marked where cut.
    pub fn capped(ok: bool, text: &str, cap: usize) -> ToolOutput {
        let mut c = output::CappedText::new(cap, output::Cut::End);
        c.push_str(text);
        let (text, truncated) = c.finish();
        ToolOutput {
            ok,
            text,
            truncated,
        }
    }
}

/// Why a call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool `{0}`")]
    Unknown(String),
    #[error("{tool}: bad arguments: {message}")]
    BadArguments { tool: String, message: String },
    #[error("{path}: outside the workspace {root}")]
    OutsideWorkspace { path: String, root: String },
    /// A path that cannot be used (empty, a NUL byte, a file where a folder must be, …).
    #[error("{path}: {message}")]
    BadPath { path: String, message: String },
    #[error("workspace {path}: {message}")]
    Workspace { path: String, message: String },
    #[error("{tool}: {message}")]
    Failed { tool: String, message: String },
    #[error("cancelled")]
    Cancelled,
}

/// A tool the model can call.
pub trait Tool: Send + Sync {
    /// Its name, description and argument schema, as the model sees them.
    fn spec(&self) -> &ToolSpec;
    /// What running it can do (decides whether the policy asks).
    fn effect(&self) -> Effect;
    /// Checks the call before the policy or the user sees it (arguments, paths, an edit
    /// that cannot apply), so a call that cannot run is answered at once, never asked about.
    fn check(&self, _args: &serde_json::Value, _ctx: &ToolContext) -> Result<(), ToolError> {
        Ok(())
    }
    /// What the call would change, shown when the user is asked (a diff for file edits).
    fn preview(&self, _args: &serde_json::Value, _ctx: &ToolContext) -> Option<String> {
        None
    }
    /// Whether it runs a program under the command sandbox (`ToolContext::sandbox`): the
    /// policy will not run such a tool unconfined in `auto` mode where the kernel has no
    /// Landlock.
    fn runs_in_sandbox(&self) -> bool {
        false
    }
    /// Runs the call.
    fn run(&self, args: &serde_json::Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError>;
}
