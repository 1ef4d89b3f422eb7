//! The whole Nemotron-H forward pass on the GPU; oracle `model::NemotronH::forward` (same
//! blocks, same order, same layouts): embedding gather → for each layer the fused residual
//! add + RMSNorm, then its mixer (Mamba2, attention, relu² MLP or MoE) → final norm → LM
//! head.
//!
//! Invariants:
//! - Weights live on the device as bf16 (GEMM operands: projections, embedding table, LM
//!   head; f32/f16 checkpoints are rounded to nearest even on upload) and f32 (norms, conv,
//!   dt_bias, A, D, biases, the MoE router). Quantized (GGUF blocks) and FP8 weights are
//!   refused with one line. Never a CPU fallback. MoE (`E`) layers are `moe_layer::GpuMoe`:
//!   a decode step's experts are read by id on the device (graph-capturable); a prompt
//!   chunk syncs once per MoE layer to group its tokens by expert.
//! - A `GpuSession` holds one sequence: the Mamba conv + SSM states (SSM in f32/f16/bf16),
//!   the KV caches (`[max_context, kv_heads, head_dim]` in f32/f16/bf16/FP8 + scales), and
//!   every activation buffer, all allocated once for `Plan::prefill_chunk` tokens. Prompts
//!   are fed in chunks of that many tokens, so a long prompt needs no memory for all of it.
//! - A call with one token takes the recurrent (decode) form of the Mamba layers and the
//!   decode attention kernel, more tokens the chunked scan and causal prefill — the same
//!   rule as the CPU, decided on the whole call, not per chunk.
//! - GEMM inputs are bf16 (the normed residual, the gated y, the attention output, relu²
//!   output); everything else, the residual stream included, stays f32.
//! - A decode step (one token) allocates nothing, waits for nothing and branches on no
//!   device value on the host: its token is read from `bufs.sampled` on the device, the
//!   sequence position from `pos` on the device (KV append writes there, decode attention
//!   reads its length there, the step's last kernel advances it), the draw's knobs and
//!   uniform from `bufs.args`. So the step is captured once per session into a CUDA graph
//!   (per ending: logits only, or logits + the device draw) and replayed for every later
//!   token: per token the host queues at most one small copy (the token or the draw's
//!   args, bans included), launches the graph, and reads back the 4-byte id (or the
//!   logits). The first
//!   decode step of each ending runs eagerly (it loads cuBLAS's and our kernels lazily,
//!   which must not happen under capture), the second is captured and launched.
//!   `NEMO_CUDA_GRAPH=0` (or `GpuSession::set_cuda_graph(false)`) runs every step eagerly
//!   with the same kernels in the same order, so eager and replayed logits are equal bit
//!   for bit. Prompt chunks (more than one token) run eagerly. A graph holds the address
//!   of every session buffer and model weight: states are restored by copying into the
//!   session's buffers, never by replacing them, and a session runs only with the model
//!   that made it (checked).
//! - The device draw leaves its id in `bufs.sampled`, where the next decode step reads its
//!   token: decoding after a device draw needs no upload at all. Repetition and presence
//!   penalties need the token history (host side): the device-sampling entry points refuse
//!   them; callers that need them take the logits (`decode_logits`) and sample on the host.
//!
//! The weights come from a `WeightSource`: a loaded checkpoint's `WeightStore` (the same
//! tensor names `model::NemotronH::load` reads) or random values for `nemo bench`.

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};
use half::{bf16, f16};
use thiserror::Error;

use super::attention::{DevicePosition, GpuKvCache};
use super::mamba2::{GpuMamba2, MambaScratch};
use super::moe_layer::{GpuMoe, MoeBuffers};
use super::sampling::{self, DrawArgs, SampleArgs};
use super::ssm::ScanShape;
pub use super::weights::{RandomWeights, StoreWeights, WeightSource};
use super::{conv1d, elementwise, embedding, gemm, norm, ssm, CudaError, Gpu, KernelDtype};
use crate::backend::DType;
use crate::model::{LayerKind, Logits, ModelError, NemotronHConfig};
use crate::state::CacheConfig;

#[derive(Debug, Error)]
pub enum GpuModelError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Unsupported(String),
}

