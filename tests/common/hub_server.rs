//! A stand-in for the Hugging Face hub on 127.0.0.1, for the download tests: the API's
//! model info (`/api/models/{repo}/revision/{rev}`), `/{repo}/resolve/{rev}/{file}` with the
//! hub's headers (`X-Repo-Commit`, `ETag` = git blob sha1 for small files; for LFS files a
//! 302 to a CDN path with `X-Linked-Etag` = sha256 and `X-Linked-Size`), Range requests
//! (206 + Content-Range), and faults on demand: a connection cut mid-file, wrong bytes, a
//! required token. Every request is logged for the tests to inspect.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha1::Digest;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone)]
pub struct File {
    pub name: String,
    pub bytes: Vec<u8>,
    pub lfs: bool,
}

impl File {
    pub fn sha256(&self) -> String {
        hex(&sha2::Sha256::digest(&self.bytes))
    }

    /// The git blob id, as `git hash-object` computes it.
    pub fn git_sha1(&self) -> String {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", self.bytes.len()).as_bytes());
        h.update(&self.bytes);
        hex(&h.finalize())
    }

    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_sha1()
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
pub struct Faults {
    /// Cut the connection after this many body bytes of this file, on GETs without a Range.
    pub cut: Option<(String, usize)>,
    /// Send this file with one byte flipped.
    pub corrupt: Option<String>,
    /// Answer 401 unless `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Send bodies in 64 kB pieces with a pause between them.
    pub slow: bool,
}

struct State {
    repos: HashMap<String, Vec<File>>,
    faults: Faults,
    log: Vec<Logged>,
}

pub struct HubServer {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    pub fn start(repos: Vec<(&str, Vec<File>)>, faults: Faults) -> HubServer {
        // The CDN is another host (here: another port), as on the real hub, where the
        // token must not follow the redirect.
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://127.0.0.1:{}", hub.local_addr().unwrap().port());
        let cdn_endpoint = format!("http://127.0.0.1:{}", cdn.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(State {
            repos: repos.into_iter().map(|(r, f)| (r.to_string(), f)).collect(),
            faults,
            log: vec![],
        }));
        for listener in [hub, cdn] {
            let st = state.clone();
            let cdn = cdn_endpoint.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let st = st.clone();
                    let cdn = cdn.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &st, &cdn);
                    });
                }
            });
        }
        HubServer { endpoint, state }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    pub fn set_faults(&self, f: Faults) {
        self.state.lock().unwrap().faults = f;
    }
}

/// The files of a fixture folder as a hub repo: safetensors and tokenizer.json are LFS.
pub fn repo_from_fixture(dir: &std::path::Path) -> Vec<File> {
    let mut files: Vec<File> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            File {
                lfs: name.ends_with(".safetensors") || name == "tokenizer.json",
                bytes: std::fs::read(e.path()).unwrap(),
                name,
            }
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection after this many body bytes.
    cut_at: Option<usize>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: vec![],
        cut_at: None,
    }
}

fn error(status: u16, code: &str) -> Reply {
    let mut r = reply(status);
    r.headers.push(("X-Error-Code".into(), code.into()));
    r.body = format!("{{\"error\":\"{code}\"}}").into_bytes();
    r
}

