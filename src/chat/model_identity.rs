//! Which model a session ran on: a fingerprint cheap enough to take at every start, that
//! tells two models apart without reading their weights.
//!
//! Invariants:
//! - A folder's `config_hash` is computed as it always was (config.json's bytes, then each
//!   weight file that is a regular file: name and size), so sessions saved by older builds
//!   keep matching. `weights` adds what that misses: every weight file followed through
//!   symlinks (the hub cache's snapshot files are symlinks, which `config_hash` never saw),
//!   with the link target's file name (the hub's blob name, for weights the file's sha256)
//!   and a sample of its bytes.
//! - A `.gguf` file's `config_hash` covers its header byte for byte: magic, version,
//!   counts, the metadata key/value section and the tensor table (names, dims, types,
//!   offsets); `weights` is a sample of its bytes. Tensor data is never read in full.
//! - Reading is bounded: every length in a GGUF header is checked against the bytes left
//!   in the file before it is read, and a sample is [`SAMPLES`] × [`SAMPLE_BYTES`] per file.
//!   Only regular files are opened, without blocking, so a FIFO named `model.gguf` cannot
//!   hang a start.
//! - An empty `config_hash` means "unknown" (sessions of GGUF models saved before the
//!   header was hashed); such an identity is compared by path alone.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Blocks read from each weight file for [`ModelIdentity::weights`].
pub const SAMPLES: u64 = 16;
/// Bytes in each sampled block.
pub const SAMPLE_BYTES: u64 = 4096;

/// Which model a session ran on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The model directory or `.gguf` file as given.
    pub path: String,
    /// 16 hex digits. Folder: FNV-1a 64 over `config.json`'s bytes, then each weight file
    /// that is a regular file (`*.safetensors`, `*.gguf`), sorted by name, as name bytes,
    /// a 0 byte, and its size as little-endian u64. GGUF file: FNV-1a 64 over the header
    /// up to the end of the tensor table. Empty: unknown.
    pub config_hash: String,
    /// 16 hex digits: FNV-1a 64 over each weight file (symlinks followed), sorted by name:
    /// name, a 0 byte, size, the symlink target's file name (empty for a plain file), a 0
    /// byte, and [`SAMPLES`] blocks of [`SAMPLE_BYTES`] spread evenly over the file. Absent
    /// in sessions saved by older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

impl ModelIdentity {
    /// Identifies the model at `path`: a `.gguf` (or any regular) file by its header, a
    /// folder by its config and weight files.
    pub fn of(path: &Path) -> io::Result<ModelIdentity> {
        if fs::metadata(path)?.is_file() {
            Self::of_gguf(path)
        } else {
            Self::of_dir(path)
        }
    }

    /// Identifies the model folder `dir`; fails if `config.json` or the dir cannot be read.
    pub fn of_dir(dir: &Path) -> io::Result<ModelIdentity> {
        let config = read_regular(&dir.join("config.json"))?;
        let mut plain = Vec::new();
        let mut followed = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".safetensors") || name.ends_with(".gguf")) {
                continue;
            }
            if entry.file_type()?.is_file() {
                plain.push((name.clone(), entry.metadata()?.len()));
            }
            // Through a symlink too; a dangling link or a link to a folder is not a weight.
            if fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                followed.push(name);
            }
        }
        plain.sort();
        followed.sort();
        let mut h = Fnv1a64::new();
        h.write(&config);
        for (name, size) in &plain {
            h.write(name.as_bytes());
            h.write(&[0]);
            h.write(&size.to_le_bytes());
        }
        let mut w = Fnv1a64::new();
        for name in &followed {
            sample_file(&mut w, &dir.join(name), name)?;
        }
        Ok(ModelIdentity {
            path: dir.display().to_string(),
            config_hash: h.hex(),
            weights: Some(w.hex()),
        })
    }

    /// Identifies a GGUF file by its header (see the module docs); fails on a file that is
    /// not GGUF version 2 or 3 or whose header is cut short.
    pub fn of_gguf(file: &Path) -> io::Result<ModelIdentity> {
        let f = open_regular(file)?;
        let len = f.metadata()?.len();
        let mut r = HeaderReader {
            inner: io::BufReader::new(f),
            hash: Fnv1a64::new(),
            left: len,
        };
        r.gguf_header()?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut w = Fnv1a64::new();
        sample_file(&mut w, file, &name)?;
        Ok(ModelIdentity {
            path: file.display().to_string(),
            config_hash: r.hash.hex(),
            weights: Some(w.hex()),
        })
    }

    /// Whether a session saved with `self` ran on the same model as `other`. An unknown
    /// hash on either side compares paths; `weights` counts only when both have it.
    pub fn same_model(&self, other: &ModelIdentity) -> bool {
        if self.config_hash.is_empty() || other.config_hash.is_empty() {
            return self.path == other.path;
        }
        self.config_hash == other.config_hash
            && match (&self.weights, &other.weights) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// A short name for messages: `org/name` for a hub cache snapshot (with `:file` for a
    /// file in it), else the last path component.
    pub fn short_name(&self) -> String {
        let p = self.path.trim_end_matches(['/', '\\']);
        let parts: Vec<&str> = p.split(['/', '\\']).collect();
        // .../models--org--name/snapshots/<commit>[/<file>]
        if let Some(i) = parts.iter().rposition(|s| *s == "snapshots") {
            if let Some(repo) = i
                .checked_sub(1)
                .and_then(|j| parts[j].strip_prefix("models--"))
            {
                let repo = repo.replacen("--", "/", 1);
                return if parts.len() > i + 2 {
                    format!("{repo}:{}", parts[i + 2..].join("/"))
                } else {
                    repo
                };
            }
        }
        parts
            .last()
            .filter(|s| !s.is_empty())
            .map_or_else(|| self.path.clone(), |s| s.to_string())
    }
}

