//! The MoE mixer (`E` layers) on the GPU; oracle `model::moe::Moe` (same tensors, same
//! formulas, same layouts):
//!
//! ```text
//! logits = normed · gateᵀ                      f32 router (kernels/moe.cu moe_router_f32)
//! ids, w = route(logits, e_score_correction_bias)      (moe_route_f32, on the device)
//! x'     = bf16(fc1(normed)) with a latent projection, else normed
//! acc[t] = Σ_k w[t,k] · down[ids[t,k]] · relu(up[ids[t,k]] · x'[t])²
//! out    = fc2(bf16(acc)) with a latent projection, else acc
//! out   += down_s(bf16(relu(up_s · normed)²))        shared expert (cuBLAS)
//! ```
//!
//! Invariants:
//! - Expert weights are bf16, stacked on the device as `up` `[E, inter, inner]` and `down`
//!   `[E, inner, inter]` (inner = `moe_latent_size` or hidden), whichever form the
//!   checkpoint stores (per expert `experts.{j}.up_proj.weight`, or stacked 3-D
//!   `experts.up_proj`, read first as the CPU does); the router gate and the correction bias
//!   stay f32, as the CPU widens them, so both sides choose from the same logits.
//! - Two ways to run the chosen experts, the same math:
//!   - `MoePath::Gemv` (decode, `n ≤ GEMV_MAX_TOKENS`): two grouped GEMV kernels read the
//!     expert ids from device memory (one block row per (token, pick) pair, f32
//!     accumulation, relu² in f32 between them), and a combine kernel weighs and sums each
//!     token's picks. No host sync, no allocation, no host branch on the routing:
//!     capturable in a CUDA graph together with the cuBLAS GEMMs of the shared expert and
//!     latent projections.
//!   - `MoePath::Grouped` (prompts): the ids come to the host (ONE host sync per MoE
//!     layer, so not capturable), the (token, expert) pairs are sorted by expert there, the
//!     rows gathered in that order, one cuBLAS GEMM per used expert for up and for down
//!     (relu² rounded to bf16 between them), and a combine kernel sums each token's expert
//!     outputs in pick order.
//! - `MoeBuffers` is sized once for a most-tokens count; `forward` allocates nothing.
//! - An unsupported shape is a `CudaError::Unsupported` from `supports`, never a CPU
//!   fallback.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::weights::WeightSource;
use super::GpuModelError;
use crate::backend::cuda::moe::{self, Experts, Routing};
use crate::backend::cuda::{elementwise, ensure, gemm, CudaError, Gpu};
use crate::model::NemotronHConfig;

fn drv(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// Calls with at most this many tokens take the grouped GEMV (decode) path.
pub const GEMV_MAX_TOKENS: usize = 16;

/// How `forward_with` runs the chosen experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoePath {
    /// `Gemv` for `n ≤ GEMV_MAX_TOKENS`, else `Grouped` (what `forward` does).
    Auto,
    /// Grouped GEMV kernels reading the ids on the device (graph-capturable).
    Gemv,
    /// Host-sorted per-expert cuBLAS GEMMs (one host sync).
    Grouped,
}

/// The shapes of one MoE mixer, from the config.
#[derive(Clone, Copy, Debug)]
struct MoeShape {
    hidden: usize,
    routing: Routing,
    experts: Experts,
    latent: Option<usize>,
    /// 0 when there is no shared expert.
    shared_inter: usize,
}

impl MoeShape {
    fn of(cfg: &NemotronHConfig) -> Self {
        let hidden = cfg.hidden_size;
        MoeShape {
            hidden,
            routing: crate::model::moe::routing(cfg),
            experts: Experts {
                experts: cfg.n_routed_experts,
                top_k: cfg.num_experts_per_tok,
                inter: cfg.moe_intermediate_size,
                inner: cfg.moe_latent_size.unwrap_or(hidden),
            },
            latent: cfg.moe_latent_size,
            shared_inter: cfg.moe_shared_expert_intermediate_size,
        }
    }
}

