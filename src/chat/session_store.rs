//! Saved chat sessions: one pretty JSON file per session, holding what is needed to
//! reproduce the conversation (model identity, sampling, thinking options, system prompt,
//! every turn with its reasoning and numbers).
//!
//! Invariants:
//! - A session file is `<dir>/<name>.json`, where `name` is the session id (`save`) or a
//!   name the user chose (`save_as`); both match `[A-Za-z0-9._-]{1,64}` and never start
//!   with `.`, so no name can leave the directory and temp files never look like sessions.
//! - Every write goes through [`write_atomic`] (temp file in the same dir, fsync, rename):
//!   a crash leaves the old file or the new one, never half of one.
//! - A file that does not parse is reported with its path and line, and is never
//!   rewritten or deleted; `list` shows it with a marker, `latest` skips it, and
//!   [`SessionStore::latest_with_unreadable`] names it when it may be newer than the one
//!   picked. [`SessionStore::save_named`] (the user's `/save NAME`) never writes over a file
//!   that holds another session or cannot be read, unless asked to, and never over
//!   anything but a regular file.
//! - Only regular files are read (symlinks followed): a FIFO, socket, device or folder
//!   named `*.json` is reported, never opened, and a file is opened with `O_NONBLOCK` and
//!   checked again after `open`, so nothing swapped in can block. A file over
//!   [`MAX_SESSION_BYTES`] is refused without being read whole.
//! - Parsing never panics and every error displays as one line: text from the file that
//!   an error echoes is cut to [`ECHO_MAX`] characters, control characters replaced.
//! - Ids from [`new_id`] sort lexicographically by creation time and are unique within a
//!   process; timestamps are RFC 3339 UTC with milliseconds (`2025-01-31T09:05:00.123Z`),
//!   so they sort as strings too.
//! - `version` is [`SESSION_VERSION`]; a file with another version is refused, not guessed.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::model_identity::{file_kind, open_regular};
use crate::protocol::SamplingParams;
use crate::protocol::{Budget, Done, FinishReason, ThinkingOptions};
use crate::protocol::{Message, ToolCall};

pub use super::model_identity::ModelIdentity;

/// The session file format this build reads and writes.
pub const SESSION_VERSION: u32 = 1;

/// Largest session file read (a long chat with reasoning is a few MB).
pub const MAX_SESSION_BYTES: u64 = 64 << 20;

/// Most characters of file text an error echoes.
pub const ECHO_MAX: usize = 160;

/// Longest first-message preview in a [`SessionSummary`], in characters.
pub const PREVIEW_CHARS: usize = 60;

/// Numbers from one assistant reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnStats {
    pub prompt_tokens: usize,
    pub reasoning_tokens: usize,
    pub completion_tokens: usize,
    pub reused_tokens: usize,
    pub ttft_ms: f64,
    pub decode_tokens_per_s: f64,
    /// `stop`, `stop_string`, `length` or `cancelled`.
    pub finish_reason: String,
}

impl From<&Done> for TurnStats {
    fn from(d: &Done) -> Self {
        TurnStats {
            prompt_tokens: d.usage.prompt_tokens,
            reasoning_tokens: d.usage.reasoning_tokens,
            completion_tokens: d.usage.completion_tokens,
            reused_tokens: d.reused_tokens,
            ttft_ms: d.timings.ttft_ms,
            decode_tokens_per_s: d.timings.decode_tokens_per_s,
            finish_reason: finish_reason_name(d.finish_reason).to_string(),
        }
    }
}

fn finish_reason_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::StopString => "stop_string",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::MaxSteps => "max_steps",
    }
}

/// One user message and the reply to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub user: String,
    #[serde(default)]
    pub reasoning: String,
    #[serde(default)]
    pub answer: String,
    /// None when the reply never finished (e.g. the process ended mid-turn).
    #[serde(default)]
    pub stats: Option<TurnStats>,
    /// The turn's tool calls and what became of them, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolRecord>,
}

/// One tool call of a saved turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub call: ToolCall,
    /// The model step that made it (1-based).
    #[serde(default)]
    pub step: usize,
    /// `done`, `failed`, `denied`, or where it stood when the turn ended (`queued`,
    /// `waiting_for_approval`, `running`).
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// A saved session, as stored on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionFile {
    pub version: u32,
    pub id: String,
    /// RFC 3339 UTC.
    pub created: String,
    /// RFC 3339 UTC.
    pub updated: String,
    pub model: ModelIdentity,
    pub sampling: SamplingParams,
    pub thinking: ThinkingOptions,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub turns: Vec<Turn>,
}

impl SessionFile {
    /// A fresh session with a new id, created and updated now, no turns.
    pub fn new(
        model: ModelIdentity,
        sampling: SamplingParams,
        thinking: ThinkingOptions,
        system: Option<String>,
    ) -> SessionFile {
        let now = now_rfc3339();
        SessionFile {
            version: SESSION_VERSION,
            id: new_id(),
            created: now.clone(),
            updated: now,
            model,
            sampling,
            thinking,
            system,
            turns: Vec::new(),
        }
    }

    /// Sets `updated` to now.
    pub fn touch(&mut self) {
        self.updated = now_rfc3339();
    }

