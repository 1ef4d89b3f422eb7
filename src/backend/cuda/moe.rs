//! MoE ops (kernels/moe.cu): the f32 router GEMM; routing (sigmoid, correction bias for
//! the choice, grouped top-k, weights from the uncorrected scores; oracle
//! `backend::cpu::moe::route`, same arguments and layouts); the chosen experts as grouped GEMVs that read the expert ids
//! from device memory (decode; capturable in a CUDA graph); the gather / combine of the
//! per-expert GEMMs of a prompt; and a cuBLAS GEMM on row ranges of stacked weights.
//! `moe_layer::GpuMoe` composes them into the mixer.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::{ensure, i32_arg, Arg, CudaError, Gpu};

/// Router configuration (the config's names): the CPU op's (`backend::cpu::moe`), the
/// oracle.
pub use crate::backend::cpu::moe::Routing;

pub fn supports(r: &Routing) -> Result<(), CudaError> {
    const OP: &str = "moe_route";
    let e = r.n_routed_experts;
    ensure((1..=1024).contains(&e), OP, || {
        format!("{e} experts (at most 1024)")
    })?;
    ensure(
        r.n_group >= 1 && r.n_group <= 64 && e.is_multiple_of(r.n_group),
        OP,
        || format!("{e} experts in {} groups", r.n_group),
    )?;
    ensure(r.topk_group >= 1 && r.topk_group <= r.n_group, OP, || {
        format!("topk_group {} of {} groups", r.topk_group, r.n_group)
    })?;
    ensure(r.top_k >= 1 && r.top_k <= 32 && r.top_k <= e, OP, || {
        format!("top_k {} (1..=32, at most the experts)", r.top_k)
    })
}

/// `logits` `[n, experts]` → `ids` `[n, top_k]` (best first) and `weights` `[n, top_k]`.
pub fn route(
    gpu: &Gpu,
    r: &Routing,
    logits: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    ids: &mut CudaSlice<u32>,
    weights: &mut CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "moe_route";
    supports(r)?;
    let (e, k) = (r.n_routed_experts, r.top_k);
    let args = [
        gpu.ptr(OP, "logits", logits, 0, n * e)?.into(),
        gpu.ptr(OP, "bias", bias, 0, e)?.into(),
        gpu.ptr(OP, "ids", ids, 0, n * k)?.into(),
        gpu.ptr(OP, "weights", weights, 0, n * k)?.into(),
        i32_arg(OP, "experts", e)?,
        i32_arg(OP, "n_group", r.n_group)?,
        i32_arg(OP, "topk_group", r.topk_group)?,
        i32_arg(OP, "top_k", k)?,
        Arg::I32(r.norm_topk_prob as i32),
        Arg::F32(r.routed_scaling_factor),
    ];
    if n == 0 {
        return Ok(());
    }
    let grid = u32::try_from(n).map_err(|_| CudaError::Unsupported {
        op: OP,
        why: format!("{n} tokens"),
    })?;
    gpu.launch("moe", "moe_route_f32", (grid, 1, 1), 32, &args)
}

/// Rows each warp of the grouped GEMVs computes (kernels/moe.cu `MOE_UP_ROWS`,
/// `MOE_DOWN_ROWS`); warps per block (`MOE_WARPS`).
const UP_ROWS: usize = 4;
const DOWN_ROWS: usize = 4;
const WARPS: usize = 4;
/// Dynamic shared memory a block may use without opting in (48 KiB).
const MAX_SMEM: usize = 48 * 1024;

/// Shapes the expert kernels take: `inner` is the experts' input/output width (hidden, or
/// `moe_latent_size`), `inter` their `moe_intermediate_size`.
pub fn supports_experts(
    experts: usize,
    top_k: usize,
    inter: usize,
    inner: usize,
) -> Result<(), CudaError> {
    const OP: &str = "moe_experts";
    ensure(experts >= 1 && top_k >= 1 && top_k <= experts, OP, || {
        format!("top_k {top_k} of {experts} experts")
    })?;
    ensure(inner > 0 && inner.is_multiple_of(8), OP, || {
        format!("expert width {inner} (a multiple of 8)")
    })?;
    ensure(inter > 0 && inter.is_multiple_of(8), OP, || {
        format!("moe_intermediate_size {inter} (a multiple of 8)")
    })?;
    ensure(inner * 2 <= MAX_SMEM, OP, || {
        format!("expert width {inner} (at most {})", MAX_SMEM / 2)
    })?;
    ensure(inter * 4 <= MAX_SMEM, OP, || {
        format!("moe_intermediate_size {inter} (at most {})", MAX_SMEM / 4)
    })?;
    ensure(
        experts
            .checked_mul(inter)
            .and_then(|v| v.checked_mul(inner))
            .is_some_and(|v| v <= i64::MAX as usize),
        OP,
        || format!("{experts} experts of {inter}×{inner}"),
    )
}

