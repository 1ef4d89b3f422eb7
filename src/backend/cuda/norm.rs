//! RMSNorm fused with the residual add, and the grouped gated RMSNorm (kernels/norm.cu);
//! oracles `cpu::ops::{rms_norm, gated_rms_norm}`.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::{ensure, i32_arg, Arg, CudaError, Gpu};

pub fn supports_rms(dim: usize) -> Result<(), CudaError> {
    ensure(
        dim > 0 && dim <= i32::MAX as usize,
        "rms_norm_residual",
        || format!("dim {dim}"),
    )
}

pub fn supports_gated(dim: usize, group_size: usize) -> Result<(), CudaError> {
    ensure(
        group_size > 0 && dim.is_multiple_of(group_size) && dim <= i32::MAX as usize,
        "gated_rms_norm",
        || format!("dim {dim} is not a multiple of group size {group_size}"),
    )
}

/// For each of `rows` rows of `dim`: `residual += delta` (when given), then
/// `out = w · residual / rms(residual)` into `out_f32` and/or `out_bf16`.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_residual(
    gpu: &Gpu,
    residual: &mut CudaSlice<f32>,
    delta: Option<&CudaSlice<f32>>,
    w: &CudaSlice<f32>,
    out_f32: Option<&mut CudaSlice<f32>>,
    out_bf16: Option<&mut CudaSlice<bf16>>,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<(), CudaError> {
    const OP: &str = "rms_norm_residual";
    supports_rms(dim)?;
    let n = rows * dim;
    let args = [
        gpu.ptr(OP, "residual", residual, 0, n)?.into(),
        delta
            .map(|d| gpu.ptr(OP, "delta", d, 0, n))
            .transpose()?
            .into(),
        gpu.ptr(OP, "weight", w, 0, dim)?.into(),
        out_f32
            .map(|o| gpu.ptr(OP, "out_f32", o, 0, n))
            .transpose()?
            .into(),
        out_bf16
            .map(|o| gpu.ptr(OP, "out_bf16", o, 0, n))
            .transpose()?
            .into(),
        i32_arg(OP, "dim", dim)?,
        Arg::F32(eps),
    ];
    if rows == 0 {
        return Ok(());
    }
    let threads = if dim >= 2048 { 1024 } else { 256 };
    gpu.launch(
        "norm",
        "rms_norm_residual_f32",
        (rows as u32, 1, 1),
        threads,
        &args,
    )
}

/// `y ← y · silu(z)`, then RMSNorm per group of `group_size` channels, times `w`; `z` rows
/// start at `z_offset` with stride `z_stride` (a slice of the in_proj output).
#[allow(clippy::too_many_arguments)]
pub fn gated_rms_norm(
    gpu: &Gpu,
    y: &mut CudaSlice<f32>,
    z: &CudaSlice<f32>,
    z_offset: usize,
    z_stride: usize,
    w: &CudaSlice<f32>,
    out_bf16: Option<&mut CudaSlice<bf16>>,
    rows: usize,
    dim: usize,
    group_size: usize,
    eps: f32,
) -> Result<(), CudaError> {
    const OP: &str = "gated_rms_norm";
    supports_gated(dim, group_size)?;
    if z_stride < dim {
        return Err(CudaError::Unsupported {
            op: OP,
            why: format!("z stride {z_stride} < dim {dim}"),
        });
    }
    ensure(rows <= 65535, OP, || {
        format!("{rows} rows in one call (at most 65535)")
    })?;
    let zneed = if rows == 0 {
        0
    } else {
        (rows - 1) * z_stride + dim
    };
    let args = [
        gpu.ptr(OP, "y", y, 0, rows * dim)?.into(),
        gpu.ptr(OP, "z", z, z_offset, zneed)?.into(),
        Arg::I64(z_stride as i64),
        gpu.ptr(OP, "weight", w, 0, dim)?.into(),
        out_bf16
            .map(|o| gpu.ptr(OP, "out_bf16", o, 0, rows * dim))
            .transpose()?
            .into(),
        i32_arg(OP, "dim", dim)?,
        i32_arg(OP, "group_size", group_size)?,
        Arg::F32(eps),
    ];
    if rows == 0 {
        return Ok(());
    }
    let groups = (dim / group_size) as u32;
    gpu.launch(
        "norm",
        "gated_rms_norm_f32",
        (groups, rows as u32, 1),
        256,
        &args,
    )
}
