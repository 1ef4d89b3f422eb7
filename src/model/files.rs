//! Opening the files a model is made of: weights (safetensors shards, `.gguf`),
//! `config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! `chat_template.jinja` and `model.safetensors.index.json`.
//!
//! Invariants:
//! - Only regular files are opened. A FIFO, socket or device under a model file's name is
//!   an error naming the file; it is never opened in a way that could block (on Unix the
//!   open itself is non-blocking, and the type is checked on the open handle).
//! - Text files are read whole only below a size cap (`MAX_TEXT_BYTES`,
//!   `MAX_TOKENIZER_BYTES`), so a huge file named `config.json` is refused before it is
//!   read into memory.
//! - A shard named by `model.safetensors.index.json` stays inside the model folder:
//!   relative, no `..`, no root (see `shard_path`).

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::{shown, ModelError};

/// Cap for JSON and template files other than `tokenizer.json` (published ones are KB).
pub const MAX_TEXT_BYTES: u64 = 64 << 20;
/// Cap for `tokenizer.json` (published ones are up to ~35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

fn not_regular(path: &Path, what: &str) -> ModelError {
    ModelError::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {what}, not a regular file"),
        ),
    )
}

/// What a non-regular file is, in words.
fn kind(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_block_device() || ft.is_char_device() {
            return "a device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a plain file"
    }
}

/// Opens `path` for reading if it is a regular file (symlinks followed); anything else is
/// an error naming it, and opening a FIFO does not wait for a writer.
pub fn open_regular(path: &Path) -> Result<File, ModelError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Reads of a regular file ignore O_NONBLOCK; it only keeps a FIFO's open from
        // blocking until a writer appears.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let f = opts.open(path).map_err(|e| ModelError::io(path, e))?;
    let ft = f
        .metadata()
        .map_err(|e| ModelError::io(path, e))?
        .file_type();
    if !ft.is_file() {
        return Err(not_regular(path, kind(ft)));
    }
    Ok(f)
}

/// `Some(size)` when `path` is a regular file of at most `max` bytes, `None` when nothing
/// is there; an error for anything else (another kind of file, one too large).
pub fn probe(path: &Path, max: u64) -> Result<Option<u64>, ModelError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    if !meta.is_file() {
        return Err(not_regular(path, kind(meta.file_type())));
    }
    check_size(path, meta.len(), max)?;
    Ok(Some(meta.len()))
}

fn check_size(path: &Path, len: u64, max: u64) -> Result<(), ModelError> {
    if len > max {
        return Err(ModelError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "is {len} bytes, more than the {} MiB nemo reads for such a file",
                    max >> 20
                ),
            ),
        ));
    }
    Ok(())
}

/// The bytes of the regular file `path`, refused above `max` bytes.
pub fn read_bytes(path: &Path, max: u64) -> Result<Vec<u8>, ModelError> {
    let f = open_regular(path)?;
    let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    check_size(path, len, max)?;
    let mut out = Vec::with_capacity(len as usize);
    // `take`: a file that grows while it is read still stops at the cap.
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| ModelError::io(path, e))?;
    check_size(path, out.len() as u64, max)?;
    Ok(out)
}

/// The text of the regular file `path` (UTF-8), refused above `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String, ModelError> {
    String::from_utf8(read_bytes(path, max)?).map_err(|e| ModelError::Config {
        file: path.to_path_buf(),
        msg: format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })
}

/// The path of shard `name` (a `weight_map` value of `index`) inside `dir`: a relative
/// path of plain components, so an index cannot point nemo at a file outside the folder.
pub fn shard_path(dir: &Path, index: &Path, name: &str) -> Result<PathBuf, ModelError> {
    let p = Path::new(name);
    let plain = !name.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && p.components().any(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(ModelError::ConfigField {
            file: index.to_path_buf(),
            field: "weight_map".into(),
            msg: format!(
                "names shard `{}`, which is not a file inside the model folder (absolute paths and `..` are refused)",
                shown(name)
            ),
        });
    }
    Ok(dir.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_paths_stay_inside_the_folder() {
        let (d, i) = (
            Path::new("/m"),
            Path::new("/m/model.safetensors.index.json"),
        );
        for ok in ["a.safetensors", "./a.safetensors", "sub/a.safetensors"] {
            assert!(shard_path(d, i, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "../a.safetensors",
            "sub/../../a.safetensors",
            "sub/..",
        ] {
            let e = shard_path(d, i, bad).unwrap_err().to_string();
            assert!(e.contains("weight_map") && e.contains("index.json"), "{e}");
        }
    }

    #[test]
    fn directories_and_oversized_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_regular(dir.path()).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let p = dir.path().join("config.json");
        std::fs::write(&p, "0123456789").unwrap();
        let e = read_text(&p, 4).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("10 bytes"), "{e}");
        assert_eq!(read_text(&p, 10).unwrap(), "0123456789");
        assert_eq!(probe(&dir.path().join("nope"), 10).unwrap(), None);
    }
}
