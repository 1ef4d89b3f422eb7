//! `Runner`: where a session's sequence lives and runs — the CPU model with a host
//! `SequenceState`, or the GPU model with its device session (`model::cuda::CudaRunner`;
//! a build without the `cuda` feature has the type but never a value of it). `Session`
//! drives either the same way: forward, snapshot, restore, reset.
//!
//! Invariants:
//! - `len()` positions have been fed: `forward` appends, `restore` goes back to a
//!   snapshot's length, `reset` to 0. The token history, and the rule that a snapshot is
//!   restored only while its tokens are still a prefix of the fed ones, are `Session`'s.
//! - After `forward_last` the last position's logits are on the host
//!   (`StepLogits::Host`: the CPU runner) or still on the device (`StepLogits::Device`:
//!   the GPU runner), valid until the next call that feeds, restores or resets, or a draw.
//!   From device logits `draw` picks the token on the device and only its id comes back
//!   (`CudaRunner::draw`); `can_draw` is false only when device sampling is off
//!   (`NEMO_DEVICE_SAMPLING=0` or `set_device_sampling(false)`), and then
//!   `logits_to_host` brings them over for the host `Sampler`. Both sample the same
//!   distribution (kernels/sampling.cu's oracle is `Sampler::sample`); the device's
//!   uniform comes from the host sampler's generator.
//! - Snapshots live where the state lives: host copies of the Mamba states for the CPU,
//!   device copies for the GPU (`model::cuda::snapshot`); restoring truncates the KV
//!   caches. They are taken at prompt boundaries, never inside a decode step.

use std::sync::Arc;

use super::{EngineError, SessionOptions};
use crate::backend::cuda::Gpu;
use crate::model::cuda::{CudaRunner, GpuModelError, GpuNemotronH, GpuSnapshot};
use crate::model::{Logits, Model};
use crate::protocol::SamplingParams;
use crate::state::{CacheConfig, SequenceState, Snapshot};

pub enum Runner {
    Cpu {
        model: Arc<Model>,
        state: SequenceState,
    },
    Cuda(Box<CudaRunner>),
}

/// The last position's logits after `Runner::forward_last` (see the module doc).
pub enum StepLogits {
    Host(Vec<f32>),
    /// Left on the device: `Runner::draw` or `Runner::logits_to_host` reads them.
    Device,
}

/// A copy of a runner's recurrent state at `len()` positions (see the module doc).
pub enum RunnerSnapshot {
    Cpu(Snapshot),
    Cuda(GpuSnapshot),
}

