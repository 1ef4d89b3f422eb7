//! relu², bias add, f32 → bf16 (kernels/activation.cu); oracle `cpu::ops::relu2_inplace`.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::{blocks, i32_arg, Arg, CudaError, Gpu};

/// `x ← max(x, 0)²` over the first `n` elements; also into `out_bf16` when given.
pub fn relu2(
    gpu: &Gpu,
    x: &mut CudaSlice<f32>,
    out_bf16: Option<&mut CudaSlice<bf16>>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "relu2";
    let args = [
        gpu.ptr(OP, "x", x, 0, n)?.into(),
        out_bf16
            .map(|o| gpu.ptr(OP, "out_bf16", o, 0, n))
            .transpose()?
            .into(),
        Arg::I64(n as i64),
    ];
    if n == 0 {
        return Ok(());
    }
    gpu.launch(
        "activation",
        "relu2_f32",
        (blocks(n, 256), 1, 1),
        256,
        &args,
    )
}

/// `x[r, c] += b[c]`.
pub fn bias_add(
    gpu: &Gpu,
    x: &mut CudaSlice<f32>,
    b: &CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<(), CudaError> {
    const OP: &str = "bias_add";
    let args = [
        gpu.ptr(OP, "x", x, 0, rows * cols)?.into(),
        gpu.ptr(OP, "bias", b, 0, cols)?.into(),
        Arg::I64(rows as i64),
        i32_arg(OP, "cols", cols)?,
    ];
    if rows * cols == 0 {
        return Ok(());
    }
    gpu.launch(
        "activation",
        "bias_add_f32",
        (blocks(rows * cols, 256), 1, 1),
        256,
        &args,
    )
}

/// `out = bf16(x)` (round to nearest even) over `n` elements.
pub fn cast_bf16(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    out: &mut CudaSlice<bf16>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "cast_bf16";
    let args = [
        gpu.ptr(OP, "x", x, 0, n)?.into(),
        gpu.ptr(OP, "out", out, 0, n)?.into(),
        Arg::I64(n as i64),
    ];
    if n == 0 {
        return Ok(());
    }
    gpu.launch(
        "activation",
        "cast_f32_bf16",
        (blocks(n, 256), 1, 1),
        256,
        &args,
    )
}
