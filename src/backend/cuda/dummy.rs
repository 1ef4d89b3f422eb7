//! Stand-in when nemo is built without the `cuda` feature: the same entry points, each
//! saying that this build has no CUDA support, and a `Gpu` type that has no values
//! (`Gpu::new` refuses), so callers need no `cfg`.

use super::{CudaError, DeviceInfo};

/// Whether a CUDA GPU is usable by this build.
pub fn probe() -> Result<DeviceInfo, CudaError> {
    Err(CudaError::NotBuilt)
}

/// Whether this build carries compiled kernels.
pub fn has_kernels() -> bool {
    false
}

/// Whether an NVIDIA driver library can be loaded (never asked in a build without CUDA).
pub fn driver_present() -> bool {
    false
}

/// An opened GPU (none in this build).
pub enum Gpu {}

impl Gpu {
    /// Opens GPU `ordinal`: never in this build.
    pub fn new(ordinal: usize) -> Result<Gpu, CudaError> {
        let _ = ordinal;
        Err(CudaError::NotBuilt)
    }
}
