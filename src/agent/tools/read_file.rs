//! `read_file`: a text file in the workspace, whole or a range of lines.
//!
//! Output is the file's text as it is, without line numbers (so it can be copied into
//! `edit_file`'s `old_text` unchanged). When it runs past the output cap it is cut at a
//! line end and marked `[… N bytes cut: read on with start_line = L …]`. Only regular
//! files are read (a FIFO or a device would block or never end); a binary file (a NUL in
//! its first 8 KiB) is named, not shown.

use std::io::{BufRead, BufReader, Read};

use serde_json::{json, Value};

use super::{check_path, failed, looks_binary, spec, Args};
use crate::agent::{Effect, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

pub const NAME: &str = "read_file";

pub struct ReadFile {
    spec: ToolSpec,
}

impl ReadFile {
    pub fn new() -> ReadFile {
        ReadFile {
            spec: spec(
                NAME,
                "Read a text file in the workspace. Give start_line and end_line (1-based, \
                 inclusive) to read part of it. The text comes back as it is, without line numbers.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File path, relative to the workspace"},
                        "start_line": {"type": "integer", "minimum": 1, "description": "First line to read (1-based)"},
                        "end_line": {"type": "integer", "minimum": 1, "description": "Last line to read (inclusive)"}
                    },
                    "required": ["path"],
                    "additionalProperties": false
                }),
            ),
        }
    }
}

impl Default for ReadFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for ReadFile {
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
        let (path, shown) = a.path("path", ctx)?;
        let start = a.opt_line("start_line")?.unwrap_or(1);
        let end = a.opt_line("end_line")?;
        if let Some(end) = end {
            if end < start {
                return Err(a.bad(format!("end_line {end} is before start_line {start}")));
            }
        }
        let meta = std::fs::metadata(&path).map_err(|e| failed(NAME, format!("{shown}: {e}")))?;
        if meta.is_dir() {
            return Err(failed(
                NAME,
                format!("{shown} is a folder (list_dir lists it)"),
            ));
        }
        if !meta.is_file() {
            return Err(failed(NAME, format!("{shown} is not a regular file")));
        }
        let file = std::fs::File::open(&path).map_err(|e| failed(NAME, format!("{shown}: {e}")))?;
        let mut r = BufReader::new(file);
        let mut first = Vec::new();
        (&mut r)
            .take(8192)
            .read_to_end(&mut first)
            .map_err(|e| failed(NAME, format!("{shown}: {e}")))?;
        if looks_binary(&first) {
            return Err(failed(
                NAME,
                format!("{shown} is a binary file ({} bytes); not shown", meta.len()),
            ));
        }
        let mut r = BufReader::new(std::io::Cursor::new(first).chain(r));
        read_lines(&mut r, start, end, ctx.output_cap)
            .map_err(|e| failed(NAME, format!("{shown}: {e}")))
    }
}

/// Lines `start..=end` of `r`, cut at a line end past `cap` bytes.
fn read_lines(
    r: &mut impl BufRead,
    start: usize,
    end: Option<usize>,
    cap: usize,
) -> std::io::Result<ToolOutput> {
    let mut out: Vec<u8> = Vec::new();
    let mut line = Vec::new();
    let mut n = 0usize;
    let mut cut_bytes = 0usize;
    let mut resume_at = None;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        if n < start {
            continue;
        }
        if end.is_some_and(|e| n > e) {
            break;
        }
        if resume_at.is_some() {
            cut_bytes += line.len();
        } else if out.len() + line.len() <= cap {
            out.extend_from_slice(&line);
        } else if out.is_empty() {
            // One line longer than the cap: its head, and read on after it.
            out.extend_from_slice(&line[..cap]);
            cut_bytes += line.len() - cap;
            resume_at = Some(n + 1);
        } else {
            cut_bytes += line.len();
            resume_at = Some(n);
        }
    }
    if n < start && start > 1 {
        return Ok(ToolOutput {
            ok: false,
            text: format!("the file has {n} lines; start_line {start} is past its end"),
            truncated: false,
        });
    }
    let mut text = String::from_utf8_lossy(&out).into_owned();
    let truncated = resume_at.is_some();
    if let Some(l) = resume_at {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "[… {cut_bytes} bytes cut: read on with start_line = {l} …]"
        ));
    }
    Ok(ToolOutput {
        ok: true,
        text,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str, start: usize, end: Option<usize>, cap: usize) -> ToolOutput {
        read_lines(&mut text.as_bytes(), start, end, cap).unwrap()
    }

    #[test]
    fn ranges_are_one_based_and_inclusive() {
        let t = "a\nb\nc\nd\n";
        assert_eq!(lines(t, 2, Some(3), 100).text, "b\nc\n");
        assert_eq!(lines(t, 3, None, 100).text, "c\nd\n");
        assert_eq!(lines(t, 1, Some(99), 100).text, t);
        let past = lines(t, 9, None, 100);
        assert!(!past.ok);
        assert!(past.text.contains("has 4 lines"), "{}", past.text);
    }

    #[test]
    fn a_cut_ends_at_a_line_and_says_where_to_read_on() {
        let out = lines("aaaa\nbbbb\ncccc\n", 1, None, 12);
        assert!(out.truncated);
        assert_eq!(
            out.text,
            "aaaa\nbbbb\n[… 5 bytes cut: read on with start_line = 3 …]"
        );
        let long = lines("0123456789\nx\n", 1, None, 4);
        assert_eq!(
            long.text,
            "0123\n[… 9 bytes cut: read on with start_line = 2 …]"
        );
    }
}