fn drv(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

struct AttentionLayer {
    q_proj: CudaSlice<bf16>,
    k_proj: CudaSlice<bf16>,
    v_proj: CudaSlice<bf16>,
    o_proj: CudaSlice<bf16>,
}

struct MlpLayer {
    up: CudaSlice<bf16>,
    down: CudaSlice<bf16>,
    up_bias: Option<CudaSlice<f32>>,
    down_bias: Option<CudaSlice<f32>>,
}

enum GpuMixer {
    Mamba2(Box<GpuMamba2>),
    Attention(AttentionLayer),
    Mlp(MlpLayer),
    Moe(Box<GpuMoe>),
}

struct GpuBlock {
    norm: CudaSlice<f32>,
    mixer: GpuMixer,
}

/// Tells models apart, so a session is never run (or its graph replayed) with another
/// model's weights.
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

pub struct GpuNemotronH {
    pub config: NemotronHConfig,
    id: u64,
    embeddings: CudaSlice<bf16>,
    layers: Vec<GpuBlock>,
    norm_f: CudaSlice<f32>,
    /// None when tied to the embedding table (which the head GEMM then reads).
    lm_head: Option<CudaSlice<bf16>>,
    /// Bytes of weights on the device.
    pub weight_bytes: usize,
    /// Bytes of MoE weights a decode step does not read (the experts it does not choose).
    moe_unread: usize,
}

/// How big a session's buffers are.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Most positions a session holds (KV cache capacity).
    pub max_context: usize,
    /// Most tokens one forward step processes (prompts are cut into chunks of this size).
    pub prefill_chunk: usize,
}

/// One sequence's device state (`conv` `[k-1, conv_dim]` f32; `ssm` `[heads, head_dim,
/// d_state]` in the chosen dtype).
pub(super) enum SsmBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

pub(super) enum GpuLayerState {
    Mamba { conv: CudaSlice<f32>, ssm: SsmBuf },
    Attention(Box<GpuKvCache>),
    Stateless,
}

/// Activation buffers, each sized for `Plan::prefill_chunk` tokens.
struct Buffers {
    ids: CudaSlice<u32>,
    x: CudaSlice<f32>,
    normed: CudaSlice<bf16>,
    mixed: CudaSlice<f32>,
    zxbcdt: CudaSlice<f32>,
    xbc: CudaSlice<f32>,
    y: CudaSlice<f32>,
    /// bf16 input of the second GEMM of a mixer (gated y, attention output, relu²).
    inner: CudaSlice<bf16>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    hidden: CudaSlice<f32>,
    last: CudaSlice<bf16>,
    logits: CudaSlice<f32>,
    /// Scratch of the MoE layers (one set serves them all); None without `E` layers.
    moe: Option<MoeBuffers>,
    /// A decode step's token: the step reads it here and the device draw writes the next
    /// one here, so decoding after a draw needs no upload.
    sampled: CudaSlice<u32>,
    /// The draw's knobs and uniform, written by the host before each step that draws.
    args: CudaSlice<DrawArgs>,
}

/// How a decode step ends: at the logits, or at the device draw after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Logits = 0,
    Draw = 1,
}

/// One ending's decode graph: none run yet, run once eagerly (kernels loaded), captured.
enum GraphSlot {
    Cold,
    Warm,
    Ready(StepGraph),
}

/// A captured decode step.
struct StepGraph(CudaGraph);

// SAFETY: a graph exec may be launched from any thread as long as no two threads use it at
// once; it is only reached through `&mut GpuSession`, which rules that out.
unsafe impl Send for StepGraph {}

// A session (graphs included) may move to the engine's thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<GpuSession>();
};

pub struct GpuSession {
    pub plan: Plan,
    pub cache: CacheConfig,
    pub(super) layers: Vec<GpuLayerState>,
    bufs: Buffers,
    /// Positions fed: on the device (what the kernels read) and its host mirror.
    pub(super) pos: DevicePosition,
    /// Per `Ending`.
    graphs: [GraphSlot; 2],
    use_graph: bool,
    /// Whether `bufs.sampled` holds a token the device drew and nothing has been fed since.
    drawn: bool,
    model_id: u64,
}

impl GpuSession {
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
        self.drawn = false;
        Ok(())
    }

    /// Back to `len` positions: every KV cache keeps positions `0..len` (the device and
    /// host position are set to `len`; later positions are overwritten as they are fed
    /// again). The Mamba conv and SSM states are NOT touched: they hold no per-position
    /// history, so the caller restores the ones it saved at `len`. Captured decode graphs
    /// stay valid (they read the position on the device).
    pub fn rewind(&mut self, gpu: &Gpu, len: usize) -> Result<(), CudaError> {
        if len > self.len() {
            return Err(CudaError::Unsupported {
                op: "rewind",
                why: format!("to {len} positions, but the session holds {}", self.len()),
            });
        }
        self.pos.set(gpu, len)?;
        self.drawn = false;
        Ok(())
    }

    /// Captures and replays decode steps as CUDA graphs (`true`, the default unless
    /// `NEMO_CUDA_GRAPH=0`) or runs them eagerly; the same kernels either way.
    pub fn set_cuda_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graphs = [GraphSlot::Cold, GraphSlot::Cold];
        }
    }

    /// Whether decode steps run as CUDA graphs.
    pub fn cuda_graph(&self) -> bool {
        self.use_graph
    }

    /// Bytes of state one decode step reads at the current length: every Mamba layer's
    /// conv window and SSM state, every KV cache's `len` positions (and their FP8 scales).
    pub fn state_bytes_read(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                GpuLayerState::Mamba { conv, ssm } => {
                    conv.len() * 4
                        + match ssm {
                            SsmBuf::F32(s) => s.len() * 4,
                            SsmBuf::F16(s) => s.len() * 2,
                            SsmBuf::BF16(s) => s.len() * 2,
                        }
                }
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
}

