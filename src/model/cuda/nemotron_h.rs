//! The whole Nemotron-H forward pass on the GPU; oracle `model::NemotronH::forward` (same
//! blocks, same order, same layouts): embedding gather → for each layer the fused residual
//! add + RMSNorm, then its mixer (Mamba2, attention, relu² MLP or MoE) → final norm → LM
//! head. One sequence's state and buffers are a `session::GpuSession`.
//!
//! Invariants:
//! - Weights live on the device as bf16 (GEMM operands: projections, embedding table, LM
//!   head; f32/f16 checkpoints are rounded to nearest even on upload) and f32 (norms, conv,
//!   dt_bias, A, D, biases, the MoE router). Quantized (GGUF blocks) and FP8 weights are
//!   refused with one line (`check_cuda` decides from the folder alone, before any
//!   upload). Never a CPU fallback. MoE (`E`) layers are `moe_layer::GpuMoe`: a decode
//!   step's experts are read by id on the device (graph-capturable); a prompt chunk syncs
//!   once per MoE layer to group its tokens by expert.
//! - A call with one token takes the recurrent (decode) form of the Mamba layers and the
//!   decode attention kernel, more tokens the chunked scan and causal prefill — the same
//!   rule as the CPU, decided on the whole call, not per chunk. Prompts are fed in chunks
//!   of the session's `Plan::prefill_chunk` tokens, eagerly.
//! - GEMM inputs are bf16 (the normed residual, the gated y, the attention output, relu²
//!   output); everything else, the residual stream included, stays f32.
//! - A decode step (one token) allocates nothing, waits for nothing and branches on no
//!   device value on the host: its token is read from the session's `sampled` buffer, the
//!   sequence position from `pos` on the device (KV append writes there, decode attention
//!   reads its length there, the step's last kernel advances it). So the step is captured
//!   once per session into a CUDA graph and replayed for every later token: per token the
//!   host queues at most one 4-byte copy (none when the token is the one the device just
//!   drew), launches the graph, and leaves the logits on the device (`forward_keep`) or
//!   downloads them. The first decode step runs eagerly (it loads cuBLAS's and our kernels
//!   lazily, which must not happen under capture), the second is captured and launched.
//!   `NEMO_CUDA_GRAPH=0` (or `GpuSession::set_cuda_graph(false)`) runs every step eagerly
//!   with the same kernels in the same order, so eager and replayed logits are equal bit
//!   for bit.
//! - The device draw (`draw`: knobs, uniform and up to `MAX_DEVICE_BANS` bans in one small
//!   copy) leaves its id where the next decode step reads its token. Repetition and
//!   presence penalties need the token history: `draw` refuses them, `draw_with_history`
//!   uploads it.
//!
//! The weights come from a `WeightSource`: a loaded checkpoint's `WeightStore` (the same
//! tensor names `model::NemotronH::load` reads) or random values for `nemo bench`.

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaSlice;
use half::bf16;

use super::moe_layer::GpuMoe;
use super::plan::Plan;
use super::session::{Buffers, GpuLayerState, GpuSession, GraphSlot, SsmBuf, StepGraph};
use super::weights::{StoreWeights, WeightSource};
use super::GpuModelError;
use crate::backend::cuda::attention::{self, DevicePosition, GpuKvCache};
use crate::backend::cuda::mamba2::{GpuMamba2, MambaScratch};
use crate::backend::cuda::sampling::{self, SampleArgs};
use crate::backend::cuda::ssm::ScanShape;
use crate::backend::cuda::{
    conv1d, elementwise, embedding, gemm, norm, ssm, CudaError, Gpu, KernelDtype,
};
use crate::backend::DType;
use crate::model::weights::WeightStore;
use crate::model::{LayerKind, Logits, Model, ModelFolder, NemotronHConfig};
use crate::state::CacheConfig;

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
            attention::supports(
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
        GpuSession::new(gpu, &self.config, cache, plan, self.id)
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
            s.set_token(gpu, *token)?;
            self.decode(gpu, s)?;
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

    /// Like `forward` with `Logits::Last`, but the last position's logits stay on the
    /// device (`bufs.logits`), for `draw` or `last_logits_to_host`: nothing comes back.
    /// One token is the decode step (its graph, no copy back).
    pub fn forward_keep(
        &self,
        gpu: &Gpu,
        s: &mut GpuSession,
        tokens: &[u32],
    ) -> Result<(), GpuModelError> {
        self.check_session(s)?;
        embedding::check_ids(tokens, self.config.vocab_size)?;
        if let [token] = tokens {
            s.set_token(gpu, *token)?;
            return self.decode(gpu, s);
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
        Ok(s.read_sampled(gpu)?)
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
        s.drawn = Some(id);
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
    /// session's second step, replayed after) or eagerly; then the host mirror of the
    /// position moves on.
    fn decode(&self, gpu: &Gpu, s: &mut GpuSession) -> Result<(), GpuModelError> {
        if s.len() + 1 > s.plan.max_context {
            return Err(GpuModelError::Unsupported(format!(
                "{} + 1 positions exceed the session's context of {}",
                s.len(),
                s.plan.max_context
            )));
        }
        if !s.use_graph {
            self.decode_body(gpu, s)?;
        } else {
            let slot = std::mem::replace(&mut s.graph, GraphSlot::Cold);
            s.graph = match slot {
                GraphSlot::Cold => {
                    self.decode_body(gpu, s)?;
                    GraphSlot::Warm
                }
                GraphSlot::Warm => {
                    let g = self.capture(gpu, s)?;
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
    fn capture(&self, gpu: &Gpu, s: &mut GpuSession) -> Result<StepGraph, GpuModelError> {
        // Thread-local: a call that is illegal under capture (an allocation, a sync) made
        // by this thread fails the capture instead of slipping in; other threads are free.
        gpu.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv)?;
        let body = self.decode_body(gpu, s);
        let graph = gpu.stream.end_capture(CUgraphInstantiate_flags(0));
        body?;
        let graph = graph
            .map_err(drv)?
            .ok_or_else(|| CudaError::Driver("the captured decode step is empty".into()))?;
        Ok(StepGraph(graph))
    }

    /// The decode step's device work, in order: embedding of `bufs.sampled` → every layer
    /// (recurrent Mamba step, KV append at `pos` + decode attention over `0..=pos`, MLP) →
    /// final norm → LM head into `bufs.logits` → `pos += 1`. Queues work only; touches no
    /// host state.
    fn decode_body(&self, gpu: &Gpu, s: &mut GpuSession) -> Result<(), GpuModelError> {
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
        s.drawn = None;
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

/// Whether `folder` can run on the GPU, from its config and weights alone (no GPU
/// needed): a Nemotron-H safetensors folder in bf16, f16 or f32, each layer within the
/// kernels' limits (`GpuNemotronH::check`). Each refusal is one line saying what is not
/// supported.
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

/// The device draw has no token history: penalties are refused, in one line.
fn check_device_sampling(args: &SampleArgs) -> Result<(), GpuModelError> {
    if args.has_penalties() {
        return Err(GpuModelError::Unsupported(
            "repetition/presence penalties need the token history: draw with it \
             (draw_with_history) or take the logits to the host"
                .into(),
        ));
    }
    Ok(())
}
