//! The Nemotron-H model on the GPU (cargo feature `cuda`), beside the CPU model it is
//! tested against (`model::nemotron_h`): the same blocks in the same order, composed from
//! the op launchers of `backend::cuda`.
//!
//! - `nemotron_h`: the weights on the device (`GpuNemotronH::load`, `check_cuda`,
//!   `load_gpu_model`) and the forward (prompt chunks, the decode step as a CUDA graph,
//!   the device draw).
//! - `moe_layer`: the MoE mixer; `weights`: where the weights come from (a checkpoint,
//!   or random values for `nemo bench`).
//! - `session`: one sequence's device state and buffers (`GpuSession`); `plan`: how big
//!   they are (the memory plan, no device needed); `checkpoint`: device checkpoints.
//! - `sequence`: the model and one session driven the way `engine::Sequence` drives the
//!   CPU model (forward, draw, checkpoint, restore, reset).
//!
//! Without the feature, `dummy` stands in for the types (`GpuNemotronH`, `CudaSequence`,
//! `GpuCheckpoint`) and entry points, each saying that this build has no CUDA support, so
//! callers need no `cfg` (candle's `dummy_cuda_backend`). `GpuModelError` and `plan` are
//! the same in both builds.

use thiserror::Error;

use crate::backend::cuda::CudaError;
use crate::model::ModelError;

pub mod plan;

pub use plan::Plan;

/// Every error of the GPU model, its session and its sequence.
#[derive(Debug, Error)]
pub enum GpuModelError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Unsupported(String),
}

#[cfg(feature = "cuda")]
pub mod checkpoint;
#[cfg(feature = "cuda")]
pub mod moe_layer;
#[cfg(feature = "cuda")]
pub mod nemotron_h;
#[cfg(feature = "cuda")]
pub mod sequence;
#[cfg(feature = "cuda")]
pub mod session;
#[cfg(feature = "cuda")]
pub mod weights;

#[cfg(feature = "cuda")]
pub use checkpoint::GpuCheckpoint;
#[cfg(feature = "cuda")]
pub use nemotron_h::{check_cuda, load_gpu_model, GpuNemotronH};
#[cfg(feature = "cuda")]
pub use sequence::CudaSequence;
#[cfg(feature = "cuda")]
pub use session::GpuSession;
#[cfg(feature = "cuda")]
pub use weights::{RandomWeights, StoreWeights, WeightSource};

#[cfg(not(feature = "cuda"))]
mod dummy;
#[cfg(not(feature = "cuda"))]
pub use dummy::*;
