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

pub mod mcp;
pub mod registry;
pub mod tools;

use std::path::{Path, PathBuf};
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

/// The folder file tools may touch: every path is resolved (symlinks included) and must
/// stay inside `root`.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// `root` canonicalized; an error names it when it does not exist.
    pub fn new(root: &Path) -> Result<Workspace, ToolError> {
        let root = root.canonicalize().map_err(|e| ToolError::Workspace {
            path: root.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Workspace { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
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
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// `--sandbox`: how commands are confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// Landlock: writes only in the workspace and the temp dir.
    Landlock,
    Off,
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

/// Why a call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool `{0}`")]
    Unknown(String),
    #[error("{tool}: bad arguments: {message}")]
    BadArguments { tool: String, message: String },
    #[error("{path}: outside the workspace {root}")]
    OutsideWorkspace { path: String, root: String },
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
    /// What the call would change, shown when the user is asked (a diff for file edits).
    fn preview(&self, _args: &serde_json::Value, _ctx: &ToolContext) -> Option<String> {
        None
    }
    /// Runs the call.
    fn run(&self, args: &serde_json::Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError>;
}