/// Router widths: `hidden % 4 == 0` (the router reads the gate in float4).
pub fn supports_router(experts: usize, hidden: usize) -> Result<(), CudaError> {
    ensure(
        experts >= 1 && hidden > 0 && hidden.is_multiple_of(4),
        "moe_router",
        || format!("{experts} experts × hidden {hidden} (hidden a multiple of 4)"),
    )
}

fn u32_grid(op: &'static str, what: &str, n: usize) -> Result<u32, CudaError> {
    u32::try_from(n.max(1)).map_err(|_| CudaError::Unsupported {
        op,
        why: format!("{what} = {n} blocks"),
    })
}

/// `logits[n, experts] = x[n, hidden] · gateᵀ` in f32 (x bf16, gate f32), as the CPU.
pub fn router(
    gpu: &Gpu,
    x: &CudaSlice<bf16>,
    gate: &CudaSlice<f32>,
    logits: &mut CudaSlice<f32>,
    n: usize,
    experts: usize,
    hidden: usize,
) -> Result<(), CudaError> {
    const OP: &str = "moe_router";
    supports_router(experts, hidden)?;
    let args = [
        gpu.ptr(OP, "x", x, 0, n * hidden)?.into(),
        gpu.ptr(OP, "gate", gate, 0, experts * hidden)?.into(),
        gpu.ptr(OP, "logits", logits, 0, n * experts)?.into(),
        i32_arg(OP, "n", n)?,
        i32_arg(OP, "experts", experts)?,
        i32_arg(OP, "hidden", hidden)?,
    ];
    if n == 0 {
        return Ok(());
    }
    let grid = (
        u32_grid(OP, "experts", experts.div_ceil(WARPS))?,
        u32_grid(OP, "tokens", n.div_ceil(4))?,
        1,
    );
    gpu.launch("moe", "moe_router_f32", grid, (WARPS * 32) as u32, &args)
}

/// Expert shapes for the grouped kernels.
#[derive(Clone, Copy, Debug)]
pub struct Experts {
    pub experts: usize,
    pub top_k: usize,
    /// `moe_intermediate_size`.
    pub inter: usize,
    /// Input width of up, output width of down (hidden or `moe_latent_size`).
    pub inner: usize,
}

/// `h[t·top_k + k, :] = relu(up[ids[t, k]] · x[t])²` for `n` tokens; `up` is
/// `[experts, inter, inner]`, `h` `[n·top_k, inter]` f32. Reads the ids on the device.
pub fn up_gemv(
    gpu: &Gpu,
    s: &Experts,
    x: &CudaSlice<bf16>,
    up: &CudaSlice<bf16>,
    ids: &CudaSlice<u32>,
    h: &mut CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "moe_up_gemv";
    supports_experts(s.experts, s.top_k, s.inter, s.inner)?;
    let pairs = n * s.top_k;
    let args = [
        gpu.ptr(OP, "x", x, 0, n * s.inner)?.into(),
        gpu.ptr(OP, "up", up, 0, s.experts * s.inter * s.inner)?
            .into(),
        gpu.ptr(OP, "ids", ids, 0, pairs)?.into(),
        gpu.ptr(OP, "h", h, 0, pairs * s.inter)?.into(),
        i32_arg(OP, "top_k", s.top_k)?,
        i32_arg(OP, "experts", s.experts)?,
        i32_arg(OP, "inter", s.inter)?,
        i32_arg(OP, "inner", s.inner)?,
    ];
    if n == 0 {
        return Ok(());
    }
    let grid = (
        u32_grid(OP, "row blocks", s.inter.div_ceil(WARPS * UP_ROWS))?,
        u32_grid(OP, "pairs", pairs)?,
        1,
    );
    ensure(pairs <= 65535, OP, || {
        format!("{pairs} token-expert pairs (at most 65535)")
    })?;
    gpu.launch_smem(
        "moe",
        "moe_up_gemv_bf16",
        grid,
        (WARPS * 32) as u32,
        s.inner * 2,
        &args,
    )
}