    /// The conversation as chat messages: the system prompt (if any), then per turn the
    /// user message and, unless both answer and reasoning are empty (an interrupted turn),
    /// the assistant message with its reasoning in `reasoning_content`.
    pub fn messages(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(1 + 2 * self.turns.len());
        if let Some(system) = &self.system {
            out.push(Message::system(system.clone()));
        }
        for turn in &self.turns {
            out.push(Message::user(turn.user.clone()));
            if turn.answer.is_empty() && turn.reasoning.is_empty() {
                continue;
            }
            let mut reply = Message::assistant(turn.answer.clone());
            if !turn.reasoning.is_empty() {
                reply.reasoning_content = Some(turn.reasoning.clone());
            }
            out.push(reply);
        }
        out
    }
}

/// One line of `list`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionSummary {
    /// The file stem; what [`SessionStore::load`] takes.
    pub name: String,
    /// The id inside the file (differs from `name` for `save_as` copies); empty if corrupt.
    pub id: String,
    /// RFC 3339; empty if corrupt.
    pub updated: String,
    pub turns: usize,
    /// The first user message on one line, at most [`PREVIEW_CHARS`] characters.
    pub preview: String,
    /// Why the file could not be read; such entries come last.
    pub corrupt: Option<String>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("session file {} is corrupt (line {line}, column {column}): {message}; it was left as is", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("session file {} has version {found}; this nemo reads version {SESSION_VERSION}", path.display())]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("session file {} has a bad value: {message}; it was left as is", path.display())]
    BadValue { path: PathBuf, message: String },
    #[error("{} is {kind}, not a regular file; it was not opened", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("session file {} is {size} bytes, over the {MAX_SESSION_BYTES}-byte limit; it was not read", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{} already exists and holds {what}", path.display())]
    Exists { path: PathBuf, what: String },
    #[error("invalid session name {0:?}: use 1-64 of A-Z a-z 0-9 . _ -, not starting with '.'")]
    InvalidName(String),
    #[error("no session {name:?} in {}", dir.display())]
    NotFound { name: String, dir: PathBuf },
    #[error("cannot serialize session: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl StoreError {
    /// Why a file could not be read, without its path (for messages that name it once).
    pub fn reason(&self) -> String {
        match self {
            StoreError::Io { source, .. } => source.to_string(),
            StoreError::Corrupt {
                line,
                column,
                message,
                ..
            } => format!("corrupt at line {line}, column {column}: {message}"),
            StoreError::UnsupportedVersion { found, .. } => {
                format!("format version {found}; this nemo reads version {SESSION_VERSION}")
            }
            StoreError::BadValue { message, .. } => format!("bad value: {message}"),
            StoreError::NotRegular { kind, .. } => format!("{kind}, not a regular file"),
            StoreError::TooLarge { size, .. } => {
                format!("{size} bytes, over the {MAX_SESSION_BYTES}-byte limit")
            }
            other => other.to_string(),
        }
    }

    /// The file the error is about, when it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::UnsupportedVersion { path, .. }
            | StoreError::BadValue { path, .. }
            | StoreError::NotRegular { path, .. }
            | StoreError::TooLarge { path, .. }
            | StoreError::Exists { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Checks a session name or id: `[A-Za-z0-9._-]{1,64}`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}

