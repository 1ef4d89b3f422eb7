//! `CudaSequence`: the GPU model and one session on it, driven the way `engine::Sequence`
//! drives the CPU model and its host state (feed, draw, checkpoint, restore, reset): the
//! engine's `Sequence::Cuda` holds one, and `nemo bench --device cuda` times one.
//!
//! Invariants:
//! - Every device call first makes the device context current on the calling thread (the
//!   engine thread is not the one that opened it) and carries out a pending `reset`.
//! - `reset` cannot fail (the CPU's cannot), so it only marks the session: `len()` is 0
//!   from then on and the device is reset before the next call that reads or writes it.
//! - Logits are on the device only right after `forward_keep` (no reset, restore, other
//!   feed or draw since: a draw masks its bans in them); `draw` and `logits_to_host`
//!   refuse otherwise.
//! - A draw with a repetition/presence penalty or more than `MAX_DEVICE_BANS` bans takes
//!   the eager draw that uploads the history and the bans; the rest the draw whose knobs
//!   ride in the session's args buffer. Either leaves the id on the device, where the
//!   next decode step reads it without an upload.

use std::sync::Arc;

use super::checkpoint::GpuCheckpoint;
use super::nemotron_h::GpuNemotronH;
use super::plan::plan_for;
use super::session::GpuSession;
use super::GpuModelError;
use crate::backend::cuda::sampling::{SampleArgs, MAX_DEVICE_BANS};
use crate::backend::cuda::{CudaError, Gpu};
use crate::model::Logits;
use crate::protocol::SamplingParams;
use crate::state::CacheConfig;

fn drv(e: impl std::fmt::Debug) -> GpuModelError {
    GpuModelError::Cuda(CudaError::Driver(format!("{e:?}")))
}

/// The GPU model and one sequence on it.
pub struct CudaSequence {
    // Dropped in this order: the session's buffers, the weights, then the device.
    session: GpuSession,
    model: Arc<GpuNemotronH>,
    gpu: Arc<Gpu>,
    /// The device reset `reset` asked for, done before the next call that reads or writes
    /// the state.
    reset_pending: bool,
    /// Whether tokens may be drawn on the device (`set_device_sampling`).
    device_sampling: bool,
    /// Tokens drawn on the device so far.
    draws: usize,
    /// Whether the session's logits buffer holds the last fed position's logits
    /// (`forward_keep` was the last call that fed).
    logits_ready: bool,
}

impl CudaSequence {
    /// A session of `model` on `gpu` with caches `cache`: KV caches for `context`
    /// positions, or for the most that fit the free device memory (`plan::plan_for`),
    /// capped by the model's `max_position_embeddings`; prompts fed in chunks of
    /// `prefill_chunk`, room kept for `max_checkpoints` checkpoints. Device sampling is on
    /// unless `NEMO_DEVICE_SAMPLING=0`.
    pub fn new(
        gpu: Arc<Gpu>,
        model: Arc<GpuNemotronH>,
        cache: CacheConfig,
        context: Option<usize>,
        prefill_chunk: usize,
        max_checkpoints: usize,
    ) -> Result<Self, GpuModelError> {
        let plan = plan_for(
            &model.config,
            cache,
            context,
            prefill_chunk,
            max_checkpoints,
            || Ok(gpu.ctx.mem_get_info().map_err(drv)?.0),
        )?;
        let session = model.new_session(&gpu, cache, plan)?;
        Ok(CudaSequence {
            session,
            model,
            gpu,
            reset_pending: false,
            device_sampling: std::env::var("NEMO_DEVICE_SAMPLING")
                .map_or(true, |v| v.trim() != "0"),
            draws: 0,
            logits_ready: false,
        })
    }

    /// Before every device call: the context current on this thread, a pending reset done.
    fn settle(&mut self) -> Result<(), GpuModelError> {
        self.gpu.ctx.bind_to_thread().map_err(drv)?;
        if self.reset_pending {
            self.session.reset(&self.gpu)?;
            self.reset_pending = false;
        }
        Ok(())
    }

