//! Stand-in when nemo is built without the `cuda` feature: the same entry points, each
//! saying that this build has no CUDA support.

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
