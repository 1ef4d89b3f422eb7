//! `Sequence`: where a session's sequence lives and runs — the CPU model with a host
//! `SequenceState`, or the GPU model with its device session (`model::cuda::CudaSequence`;
//! a build without the `cuda` feature has the type but never a value of it). `Session`
//! drives either the same way: forward, checkpoint, restore, reset.
//!
//! Invariants:
//! - `len()` positions have been fed: `forward` appends, `restore` goes back to a
//!   checkpoint's length, `reset` to 0. The token history, and the rule that a checkpoint is
//!   restored only while its tokens are still a prefix of the fed ones, are `Session`'s.
//! - After `forward_last` the last position's logits are on the host
//!   (`StepLogits::Host`: the CPU sequence) or still on the device (`StepLogits::Device`:
//!   the GPU sequence), valid until the next call that feeds, restores or resets, or a draw.
//!   From device logits `draw` picks the token on the device and only its id comes back
//!   (`CudaSequence::draw`); `can_draw` is false only when device sampling is off
//!   (`NEMO_DEVICE_SAMPLING=0` or `set_device_sampling(false)`), and then
//!   `logits_to_host` brings them over for the host `Sampler`. Both sample the same
//!   distribution (kernels/sampling.cu's oracle is `Sampler::sample`); the device's
//!   uniform comes from the host sampler's generator.
//! - Checkpoints live where the state lives: host copies of the Mamba states for the CPU,
//!   device copies for the GPU (`model::cuda::checkpoint`); restoring truncates the KV
//!   caches. They are taken at prompt boundaries, never inside a decode step.

use std::sync::Arc;

use super::{EngineError, SessionOptions};
use crate::backend::cuda::Gpu;
use crate::model::cuda::{CudaSequence, GpuCheckpoint, GpuModelError, GpuNemotronH};
use crate::model::{Logits, Model};
use crate::protocol::SamplingParams;
use crate::state::{self, CacheConfig, SequenceState};

pub enum Sequence {
    Cpu {
        model: Arc<Model>,
        state: SequenceState,
    },
    Cuda(Box<CudaSequence>),
}

/// The last position's logits after `Sequence::forward_last` (see the module doc).
pub enum StepLogits {
    Host(Vec<f32>),
    /// Left on the device: `Sequence::draw` or `Sequence::logits_to_host` reads them.
    Device,
}

/// A copy of a sequence's recurrent state at `len()` positions (see the module doc).
pub enum Checkpoint {
    Cpu(state::Checkpoint),
    Cuda(GpuCheckpoint),
}