fn serve(conn: TcpStream, st: &Mutex<State>, cdn: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let (r, slow) = {
        let mut s = st.lock().unwrap();
        s.log.push(Logged {
            method: method.clone(),
            path: target.clone(),
            headers: headers.clone(),
        });
        (route(&mut s, &method, &path, &headers, cdn), s.faults.slow)
    };
    let mut out = conn;
    let reason = match r.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", r.status);
    let has_len = r.headers.iter().any(|(k, _)| k == "Content-Length");
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let end = r.cut_at.unwrap_or(r.body.len()).min(r.body.len());
        for piece in r.body[..end].chunks(if slow { 65536 } else { usize::MAX }) {
            out.write_all(piece)?;
            if slow {
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    out.flush()?;
    if r.cut_at.is_some() {
        let _ = out.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

fn authorized(s: &State, headers: &HashMap<String, String>) -> bool {
    match &s.faults.token {
        Some(t) => headers.get("authorization") == Some(&format!("Bearer {t}")),
        None => true,
    }
}

fn route(
    s: &mut State,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    cdn: &str,
) -> Reply {
    // /api/models/{org}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        if !authorized(s, headers) {
            return error(401, "RepoNotFound");
        }
        let p: Vec<&str> = rest.split('/').collect();
        if p.len() == 4 && p[2] == "tree" {
            // The listing huggingface_hub's snapshot_download reads.
            let Some(files) = s.repos.get(&format!("{}/{}", p[0], p[1])) else {
                return error(404, "RepoNotFound");
            };
            let entries: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    let mut v = serde_json::json!({
                        "type": "file", "path": f.name, "size": f.bytes.len(),
                        "oid": if f.lfs { "f".repeat(40) } else { f.git_sha1() },
                    });
                    if f.lfs {
                        v["lfs"] = serde_json::json!({
                            "oid": f.sha256(), "size": f.bytes.len(), "pointerSize": 134
                        });
                    }
                    v
                })
                .collect();
            let mut r = reply(200);
            r.body = serde_json::Value::Array(entries).to_string().into_bytes();
            return r;
        }
        if p.len() != 4 || p[2] != "revision" {
            return error(404, "NotFound");
        }
        let repo = format!("{}/{}", p[0], p[1]);
        let Some(files) = s.repos.get(&repo) else {
            return error(404, "RepoNotFound");
        };
        if p[3] != "main" && p[3] != COMMIT {
            return error(404, "RevisionNotFound");
        }
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({
                    "rfilename": f.name,
                    "size": if f.lfs { 134 } else { f.bytes.len() },
                    "blobId": if f.lfs { "f".repeat(40) } else { f.git_sha1() },
                });
                if f.lfs {
                    v["lfs"] = serde_json::json!({
                        "sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134
                    });
                }
                v
            })
            .collect();
        let mut r = reply(200);
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r.body = serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings})
            .to_string()
            .into_bytes();
        return r;
    }
    // /cdn/{sha256}: the LFS bytes, no token needed (signed URLs on the real CDN).
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = s
            .repos
            .values()
            .flatten()
            .find(|f| f.lfs && f.sha256() == sha)
            .cloned();
        return match file {
            Some(f) => body_reply(s, &f, headers, vec![]),
            None => error(404, "NotFound"),
        };
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let p: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if p.len() == 5 && p[2] == "resolve" {
        if !authorized(s, headers) {
            return error(401, "RepoNotFound");
        }
        let repo = format!("{}/{}", p[0], p[1]);
        let Some(files) = s.repos.get(&repo) else {
            return error(404, "RepoNotFound");
        };
        if p[3] != "main" && p[3] != COMMIT {
            return error(404, "RevisionNotFound");
        }
        let name = p[4].replace("%20", " ");
        let Some(f) = files.iter().find(|f| f.name == name).cloned() else {
            return error(404, "EntryNotFound");
        };
        let mut common = vec![
            ("X-Repo-Commit".to_string(), COMMIT.to_string()),
            ("ETag".to_string(), format!("\"{}\"", f.etag())),
        ];
        if f.lfs {
            common.push(("X-Linked-Etag".into(), format!("\"{}\"", f.sha256())));
            common.push(("X-Linked-Size".into(), f.bytes.len().to_string()));
            common.push(("Location".into(), format!("{cdn}/cdn/{}", f.sha256())));
            let mut r = reply(302);
            r.headers = common;
            return r;
        }
        let _ = method;
        return body_reply(s, &f, headers, common);
    }
    error(404, "NotFound")
}

fn body_reply(
    s: &State,
    f: &File,
    headers: &HashMap<String, String>,
    mut extra: Vec<(String, String)>,
) -> Reply {
    let mut bytes = f.bytes.clone();
    if s.faults.corrupt.as_deref() == Some(f.name.as_str()) {
        let i = bytes.len() / 2;
        bytes[i] ^= 0x55;
    }
    let total = bytes.len();
    let range = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let mut r = match range {
        Some(start) if start < total => {
            let mut r = reply(206);
            r.body = bytes[start..].to_vec();
            extra.push((
                "Content-Range".into(),
                format!("bytes {start}-{}/{total}", total - 1),
            ));
            r
        }
        Some(_) => reply(416),
        None => {
            let mut r = reply(200);
            r.body = bytes;
            if let Some((name, at)) = &s.faults.cut {
                if name == &f.name {
                    r.cut_at = Some(*at);
                }
            }
            r
        }
    };
    extra.push(("Accept-Ranges".into(), "bytes".into()));
    extra.push(("Content-Length".into(), r.body.len().to_string()));
    r.headers = extra;
    r
}
