//! `Runner`: where a session's sequence lives and runs — the CPU model with a host
//! `SequenceState`, or (feature `cuda`) the GPU model with a `GpuSession` on the device.
//! `Session` drives either the same way: forward, snapshot, restore, reset.
//!
//! Invariants:
//! - `len()` positions have been fed: `forward` appends, `restore` goes back to a
//!   snapshot's length, `reset` to 0. The token history, and the rule that a snapshot is
//!   restored only while its tokens are still a prefix of the fed ones, are `Session`'s.
//! - After `forward_last` the last position's logits are on the host
//!   (`StepLogits::Host`: the CPU runner) or still on the device (`StepLogits::Device`:
//!   the GPU runner leaves them in the session's logits buffer, valid until the next call
//!   that feeds, restores or resets, or a draw, which masks its bans there). From device
//!   logits, `draw` picks the token on the device and only the 4-byte id comes back:
//!   through the args buffer (knobs, uniform, up to `MAX_DEVICE_BANS` bans; one small
//!   copy), or, with a repetition/presence penalty or more bans, through the eager draw
//!   that also uploads the bans and the deduplicated token history (sorted on the host
//!   each step: O(context log context), a few hundred µs at 32k). `can_draw` is false
//!   only when device sampling is off: `NEMO_DEVICE_SAMPLING=0` (or
//!   `set_device_sampling(false)`), which downloads the logits for the host `Sampler`
//!   (0.5 MiB for a 131072 vocab). Both paths sample the same distribution
//!   (kernels/sampling.cu's oracle is `Sampler::sample`); the device's uniform comes from
//!   the host sampler's generator.
//! - Snapshots live where the state lives: host copies of the Mamba states for the CPU,
//!   device copies for the GPU (`backend::cuda::snapshot`); restoring truncates the KV
//!   caches. They are taken at prompt boundaries, never inside a decode step.

use std::sync::Arc;

use super::EngineError;
use crate::model::{Logits, Model};
use crate::protocol::SamplingParams;
use crate::state::{CacheConfig, SequenceState, Snapshot};

#[cfg(feature = "cuda")]
pub use self::cuda::{check_cuda, load_gpu_model, CudaRunner};

pub enum Runner {
    Cpu {
        model: Arc<Model>,
        state: SequenceState,
    },
    #[cfg(feature = "cuda")]
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
    #[cfg(feature = "cuda")]
    Cuda(crate::backend::cuda::snapshot::GpuSnapshot),
}

