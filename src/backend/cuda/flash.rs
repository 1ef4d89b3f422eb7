//! Causal prefill attention on tensor cores (kernels/flash_attention.cu): flash-style
//! tiling, online softmax in f32, GQA, scale head_dim^-0.5, no positional embedding.
//! Oracle `model::attention` over `state::KvCache::read_head` (tests/cuda_tc.rs).
//!
//! Inputs are those of `attention::GpuKvCache::prefill`: queries `[n, heads, head_dim]`
//! (f32 or bf16) for positions `start .. start + n`, whose k/v are already in the cache,
//! and the cache `[positions, kv_heads, head_dim]` in its dtype with `[positions, kv_heads]`
//! f32 scales for FP8 (the layout of kernels/attention.cu). Output `[n, heads, head_dim]`
//! f32, optionally also bf16 for the o_proj GEMM.
//!
//! Precision: q·k and p·v run with bf16 inputs and f32 accumulation (bf16 has f32's
//! range, so no activation or cache value can overflow where f16 could; bf16 and FP8
//! cache values are exact in it). The error model is in tests/cuda_tc.rs.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::{ensure, i32_arg, Arg, CudaError, Gpu};
use crate::backend::DType;

/// Head dims with a compiled kernel (`HD` instantiations).
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// Queries per block (`FA_BQ`) and threads per block (`FA_WARPS` warps).
const QUERIES_PER_BLOCK: usize = 128;
const THREADS: u32 = 256;

/// A KV cache as the kernel reads it: `positions` filled rows of k and v (bytes of
/// `dtype`) and, for FP8, their scales.
pub struct KvView<'a> {
    pub dtype: DType,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub positions: usize,
    pub k: &'a CudaSlice<u8>,
    pub v: &'a CudaSlice<u8>,
    pub k_scale: &'a CudaSlice<f32>,
    pub v_scale: &'a CudaSlice<f32>,
}

