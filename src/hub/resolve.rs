//! What `--model` names: a folder, a `.gguf` file, a repo id (`org/name`, optionally
//! `org/name:file.gguf`) or an alias; and where a hub model is in the cache, if it is.

use std::path::{Path, PathBuf};

use super::aliases;
use super::cache::{gguf_files, HubCache};
use super::client::Client;
use super::selection::{self, Plan, GGUF_PREFERENCE};
use super::HubError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    Path(PathBuf),
    Hub {
        repo: String,
        /// A `.gguf` file in the repo.
        file: Option<String>,
        revision: String,
    },
}

fn is_repo_part(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `org/name` as the hub allows it.
pub fn is_repo_id(s: &str) -> bool {
    match s.split_once('/') {
        Some((org, name)) => is_repo_part(org) && is_repo_part(name),
        None => false,
    }
}

impl ModelSpec {
    /// An existing path wins; then an alias; then `org/name[:file]`. Anything else is
    /// taken as a path, so the error names it.
    pub fn parse(s: &str, revision: Option<&str>, file: Option<&str>) -> Result<Self, HubError> {
        let rev = revision.unwrap_or("main").to_string();
        let path = Path::new(s);
        let looks_like_path = s.starts_with(['/', '.', '~']) || s.contains('\\');
        if path.exists() || looks_like_path {
            return Ok(ModelSpec::Path(path.to_path_buf()));
        }
        if let Some(a) = aliases::find(s) {
            return Ok(ModelSpec::Hub {
                repo: a.repo.to_string(),
                file: file.or(a.file).map(str::to_string),
                revision: rev,
            });
        }
        let (repo, in_spec) = match s.split_once(':') {
            Some((r, f)) => (r, Some(f)),
            None => (s, None),
        };
        if is_repo_id(repo) {
            if let Some(f) = in_spec.or(file).filter(|f| !selection::is_safe_path(f)) {
                return Err(HubError::Spec(format!(
                    "`{f}` is not a file name inside a repo"
                )));
            }
            if let (Some(a), Some(b)) = (in_spec, file) {
                if a != b {
                    return Err(HubError::Spec(format!(
                        "`{s}` names the file `{a}` and --file names `{b}`: give one"
                    )));
                }
            }
            return Ok(ModelSpec::Hub {
                repo: repo.to_string(),
                file: in_spec.or(file).map(str::to_string),
                revision: rev,
            });
        }
        if !s.contains('/') && !s.ends_with(".gguf") {
            return Err(HubError::Spec(format!(
                "`{s}` is not a folder, a .gguf file, a repo id (org/name) or a known alias ({})",
                aliases::names()
            )));
        }
        Ok(ModelSpec::Path(path.to_path_buf()))
    }

    pub fn label(&self) -> String {
        match self {
            ModelSpec::Path(p) => p.display().to_string(),
            ModelSpec::Hub { repo, file, .. } => match file {
                Some(f) => format!("{repo}:{f}"),
                None => repo.clone(),
            },
        }
    }
}

/// Whether a safetensors snapshot holds everything nemo loads.
fn folder_complete(snap: &Path) -> bool {
    if !snap.join("config.json").is_file() || !snap.join("tokenizer.json").is_file() {
        return false;
    }
    let index = snap.join("model.safetensors.index.json");
    if index.is_file() {
        let Ok(text) = std::fs::read_to_string(&index) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let Some(map) = v["weight_map"].as_object() else {
            return false;
        };
        return map
            .values()
            .filter_map(|f| f.as_str())
            .all(|f| snap.join(f).is_file());
    }
    std::fs::read_dir(snap).is_ok_and(|r| {
        r.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".safetensors") && e.path().is_file()
        })
    })
}

/// The cached model for a hub spec, without touching the network.
pub fn cached(cache: &HubCache, repo: &str, revision: &str, file: Option<&str>) -> Option<PathBuf> {
    let commit = cache.resolve_revision(repo, revision)?;
    let snap = cache.snapshot_dir(repo, &commit);
    if let Some(f) = file {
        let p = snap.join(f);
        return p.is_file().then_some(p);
    }
    if snap.join("config.json").is_file() {
        return folder_complete(&snap).then_some(snap);
    }
    let ggufs = gguf_files(&snap);
    GGUF_PREFERENCE
        .iter()
        .find_map(|q| {
            ggufs.iter().find(|p| {
                p.to_string_lossy()
                    .to_ascii_uppercase()
                    .ends_with(&format!("{q}.GGUF"))
            })
        })
        .or(ggufs.first())
        .cloned()
}

/// Asks the hub what to download for a spec.
pub fn plan_remote(
    client: &Client,
    repo: &str,
    revision: &str,
    file: Option<&str>,
) -> Result<Plan, HubError> {
    let info = client.repo_info(repo, revision)?;
    selection::plan(repo, revision, &info, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(repo: &str, file: Option<&str>) -> ModelSpec {
        ModelSpec::Hub {
            repo: repo.into(),
            file: file.map(str::to_string),
            revision: "main".into(),
        }
    }

    #[test]
    fn specs_are_told_apart() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_string_lossy().into_owned();
        assert_eq!(
            ModelSpec::parse(&dir, None, None).unwrap(),
            ModelSpec::Path(t.path().to_path_buf())
        );
        assert_eq!(
            ModelSpec::parse("nano-9b-v2", None, None).unwrap(),
            hub("nvidia/NVIDIA-Nemotron-Nano-9B-v2", None)
        );
        assert_eq!(
            ModelSpec::parse("org/m-GGUF:m-Q8_0.gguf", None, None).unwrap(),
            hub("org/m-GGUF", Some("m-Q8_0.gguf"))
        );
        assert_eq!(
            ModelSpec::parse("org/m-GGUF", None, Some("x.gguf")).unwrap(),
            hub("org/m-GGUF", Some("x.gguf"))
        );
        assert_eq!(
            ModelSpec::parse("/nonexistent/model", None, None).unwrap(),
            ModelSpec::Path("/nonexistent/model".into())
        );
        assert_eq!(
            ModelSpec::parse("./m.gguf", None, None).unwrap(),
            ModelSpec::Path("./m.gguf".into())
        );
        let e = ModelSpec::parse("nano9b", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nano-9b-v2"), "{e}");
        assert!(ModelSpec::parse("a/b:x.gguf", None, Some("y.gguf")).is_err());
        assert!(ModelSpec::parse("a/b:../../x.gguf", None, None).is_err());
        match ModelSpec::parse("a/b", Some("v1.0"), None).unwrap() {
            ModelSpec::Hub { revision, .. } => assert_eq!(revision, "v1.0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repo_ids_are_checked() {
        assert!(is_repo_id("nvidia/NVIDIA-Nemotron-Nano-9B-v2"));
        assert!(is_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../b"));
        assert!(!is_repo_id("a/"));
        assert!(!is_repo_id("a b/c"));
    }
}