impl RunnerSnapshot {
    /// Positions the snapshot was taken at.
    pub fn len(&self) -> usize {
        match self {
            RunnerSnapshot::Cpu(s) => s.len,
            #[cfg(feature = "cuda")]
            RunnerSnapshot::Cuda(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the copy takes (host or device memory).
    pub fn bytes(&self) -> usize {
        match self {
            RunnerSnapshot::Cpu(s) => s.bytes(),
            #[cfg(feature = "cuda")]
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

    /// Feeds `tokens` after what was fed; returns the logits `want` asks for, on the host.
    pub fn forward(&mut self, tokens: &[u32], want: Logits) -> Result<Vec<f32>, EngineError> {
        match self {
            Runner::Cpu { model, state } => Ok(model.forward(tokens, state, want)?),
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.forward(tokens, want),
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
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.forward_keep(tokens).map(|()| StepLogits::Device),
        }
    }

    /// Whether `draw` picks the next token on the device: on the GPU unless device sampling
    /// is off (see the module doc); never on the CPU.
    pub fn can_draw(&self) -> bool {
        match self {
            Runner::Cpu { .. } => false,
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.device_sampling,
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
            Runner::Cpu { .. } => {
                let _ = (params, history, banned, u);
                Err(no_device_logits())
            }
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.draw(params, history, banned, u),
        }
    }

    /// The logits `forward_last` left on the device, on the host.
    pub fn logits_to_host(&mut self) -> Result<Vec<f32>, EngineError> {
        match self {
            Runner::Cpu { .. } => Err(no_device_logits()),
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.logits_to_host(),
        }
    }

    /// Device sampling on (the default unless `NEMO_DEVICE_SAMPLING=0`) or off (every
    /// token picked by the host `Sampler` on downloaded logits). No effect on the CPU.
    pub fn set_device_sampling(&mut self, on: bool) {
        match self {
            Runner::Cpu { .. } => {
                let _ = on;
            }
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.device_sampling = on,
        }
    }

    /// Tokens drawn on the device since the runner was made.
    pub fn device_draws(&self) -> usize {
        match self {
            Runner::Cpu { .. } => 0,
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.draws,
        }
    }

    /// Positions fed so far.
    pub fn len(&self) -> usize {
        match self {
            Runner::Cpu { state, .. } => state.len,
            #[cfg(feature = "cuda")]
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
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.snapshot().map(RunnerSnapshot::Cuda),
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
            #[cfg(feature = "cuda")]
            (Runner::Cuda(r), RunnerSnapshot::Cuda(s)) => r.restore(s),
            #[cfg(feature = "cuda")]
            _ => Err(EngineError::Gpu(
                crate::backend::cuda::nemotron_h::GpuModelError::Unsupported(
                    "a snapshot taken on another device".into(),
                ),
            )),
        }
    }

    /// Back to the empty sequence.
    pub fn reset(&mut self) {
        match self {
            Runner::Cpu { state, .. } => state.reset(),
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => r.reset(),
        }
    }

    /// Most positions the runner can hold, when it has a fixed capacity (the GPU's KV
    /// caches are allocated once); the CPU's caches grow.
    pub fn capacity(&self) -> Option<usize> {
        match self {
            Runner::Cpu { .. } => None,
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => Some(r.session.plan.max_context),
        }
    }

    /// Where it runs, for the status bar and `/model`: `cpu`, or `cuda · H100 80GB HBM3`.
    pub fn device(&self) -> String {
        match self {
            Runner::Cpu { .. } => "cpu".into(),
            #[cfg(feature = "cuda")]
            Runner::Cuda(r) => format!(
                "cuda · {}",
                r.gpu
                    .info
                    .name
                    .strip_prefix("NVIDIA ")
                    .unwrap_or(&r.gpu.info.name)
            ),
        }
    }
}

fn no_device_logits() -> EngineError {
    EngineError::Model(crate::model::ModelError::Unsupported(
        "no logits on the device (the CPU runner keeps them on the host)".into(),
    ))
}

/// The largest context whose KV cache fits the device: what is free after the weights,
/// less `reserve` (activation buffers, checkpoints, cuBLAS and allocator slack), with a
/// tenth of the rest kept free too, over the KV bytes one position takes in every
/// attention layer; at most `model_max`. A model without attention layers takes
/// `model_max` (its state does not grow with the context).
pub fn fit_context(
    free: usize,
    reserve: usize,
    bytes_per_position: usize,
    model_max: usize,
) -> usize {
    if bytes_per_position == 0 {
        return model_max;
    }
    let usable = free.saturating_sub(reserve) / 10 * 9;
    (usable / bytes_per_position).min(model_max)
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::Arc;

    use super::{fit_context, EngineError, Runner, SamplingParams};
    use crate::backend::cuda::nemotron_h::{
        GpuModelError, GpuNemotronH, GpuSession, Plan, StoreWeights,
    };
    use crate::backend::cuda::sampling::{SampleArgs, MAX_DEVICE_BANS};
    use crate::backend::cuda::snapshot::GpuSnapshot;
    use crate::backend::cuda::{CudaError, Gpu};
    use crate::backend::DType;
    use crate::engine::SessionOptions;
    use crate::model::weights::WeightStore;
    use crate::model::{LayerKind, Logits, Model, ModelFolder, NemotronHConfig};

    /// The GPU model and one sequence on it.
    pub struct CudaRunner {
        // Dropped in this order: the session's buffers, the weights, then the device.
        pub session: GpuSession,
        pub model: Arc<GpuNemotronH>,
        pub gpu: Arc<Gpu>,
        /// `reset` cannot fail (the CPU's cannot, and `Session::reset` returns nothing), so
        /// the device reset is done before the next call that reads or writes the state.
        reset_pending: bool,
        /// Whether tokens may be drawn on the device (`Runner::set_device_sampling`).
        pub(super) device_sampling: bool,
        /// Tokens drawn on the device so far.
        pub(super) draws: usize,
        /// Whether the session's logits buffer holds the last fed position's logits
        /// (`forward_keep` was the last call that fed).
        logits_ready: bool,
    }

    fn gpu_err(e: CudaError) -> EngineError {
        EngineError::Gpu(GpuModelError::Cuda(e))
    }

    impl CudaRunner {
        /// Before every device call: the context current on this thread (the engine
        /// thread is not the one that opened it), and a pending reset done.
        fn settle(&mut self) -> Result<(), EngineError> {
            self.gpu
                .ctx
                .bind_to_thread()
                .map_err(|e| gpu_err(CudaError::Driver(format!("{e:?}"))))?;
            if self.reset_pending {
                self.session.reset(&self.gpu).map_err(gpu_err)?;
                self.reset_pending = false;
            }
            Ok(())
        }

        pub(super) fn forward(
            &mut self,
            tokens: &[u32],
            want: Logits,
        ) -> Result<Vec<f32>, EngineError> {
            self.settle()?;
            self.logits_ready = false;
            Ok(self
                .model
                .forward(&self.gpu, &mut self.session, tokens, want)?)
        }

        pub(super) fn forward_keep(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
            self.settle()?;
            self.logits_ready = false;
            self.model
                .forward_keep(&self.gpu, &mut self.session, tokens)?;
            self.logits_ready = true;
            Ok(())
        }

        fn check_logits(&self) -> Result<(), EngineError> {
            if self.logits_ready && !self.reset_pending {
                return Ok(());
            }
            Err(EngineError::Gpu(GpuModelError::Unsupported(
                "no logits on the device for the current position".into(),
            )))
        }

        pub(super) fn draw(
            &mut self,
            params: &SamplingParams,
            history: &[u32],
            banned: &[u32],
            u: f32,
        ) -> Result<u32, EngineError> {
            self.check_logits()?;
            self.settle()?;
            // The draw masks the bans in place: the buffer no longer holds the raw logits.
            self.logits_ready = false;
            let args = SampleArgs::from(params);
            // Penalties (which need the history) and long ban lists take the eager draw
            // that uploads them; the rest the one whose knobs sit in the args buffer.
            let id = if args.has_penalties() || banned.len() > MAX_DEVICE_BANS {
                self.model.draw_with_history(
                    &self.gpu,
                    &mut self.session,
                    &args,
                    history,
                    banned,
                    u,
                )?
            } else {
                self.model
                    .draw(&self.gpu, &mut self.session, &args, banned, u)?
            };
            self.draws += 1;
            Ok(id)
        }

        pub(super) fn logits_to_host(&mut self) -> Result<Vec<f32>, EngineError> {
            self.check_logits()?;
            self.settle()?;
            Ok(self.model.last_logits_to_host(&self.gpu, &self.session)?)
        }

        pub(super) fn len(&self) -> usize {
            if self.reset_pending {
                0
            } else {
                self.session.len()
            }
        }

        pub(super) fn snapshot(&mut self) -> Result<GpuSnapshot, EngineError> {
            self.settle()?;
            self.session.snapshot(&self.gpu).map_err(gpu_err)
        }

        pub(super) fn restore(&mut self, snap: &GpuSnapshot) -> Result<(), EngineError> {
            self.settle()?;
            self.logits_ready = false;
            self.session.restore(&self.gpu, snap).map_err(gpu_err)
        }

        pub(super) fn reset(&mut self) {
            self.reset_pending = true;
            self.logits_ready = false;
        }
    }

    impl Runner {
        /// A session of `model` on `gpu`: KV caches for `opts.context` positions, or for
        /// the most that fit the free device memory (`plan_for`), capped by the model's
        /// `max_position_embeddings`; prompts fed in chunks of `opts.prefill_chunk`.
        pub fn cuda(
            gpu: Arc<Gpu>,
            model: Arc<GpuNemotronH>,
            opts: &SessionOptions,
        ) -> Result<Runner, EngineError> {
            let plan = plan_for(&gpu, &model.config, opts)?;
            let session = model.new_session(&gpu, opts.cache, plan)?;
            Ok(Runner::Cuda(Box::new(CudaRunner {
                session,
                model,
                gpu,
                reset_pending: false,
                device_sampling: std::env::var("NEMO_DEVICE_SAMPLING")
                    .map_or(true, |v| v.trim() != "0"),
                draws: 0,
                logits_ready: false,
            })))
        }
    }

    /// KV bytes per position over every attention layer (`GpuKvCache` keeps f32 scales per
    /// position and KV head beside K and V, whatever the dtype).
    fn kv_bytes_per_position(c: &NemotronHConfig, kv: DType) -> usize {
        let attn = c
            .layers
            .iter()
            .filter(|k| **k == LayerKind::Attention)
            .count();
        attn * 2 * c.num_key_value_heads * (c.head_dim * kv.size() + 4)
    }

    /// Device bytes of one checkpoint: every Mamba layer's conv window and SSM state.
    fn snapshot_bytes(c: &NemotronHConfig, ssm: DType) -> usize {
        let mamba = c.layers.iter().filter(|k| **k == LayerKind::Mamba2).count();
        mamba
            * ((c.conv_kernel - 1) * c.conv_dim() * 4
                + c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * ssm.size())
    }

    /// Activation buffers of a session for `n` tokens per step (an upper bound of
    /// `GpuNemotronH::new_session`'s: every buffer as f32).
    /// f32 words per token of the MoE layers' scratch (router logits, the chosen experts'
    /// hidden and output rows, the shared expert, the latent rows), generously.
    fn moe_per_token(c: &NemotronHConfig) -> usize {
        if !c.layers.contains(&crate::model::LayerKind::Moe) {
            return 0;
        }
        let inner = c.moe_latent_size.unwrap_or(c.hidden_size);
        c.n_routed_experts
            + c.num_experts_per_tok * (c.moe_intermediate_size + inner + 2)
            + c.moe_shared_expert_intermediate_size
            + 2 * inner
            + c.hidden_size
    }

    fn activation_bytes(c: &NemotronHConfig, n: usize) -> usize {
        let per_token = 4 * c.hidden_size
            + c.in_proj_dim()
            + c.conv_dim()
            + 2 * c.d_inner()
            + 3 * c.num_attention_heads * c.head_dim
            + 2 * c.num_key_value_heads * c.head_dim
            + 2 * c.intermediate_size
            + moe_per_token(c);
        4 * (n * per_token + 2 * c.vocab_size)
    }

    /// The session's plan. Without `opts.context`, the context is what fits the free
    /// device memory now (after the weights), keeping room for the activation buffers,
    /// `opts.max_checkpoints` checkpoints and 256 MiB of slack (cuBLAS workspace, the
    /// allocator), and a tenth of the rest; at most the model's `max_position_embeddings`.
    fn plan_for(
        gpu: &Gpu,
        c: &NemotronHConfig,
        opts: &SessionOptions,
    ) -> Result<Plan, EngineError> {
        let max_context = match opts.context {
            Some(n) => n,
            None => {
                let (free, _total) = gpu
                    .ctx
                    .mem_get_info()
                    .map_err(|e| gpu_err(CudaError::Driver(format!("{e:?}"))))?;
                let reserve = activation_bytes(c, opts.prefill_chunk)
                    + opts.max_checkpoints * snapshot_bytes(c, opts.cache.ssm_dtype)
                    + (256 << 20);
                let per_pos = kv_bytes_per_position(c, opts.cache.kv_dtype);
                let n = fit_context(free, reserve, per_pos, c.max_position_embeddings);
                if n < 1 {
                    return Err(EngineError::Gpu(GpuModelError::Unsupported(format!(
                        "not enough free device memory for a KV cache: {} MiB free after the weights, {} KiB per position",
                        free >> 20,
                        per_pos >> 10
                    ))));
                }
                n
            }
        };
        Ok(Plan {
            max_context,
            prefill_chunk: opts.prefill_chunk,
        })
    }

    /// Whether `folder` can run on the GPU, from its config and weights alone (no GPU
    /// needed): a dense Nemotron-H safetensors folder in bf16, f16 or f32, each layer
    /// within the kernels' limits. Each refusal is one line saying what is not supported.
    pub fn check_cuda(folder: &ModelFolder) -> Result<&NemotronHConfig, GpuModelError> {
        if folder.dir.is_file() {
            return Err(GpuModelError::Unsupported(format!(
                "{}: GGUF files are not supported on cuda yet (a safetensors folder is)",
                folder.dir.display()
            )));
        }
        let m = match &*folder.model {
            Model::NemotronH(m) => m,
            Model::Llama(_) => {
                return Err(GpuModelError::Unsupported(
                    "Llama models are not supported on cuda yet (Nemotron-H is)".into(),
                ))
            }
        };
        if !matches!(m.weight_dtype, DType::BF16 | DType::F16 | DType::F32) {
            return Err(GpuModelError::Unsupported(format!(
                "{} weights are not supported on cuda yet (bf16, f16 and f32 are)",
                m.weight_dtype
            )));
        }
        GpuNemotronH::check(&m.config)?;
        Ok(&m.config)
    }

    /// Uploads `folder`'s weights (checked by `check_cuda` first) to `gpu`;
    /// `progress(done, total)` in checkpoint bytes as they go up.
    pub fn load_gpu_model(
        gpu: &Gpu,
        folder: &ModelFolder,
        progress: impl FnMut(usize, usize),
    ) -> Result<GpuNemotronH, GpuModelError> {
        let cfg = check_cuda(folder)?;
        let store = WeightStore::open_dir(&folder.dir)?;
        let mut w = StoreWeights(&store).with_progress(progress);
        let m = GpuNemotronH::load(gpu, cfg, &mut w)?;
        gpu.sync()?;
        w.finish();
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_fits_what_is_free_after_the_reserve_and_never_exceeds_the_model() {
        let gib = 1usize << 30;
        // 10 GiB free, 2 GiB reserved: 90% of 8 GiB over 16 KiB per position.
        assert_eq!(fit_context(10 * gib, 2 * gib, 16 << 10, 1 << 20), 471_859);
        assert_eq!(fit_context(10 * gib, 2 * gib, 16 << 10, 131_072), 131_072);
        assert_eq!(fit_context(gib, 2 * gib, 16 << 10, 131_072), 0);
        // No attention layer: the state does not grow with the context.
        assert_eq!(fit_context(0, 0, 0, 4096), 4096);
    }

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
