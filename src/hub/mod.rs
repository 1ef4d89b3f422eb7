//! Models from the Hugging Face hub, kept in the cache that transformers and vLLM share.
//!
//! Invariants:
//! - The cache is laid out exactly as huggingface_hub writes it
//!   (`$HF_HUB_CACHE/models--{org}--{name}/{blobs/<etag>, snapshots/<commit>/<file>,
//!   refs/<revision>}`, each snapshot file a relative symlink to its blob), so a model pulled
//!   by nemo is found by transformers and the other way round ([`cache`]).
//! - A blob is only ever placed (renamed from `blobs/<etag>.incomplete`) after its size and,
//!   where the hub tells us the hash, its sha256 (LFS files) or git blob sha1 (small files)
//!   were checked ([`download`]). A half-done download stays `.incomplete` and the next pull
//!   continues it with an HTTP Range request.
//! - Nothing here reads a terminal or prints: progress goes through [`Progress`], questions
//!   are the CLI's business.
//! - The settings come from the same variables as huggingface_hub's: `HF_HOME`,
//!   `HF_HUB_CACHE`, `HF_TOKEN`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` ([`HubConfig`]).

pub mod aliases;
pub mod cache;
pub mod checksum;
pub mod client;
pub mod download;
pub mod picker;
pub mod resolve;
pub mod selection;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use cache::{CachedModel, HubCache};
pub use download::{pull, PullReport};
pub use resolve::ModelSpec;
pub use selection::{Plan, PlannedFile};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, Error)]
pub enum HubError {
    /// The hub answered with an error, or could not be reached: one line for the user.
    #[error("{0}")]
    Remote(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes we got are not the file the hub described; nothing was placed.
    #[error(
        "{file}: corrupted download ({msg}); it was not placed in the cache, run the pull again"
    )]
    Corrupt { file: String, msg: String },
    /// The connection ended early; the partial file is kept for the next pull to resume.
    #[error("{file}: download interrupted at {got} of {size} bytes ({msg}); run the same command again to resume")]
    Interrupted {
        file: String,
        got: u64,
        size: u64,
        msg: String,
    },
    /// HF_HUB_OFFLINE is set and what we need is not in the cache.
    #[error("{0}")]
    Offline(String),
    /// A model spec, alias or file choice that cannot work.
    #[error("{0}")]
    Spec(String),
}

impl HubError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where the cache is and how to reach the hub, from the environment like huggingface_hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub cache_dir: PathBuf,
    /// `HF_ENDPOINT` without a trailing slash.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` wrote (`$HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: never touch the network.
    pub offline: bool,
    /// Extra attempts after a dropped connection within one pull (`NEMO_HUB_RETRIES`, 2).
    pub retries: u32,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

impl HubConfig {
    pub fn from_env() -> Result<Self, HubError> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// The same rules as huggingface_hub's `constants.py`, reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, HubError> {
        let hf_home = match get("HF_HOME") {
            Some(h) => PathBuf::from(h),
            None => {
                let cache_home = match get("XDG_CACHE_HOME") {
                    Some(x) => PathBuf::from(x),
                    None => match get("HOME") {
                        Some(h) => PathBuf::from(h).join(".cache"),
                        None => {
                            return Err(HubError::Spec(
                                "cannot find the Hugging Face cache: set HF_HOME or HOME".into(),
                            ))
                        }
                    },
                };
                cache_home.join("huggingface")
            }
        };
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = match get("HF_TOKEN") {
            Some(t) => Some(t.trim().to_string()),
            // hf-hub's Cache knows where `huggingface-cli login` keeps the token.
            None => match get("HF_TOKEN_PATH") {
                Some(p) => std::fs::read_to_string(p)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty()),
                None => hf_hub::Cache::new(hf_home.join("hub")).token(),
            },
        };
        let endpoint = get("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let offline = get("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v));
        let retries = match get("NEMO_HUB_RETRIES") {
            Some(v) => v.trim().parse().map_err(|_| {
                HubError::Spec(format!(
                    "NEMO_HUB_RETRIES: `{v}` is not a whole number of retries"
                ))
            })?,
            None => 2,
        };
        Ok(HubConfig {
            cache_dir,
            endpoint,
            token,
            offline,
            retries,
        })
    }

    pub fn cache(&self) -> HubCache {
        HubCache::new(self.cache_dir.clone())
    }
}

/// What a pull reports as it goes; the CLI draws bars, tests may record.
pub trait Progress {
    /// A file starts; `done` bytes of it are already on disk (a resumed download).
    fn start(&mut self, file: &str, size: u64, done: u64);
    fn advance(&mut self, bytes: u64);
    /// The file is checked and placed (or was already there).
    fn finish(&mut self, file: &str);
    /// A one-line remark (retrying, resuming, skipped).
    fn note(&mut self, msg: &str);
}

/// Progress that shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self, _: &str) {}
    fn note(&mut self, _: &str) {}
}

/// "1.2 GB", "340 MB", "12 kB": decimal units like the hub's web pages.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(v: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| v.iter().find(|(n, _)| *n == k).map(|(_, x)| x.to_string())
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_rules() {
        let c = HubConfig::from_vars(vars(&[("HOME", "/h")])).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert!(!c.offline);
        let c = HubConfig::from_vars(vars(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")])).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let c = HubConfig::from_vars(vars(&[("HF_HOME", "/hf"), ("HOME", "/h")])).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/hf/hub"));
        let c = HubConfig::from_vars(vars(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "hf_x"),
        ]))
        .unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert!(c.offline);
        assert_eq!(c.token.as_deref(), Some("hf_x"));
    }

    #[test]
    fn token_file_is_read_when_hf_token_is_unset() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("token"), "hf_file\n").unwrap();
        let home = t.path().to_string_lossy().into_owned();
        let c = HubConfig::from_vars(vars(&[("HF_HOME", &home)])).unwrap();
        assert_eq!(c.token.as_deref(), Some("hf_file"));
    }
}