fn opt_upload(gpu: &Gpu, v: Option<Vec<f32>>) -> Result<Option<CudaSlice<f32>>, CudaError> {
    v.map(|b| gpu.upload(&b)).transpose()
}

fn tensor_prefix(w: &dyn WeightSource) -> &'static str {
    if w.contains("backbone.embeddings.weight") || w.contains("backbone.embed_tokens.weight") {
        "backbone"
    } else {
        "model"
    }
}

impl GpuNemotronH {
    /// Uploads the model `cfg` describes from `w` (the tensor names `NemotronH::load`
    /// reads). Checks every kernel's `supports()` for these shapes first.
    pub fn load(
        gpu: &Gpu,
        cfg: &NemotronHConfig,
        w: &mut dyn WeightSource,
    ) -> Result<Self, GpuModelError> {
        Self::check(cfg)?;
        let pre = tensor_prefix(w);
        let (hs, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let emb = if w.contains(&format!("{pre}.embeddings.weight")) {
            format!("{pre}.embeddings.weight")
        } else {
            format!("{pre}.embed_tokens.weight")
        };
        let embeddings = w.matrix(gpu, &emb, &[vocab, hs])?;
        let mut bytes = embeddings.len() * 2;
        let mut moe_unread = 0;
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (i, kind) in cfg.layers.iter().enumerate() {
            let p = format!("{pre}.layers.{i}");
            let norm = gpu.upload(&w.vector(&format!("{p}.norm.weight"), &[hs], false)?)?;
            let m = format!("{p}.mixer");
            let mut mat = |w: &mut dyn WeightSource, name: &str, shape: &[usize]| {
                let t = w.matrix(gpu, &format!("{m}.{name}"), shape)?;
                bytes += t.len() * 2;
                Ok::<_, GpuModelError>(t)
            };
            let mixer = match kind {
                LayerKind::Mamba2 => {
                    let (h, di, cd, k, pd) = (
                        cfg.mamba_num_heads,
                        cfg.d_inner(),
                        cfg.conv_dim(),
                        cfg.conv_kernel,
                        cfg.in_proj_dim(),
                    );
                    let in_proj = mat(w, "in_proj.weight", &[pd, hs])?;
                    let out_proj = mat(w, "out_proj.weight", &[hs, di])?;
                    let bias = |w: &mut dyn WeightSource, name: &str, n: usize, on: bool| {
                        let full = format!("{m}.{name}");
                        if on || w.contains(&full) {
                            w.vector(&full, &[n], false).map(Some)
                        } else {
                            Ok(None)
                        }
                    };
                    let in_b = bias(w, "in_proj.bias", pd, cfg.use_bias)?;
                    let out_b = bias(w, "out_proj.bias", hs, cfg.use_bias)?;
                    let a_log = w.vector(&format!("{m}.A_log"), &[h], true)?;
                    let a: Vec<f32> = a_log.iter().map(|x| -x.exp()).collect();
                    let conv_b = if cfg.use_conv_bias {
                        w.vector(&format!("{m}.conv1d.bias"), &[cd], false)?
                    } else {
                        vec![0.0; cd]
                    };
                    GpuMixer::Mamba2(Box::new(
                        GpuMamba2 {
                            shape: ScanShape {
                                heads: h,
                                head_dim: cfg.mamba_head_dim,
                                d_state: cfg.ssm_state_size,
                                n_groups: cfg.n_groups,
                            },
                            hidden: hs,
                            conv_kernel: k,
                            chunk_size: cfg.chunk_size,
                            time_step_min: cfg.time_step_min,
                            eps: cfg.layer_norm_epsilon,
                            in_proj,
                            in_proj_bias: opt_upload(gpu, in_b)?,
                            conv_w: gpu.upload(&w.vector(
                                &format!("{m}.conv1d.weight"),
                                &[cd, 1, k],
                                true,
                            )?)?,
                            conv_b: gpu.upload(&conv_b)?,
                            dt_bias: gpu.upload(&w.vector(
                                &format!("{m}.dt_bias"),
                                &[h],
                                true,
                            )?)?,
                            a: gpu.upload(&a)?,
                            d: gpu.upload(&w.vector(&format!("{m}.D"), &[h], true)?)?,
                            norm_w: gpu.upload(&w.vector(
                                &format!("{m}.norm.weight"),
                                &[di],
                                false,
                            )?)?,
                            out_proj,
                            out_proj_bias: opt_upload(gpu, out_b)?,
                        }
                        .checked()?,
                    ))
                }
                LayerKind::Attention => {
                    let (nh, nkv, hd) = (
                        cfg.num_attention_heads,
                        cfg.num_key_value_heads,
                        cfg.head_dim,
                    );
                    GpuMixer::Attention(AttentionLayer {
                        q_proj: mat(w, "q_proj.weight", &[nh * hd, hs])?,
                        k_proj: mat(w, "k_proj.weight", &[nkv * hd, hs])?,
                        v_proj: mat(w, "v_proj.weight", &[nkv * hd, hs])?,
                        o_proj: mat(w, "o_proj.weight", &[hs, nh * hd])?,
                    })
                }
                LayerKind::Mlp => {
                    let is = cfg.intermediate_size;
                    let up = mat(w, "up_proj.weight", &[is, hs])?;
                    let down = mat(w, "down_proj.weight", &[hs, is])?;
                    let bias = |w: &mut dyn WeightSource, name: &str, n: usize| {
                        let full = format!("{m}.{name}");
                        if cfg.mlp_bias || w.contains(&full) {
                            w.vector(&full, &[n], false).map(Some)
                        } else {
                            Ok(None)
                        }
                    };
                    let ub = bias(w, "up_proj.bias", is)?;
                    let db = bias(w, "down_proj.bias", hs)?;
                    GpuMixer::Mlp(MlpLayer {
                        up,
                        down,
                        up_bias: opt_upload(gpu, ub)?,
                        down_bias: opt_upload(gpu, db)?,
                    })
                }
                LayerKind::Moe => {
                    let moe = GpuMoe::load(gpu, cfg, w, &m)?;
                    bytes += moe.weight_bytes();
                    moe_unread += moe.weight_bytes() - moe.bytes_per_token();
                    GpuMixer::Moe(Box::new(moe))
                }
            };
            layers.push(GpuBlock { norm, mixer });
        }
        let norm_f_name = if w.contains(&format!("{pre}.norm_f.weight")) {
            format!("{pre}.norm_f.weight")
        } else {
            format!("{pre}.norm.weight")
        };
        let norm_f = gpu.upload(&w.vector(&norm_f_name, &[hs], false)?)?;
        let lm_head = if w.contains("lm_head.weight") || !cfg.tie_word_embeddings {
            let t = w.matrix(gpu, "lm_head.weight", &[vocab, hs])?;
            bytes += t.len() * 2;
            Some(t)
        } else {
            None
        };
        Ok(GpuNemotronH {
            config: cfg.clone(),
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
            embeddings,
            layers,
            norm_f,
            lm_head,
            weight_bytes: bytes,
            moe_unread,
        })
    }

    /// Whether every layer of `cfg` can run on the GPU (kernel limits, layer kinds).
    pub fn check(cfg: &NemotronHConfig) -> Result<(), GpuModelError> {
        if cfg.layers.contains(&LayerKind::Moe) {
            GpuMoe::supports(cfg)?;
        }
        embedding::supports(cfg.hidden_size)?;
        norm::supports_rms(cfg.hidden_size)?;
        sampling::supports(cfg.vocab_size)?;
        if cfg.layers.contains(&LayerKind::Mamba2) {
            let s = ScanShape {
                heads: cfg.mamba_num_heads,
                head_dim: cfg.mamba_head_dim,
                d_state: cfg.ssm_state_size,
                n_groups: cfg.n_groups,
            };
            ssm::supports_scan(&s, cfg.chunk_size)?;
            conv1d::supports(cfg.conv_dim(), cfg.conv_kernel, 1)?;
            norm::supports_gated(cfg.d_inner(), cfg.d_inner() / cfg.n_groups.max(1))?;
        }
        if cfg.layers.contains(&LayerKind::Attention) {
            super::attention::supports(
                DType::BF16,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim,
            )?;
        }
        Ok(())
    }

    /// Bytes of weights one decode step reads: all but the embedding table, of which one
    /// row (all of it when it is also the LM head), and of the MoE experts only the
    /// chosen ones.
    pub fn weight_bytes_per_token(&self) -> usize {
        let dense = match self.lm_head {
            Some(_) => self.weight_bytes - self.embeddings.len() * 2 + self.config.hidden_size * 2,
            None => self.weight_bytes,
        };
        dense - self.moe_unread
    }

    fn head(&self) -> &CudaSlice<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embeddings)
    }

    /// A session: state and buffers for `plan`, allocated now and never again.
    pub fn new_session(
        &self,
        gpu: &Gpu,
        cache: CacheConfig,
        plan: Plan,
    ) -> Result<GpuSession, GpuModelError> {
        let c = &self.config;
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
            graphs: [GraphSlot::Cold, GraphSlot::Cold],
            use_graph: std::env::var("NEMO_CUDA_GRAPH").map_or(true, |v| v.trim() != "0"),
            drawn: false,
            model_id: self.id,
        })
    }

    /// Feeds `tokens` after the session's current position (in chunks of
    /// `plan.prefill_chunk`) and returns logits `[positions, vocab]` as `want` asks. One
    /// token is a decode step (a replayed graph unless graphs are off); its logits are
    /// computed whatever `want` says.
    pub fn forward(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
        want: Logits,
    ) -> Result<Vec<f32>, GpuModelError> {
        self.check_session(s)?;
        let vocab = self.config.vocab_size;
        embedding::check_ids(tokens, vocab)?;
        if let [token] = tokens {
            self.set_token(gpu, s, *token)?;
            self.decode(gpu, s, Ending::Logits)?;
            return Ok(match want {
                Logits::None => Vec::new(),
                Logits::Last | Logits::All => gpu.download(&s.bufs.logits)?,
            });
        }
        let mut out = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(s.plan.prefill_chunk).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let last = ci + 1 == chunks.len();
            self.step(gpu, s, chunk, false)?;
            match want {
                Logits::None => {}
                Logits::Last if !last => {}
                Logits::Last => {
                    self.last_logits(gpu, s, chunk.len())?;
                    out = gpu.download(&s.bufs.logits)?;
                }
                Logits::All => {
                    let n = chunk.len();
                    let mut l = gpu.zeros::<f32>(n * vocab)?;
                    gemm::matmul_bf16(
                        gpu,
                        &s.bufs.normed,
                        n,
                        self.head(),
                        vocab,
                        self.config.hidden_size,
                        &mut l,
                        0.0,
                    )?;
                    out.extend(gpu.download(&l)?);
                }
            }
        }
        Ok(out)
    }

    /// Like `forward` with `Logits::Last`, then draws the next token on the device from
    /// those logits (`u` ∈ [0, 1) from the caller's seeded generator); only the id comes
    /// back, and it stays on the device as the next decode step's token
    /// (`decode_next(.., None, ..)`). Temperature 0 is greedy (argmax). Penalties are
    /// refused (see the module doc).
    pub fn forward_sample(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
        args: &SampleArgs,
        u: f32,
    ) -> Result<u32, GpuModelError> {
        self.check_session(s)?;
        if tokens.is_empty() {
            return Err(GpuModelError::Unsupported(
                "forward_sample needs at least one token".into(),
            ));
        }
        check_device_sampling(args)?;
        embedding::check_ids(tokens, self.config.vocab_size)?;
        if let [token] = tokens {
            self.set_token(gpu, s, *token)?;
            return self.draw_step(gpu, s, args, &[], u);
        }
        self.forward_keep(gpu, s, tokens)?;
        self.draw(gpu, s, args, &[], u)
    }

    /// One decode step that ends in the device draw: feeds `token`, or with `None` the id
    /// the previous device draw left on the device (no upload), masks `banned` (at most
    /// `sampling::MAX_DEVICE_BANS`), and returns the drawn id. Per token the host writes
    /// the draw's args (one 88-byte copy; plus 4 bytes for a given token), launches the
    /// step's graph, and reads back the 4-byte id.
    pub fn decode_next(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        token: Option<u32>,
        args: &SampleArgs,
        banned: &[u32],
        u: f32,
    ) -> Result<u32, GpuModelError> {
        self.check_session(s)?;
        check_device_sampling(args)?;
        match token {
            Some(t) => {
                embedding::check_ids(&[t], self.config.vocab_size)?;
                self.set_token(gpu, s, t)?;
            }
            None if s.drawn => {}
            None => {
                return Err(GpuModelError::Unsupported(
                    "decode_next without a token needs a token drawn on the device just before"
                        .into(),
                ))
            }
        }
        self.draw_step(gpu, s, args, banned, u)
    }

    /// One decode step that ends at the logits, for callers that sample on the host:
    /// feeds `token` (one 4-byte copy), launches the step's graph, downloads the logits.
    pub fn decode_logits(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        token: u32,
    ) -> Result<Vec<f32>, GpuModelError> {
        self.forward(gpu, s, &[token], Logits::Last)
    }

    /// Like `forward` with `Logits::Last`, but the last position's logits stay on the
    /// device (`bufs.logits`), for `draw` or `last_logits_to_host`: nothing comes back.
    /// One token is the decode step's graph with the logits ending (no copy back).
    pub fn forward_keep(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
    ) -> Result<(), GpuModelError> {
        self.check_session(s)?;
        embedding::check_ids(tokens, self.config.vocab_size)?;
        if let [token] = tokens {
            self.set_token(gpu, s, *token)?;
            return self.decode(gpu, s, Ending::Logits);
        }
        if tokens.is_empty() {
            return Err(GpuModelError::Unsupported(
                "forward_keep needs at least one token".into(),
            ));
        }
        let mut n = 0;
        for chunk in tokens.chunks(s.plan.prefill_chunk) {
            self.step(gpu, s, chunk, false)?;
            n = chunk.len();
        }
        Ok(self.last_logits(gpu, s, n)?)
    }

    /// Draws one token on the device from the logits the last `forward_keep` left there:
    /// writes the draw's args (one 88-byte copy: knobs, `u` ∈ [0, 1) from the caller's
    /// seeded generator, `banned`, at most `sampling::MAX_DEVICE_BANS`), masks the bans
    /// (in place, like the CPU), draws, and reads back the 4-byte id. The id also stays on
    /// the device as the next decode step's token. Penalties are refused (module doc).
    pub fn draw(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        args: &SampleArgs,
        banned: &[u32],
        u: f32,
    ) -> Result<u32, GpuModelError> {
        self.check_session(s)?;
        check_device_sampling(args)?;
        let b = &mut s.bufs;
        sampling::write_args(gpu, args, u, banned, &mut b.args)?;
        sampling::draw(
            gpu,
            &mut b.logits,
            self.config.vocab_size,
            &b.args,
            &mut b.sampled,
        )?;
        s.drawn = true;
        Ok(self.read_sampled(gpu, s)?)
    }

    /// Like `draw`, for what the graph-capturable draw does not take: repetition/presence
    /// penalties over `history` (the sequence's tokens; deduplicated and uploaded here) and
    /// any number of bans (uploaded). Eager: it allocates and uploads, then waits for the
    /// id. Only the id comes back; the logits stay on the device.
    pub fn draw_with_history(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        args: &SampleArgs,
        history: &[u32],
        banned: &[u32],
        u: f32,
    ) -> Result<u32, GpuModelError> {
        self.check_session(s)?;
        let b = &mut s.bufs;
        let id = sampling::sample_with(
            gpu,
            &mut b.logits,
            self.config.vocab_size,
            args,
            history,
            banned,
            u,
            &mut b.args,
            &mut b.sampled,
        )?;
        s.drawn = true;
        Ok(id)
    }

    /// The logits the last `forward_keep` left on the device, copied to the host.
    pub fn last_logits_to_host(
        &self,
        gpu: &Gpu,
        s: &GpuSession,
    ) -> Result<Vec<f32>, GpuModelError> {
        self.check_session(s)?;
        Ok(gpu.download(&s.bufs.logits)?)
    }

    fn check_session(&self, s: &GpuSession) -> Result<(), GpuModelError> {
        if s.model_id != self.id {
            return Err(GpuModelError::Unsupported(
                "this GPU session was made by another model".into(),
            ));
        }
        Ok(())
    }

    /// Queues `token` into `bufs.sampled`, the decode step's input.
    fn set_token(&self, gpu: &Gpu, s: &mut GpuSession, token: u32) -> Result<(), CudaError> {
        gpu.stream
            .memcpy_htod(&[token], &mut s.bufs.sampled)
            .map_err(drv)?;
        s.drawn = false;
        Ok(())
    }

    /// Writes the draw's args, runs a decode step ending in the draw, returns the id.
    fn draw_step(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        args: &SampleArgs,
        banned: &[u32],
        u: f32,
    ) -> Result<u32, GpuModelError> {
        sampling::write_args(gpu, args, u, banned, &mut s.bufs.args)?;
        self.decode(gpu, s, Ending::Draw)?;
        s.drawn = true;
        Ok(self.read_sampled(gpu, s)?)
    }

    /// The one sync of a step: the 4-byte id.
    fn read_sampled(&self, gpu: &Gpu, s: &GpuSession) -> Result<u32, CudaError> {
        gpu.download(&s.bufs.sampled)?
            .first()
            .copied()
            .ok_or_else(|| CudaError::Driver("sample: empty result buffer".into()))
    }

    /// Final-normed row `n - 1` of the last chunk through the LM head into `bufs.logits`.
    fn last_logits(&self, gpu: &Gpu, s: &mut GpuSession, n: usize) -> Result<(), CudaError> {
        let hs = self.config.hidden_size;
        let b = &mut s.bufs;
        let src = b.normed.slice((n - 1) * hs..n * hs);
        gpu.stream.memcpy_dtod(&src, &mut b.last).map_err(drv)?;
        gemm::matmul_bf16(
            gpu,
            &b.last,
            1,
            self.head(),
            self.config.vocab_size,
            hs,
            &mut b.logits,
            0.0,
        )
    }

    /// One decode step on the token in `bufs.sampled`, as a graph (captured on the
    /// second step of this ending, replayed after) or eagerly; then the host mirror of
    /// the position moves on.
    fn decode(&self, gpu: &Gpu, s: &mut GpuSession, ending: Ending) -> Result<(), GpuModelError> {
        if s.len() + 1 > s.plan.max_context {
            return Err(GpuModelError::Unsupported(format!(
                "{} + 1 positions exceed the session's context of {}",
                s.len(),
                s.plan.max_context
            )));
        }
        let i = ending as usize;
        if !s.use_graph {
            self.decode_body(gpu, s, ending)?;
        } else {
            let slot = std::mem::replace(&mut s.graphs[i], GraphSlot::Cold);
            s.graphs[i] = match slot {
                GraphSlot::Cold => {
                    self.decode_body(gpu, s, ending)?;
                    GraphSlot::Warm
                }
                GraphSlot::Warm => {
                    let g = self.capture(gpu, s, ending)?;
                    g.0.launch().map_err(drv)?;
                    GraphSlot::Ready(g)
                }
                GraphSlot::Ready(g) => {
                    g.0.launch().map_err(drv)?;
                    GraphSlot::Ready(g)
                }
            };
        }
        s.pos.note_advanced(1);
        Ok(())
    }

    /// Records one decode step into a graph (nothing runs until it is launched).
    fn capture(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        ending: Ending,
    ) -> Result<StepGraph, GpuModelError> {
        // Thread-local: a call that is illegal under capture (an allocation, a sync) made
        // by this thread fails the capture instead of slipping in; other threads are free.
        gpu.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv)?;
        let body = self.decode_body(gpu, s, ending);
        let graph = gpu.stream.end_capture(CUgraphInstantiate_flags(0));
        body?;
        let graph = graph
            .map_err(drv)?
            .ok_or_else(|| CudaError::Driver("the captured decode step is empty".into()))?;
        Ok(StepGraph(graph))
    }

    /// The decode step's device work, in order: embedding of `bufs.sampled` → every layer
    /// (recurrent Mamba step, KV append at `pos` + decode attention over `0..=pos`, MLP) →
    /// final norm → LM head into `bufs.logits` → (Draw) the device draw into
    /// `bufs.sampled` → `pos += 1`. Queues work only; touches no host state.
    fn decode_body(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        ending: Ending,
    ) -> Result<(), GpuModelError> {
        let c = &self.config;
        let (hs, vocab) = (c.hidden_size, c.vocab_size);
        let b = &mut s.bufs;
        embedding::gather(gpu, &self.embeddings, vocab, hs, &b.sampled, 1, &mut b.x)?;
        self.layers_and_norm(gpu, &mut s.layers, b, &s.pos, 1, true)?;
        gemm::matmul_bf16(
            gpu,
            &b.normed,
            1,
            self.head(),
            vocab,
            hs,
            &mut b.logits,
            0.0,
        )?;
        if ending == Ending::Draw {
            sampling::draw(gpu, &mut b.logits, vocab, &b.args, &mut b.sampled)?;
        }
        s.pos.record_advance(gpu, 1)?;
        Ok(())
    }

    /// One chunk of at most `plan.prefill_chunk` host tokens (already checked against the
    /// vocabulary) through every layer, eagerly; leaves the final-normed rows (bf16) in
    /// `bufs.normed` and moves the position on.
    fn step(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
        decode: bool,
    ) -> Result<(), GpuModelError> {
        let c = &self.config;
        let (hs, vocab) = (c.hidden_size, c.vocab_size);
        let n = tokens.len();
        if n == 0 {
            return Ok(());
        }
        if n > s.plan.prefill_chunk {
            return Err(GpuModelError::Unsupported(format!(
                "{n} tokens in one step (the plan's chunk is {})",
                s.plan.prefill_chunk
            )));
        }
        if s.len() + n > s.plan.max_context {
            return Err(GpuModelError::Unsupported(format!(
                "{} + {n} positions exceed the session's context of {}",
                s.len(),
                s.plan.max_context
            )));
        }
        let b = &mut s.bufs;
        {
            let mut ids = b.ids.slice_mut(0..n);
            gpu.stream.memcpy_htod(tokens, &mut ids).map_err(drv)?;
        }
        embedding::gather(gpu, &self.embeddings, vocab, hs, &b.ids, n, &mut b.x)?;
        self.layers_and_norm(gpu, &mut s.layers, b, &s.pos, n, decode)?;
        s.pos.advance(gpu, n)?;
        s.drawn = false;
        Ok(())
    }

    /// `n` rows of `bufs.x` (the embeddings) through every layer (fused residual add +
    /// RMSNorm, then the mixer) and the final norm into `bufs.normed`, at positions
    /// `pos ..pos + n`.
    fn layers_and_norm(
        &self,
        gpu: &Gpu,
        layers: &mut [GpuLayerState],
        b: &mut Buffers,
        pos: &DevicePosition,
        n: usize,
        decode: bool,
    ) -> Result<(), GpuModelError> {
        let c = &self.config;
        let (hs, eps) = (c.hidden_size, c.layer_norm_epsilon);
        for (i, (block, state)) in self.layers.iter().zip(layers.iter_mut()).enumerate() {
            // x += previous mixer output; normed = bf16(rmsnorm(x) · w).
            norm::rms_norm_residual(
                gpu,
                &mut b.x,
                (i > 0).then_some(&b.mixed),
                &block.norm,
                None,
                Some(&mut b.normed),
                n,
                hs,
                eps,
            )?;
            match (&block.mixer, state) {
                (GpuMixer::Mamba2(m), GpuLayerState::Mamba { conv, ssm }) => match ssm {
                    SsmBuf::F32(st) => self.mamba(gpu, m, b, n, decode, conv, st)?,
                    SsmBuf::F16(st) => self.mamba(gpu, m, b, n, decode, conv, st)?,
                    SsmBuf::BF16(st) => self.mamba(gpu, m, b, n, decode, conv, st)?,
                },
                (GpuMixer::Attention(a), GpuLayerState::Attention(kv)) => {
                    self.attention(gpu, a, b, n, decode, kv, pos)?
                }
                (GpuMixer::Mlp(m), _) => self.mlp(gpu, m, b, n)?,
                (GpuMixer::Moe(m), _) => {
                    let mb = b.moe.as_mut().ok_or_else(|| {
                        GpuModelError::Unsupported("session was planned without MoE buffers".into())
                    })?;
                    m.forward(gpu, mb, &b.normed, n, &mut b.mixed)?
                }
                _ => {
                    return Err(GpuModelError::Unsupported(
                        "session state does not match the model's layers".into(),
                    ))
                }
            }
        }
        norm::rms_norm_residual(
            gpu,
            &mut b.x,
            (!self.layers.is_empty()).then_some(&b.mixed),
            &self.norm_f,
            None,
            Some(&mut b.normed),
            n,
            hs,
            eps,
        )?;
        Ok(())
    }

    /// `mixed = mamba2(normed)` on the session's buffers (`GpuMamba2::forward_with`, the
    /// one composition of the mixer).
    #[allow(clippy::too_many_arguments)]
    fn mamba<T: KernelDtype>(
        &self,
        gpu: &Gpu,
        m: &GpuMamba2,
        b: &mut Buffers,
        n: usize,
        decode: bool,
        conv: &mut CudaSlice<f32>,
        st: &mut CudaSlice<T>,
    ) -> Result<(), CudaError> {
        let scratch = MambaScratch {
            zxbcdt: &mut b.zxbcdt,
            xbc: &mut b.xbc,
            y: &mut b.y,
            inner: &mut b.inner,
        };
        m.forward_with(gpu, &b.normed, n, decode, conv, st, scratch, &mut b.mixed)
    }

    /// `mixed = o_proj(attend(q, cache ++ k/v))`; Nemotron-H attention has no RoPE. The
    /// new k/v go to positions `pos ..pos + n`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        gpu: &Gpu,
        a: &AttentionLayer,
        b: &mut Buffers,
        n: usize,
        decode: bool,
        kv: &mut GpuKvCache,
        pos: &DevicePosition,
    ) -> Result<(), CudaError> {
        let c = &self.config;
        let hs = c.hidden_size;
        let (qd, kvd) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        gemm::matmul_bf16(gpu, &b.normed, n, &a.q_proj, qd, hs, &mut b.q, 0.0)?;
        gemm::matmul_bf16(gpu, &b.normed, n, &a.k_proj, kvd, hs, &mut b.k, 0.0)?;
        gemm::matmul_bf16(gpu, &b.normed, n, &a.v_proj, kvd, hs, &mut b.v, 0.0)?;
        kv.append(gpu, &b.k, &b.v, n, pos)?;
        if decode {
            kv.decode(gpu, &b.q, &mut b.attn, Some(&mut b.inner), pos)?;
        } else {
            kv.prefill(gpu, &b.q, n, pos.get(), &mut b.attn, Some(&mut b.inner))?;
        }
        gemm::matmul_bf16(gpu, &b.inner, n, &a.o_proj, hs, qd, &mut b.mixed, 0.0)
    }

    /// `mixed = down(relu(up(normed))²)`.
    fn mlp(&self, gpu: &Gpu, m: &MlpLayer, b: &mut Buffers, n: usize) -> Result<(), CudaError> {
        let c = &self.config;
        let (hs, is) = (c.hidden_size, c.intermediate_size);
        gemm::matmul_bf16(gpu, &b.normed, n, &m.up, is, hs, &mut b.hidden, 0.0)?;
        if let Some(bias) = &m.up_bias {
            elementwise::bias_add(gpu, &mut b.hidden, bias, n, is)?;
        }
        elementwise::relu2(gpu, &mut b.hidden, Some(&mut b.inner), n * is)?;
        gemm::matmul_bf16(gpu, &b.inner, n, &m.down, hs, is, &mut b.mixed, 0.0)?;
        if let Some(bias) = &m.down_bias {
            elementwise::bias_add(gpu, &mut b.mixed, bias, n, hs)?;
        }
        Ok(())
    }
}

/// The device draw has no token history: penalties are refused, in one line.
fn check_device_sampling(args: &SampleArgs) -> Result<(), GpuModelError> {
    if args.has_penalties() {
        return Err(GpuModelError::Unsupported(
            "repetition/presence penalties need the token history: take the logits \
             (decode_logits) and sample on the host"
                .into(),
        ));
    }
    Ok(())
}
