//! Pulling a planned set of files into the cache, one file at a time:
//! HEAD for commit/etag/size → reuse `blobs/<etag>` if it is there → else download into
//! `blobs/<etag>.incomplete`, continuing a partial one with `Range: bytes=N-` → check size
//! and hash → rename to `blobs/<etag>` → symlink from the snapshot. `refs/<revision>` is
//! written last, once every file is in place. Each blob is fetched under huggingface_hub's
//! lock file (`.locks/models--…/<etag>.lock`), so two pulls of one model do not collide.
//!
//! What is checked: the size of every file against the hub's `X-Linked-Size` /
//! `Content-Length`; the sha256 of LFS files (weights, tokenizer.json) against
//! `X-Linked-Etag` / the listing's `lfs.sha256`; the git blob sha1 of small files against
//! their ETag when the listing's `blobId` confirms that the ETag is that sha1. A file whose
//! bytes do not match is deleted and never placed.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::Digest;

use super::cache::HubCache;
use super::client::{Client, FileMeta};
use super::selection::{Plan, PlannedFile};
use super::{HubError, Progress};

#[derive(Debug)]
pub struct PullReport {
    pub snapshot: PathBuf,
    /// What to open: the snapshot folder or the `.gguf` file in it.
    pub path: PathBuf,
    /// Bytes fetched over the network in this pull.
    pub downloaded: u64,
    /// Files that were already in the cache.
    pub reused: usize,
}

/// How a downloaded file is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Sha256(String),
    /// Git blob id: sha1 of `blob {size}\0` + content.
    GitSha1(String),
    SizeOnly,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn check_for(meta: &FileMeta, planned: &PlannedFile) -> Check {
    if meta.lfs && is_hex(&meta.etag, 64) {
        Check::Sha256(meta.etag.to_ascii_lowercase())
    } else if let Some(s) = planned.lfs_sha256.as_ref().filter(|s| is_hex(s, 64)) {
        Check::Sha256(s.clone())
    } else if is_hex(&meta.etag, 40) && planned.blob_id.as_deref() == Some(meta.etag.as_str()) {
        Check::GitSha1(meta.etag.to_ascii_lowercase())
    } else {
        Check::SizeOnly
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and hash of a complete file; `Err(reason)` if it is not the file the hub described.
pub fn verify(path: &Path, size: u64, check: &Check) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != size {
        return Err(format!("{len} bytes, the hub says {size}"));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut feed = |update: &mut dyn FnMut(&[u8])| -> Result<(), String> {
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            update(&buf[..n]);
        }
    };
    match check {
        Check::Sha256(want) => {
            let mut h = sha2::Sha256::new();
            feed(&mut |b| h.update(b))?;
            let got = hex(&h.finalize());
            if &got != want {
                return Err(format!("sha256 {got}, the hub says {want}"));
            }
        }
        Check::GitSha1(want) => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {size}\0").as_bytes());
            feed(&mut |b| h.update(b))?;
            let got = hex(&h.finalize());
            if &got != want {
                return Err(format!("git sha1 {got}, the hub says {want}"));
            }
        }
        Check::SizeOnly => {}
    }
    Ok(())
}

/// Downloads what `plan` lists that the cache does not hold yet, and points the snapshot
/// and `refs/<revision>` at it.
pub fn pull(
    client: &Client,
    cache: &HubCache,
    plan: &Plan,
    retries: u32,
    progress: &mut dyn Progress,
) -> Result<PullReport, HubError> {
    let mut downloaded = 0;
    let mut reused = 0;
    for f in &plan.files {
        let meta = client.file_meta(&plan.repo, &plan.commit, &f.name)?;
        let _lock = lock_blob(cache, &plan.repo, &meta.etag, &f.name, progress)?;
        let blob = cache.blob_path(&plan.repo, &meta.etag);
        let have = std::fs::metadata(&blob).map(|m| m.len()).ok();
        if have == Some(meta.size) {
            progress.start(&f.name, meta.size, meta.size);
            reused += 1;
        } else {
            downloaded += fetch_blob(client, cache, plan, f, &meta, retries, progress)?;
        }
        cache.link(&plan.repo, &plan.commit, &f.name, &meta.etag)?;
        progress.finish(&f.name);
    }
    cache.write_ref(&plan.repo, &plan.revision, &plan.commit)?;
    let snapshot = cache.snapshot_dir(&plan.repo, &plan.commit);
    let path = match plan.entry() {
        "" => snapshot.clone(),
        e => snapshot.join(e),
    };
    Ok(PullReport {
        snapshot,
        path,
        downloaded,
        reused,
    })
}

