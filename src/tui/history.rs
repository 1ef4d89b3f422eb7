//! The chat input history that persists across runs: what Up / Down step through.
//!
//! Invariants of [`History`]:
//! - At most [`HISTORY_CAP`] entries, oldest first, no empty entry, no two equal neighbours.
//! - The file is JSON lines (one JSON string per line), so multi-line entries survive.
//! - A file that exists but cannot be read or parsed is never overwritten: `save` is a
//!   no-op for that `History`, and [`History::load_error`] says why.
//! - `save` writes a temp file in the same directory, fsyncs it, then renames it over the
//!   target, so a crash leaves either the old or the new file, never half of one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Most entries a [`History`] keeps; the oldest go first.
pub const HISTORY_CAP: usize = 1000;

/// Input history, persisted as JSON lines. See the module docs for its invariants.
#[derive(Debug)]
pub struct History {
    /// Where it persists; `None` for [`History::in_memory`].
    path: Option<PathBuf>,
    entries: Vec<String>,
    /// Index of the entry being shown while navigating; `None` when editing the draft.
    nav: Option<usize>,
    /// What the user had typed before the first `prev`, restored past the newest entry.
    draft: String,
    load_error: Option<String>,
}

impl History {
    /// Reads the history at `path`. A missing file gives an empty history; a file that
    /// cannot be read or parsed gives an empty history, a [`load_error`](Self::load_error),
    /// and a `save` that leaves the file alone.
    pub fn load(path: &Path) -> History {
        let mut h = History {
            path: Some(path.to_path_buf()),
            ..History::in_memory()
        };
        match fs::read_to_string(path) {
            Ok(text) => match parse_history(&text) {
                Ok(entries) => {
                    for e in entries {
                        h.push_entry(&e);
                    }
                }
                Err(msg) => {
                    h.load_error = Some(format!(
                        "history file {} is corrupt ({msg}); it will not be overwritten",
                        path.display()
                    ));
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                h.load_error = Some(format!(
                    "cannot read history file {}: {e}; it will not be overwritten",
                    path.display()
                ));
            }
        }
        h
    }

    /// An empty history that is never written (for tests and `--no-history` style runs).
    pub fn in_memory() -> History {
        History {
            path: None,
            entries: Vec::new(),
            nav: None,
            draft: String::new(),
            load_error: None,
        }
    }

    /// Why loading failed, if it did (then `save` does nothing).
    pub fn load_error(&self) -> Option<&str> {
        self.load_error.as_deref()
    }

    /// The file this history loads from and saves to (`None` when in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends an entry (skipping blank text and a repeat of the newest entry), drops the
    /// oldest beyond [`HISTORY_CAP`], and ends any navigation.
    pub fn push(&mut self, entry: &str) {
        self.push_entry(entry);
        self.reset_navigation();
    }

    /// Leaves navigation: the next `prev` starts again from the newest entry.
    pub fn reset_navigation(&mut self) {
        self.nav = None;
        self.draft.clear();
    }

    /// One step older. On the first step `current_draft` is kept, to be restored by
    /// `next` past the newest entry. `None` when there is nothing older (keep the text).
    pub fn prev(&mut self, current_draft: &str) -> Option<&str> {
        let i = match self.nav {
            None => {
                let last = self.entries.len().checked_sub(1)?;
                self.draft = current_draft.to_string();
                last
            }
            Some(0) => return None,
            Some(i) => i - 1,
        };
        self.nav = Some(i);
        self.entries.get(i).map(String::as_str)
    }

    /// One step newer: the next entry, or the saved draft when stepping past the newest
    /// (which ends navigation). `None` when not navigating (keep the text).
    // Named for the key it serves (Down), beside `prev`; this is not an `Iterator`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<String> {
        let i = self.nav?;
        if i + 1 < self.entries.len() {
            self.nav = Some(i + 1);
            return self.entries.get(i + 1).cloned();
        }
        self.nav = None;
        Some(std::mem::take(&mut self.draft))
    }

    /// Writes the history atomically (temp file in the same directory, fsync, rename),
    /// creating the directory if needed. Does nothing when [`load_error`](Self::load_error)
    /// is set, so a file we could not understand is never replaced, and for an
    /// [`in_memory`](Self::in_memory) history.
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.load_error.is_some() {
            return Ok(());
        }
        let mut body = String::new();
        for e in &self.entries {
            body.push_str(&serde_json::to_string(e).map_err(io::Error::other)?);
            body.push('\n');
        }
        write_atomic(path, body.as_bytes())
    }

    fn push_entry(&mut self, entry: &str) {
        if entry.trim().is_empty() || self.entries.last().is_some_and(|l| l == entry) {
            return;
        }
        self.entries.push(entry.to_string());
        if self.entries.len() > HISTORY_CAP {
            let excess = self.entries.len() - HISTORY_CAP;
            self.entries.drain(..excess);
        }
    }
}

