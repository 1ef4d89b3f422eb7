//! Which tool calls run, which wait for the user, and which are refused.
//!
//! | effect \ mode | `read-only` | `ask` | `auto` |
//! |---|---|---|---|
//! | read-only | run | run | run |
//! | writes | refuse | ask (run if approved for the session) | run |
//! | executes | refuse | ask (run if approved for the session) | run, but refuse a sandboxed tool where Landlock is missing and `--sandbox` is not `off` |
//!
//! Invariants:
//! - "Approved for the session" (`a`) is remembered per exact call: the tool's name and its
//!   arguments as canonical JSON (object keys sorted at every level), so `{"a":1,"b":2}` and
//!   `{"b":2,"a":1}` are one call, and any other argument is another. It lives in this
//!   value only: nothing is remembered across sessions.
//! - A tool's own claim to be read-only is believed only for nemo's built-ins and user tools
//!   the user marked `read_only` in config.toml (both set their `Effect` from that); MCP
//!   tools declare theirs in `mcp*`.
//! - `nemo run` has no one to ask: [`run_mode`] gives `read-only` unless its flag says
//!   `auto` (never from config) and refuses `ask`; [`offer_for_run`] refuses, before any
//!   model loads, a named tool that would never run, and narrows `all` to what can.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::registry::Registry;
use super::sandbox::Support;
use super::{Effect, Sandbox, Tool, ToolContext};
use crate::protocol::{ApprovalDecision, ToolCall};

/// `--approval` / `approval = "…"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// Read-only tools run; anything that writes or runs waits for the user.
    Ask,
    /// Read-only tools run; the rest are refused.
    ReadOnly,
    /// Everything runs (commands under the sandbox).
    Auto,
}

impl fmt::Display for ApprovalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApprovalMode::Ask => "ask",
            ApprovalMode::ReadOnly => "read-only",
            ApprovalMode::Auto => "auto",
        })
    }
}

impl FromStr for ApprovalMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ask" => Ok(ApprovalMode::Ask),
            "read-only" | "read_only" | "readonly" => Ok(ApprovalMode::ReadOnly),
            "auto" => Ok(ApprovalMode::Auto),
            other => Err(format!(
                "approval must be ask, read-only or auto, not {other:?}"
            )),
        }
    }
}

impl ApprovalMode {
    /// `nemo chat`: the flag, else config.toml's `approval`, else `ask`.
    pub fn for_chat(flag: Option<ApprovalMode>, config: Option<ApprovalMode>) -> ApprovalMode {
        flag.or(config).unwrap_or(ApprovalMode::Ask)
    }
}

/// `nemo run`'s mode: `read-only` unless its own flag says otherwise (config.toml's
/// `approval` is not read: a file must not turn a script into one that runs commands).
/// `ask` is refused: there is no one to ask. The error is one line naming the flag.
pub fn run_mode(flag: Option<ApprovalMode>) -> Result<ApprovalMode, String> {
    match flag {
        None => Ok(ApprovalMode::ReadOnly),
        Some(ApprovalMode::Ask) => Err(
            "--approval ask: nemo run has no one to ask; use --approval read-only (the default) or --approval auto"
                .into(),
        ),
        Some(m) => Ok(m),
    }
}

/// What the policy says about one call.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Run,
    /// Wait for the user: why, and what it would change.
    Ask {
        reason: String,
        preview: Option<String>,
    },
    /// Not run, and why (goes back to the model).
    Refuse(String),
}

/// The approval mode, the sandbox, and this session's remembered approvals.
#[derive(Clone, Debug)]
pub struct Policy {
    mode: ApprovalMode,
    sandbox: Sandbox,
    landlock: bool,
    approved: HashSet<String>,
}

impl Policy {
    /// `support` is `sandbox::support()` outside tests.
    pub fn new(mode: ApprovalMode, sandbox: Sandbox, support: &Support) -> Policy {
        Policy {
            mode,
            sandbox,
            landlock: support.is_available(),
            approved: HashSet::new(),
        }
    }

    pub fn mode(&self) -> ApprovalMode {
        self.mode
    }

    /// Changes the mode (a front end's `/approval`); remembered approvals stay.
    pub fn set_mode(&mut self, mode: ApprovalMode) {
        self.mode = mode;
    }

    /// Whether a sandboxed tool would run without confinement.
    fn unconfined(&self, tool: &dyn Tool) -> bool {
        tool.runs_in_sandbox() && (self.sandbox == Sandbox::Off || !self.landlock)
    }

    /// Why `auto` will not run `tool`, if it will not.
    fn auto_refusal(&self, tool: &dyn Tool) -> Option<String> {
        (tool.runs_in_sandbox() && self.sandbox == Sandbox::Landlock && !self.landlock).then(|| {
            format!(
                "`{}` runs a command, this kernel has no Landlock to confine it, and auto mode runs no command unconfined (--sandbox off allows it)",
                tool.spec().name
            )
        })
    }

