//! Mamba2 selective scan (kernels/ssm.cu): the one-step state update for decode and the
//! chunked SSD scan for prompts; oracles `model::mamba2::Mamba2::{step, forward_chunked}`.
//!
//! `xbc` is `[n, cd]` after conv + silu (x | B | C), `dt_raw` the in_proj columns before
//! softplus (`dt_raw[dt_offset + t·dt_stride + head]`), `state` `[heads, head_dim, d_state]`
//! in f32, f16 or bf16, `y` `[n, heads·head_dim]` f32 (before the gated norm).

use cudarc::driver::CudaSlice;

use super::{ensure, i32_arg, Arg, CudaError, Gpu, KernelDtype};

/// Limits of `ssd_chunk_scan` (`SSD_MAX_NS`, `SSD_MAX_CS`) and rows per block (`SSD_PT`).
pub const MAX_D_STATE: usize = 256;
pub const MAX_CHUNK: usize = 256;
const ROWS_PER_BLOCK: usize = 8;

/// Shape of one Mamba2 layer's scan.
#[derive(Clone, Copy, Debug)]
pub struct ScanShape {
    pub heads: usize,
    pub head_dim: usize,
    pub d_state: usize,
    pub n_groups: usize,
}

impl ScanShape {
    fn di(&self) -> usize {
        self.heads * self.head_dim
    }
    fn cd(&self) -> usize {
        self.di() + 2 * self.n_groups * self.d_state
    }
}

pub fn supports_update(s: &ScanShape) -> Result<(), CudaError> {
    ensure(
        s.n_groups > 0 && s.heads.is_multiple_of(s.n_groups) && s.head_dim > 0 && s.d_state > 0,
        "ssm_update",
        || format!("{} heads in {} groups", s.heads, s.n_groups),
    )?;
    ensure(
        s.heads <= 65535 && s.cd() <= i32::MAX as usize,
        "ssm_update",
        || format!("{} heads", s.heads),
    )
}

pub fn supports_scan(s: &ScanShape, chunk: usize) -> Result<(), CudaError> {
    supports_update(s)?;
    ensure(s.d_state <= MAX_D_STATE, "ssd_chunk_scan", || {
        format!("d_state {} (at most {MAX_D_STATE})", s.d_state)
    })?;
    ensure((1..=MAX_CHUNK).contains(&chunk), "ssd_chunk_scan", || {
        format!("chunk_size {chunk} (1..={MAX_CHUNK})")
    })
}

fn state_name<T: KernelDtype>(prefix: &str) -> Result<&'static str, CudaError> {
    Ok(match (prefix, T::SUFFIX) {
        ("ssm_update", "f32") => "ssm_update_f32",
        ("ssm_update", "f16") => "ssm_update_f16",
        ("ssm_update", "bf16") => "ssm_update_bf16",
        ("ssd_chunk_scan", "f32") => "ssd_chunk_scan_f32",
        ("ssd_chunk_scan", "f16") => "ssd_chunk_scan_f16",
        ("ssd_chunk_scan", "bf16") => "ssd_chunk_scan_bf16",
        (_, other) => {
            return Err(CudaError::Unsupported {
                op: "ssm",
                why: format!("state dtype {other}"),
            })
        }
    })
}

/// Decode: one token; `dt_raw[dt_offset + head]`; `y` `[heads·head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn update<T: KernelDtype>(
    gpu: &Gpu,
    s: &ScanShape,
    xbc: &CudaSlice<f32>,
    dt_raw: &CudaSlice<f32>,
    dt_offset: usize,
    dt_bias: &CudaSlice<f32>,
    a: &CudaSlice<f32>,
    d: &CudaSlice<f32>,
    state: &mut CudaSlice<T>,
    y: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    const OP: &str = "ssm_update";
    supports_update(s)?;
    let h = s.heads;
    let args = [
        gpu.ptr(OP, "xbc", xbc, 0, s.cd())?.into(),
        gpu.ptr(OP, "dt_raw", dt_raw, dt_offset, h)?.into(),
        gpu.ptr(OP, "dt_bias", dt_bias, 0, h)?.into(),
        gpu.ptr(OP, "A", a, 0, h)?.into(),
        gpu.ptr(OP, "D", d, 0, h)?.into(),
        gpu.ptr(OP, "state", state, 0, h * s.head_dim * s.d_state)?
            .into(),
        gpu.ptr(OP, "y", y, 0, s.di())?.into(),
        i32_arg(OP, "heads", h)?,
        i32_arg(OP, "head_dim", s.head_dim)?,
        i32_arg(OP, "d_state", s.d_state)?,
        i32_arg(OP, "n_groups", s.n_groups)?,
    ];
    let gy = s.head_dim.div_ceil(4) as u32;
    gpu.launch("ssm", state_name::<T>(OP)?, (h as u32, gy, 1), 128, &args)
}

