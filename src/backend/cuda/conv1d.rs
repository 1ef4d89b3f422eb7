//! Causal depthwise conv1d + bias + silu of the Mamba2 mixer (kernels/conv1d.cu); oracle
//! `backend::cpu::ssm::causal_conv1d` (same arguments: rows read at an offset with a
//! stride). `conv_state` is `[k-1, cd]` f32, oldest first, like
//! `state::MambaState::conv_state`.

use cudarc::driver::CudaSlice;

use super::{blocks, ensure, i32_arg, Arg, CudaError, Gpu};

/// Most conv taps the one-step kernel keeps in registers (`NEMO_CONV_MAX_K`).
pub const MAX_KERNEL: usize = 8;

pub fn supports(cd: usize, k: usize, n: usize) -> Result<(), CudaError> {
    ensure((1..=MAX_KERNEL).contains(&k), "conv1d", || {
        format!("conv kernel {k} (1..={MAX_KERNEL})")
    })?;
    ensure(cd <= i32::MAX as usize, "conv1d", || {
        format!("conv_dim {cd}")
    })?;
    ensure(n <= 65535, "conv1d", || {
        format!("{n} tokens in one call (at most 65535)")
    })
}

/// Prompt: inputs are rows `x[x_offset + t·x_stride ..][..cd]` for t < n; `out` `[n, cd]`;
/// `conv_state` becomes the last k-1 inputs.
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    x_offset: usize,
    x_stride: usize,
    conv_state: &mut CudaSlice<f32>,
    w: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    n: usize,
    cd: usize,
    k: usize,
) -> Result<(), CudaError> {
    const OP: &str = "conv1d_prefill";
    supports(cd, k, n)?;
    if n == 0 {
        return Ok(());
    }
    let xp = gpu.ptr(OP, "x", x, x_offset, (n - 1) * x_stride + cd)?;
    let sp = gpu.ptr(OP, "conv_state", conv_state, 0, (k - 1) * cd)?;
    let args = [
        xp.into(),
        Arg::I64(x_stride as i64),
        sp.into(),
        gpu.ptr(OP, "weight", w, 0, cd * k)?.into(),
        gpu.ptr(OP, "bias", b, 0, cd)?.into(),
        gpu.ptr(OP, "out", out, 0, n * cd)?.into(),
        i32_arg(OP, "n", n)?,
        i32_arg(OP, "cd", cd)?,
        i32_arg(OP, "k", k)?,
    ];
    gpu.launch(
        "conv1d",
        "conv1d_prefill_f32",
        (blocks(cd, 256), n as u32, 1),
        256,
        &args,
    )?;
    let args = [
        xp.into(),
        Arg::I64(x_stride as i64),
        sp.into(),
        i32_arg(OP, "n", n)?,
        i32_arg(OP, "cd", cd)?,
        i32_arg(OP, "k", k)?,
    ];
    gpu.launch(
        "conv1d",
        "conv1d_state_f32",
        (blocks(cd, 256), 1, 1),
        256,
        &args,
    )
}

/// One decode token: input `x[x_offset..][..cd]`, `out` `[cd]`, state shifted in place.
#[allow(clippy::too_many_arguments)]
pub fn update(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    x_offset: usize,
    conv_state: &mut CudaSlice<f32>,
    w: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    cd: usize,
    k: usize,
) -> Result<(), CudaError> {
    const OP: &str = "conv1d_update";
    supports(cd, k, 1)?;
    let args = [
        gpu.ptr(OP, "x", x, x_offset, cd)?.into(),
        gpu.ptr(OP, "conv_state", conv_state, 0, (k - 1) * cd)?
            .into(),
        gpu.ptr(OP, "weight", w, 0, cd * k)?.into(),
        gpu.ptr(OP, "bias", b, 0, cd)?.into(),
        gpu.ptr(OP, "out", out, 0, cd)?.into(),
        i32_arg(OP, "cd", cd)?,
        i32_arg(OP, "k", k)?,
    ];
    gpu.launch(
        "conv1d",
        "conv1d_update_f32",
        (blocks(cd, 256), 1, 1),
        256,
        &args,
    )
}
