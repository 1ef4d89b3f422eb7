//! HTTP to the hub (ureq, blocking): the repo's file list, one file's metadata (a HEAD that
//! does not follow the CDN redirect, like huggingface_hub), and the bytes (GET, with a
//! Range to resume). Every failure becomes one line that says what to do.

use std::time::Duration;

use super::selection::RepoInfo;
use super::{HubConfig, HubError};

/// What the hub says about one file before we download it.
#[derive(Clone, Debug)]
pub struct FileMeta {
    /// `X-Repo-Commit`.
    pub commit: String,
    /// `X-Linked-Etag` (LFS: the sha256) or `ETag` (small files: the git blob sha1),
    /// without quotes or `W/`: the blob's name in the cache.
    pub etag: String,
    /// The etag came from `X-Linked-Etag`, so it is the file's sha256.
    pub lfs: bool,
    /// `X-Linked-Size` or `Content-Length`.
    pub size: u64,
}

pub struct Client {
    cfg: HubConfig,
    /// Follows redirects (to the CDN); ureq drops `Authorization` on any redirect.
    agent: ureq::Agent,
    /// For HEAD: the hub's own headers, not the CDN's.
    head_agent: ureq::Agent,
}

const USER_AGENT: &str = concat!("nemo/", env!("CARGO_PKG_VERSION"));

/// Percent-encodes a path for a URL, keeping `/`.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A revision in a URL: `/` must not split it.
fn encode_revision(s: &str) -> String {
    encode_path(s).replace('/', "%2F")
}

pub fn normalize_etag(s: &str) -> String {
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// Whether `NO_PROXY` (comma-separated hosts or `.domain` suffixes, `*` for all) exempts
/// the endpoint's host; ureq 2 reads the proxy variables but not this one.
pub fn no_proxy_for(endpoint: &str, no_proxy: &str) -> bool {
    let host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| {
            let e = e.split(':').next().unwrap_or("").to_string();
            e == "*"
                || host == e.trim_start_matches('.')
                || host.ends_with(&format!(".{}", e.trim_start_matches('.')))
        })
}

impl Client {
    pub fn new(cfg: &HubConfig) -> Self {
        let no_proxy = std::env::var("NO_PROXY")
            .or_else(|_| std::env::var("no_proxy"))
            .is_ok_and(|v| no_proxy_for(&cfg.endpoint, &v));
        let build = |redirects| {
            ureq::AgentBuilder::new()
                .user_agent(USER_AGENT)
                .redirects(redirects)
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(Duration::from_secs(60))
                .try_proxy_from_env(!no_proxy)
                .build()
        };
        Client {
            cfg: cfg.clone(),
            agent: build(5),
            head_agent: build(0),
        }
    }

