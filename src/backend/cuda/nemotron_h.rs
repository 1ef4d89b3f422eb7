//! The whole Nemotron-H forward pass on the GPU; oracle `model::NemotronH::forward` (same
//! blocks, same order, same layouts): embedding gather → for each layer the fused residual
//! add + RMSNorm, then its mixer (Mamba2, attention or relu² MLP) → final norm → LM head.
//!
//! Invariants:
//! - Weights live on the device as bf16 (GEMM operands: projections, embedding table, LM
//!   head; f32/f16 checkpoints are rounded to nearest even on upload) and f32 (norms, conv,
//!   dt_bias, A, D, biases). Quantized (GGUF blocks) and FP8 weights are refused with one
//!   line; so are MoE (`E`) layers, until their expert GEMMs exist. Never a CPU fallback.
//! - A `GpuSession` holds one sequence: the Mamba conv + SSM states (SSM in f32/f16/bf16),
//!   the KV caches (`[max_context, kv_heads, head_dim]` in f32/f16/bf16/FP8 + scales), and
//!   every activation buffer, all allocated once for `Plan::prefill_chunk` tokens. Prompts
//!   are fed in chunks of that many tokens, so a long prompt needs no memory for all of it.
//! - A call with one token takes the recurrent (decode) form of the Mamba layers and the
//!   decode attention kernel, more tokens the chunked scan and causal prefill — the same
//!   rule as the CPU, decided on the whole call, not per chunk.
//! - GEMM inputs are bf16 (the normed residual, the gated y, the attention output, relu²
//!   output); everything else, the residual stream included, stays f32.
//!
//! The weights come from a `WeightSource`: a loaded checkpoint's `WeightStore` (the same
//! tensor names `model::NemotronH::load` reads) or random values for `nemo bench`.

use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use thiserror::Error;

use super::attention::GpuKvCache;
use super::sampling::{self, SampleArgs};
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

struct MambaLayer {
    shape: ScanShape,
    in_proj: CudaSlice<bf16>,
    in_proj_bias: Option<CudaSlice<f32>>,
    conv_w: CudaSlice<f32>,
    conv_b: CudaSlice<f32>,
    dt_bias: CudaSlice<f32>,
    a: CudaSlice<f32>,
    d: CudaSlice<f32>,
    norm_w: CudaSlice<f32>,
    out_proj: CudaSlice<bf16>,
    out_proj_bias: Option<CudaSlice<f32>>,
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
    Mamba2(Box<MambaLayer>),
    Attention(AttentionLayer),
    Mlp(MlpLayer),
}

struct GpuBlock {
    norm: CudaSlice<f32>,
    mixer: GpuMixer,
}

pub struct GpuNemotronH {
    pub config: NemotronHConfig,
    embeddings: CudaSlice<bf16>,
    layers: Vec<GpuBlock>,
    norm_f: CudaSlice<f32>,
    /// None when tied to the embedding table (which the head GEMM then reads).
    lm_head: Option<CudaSlice<bf16>>,
    /// Bytes of weights on the device.
    pub weight_bytes: usize,
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
    sampled: CudaSlice<u32>,
}

pub struct GpuSession {
    pub plan: Plan,
    pub cache: CacheConfig,
    pub(super) layers: Vec<GpuLayerState>,
    bufs: Buffers,
    pub(super) len: usize,
}