/// Parses JSON lines of strings; blank lines are skipped, anything else is an error that
/// names the line.
fn parse_history(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: String =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        out.push(entry);
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically, creating the directory first.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(d)?;
    }
    crate::chat::session_store::write_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
    }

    #[test]
    fn history_in_memory_never_writes() {
        let mut h = History::in_memory();
        h.push("a");
        assert!(h.save().is_ok());
        assert!(h.path().is_none());
        assert_eq!(h.prev(""), Some("a"));
    }

    #[test]
    fn history_missing_file_is_empty_without_error() {
        let d = tmp();
        let h = History::load(&d.path().join("history.jsonl"));
        assert!(h.is_empty());
        assert!(h.load_error().is_none());
    }

    #[test]
    fn history_push_skips_blank_and_consecutive_duplicates() {
        let d = tmp();
        let mut h = History::load(&d.path().join("h"));
        h.push("a");
        h.push("a");
        h.push("  ");
        h.push("");
        h.push("b");
        h.push("a");
        assert_eq!(h.entries(), ["a", "b", "a"]);
    }

    #[test]
    fn history_is_capped_dropping_oldest() {
        let d = tmp();
        let mut h = History::load(&d.path().join("h"));
        for i in 0..HISTORY_CAP + 5 {
            h.push(&i.to_string());
        }
        assert_eq!(h.len(), HISTORY_CAP);
        assert_eq!(h.entries()[0], "5");
    }

    #[test]
    fn history_navigation_walks_back_and_restores_draft() {
        let d = tmp();
        let mut h = History::load(&d.path().join("h"));
        assert_eq!(h.next(), None, "not navigating");
        h.push("one");
        h.push("two");
        assert_eq!(h.prev("draft"), Some("two"));
        assert_eq!(h.prev("ignored"), Some("one"));
        assert_eq!(h.prev("ignored"), None, "nothing older");
        assert_eq!(h.next().as_deref(), Some("two"));
        assert_eq!(h.next().as_deref(), Some("draft"));
        assert_eq!(h.next(), None, "navigation ended");
        assert_eq!(h.prev("new draft"), Some("two"));
        h.push("three");
        assert_eq!(h.next(), None, "push ends navigation");
    }

    #[test]
    fn history_prev_on_empty_history_is_none() {
        let d = tmp();
        let mut h = History::load(&d.path().join("h"));
        assert_eq!(h.prev("x"), None);
        assert_eq!(h.next(), None);
    }

    #[test]
    fn history_round_trips_multiline_entries() {
        let d = tmp();
        let path = d.path().join("sub").join("history.jsonl");
        let mut h = History::load(&path);
        h.push("line one\nline two");
        h.push("quote \" and \\ and 世界");
        h.push("plain");
        h.save().unwrap_or_else(|e| panic!("save: {e}"));
        let h2 = History::load(&path);
        assert!(h2.load_error().is_none());
        assert_eq!(h2.entries(), h.entries());
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 3, "one JSON string per line");
    }

    #[test]
    fn history_corrupt_file_loads_empty_and_is_not_overwritten() {
        let d = tmp();
        let path = d.path().join("history.jsonl");
        let original = "\"ok\"\nnot json at all\n";
        fs::write(&path, original).unwrap_or_else(|e| panic!("write: {e}"));
        let mut h = History::load(&path);
        assert!(h.is_empty());
        let err = h.load_error().unwrap_or_default().to_string();
        assert!(err.contains("line 2"), "{err}");
        h.push("new entry");
        h.save().unwrap_or_else(|e| panic!("save: {e}"));
        assert_eq!(fs::read_to_string(&path).unwrap_or_default(), original);
    }

    #[test]
    fn history_unreadable_path_reports_error() {
        let d = tmp();
        // A directory where the file should be cannot be read as text.
        let h = History::load(d.path());
        assert!(h.load_error().is_some());
    }

    #[test]
    fn history_save_is_atomic_and_leaves_no_temp_files() {
        let d = tmp();
        let path = d.path().join("history.jsonl");
        let mut h = History::load(&path);
        for i in 0..3 {
            h.push(&format!("entry {i}"));
            h.save().unwrap_or_else(|e| panic!("save: {e}"));
        }
        let names: Vec<String> = fs::read_dir(d.path())
            .unwrap_or_else(|e| panic!("read_dir: {e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["history.jsonl".to_string()]);
        assert_eq!(History::load(&path).len(), 3);
    }
}