/// One MoE mixer's weights on the device.
pub struct GpuMoe {
    shape: MoeShape,
    /// Router `[experts, hidden]` f32.
    gate: CudaSlice<f32>,
    /// `e_score_correction_bias` `[experts]` (zeros when absent).
    bias: CudaSlice<f32>,
    /// `[experts, inter, inner]` bf16.
    up: CudaSlice<bf16>,
    /// `[experts, inner, inter]` bf16.
    down: CudaSlice<bf16>,
    /// Shared expert: up `[shared_inter, hidden]`, down `[hidden, shared_inter]`.
    shared: Option<(CudaSlice<bf16>, CudaSlice<bf16>)>,
    /// Latent projections: fc1 `[latent, hidden]`, fc2 `[hidden, latent]`.
    latent: Option<(CudaSlice<bf16>, CudaSlice<bf16>)>,
}

/// Scratch for `GpuMoe::forward`, for at most `max_tokens` tokens per call; one set serves
/// every MoE layer of a model (the layers run one after another).
pub struct MoeBuffers {
    max_tokens: usize,
    shape: MoeShape,
    logits: CudaSlice<f32>,
    /// The chosen experts `[n, top_k]`, best first (as `backend::cpu::moe::route`).
    pub ids: CudaSlice<u32>,
    /// Their weights `[n, top_k]`.
    pub weights: CudaSlice<f32>,
    /// fc1 output `[n, latent]` f32 and bf16; routed sum `[n, latent]` f32 and bf16.
    lat: CudaSlice<f32>,
    lat_b: CudaSlice<bf16>,
    acc: CudaSlice<f32>,
    acc_b: CudaSlice<bf16>,
    /// Expert inputs in expert order `[n·top_k, inner]` (grouped path).
    xs: CudaSlice<bf16>,
    /// Expert hidden `[n·top_k, inter]` f32.
    big: CudaSlice<f32>,
    /// Expert outputs `[n·top_k, inner]` f32, before the weighted sum.
    ys: CudaSlice<f32>,
    /// relu² rounded to bf16 `[n·top_k, inter]` (grouped path).
    hb: CudaSlice<bf16>,
    /// Sorted row → token, and pair (t·top_k + k) → sorted row (grouped path).
    rows: CudaSlice<u32>,
    pos: CudaSlice<u32>,
    /// Shared expert hidden `[n, shared_inter]` f32 and bf16.
    sh: CudaSlice<f32>,
    sh_b: CudaSlice<bf16>,
    host_ids: Vec<u32>,
    host_rows: Vec<u32>,
    host_pos: Vec<u32>,
}

impl MoeBuffers {
    /// Buffers for the MoE layers of `cfg`, for calls of at most `max_tokens` tokens.
    pub fn new(gpu: &Gpu, cfg: &NemotronHConfig, max_tokens: usize) -> Result<Self, CudaError> {
        GpuMoe::supports(cfg)?;
        let s = MoeShape::of(cfg);
        let (n, k, e) = (max_tokens, s.experts.top_k, s.experts.experts);
        let (inter, inner) = (s.experts.inter, s.experts.inner);
        let pairs = n * k;
        ensure(u32::try_from(pairs).is_ok(), "moe", || {
            format!("{n} tokens × top_k {k}")
        })?;
        let l = s.latent.unwrap_or(0);
        Ok(MoeBuffers {
            max_tokens: n,
            shape: s,
            logits: gpu.zeros(n * e)?,
            ids: gpu.zeros(pairs)?,
            weights: gpu.zeros(pairs)?,
            lat: gpu.zeros(n * l)?,
            lat_b: gpu.zeros(n * l)?,
            acc: gpu.zeros(n * l)?,
            acc_b: gpu.zeros(n * l)?,
            xs: gpu.zeros(pairs * inner)?,
            big: gpu.zeros(pairs * inter)?,
            ys: gpu.zeros(pairs * inner)?,
            hb: gpu.zeros(pairs * inter)?,
            rows: gpu.zeros(pairs)?,
            pos: gpu.zeros(pairs)?,
            sh: gpu.zeros(n * s.shared_inter)?,
            sh_b: gpu.zeros(n * s.shared_inter)?,
            host_ids: vec![0; pairs],
            host_rows: vec![0; pairs],
            host_pos: vec![0; pairs],
        })
    }