/// FNV-1a, 64-bit (http://www.isthe.com/chongo/tech/comp/fnv/).
pub(crate) struct Fnv1a64(pub(crate) u64);

impl Fnv1a64 {
    pub(crate) fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Opens `path` for reading only if it is a regular file (symlinks followed), without
/// blocking: a FIFO, socket or device is refused before `open`, and `O_NONBLOCK` plus a
/// check of the opened file closes the race where one is swapped in between.
pub(crate) fn open_regular(path: &Path) -> io::Result<fs::File> {
    let not_regular = |kind: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{kind}, not a regular file"),
        )
    };
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(file_kind(&meta.file_type())));
    }
    let mut opts = fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let f = opts.open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(file_kind(&meta.file_type())));
    }
    Ok(f)
}

/// What a directory entry is, in words (`a FIFO`, `a directory`, …).
pub(crate) fn file_kind(t: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_char_device() {
            return "a character device";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Hashes `name`, a 0 byte, the size, the symlink target's file name, a 0 byte, and
/// [`SAMPLES`] blocks spread evenly over the file (all of it when it is smaller).
fn sample_file(h: &mut Fnv1a64, path: &Path, name: &str) -> io::Result<()> {
    let mut f = open_regular(path)?;
    let size = f.metadata()?.len();
    let target = fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    h.write(name.as_bytes());
    h.write(&[0]);
    h.write(&size.to_le_bytes());
    h.write(target.as_bytes());
    h.write(&[0]);
    let mut buf = vec![0u8; SAMPLE_BYTES as usize];
    if size <= SAMPLES * SAMPLE_BYTES {
        let mut all = Vec::new();
        f.read_to_end(&mut all)?;
        h.write(&all);
        return Ok(());
    }
    for i in 0..SAMPLES {
        let off = i * (size - SAMPLE_BYTES) / (SAMPLES - 1);
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut buf)?;
        h.write(&buf);
    }
    Ok(())
}

/// Walks a GGUF header (llama.cpp's `gguf.cpp` layout), hashing every byte it reads.
struct HeaderReader<R> {
    inner: R,
    hash: Fnv1a64,
    /// Bytes left in the file.
    left: u64,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: Read> HeaderReader<R> {
    /// Reads and hashes `n` bytes, refusing a length longer than what the file holds.
    fn skip(&mut self, n: u64, what: &str) -> io::Result<()> {
        if n > self.left {
            return Err(bad(format!(
                "GGUF header is cut short: {what} claims {n} bytes, {} remain",
                self.left
            )));
        }
        let mut buf = [0u8; 8192];
        let mut rest = n;
        while rest > 0 {
            let k = rest.min(buf.len() as u64) as usize;
            self.inner.read_exact(&mut buf[..k])?;
            self.hash.write(&buf[..k]);
            rest -= k as u64;
        }
        self.left -= n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> io::Result<[u8; N]> {
        if (N as u64) > self.left {
            return Err(bad(format!("GGUF header is cut short in {what}")));
        }
        let mut a = [0u8; N];
        self.inner.read_exact(&mut a)?;
        self.hash.write(&a);
        self.left -= N as u64;
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A count of items each at least `min_item` bytes long, checked against the file.
    fn count(&mut self, min_item: u64, what: &str) -> io::Result<u64> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_item) > self.left {
            return Err(bad(format!(
                "GGUF header is corrupt: {what} is {n}, more than the file holds"
            )));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> io::Result<()> {
        let n = self.u64(what)?;
        self.skip(n, what)
    }

    /// One value of GGUF type `ty`; arrays may not nest (as in `model::gguf`).
    fn value(&mut self, ty: u32, nested: bool) -> io::Result<()> {
        const WHAT: &str = "a metadata value";
        match ty {
            0 | 1 | 7 => self.skip(1, WHAT),
            2 | 3 => self.skip(2, WHAT),
            4..=6 => self.skip(4, WHAT),
            10..=12 => self.skip(8, WHAT),
            8 => self.string(WHAT),
            9 if !nested => {
                let ety = self.u32(WHAT)?;
                let size = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    // A string is at least its 8-byte length.
                    8 => {
                        let n = self.count(8, "a metadata array")?;
                        for _ in 0..n {
                            self.string(WHAT)?;
                        }
                        return Ok(());
                    }
                    9 => return Err(bad("GGUF header has a nested array".into())),
                    t => return Err(bad(format!("GGUF header has unknown value type {t}"))),
                };
                let n = self.count(size, "a metadata array")?;
                self.skip(n * size, WHAT)
            }
            t => Err(bad(format!("GGUF header has unknown value type {t}"))),
        }
    }

    fn gguf_header(&mut self) -> io::Result<()> {
        let magic: [u8; 4] = self.bytes("the magic number")?;
        if &magic != b"GGUF" {
            return Err(bad("not a GGUF file".into()));
        }
        let version = self.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(bad(format!("GGUF version {version} is not supported")));
        }
        // A tensor entry is at least name length + dims count + type + offset; a key/value
        // at least key length + type.
        let n_tensors = self.count(24, "the tensor count")?;
        let n_kv = self.count(12, "the metadata count")?;
        for _ in 0..n_kv {
            self.string("a metadata key")?;
            let ty = self.u32("a metadata type")?;
            self.value(ty, false)?;
        }
        for _ in 0..n_tensors {
            self.string("a tensor name")?;
            let nd = self.u32("a tensor's dimension count")?;
            if nd > 8 {
                return Err(bad(format!("GGUF tensor has {nd} dimensions")));
            }
            self.skip(
                u64::from(nd) * 8 + 4 + 8,
                "a tensor's dims, type and offset",
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel)
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        let mut h = Fnv1a64::new();
        assert_eq!(h.0, 0xcbf29ce484222325);
        h.write(b"a");
        assert_eq!(h.0, 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn folder_config_hash_depends_on_config_and_plain_weight_sizes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("config.json"), b"{\"a\":1}").unwrap();
        fs::write(d.join("model-00001.safetensors"), b"1234").unwrap();
        fs::write(d.join("README.md"), b"x").unwrap();
        let a = ModelIdentity::of_dir(d).unwrap();
        assert_eq!(a.config_hash.len(), 16);
        // The algorithm older builds used, spelled out: old sessions keep matching.
        let mut h = Fnv1a64::new();
        h.write(b"{\"a\":1}");
        h.write(b"model-00001.safetensors\0");
        h.write(&4u64.to_le_bytes());
        assert_eq!(a.config_hash, format!("{:016x}", h.0));
        fs::write(d.join("README.md"), b"changed").unwrap();
        fs::write(d.join("model-00001.safetensors"), b"5678").unwrap();
        let b = ModelIdentity::of_dir(d).unwrap();
        assert_eq!(b.config_hash, a.config_hash, "same sizes, same config_hash");
        assert_ne!(b.weights, a.weights, "other bytes, other weights");
        assert!(!a.same_model(&b));
        fs::write(d.join("model-00001.safetensors"), b"12345").unwrap();
        assert_ne!(ModelIdentity::of_dir(d).unwrap().config_hash, a.config_hash);
        fs::write(d.join("model-00001.safetensors"), b"1234").unwrap();
        fs::write(d.join("config.json"), b"{\"a\":2}").unwrap();
        assert_ne!(ModelIdentity::of_dir(d).unwrap().config_hash, a.config_hash);
        assert!(ModelIdentity::of_dir(&d.join("missing")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn hub_style_symlinked_weights_count_in_weights() {
        // snapshots/<commit>/model.safetensors -> ../../blobs/<sha256>: config_hash never
        // saw such files; weights does, by target name and content.
        let tmp = tempfile::tempdir().unwrap();
        let blobs = tmp.path().join("blobs");
        let snap = tmp.path().join("models--org--tiny/snapshots/abc123");
        fs::create_dir_all(&blobs).unwrap();
        fs::create_dir_all(&snap).unwrap();
        fs::write(blobs.join("aaaa"), b"weights one").unwrap();
        fs::write(blobs.join("bbbb"), b"weights two").unwrap();
        fs::write(snap.join("config.json"), b"{}").unwrap();
        let link = snap.join("model.safetensors");
        std::os::unix::fs::symlink(blobs.join("aaaa"), &link).unwrap();
        let a = ModelIdentity::of(&snap).unwrap();
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(blobs.join("bbbb"), &link).unwrap();
        let b = ModelIdentity::of(&snap).unwrap();
        assert_eq!(a.config_hash, b.config_hash, "the old hash cannot tell");
        assert!(!a.same_model(&b), "{a:?} {b:?}");
        assert_eq!(a.short_name(), "org/tiny");
    }

    #[test]
    fn gguf_identity_hashes_the_header_and_tells_files_apart() {
        let f32 = ModelIdentity::of(&fixture("gguf/nemotron_h_tiny.f32.gguf")).unwrap();
        let q8 = ModelIdentity::of(&fixture("gguf/nemotron_h_tiny.q8_0.gguf")).unwrap();
        assert_eq!(f32.config_hash.len(), 16);
        assert_ne!(f32.config_hash, q8.config_hash);
        assert!(!f32.same_model(&q8));
        assert!(f32.same_model(&f32.clone()));
        assert_eq!(f32.short_name(), "nemotron_h_tiny.f32.gguf");
        // Same as of_gguf, and stable.
        assert_eq!(
            ModelIdentity::of_gguf(&fixture("gguf/nemotron_h_tiny.f32.gguf")).unwrap(),
            f32
        );
    }

    #[test]
    fn gguf_header_bytes_change_config_hash_and_data_bytes_do_not() {
        let bytes = fs::read(fixture("gguf/nemotron_h_tiny.q8_0.gguf")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("m.gguf");
        fs::write(&p, &bytes).unwrap();
        let base = ModelIdentity::of(&p).unwrap();
        // The last byte is tensor data, far past the header.
        let mut data = bytes.clone();
        *data.last_mut().unwrap() ^= 1;
        fs::write(&p, &data).unwrap();
        let d = ModelIdentity::of(&p).unwrap();
        assert_eq!(d.config_hash, base.config_hash);
        assert_ne!(d.weights, base.weights, "the last block is sampled");
        // A byte inside the first metadata key (after magic, version and two counts).
        let mut meta = bytes.clone();
        meta[4 + 4 + 8 + 8 + 8] ^= 0x20;
        fs::write(&p, &meta).unwrap();
        assert_ne!(ModelIdentity::of(&p).unwrap().config_hash, base.config_hash);
    }

    #[test]
    fn a_broken_gguf_header_is_an_error_not_a_panic_or_a_huge_read() {
        let bytes = fs::read(fixture("gguf/nemotron_h_tiny.q8_0.gguf")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("m.gguf");
        for cut in [0, 3, 4, 8, 16, 24, 30, 100, 1000] {
            fs::write(&p, &bytes[..cut]).unwrap();
            assert!(ModelIdentity::of(&p).is_err(), "cut at {cut}");
        }
        // Counts and lengths of 2^64-1.
        for at in [8usize, 16, 24] {
            let mut b = bytes.clone();
            b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            fs::write(&p, &b).unwrap();
            let e = ModelIdentity::of(&p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
        fs::write(&p, b"GGUF\x01\0\0\0").unwrap();
        assert!(ModelIdentity::of(&p).is_err());
        fs::write(&p, b"not a gguf file at all").unwrap();
        assert!(ModelIdentity::of(&p).is_err());
    }

    #[test]
    fn unknown_hashes_compare_by_path() {
        let id = |path: &str, hash: &str| ModelIdentity {
            path: path.into(),
            config_hash: hash.into(),
            weights: None,
        };
        assert!(id("/m/a.gguf", "").same_model(&id("/m/a.gguf", "0123456789abcdef")));
        assert!(!id("/m/a.gguf", "").same_model(&id("/m/b.gguf", "0123456789abcdef")));
        assert!(id("/x", "0123456789abcdef").same_model(&id("/y", "0123456789abcdef")));
        let mut w = id("/x", "0123456789abcdef");
        w.weights = Some("1".into());
        assert!(w.same_model(&id("/x", "0123456789abcdef")), "old session");
        let mut w2 = w.clone();
        w2.weights = Some("2".into());
        assert!(!w.same_model(&w2));
    }

    #[test]
    fn short_names() {
        let n = |p: &str| {
            ModelIdentity {
                path: p.into(),
                config_hash: String::new(),
                weights: None,
            }
            .short_name()
        };
        assert_eq!(n("/models/nano/"), "nano");
        assert_eq!(n("tiny"), "tiny");
        assert_eq!(
            n("/h/hub/models--nvidia--NVIDIA-Nemotron-Nano-9B-v2/snapshots/0123abc"),
            "nvidia/NVIDIA-Nemotron-Nano-9B-v2"
        );
        assert_eq!(
            n("/h/hub/models--bartowski--Nano-GGUF/snapshots/0123abc/nano.Q4_K_M.gguf"),
            "bartowski/Nano-GGUF:nano.Q4_K_M.gguf"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_named_like_a_model_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("model.gguf");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send(ModelIdentity::of_gguf(&q).map(|_| ()));
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(10));
        let e = r.expect("blocked on a FIFO").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }
}
