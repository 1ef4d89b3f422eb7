//! `nemo pull / list / rm` and `--model <repo id>` against a stand-in hub on 127.0.0.1
//! (tests/common/hub_server.rs) reached through HF_ENDPOINT, with HF_HOME in a temp dir.
//! The expected bytes and hashes come from the fixture files themselves (sha2/sha1 of the
//! bytes, `git hash-object` where git is installed), never from nemo's code.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hub_server::{repo_from_fixture, Faults, File, HubServer, COMMIT};

const REPO: &str = "test-org/nemotron-h-tiny";

struct Env {
    home: tempfile::TempDir,
    endpoint: String,
    extra: Vec<(String, String)>,
}

impl Env {
    fn new(server: &HubServer) -> Env {
        Env {
            home: tempfile::tempdir().unwrap(),
            endpoint: server.endpoint.clone(),
            extra: vec![],
        }
    }

    fn with(mut self, k: &str, v: &str) -> Env {
        self.extra.push((k.into(), v.into()));
        self
    }

    fn hub_cache(&self) -> PathBuf {
        self.home.path().join("hf/hub")
    }

    fn repo_dir(&self) -> PathBuf {
        self.hub_cache().join("models--test-org--nemotron-h-tiny")
    }

    fn nemo(&self, args: &[&str]) -> Output {
        let mut cmd = common::nemo_command();
        // On a machine with an NVIDIA driver, `--device auto` adds a notice line to stderr.
        cmd.env("NEMO_DEVICE", "cpu");
        cmd.args(args)
            .env_remove("NEMO_MODEL")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env("HF_HOME", self.home.path().join("hf"))
            .env("HF_ENDPOINT", &self.endpoint)
            .env("NEMO_CONFIG", self.home.path().join("config.toml"))
            .env("NEMO_DATA_DIR", self.home.path().join("data"))
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tiny_files() -> Vec<File> {
    repo_from_fixture(&common::fixture("nemotron_h_tiny"))
}

fn file<'a>(files: &'a [File], name: &str) -> &'a File {
    files.iter().find(|f| f.name == name).unwrap()
}

fn server(faults: Faults) -> HubServer {
    HubServer::start(vec![(REPO, tiny_files())], faults)
}

/// Exit code as expected, no panic, and the last stderr line says it all.
fn fails(out: &Output, code: i32, must_contain: &[&str]) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    for m in must_contain {
        assert!(last.contains(m), "`{m}` missing from the last line: {err}");
    }
    last
}

fn ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nstdout: {}",
        text(&out.stderr),
        text(&out.stdout)
    );
}

/// The git blob id from git itself, when git is installed.
fn git_hash_object(path: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["hash-object", "--no-filters"])
        .arg(path)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