    pub fn file_url(&self, repo: &str, revision: &str, file: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.cfg.endpoint,
            encode_path(repo),
            encode_revision(revision),
            encode_path(file)
        )
    }

    fn auth(&self, req: ureq::Request) -> ureq::Request {
        match &self.cfg.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// The commit `revision` points to and the files in it, with sizes and hashes.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.cfg.endpoint,
            encode_path(repo),
            encode_revision(revision)
        );
        let resp = self
            .auth(self.agent.get(&url))
            .call()
            .map_err(|e| self.error(e, repo, revision, None))?;
        let text = resp
            .into_string()
            .map_err(|e| HubError::Remote(format!("{url}: cannot read the answer: {e}")))?;
        serde_json::from_str(&text)
            .map_err(|e| HubError::Remote(format!("{url}: not the hub's model info: {e}")))
    }

    /// HEAD on the file: commit, etag and size from the hub's headers. Relative redirects
    /// (a renamed repo) are followed; the absolute one to the CDN is not.
    pub fn file_meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta, HubError> {
        let mut url = self.file_url(repo, commit, file);
        for _ in 0..5 {
            let resp = self
                .auth(self.head_agent.head(&url))
                .set("Accept-Encoding", "identity")
                .call()
                .map_err(|e| self.error(e, repo, commit, Some(file)))?;
            if (300..400).contains(&resp.status()) && resp.header("X-Repo-Commit").is_none() {
                match resp.header("Location") {
                    Some(loc) if loc.starts_with('/') => {
                        url = format!("{}{loc}", self.cfg.endpoint);
                        continue;
                    }
                    _ => {}
                }
            }
            let missing = |h: &str| {
                HubError::Remote(format!(
                    "{url}: the answer has no {h} header; is HF_ENDPOINT ({}) a Hugging Face hub?",
                    self.cfg.endpoint
                ))
            };
            let commit = resp
                .header("X-Repo-Commit")
                .ok_or_else(|| missing("X-Repo-Commit"))?
                .to_string();
            let linked = resp.header("X-Linked-Etag").map(normalize_etag);
            let lfs = linked.is_some();
            let etag = match linked {
                Some(e) => e,
                None => normalize_etag(resp.header("ETag").ok_or_else(|| missing("ETag"))?),
            };
            let size = resp
                .header("X-Linked-Size")
                .or(resp.header("Content-Length"))
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| missing("X-Linked-Size or Content-Length"))?;
            if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
                return Err(HubError::Remote(format!("{url}: unusable ETag `{etag}`")));
            }
            return Ok(FileMeta {
                commit,
                etag,
                lfs,
                size,
            });
        }
        Err(HubError::Remote(format!("{url}: too many redirects")))
    }

    /// GET from byte `from` on. The caller checks whether the server honoured the Range
    /// (206) or sent the whole file (200).
    pub fn get(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        from: u64,
    ) -> Result<ureq::Response, HubError> {
        let url = self.file_url(repo, commit, file);
        let mut req = self
            .auth(self.agent.get(&url))
            .set("Accept-Encoding", "identity");
        if from > 0 {
            req = req.set("Range", &format!("bytes={from}-"));
        }
        req.call()
            .map_err(|e| self.error(e, repo, commit, Some(file)))
    }

    fn error(&self, e: ureq::Error, repo: &str, revision: &str, file: Option<&str>) -> HubError {
        let what = match file {
            Some(f) => format!("{repo}/{f}"),
            None => repo.to_string(),
        };
        match e {
            ureq::Error::Status(code, resp) => {
                let kind = resp.header("X-Error-Code").unwrap_or("").to_string();
                let msg = match (code, kind.as_str()) {
                    (401 | 403, _) if self.cfg.token.is_none() => format!(
                        "{what}: the hub refused access ({code}): the model is private, gated or \
                         does not exist; if you can see it on the hub, set HF_TOKEN"
                    ),
                    (401, _) => format!(
                        "{what}: the hub refused access (401) with the HF_TOKEN given: the model \
                         is private or does not exist, or the token is wrong"
                    ),
                    (403, _) => format!(
                        "{what}: access denied (403): the model is gated; accept its terms on its \
                         hub page with the account of HF_TOKEN"
                    ),
                    (404, "RevisionNotFound") => {
                        format!("{repo}: no revision `{revision}` on the hub")
                    }
                    (404, "EntryNotFound") => {
                        format!("{what}: no such file at revision `{revision}`")
                    }
                    (404, _) => format!(
                        "{what}: not found on {} (404); check the repo id",
                        self.cfg.endpoint
                    ),
                    (429, _) => format!("{what}: the hub asks to slow down (429); try again later"),
                    _ => format!("{what}: the hub answered HTTP {code}"),
                };
                HubError::Remote(msg)
            }
            ureq::Error::Transport(t) => HubError::Remote(format!(
                "cannot reach {}: {}; set HF_HUB_OFFLINE=1 to use only models already in the cache",
                self.cfg.endpoint,
                t.to_string().replace('\n', " ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_the_hubs() {
        let cfg = HubConfig {
            cache_dir: "/c".into(),
            endpoint: "https://h".into(),
            token: None,
            offline: false,
            retries: 0,
        };
        let c = Client::new(&cfg);
        assert_eq!(
            c.file_url("o/m", "refs/pr/1", "sub/a b.json"),
            "https://h/o/m/resolve/refs%2Fpr%2F1/sub/a%20b.json"
        );
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }

    #[test]
    fn no_proxy_matches_hosts_and_domains() {
        assert!(no_proxy_for("http://127.0.0.1:8080", "localhost,127.0.0.1"));
        assert!(no_proxy_for("https://hub.corp.example", ".example"));
        assert!(no_proxy_for("https://hub.corp.example", "corp.example"));
        assert!(no_proxy_for("https://huggingface.co", "*"));
        assert!(!no_proxy_for(
            "https://huggingface.co",
            "localhost,.example"
        ));
        assert!(!no_proxy_for("https://huggingface.co", ""));
    }
}
