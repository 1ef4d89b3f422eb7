//! MoE routing (kernels/moe.cu): sigmoid, correction bias for the choice, grouped top-k,
//! weights from the uncorrected scores; oracle `model::moe::Moe::route`.

use cudarc::driver::CudaSlice;

use super::{ensure, i32_arg, Arg, CudaError, Gpu};

/// Router configuration (the config's names).
#[derive(Clone, Copy, Debug)]
pub struct Routing {
    pub n_routed_experts: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

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