#[test]
fn pull_writes_the_huggingface_hub_layout_and_run_loads_it_from_the_cache() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    let out = env.nemo(&["pull", REPO]);
    ok(&out);
    let snap = env.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(text(&out.stdout).trim(), snap.display().to_string());

    // refs/main holds the commit; every wanted file is a relative symlink to its blob.
    let refs = std::fs::read_to_string(env.repo_dir().join("refs/main")).unwrap();
    assert_eq!(refs, COMMIT);
    let files = tiny_files();
    for name in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let f = file(&files, name);
        let link = std::fs::read_link(snap.join(name)).unwrap();
        assert_eq!(link, Path::new("../../blobs").join(f.etag()), "{name}");
        let blob = env.repo_dir().join("blobs").join(f.etag());
        assert_eq!(std::fs::read(&blob).unwrap(), f.bytes, "{name}");
        if !f.lfs {
            if let Some(git) = git_hash_object(&common::fixture("nemotron_h_tiny").join(name)) {
                assert_eq!(
                    f.etag(),
                    git,
                    "{name}: the small-file blob is named by its git sha1"
                );
            }
        }
    }
    // LFS blobs are named by sha256 (the same as `sha256sum`).
    let st = file(&files, "model.safetensors");
    assert!(env.repo_dir().join("blobs").join(st.sha256()).is_file());
    // Files nemo does not load are not fetched; nothing is left half-done.
    assert!(!snap.join("reference.bin").exists());
    let leftovers: Vec<_> = std::fs::read_dir(env.repo_dir().join("blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty());

    // `--model <repo id>` runs from the cache, offline, with no request to the hub, and
    // answers exactly as the fixture folder does.
    srv.clear_log();
    let args = |m: &str| {
        vec![
            "run".to_string(),
            "--model".into(),
            m.into(),
            "--max-tokens".into(),
            "6".into(),
            "--temperature".into(),
            "0".into(),
            "--json".into(),
            "hello".into(),
        ]
    };
    // The events, without the final `done` line and its timings.
    let events = |o: &Output| {
        let t = text(&o.stdout);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines.len() > 1, "no tokens: {t}");
        lines[..lines.len() - 1].join("\n")
    };
    let from_cache = env
        .clone_with("HF_HUB_OFFLINE", "1")
        .nemo_owned(&args(REPO));
    ok(&from_cache);
    assert!(srv.log().is_empty(), "requests: {:?}", srv.log());
    let dir = common::fixture("nemotron_h_tiny").display().to_string();
    let from_dir = env.nemo_owned(&args(&dir));
    ok(&from_dir);
    assert_eq!(events(&from_cache), events(&from_dir));

    // Offline, a pull of a cached model prints its path and asks nothing.
    srv.clear_log();
    let offline = env.clone_with("HF_HUB_OFFLINE", "1").nemo(&["pull", REPO]);
    ok(&offline);
    assert_eq!(text(&offline.stdout).trim(), snap.display().to_string());
    assert!(srv.log().is_empty());

    // A second pull finds everything in place and downloads nothing.
    srv.clear_log();
    let again = env.nemo(&["pull", REPO]);
    ok(&again);
    assert!(srv
        .log()
        .iter()
        .all(|r| r.method != "GET" || r.path.starts_with("/api/")));
}

impl Env {
    /// The same HF_HOME with one more variable set.
    fn clone_with(&self, k: &str, v: &str) -> Env {
        let mut extra = self.extra.clone();
        extra.push((
            "HF_HOME".into(),
            self.home.path().join("hf").display().to_string(),
        ));
        extra.push((k.into(), v.into()));
        Env {
            // Unused: HF_HOME above points at this Env's cache.
            home: tempfile::tempdir().unwrap(),
            endpoint: self.endpoint.clone(),
            extra,
        }
    }

    fn nemo_owned(&self, args: &[String]) -> Output {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nemo(&a)
    }
}

#[test]
fn interrupted_download_is_resumed_by_the_next_pull_with_a_range_request() {
    let cut = 300_000;
    let srv = server(Faults {
        cut: Some(("model.safetensors".into(), cut)),
        ..Default::default()
    });
    let env = Env::new(&srv).with("NEMO_HUB_RETRIES", "0");
    let first = env.nemo(&["pull", REPO]);
    fails(&first, 1, &["model.safetensors", "interrupted", "again"]);
    let st = file(&tiny_files(), "model.safetensors").clone();
    let part = env
        .repo_dir()
        .join("blobs")
        .join(format!("{}.incomplete", st.sha256()));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cut as u64);
    let snap = env.repo_dir().join("snapshots").join(COMMIT);
    assert!(!snap.join("model.safetensors").exists());
    assert!(!env.repo_dir().join("refs/main").exists());

    srv.clear_log();
    let second = env.nemo(&["pull", REPO]);
    ok(&second);
    let ranged: Vec<_> = srv
        .log()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/cdn/"))
        .collect();
    // Only the cut file is fetched again, from where it stopped (the Range follows the
    // redirect from /resolve/ to the CDN).
    assert_eq!(ranged.len(), 2, "{:?}", srv.log());
    let resumed = ranged
        .iter()
        .find(|r| r.path == format!("/cdn/{}", st.sha256()))
        .unwrap();
    assert_eq!(resumed.headers["range"], format!("bytes={cut}-"));
    assert!(
        srv.log()
            .iter()
            .all(|r| !r.headers.contains_key("range")
                || r.headers["range"] == format!("bytes={cut}-"))
    );
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        st.bytes
    );
    assert!(!part.exists());
}