/// Holds huggingface_hub's lock for one blob until dropped; waits for another process.
fn lock_blob(
    cache: &HubCache,
    repo: &str,
    etag: &str,
    name: &str,
    progress: &mut dyn Progress,
) -> Result<std::fs::File, HubError> {
    let path = cache.lock_path(repo, etag);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| HubError::io(&path, e))?;
    if file.try_lock().is_err() {
        progress.note(&format!(
            "{name}: waiting for another download of it to finish"
        ));
        file.lock().map_err(|e| HubError::io(&path, e))?;
    }
    Ok(file)
}

/// One blob: download (resuming, retrying a dropped connection), check, place.
fn fetch_blob(
    client: &Client,
    cache: &HubCache,
    plan: &Plan,
    f: &PlannedFile,
    meta: &FileMeta,
    retries: u32,
    progress: &mut dyn Progress,
) -> Result<u64, HubError> {
    let part = cache.incomplete_path(&plan.repo, &meta.etag);
    if let Some(dir) = part.parent() {
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    }
    let mut fetched = 0;
    let mut attempt = 0;
    loop {
        match fetch_into(
            client,
            plan,
            &f.name,
            meta.size,
            &part,
            progress,
            &mut fetched,
        ) {
            Ok(()) => break,
            Err(HubError::Interrupted { got, msg, .. }) if attempt < retries => {
                attempt += 1;
                progress.note(&format!(
                    "{}: connection lost at {got} of {} bytes ({msg}); retry {attempt} of {retries}",
                    f.name, meta.size
                ));
                std::thread::sleep(Duration::from_millis(500 << attempt.min(5)));
            }
            Err(e) => return Err(e),
        }
    }
    if let Err(msg) = verify(&part, meta.size, &check_for(meta, f)) {
        let _ = std::fs::remove_file(&part);
        return Err(HubError::Corrupt {
            file: f.name.clone(),
            msg,
        });
    }
    let blob = cache.blob_path(&plan.repo, &meta.etag);
    std::fs::rename(&part, &blob).map_err(|e| HubError::io(&blob, e))?;
    Ok(fetched)
}

/// Brings `part` up to `size` bytes from the hub, continuing from what it holds.
fn fetch_into(
    client: &Client,
    plan: &Plan,
    name: &str,
    size: u64,
    part: &Path,
    progress: &mut dyn Progress,
    fetched: &mut u64,
) -> Result<(), HubError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| HubError::io(part, e))?;
    let mut have = file.metadata().map_err(|e| HubError::io(part, e))?.len();
    if have > size {
        // Not a prefix of this file: start over.
        file.set_len(0).map_err(|e| HubError::io(part, e))?;
        have = 0;
    }
    progress.start(name, size, have);
    if have == size {
        return Ok(());
    }
    if have > 0 {
        progress.note(&format!("{name}: resuming at byte {have} of {size}"));
    }
    let resp = client.get(&plan.repo, &plan.commit, name, have)?;
    match resp.status() {
        206 => {
            let range_ok = resp
                .header("Content-Range")
                .is_some_and(|r| r.trim().starts_with(&format!("bytes {have}-")));
            if !range_ok {
                return Err(HubError::Remote(format!(
                    "{name}: the server answered the Range request with the wrong part ({})",
                    resp.header("Content-Range").unwrap_or("no Content-Range")
                )));
            }
        }
        200 if have > 0 => {
            // The server ignored the Range: take the whole file from the start.
            file.set_len(0).map_err(|e| HubError::io(part, e))?;
            have = 0;
            progress.start(name, size, 0);
        }
        200 => {}
        s => {
            return Err(HubError::Remote(format!(
                "{name}: unexpected HTTP {s} for the download"
            )))
        }
    }
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if have + n as u64 > size {
                    drop(file);
                    let _ = std::fs::remove_file(part);
                    return Err(HubError::Corrupt {
                        file: name.to_string(),
                        msg: format!("the server sent more than the hub's {size} bytes"),
                    });
                }
                file.write_all(&buf[..n])
                    .map_err(|e| HubError::io(part, e))?;
                have += n as u64;
                *fetched += n as u64;
                progress.advance(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = file.flush();
                return Err(HubError::Interrupted {
                    file: name.to_string(),
                    got: have,
                    size,
                    msg: e.to_string(),
                });
            }
        }
    }
    file.sync_all().map_err(|e| HubError::io(part, e))?;
    if have < size {
        return Err(HubError::Interrupted {
            file: name.to_string(),
            got: have,
            size,
            msg: "the connection closed early".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_is_gits() {
        // `printf 'hello\n' | git hash-object --stdin`
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        let want = "ce013625030ba8dba906f756967f9e9ca394464a";
        verify(&p, 6, &Check::GitSha1(want.into())).unwrap();
        assert!(verify(&p, 6, &Check::GitSha1("0".repeat(40))).is_err());
        // `printf 'hello\n' | sha256sum`
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        verify(&p, 6, &Check::Sha256(sha.into())).unwrap();
        let e = verify(&p, 7, &Check::SizeOnly).unwrap_err();
        assert!(e.contains("6 bytes"), "{e}");
    }
}
