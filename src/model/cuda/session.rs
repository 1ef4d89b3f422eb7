//! `GpuSession`: one sequence of the GPU model on the device, the twin of
//! `state::SequenceState` (and its activation buffers and decode graph, which the CPU
//! model allocates per call).
//!
//! Invariants:
//! - A session holds the Mamba conv + SSM states (SSM in f32/f16/bf16), the KV caches
//!   (`[max_context, kv_heads, head_dim]` in f32/f16/bf16/FP8 + scales), and every
//!   activation buffer, all allocated once by `new` for `Plan::prefill_chunk` tokens
//!   (`plan::plan_for` bounds these bytes) and never again. Prompts are fed in chunks of
//!   that many tokens, so a long prompt needs no memory for all of it.
//! - `len()` positions have been fed: on the device (what the kernels read) and its host
//!   mirror. `reset` zeroes the states; `rewind` moves only the position (the Mamba states
//!   are restored by the caller, `checkpoint::GpuCheckpoint`).
//! - The decode step is captured once into a CUDA graph that holds the address of every
//!   buffer here and every weight of the model that made the session: states are restored
//!   by copying into these buffers, never by replacing them, and a session runs only with
//!   the model that made it (`model_id`, checked by the model).
//! - `bufs.sampled` holds the next decode step's token. After a device draw it holds the
//!   drawn id (`drawn`), so feeding that id back needs no upload.

use cudarc::driver::{CudaGraph, CudaSlice};
use half::{bf16, f16};

use super::moe_layer::MoeBuffers;
use super::plan::Plan;
use super::GpuModelError;
use crate::backend::cuda::attention::{DevicePosition, GpuKvCache};
use crate::backend::cuda::sampling::DrawArgs;
use crate::backend::cuda::{conv1d, CudaError, Gpu};
use crate::backend::DType;
use crate::model::{LayerKind, NemotronHConfig};
use crate::state::CacheConfig;

fn drv(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// One sequence's SSM state (`[heads, head_dim, d_state]` in the chosen dtype).
pub(super) enum SsmBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

impl SsmBuf {
    pub(super) fn bytes(&self) -> usize {
        match self {
            SsmBuf::F32(s) => s.len() * 4,
            SsmBuf::F16(s) => s.len() * 2,
            SsmBuf::BF16(s) => s.len() * 2,
        }
    }
}

/// One layer's state (`conv` `[k-1, conv_dim]` f32).
pub(super) enum GpuLayerState {
    Mamba { conv: CudaSlice<f32>, ssm: SsmBuf },
    Attention(Box<GpuKvCache>),
    Stateless,
}

/// Activation buffers, each sized for `Plan::prefill_chunk` tokens.
pub(super) struct Buffers {
    pub(super) ids: CudaSlice<u32>,
    pub(super) x: CudaSlice<f32>,
    pub(super) normed: CudaSlice<bf16>,
    pub(super) mixed: CudaSlice<f32>,
    pub(super) zxbcdt: CudaSlice<f32>,
    pub(super) xbc: CudaSlice<f32>,
    pub(super) y: CudaSlice<f32>,
    /// bf16 input of the second GEMM of a mixer (gated y, attention output, relu²).
    pub(super) inner: CudaSlice<bf16>,
    pub(super) q: CudaSlice<f32>,
    pub(super) k: CudaSlice<f32>,
    pub(super) v: CudaSlice<f32>,
    pub(super) attn: CudaSlice<f32>,
    pub(super) hidden: CudaSlice<f32>,
    pub(super) last: CudaSlice<bf16>,
    pub(super) logits: CudaSlice<f32>,
    /// Scratch of the MoE layers (one set serves them all); None without `E` layers.
    pub(super) moe: Option<MoeBuffers>,
    /// A decode step's token: the step reads it here and the device draw writes the next
    /// one here, so decoding after a draw needs no upload.
    pub(super) sampled: CudaSlice<u32>,
    /// The draw's knobs and uniform, written by the host before each draw.
    pub(super) args: CudaSlice<DrawArgs>,
}

/// The decode graph: no step run yet, run once eagerly (kernels loaded), captured.
pub(super) enum GraphSlot {
    Cold,
    Warm,
    Ready(StepGraph),
}

/// A captured decode step.
pub(super) struct StepGraph(pub(super) CudaGraph);

// SAFETY: a graph exec may be launched from any thread as long as no two threads use it at
// once; it is only reached through `&mut GpuSession`, which rules that out.
unsafe impl Send for StepGraph {}

// A session (graph included) may move to the engine's thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<GpuSession>();
};