/// The session files in one directory.
#[derive(Clone, Debug)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SessionStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `<id>.json` atomically, creating the directory; returns the path.
    pub fn save(&self, s: &SessionFile) -> Result<PathBuf, StoreError> {
        self.save_as(s, &s.id)
    }

    /// Writes `s` as `<name>.json` atomically (the id inside is kept), replacing whatever
    /// file is there; returns the path. For a name the user typed, use [`Self::save_named`].
    pub fn save_as(&self, s: &SessionFile, name: &str) -> Result<PathBuf, StoreError> {
        let (path, json) = self.prepare(s, name)?;
        write_atomic(&path, &json).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// `/save NAME`: writes `s` as `<name>.json` when no such file exists or the file is
    /// this session's own copy (same id). A file holding another session, or one that
    /// cannot be read as a session, is an [`StoreError::Exists`] saying what it holds,
    /// and is written over only with `replace`. Anything but a regular file there (a
    /// symlink, a FIFO, a folder) is never replaced. A new file appears atomically and
    /// never over one created in the meantime.
    pub fn save_named(
        &self,
        s: &SessionFile,
        name: &str,
        replace: bool,
    ) -> Result<PathBuf, StoreError> {
        let (path, json) = self.prepare(s, name)?;
        let io = |path: &Path, source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match write_new(&path, &json) {
                    Ok(()) => Ok(path),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(StoreError::Exists {
                            path,
                            what: "a file another program created while this one saved".into(),
                        })
                    }
                    Err(source) => Err(io(&path, source)),
                };
            }
            Err(source) => return Err(io(&path, source)),
            Ok(m) => m,
        };
        if !meta.is_file() {
            return Err(StoreError::NotRegular {
                path,
                kind: file_kind(&meta.file_type()),
            });
        }
        let what = match read_session(&path) {
            Ok(other) if other.id == s.id => None,
            Ok(other) => Some(format!(
                "session {} ({} turns, updated {})",
                other.id,
                other.turns.len(),
                other.updated
            )),
            Err(e) => Some(format!(
                "something that is not a readable session ({})",
                e.reason()
            )),
        };
        if let (Some(what), false) = (what, replace) {
            return Err(StoreError::Exists { path, what });
        }
        write_atomic(&path, &json).map_err(|source| io(&path, source))?;
        Ok(path)
    }

    /// Checks the name, creates the directory, serializes.
    fn prepare(&self, s: &SessionFile, name: &str) -> Result<(PathBuf, Vec<u8>), StoreError> {
        validate_name(name)?;
        fs::create_dir_all(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut json = serde_json::to_vec_pretty(s)?;
        json.push(b'\n');
        Ok((self.path_of(name), json))
    }

    /// Reads `<name_or_id>.json` (a trailing `.json` in the argument is accepted).
    pub fn load(&self, name_or_id: &str) -> Result<SessionFile, StoreError> {
        let name = name_or_id.strip_suffix(".json").unwrap_or(name_or_id);
        validate_name(name)?;
        match read_session(&self.path_of(name)) {
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound {
                    name: name.to_string(),
                    dir: self.dir.clone(),
                })
            }
            r => r,
        }
    }

    /// Every `*.json` in the directory, newest `updated` first; files that cannot be read
    /// (not regular files among them) come last with `corrupt` set. A missing directory
    /// is an empty list.
    pub fn list(&self) -> Result<Vec<SessionSummary>, StoreError> {
        let mut out: Vec<SessionSummary> = self
            .read_all()?
            .into_iter()
            .map(|e| match e.parsed {
                Ok(s) => SessionSummary {
                    preview: s
                        .turns
                        .first()
                        .map(|t| preview(&t.user))
                        .unwrap_or_default(),
                    name: e.name,
                    id: s.id,
                    updated: s.updated,
                    turns: s.turns.len(),
                    corrupt: None,
                },
                Err(err) => SessionSummary {
                    name: e.name,
                    id: String::new(),
                    updated: String::new(),
                    turns: 0,
                    preview: String::new(),
                    corrupt: Some(err.to_string()),
                },
            })
            .collect();
        out.sort_by(|a, b| {
            (a.corrupt.is_some(), &b.updated, &b.name).cmp(&(
                b.corrupt.is_some(),
                &a.updated,
                &a.name,
            ))
        });
        Ok(out)
    }

    /// The most recently updated session that reads cleanly.
    pub fn latest(&self) -> Result<Option<SessionFile>, StoreError> {
        Ok(self.latest_with_unreadable()?.session.map(|(_, s)| s))
    }

    /// For `nemo chat --resume`: the most recently updated session that reads cleanly,
    /// and every file that cannot be read and was modified no earlier than that session's
    /// file (all of them when no session reads), so none is skipped without a word.
    pub fn latest_with_unreadable(&self) -> Result<Latest, StoreError> {
        let mut readable = Vec::new();
        let mut unreadable = Vec::new();
        for e in self.read_all()? {
            match e.parsed {
                Ok(s) => readable.push((e.name, e.modified, s)),
                Err(err) => unreadable.push((e.modified, err)),
            }
        }
        let best = readable
            .into_iter()
            .max_by(|(an, _, a), (bn, _, b)| (&a.updated, an).cmp(&(&b.updated, bn)));
        if let Some((_, Some(t), _)) = &best {
            unreadable.retain(|(m, _)| m.is_none_or(|m| m >= *t));
        }
        // Newest first; unknown times first of all.
        unreadable.sort_by(|(a, _), (b, _)| match (a, b) {
            (Some(a), Some(b)) => b.cmp(a),
            _ => a.is_some().cmp(&b.is_some()),
        });
        Ok(Latest {
            session: best.map(|(name, _, s)| (name, s)),
            unreadable: unreadable.into_iter().map(|(_, e)| e).collect(),
        })
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Each `<name>.json` entry with a valid name, read (or refused) and parsed.
    fn read_all(&self) -> Result<Vec<StoredEntry>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = file_name.strip_suffix(".json") else {
                continue;
            };
            if validate_name(stem).is_err() {
                continue;
            }
            let path = entry.path();
            // The entry's own time (a symlink's, when the target is gone).
            let modified = fs::metadata(&path)
                .or_else(|_| fs::symlink_metadata(&path))
                .and_then(|m| m.modified())
                .ok();
            out.push(StoredEntry {
                name: stem.to_string(),
                modified,
                parsed: read_session(&path),
            });
        }
        Ok(out)
    }
}

/// What [`SessionStore::latest_with_unreadable`] found.
#[derive(Debug)]
pub struct Latest {
    /// The newest session that reads cleanly, with its file stem.
    pub session: Option<(String, SessionFile)>,
    /// Why each unreadable file that may be newer could not be read, newest first.
    pub unreadable: Vec<StoreError>,
}

/// One session file, as read.
struct StoredEntry {
    /// The file stem.
    name: String,
    modified: Option<SystemTime>,
    parsed: Result<SessionFile, StoreError>,
}

