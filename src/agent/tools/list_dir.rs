//! `list_dir`: the entries of a folder in the workspace, one a line, sorted by name:
//! `dir  -  name/`, `file  SIZE  name`, `link  -  name -> target`, `other  -  name`.
//! At most [`MAX_ENTRIES`] are listed; the rest are counted. Symlinks are shown, never
//! followed.

use serde_json::{json, Value};

use super::{check_path, failed, spec, Args};
use crate::agent::{Effect, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

pub const NAME: &str = "list_dir";

/// Most entries listed.
pub const MAX_ENTRIES: usize = 1000;

pub struct ListDir {
    spec: ToolSpec,
}

impl ListDir {
    pub fn new() -> ListDir {
        ListDir {
            spec: spec(
                NAME,
                "List a folder in the workspace: each entry's kind (file, dir, link), size in \
                 bytes and name.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "Folder path, relative to the workspace (default: the workspace)"}
                    },
                    "additionalProperties": false
                }),
            ),
        }
    }
}

impl Default for ListDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for ListDir {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effect(&self) -> Effect {
        Effect::ReadOnly
    }

    fn check(&self, args: &Value, ctx: &ToolContext) -> Result<(), ToolError> {
        check_path(args, ctx, &self.spec)
    }

    fn run(&self, args: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let a = Args::new(NAME, args, &self.spec)?;
        let shown = a.opt_str("path").unwrap_or(".");
        let path = ctx.workspace.resolve(shown)?;
        let rd = std::fs::read_dir(&path).map_err(|e| failed(NAME, format!("{shown}: {e}")))?;
        let mut entries = Vec::new();
        for entry in rd {
            if ctx.is_cancelled() {
                return Err(ToolError::Cancelled);
            }
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let line = match entry.metadata() {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(entry.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    format!("link  -  {name} -> {target}")
                }
                Ok(m) if m.is_dir() => format!("dir  -  {name}/"),
                Ok(m) if m.is_file() => format!("file  {}  {name}", m.len()),
                _ => format!("other  -  {name}"),
            };
            entries.push((name, line));
        }
        entries.sort();
        let total = entries.len();
        let mut text: Vec<String> = entries
            .into_iter()
            .take(MAX_ENTRIES)
            .map(|(_, l)| l)
            .collect();
        if total > MAX_ENTRIES {
            text.push(format!("[… {} more entries …]", total - MAX_ENTRIES));
        }
        if total == 0 {
            text.push(format!("{shown} is empty"));
        }
        let mut out = ToolOutput::capped(true, &text.join("\n"), ctx.output_cap);
        out.truncated |= total > MAX_ENTRIES;
        Ok(out)
    }
}
