//! Pulling a planned set of files into the cache, one file at a time:
//! HEAD for commit/etag/size → reuse `blobs/<etag>` if it is there → else download into
//! `blobs/<etag>.incomplete`, continuing a partial one with `Range: bytes=N-` → check size
//! and hash → rename to `blobs/<etag>` → symlink from the snapshot. `refs/<revision>` is
//! written last, once every file is in place. Each blob is fetched under huggingface_hub's
//! lock file (`.locks/models--…/<etag>.lock`), so two pulls of one model do not collide.
//!
//! The bytes are hashed as they arrive (a resumed file's earlier part first) and checked
//! as `checksum` says: size always, sha256 for LFS files, git blob sha1 for small ones. A
//! file whose bytes do not match is deleted and never placed.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cache::HubCache;
use super::checksum::{check_for, Hasher};
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
    let check = check_for(meta, f);
    // Hashed as it arrives; what an earlier, interrupted pull left is hashed first.
    let mut hasher = Hasher::new(&check, meta.size);
    if let Ok(mut prefix) = std::fs::File::open(&part) {
        if prefix.metadata().is_ok_and(|m| m.len() <= meta.size) {
            hasher
                .feed_reader(&mut prefix)
                .map_err(|e| HubError::io(&part, e))?;
        }
    }
    let mut fetched = 0;
    let mut attempt = 0;
    loop {
        let mut sink = Sink {
            hasher: &mut hasher,
            check: &check,
            fetched: &mut fetched,
        };
        match fetch_into(client, plan, &f.name, meta.size, &part, progress, &mut sink) {
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
    let len = std::fs::metadata(&part)
        .map_err(|e| HubError::io(&part, e))?
        .len();
    if let Err(msg) = hasher.verify(len, meta.size) {
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

/// Where the bytes of one download go besides the file.
struct Sink<'a> {
    hasher: &'a mut Hasher,
    check: &'a super::checksum::Check,
    fetched: &'a mut u64,
}

/// Brings `part` up to `size` bytes from the hub, continuing from what it holds.
fn fetch_into(
    client: &Client,
    plan: &Plan,
    name: &str,
    size: u64,
    part: &Path,
    progress: &mut dyn Progress,
    sink: &mut Sink,
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
        *sink.hasher = Hasher::new(sink.check, size);
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
            *sink.hasher = Hasher::new(sink.check, size);
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
                sink.hasher.update(&buf[..n]);
                have += n as u64;
                *sink.fetched += n as u64;
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