impl GpuSession {
    /// Positions fed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
                GpuLayerState::Attention(kv) => kv.truncate(0),
                GpuLayerState::Stateless => {}
            }
        }
        self.len = 0;
        Ok(())
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
                    let scales = if matches!(kv.dtype, DType::F8E4M3 | DType::F8E5M2) {
                        2 * kv.len() * kv.kv_heads * 4
                    } else {
                        0
                    };
                    2 * kv.len() * kv.kv_heads * kv.head_dim * kv.dtype.size() + scales
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
                    GpuMixer::Mamba2(Box::new(MambaLayer {
                        shape: ScanShape {
                            heads: h,
                            head_dim: cfg.mamba_head_dim,
                            d_state: cfg.ssm_state_size,
                            n_groups: cfg.n_groups,
                        },
                        in_proj,
                        in_proj_bias: opt_upload(gpu, in_b)?,
                        conv_w: gpu.upload(&w.vector(
                            &format!("{m}.conv1d.weight"),
                            &[cd, 1, k],
                            true,
                        )?)?,
                        conv_b: gpu.upload(&conv_b)?,
                        dt_bias: gpu.upload(&w.vector(&format!("{m}.dt_bias"), &[h], true)?)?,
                        a: gpu.upload(&a)?,
                        d: gpu.upload(&w.vector(&format!("{m}.D"), &[h], true)?)?,
                        norm_w: gpu.upload(&w.vector(
                            &format!("{m}.norm.weight"),
                            &[di],
                            false,
                        )?)?,
                        out_proj,
                        out_proj_bias: opt_upload(gpu, out_b)?,
                    }))
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
                    return Err(GpuModelError::Unsupported(format!(
                        "layer {i} is a MoE layer (`E`): MoE layers are not supported on cuda yet"
                    )))
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
            embeddings,
            layers,
            norm_f,
            lm_head,
            weight_bytes: bytes,
        })
    }

    /// Whether every layer of `cfg` can run on the GPU (kernel limits, layer kinds).
    pub fn check(cfg: &NemotronHConfig) -> Result<(), GpuModelError> {
        if let Some(i) = cfg.layers.iter().position(|k| *k == LayerKind::Moe) {
            return Err(GpuModelError::Unsupported(format!(
                "layer {i} is a MoE layer (`E`): MoE layers are not supported on cuda yet"
            )));
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
    /// row (all of it when it is also the LM head).
    pub fn weight_bytes_per_token(&self) -> usize {
        match self.lm_head {
            Some(_) => self.weight_bytes - self.embeddings.len() * 2 + self.config.hidden_size * 2,
            None => self.weight_bytes,
        }
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
            sampled: gpu.zeros(1)?,
        };
        Ok(GpuSession {
            plan,
            cache,
            layers,
            bufs,
            len: 0,
        })
    }

    /// Feeds `tokens` after the session's current position (in chunks of
    /// `plan.prefill_chunk`) and returns logits `[positions, vocab]` as `want` asks.
    pub fn forward(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
        want: Logits,
    ) -> Result<Vec<f32>, GpuModelError> {
        let vocab = self.config.vocab_size;
        let mut out = Vec::new();
        let decode = tokens.len() == 1;
        let chunks: Vec<&[u32]> = tokens.chunks(s.plan.prefill_chunk).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let last = ci + 1 == chunks.len();
            self.step(gpu, s, chunk, decode)?;
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
    /// back. Temperature 0 is greedy (argmax).
    pub fn forward_sample(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
        args: &SampleArgs,
        u: f32,
    ) -> Result<u32, GpuModelError> {
        if tokens.is_empty() {
            return Err(GpuModelError::Unsupported(
                "forward_sample needs at least one token".into(),
            ));
        }
        let decode = tokens.len() == 1;
        let mut n = 0;
        for chunk in tokens.chunks(s.plan.prefill_chunk) {
            self.step(gpu, s, chunk, decode)?;
            n = chunk.len();
        }
        self.last_logits(gpu, s, n)?;
        let b = &mut s.bufs;
        Ok(sampling::sample(
            gpu,
            &mut b.logits,
            self.config.vocab_size,
            args,
            &[],
            &[],
            u,
            &mut b.sampled,
        )?)
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

    /// One chunk of at most `plan.prefill_chunk` tokens through every layer; leaves the
    /// final-normed rows (bf16) in `bufs.normed`.
    fn step(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
        decode: bool,
    ) -> Result<(), GpuModelError> {
        let c = &self.config;
        let (hs, vocab, eps) = (c.hidden_size, c.vocab_size, c.layer_norm_epsilon);
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
        if s.len + n > s.plan.max_context {
            return Err(GpuModelError::Unsupported(format!(
                "{} + {n} positions exceed the session's context of {}",
                s.len, s.plan.max_context
            )));
        }
        let b = &mut s.bufs;
        {
            let mut ids = b.ids.slice_mut(0..n);
            gpu.stream.memcpy_htod(tokens, &mut ids).map_err(drv)?;
        }
        embedding::gather(gpu, &self.embeddings, vocab, hs, tokens, &b.ids, &mut b.x)?;
        for (i, (block, state)) in self.layers.iter().zip(s.layers.iter_mut()).enumerate() {
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
                    self.attention(gpu, a, b, n, decode, kv)?
                }
                (GpuMixer::Mlp(m), _) => self.mlp(gpu, m, b, n)?,
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
        s.len += n;
        Ok(())
    }

    /// `mixed = out_proj(gated_norm(scan(conv(in_proj(normed)))))`, as `GpuMamba2` but on
    /// the session's buffers.
    #[allow(clippy::too_many_arguments)]
    fn mamba<T: KernelDtype>(
        &self,
        gpu: &Gpu,
        m: &MambaLayer,
        b: &mut Buffers,
        n: usize,
        decode: bool,
        conv: &mut CudaSlice<f32>,
        st: &mut CudaSlice<T>,
    ) -> Result<(), CudaError> {
        let c = &self.config;
        let (hs, di, cd, pd, k) = (
            c.hidden_size,
            c.d_inner(),
            c.conv_dim(),
            c.in_proj_dim(),
            c.conv_kernel,
        );
        gemm::matmul_bf16(gpu, &b.normed, n, &m.in_proj, pd, hs, &mut b.zxbcdt, 0.0)?;
        if let Some(bias) = &m.in_proj_bias {
            elementwise::bias_add(gpu, &mut b.zxbcdt, bias, n, pd)?;
        }
        if decode {
            conv1d::update(
                gpu, &b.zxbcdt, di, conv, &m.conv_w, &m.conv_b, &mut b.xbc, cd, k,
            )?;
            ssm::update(
                gpu,
                &m.shape,
                &b.xbc,
                &b.zxbcdt,
                di + cd,
                &m.dt_bias,
                &m.a,
                &m.d,
                st,
                &mut b.y,
            )?;
        } else {
            conv1d::prefill(
                gpu, &b.zxbcdt, di, pd, conv, &m.conv_w, &m.conv_b, &mut b.xbc, n, cd, k,
            )?;
            ssm::chunk_scan(
                gpu,
                &m.shape,
                n,
                c.chunk_size,
                &b.xbc,
                &b.zxbcdt,
                di + cd,
                pd,
                &m.dt_bias,
                &m.a,
                &m.d,
                c.time_step_min,
                st,
                &mut b.y,
            )?;
        }
        norm::gated_rms_norm(
            gpu,
            &mut b.y,
            &b.zxbcdt,
            0,
            pd,
            &m.norm_w,
            Some(&mut b.inner),
            n,
            di,
            di / c.n_groups,
            c.layer_norm_epsilon,
        )?;
        gemm::matmul_bf16(gpu, &b.inner, n, &m.out_proj, hs, di, &mut b.mixed, 0.0)?;
        if let Some(bias) = &m.out_proj_bias {
            elementwise::bias_add(gpu, &mut b.mixed, bias, n, hs)?;
        }
        Ok(())
    }

    /// `mixed = o_proj(attend(q, cache ++ k/v))`; Nemotron-H attention has no RoPE.
    fn attention(
        &self,
        gpu: &Gpu,
        a: &AttentionLayer,
        b: &mut Buffers,
        n: usize,
        decode: bool,
        kv: &mut GpuKvCache,
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
        kv.append(gpu, &b.k, &b.v, n)?;
        if decode {
            kv.decode(gpu, &b.q, &mut b.attn, Some(&mut b.inner))?;
        } else {
            kv.prefill(gpu, &b.q, n, &mut b.attn, Some(&mut b.inner))?;
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