/// `ys[p] = down[ids[p]] · h[p]` for the `n·top_k` (token, pick) pairs; `down` is
/// `[experts, inner, inter]`, `ys` `[n·top_k, inner]` f32 (`combine` weighs and sums them).
pub fn down_gemv(
    gpu: &Gpu,
    s: &Experts,
    h: &CudaSlice<f32>,
    down: &CudaSlice<bf16>,
    ids: &CudaSlice<u32>,
    ys: &mut CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "moe_down_gemv";
    supports_experts(s.experts, s.top_k, s.inter, s.inner)?;
    let pairs = n * s.top_k;
    let args = [
        gpu.ptr(OP, "h", h, 0, pairs * s.inter)?.into(),
        gpu.ptr(OP, "down", down, 0, s.experts * s.inner * s.inter)?
            .into(),
        gpu.ptr(OP, "ids", ids, 0, pairs)?.into(),
        gpu.ptr(OP, "ys", ys, 0, pairs * s.inner)?.into(),
        i32_arg(OP, "experts", s.experts)?,
        i32_arg(OP, "dim", s.inner)?,
        i32_arg(OP, "inter", s.inter)?,
    ];
    if n == 0 {
        return Ok(());
    }
    ensure(pairs <= 65535, OP, || {
        format!("{pairs} token-expert pairs (at most 65535)")
    })?;
    let grid = (
        u32_grid(OP, "row blocks", s.inner.div_ceil(WARPS * DOWN_ROWS))?,
        u32_grid(OP, "pairs", pairs)?,
        1,
    );
    gpu.launch_smem(
        "moe",
        "moe_down_gemv_bf16",
        grid,
        (WARPS * 32) as u32,
        s.inter * 4,
        &args,
    )
}

/// `xs[i] = x[rows[i]]` for `count` rows of `dim` bf16 (`dim % 8 == 0`).
pub fn gather_rows(
    gpu: &Gpu,
    x: &CudaSlice<bf16>,
    x_rows: usize,
    rows: &CudaSlice<u32>,
    xs: &mut CudaSlice<bf16>,
    count: usize,
    dim: usize,
) -> Result<(), CudaError> {
    const OP: &str = "moe_gather";
    ensure(dim.is_multiple_of(8), OP, || {
        format!("width {dim} (a multiple of 8)")
    })?;
    let args = [
        gpu.ptr(OP, "x", x, 0, x_rows * dim)?.into(),
        gpu.ptr(OP, "rows", rows, 0, count)?.into(),
        gpu.ptr(OP, "xs", xs, 0, count * dim)?.into(),
        i32_arg(OP, "dim", dim)?,
    ];
    if count == 0 {
        return Ok(());
    }
    let grid = u32_grid(OP, "rows", count)?;
    gpu.launch("moe", "moe_gather_bf16", (grid, 1, 1), 128, &args)
}

/// `out[t] = Σ_k wts[t, k] · ys[pos[t·top_k + k]]` (rows of `dim` f32), in pick order; also
/// the bf16 rounding into `out_bf16`. `ys` holds `ys_rows` rows; without `pos` row
/// `t·top_k + k` is the pair's own (as `down_gemv` writes them).
#[allow(clippy::too_many_arguments)]
pub fn combine(
    gpu: &Gpu,
    ys: &CudaSlice<f32>,
    ys_rows: usize,
    pos: Option<&CudaSlice<u32>>,
    wts: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    out_bf16: Option<&mut CudaSlice<bf16>>,
    n: usize,
    top_k: usize,
    dim: usize,
) -> Result<(), CudaError> {
    const OP: &str = "moe_combine";
    ensure(pos.is_some() || ys_rows >= n * top_k, OP, || {
        format!("{ys_rows} expert rows for {n} tokens × top_k {top_k}")
    })?;
    let args = [
        gpu.ptr(OP, "ys", ys, 0, ys_rows * dim)?.into(),
        pos.map(|p| gpu.ptr(OP, "pos", p, 0, n * top_k))
            .transpose()?
            .into(),
        gpu.ptr(OP, "weights", wts, 0, n * top_k)?.into(),
        gpu.ptr(OP, "out", out, 0, n * dim)?.into(),
        out_bf16
            .map(|o| gpu.ptr(OP, "out_bf16", o, 0, n * dim))
            .transpose()?
            .into(),
        i32_arg(OP, "top_k", top_k)?,
        i32_arg(OP, "dim", dim)?,
    ];
    if n == 0 {
        return Ok(());
    }
    let grid = u32_grid(OP, "tokens", n)?;
    gpu.launch("moe", "moe_combine_f32", (grid, 1, 1), 256, &args)
}