impl Checkpoint {
    /// Positions the checkpoint was taken at.
    pub fn len(&self) -> usize {
        match self {
            Checkpoint::Cpu(s) => s.len,
            Checkpoint::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the copy takes (host or device memory).
    pub fn bytes(&self) -> usize {
        match self {
            Checkpoint::Cpu(s) => s.bytes(),
            Checkpoint::Cuda(s) => s.bytes(),
        }
    }
}

impl Sequence {
    /// The CPU model with a fresh host state.
    pub fn cpu(model: Arc<Model>, cache: CacheConfig) -> Self {
        let state = model.new_state(cache);
        Sequence::Cpu { model, state }
    }

    /// A session of `model` on `gpu`: KV caches for `opts.context` positions, or for the
    /// most that fit the free device memory (`model::cuda::plan`), capped by the model's
    /// `max_position_embeddings`; prompts fed in chunks of `opts.prefill_chunk`.
    pub fn cuda(
        gpu: Arc<Gpu>,
        model: Arc<GpuNemotronH>,
        opts: &SessionOptions,
    ) -> Result<Sequence, EngineError> {
        Ok(Sequence::Cuda(Box::new(CudaSequence::new(
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
            Sequence::Cpu { model, state } => Ok(model.forward(tokens, state, want)?),
            Sequence::Cuda(r) => Ok(r.forward(tokens, want)?),
        }
    }

    /// Feeds `tokens` after what was fed; the last position's logits stay where they were
    /// computed (on the host for the CPU, on the device for the GPU).
    pub fn forward_last(&mut self, tokens: &[u32]) -> Result<StepLogits, EngineError> {
        match self {
            Sequence::Cpu { model, state } => Ok(StepLogits::Host(model.forward(
                tokens,
                state,
                Logits::Last,
            )?)),
            Sequence::Cuda(r) => {
                r.forward_keep(tokens)?;
                Ok(StepLogits::Device)
            }
        }
    }

    /// Whether `draw` picks the next token on the device: on the GPU unless device sampling
    /// is off (see the module doc); never on the CPU.
    pub fn can_draw(&self) -> bool {
        match self {
            Sequence::Cpu { .. } => false,
            Sequence::Cuda(r) => r.can_draw(),
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
            Sequence::Cpu { .. } => Err(no_device_logits()),
            Sequence::Cuda(r) => Ok(r.draw(params, history, banned, u)?),
        }
    }

    /// The logits `forward_last` left on the device, on the host.
    pub fn logits_to_host(&mut self) -> Result<Vec<f32>, EngineError> {
        match self {
            Sequence::Cpu { .. } => Err(no_device_logits()),
            Sequence::Cuda(r) => Ok(r.logits_to_host()?),
        }
    }

    /// Device sampling on (the default unless `NEMO_DEVICE_SAMPLING=0`) or off (every
    /// token picked by the host `Sampler` on downloaded logits). No effect on the CPU.
    pub fn set_device_sampling(&mut self, on: bool) {
        if let Sequence::Cuda(r) = self {
            r.set_device_sampling(on);
        }
    }

    /// Tokens drawn on the device since the sequence was made.
    pub fn device_draws(&self) -> usize {
        match self {
            Sequence::Cpu { .. } => 0,
            Sequence::Cuda(r) => r.device_draws(),
        }
    }

    /// Positions fed so far.
    pub fn len(&self) -> usize {
        match self {
            Sequence::Cpu { state, .. } => state.len,
            Sequence::Cuda(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the recurrent state now.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, EngineError> {
        match self {
            Sequence::Cpu { state, .. } => Ok(Checkpoint::Cpu(state.checkpoint())),
            Sequence::Cuda(r) => Ok(Checkpoint::Cuda(r.checkpoint()?)),
        }
    }

    /// Back to `snap`, taken on this sequence at a length ≤ `len()` whose tokens are still
    /// a prefix of the fed ones (the caller guarantees it).
    pub fn restore(&mut self, snap: &Checkpoint) -> Result<(), EngineError> {
        match (self, snap) {
            (Sequence::Cpu { state, .. }, Checkpoint::Cpu(s)) => {
                state.restore(s);
                Ok(())
            }
            (Sequence::Cuda(r), Checkpoint::Cuda(s)) => Ok(r.restore(s)?),
            _ => Err(EngineError::Gpu(GpuModelError::Unsupported(
                "a checkpoint taken on another device".into(),
            ))),
        }
    }

    /// Back to the empty sequence.
    pub fn reset(&mut self) {
        match self {
            Sequence::Cpu { state, .. } => state.reset(),
            Sequence::Cuda(r) => r.reset(),
        }
    }

    /// Most positions the sequence can hold, when it has a fixed capacity (the GPU's KV
    /// caches are allocated once); the CPU's caches grow.
    pub fn capacity(&self) -> Option<usize> {
        match self {
            Sequence::Cpu { .. } => None,
            Sequence::Cuda(r) => Some(r.capacity()),
        }
    }

    /// Where it runs, for the status bar and `/model`: `cpu`, or `cuda · H100 80GB HBM3`.
    pub fn device(&self) -> String {
        match self {
            Sequence::Cpu { .. } => "cpu".into(),
            Sequence::Cuda(r) => format!("cuda · {}", r.device_name()),
        }
    }
}

fn no_device_logits() -> EngineError {
    EngineError::Model(crate::model::ModelError::Unsupported(
        "no logits on the device (the CPU sequence keeps them on the host)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence's checkpoint is what `Session` checkpoints hold: after other tokens,
    /// restoring it gives the same logits as when it was taken.
    #[test]
    fn cpu_checkpoint_restore_round_trips_the_logits() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nemotron_h_tiny");
        let folder = crate::model::ModelFolder::open(&dir).unwrap();
        let mut r = Sequence::cpu(folder.model.clone(), CacheConfig::default());
        r.forward(&[5, 9, 2, 7], Logits::None).unwrap();
        let snap = r.checkpoint().unwrap();
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