    /// Bytes of device memory these buffers hold.
    pub fn device_bytes(&self) -> usize {
        4 * (self.logits.len()
            + self.ids.len()
            + self.weights.len()
            + self.lat.len()
            + self.acc.len()
            + self.big.len()
            + self.ys.len()
            + self.rows.len()
            + self.pos.len()
            + self.sh.len())
            + 2 * (self.lat_b.len()
                + self.acc_b.len()
                + self.xs.len()
                + self.hb.len()
                + self.sh_b.len())
    }
}

/// `count` matrices `name(j)` of `shape`, stacked into one device buffer.
fn stack(
    gpu: &Gpu,
    w: &mut dyn WeightSource,
    count: usize,
    shape: &[usize],
    name: impl Fn(usize) -> String,
) -> Result<CudaSlice<bf16>, GpuModelError> {
    let per: usize = shape.iter().product();
    let mut all = gpu.zeros::<bf16>(count * per)?;
    for j in 0..count {
        let m = w.matrix(gpu, &name(j), shape)?;
        let mut dst = all.slice_mut(j * per..(j + 1) * per);
        gpu.stream.memcpy_dtod(&m, &mut dst).map_err(drv)?;
    }
    Ok(all)
}

impl GpuMoe {
    /// Whether the MoE layers of `cfg` can run on the GPU (every kernel's limits).
    pub fn supports(cfg: &NemotronHConfig) -> Result<(), CudaError> {
        let s = MoeShape::of(cfg);
        moe::supports(&s.routing)?;
        moe::supports_router(s.routing.n_routed_experts, s.hidden)?;
        moe::supports_experts(
            s.experts.experts,
            s.experts.top_k,
            s.experts.inter,
            s.experts.inner,
        )?;
        gemm::supports(1, s.shared_inter, s.hidden)?;
        if let Some(l) = s.latent {
            ensure(l > 0, "moe", || "moe_latent_size 0".into())?;
            gemm::supports(1, l, s.hidden)?;
        }
        Ok(())
    }

    /// Uploads the mixer at `prefix` (`backbone.layers.{i}.mixer`) from `w`, with the
    /// tensor names `model::moe::Moe::load` reads.
    pub fn load(
        gpu: &Gpu,
        cfg: &NemotronHConfig,
        w: &mut dyn WeightSource,
        prefix: &str,
    ) -> Result<Self, GpuModelError> {
        Self::supports(cfg)?;
        let s = MoeShape::of(cfg);
        let p = prefix;
        let (hs, e, mi, inner) = (
            s.hidden,
            s.experts.experts,
            s.experts.inter,
            s.experts.inner,
        );
        let bias_name = format!("{p}.gate.e_score_correction_bias");
        let bias = if w.contains(&bias_name) {
            w.vector(&bias_name, &[e], true)?
        } else {
            vec![0.0; e]
        };
        let gate = w.vector(&format!("{p}.gate.weight"), &[e, hs], false)?;
        let stacked_up = format!("{p}.experts.up_proj");
        let (up, down) = if w.contains(&stacked_up) {
            (
                w.matrix(gpu, &stacked_up, &[e, mi, inner])?,
                w.matrix(gpu, &format!("{p}.experts.down_proj"), &[e, inner, mi])?,
            )
        } else {
            (
                stack(gpu, w, e, &[mi, inner], |j| {
                    format!("{p}.experts.{j}.up_proj.weight")
                })?,
                stack(gpu, w, e, &[inner, mi], |j| {
                    format!("{p}.experts.{j}.down_proj.weight")
                })?,
            )
        };
        // Shared expert when the config names a width (the CPU also takes one it finds
        // in the file; a checkpoint with shared tensors and width 0 fails there on shape).
        let si = s.shared_inter;
        let shared = if si > 0 {
            Some((
                w.matrix(
                    gpu,
                    &format!("{p}.shared_experts.up_proj.weight"),
                    &[si, hs],
                )?,
                w.matrix(
                    gpu,
                    &format!("{p}.shared_experts.down_proj.weight"),
                    &[hs, si],
                )?,
            ))
        } else {
            None
        };
        let latent = match s.latent {
            Some(l) => Some((
                w.matrix(gpu, &format!("{p}.fc1_latent_proj.weight"), &[l, hs])?,
                w.matrix(gpu, &format!("{p}.fc2_latent_proj.weight"), &[hs, l])?,
            )),
            None => None,
        };
        Ok(GpuMoe {
            shape: s,
            gate: gpu.upload(&gate)?,
            bias: gpu.upload(&bias)?,
            up,
            down,
            shared,
            latent,
        })
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        let pair = |p: &Option<(CudaSlice<bf16>, CudaSlice<bf16>)>| {
            p.as_ref().map_or(0, |(a, b)| 2 * (a.len() + b.len()))
        };
        4 * (self.gate.len() + self.bias.len())
            + 2 * (self.up.len() + self.down.len())
            + pair(&self.shared)
            + pair(&self.latent)
    }