#[test]
fn dropped_connection_is_retried_within_one_pull() {
    let srv = server(Faults {
        cut: Some(("model.safetensors".into(), 100_000)),
        ..Default::default()
    });
    let env = Env::new(&srv);
    let out = env.nemo(&["pull", REPO]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("retry 1"),
        "{}",
        text(&out.stderr)
    );
    let st = file(&tiny_files(), "model.safetensors").clone();
    let snap = env.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        st.bytes
    );
    assert!(srv
        .log()
        .iter()
        .any(|r| r.headers.get("range").map(String::as_str) == Some("bytes=100000-")));
}

#[test]
fn two_pulls_at_once_share_the_blob_lock_and_both_succeed() {
    let srv = server(Faults {
        slow: true,
        ..Default::default()
    });
    let env = Env::new(&srv);
    let spawn = || {
        let mut cmd = common::nemo_command();
        // On a machine with an NVIDIA driver, `--device auto` adds a notice line to stderr.
        cmd.env("NEMO_DEVICE", "cpu");
        cmd.args(["pull", REPO])
            .env("HF_HOME", env.home.path().join("hf"))
            .env("HF_ENDPOINT", &env.endpoint)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .env("NO_PROXY", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    ok(&a.wait_with_output().unwrap());
    ok(&b.wait_with_output().unwrap());
    let st = file(&tiny_files(), "model.safetensors").clone();
    let snap = env.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        st.bytes
    );
    // huggingface_hub's lock files, where it keeps them.
    let locks = env
        .hub_cache()
        .join(".locks/models--test-org--nemotron-h-tiny");
    assert!(locks.join(format!("{}.lock", st.sha256())).is_file());
}

#[test]
fn corrupted_download_is_detected_and_not_placed() {
    // An LFS file (checked by sha256) and a small file (checked by git blob sha1).
    for name in ["model.safetensors", "config.json"] {
        let srv = server(Faults {
            corrupt: Some(name.into()),
            ..Default::default()
        });
        let env = Env::new(&srv);
        let out = env.nemo(&["pull", REPO]);
        let last = fails(&out, 1, &[name, "corrupt"]);
        assert!(last.starts_with("nemo: "), "{last}");
        let f = file(&tiny_files(), name).clone();
        let blobs = env.repo_dir().join("blobs");
        assert!(!blobs.join(f.etag()).exists(), "{name} placed as a blob");
        assert!(!blobs.join(format!("{}.incomplete", f.etag())).exists());
        let snap = env.repo_dir().join("snapshots").join(COMMIT);
        assert!(!snap.join(name).exists(), "{name} linked in the snapshot");
        assert!(!env.repo_dir().join("refs/main").exists());
    }
}

#[test]
fn hf_token_is_sent_as_a_bearer_token_and_not_to_the_cdn() {
    let srv = server(Faults {
        token: Some("hf_secret".into()),
        ..Default::default()
    });
    let env = Env::new(&srv);
    fails(&env.nemo(&["pull", REPO]), 1, &["401", "HF_TOKEN"]);
    assert_eq!(text(&env.nemo(&["pull", REPO]).stderr).lines().count(), 1);

    let env = Env::new(&srv).with("HF_TOKEN", "hf_secret");
    ok(&env.nemo(&["pull", REPO]));
    let log = srv.log();
    let hub_requests: Vec<_> = log
        .iter()
        .filter(|r| !r.path.starts_with("/cdn/") && r.headers.contains_key("authorization"))
        .collect();
    assert!(!hub_requests.is_empty());
    for r in &hub_requests {
        assert_eq!(r.headers["authorization"], "Bearer hf_secret", "{}", r.path);
    }
    for r in log.iter().filter(|r| r.path.starts_with("/cdn/")) {
        assert!(
            !r.headers.contains_key("authorization"),
            "token sent to {}",
            r.path
        );
    }
}

#[test]
fn offline_mode_fails_clearly_when_the_model_is_not_cached() {
    let srv = server(Faults::default());
    let env = Env::new(&srv).with("HF_HUB_OFFLINE", "1");
    let out = env.nemo(&["run", "--model", REPO, "hello"]);
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    fails(&out, 1, &[REPO, "HF_HUB_OFFLINE", "nemo pull"]);
    fails(&env.nemo(&["pull", REPO]), 1, &["HF_HUB_OFFLINE"]);
    assert!(srv.log().is_empty(), "offline but asked: {:?}", srv.log());
}

#[test]
fn missing_repo_revision_or_file_is_one_clear_line() {
    let srv = HubServer::start(
        vec![
            (REPO, tiny_files()),
            (
                "test-org/tiny-GGUF",
                vec![File {
                    name: "tiny-Q4_K_M.gguf".into(),
                    bytes: vec![1; 10],
                    lfs: true,
                }],
            ),
        ],
        Faults::default(),
    );
    let env = Env::new(&srv);
    let out = env.nemo(&["pull", "test-org/absent"]);
    fails(&out, 1, &["test-org/absent", "404"]);
    assert_eq!(text(&out.stderr).lines().count(), 1);
    let out = env.nemo(&["pull", REPO, "--revision", "v9"]);
    fails(&out, 1, &["v9"]);
    assert_eq!(text(&out.stderr).lines().count(), 1);
    let out = env.nemo(&["pull", "test-org/tiny-GGUF:absent.gguf"]);
    fails(&out, 1, &["absent.gguf", "tiny-Q4_K_M.gguf"]);
    assert_eq!(text(&out.stderr).lines().count(), 1);
    // `--model org/name` that is neither on the hub nor a local folder says both.
    let out = env.nemo(&["run", "--model", "test-org/absent", "hi"]);
    fails(&out, 1, &["test-org/absent", "404", "no local folder"]);
    // Not a repo id nor an alias: a usage error that lists the aliases.
    fails(&env.nemo(&["pull", "nano9b"]), 2, &["nano-9b-v2"]);
    assert!(!env.hub_cache().join("models--test-org--absent").exists());
}

#[test]
fn gguf_repo_pull_takes_q4_k_m_by_default_or_the_named_file() {
    let gguf = |n: &str, b: u8| File {
        name: n.into(),
        bytes: vec![b; 4096],
        lfs: true,
    };
    let srv = HubServer::start(
        vec![(
            "test-org/model-GGUF",
            vec![
                gguf("model-Q2_K.gguf", 2),
                gguf("model-Q4_K_M.gguf", 4),
                gguf("model-Q8_0.gguf", 8),
                File {
                    name: "README.md".into(),
                    bytes: b"# model".to_vec(),
                    lfs: false,
                },
            ],
        )],
        Faults::default(),
    );
    let env = Env::new(&srv);
    let out = env.nemo(&["pull", "test-org/model-GGUF"]);
    ok(&out);
    assert!(text(&out.stderr).contains("picked model-Q4_K_M.gguf"));
    let path = PathBuf::from(text(&out.stdout).trim());
    assert!(path.ends_with("model-Q4_K_M.gguf"), "{}", path.display());
    assert_eq!(std::fs::read(&path).unwrap(), vec![4; 4096]);
    let snap = path.parent().unwrap();
    assert!(!snap.join("model-Q8_0.gguf").exists());
    assert!(!snap.join("README.md").exists());

    let out = env.nemo(&["pull", "test-org/model-GGUF", "--file", "model-Q8_0.gguf"]);
    ok(&out);
    assert_eq!(
        std::fs::read(snap.join("model-Q8_0.gguf")).unwrap(),
        vec![8; 4096]
    );
}

#[test]
fn list_shows_the_pulled_model_and_rm_removes_only_it() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    let empty = env.nemo(&["list"]);
    ok(&empty);
    assert!(text(&empty.stdout).is_empty());
    assert!(text(&empty.stderr).contains("nemo pull"));
    ok(&env.nemo(&["pull", REPO]));
    // Something else in the cache and beside it, which rm must leave alone.
    let other = env.hub_cache().join("models--other--model");
    std::fs::create_dir_all(other.join("blobs")).unwrap();
    std::fs::write(other.join("blobs/x"), b"keep").unwrap();
    // A model nemo cannot run is not listed.
    let bert = env
        .hub_cache()
        .join("models--other--bert/snapshots")
        .join(COMMIT);
    std::fs::create_dir_all(&bert).unwrap();
    std::fs::write(
        bert.join("config.json"),
        r#"{"architectures":["BertModel"]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(env.hub_cache().join("models--other--bert/refs")).unwrap();
    std::fs::write(
        env.hub_cache().join("models--other--bert/refs/main"),
        COMMIT,
    )
    .unwrap();
    std::fs::write(env.home.path().join("hf/token-not"), b"keep").unwrap();

    let list = env.nemo(&["list"]);
    ok(&list);
    let table = text(&list.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with(REPO))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("NemotronHForCausalLM"), "{row}");
    assert!(row.contains(
        &env.repo_dir()
            .join("snapshots")
            .join(COMMIT)
            .display()
            .to_string()
    ));
    let json = env.nemo(&["list", "--json"]);
    ok(&json);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let m = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["repo"] == REPO)
        .unwrap();
    assert_eq!(m["arch"], "NemotronHForCausalLM");
    let blob_bytes: u64 = tiny_files()
        .iter()
        .filter(|f| f.name != "reference.bin" && f.name != "reference.json")
        .map(|f| f.bytes.len() as u64)
        .sum();
    assert_eq!(m["size_bytes"].as_u64(), Some(blob_bytes));

    // No terminal and no --yes: nothing removed, usage exit.
    fails(&env.nemo(&["rm", REPO]), 2, &["--yes"]);
    assert!(env.repo_dir().exists());
    let rm = env.nemo(&["rm", REPO, "--yes"]);
    ok(&rm);
    assert!(!env.repo_dir().exists());
    assert!(other.join("blobs/x").exists());
    assert!(env.home.path().join("hf/token-not").exists());
    fails(&env.nemo(&["rm", REPO, "--yes"]), 1, &["not in the cache"]);
    let list = env.nemo(&["list"]);
    assert!(!text(&list.stdout).contains(REPO));
}

