//! nemo's built-in tools, one file each: `shell`, `read_file`, `write_file`, `edit_file`,
//! `list_dir`, `search`.
//!
//! Invariants:
//! - Every argument is checked against the tool's own schema ([`super::schema::check`])
//!   before anything is touched; a bad one is `ToolError::BadArguments` naming it.
//! - Every path goes through [`super::Workspace::resolve`]; no tool opens a path any
//!   other way.
//! - A failure the model can act on (a missing file, text not found, a non-zero exit) is
//!   a `ToolOutput { ok: false, .. }` or `ToolError::Failed` with one line saying what.

pub mod edit_file;
pub mod list_dir;
pub mod read_file;
pub mod search;
pub mod shell;
pub mod write_file;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::{schema, Tool, ToolContext, ToolError};
use crate::protocol::ToolSpec;

/// Every built-in tool.
pub fn builtins() -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(shell::Shell::new()),
        Arc::new(read_file::ReadFile::new()),
        Arc::new(write_file::WriteFile::new()),
        Arc::new(edit_file::EditFile::new()),
        Arc::new(list_dir::ListDir::new()),
        Arc::new(search::Search::new()),
    ]
}

/// The names of the built-ins, which user tools and MCP tools may not take.
pub const BUILTIN_NAMES: [&str; 6] = [
    shell::NAME,
    read_file::NAME,
    write_file::NAME,
    edit_file::NAME,
    list_dir::NAME,
    search::NAME,
];

fn spec(name: &str, description: &str, parameters: Value) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: description.into(),
        parameters,
    }
}

/// A call's arguments, checked against the tool's schema.
struct Args<'a> {
    tool: &'static str,
    v: &'a Value,
}

impl<'a> Args<'a> {
    fn new(tool: &'static str, v: &'a Value, spec: &ToolSpec) -> Result<Args<'a>, ToolError> {
        schema::check(v, &spec.parameters).map_err(|message| ToolError::BadArguments {
            tool: tool.into(),
            message,
        })?;
        Ok(Args { tool, v })
    }

    fn bad(&self, message: String) -> ToolError {
        ToolError::BadArguments {
            tool: self.tool.into(),
            message,
        }
    }

    /// A required string (the schema made sure it is one).
    fn str(&self, key: &str) -> Result<&'a str, ToolError> {
        self.opt_str(key)
            .ok_or_else(|| self.bad(format!("missing required argument `{key}`")))
    }

    fn opt_str(&self, key: &str) -> Option<&'a str> {
        self.v.get(key).and_then(Value::as_str)
    }

    /// An optional count of at least 1.
    fn opt_line(&self, key: &str) -> Result<Option<usize>, ToolError> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(f) if f >= 1.0 && f.fract() == 0.0 && f <= usize::MAX as f64 => {
                    Ok(Some(f as usize))
                }
                _ => Err(self.bad(format!("`{key}`: must be a line number from 1, got {v}"))),
            },
        }
    }

    /// A path argument, resolved inside the workspace.
    fn path(&self, key: &str, ctx: &ToolContext) -> Result<(PathBuf, &'a str), ToolError> {
        let p = self.str(key)?;
        Ok((ctx.workspace.resolve(p)?, p))
    }
}

/// The arguments fit the schema and `path`, when given, resolves inside the workspace.
fn check_path(args: &Value, ctx: &ToolContext, spec: &ToolSpec) -> Result<(), ToolError> {
    let name = BUILTIN_NAMES
        .iter()
        .find(|n| **n == spec.name)
        .copied()
        .unwrap_or("tool");
    let a = Args::new(name, args, spec)?;
    if let Some(p) = a.opt_str("path") {
        ctx.workspace.resolve(p)?;
    }
    Ok(())
}

fn failed(tool: &str, message: impl Into<String>) -> ToolError {
    ToolError::Failed {
        tool: tool.into(),
        message: message.into(),
    }
}

/// The first 8 KiB hold a NUL byte: not text.
fn looks_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(8192)].contains(&0)
}

/// A unified diff of `old` → `new` for `shown` (the path as the model gave it).
fn diff(shown: &str, old: Option<&str>, new: &str) -> String {
    let d = similar::TextDiff::from_lines(old.unwrap_or(""), new);
    let from = if old.is_some() {
        format!("a/{shown}")
    } else {
        "/dev/null".into()
    };
    let text = d
        .unified_diff()
        .context_radius(3)
        .header(&from, &format!("b/{shown}"))
        .to_string();
    if text.is_empty() {
        format!("{shown}: no change")
    } else {
        text
    }
}