    /// Bytes of weights one token reads: the router (f32) and bias, `top_k` experts, the
    /// shared expert and the latent projections.
    pub fn bytes_per_token(&self) -> usize {
        let x = &self.shape.experts;
        let pair = |p: &Option<(CudaSlice<bf16>, CudaSlice<bf16>)>| {
            p.as_ref().map_or(0, |(a, b)| 2 * (a.len() + b.len()))
        };
        4 * (self.gate.len() + self.bias.len())
            + x.top_k * 2 * 2 * x.inter * x.inner
            + pair(&self.shared)
            + pair(&self.latent)
    }

    /// `out[n, hidden] = moe(normed[n, hidden])`, overwriting `out`. Decode-sized calls
    /// (`n ≤ GEMV_MAX_TOKENS`) take the graph-capturable GEMV path, longer ones the
    /// per-expert GEMMs (one host sync).
    pub fn forward(
        &self,
        gpu: &Gpu,
        bufs: &mut MoeBuffers,
        normed: &CudaSlice<bf16>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        self.forward_with(gpu, bufs, normed, n, out, MoePath::Auto)
    }

    /// `forward` on the path `path` names (tests run both on the same inputs).
    pub fn forward_with(
        &self,
        gpu: &Gpu,
        bufs: &mut MoeBuffers,
        normed: &CudaSlice<bf16>,
        n: usize,
        out: &mut CudaSlice<f32>,
        path: MoePath,
    ) -> Result<(), CudaError> {
        const OP: &str = "moe";
        let s = &self.shape;
        let (hs, e, k) = (s.hidden, s.experts.experts, s.experts.top_k);
        ensure(n <= bufs.max_tokens, OP, || {
            format!("{n} tokens, buffers planned for {}", bufs.max_tokens)
        })?;
        let b = &bufs.shape;
        ensure(
            b.hidden == hs
                && b.experts.experts == e
                && b.experts.top_k == k
                && b.experts.inter == s.experts.inter
                && b.experts.inner == s.experts.inner
                && b.latent == s.latent
                && b.shared_inter == s.shared_inter,
            OP,
            || "buffers planned for another MoE shape".into(),
        )?;
        gpu.ptr(OP, "normed", normed, 0, n * hs)?;
        gpu.ptr(OP, "out", out, 0, n * hs)?;
        if n == 0 {
            return Ok(());
        }
        let MoeBuffers {
            logits,
            ids,
            weights,
            lat,
            lat_b,
            acc,
            acc_b,
            xs,
            big,
            ys,
            hb,
            rows,
            pos,
            sh,
            sh_b,
            host_ids,
            host_rows,
            host_pos,
            ..
        } = bufs;
        moe::router(gpu, normed, &self.gate, logits, n, e, hs)?;
        moe::route(gpu, &s.routing, logits, &self.bias, ids, weights, n)?;
        let xin: &CudaSlice<bf16> = match (&self.latent, s.latent) {
            (Some((fc1, _)), Some(l)) => {
                gemm::matmul_bf16(gpu, normed, n, fc1, l, hs, lat, 0.0)?;
                elementwise::cast_bf16(gpu, lat, lat_b, n * l)?;
                lat_b
            }
            _ => normed,
        };
        // The routed sum goes straight to `out`, or through fc2 from `acc`.
        let (dest, dest_b) = if self.latent.is_some() {
            (&mut *acc, Some(&mut *acc_b))
        } else {
            (&mut *out, None)
        };
        let x = &s.experts;
        let gemv = match path {
            MoePath::Auto => n <= GEMV_MAX_TOKENS,
            MoePath::Gemv => true,
            MoePath::Grouped => false,
        };
        if gemv {
            moe::up_gemv(gpu, x, xin, &self.up, ids, big, n)?;
            moe::down_gemv(gpu, x, big, &self.down, ids, ys, n)?;
            moe::combine(gpu, ys, n * k, None, weights, dest, dest_b, n, k, x.inner)?;
        } else {
            let pairs = n * k;
            // Sort the (token, pick) pairs by expert on the host: the one sync.
            {
                let src = ids.slice(0..pairs);
                gpu.stream
                    .memcpy_dtoh(&src, &mut host_ids[..pairs])
                    .map_err(drv)?;
                gpu.sync()?;
            }
            let mut offsets = vec![0usize; e + 1];
            for &id in &host_ids[..pairs] {
                let id = id as usize;
                ensure(id < e, OP, || format!("routing chose expert {id} of {e}"))?;
                offsets[id + 1] += 1;
            }
            for j in 0..e {
                offsets[j + 1] += offsets[j];
            }
            let mut next = offsets.clone();
            for (p, &id) in host_ids[..pairs].iter().enumerate() {
                let r = next[id as usize];
                next[id as usize] += 1;
                host_rows[r] = (p / k) as u32;
                host_pos[p] = r as u32;
            }
            {
                let mut d = rows.slice_mut(0..pairs);
                gpu.stream
                    .memcpy_htod(&host_rows[..pairs], &mut d)
                    .map_err(drv)?;
                let mut d = pos.slice_mut(0..pairs);
                gpu.stream
                    .memcpy_htod(&host_pos[..pairs], &mut d)
                    .map_err(drv)?;
            }
            let (inter, inner) = (x.inter, x.inner);
            moe::gather_rows(gpu, xin, n, rows, xs, pairs, inner)?;
            grouped_gemm(
                gpu,
                &offsets,
                (&*xs, "xs"),
                (&self.up, "up"),
                inter,
                inner,
                (&*big, "hidden"),
            )?;
            elementwise::relu2(gpu, big, Some(hb), pairs * inter)?;
            grouped_gemm(
                gpu,
                &offsets,
                (&*hb, "hidden_bf16"),
                (&self.down, "down"),
                inner,
                inter,
                (&*ys, "expert_out"),
            )?;
            moe::combine(
                gpu,
                ys,
                pairs,
                Some(pos),
                weights,
                dest,
                dest_b,
                n,
                k,
                inner,
            )?;
        }
        if let (Some((_, fc2)), Some(l)) = (&self.latent, s.latent) {
            gemm::matmul_bf16(gpu, acc_b, n, fc2, hs, l, out, 0.0)?;
        }
        if let Some((su, sd)) = &self.shared {
            let si = s.shared_inter;
            gemm::matmul_bf16(gpu, normed, n, su, si, hs, sh, 0.0)?;
            elementwise::relu2(gpu, sh, Some(sh_b), n * si)?;
            gemm::matmul_bf16(gpu, sh_b, n, sd, hs, si, out, 1.0)?;
        }
        Ok(())
    }
}