#[test]
fn run_without_a_model_and_without_a_terminal_asks_for_yes_and_exits_2() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    let out = env.nemo(&["run", "hello"]);
    // One line: what was picked, why, and how to agree.
    fails(
        &out,
        2,
        &[
            "no model given",
            "default for this machine",
            "--yes",
            "--model",
        ],
    );
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    // Offline, the same question cannot be answered: one line, exit 1, no request.
    let out = env
        .clone_with("HF_HUB_OFFLINE", "1")
        .nemo(&["run", "hello"]);
    fails(&out, 1, &["no model given", "HF_HUB_OFFLINE"]);
    assert!(
        srv.log().is_empty(),
        "asked the hub before agreeing: {:?}",
        srv.log()
    );
}

#[test]
fn model_not_in_the_cache_is_pulled_on_first_use() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    let out = env.nemo(&["run", "--model", REPO, "--max-tokens", "2", "hello"]);
    ok(&out);
    let err = text(&out.stderr);
    assert!(err.contains("not in the cache yet"), "{err}");
    assert!(
        err.contains("MB") || err.contains("kB"),
        "size not said: {err}"
    );
    assert!(env.repo_dir().join("refs/main").is_file());
}

/// huggingface_hub itself, when Python has it (`pip install huggingface_hub`); else the test
/// says `SKIP` (and fails under CI, which installs it).
fn python_hf(env: &Env, offline: bool, script: &str, args: &[&str]) -> Option<Output> {
    let have = Command::new("python3")
        .args(["-c", "import huggingface_hub"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        common::skip::require_or_skip("python3 with huggingface_hub is not installed");
        return None;
    }
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .env("HF_HOME", env.home.path().join("hf"))
        .env("HF_ENDPOINT", &env.endpoint)
        .env("NO_PROXY", "127.0.0.1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE");
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    } else {
        cmd.env_remove("HF_HUB_OFFLINE");
    }
    Some(cmd.output().unwrap())
}