impl RunnerSnapshot {
    /// Positions the snapshot was taken at.
    pub fn len(&self) -> usize {
        match self {
            RunnerSnapshot::Cpu(s) => s.len,
            RunnerSnapshot::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the copy takes (host or device memory).
    pub fn bytes(&self) -> usize {
        match self {
            RunnerSnapshot::Cpu(s) => s.bytes(),
            RunnerSnapshot::Cuda(s) => s.bytes(),
        }
    }
}

impl Runner {
    /// The CPU model with a fresh host state.
    pub fn cpu(model: Arc<Model>, cache: CacheConfig) -> Self {
        let state = model.new_state(cache);
        Runner::Cpu { model, state }
    }

    /// A session of `model` on `gpu`: KV caches for `opts.context` positions, or for the
    /// most that fit the free device memory (`model::cuda::plan`), capped by the model's
    /// `max_position_embeddings`; prompts fed in chunks of `opts.prefill_chunk`.
    pub fn cuda(
        gpu: Arc<Gpu>,
        model: Arc<GpuNemotronH>,
        opts: &SessionOptions,
    ) -> Result<Runner, EngineError> {
        Ok(Runner::Cuda(Box::new(CudaRunner::new(
            gpu,
            model,
            opts.cache,
            opts.context,
            opts.prefill_chunk,
            opts.max_checkpoints,
        )?)))
    }

    /// Feeds `tokens` after what was fed; returns the logits `want` asks for, on the host.
    pub fn forward(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>, EngineError> {
        match self {
            Runner::Cpu { model, state } => Ok(model.forward(tokens, state, want)?),
            Runner::Cuda(r) => Ok(r.forward(tokens, want)?),
        }
    }

    /// Feeds `tokens` after what was fed; the last position's logits stay where they were
    /// computed (on the host for the CPU, on the device for the GPU).
    pub fn forward_last(&mut self, tokens: &[u32]) -> Result<StepLogits, EngineError> {
        match self {
            Runner::Cpu { model, state } => Ok(StepLogits::Host(model.forward(
                tokens,
                state,
                Logits::Last,
            )?)),
            Runner::Cuda(r) => {
                r.forward_keep(tokens)?;
                Ok(StepLogits::Device)
            }
        }
    }

    /// Whether `draw` picks the next token on the device: on the GPU unless device sampling
    /// is off (see the module doc); never on the CPU.
    pub fn can_draw(&self) -> bool {
        match self {
            Runner::Cpu { .. } => false,
            Runner::Cuda(r) => r.can_draw(),
        }
    }

    /// Draws the next token on the device from the logits `forward_last` left there, with
    /// the uniform `u` ∈ [0, 1) (`Sampler::next_uniform`); only when `can_draw`.
    pub fn draw(
        &mut self,
        params: &SamplingParams,
        history: &[u32],
        banned: &[u32],
        u: f32,
    ) -> Result<u32, EngineError> {
        match self {
            Runner::Cpu { .. } => Err(no_device_logits()),
            Runner::Cuda(r) => Ok(r.draw(params, history, banned, u)?),
        }
    }

    /// The logits `forward_last` left on the device, on the host.
    pub fn logits_to_host(&mut self) -> Result<Vec<f32>, EngineError> {
        match self {
            Runner::Cpu { .. } => Err(no_device_logits()),
            Runner::Cuda(r) => Ok(r.logits_to_host()?),
        }
    }

    /// Device sampling on (the default unless `NEMO_DEVICE_SAMPLING=0`) or off (every
    /// token picked by the host `Sampler` on downloaded logits). No effect on the CPU.
    pub fn set_device_sampling(&mut self, on: bool) {
        if let Runner::Cuda(r) = self {
            r.set_device_sampling(on);
        }
    }

    /// Tokens drawn on the device since the runner was made.
    pub fn device_draws(&self) -> usize {
        match self {
            Runner::Cpu { .. } => 0,
            Runner::Cuda(r) => r.device_draws(),
        }
    }

    /// Positions fed so far.
    pub fn len(&self) -> usize {
        match self {
            Runner::Cpu { state, .. } => state.len,
            Runner::Cuda(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the recurrent state now.
    pub fn snapshot(&mut self) -> Result<RunnerSnapshot, EngineError> {
        match self {
            Runner::Cpu { state, .. } => Ok(RunnerSnapshot::Cpu(state.snapshot())),
            Runner::Cuda(r) => Ok(RunnerSnapshot::Cuda(r.snapshot()?)),
        }
    }

    /// Back to `snap`, taken on this runner at a length ≤ `len()` whose tokens are still
    /// a prefix of the fed ones (the caller guarantees it).
    pub fn restore(&mut self, snap: &RunnerSnapshot) -> Result<(), EngineError> {
        match (self, snap) {
            (Runner::Cpu { state, .. }, RunnerSnapshot::Cpu(s)) => {
                state.restore(s);
                Ok(())
            }
            (Runner::Cuda(r), RunnerSnapshot::Cuda(s)) => Ok(r.restore(s)?),
            _ => Err(EngineError::Gpu(GpuModelError::Unsupported(
                "a snapshot taken on another device".into(),
            ))),
        }
    }

    /// Back to the empty sequence.
    pub fn reset(&mut self) {
        match self {
            Runner::Cpu { state, .. } => state.reset(),
            Runner::Cuda(r) => r.reset(),
        }
    }

    /// Most positions the runner can hold, when it has a fixed capacity (the GPU's KV
    /// caches are allocated once); the CPU's caches grow.
    pub fn capacity(&self) -> Option<usize> {
        match self {
            Runner::Cpu { .. } => None,
            Runner::Cuda(r) => Some(r.capacity()),
        }
    }

    /// Where it runs, for the status bar and `/model`: `cpu`, or `cuda · H100 80GB HBM3`.
    pub fn device(&self) -> String {
        match self {
            Runner::Cpu { .. } => "cpu".into(),
            Runner::Cuda(r) => format!("cuda · {}", r.device_name()),
        }
    }
}

fn no_device_logits() -> EngineError {
    EngineError::Model(crate::model::ModelError::Unsupported(
        "no logits on the device (the CPU runner keeps them on the host)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runner's snapshot is what `Session` checkpoints hold: after other tokens,
    /// restoring it gives the same logits as when it was taken.
    #[test]
    fn cpu_snapshot_restore_round_trips_the_logits() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nemotron_h_tiny");
        let folder = crate::model::ModelFolder::open(&dir).unwrap();
        let mut r = Runner::cpu(folder.model.clone(), CacheConfig::default());
        r.forward(&[5, 9, 2, 7], Logits::None).unwrap();
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.len(), 4);
        let want = r.forward(&[11, 3], Logits::Last).unwrap();
        r.forward(&[1, 1, 1], Logits::None).unwrap();
        r.restore(&snap).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r.forward(&[11, 3], Logits::Last).unwrap(), want);
        r.reset();
        assert!(r.is_empty());
    }
}