/// The queries, `[n, heads, head_dim]`.
#[derive(Clone, Copy)]
pub enum Queries<'a> {
    F32(&'a CudaSlice<f32>),
    BF16(&'a CudaSlice<bf16>),
}

/// The KV cache formats the attention kernels read, flash prefill here and `attention`'s
/// decode and fallback prefill alike (`op` names the caller in the error).
pub(super) fn supports_cache_dtype(op: &'static str, dtype: DType) -> Result<(), CudaError> {
    ensure(
        matches!(
            dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2
        ),
        op,
        || format!("KV cache dtype {dtype}"),
    )
}

pub fn supports(
    dtype: DType,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(), CudaError> {
    const OP: &str = "flash_prefill";
    supports_cache_dtype(OP, dtype)?;
    ensure(HEAD_DIMS.contains(&head_dim), OP, || {
        format!("head_dim {head_dim} (one of {HEAD_DIMS:?})")
    })?;
    ensure(
        kv_heads > 0 && heads.is_multiple_of(kv_heads) && (1..=65535).contains(&heads),
        OP,
        || format!("{heads} query heads over {kv_heads} kv heads"),
    )
}

fn kernel(q_bf16: bool, dtype: DType, head_dim: usize) -> &'static str {
    // Names are `flash_prefill_<q>_<kv>_hd<HD>`, spelled out so the launcher can never ask
    // for a kernel the .cu file does not define; `supports` has checked dtype and head_dim.
    match (q_bf16, dtype, head_dim == 64) {
        (false, DType::F32, true) => "flash_prefill_f32_f32_hd64",
        (false, DType::F16, true) => "flash_prefill_f32_f16_hd64",
        (false, DType::BF16, true) => "flash_prefill_f32_bf16_hd64",
        (false, DType::F8E4M3, true) => "flash_prefill_f32_fp8e4m3_hd64",
        (false, _, true) => "flash_prefill_f32_fp8e5m2_hd64",
        (false, DType::F32, false) => "flash_prefill_f32_f32_hd128",
        (false, DType::F16, false) => "flash_prefill_f32_f16_hd128",
        (false, DType::BF16, false) => "flash_prefill_f32_bf16_hd128",
        (false, DType::F8E4M3, false) => "flash_prefill_f32_fp8e4m3_hd128",
        (false, _, false) => "flash_prefill_f32_fp8e5m2_hd128",
        (true, DType::F32, true) => "flash_prefill_bf16_f32_hd64",
        (true, DType::F16, true) => "flash_prefill_bf16_f16_hd64",
        (true, DType::BF16, true) => "flash_prefill_bf16_bf16_hd64",
        (true, DType::F8E4M3, true) => "flash_prefill_bf16_fp8e4m3_hd64",
        (true, _, true) => "flash_prefill_bf16_fp8e5m2_hd64",
        (true, DType::F32, false) => "flash_prefill_bf16_f32_hd128",
        (true, DType::F16, false) => "flash_prefill_bf16_f16_hd128",
        (true, DType::BF16, false) => "flash_prefill_bf16_bf16_hd128",
        (true, DType::F8E4M3, false) => "flash_prefill_bf16_fp8e4m3_hd128",
        (true, _, false) => "flash_prefill_bf16_fp8e5m2_hd128",
    }
}

/// The last `n` of `kv.positions` cached positions' queries `q`, causal over the whole
/// cache → `out` `[n, heads, head_dim]` (and `out_bf16`).
pub fn prefill(
    gpu: &Gpu,
    kv: &KvView,
    heads: usize,
    n: usize,
    q: Queries,
    out: &mut CudaSlice<f32>,
    out_bf16: Option<&mut CudaSlice<bf16>>,
) -> Result<(), CudaError> {
    const OP: &str = "flash_prefill";
    let (kvh, hd) = (kv.kv_heads, kv.head_dim);
    supports(kv.dtype, heads, kvh, hd)?;
    ensure(n <= kv.positions, OP, || {
        format!("{n} queries but {} cached positions", kv.positions)
    })?;
    if n == 0 {
        return Ok(());
    }
    let elems = n * heads * hd;
    let cache_bytes = kv.positions * kvh * hd * kv.dtype.size();
    let fp8 = matches!(kv.dtype, DType::F8E4M3 | DType::F8E5M2);
    let scales = if fp8 { kv.positions * kvh } else { 0 };
    let (qp, q_bf16) = match q {
        Queries::F32(s) => (Arg::from(gpu.ptr(OP, "q", s, 0, elems)?), false),
        Queries::BF16(s) => (Arg::from(gpu.ptr(OP, "q", s, 0, elems)?), true),
    };
    let args = [
        qp,
        gpu.ptr(OP, "k_cache", kv.k, 0, cache_bytes)?.into(),
        gpu.ptr(OP, "v_cache", kv.v, 0, cache_bytes)?.into(),
        gpu.ptr(OP, "k_scale", kv.k_scale, 0, scales)?.into(),
        gpu.ptr(OP, "v_scale", kv.v_scale, 0, scales)?.into(),
        gpu.ptr(OP, "out", out, 0, elems)?.into(),
        out_bf16
            .map(|o| gpu.ptr(OP, "out_bf16", o, 0, elems))
            .transpose()?
            .into(),
        i32_arg(OP, "n", n)?,
        i32_arg(OP, "start", kv.positions - n)?,
        i32_arg(OP, "heads", heads)?,
        i32_arg(OP, "kv_heads", kvh)?,
        Arg::F32((hd as f32).powf(-0.5)),
    ];
    let qblocks =
        u32::try_from(n.div_ceil(QUERIES_PER_BLOCK)).map_err(|_| CudaError::Unsupported {
            op: OP,
            why: format!("{n} queries in one call"),
        })?;
    gpu.launch(
        "flash_attention",
        kernel(q_bf16, kv.dtype, hd),
        (qblocks, heads as u32, 1),
        THREADS,
        &args,
    )
}