/// One GEMM per expert over its rows of a host-sorted batch: rows
/// `offsets[j]..offsets[j + 1]` of `x` (`[rows, in_dim]` bf16) times expert `j`'s matrix in
/// the stacked `w` (`[experts, out_dim, in_dim]`) into the same rows of `y` (`[rows, out_dim]`
/// f32); an expert no row chose is skipped. Buffers come with their names for errors.
fn grouped_gemm(
    gpu: &Gpu,
    offsets: &[usize],
    (x, x_name): (&CudaSlice<bf16>, &'static str),
    (w, w_name): (&CudaSlice<bf16>, &'static str),
    out_dim: usize,
    in_dim: usize,
    (y, y_name): (&CudaSlice<f32>, &'static str),
) -> Result<(), CudaError> {
    const OP: &str = "moe";
    for (j, rows) in offsets.windows(2).enumerate() {
        let (at, m) = (rows[0], rows[1] - rows[0]);
        if m == 0 {
            continue;
        }
        gemm::gemm_at(
            gpu,
            gpu.ptr(OP, x_name, x, at * in_dim, m * in_dim)?,
            m,
            gpu.ptr(OP, w_name, w, j * out_dim * in_dim, out_dim * in_dim)?,
            out_dim,
            in_dim,
            gpu.ptr(OP, y_name, y, at * out_dim, m * out_dim)?,
            0.0,
        )?;
    }
    Ok(())
}
