//! The CPU backend: the reference every other backend is tested against, and the fallback.
//!
//! Kernels pick their SIMD path at run time (`simd::level()`), never by build flags, so one
//! shipped binary runs on every x86-64 and aarch64 CPU.

pub mod bf16_gemm;
pub mod flash;
pub mod fp8_matmul;
pub mod interleave;
pub mod matmul;
pub mod matrix;
pub mod moe;
pub mod ops;
mod panel;
pub mod qgemm;
pub mod quant;
pub mod simd;
pub mod ssm;
pub mod team;

pub use matmul::{matmul, matmul_many};
pub use matrix::{MatRef, WeightScale};

/// Tells glibc's malloc to keep freed memory for the next allocation instead of returning
/// it to the kernel: a prefill allocates activations of megabytes per layer (a 200-token
/// prompt's Mamba2 input projection alone is 5 MB), which malloc served with fresh mmaps
/// or trimmed heap, so every call paid page faults and the kernel's zeroing again
/// (~5-10% of a prefill on a 280M model, measured with perf; 10-20% faster prefill with
/// these settings, Zen 4, 2 threads). Memory stays at its high-water mark instead of
/// shrinking between prompts; the weights are file mappings and unaffected. Call once,
/// before any thread starts. No-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; called before other threads run.
    unsafe {
        // Allocations below 256 MiB come from the heap, not a mapping of their own...
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        // ...and the heap's free top is kept up to 512 MiB before it is returned.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

/// `len` pseudo-random values in [−1, 1) from `seed` (xorshift), for the kernel tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `wf` (`rows × k`) stored as `dt` (the bytes) and those bytes widened back to f32 (the
/// values a kernel multiplies), for the kernel tests.
#[cfg(test)]
pub(crate) fn test_stored(
    dt: crate::backend::dtype::DType,
    wf: &[f32],
    rows: usize,
    k: usize,
) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = vec![0u8; rows * dt.row_bytes(k)];
    crate::backend::dtype::narrow_into(dt, wf, &mut bytes);
    let mut wide = vec![0f32; rows * k];
    crate::backend::dtype::widen_into(dt, &bytes, &mut wide);
    (bytes, wide)
}

/// Reports the running unit test as skipped, as tests/common/skip.rs does for the
/// integration tests: `SKIP <binary>::<test>: <why>` on stderr, appended to the file
/// `NEMO_SKIP_LOG` names (`.ci/run` counts those apart from passed tests).
#[cfg(test)]
pub(crate) fn skip_test(why: &str) {
    use std::io::Write;
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let bin = bin
        .rsplit_once('-')
        .map_or(bin.as_str(), |(b, _)| b)
        .to_string();
    let line = format!(
        "SKIP {bin}::{}: {why}",
        std::thread::current().name().unwrap_or("?")
    );
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("NEMO_SKIP_LOG").filter(|p| !p.is_empty()) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
            .unwrap_or_else(|e| panic!("NEMO_SKIP_LOG={}: {e}", path.to_string_lossy()));
    }
}