const PY_READ: &str = r#"
import json, sys
from huggingface_hub import hf_hub_download, scan_cache_dir, try_to_load_from_cache
repo = sys.argv[1]
info = scan_cache_dir()
r = [r for r in info.repos if r.repo_id == repo][0]
print(json.dumps({
    "config": try_to_load_from_cache(repo, "config.json"),
    "weights": hf_hub_download(repo, "model.safetensors"),
    "warnings": [str(w) for w in info.warnings],
    "refs": sorted(r.refs.keys()),
    "files": sorted(f.file_name for rev in r.revisions for f in rev.files),
    "size_on_disk": r.size_on_disk,
}))
"#;

const PY_DOWNLOAD: &str = r#"
import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1], allow_patterns=["*.json", "*.safetensors"]))
"#;

#[test]
fn huggingface_hub_reads_what_nemo_pulled() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    ok(&env.nemo(&["pull", REPO]));
    let Some(out) = python_hf(&env, true, PY_READ, &[REPO]) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = env.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(v["config"], snap.join("config.json").display().to_string());
    assert_eq!(
        v["weights"],
        snap.join("model.safetensors").display().to_string()
    );
    assert_eq!(v["warnings"], serde_json::json!([]));
    assert_eq!(v["refs"], serde_json::json!(["main"]));
    assert_eq!(
        v["files"],
        serde_json::json!([
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ])
    );
}