/// Prompt: `n` tokens through the chunked scan with chunk size `chunk`; dt clamped below
/// by `dt_min` as in `forward_chunked`; `state` carried in and out.
#[allow(clippy::too_many_arguments)]
pub fn chunk_scan<T: KernelDtype>(
    gpu: &Gpu,
    s: &ScanShape,
    n: usize,
    chunk: usize,
    xbc: &CudaSlice<f32>,
    dt_raw: &CudaSlice<f32>,
    dt_offset: usize,
    dt_stride: usize,
    dt_bias: &CudaSlice<f32>,
    a: &CudaSlice<f32>,
    d: &CudaSlice<f32>,
    dt_min: f32,
    state: &mut CudaSlice<T>,
    y: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    const OP: &str = "ssd_chunk_scan";
    supports_scan(s, chunk)?;
    if n == 0 {
        return Ok(());
    }
    let (h, cd, di) = (s.heads, s.cd(), s.di());
    let nchunks = n.div_ceil(chunk);
    ensure(nchunks <= 65535, OP, || format!("{n} tokens in one call"))?;
    // Chunk-local C·Bᵀ for every (chunk, group): [nchunks, ng, chunk, chunk].
    let cb = gpu.zeros::<f32>(nchunks * s.n_groups * chunk * chunk)?;
    let xp = gpu.ptr(OP, "xbc", xbc, 0, n * cd)?;
    let cbp = gpu.ptr(OP, "cb", &cb, 0, nchunks * s.n_groups * chunk * chunk)?;
    let args = [
        xp.into(),
        cbp.into(),
        i32_arg(OP, "n", n)?,
        i32_arg(OP, "cd", cd)?,
        i32_arg(OP, "di", di)?,
        i32_arg(OP, "d_state", s.d_state)?,
        i32_arg(OP, "n_groups", s.n_groups)?,
        i32_arg(OP, "chunk", chunk)?,
    ];
    gpu.launch(
        "ssm",
        "ssd_chunk_cb_f32",
        (chunk as u32, s.n_groups as u32, nchunks as u32),
        128,
        &args,
    )?;
    let args = [
        xp.into(),
        gpu.ptr(OP, "dt_raw", dt_raw, dt_offset, (n - 1) * dt_stride + h)?
            .into(),
        Arg::I64(dt_stride as i64),
        gpu.ptr(OP, "dt_bias", dt_bias, 0, h)?.into(),
        gpu.ptr(OP, "A", a, 0, h)?.into(),
        gpu.ptr(OP, "D", d, 0, h)?.into(),
        cbp.into(),
        gpu.ptr(OP, "state", state, 0, h * s.head_dim * s.d_state)?
            .into(),
        gpu.ptr(OP, "y", y, 0, n * di)?.into(),
        i32_arg(OP, "n", n)?,
        i32_arg(OP, "heads", h)?,
        i32_arg(OP, "head_dim", s.head_dim)?,
        i32_arg(OP, "d_state", s.d_state)?,
        i32_arg(OP, "n_groups", s.n_groups)?,
        i32_arg(OP, "chunk", chunk)?,
        Arg::F32(dt_min),
    ];
    let gy = s.head_dim.div_ceil(ROWS_PER_BLOCK) as u32;
    gpu.launch("ssm", state_name::<T>(OP)?, (h as u32, gy, 1), 256, &args)?;
    // cudarc frees device memory stream-ordered, after the kernels queued above.
    drop(cb);
    Ok(())
}
