//! How a downloaded file is checked against what the hub says it is: its size always; its
//! sha256 for LFS files (the hub's `X-Linked-Etag`); its git blob sha1 (sha1 of
//! `blob {size}\0` + content) for small files whose ETag the listing confirms is that id.
//! Hashing is incremental, so a download is hashed as it arrives.

use std::io::Read;

use sha1::Digest;

use super::client::FileMeta;
use super::selection::PlannedFile;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Sha256(String),
    /// Git blob id.
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

/// The running hash a [`Check`] needs.
pub struct Hasher {
    check: Check,
    state: State,
}

enum State {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
    None,
}

impl Hasher {
    /// `size` is the expected size: git's blob header carries it.
    pub fn new(check: &Check, size: u64) -> Self {
        let state = match check {
            Check::Sha256(_) => State::Sha256(sha2::Sha256::new()),
            Check::GitSha1(_) => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                State::Sha1(h)
            }
            Check::SizeOnly => State::None,
        };
        Hasher {
            check: check.clone(),
            state,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(bytes),
            State::Sha1(h) => h.update(bytes),
            State::None => {}
        }
    }

    pub fn feed_reader(&mut self, r: &mut dyn Read) -> std::io::Result<()> {
        if matches!(self.state, State::None) {
            return Ok(());
        }
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.update(&buf[..n]);
        }
    }

    /// `Err(reason)` if `len` bytes with this hash are not the file the hub described.
    pub fn verify(self, len: u64, size: u64) -> Result<(), String> {
        if len != size {
            return Err(format!("{len} bytes, the hub says {size}"));
        }
        let (kind, got) = match self.state {
            State::Sha256(h) => ("sha256", hex(&h.finalize())),
            State::Sha1(h) => ("git sha1", hex(&h.finalize())),
            State::None => return Ok(()),
        };
        match &self.check {
            Check::Sha256(want) | Check::GitSha1(want) if *want != got => {
                Err(format!("{kind} {got}, the hub says {want}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_bytes(bytes: &[u8], size: u64, check: &Check) -> Result<(), String> {
        let mut h = Hasher::new(check, size);
        // In two pieces, as a resumed download arrives.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        h.update(a);
        h.feed_reader(&mut &b[..]).unwrap();
        h.verify(bytes.len() as u64, size)
    }

    #[test]
    fn hashes_match_git_and_sha256sum() {
        // `printf 'hello\n' | git hash-object --stdin`
        let git = "ce013625030ba8dba906f756967f9e9ca394464a";
        check_bytes(b"hello\n", 6, &Check::GitSha1(git.into())).unwrap();
        let e = check_bytes(b"hellO\n", 6, &Check::GitSha1(git.into())).unwrap_err();
        assert!(e.contains("git sha1"), "{e}");
        // `printf 'hello\n' | sha256sum`
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        check_bytes(b"hello\n", 6, &Check::Sha256(sha.into())).unwrap();
        assert!(check_bytes(b"hello!", 6, &Check::Sha256(sha.into())).is_err());
        let e = check_bytes(b"hello\n", 7, &Check::SizeOnly).unwrap_err();
        assert!(e.contains("6 bytes"), "{e}");
    }

    #[test]
    fn the_check_follows_what_the_hub_says() {
        let meta = |etag: &str, lfs| FileMeta {
            commit: String::new(),
            etag: etag.into(),
            lfs,
            size: 1,
        };
        let planned = |blob: Option<&str>, sha: Option<&str>| PlannedFile {
            name: "f".into(),
            size: None,
            blob_id: blob.map(str::to_string),
            lfs_sha256: sha.map(str::to_string),
        };
        let sha = "a".repeat(64);
        let oid = "b".repeat(40);
        assert_eq!(
            check_for(&meta(&sha, true), &planned(None, None)),
            Check::Sha256(sha.clone())
        );
        assert_eq!(
            check_for(&meta(&oid, false), &planned(Some(&oid), None)),
            Check::GitSha1(oid.clone())
        );
        // An ETag the listing does not confirm as the git id: size only.
        assert_eq!(
            check_for(&meta(&oid, false), &planned(Some("c"), None)),
            Check::SizeOnly
        );
    }
}