pub struct GpuSession {
    pub plan: Plan,
    pub cache: CacheConfig,
    pub(super) layers: Vec<GpuLayerState>,
    pub(super) bufs: Buffers,
    /// Positions fed: on the device (what the kernels read) and its host mirror.
    pub(super) pos: DevicePosition,
    pub(super) graph: GraphSlot,
    pub(super) use_graph: bool,
    /// The id the device drew into `bufs.sampled`, while nothing has been fed since.
    pub(super) drawn: Option<u32>,
    pub(super) model_id: u64,
}

impl GpuSession {
    /// State and buffers for `plan` of a model of config `c` (whose id is `model_id`),
    /// allocated now and never again (`GpuNemotronH::new_session`).
    pub(super) fn new(
        gpu: &Gpu,
        c: &NemotronHConfig,
        cache: CacheConfig,
        plan: Plan,
        model_id: u64,
    ) -> Result<Self, GpuModelError> {
        if plan.max_context == 0 || plan.prefill_chunk == 0 {
            return Err(GpuModelError::Unsupported(
                "a GPU session needs a context and a prefill chunk of at least 1 token".into(),
            ));
        }
        conv1d::supports(c.conv_dim(), c.conv_kernel, plan.prefill_chunk)?;
        let layers = c
            .layers
            .iter()
            .map(|k| -> Result<GpuLayerState, GpuModelError> {
                Ok(match k {
                    LayerKind::Mamba2 => {
                        let n = c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size;
                        GpuLayerState::Mamba {
                            conv: gpu.zeros((c.conv_kernel - 1) * c.conv_dim())?,
                            ssm: match cache.ssm_dtype {
                                DType::F32 => SsmBuf::F32(gpu.zeros(n)?),
                                DType::F16 => SsmBuf::F16(gpu.zeros(n)?),
                                DType::BF16 => SsmBuf::BF16(gpu.zeros(n)?),
                                other => {
                                    return Err(GpuModelError::Unsupported(format!(
                                        "SSM state dtype {other} (f32, f16 or bf16)"
                                    )))
                                }
                            },
                        }
                    }
                    LayerKind::Attention => GpuLayerState::Attention(Box::new(GpuKvCache::new(
                        gpu,
                        cache.kv_dtype,
                        c.num_attention_heads,
                        c.num_key_value_heads,
                        c.head_dim,
                        plan.max_context,
                    )?)),
                    _ => GpuLayerState::Stateless,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n = plan.prefill_chunk;
        let has = |k: LayerKind| c.layers.contains(&k);
        let (hs, di, nh_hd, nkv_hd) = (
            c.hidden_size,
            c.d_inner(),
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let m = has(LayerKind::Mamba2) as usize;
        let a = has(LayerKind::Attention) as usize;
        let f = has(LayerKind::Mlp) as usize;
        let inner = (m * di).max(a * nh_hd).max(f * c.intermediate_size);
        let bufs = Buffers {
            ids: gpu.zeros(n)?,
            x: gpu.zeros(n * hs)?,
            normed: gpu.zeros(n * hs)?,
            mixed: gpu.zeros(n * hs)?,
            zxbcdt: gpu.zeros(m * n * c.in_proj_dim())?,
            xbc: gpu.zeros(m * n * c.conv_dim())?,
            y: gpu.zeros(m * n * di)?,
            inner: gpu.zeros(n * inner)?,
            q: gpu.zeros(a * n * nh_hd)?,
            k: gpu.zeros(a * n * nkv_hd)?,
            v: gpu.zeros(a * n * nkv_hd)?,
            attn: gpu.zeros(a * n * nh_hd)?,
            hidden: gpu.zeros(f * n * c.intermediate_size)?,
            last: gpu.zeros(hs)?,
            logits: gpu.zeros(c.vocab_size)?,
            moe: has(LayerKind::Moe)
                .then(|| MoeBuffers::new(gpu, c, n))
                .transpose()?,
            sampled: gpu.zeros(1)?,
            args: gpu.zeros(1)?,
        };
        Ok(GpuSession {
            plan,
            cache,
            layers,
            bufs,
            pos: DevicePosition::new(gpu)?,
            graph: GraphSlot::Cold,
            use_graph: std::env::var("NEMO_CUDA_GRAPH").map_or(true, |v| v.trim() != "0"),
            drawn: None,
            model_id,
        })
    }

    /// Positions fed so far.
    pub fn len(&self) -> usize {
        self.pos.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Back to the empty sequence (states zeroed, caches emptied).
    pub fn reset(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        for l in &mut self.layers {
            match l {
                GpuLayerState::Mamba { conv, ssm } => {
                    gpu.stream.memset_zeros(conv).map_err(drv)?;
                    match ssm {
                        SsmBuf::F32(s) => gpu.stream.memset_zeros(s),
                        SsmBuf::F16(s) => gpu.stream.memset_zeros(s),
                        SsmBuf::BF16(s) => gpu.stream.memset_zeros(s),
                    }
                    .map_err(drv)?;
                }
                GpuLayerState::Attention(_) | GpuLayerState::Stateless => {}
            }
        }
        self.pos.set(gpu, 0)?;
        self.drawn = None;
        Ok(())
    }

    /// Back to `len` positions: every KV cache keeps positions `0..len` (the device and
    /// host position are set to `len`; later positions are overwritten as they are fed
    /// again). The Mamba conv and SSM states are NOT touched: they hold no per-position
    /// history, so the caller restores the ones it saved at `len`. The captured decode
    /// graph stays valid (it reads the position on the device).
    pub fn rewind(&mut self, gpu: &Gpu, len: usize) -> Result<(), CudaError> {
        if len > self.len() {
            return Err(CudaError::Unsupported {
                op: "rewind",
                why: format!("to {len} positions, but the session holds {}", self.len()),
            });
        }
        self.pos.set(gpu, len)?;
        self.drawn = None;
        Ok(())
    }

    /// Captures and replays decode steps as a CUDA graph (`true`, the default unless
    /// `NEMO_CUDA_GRAPH=0`) or runs them eagerly; the same kernels either way.
    pub fn set_cuda_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graph = GraphSlot::Cold;
        }
    }

    /// Whether decode steps run as a CUDA graph.
    pub fn cuda_graph(&self) -> bool {
        self.use_graph
    }

    /// Bytes of state one decode step reads at the current length: every Mamba layer's
    /// conv window and SSM state, every KV cache's `len` positions (and their FP8 scales).
    pub fn state_bytes_read(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                GpuLayerState::Mamba { conv, ssm } => conv.len() * 4 + ssm.bytes(),
                GpuLayerState::Attention(kv) => {
                    let len = self.len();
                    let scales = if matches!(kv.dtype, DType::F8E4M3 | DType::F8E5M2) {
                        2 * len * kv.kv_heads * 4
                    } else {
                        0
                    };
                    2 * len * kv.kv_heads * kv.head_dim * kv.dtype.size() + scales
                }
                GpuLayerState::Stateless => 0,
            })
            .sum()
    }

    /// Makes `token` the next decode step's input: queues its upload into `bufs.sampled`,
    /// unless the device drew it there and nothing was fed since.
    pub(super) fn set_token(&mut self, gpu: &Gpu, token: u32) -> Result<(), CudaError> {
        if self.drawn != Some(token) {
            gpu.stream
                .memcpy_htod(&[token], &mut self.bufs.sampled)
                .map_err(drv)?;
        }
        self.drawn = None;
        Ok(())
    }

    /// The one sync of a draw: the 4-byte id the device left in `bufs.sampled`.
    pub(super) fn read_sampled(&mut self, gpu: &Gpu) -> Result<u32, CudaError> {
        let id = gpu
            .download(&self.bufs.sampled)?
            .first()
            .copied()
            .ok_or_else(|| CudaError::Driver("sample: empty result buffer".into()))?;
        self.drawn = Some(id);
        Ok(id)
    }
}
