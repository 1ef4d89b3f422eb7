//! `search`: a regular expression over the text files under a path in the workspace,
//! honouring `.gitignore` (and `.ignore`, git's exclude files; hidden files are skipped),
//! through the `ignore` crate, the walker behind ripgrep.
//!
//! Matches come one a line as `file:line: text`, the file relative to the workspace, the
//! text cut at [`MAX_LINE_CHARS`]. At most [`MAX_MATCHES`] are listed. Symlinks are not
//! followed (a symlink inside the workspace that points inside is searched at its real
//! place); binary files (a NUL in the first 8 KiB) and files over [`MAX_FILE_BYTES`] are
//! skipped. The regex crate runs in linear time, so no pattern can hang the search.

use std::io::Read;

use serde_json::{json, Value};

use super::{check_path, failed, looks_binary, spec, Args};
use crate::agent::{Effect, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

pub const NAME: &str = "search";

pub const MAX_MATCHES: usize = 500;
pub const MAX_LINE_CHARS: usize = 300;
pub const MAX_FILE_BYTES: u64 = 16 << 20;

pub struct Search {
    spec: ToolSpec,
}

impl Search {
    pub fn new() -> Search {
        Search {
            spec: spec(
                NAME,
                "Search the text files in the workspace for a regular expression (Rust regex \
                 syntax), skipping what .gitignore ignores. Answers file:line: text for each match.",
                json!({
                    "type": "object",
                    "properties": {
                        "pattern": {"type": "string", "description": "Regular expression"},
                        "path": {"type": "string", "description": "File or folder to search, relative to the workspace (default: the workspace)"}
                    },
                    "required": ["pattern"],
                    "additionalProperties": false
                }),
            ),
        }
    }
}

impl Default for Search {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for Search {
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
        let pattern = a.str("pattern")?;
        let shown = a.opt_str("path").unwrap_or(".");
        let re = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 22)
            .build()
            .map_err(|e| a.bad(format!("`pattern`: {}", one_line(&e.to_string()))))?;
        let root = ctx.workspace.resolve(shown)?;
        if !root.exists() {
            return Err(failed(NAME, format!("{shown}: no such file or folder")));
        }
        let walker = ignore::WalkBuilder::new(&root)
            .follow_links(false)
            .require_git(false)
            .build();
        let mut lines = Vec::new();
        let mut more = false;
        'files: for entry in walker {
            if ctx.is_cancelled() {
                return Err(ToolError::Cancelled);
            }
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Some(text) = read_text(entry.path()) else {
                continue;
            };
            let file = ctx.workspace.display(entry.path());
            for (i, line) in text.lines().enumerate() {
                if !re.is_match(line) {
                    continue;
                }
                if lines.len() == MAX_MATCHES {
                    more = true;
                    break 'files;
                }
                let mut shown_line: String = line.chars().take(MAX_LINE_CHARS).collect();
                if shown_line.len() < line.len() {
                    shown_line.push('…');
                }
                lines.push(format!("{file}:{}: {shown_line}", i + 1));
            }
        }
        if lines.is_empty() {
            return Ok(ToolOutput {
                ok: true,
                text: "no matches".into(),
                truncated: false,
            });
        }
        if more {
            lines.push(format!("[… stopped at {MAX_MATCHES} matches …]"));
        }
        let mut out = ToolOutput::capped(true, &lines.join("\n"), ctx.output_cap);
        out.truncated |= more;
        Ok(out)
    }
}

/// The file's text, or None for a binary, huge or unreadable file.
fn read_text(path: &std::path::Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    if f.metadata().ok()?.len() > MAX_FILE_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES).read_to_end(&mut bytes).ok()?;
    if looks_binary(&bytes) {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
