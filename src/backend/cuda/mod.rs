//! The CUDA backend (cargo feature `cuda`): nemo's own kernels (`kernels/*.cu`, compiled
//! by `kernels/build.rs` into fatbins embedded in the binary) and cuBLAS GEMMs, loaded
//! through cudarc at run time, so a build with the feature still runs where there is no
//! driver or GPU and says so in one line.
//!
//! Invariants:
//! - Every op has a launcher here with a `supports()` beside it, kept in step with the
//!   kernel's limits; an unsupported shape is an error, never a silent CPU fallback.
//! - Every op has a CPU oracle (`backend::cpu`, `model::*`, `state::*`) with the same
//!   layouts, and `tests/cuda_ops.rs` compares them on the GPU.
//! - This is the device, its memory and the op launchers (plus the composed Mamba2 mixer
//!   and the KV cache); the GPU model that composes them lives in `model::cuda`.
//! - Launchers check every buffer's length against the shape before launching, so a
//!   wrong shape is an error, not an out-of-bounds access on the device.
//! - One stream per `Gpu`; all launches are asynchronous on it.
//!
//! Without the feature only `probe`, `CudaError`, `DeviceInfo` and a `Gpu` that cannot be
//! opened exist (the dummy module), so callers need no `cfg`.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CudaError {
    #[error(
        "this build has no CUDA support (rebuild with `cargo build --release --features cuda`)"
    )]
    NotBuilt,
    #[error("this build has no CUDA kernels (nvcc was not found when it was built)")]
    NoKernels,
    #[error("no NVIDIA driver found (libcuda could not be loaded)")]
    NoDriver,
    #[error("no CUDA GPU found ({0})")]
    NoDevice(String),
    #[error("cuBLAS could not be loaded (libcublas is not on the library path)")]
    NoCublas,
    /// The kernel modules do not load: no code for this GPU's arch, or a driver older than
    /// the nvcc that built them (the message says which applies).
    #[error("{0}")]
    KernelsDoNotLoad(String),
    #[error("CUDA: {0}")]
    Driver(String),
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("{op}: unsupported on the GPU: {why}")]
    Unsupported { op: &'static str, why: String },
    #[error("{op}: buffer `{buf}` holds {have} elements, the shape needs {need}")]
    BadBuffer {
        op: &'static str,
        buf: &'static str,
        have: usize,
        need: usize,
    },
}

/// What `probe` found.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub use device::*;

#[cfg(not(feature = "cuda"))]
mod dummy;
#[cfg(not(feature = "cuda"))]
pub use dummy::*;

#[cfg(feature = "cuda")]
pub mod attention;
#[cfg(feature = "cuda")]
pub mod conv1d;
#[cfg(feature = "cuda")]
pub mod elementwise;
#[cfg(feature = "cuda")]
pub mod embedding;
#[cfg(feature = "cuda")]
pub mod flash;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod mamba2;
#[cfg(feature = "cuda")]
pub mod moe;
#[cfg(feature = "cuda")]
pub mod norm;
#[cfg(feature = "cuda")]
pub mod sampling;
#[cfg(feature = "cuda")]
pub mod ssm;

/// Fails with `Unsupported` unless `ok`.
#[allow(dead_code)]
pub(crate) fn ensure(
    ok: bool,
    op: &'static str,
    why: impl FnOnce() -> String,
) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Unsupported { op, why: why() })
    }
}