    fn what(&self, tool: &dyn Tool) -> String {
        match tool.effect() {
            Effect::ReadOnly => "reads".into(),
            Effect::Writes => "writes files in the workspace".into(),
            Effect::Executes if !tool.runs_in_sandbox() => "runs a program".into(),
            Effect::Executes if self.unconfined(tool) => {
                let why = if self.sandbox == Sandbox::Off {
                    "--sandbox off"
                } else {
                    "this kernel has no Landlock"
                };
                format!("runs a command, unconfined ({why})")
            }
            Effect::Executes => {
                "runs a command (Landlock: it can write only in the workspace and the temp dir)"
                    .into()
            }
        }
    }

    pub fn decide(&self, tool: &dyn Tool, call: &ToolCall, ctx: &ToolContext) -> Decision {
        if tool.effect() == Effect::ReadOnly {
            return Decision::Run;
        }
        match self.mode {
            ApprovalMode::ReadOnly => Decision::Refuse(format!(
                "`{}` {}, and the approval mode is read-only",
                tool.spec().name,
                self.what(tool)
            )),
            ApprovalMode::Auto => match self.auto_refusal(tool) {
                Some(why) => Decision::Refuse(why),
                None => Decision::Run,
            },
            ApprovalMode::Ask if self.approved.contains(&call_key(call)) => Decision::Run,
            ApprovalMode::Ask => Decision::Ask {
                reason: self.what(tool),
                preview: tool.preview(call.arguments(), ctx),
            },
        }
    }

    /// Takes the user's answer: a `Session` approval is remembered for this exact call.
    /// True when the call may run.
    pub fn answer(&mut self, call: &ToolCall, decision: &ApprovalDecision) -> bool {
        match decision {
            ApprovalDecision::Once => true,
            ApprovalDecision::Session => {
                self.approved.insert(call_key(call));
                true
            }
            ApprovalDecision::Deny { .. } => false,
        }
    }

    /// Whether this exact call was approved for the session.
    pub fn is_approved(&self, call: &ToolCall) -> bool {
        self.approved.contains(&call_key(call))
    }
}

/// The exact call: its name and its arguments as canonical JSON.
pub fn call_key(call: &ToolCall) -> String {
    let mut s = String::new();
    s.push_str(call.name());
    s.push('\0');
    canonical(call.arguments(), &mut s);
    s
}

/// JSON with object keys sorted at every level.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        v => out.push_str(&v.to_string()),
    }
}

/// `--tools`: which tools a request offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolSelection {
    None,
    All,
    Named(Vec<String>),
}

impl FromStr for ToolSelection {
    type Err = String;

    /// `all`, `none`, or names separated by commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(ToolSelection::All),
            "none" | "" => Ok(ToolSelection::None),
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect();
                if names.is_empty() {
                    Err("--tools: give all, none or tool names separated by commas".into())
                } else {
                    Ok(ToolSelection::Named(names))
                }
            }
        }
    }
}

/// The tools `nemo run` offers under `policy`: `all` narrowed to those that can run, named
/// ones as named. A named tool the policy would never run (one that writes or runs without
/// `--approval auto`, or a command where auto cannot confine it) is an error naming it,
/// for the caller to exit 2 with before it loads the model; so is an unknown name.
pub fn offer_for_run(
    registry: &Registry,
    selection: &ToolSelection,
    policy: &Policy,
) -> Result<Registry, String> {
    let never_runs = |t: &dyn Tool| -> Option<String> {
        if t.effect() == Effect::ReadOnly {
            return None;
        }
        match policy.mode {
            ApprovalMode::Auto => policy.auto_refusal(t),
            _ => Some(format!("`{}` {}", t.spec().name, policy.what(t))),
        }
    };
    match selection {
        ToolSelection::None => Ok(Registry::new()),
        ToolSelection::All => Ok(registry.filtered(|t| never_runs(t).is_none())),
        ToolSelection::Named(names) => {
            let mut problems = Vec::new();
            for n in names {
                match registry.get(n) {
                    Err(_) => {
                        let known: Vec<&str> = registry.names().collect();
                        return Err(format!(
                            "--tools: no tool `{n}` (known: {})",
                            known.join(", ")
                        ));
                    }
                    Ok(t) => problems.extend(never_runs(t.as_ref())),
                }
            }
            if problems.is_empty() {
                return Ok(registry.filtered(|t| names.iter().any(|n| n == &t.spec().name)));
            }
            let hint = if policy.mode == ApprovalMode::Auto {
                "--sandbox off allows it"
            } else {
                "nemo run asks no one, so it offers such tools only with --approval auto"
            };
            Err(format!("--tools: {}; {hint}", problems.join("; ")))
        }
    }
}
