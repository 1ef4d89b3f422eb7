//! The Hugging Face cache on disk, as huggingface_hub lays it out:
//!
//! ```text
//! $HF_HUB_CACHE/models--{org}--{name}/
//!     blobs/<etag>                      the bytes (etag: sha256 for LFS files, git sha1 else)
//!     blobs/<etag>.incomplete           a download in progress (resumable)
//!     snapshots/<commit>/<file>         symlink to ../../blobs/<etag>
//!     refs/<revision>                   the commit hash `revision` pointed to
//! ```
//!
//! Folder names come from hf-hub's `Repo::folder_name`. Nothing here deletes outside one
//! model's `models--…` folder.

use std::path::{Path, PathBuf};

use super::HubError;

/// The `architectures` `ModelFolder::open` loads (keep in step with src/model/folder.rs).
pub const LOADABLE_ARCHS: &[&str] = &["NemotronHForCausalLM", "LlamaForCausalLM"];

#[derive(Clone, Debug)]
pub struct HubCache {
    pub root: PathBuf,
}

/// A model found in the cache.
#[derive(Clone, Debug)]
pub struct CachedModel {
    pub repo: String,
    /// The snapshot folder, or the `.gguf` file in it.
    pub path: PathBuf,
    pub commit: String,
    pub arch: String,
    pub dtype: String,
    /// Bytes of all blobs of this repo.
    pub size: u64,
    /// The folder under the cache root, the one `nemo rm` removes.
    pub repo_dir: PathBuf,
}

pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl HubCache {
    pub fn new(root: PathBuf) -> Self {
        HubCache { root }
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(hf_hub::Repo::model(repo.to_string()).folder_name())
    }

    pub fn blob_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub fn incomplete_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("blobs")
            .join(format!("{etag}.incomplete"))
    }

    /// The lock huggingface_hub takes around a blob's download (`.locks/models--…/<etag>.lock`,
    /// flock): taking the same one keeps nemo and Python from writing one blob at once.
    pub fn lock_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(hf_hub::Repo::model(repo.to_string()).folder_name())
            .join(format!("{etag}.lock"))
    }

    pub fn snapshot_dir(&self, repo: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    /// The commit `revision` names: itself if it is a commit hash with a snapshot, else
    /// `refs/<revision>`.
    pub fn resolve_revision(&self, repo: &str, revision: &str) -> Option<String> {
        if is_commit_hash(revision) && self.snapshot_dir(repo, revision).is_dir() {
            return Some(revision.to_string());
        }
        let r = std::fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok()?;
        let r = r.trim();
        is_commit_hash(r).then(|| r.to_string())
    }

    /// Points `refs/<revision>` at `commit` (temp file + rename). huggingface_hub writes no
    /// ref when the revision is the commit hash itself; neither do we.
    pub fn write_ref(&self, repo: &str, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(repo).join("refs").join(revision);
        let dir = path.parent().unwrap_or(&path).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::write(&tmp, commit).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| HubError::io(&path, e))
    }

    /// Makes `snapshots/<commit>/<file>` a relative symlink to `blobs/<etag>`.
    pub fn link(&self, repo: &str, commit: &str, file: &str, etag: &str) -> Result<(), HubError> {
        let pointer = self.snapshot_dir(repo, commit).join(file);
        let dir = pointer.parent().unwrap_or(&pointer).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        // snapshots/<commit>/ is two levels under the repo folder, plus one per folder in `file`.
        let depth = 2 + file.matches('/').count();
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        if std::fs::read_link(&pointer).ok().as_deref() == Some(target.as_path()) {
            return Ok(());
        }
        let tmp = dir.join(format!(".{etag}.link{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::rename(&tmp, &pointer).map_err(|e| HubError::io(&pointer, e))
    }

    /// Every model in the cache that nemo can load: a snapshot with a config.json of an
    /// architecture nemo runs, or with a `.gguf` file.
    pub fn models(&self) -> Result<Vec<CachedModel>, HubError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(HubError::io(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("models--") else {
                continue;
            };
            let repo = rest.replacen("--", "/", 1);
            if let Some(m) = self.model(&repo, "main") {
                if m.arch == "gguf" || LOADABLE_ARCHS.contains(&m.arch.as_str()) {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| a.repo.cmp(&b.repo));
        Ok(out)
    }

    /// The loadable snapshot of `repo` at `revision` (or its newest snapshot), if any.
    pub fn model(&self, repo: &str, revision: &str) -> Option<CachedModel> {
        let repo_dir = self.repo_dir(repo);
        let commit = self
            .resolve_revision(repo, revision)
            .or_else(|| newest_snapshot(&repo_dir.join("snapshots")))?;
        let snap = self.snapshot_dir(repo, &commit);
        let (path, arch, dtype) = if snap.join("config.json").is_file() {
            let (arch, dtype) = describe_config(&snap.join("config.json"));
            (snap.clone(), arch, dtype)
        } else {
            let gguf = gguf_files(&snap).into_iter().next()?;
            let dtype = gguf_quant(&gguf).unwrap_or_else(|| "?".into());
            (gguf, "gguf".to_string(), dtype)
        };
        Some(CachedModel {
            repo: repo.to_string(),
            path,
            commit,
            arch,
            dtype,
            size: dir_size(&repo_dir.join("blobs")),
            repo_dir,
        })
    }

    /// Removes one model's `models--…` folder; refuses anything else.
    pub fn remove(&self, repo: &str) -> Result<PathBuf, HubError> {
        let dir = self.repo_dir(repo);
        let name_ok = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("models--"))
            && dir.parent() == Some(self.root.as_path())
            && !repo.contains("..")
            && repo.split('/').all(|p| !p.is_empty());
        if !name_ok {
            return Err(HubError::Spec(format!("`{repo}` is not a repo id")));
        }
        // A symlinked repo folder: remove the link, never what it points to.
        let meta = std::fs::symlink_metadata(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HubError::Spec(format!(
                    "{repo} is not in the cache ({})",
                    self.root.display()
                ))
            } else {
                HubError::io(&dir, e)
            }
        })?;
        if meta.file_type().is_symlink() || meta.is_file() {
            std::fs::remove_file(&dir).map_err(|e| HubError::io(&dir, e))?;
        } else {
            std::fs::remove_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        }
        Ok(dir)
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

fn newest_snapshot(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| is_commit_hash(&e.file_name().to_string_lossy()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// `.gguf` files directly in `dir`, sorted by name.
pub fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                        && p.exists()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The quantization in a GGUF file name, e.g. `Q4_K_M` in `model-Q4_K_M.gguf`.
pub fn gguf_quant(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    let last = stem.rsplit(['-', '.']).next()?;
    let up = last.to_ascii_uppercase();
    let known = ["Q", "IQ", "F16", "BF16", "F32", "TQ"];
    known
        .iter()
        .any(|k| up.starts_with(k) && up.len() <= 8)
        .then_some(up)
}

fn describe_config(path: &Path) -> (String, String) {
    let v: serde_json::Value = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&crate::model::config::python_json_to_strict(&t)).ok())
        .unwrap_or_default();
    let arch = v["architectures"][0].as_str().unwrap_or("?").to_string();
    let dtype = v["torch_dtype"]
        .as_str()
        .or(v["dtype"].as_str())
        .unwrap_or("?")
        .to_string();
    (arch, dtype)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let c = HubCache::new(PathBuf::from("/c"));
        assert_eq!(
            c.repo_dir("nvidia/NVIDIA-Nemotron-Nano-9B-v2"),
            PathBuf::from("/c/models--nvidia--NVIDIA-Nemotron-Nano-9B-v2")
        );
        assert_eq!(
            c.blob_path("a/b", "e1"),
            PathBuf::from("/c/models--a--b/blobs/e1")
        );
    }

    #[test]
    fn nested_files_link_with_the_right_depth() {
        let t = tempfile::tempdir().unwrap();
        let c = HubCache::new(t.path().to_path_buf());
        let commit = "a".repeat(40);
        std::fs::create_dir_all(c.repo_dir("o/n").join("blobs")).unwrap();
        std::fs::write(c.blob_path("o/n", "e1"), b"x").unwrap();
        c.link("o/n", &commit, "sub/dir/f.txt", "e1").unwrap();
        let p = c.snapshot_dir("o/n", &commit).join("sub/dir/f.txt");
        assert_eq!(
            std::fs::read_link(&p).unwrap(),
            PathBuf::from("../../../../blobs/e1")
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }

    #[test]
    fn remove_refuses_anything_but_a_repo_id() {
        let t = tempfile::tempdir().unwrap();
        let c = HubCache::new(t.path().join("hub"));
        std::fs::create_dir_all(&c.root).unwrap();
        for bad in ["..", "../x", "a/../..", "/", ""] {
            assert!(c.remove(bad).is_err(), "{bad}");
        }
        assert!(t.path().exists());
        let e = c.remove("o/absent").unwrap_err().to_string();
        assert!(e.contains("not in the cache"), "{e}");
    }

    #[test]
    fn quant_is_read_from_gguf_names() {
        assert_eq!(
            gguf_quant(Path::new("x/Model-8B-Q4_K_M.gguf")).as_deref(),
            Some("Q4_K_M")
        );
        assert_eq!(
            gguf_quant(Path::new("smollm2-135m-instruct.q4_1.gguf")).as_deref(),
            Some("Q4_1")
        );
        assert_eq!(gguf_quant(Path::new("model.gguf")), None);
    }
}