/// Reads and parses one session file: only a regular file, opened without blocking, at
/// most [`MAX_SESSION_BYTES`].
fn read_session(path: &Path) -> Result<SessionFile, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(StoreError::NotRegular {
            path: path.to_path_buf(),
            kind: file_kind(&meta.file_type()),
        });
    }
    let f = open_regular(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    if size > MAX_SESSION_BYTES {
        return Err(StoreError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte past the limit: a file that grew since the check is still caught.
    f.take(MAX_SESSION_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    parse_session(path, &bytes)
}

/// Parses session-file bytes exactly as [`SessionStore::load`] does once it has read them
/// (size limit, version, fields, value ranges); errors name `session.json`. The entry
/// point of the session fuzz target and its replay test (`tests/fuzz_session.rs`).
#[doc(hidden)]
pub fn parse_session_bytes(bytes: &[u8]) -> Result<SessionFile, StoreError> {
    parse_session(Path::new("session.json"), bytes)
}

fn parse_session(path: &Path, bytes: &[u8]) -> Result<SessionFile, StoreError> {
    if bytes.len() as u64 > MAX_SESSION_BYTES {
        return Err(StoreError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
        });
    }
    // Read the version first so a future format says so instead of "missing field".
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let corrupt = |e: serde_json::Error| StoreError::Corrupt {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: echo(&e.to_string()),
    };
    let v: Versioned = serde_json::from_slice(bytes).map_err(corrupt)?;
    if v.version != SESSION_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: v.version,
        });
    }
    let file: SessionFile = serde_json::from_slice(bytes).map_err(corrupt)?;
    let bad = |message: String| StoreError::BadValue {
        path: path.to_path_buf(),
        message,
    };
    // The autosave writes `<id>.json`: an id that is no file name could never be saved.
    if validate_name(&file.id).is_err() {
        return Err(bad(format!("id {:?} is not a session id", echo(&file.id))));
    }
    // The same ranges as the flags and `/set`: a hand-edited file cannot smuggle in a
    // temperature of -5.
    file.sampling
        .validate()
        .map_err(|e| bad(format!("sampling.{e}")))?;
    Ok(file)
}

/// `text` on one line (control characters as spaces), at most [`ECHO_MAX`] characters.
fn echo(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(ECHO_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(ECHO_MAX).is_some() {
        out.push('…');
    }
    out
}

fn preview(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= PREVIEW_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(PREVIEW_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// A temp file beside `path` holding `bytes`, synced; returns its path and the directory.
fn write_temp(path: &Path, bytes: &[u8]) -> std::io::Result<(PathBuf, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok((tmp, dir)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Makes a rename or link in `dir` durable; not every platform can open a directory.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replaces `path` with `bytes` atomically: writes a temp file beside it, fsyncs it,
/// renames it over `path`, then fsyncs the directory (best effort). The parent directory
/// must exist. On failure the temp file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, dir) = write_temp(path, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir);
    Ok(())
}

/// Creates `path` holding `bytes`, complete or not at all, failing with `AlreadyExists`
/// if it exists, even when it appears while this runs: the synced temp file is
/// hard-linked to `path` (which never replaces). Where hard links are not supported, it
/// falls back to a check and a rename.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, dir) = write_temp(path, bytes)?;
    let result = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if fs::symlink_metadata(path).is_ok() => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "file exists",
        )),
        Err(_) => fs::rename(&tmp, path),
    };
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        sync_dir(&dir);
    }
    result
}

