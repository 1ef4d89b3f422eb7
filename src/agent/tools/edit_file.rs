//! `edit_file`: replaces one exact piece of text in a file in the workspace.
//!
//! `old_text` must occur exactly once (occurrences are counted overlapping, so `aa` in
//! `aaa` is two): missing or repeated text fails with a message saying which, and the file
//! is left as it was. The preview is the unified diff of the edit.

use serde_json::{json, Value};

use super::write_file::{current_text, write_atomic};
use super::{diff, failed, spec, Args};
use crate::agent::{Effect, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

pub const NAME: &str = "edit_file";

pub struct EditFile {
    spec: ToolSpec,
}

impl EditFile {
    pub fn new() -> EditFile {
        EditFile {
            spec: spec(
                NAME,
                "Replace one exact piece of text in a file in the workspace. old_text must \
                 appear exactly once in the file (include enough surrounding lines to make it \
                 unique); it is replaced by new_text.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File path, relative to the workspace"},
                        "old_text": {"type": "string", "description": "The exact text to replace"},
                        "new_text": {"type": "string", "description": "The text to put in its place"}
                    },
                    "required": ["path", "old_text", "new_text"],
                    "additionalProperties": false
                }),
            ),
        }
    }

    /// The file's text now and after the edit, and the path as given.
    fn plan(
        &self,
        args: &Value,
        ctx: &ToolContext,
    ) -> Result<(std::path::PathBuf, String, String, String), ToolError> {
        let a = Args::new(NAME, args, &self.spec)?;
        let (path, shown) = a.path("path", ctx)?;
        let old_text = a.str("old_text")?;
        let new_text = a.str("new_text")?;
        if old_text.is_empty() {
            return Err(a.bad("`old_text` is empty".into()));
        }
        let Some(before) = current_text(&path, shown).map_err(rename)? else {
            return Err(failed(NAME, format!("{shown}: no such file")));
        };
        let at = match occurrences(&before, old_text) {
            (0, _) => return Err(failed(NAME, format!("old_text not found in {shown}"))),
            (1, at) => at,
            (n, _) => {
                return Err(failed(
                    NAME,
                    format!("old_text occurs {n} times in {shown}; include more of the text around it so it occurs once"),
                ))
            }
        };
        let after = format!(
            "{}{}{}",
            &before[..at],
            new_text,
            &before[at + old_text.len()..]
        );
        Ok((path, shown.to_string(), before, after))
    }
}

impl Default for EditFile {
    fn default() -> Self {
        Self::new()
    }
}

/// `current_text` speaks as write_file; errors here name edit_file.
fn rename(e: ToolError) -> ToolError {
    match e {
        ToolError::Failed { message, .. } => failed(NAME, message),
        e => e,
    }
}

/// How often `needle` occurs in `hay`, overlaps counted, and where the first one starts.
fn occurrences(hay: &str, needle: &str) -> (usize, usize) {
    let mut count = 0;
    let mut first = 0;
    let mut from = 0;
    while let Some(i) = hay[from..].find(needle) {
        if count == 0 {
            first = from + i;
        }
        count += 1;
        // Step one character, not one byte, to stay on a char boundary.
        let step = hay[from + i..].chars().next().map_or(1, char::len_utf8);
        from += i + step;
    }
    (count, first)
}

impl Tool for EditFile {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effect(&self) -> Effect {
        Effect::Writes
    }

    fn check(&self, args: &Value, ctx: &ToolContext) -> Result<(), ToolError> {
        self.plan(args, ctx).map(|_| ())
    }

    fn preview(&self, args: &Value, ctx: &ToolContext) -> Option<String> {
        Some(match self.plan(args, ctx) {
            Ok((_, shown, before, after)) => diff(&shown, Some(&before), &after),
            Err(e) => format!("this edit cannot be made: {e}"),
        })
    }

    fn run(&self, args: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let (path, shown, before, after) = self.plan(args, ctx)?;
        write_atomic(&path, after.as_bytes()).map_err(|e| failed(NAME, format!("{shown}: {e}")))?;
        Ok(ToolOutput {
            ok: true,
            text: format!(
                "edited {shown} ({} bytes, was {})",
                after.len(),
                before.len()
            ),
            truncated: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::occurrences;

    #[test]
    fn occurrences_count_overlaps_and_find_the_first() {
        assert_eq!(occurrences("aaa", "aa"), (2, 0));
        assert_eq!(occurrences("xay", "a"), (1, 1));
        assert_eq!(occurrences("héhé", "é"), (2, 1));
        assert_eq!(occurrences("abc", "d"), (0, 0));
    }
}
