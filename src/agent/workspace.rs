//! The folder file tools may touch, and the one way a path from the model becomes a path
//! on disk: [`Workspace::resolve`].
//!
//! Invariants:
//! - `root` is canonical (absolute, no symlinks), fixed when the workspace is made.
//! - [`Workspace::resolve`] follows every symlink itself, component by component (a
//!   dangling one too, up to 40 hops), and answers with a path that has no symlink in its
//!   existing part and lies under `root`; anything else (`..` past the root, an absolute
//!   path elsewhere, a symlink to a file or a folder outside) is
//!   [`ToolError::OutsideWorkspace`] naming the path as the model gave it and, for a
//!   symlink, where it leads. A symlink inside the workspace that points inside is fine.
//! - The missing tail of a path that does not exist yet (a file `write_file` will create)
//!   is taken lexically under its deepest existing ancestor, so it cannot leave the root
//!   either.
//!
//! What it cannot see: a hard link to a file outside, and a symlink swapped in between
//! the check and the open by a process running beside nemo. The model cannot do the
//! latter without a command, and commands wait for the user or run under Landlock.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::ToolError;

/// Most symlinks one path may pass through (Linux's own limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// The folder file tools may touch: every path is resolved (symlinks included) and must
/// stay inside `root`.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// `root` canonicalized; an error names it when it does not exist or is no folder.
    pub fn new(root: &Path) -> Result<Workspace, ToolError> {
        let err = |message: String| ToolError::Workspace {
            path: root.display().to_string(),
            message,
        };
        let canonical = root.canonicalize().map_err(|e| err(e.to_string()))?;
        if !canonical.is_dir() {
            return Err(err("not a folder".into()));
        }
        Ok(Workspace { root: canonical })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `requested` (relative to the root, or absolute) as a path on disk under the root,
    /// with every symlink in it followed and checked. The path need not exist.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, ToolError> {
        let bad = |message: &str| ToolError::BadPath {
            path: format!("{requested:?}"),
            message: message.into(),
        };
        if requested.is_empty() {
            return Err(bad("empty path"));
        }
        if requested.contains('\0') {
            return Err(bad("a path cannot contain a NUL byte"));
        }
        let mut walk = Walk {
            root: &self.root,
            hops: 0,
            link_out: None,
            at: self.root.clone(),
        };
        let resolved = walk.resolve(&self.root, Path::new(requested));
        match resolved {
            Ok(p) if p.starts_with(&self.root) => return Ok(p),
            Ok(_) => {}
            // An error met outside the root says nothing about what is there.
            Err(_) if !walk.at.starts_with(&self.root) => {}
            Err(e) => {
                return Err(ToolError::BadPath {
                    path: requested.to_string(),
                    message: e.to_string(),
                })
            }
        }
        // Name the link when one led out, so the message says why a path that looks
        // inside is refused.
        let path = match walk.link_out {
            Some(target) => format!("{requested} (a symlink to {})", target.display()),
            _ => requested.to_string(),
        };
        Err(ToolError::OutsideWorkspace {
            path,
            root: self.root.display().to_string(),
        })
    }

    /// `path` (under the root) as the model should see it: relative to the root, `.` for
    /// the root itself.
    pub fn display(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
            Ok(rel) => rel.display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }
}

/// One resolution: the hops taken so far and the first symlink that led out of the root.
struct Walk<'a> {
    root: &'a Path,
    hops: u32,
    link_out: Option<PathBuf>,
    /// The path looked at last (where an error happened).
    at: PathBuf,
}

impl Walk<'_> {
    /// Resolves `path` against the canonical folder `base`, following symlinks the way the
    /// kernel would.
    fn resolve(&mut self, base: &Path, path: &Path) -> io::Result<PathBuf> {
        let mut cur = base.to_path_buf();
        for comp in path.components() {
            match comp {
                Component::Prefix(_) | Component::RootDir => cur = PathBuf::from("/"),
                Component::CurDir => {}
                // `cur` never holds a symlink, so going up is going to the real parent.
                Component::ParentDir => {
                    cur.pop();
                }
                Component::Normal(name) => {
                    let next = cur.join(name);
                    self.at.clone_from(&next);
                    match std::fs::symlink_metadata(&next) {
                        Ok(m) if m.file_type().is_symlink() => {
                            self.hops += 1;
                            if self.hops > MAX_SYMLINK_HOPS {
                                return Err(io::Error::other("too many levels of symlinks"));
                            }
                            let target = std::fs::read_link(&next)?;
                            cur = self.resolve(&cur, &target)?;
                            if !cur.starts_with(self.root) && self.link_out.is_none() {
                                self.link_out = Some(target);
                            }
                        }
                        Ok(_) => cur = next,
                        // Not there (yet): the rest is taken as written.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => cur = next,
                        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                            return Err(io::Error::other(format!(
                                "{} is not a folder",
                                cur.display()
                            )))
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(cur)
    }
}
