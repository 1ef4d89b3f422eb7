//! Honest skips. A test that cannot run on this machine says so on one line,
//! `SKIP <binary>::<test>: <why>`, on stderr and appended to the file `NEMO_SKIP_LOG`
//! names, if any. libtest counts such a test as passed; `.ci/run` sets `NEMO_SKIP_LOG`,
//! counts the distinct tests in it and reports them apart: `P passed, F failed, S skipped`.
//!
//! What CI provides (tmux, the SmolLM2 file, Python's huggingface_hub) is required there:
//! under CI (`NEMO_CI=1`, which `.ci/run` sets, or `CI=true`) a test missing one of them
//! fails with the reason instead of skipping (`require_or_skip`). GPU and SIMD-level tests
//! still skip in CI: its machine has no GPU, and may lack a SIMD level.

use std::io::Write;

/// Whether this run is CI's (`NEMO_CI=1` or `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("NEMO_CI").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The running test: `<binary>::<test path>` (libtest names each test's thread after it).
pub fn test_id() -> String {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // cargo names test binaries `<target>-<16 hex digits>`.
    let bin = match bin.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => bin,
    };
    let thread = std::thread::current();
    format!("{bin}::{}", thread.name().unwrap_or("?"))
}

/// Reports that the running test is skipped, and why (one line; the caller then returns).
pub fn skip(why: &str) {
    let line = format!("SKIP {}: {}", test_id(), why.replace('\n', " "));
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("NEMO_SKIP_LOG").filter(|p| !p.is_empty()) {
        // One short write per line with O_APPEND: lines of parallel tests do not mix.
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = logged {
            panic!("NEMO_SKIP_LOG={}: {e}", path.to_string_lossy());
        }
    }
}

/// Skips the running test because `what` is missing, except under CI, which provides it:
/// there the test fails naming it.
pub fn require_or_skip(what: &str) {
    if in_ci() {
        panic!("{what}, and CI must provide it (NEMO_CI=1 or CI=true): see .ci/run");
    }
    skip(what);
}
