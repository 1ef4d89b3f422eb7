//! Stand-ins when nemo is built without the `cuda` feature: the GPU model's types and
//! entry points with the same names and signatures. The types have no values (nothing
//! can make one), and every entry point that would make one says that this build has no
//! CUDA support, so `engine::Sequence` and the CLI need no `cfg`.

use std::sync::Arc;

use super::GpuModelError;
use crate::backend::cuda::{CudaError, Gpu};
use crate::model::{Logits, ModelFolder, NemotronHConfig};
use crate::protocol::SamplingParams;
use crate::state::CacheConfig;

fn not_built() -> GpuModelError {
    GpuModelError::Cuda(CudaError::NotBuilt)
}

/// The GPU model (none in this build).
pub enum GpuNemotronH {}

/// A device checkpoint (none in this build).
pub enum GpuCheckpoint {}

impl GpuCheckpoint {
    pub fn len(&self) -> usize {
        match *self {}
    }

    pub fn is_empty(&self) -> bool {
        match *self {}
    }

    pub fn bytes(&self) -> usize {
        match *self {}
    }
}

/// Whether `folder` can run on the GPU: never in this build.
pub fn check_cuda(folder: &ModelFolder) -> Result<&NemotronHConfig, GpuModelError> {
    let _ = folder;
    Err(not_built())
}

/// Uploads `folder`'s weights to `gpu`: there is no GPU in this build.
pub fn load_gpu_model(
    gpu: &Gpu,
    folder: &ModelFolder,
    progress: impl FnMut(usize, usize),
) -> Result<GpuNemotronH, GpuModelError> {
    let _ = (folder, progress);
    match *gpu {}
}

/// The GPU model and one session on it (none in this build).
pub enum CudaSequence {}

impl CudaSequence {
    pub fn new(
        gpu: Arc<Gpu>,
        model: Arc<GpuNemotronH>,
        cache: CacheConfig,
        context: Option<usize>,
        prefill_chunk: usize,
        max_checkpoints: usize,
    ) -> Result<Self, GpuModelError> {
        let _ = (gpu, cache, context, prefill_chunk, max_checkpoints);
        match *model {}
    }

    pub fn forward(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>, GpuModelError> {
        let _ = (tokens, want);
        match *self {}
    }

    pub fn forward_keep(&mut self, tokens: &[u32]) -> Result<(), GpuModelError> {
        let _ = tokens;
        match *self {}
    }

    pub fn can_draw(&self) -> bool {
        match *self {}
    }

    pub fn draw(
        &mut self,
        params: &SamplingParams,
        history: &[u32],
        banned: &[u32],
        u: f32,
    ) -> Result<u32, GpuModelError> {
        let _ = (params, history, banned, u);
        match *self {}
    }

    pub fn logits_to_host(&mut self) -> Result<Vec<f32>, GpuModelError> {
        match *self {}
    }

    pub fn set_device_sampling(&mut self, on: bool) {
        let _ = on;
        match *self {}
    }

    pub fn device_draws(&self) -> usize {
        match *self {}
    }

    pub fn set_cuda_graph(&mut self, on: bool) {
        let _ = on;
        match *self {}
    }

    pub fn cuda_graph(&self) -> bool {
        match *self {}
    }

    pub fn sync(&mut self) -> Result<(), GpuModelError> {
        match *self {}
    }

    pub fn len(&self) -> usize {
        match *self {}
    }

    pub fn is_empty(&self) -> bool {
        match *self {}
    }

    pub fn capacity(&self) -> usize {
        match *self {}
    }

    pub fn checkpoint(&mut self) -> Result<GpuCheckpoint, GpuModelError> {
        match *self {}
    }

    pub fn restore(&mut self, snap: &GpuCheckpoint) -> Result<(), GpuModelError> {
        let _ = snap;
        match *self {}
    }

    pub fn reset(&mut self) {
        match *self {}
    }

    pub fn device_name(&self) -> &str {
        match *self {}
    }

    pub fn model(&self) -> &GpuNemotronH {
        match *self {}
    }

    pub fn state_bytes_read(&self) -> usize {
        match *self {}
    }
}