    /// Feeds `tokens` after what was fed; returns the logits `want` asks for, on the host.
    pub fn forward(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>, GpuModelError> {
        self.settle()?;
        self.logits_ready = false;
        self.model
            .forward(&self.gpu, &mut self.session, tokens, want)
    }

    /// Feeds `tokens` after what was fed; the last position's logits stay on the device.
    pub fn forward_keep(&mut self, tokens: &[u32]) -> Result<(), GpuModelError> {
        self.settle()?;
        self.logits_ready = false;
        self.model
            .forward_keep(&self.gpu, &mut self.session, tokens)?;
        self.logits_ready = true;
        Ok(())
    }

    fn check_logits(&self) -> Result<(), GpuModelError> {
        if self.logits_ready && !self.reset_pending {
            return Ok(());
        }
        Err(GpuModelError::Unsupported(
            "no logits on the device for the current position".into(),
        ))
    }

    /// Whether `draw` may pick tokens on the device (`set_device_sampling`).
    pub fn can_draw(&self) -> bool {
        self.device_sampling
    }

    /// Draws the next token on the device from the logits `forward_keep` left there, with
    /// the uniform `u` ∈ [0, 1) (the host sampler's generator); only the id comes back.
    pub fn draw(
        &mut self,
        params: &SamplingParams,
        history: &[u32],
        banned: &[u32],
        u: f32,
    ) -> Result<u32, GpuModelError> {
        self.check_logits()?;
        self.settle()?;
        // The draw masks the bans in place: the buffer no longer holds the raw logits.
        self.logits_ready = false;
        let args = SampleArgs::from(params);
        let id = if args.has_penalties() || banned.len() > MAX_DEVICE_BANS {
            self.model
                .draw_with_history(&self.gpu, &mut self.session, &args, history, banned, u)?
        } else {
            self.model
                .draw(&self.gpu, &mut self.session, &args, banned, u)?
        };
        self.draws += 1;
        Ok(id)
    }

    /// The logits `forward_keep` left on the device, on the host.
    pub fn logits_to_host(&mut self) -> Result<Vec<f32>, GpuModelError> {
        self.check_logits()?;
        self.settle()?;
        self.model.last_logits_to_host(&self.gpu, &self.session)
    }

    /// Device sampling on (the default unless `NEMO_DEVICE_SAMPLING=0`) or off.
    pub fn set_device_sampling(&mut self, on: bool) {
        self.device_sampling = on;
    }

    /// Tokens drawn on the device since the sequence was made.
    pub fn device_draws(&self) -> usize {
        self.draws
    }

    /// Decode steps as a CUDA graph (the default unless `NEMO_CUDA_GRAPH=0`) or eager.
    pub fn set_cuda_graph(&mut self, on: bool) {
        self.session.set_cuda_graph(on);
    }

    /// Whether decode steps run as a CUDA graph.
    pub fn cuda_graph(&self) -> bool {
        self.session.cuda_graph()
    }

    /// Carries out a pending reset and waits until the device has done all queued work
    /// (for timing it from the host).
    pub fn sync(&mut self) -> Result<(), GpuModelError> {
        self.settle()?;
        Ok(self.gpu.sync()?)
    }

    /// Positions fed so far.
    pub fn len(&self) -> usize {
        if self.reset_pending {
            0
        } else {
            self.session.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most positions the session holds (its KV caches are allocated once).
    pub fn capacity(&self) -> usize {
        self.session.plan.max_context
    }

    /// A device copy of the recurrent state now.
    pub fn checkpoint(&mut self) -> Result<GpuCheckpoint, GpuModelError> {
        self.settle()?;
        Ok(self.session.checkpoint(&self.gpu)?)
    }

    /// Back to `snap`, taken on this sequence at a length ≤ `len()` whose tokens are still a
    /// prefix of the fed ones (the caller guarantees it).
    pub fn restore(&mut self, snap: &GpuCheckpoint) -> Result<(), GpuModelError> {
        self.settle()?;
        self.logits_ready = false;
        Ok(self.session.restore(&self.gpu, snap)?)
    }

    /// Back to the empty sequence (the device is reset before the next device call).
    pub fn reset(&mut self) {
        self.reset_pending = true;
        self.logits_ready = false;
    }

    /// The GPU's name without the vendor: `H100 80GB HBM3`.
    pub fn device_name(&self) -> &str {
        let name = &self.gpu.info.name;
        name.strip_prefix("NVIDIA ").unwrap_or(name)
    }

    /// The model the session runs.
    pub fn model(&self) -> &GpuNemotronH {
        &self.model
    }

    /// Bytes of state one decode step reads at the session's length
    /// (`GpuSession::state_bytes_read`).
    pub fn state_bytes_read(&self) -> usize {
        self.session.state_bytes_read()
    }
}