#[test]
fn nemo_runs_what_huggingface_hub_downloaded() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    let Some(out) = python_hf(&env, false, PY_DOWNLOAD, &[REPO]) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snap = env.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(text(&out.stdout).trim(), snap.display().to_string());
    srv.clear_log();
    let run = env.clone_with("HF_HUB_OFFLINE", "1").nemo(&[
        "run",
        "--model",
        REPO,
        "--max-tokens",
        "2",
        "hello",
    ]);
    ok(&run);
    assert!(srv.log().is_empty());
    let list = env.nemo(&["list", "--json"]);
    ok(&list);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v[0]["repo"], REPO);
}

#[test]
fn config_toml_model_may_be_a_repo_id() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    std::fs::write(
        env.home.path().join("config.toml"),
        format!("model = \"{REPO}\"\n"),
    )
    .unwrap();
    let out = env.nemo(&["run", "--max-tokens", "2", "hello"]);
    ok(&out);
    assert!(env.repo_dir().join("refs/main").is_file());
}

#[test]
fn pull_at_a_commit_writes_the_snapshot_but_no_ref() {
    let srv = server(Faults::default());
    let env = Env::new(&srv);
    let out = env.nemo(&["pull", REPO, "--revision", COMMIT]);
    ok(&out);
    let snap = env.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(text(&out.stdout).trim(), snap.display().to_string());
    assert!(snap.join("model.safetensors").is_file());
    // huggingface_hub writes refs only for branch or tag names.
    assert!(!env.repo_dir().join("refs").exists());
    // Offline, the commit still finds it.
    let out = env
        .clone_with("HF_HUB_OFFLINE", "1")
        .nemo(&["pull", REPO, "--revision", COMMIT]);
    ok(&out);
}
