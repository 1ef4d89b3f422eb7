//! `write_file`: creates or replaces a file in the workspace, with its parent folders.
//!
//! The preview the user approves is a unified diff against what is there now. The file is
//! written beside itself under a temporary name and renamed over the old one, so a crash
//! or a full disk leaves the old file whole; the old file's permissions are kept.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use super::{diff, failed, spec, Args};
use crate::agent::{Effect, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

pub const NAME: &str = "write_file";

pub struct WriteFile {
    spec: ToolSpec,
}

impl WriteFile {
    pub fn new() -> WriteFile {
        WriteFile {
            spec: spec(
                NAME,
                "Create a file in the workspace, or replace its whole content. Parent folders \
                 are created. To change part of a file, use edit_file.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File path, relative to the workspace"},
                        "content": {"type": "string", "description": "The file's new content"}
                    },
                    "required": ["path", "content"],
                    "additionalProperties": false
                }),
            ),
        }
    }
}

impl Default for WriteFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for WriteFile {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effect(&self) -> Effect {
        Effect::Writes
    }

    fn check(&self, args: &Value, ctx: &ToolContext) -> Result<(), ToolError> {
        let a = Args::new(NAME, args, &self.spec)?;
        let (path, shown) = a.path("path", ctx)?;
        current_text(&path, shown).map(|_| ())
    }

    fn preview(&self, args: &Value, ctx: &ToolContext) -> Option<String> {
        let a = Args::new(NAME, args, &self.spec).ok()?;
        let (path, shown) = a.path("path", ctx).ok()?;
        let content = a.str("content").ok()?;
        let old = current_text(&path, shown).ok()?;
        Some(diff(shown, old.as_deref(), content))
    }

    fn run(&self, args: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let a = Args::new(NAME, args, &self.spec)?;
        let (path, shown) = a.path("path", ctx)?;
        let content = a.str("content")?;
        let old = current_text(&path, shown)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failed(NAME, format!("{shown}: {e}")))?;
        }
        write_atomic(&path, content.as_bytes())
            .map_err(|e| failed(NAME, format!("{shown}: {e}")))?;
        let text = match old {
            None => format!("created {shown} ({} bytes)", content.len()),
            Some(old) => format!("wrote {shown} ({} bytes, was {})", content.len(), old.len()),
        };
        Ok(ToolOutput {
            ok: true,
            text,
            truncated: false,
        })
    }
}

/// The file's text now: None when there is no file; an error for a folder, a device, or
/// a file that is not UTF-8 text (replacing it whole would lose bytes the diff can't show).
pub(super) fn current_text(path: &Path, shown: &str) -> Result<Option<String>, ToolError> {
    let tool = NAME;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(tool, format!("{shown}: {e}"))),
        Ok(m) if m.is_dir() => return Err(failed(tool, format!("{shown} is a folder"))),
        Ok(m) if !m.is_file() => {
            return Err(failed(tool, format!("{shown} is not a regular file")))
        }
        Ok(_) => {}
    }
    let bytes = std::fs::read(path).map_err(|e| failed(tool, format!("{shown}: {e}")))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| failed(tool, format!("{shown} is not UTF-8 text")))
}

/// Writes `bytes` to a new file beside `path` and renames it over `path`, keeping the old
/// file's permissions.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let perms = std::fs::metadata(path).ok().map(|m| m.permissions());
    let mut n = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{name}.nemo-{}-{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|_| file.sync_all())
        .and_then(|_| match perms {
            Some(p) => std::fs::set_permissions(&tmp, p),
            None => Ok(()),
        })
        .and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