/// A new session id, `YYYYMMDD-HHMMSS-mmm` (UTC, milliseconds). Ids from one process
/// strictly increase (a clash moves the id a millisecond on), so they are unique and sort
/// by creation time.
pub fn new_id() -> String {
    static LAST_MS: Mutex<u64> = Mutex::new(0);
    let now = unix_ms(SystemTime::now());
    let ms = match LAST_MS.lock() {
        Ok(mut last) => {
            *last = now.max(*last + 1);
            *last
        }
        // A panic elsewhere while holding the lock; the clock alone still gives an id.
        Err(poisoned) => {
            let mut last = poisoned.into_inner();
            *last = now.max(*last + 1);
            *last
        }
    };
    let c = Civil::from_unix_ms(ms);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}-{:03}",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    )
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T09:05:00.123Z`. Times before
/// 1970 are shown as the epoch.
pub fn format_rfc3339(t: SystemTime) -> String {
    let c = Civil::from_unix_ms(unix_ms(t));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    millis: u64,
}

impl Civil {
    /// Proleptic Gregorian date from Unix milliseconds, after Howard Hinnant's
    /// `civil_from_days` (https://howardhinnant.github.io/date_algorithms.html).
    fn from_unix_ms(ms: u64) -> Civil {
        let secs = ms / 1000;
        let days = (secs / 86_400) as i64;
        let sod = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod % 3600 / 60,
            second: sod % 60,
            millis: ms % 1000,
        }
    }
}

/// The session as a Markdown document: title, model, sampling and thinking settings, then
/// each turn as `## You`, the reasoning in a `<details>` block, `## Nemotron` and the
/// answer, with the turn's numbers in italics.
pub fn export_markdown(s: &SessionFile) -> String {
    let mut md = String::new();
    let p = &s.sampling;
    md.push_str(&format!("# Nemotron chat {}\n\n", s.id));
    md.push_str(&format!(
        "- Model: `{}` (identity `{}`)\n",
        s.model.path, s.model.config_hash
    ));
    md.push_str(&format!(
        "- Created: {} · updated: {}\n",
        s.created, s.updated
    ));
    md.push_str(&format!(
        "- Sampling: temperature {}, top_p {}, top_k {}, min_p {}, repetition_penalty {}, presence_penalty {}, seed {}\n",
        p.temperature,
        p.top_p,
        p.top_k,
        p.min_p,
        p.repetition_penalty,
        p.presence_penalty,
        p.seed.map_or("random".to_string(), |s| s.to_string()),
    ));
    let budget = match s.thinking.budget {
        Budget::Off => "off".to_string(),
        Budget::Unlimited => "on, unlimited budget".to_string(),
        Budget::Tokens(n) => format!("on, budget {n} tokens"),
    };
    md.push_str(&format!("- Thinking: {budget}\n"));
    if let Some(system) = &s.system {
        md.push_str("\n**System prompt:**\n\n");
        md.push_str(system.trim_end());
        md.push('\n');
    }
    for turn in &s.turns {
        md.push_str("\n## You\n\n");
        md.push_str(turn.user.trim_end());
        md.push('\n');
        md.push_str("\n## Nemotron\n\n");
        if !turn.reasoning.is_empty() {
            let summary = match &turn.stats {
                Some(st) => format!("Reasoning ({} tokens)", st.reasoning_tokens),
                None => "Reasoning".to_string(),
            };
            md.push_str(&format!("<details><summary>{summary}</summary>\n\n"));
            md.push_str(turn.reasoning.trim_end());
            md.push_str("\n\n</details>\n\n");
        }
        for t in &turn.tools {
            let args = serde_json::to_string_pretty(t.call.arguments())
                .unwrap_or_else(|_| t.call.arguments().to_string());
            md.push_str(&format!(
                "**Tool `{}`** ({}):\n\n```json\n{}\n```\n\n",
                t.call.name(),
                t.state,
                args
            ));
            if !t.output.is_empty() {
                let fence = if t.output.contains("```") {
                    "~~~~"
                } else {
                    "```"
                };
                md.push_str(&format!("{fence}\n{}\n{fence}\n\n", t.output.trim_end()));
            }
        }
        if !turn.answer.is_empty() {
            md.push_str(turn.answer.trim_end());
            md.push('\n');
        } else if turn.tools.is_empty() {
            md.push_str("*(no answer)*\n");
        }
        if let Some(st) = &turn.stats {
            md.push_str(&format!(
                "\n*{} prompt tokens ({} reused) · {} reasoning · {} answer · first token {:.0} ms · {:.1} tokens/s · {}*\n",
                st.prompt_tokens,
                st.reused_tokens,
                st.reasoning_tokens,
                st.completion_tokens,
                st.ttft_ms,
                st.decode_tokens_per_s,
                st.finish_reason,
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Timings, Usage};
    use std::time::Duration;

    fn session(id: &str, updated: &str, first_user: &str) -> SessionFile {
        SessionFile {
            version: SESSION_VERSION,
            id: id.to_string(),
            created: "2025-01-01T00:00:00.000Z".into(),
            updated: updated.to_string(),
            model: ModelIdentity {
                path: "/models/nano".into(),
                config_hash: "0123456789abcdef".into(),
                weights: None,
            },
            sampling: SamplingParams {
                temperature: 0.6,
                top_p: 0.95,
                seed: Some(42),
                ..SamplingParams::default()
            },
            thinking: ThinkingOptions {
                budget: Budget::tokens(512),
                ..ThinkingOptions::default()
            },
            system: Some("Be brief.".into()),
            turns: vec![
                Turn {
                    user: first_user.to_string(),
                    reasoning: "Two plus two.".into(),
                    answer: "4".into(),
                    stats: Some(TurnStats {
                        prompt_tokens: 20,
                        reasoning_tokens: 5,
                        completion_tokens: 2,
                        reused_tokens: 0,
                        ttft_ms: 120.0,
                        decode_tokens_per_s: 33.3,
                        finish_reason: "stop".into(),
                    }),
                    tools: Vec::new(),
                },
                Turn {
                    user: "and again?".into(),
                    ..Turn::default()
                },
            ],
        }
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn save_then_load_round_trips_and_creates_the_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("sessions"));
        let s = session("20250101-000000-000", "2025-01-01T00:00:01.000Z", "2+2?");
        let path = store.save(&s).unwrap();
        assert_eq!(path, tmp.path().join("sessions/20250101-000000-000.json"));
        assert_eq!(store.load("20250101-000000-000").unwrap(), s);
        assert_eq!(store.load("20250101-000000-000.json").unwrap(), s);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\n  \"version\": 1,"), "pretty JSON: {text}");
    }

    #[test]
    fn save_as_uses_the_name_and_keeps_the_id() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let s = session("20250101-000000-000", "2025-01-01T00:00:01.000Z", "hi");
        let path = store.save_as(&s, "my-chat_v1.2").unwrap();
        assert!(path.ends_with("my-chat_v1.2.json"));
        assert_eq!(store.load("my-chat_v1.2").unwrap().id, s.id);
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.md");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let store = SessionStore::new(tmp.path().join("s"));
        let s = session("a", "2025-01-01T00:00:01.000Z", "hi");
        store.save(&s).unwrap();
        store.save(&s).unwrap();
        assert_eq!(dir_names(tmp.path()), vec!["out.md", "s"]);
        assert_eq!(dir_names(&tmp.path().join("s")), vec!["a.json"]);
    }

    #[test]
    fn atomic_write_into_missing_dir_fails_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(write_atomic(&tmp.path().join("no/such/file"), b"x").is_err());
        assert!(dir_names(tmp.path()).is_empty());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it_and_is_left_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let path = tmp.path().join("broken.json");
        let junk = b"{\n  \"version\": 1,\n  \"id\": oops\n}";
        fs::write(&path, junk).unwrap();
        let err = store.load("broken").unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { line: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("broken.json"), "{err}");
        let _ = store.list().unwrap();
        let _ = store.latest().unwrap();
        assert_eq!(fs::read(&path).unwrap(), junk);
    }

    #[test]
    fn other_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        fs::write(
            tmp.path().join("future.json"),
            r#"{"version": 2, "whatever": []}"#,
        )
        .unwrap();
        let err = store.load("future").unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedVersion { found: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn out_of_range_sampling_in_a_file_is_refused_naming_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let mut s = session("hot", "2025-01-01T00:00:00.000Z", "hi");
        s.sampling.temperature = -5.0;
        let bytes = serde_json::to_vec(&s).unwrap();
        fs::write(tmp.path().join("hot.json"), &bytes).unwrap();
        let err = store.load("hot").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("hot.json"), "{text}");
        assert!(
            text.contains("sampling.temperature: -5 is outside 0..=5"),
            "{text}"
        );
        // Left as it was.
        assert_eq!(fs::read(tmp.path().join("hot.json")).unwrap(), bytes);
    }

    #[test]
    fn missing_session_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        assert!(matches!(
            store.load("nope"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn list_is_newest_first_with_previews_and_marks_corrupt_files_last() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let long = "word ".repeat(30);
        store
            .save(&session(
                "old",
                "2025-01-01T00:00:00.000Z",
                "first\nquestion",
            ))
            .unwrap();
        store
            .save(&session("new", "2025-03-01T00:00:00.000Z", &long))
            .unwrap();
        store
            .save(&session("mid", "2025-02-01T00:00:00.000Z", "mid"))
            .unwrap();
        fs::write(tmp.path().join("bad.json"), "not json").unwrap();
        fs::write(tmp.path().join("notes.txt"), "ignored").unwrap();
        fs::write(tmp.path().join(".hidden.json.1.0.tmp"), "ignored").unwrap();

        let list = store.list().unwrap();
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["new", "mid", "old", "bad"]);
        assert_eq!(list[0].preview.chars().count(), PREVIEW_CHARS);
        assert!(list[0].preview.ends_with('…'));
        assert_eq!(list[2].preview, "first question");
        assert_eq!(list[2].turns, 2);
        assert_eq!(list[2].updated, "2025-01-01T00:00:00.000Z");
        assert!(list[0].corrupt.is_none());
        assert!(list[3]
            .corrupt
            .as_deref()
            .unwrap_or("")
            .contains("bad.json"));
    }

    #[test]
    fn list_and_latest_of_a_missing_dir_are_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("none"));
        assert!(store.list().unwrap().is_empty());
        assert!(store.latest().unwrap().is_none());
    }

    #[test]
    fn latest_skips_corrupt_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        store
            .save(&session("a", "2025-01-01T00:00:00.000Z", "a"))
            .unwrap();
        store
            .save(&session("b", "2025-02-01T00:00:00.000Z", "b"))
            .unwrap();
        fs::write(tmp.path().join("zzz.json"), "{").unwrap();
        assert_eq!(store.latest().unwrap().map(|s| s.id), Some("b".to_string()));
    }

    #[test]
    fn names_are_validated() {
        for ok in ["a", "chat-1", "v1.2_final", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "../up", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let s = session("a", "2025-01-01T00:00:00.000Z", "a");
        assert!(matches!(
            store.save_as(&s, "../evil"),
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.load("../evil"),
            Err(StoreError::InvalidName(_))
        ));
    }

    #[test]
    fn messages_map_turns_and_skip_the_reply_of_an_interrupted_turn() {
        let s = session("a", "2025-01-01T00:00:00.000Z", "2+2?");
        let m = s.messages();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0], Message::system("Be brief."));
        assert_eq!(m[1], Message::user("2+2?"));
        assert_eq!(m[2].role, "assistant");
        assert_eq!(m[2].content, "4");
        assert_eq!(m[2].reasoning_content.as_deref(), Some("Two plus two."));
        assert_eq!(m[3], Message::user("and again?"));

        let mut no_reasoning = s.clone();
        no_reasoning.system = None;
        no_reasoning.turns[0].reasoning.clear();
        let m = no_reasoning.messages();
        assert_eq!(m[0], Message::user("2+2?"));
        assert_eq!(m[1], Message::assistant("4"));
    }

    #[test]
    fn export_markdown_has_headings_reasoning_and_stats() {
        let md = export_markdown(&session("a", "2025-01-01T00:00:00.000Z", "2+2?"));
        assert!(md.starts_with("# Nemotron chat a\n"), "{md}");
        assert!(md.contains("`/models/nano`"), "{md}");
        assert!(md.contains("temperature 0.6, top_p 0.95"), "{md}");
        assert!(md.contains("seed 42"), "{md}");
        assert!(md.contains("budget 512 tokens"), "{md}");
        assert!(md.contains("## You\n\n2+2?\n"), "{md}");
        assert!(md.contains(
            "<details><summary>Reasoning (5 tokens)</summary>\n\nTwo plus two.\n\n</details>"
        ));
        assert!(md.contains("## Nemotron\n\n<details>"), "{md}");
        assert!(md.contains("</details>\n\n4\n"), "{md}");
        assert!(md.contains("\n*20 prompt tokens (0 reused) · 5 reasoning · 2 answer · first token 120 ms · 33.3 tokens/s · stop*\n"), "{md}");
        assert!(
            md.contains("## You\n\nand again?\n\n## Nemotron\n\n*(no answer)*\n"),
            "{md}"
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_000 + 3_723_456);
        assert_eq!(format_rfc3339(t), "2000-02-29T01:02:03.456Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(format_rfc3339(t), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn new_ids_are_unique_increasing_and_valid_names() {
        let ids: Vec<String> = (0..50).map(|_| new_id()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        assert!(ids
            .iter()
            .all(|id| validate_name(id).is_ok() && id.len() == 19));
    }

    #[test]
    fn new_session_has_version_and_matching_timestamps() {
        let s = SessionFile::new(
            ModelIdentity {
                path: "m".into(),
                config_hash: "0".into(),
                weights: None,
            },
            SamplingParams::default(),
            ThinkingOptions::default(),
            None,
        );
        assert_eq!(s.version, SESSION_VERSION);
        assert_eq!(s.created, s.updated);
        assert!(s.created.ends_with('Z') && s.created.len() == 24);
    }

    #[test]
    fn turn_stats_come_from_done() {
        let d = Done {
            finish_reason: FinishReason::StopString,
            usage: Usage {
                prompt_tokens: 10,
                reasoning_tokens: 3,
                completion_tokens: 4,
            },
            timings: Timings {
                ttft_ms: 50.0,
                decode_tokens_per_s: 20.0,
                ..Timings::default()
            },
            reused_tokens: 6,
            thinking_forced: false,
            steps: 1,
            constraint: None,
        };
        let st = TurnStats::from(&d);
        assert_eq!(st.finish_reason, "stop_string");
        assert_eq!(
            (st.prompt_tokens, st.reused_tokens, st.completion_tokens),
            (10, 6, 4)
        );
    }

    /// Runs `f` on another thread and fails (instead of hanging) if it takes over 10 s;
    /// then opens each FIFO in `fifos` for writing, which releases a reader blocked on it.
    #[cfg(unix)]
    fn within_10s<T: Send + 'static>(
        fifos: &[PathBuf],
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(v) => v,
            Err(_) => {
                use std::os::unix::fs::OpenOptionsExt;
                for p in fifos {
                    let _ = fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(p);
                }
                panic!("blocked for 10 s on a FIFO in the sessions folder");
            }
        }
    }

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    fn set_mtime(path: &Path, secs_after_epoch: u64) {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(secs_after_epoch))
            .unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn fifos_and_links_to_them_are_listed_as_not_regular_and_never_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let store = SessionStore::new(&dir);
        store
            .save(&session("good", "2025-01-01T00:00:00.000Z", "hi"))
            .unwrap();
        let fifo = dir.join("pipe.json");
        mkfifo(&fifo);
        std::os::unix::fs::symlink(&fifo, dir.join("link.json")).unwrap();
        fs::create_dir(dir.join("folder.json")).unwrap();
        let (list, latest, load_pipe, load_link) =
            within_10s(std::slice::from_ref(&fifo), move || {
                let store = SessionStore::new(&dir);
                (
                    store.list().unwrap(),
                    store.latest_with_unreadable().unwrap(),
                    store.load("pipe").unwrap_err(),
                    store.load("link").unwrap_err(),
                )
            });
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["good", "pipe", "link", "folder"]);
        for row in &list[1..] {
            let why = row.corrupt.as_deref().unwrap();
            assert!(why.contains("not a regular file"), "{why}");
        }
        assert!(list[1].corrupt.as_deref().unwrap().contains("is a FIFO"));
        assert_eq!(latest.session.map(|(n, _)| n).as_deref(), Some("good"));
        assert!(
            matches!(load_pipe, StoreError::NotRegular { kind: "a FIFO", .. }),
            "{load_pipe:?}"
        );
        assert!(
            load_link.to_string().contains("link.json is a FIFO"),
            "{load_link}"
        );
    }

    #[test]
    fn latest_with_unreadable_names_unreadable_files_not_older_than_its_pick() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let good = store
            .save(&session("good", "2025-01-02T00:00:00.000Z", "hi"))
            .unwrap();
        set_mtime(&good, 2_000_000_000);
        let newer = tmp.path().join("newer.json");
        fs::write(&newer, "{\"version\": 1, \"id\": ").unwrap();
        set_mtime(&newer, 2_000_000_100);
        let older = tmp.path().join("older.json");
        fs::write(&older, "not json").unwrap();
        set_mtime(&older, 1_000_000_000);
        let future = tmp.path().join("future.json");
        fs::write(&future, r#"{"version": 7}"#).unwrap();
        set_mtime(&future, 2_000_000_200);

        let l = store.latest_with_unreadable().unwrap();
        assert_eq!(l.session.as_ref().map(|(n, _)| n.as_str()), Some("good"));
        let paths: Vec<_> = l.unreadable.iter().map(|e| e.path().unwrap()).collect();
        assert_eq!(paths, [future.as_path(), newer.as_path()], "newest first");
        assert!(l.unreadable[0].reason().contains("format version 7"));
        assert!(l.unreadable[1].reason().starts_with("corrupt at line 1"));

        // Nothing readable: every unreadable file is named.
        fs::remove_file(&good).unwrap();
        let l = store.latest_with_unreadable().unwrap();
        assert!(l.session.is_none());
        assert_eq!(l.unreadable.len(), 3);
        assert!(store.latest().unwrap().is_none());
    }

    #[test]
    fn save_named_never_writes_over_another_session_or_an_unreadable_file_unasked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let other = session("other-id", "2025-01-01T00:00:00.000Z", "theirs");
        let other_path = store.save_as(&other, "keep").unwrap();
        let other_bytes = fs::read(&other_path).unwrap();
        let mine = session("my-id", "2025-02-01T00:00:00.000Z", "mine");

        let e = store.save_named(&mine, "keep", false).unwrap_err();
        assert!(
            matches!(&e, StoreError::Exists { what, .. } if what.contains("session other-id (2 turns")),
            "{e:?}"
        );
        assert!(e.to_string().contains("keep.json already exists"), "{e}");
        assert_eq!(fs::read(&other_path).unwrap(), other_bytes);

        // Unreadable: kept as is, and the error says why it is not a session.
        let junk = tmp.path().join("junk.json");
        fs::write(&junk, b"my notes, not json").unwrap();
        let e = store.save_named(&mine, "junk", false).unwrap_err();
        assert!(
            e.to_string()
                .contains("not a readable session (corrupt at line 1"),
            "{e}"
        );
        assert_eq!(fs::read(&junk).unwrap(), b"my notes, not json");

        // A new name; then the same name again is this session's own copy.
        let p = store.save_named(&mine, "fresh", false).unwrap();
        assert_eq!(store.load("fresh").unwrap(), mine);
        let mut later = mine.clone();
        later.turns.push(Turn::default());
        assert_eq!(store.save_named(&later, "fresh", false).unwrap(), p);
        assert_eq!(store.load("fresh").unwrap().turns.len(), 3);

        // Asked to replace: replaced.
        store.save_named(&mine, "keep", true).unwrap();
        assert_eq!(store.load("keep").unwrap().id, "my-id");
        store.save_named(&mine, "junk", true).unwrap();
        assert_eq!(store.load("junk").unwrap().id, "my-id");
        assert_eq!(
            dir_names(tmp.path()),
            ["fresh.json", "junk.json", "keep.json"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn save_named_never_replaces_a_fifo_a_folder_or_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        mkfifo(&dir.join("pipe.json"));
        fs::create_dir(dir.join("folder.json")).unwrap();
        fs::write(dir.join("target"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link.json")).unwrap();
        let errs = within_10s(&[dir.join("pipe.json")], move || {
            let store = SessionStore::new(&dir);
            let s = session("a", "2025-01-01T00:00:00.000Z", "a");
            ["pipe", "folder", "link"].map(|n| store.save_named(&s, n, true).unwrap_err())
        });
        for (e, kind) in errs.iter().zip(["a FIFO", "a directory", "a symlink"]) {
            assert!(
                matches!(e, StoreError::NotRegular { kind: k, .. } if *k == kind),
                "{e:?}"
            );
        }
        assert_eq!(fs::read(tmp.path().join("target")).unwrap(), b"x");
    }

    #[test]
    fn an_oversized_file_is_refused_without_being_read() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let f = fs::File::create(tmp.path().join("big.json")).unwrap();
        f.set_len(MAX_SESSION_BYTES + 1).unwrap(); // sparse: no disk used
        let e = store.load("big").unwrap_err();
        assert!(matches!(e, StoreError::TooLarge { .. }), "{e:?}");
        assert!(e.to_string().contains("big.json"), "{e}");
    }

    #[test]
    fn errors_echoing_file_text_stay_on_one_short_line() {
        let mut s = session("a", "2025-01-01T00:00:00.000Z", "hi");
        s.id = format!("bad\nid{}", "x".repeat(1000));
        let bytes = serde_json::to_vec(&s).unwrap();
        let e = parse_session_bytes(&bytes).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::BadValue { .. }), "{e:?}");
        assert!(!text.contains('\n') && text.chars().count() < 400, "{text}");
        let mut v = serde_json::to_value(session("a", "2025-01-01T00:00:00.000Z", "hi")).unwrap();
        v["thinking"]["budget"] =
            serde_json::Value::String(format!("lots\nof\n{}", "y".repeat(5000)));
        let e = parse_session_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        let text = e.to_string();
        assert!(!text.contains('\n') && text.chars().count() < 400, "{text}");
    }
}
