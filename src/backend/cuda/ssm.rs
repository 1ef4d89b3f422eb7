//! Mamba2 selective scan (kernels/ssm.cu): the one-step state update for decode and the
//! chunked SSD scan for prompts; oracles `backend::cpu::ssm::{ssm_step, ssd_chunked}` (same
//! arguments, same layouts).
//!
//! `xbc` is `[n, cd]` after conv + silu (x | B | C), `dt_raw` the in_proj columns before
//! softplus (`dt_raw[dt_offset + t·dt_stride + head]`), `state` `[heads, head_dim, d_state]`
//! in f32, f16 or bf16, `y` `[n, heads·head_dim]` f32 (before the gated norm).
//!
//! The prompt scan runs the SSD form on tensor cores (tf32 MMA inputs, f32 accumulation,
//! the state in f32 from the first token to the last); its chunk length is the kernel's
//! own (32 tokens for d_state ≤ 128, 16 up to 256): the chunked form equals the
//! recurrence for any chunk length, so the model's `chunk_size` is checked but does not
//! change the result beyond rounding.

use cudarc::driver::CudaSlice;

use super::{ensure, i32_arg, Arg, CudaError, Gpu, KernelDtype};

/// Limits of the prompt scan: d_state (the `ns256` kernels), the model's chunk_size.
pub const MAX_D_STATE: usize = 256;
pub const MAX_CHUNK: usize = 256;
/// Most head_dim columns one block of `ssd_scan_mma` owns (`SSD_PB`).
const COLS_PER_BLOCK: usize = 40;

/// Dynamic shared memory of `ssd_scan_mma<NS, L>`, as `ssd_smem_bytes` in kernels/ssm.cu
/// lays it out (the kernel traps when given less): cum f64 [L], dts f32 [L], then tf32
/// words C, B [L][NS+4], xᵀ, Wᵀ [SSD_PB][L+4], M [L][L+4], S [SSD_PB][NS+4].
const fn scan_smem_bytes(ns: usize, l: usize) -> usize {
    let pad = 4;
    8 * l
        + 4 * l
        + 4 * (2 * l * (ns + pad)
            + 2 * COLS_PER_BLOCK * (l + pad)
            + l * (l + pad)
            + COLS_PER_BLOCK * (ns + pad))
}

/// Shape of one Mamba2 layer's scan: the CPU ops' (`backend::cpu::ssm`), the oracles.
pub use crate::backend::cpu::ssm::ScanShape;

pub fn supports_update(s: &ScanShape) -> Result<(), CudaError> {
    ensure(
        s.n_groups > 0 && s.heads.is_multiple_of(s.n_groups) && s.head_dim > 0 && s.d_state > 0,
        "ssm_update",
        || format!("{} heads in {} groups", s.heads, s.n_groups),
    )?;
    ensure(
        s.heads <= 65535 && s.conv_dim() <= i32::MAX as usize,
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
        ("ssd_scan_mma_ns128", "f32") => "ssd_scan_mma_ns128_f32",
        ("ssd_scan_mma_ns128", "f16") => "ssd_scan_mma_ns128_f16",
        ("ssd_scan_mma_ns128", "bf16") => "ssd_scan_mma_ns128_bf16",
        ("ssd_scan_mma_ns256", "f32") => "ssd_scan_mma_ns256_f32",
        ("ssd_scan_mma_ns256", "f16") => "ssd_scan_mma_ns256_f16",
        ("ssd_scan_mma_ns256", "bf16") => "ssd_scan_mma_ns256_bf16",
        (_, other) => {
            return Err(CudaError::Unsupported {
                op: "ssm",
                why: format!("state dtype {other}"),
            })
        }
    })
}

/// How `ssd_scan_mma` splits head_dim over blocks: (blocks per head, columns per block),
/// the columns a multiple of 8 and at most `COLS_PER_BLOCK` (head_dim 80 → 2 × 40, 64 → 2 × 32).
fn column_split(head_dim: usize) -> (usize, usize) {
    let blocks = head_dim.div_ceil(COLS_PER_BLOCK);
    let cols = head_dim.div_ceil(blocks).div_ceil(8) * 8;
    (head_dim.div_ceil(cols), cols)
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
        gpu.ptr(OP, "xbc", xbc, 0, s.conv_dim())?.into(),
        gpu.ptr(OP, "dt_raw", dt_raw, dt_offset, h)?.into(),
        gpu.ptr(OP, "dt_bias", dt_bias, 0, h)?.into(),
        gpu.ptr(OP, "A", a, 0, h)?.into(),
        gpu.ptr(OP, "D", d, 0, h)?.into(),
        gpu.ptr(OP, "state", state, 0, h * s.head_dim * s.d_state)?
            .into(),
        gpu.ptr(OP, "y", y, 0, s.d_inner())?.into(),
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
    let (h, cd, di) = (s.heads, s.conv_dim(), s.d_inner());
    let (col_blocks, cols) = column_split(s.head_dim);
    let args = [
        gpu.ptr(OP, "xbc", xbc, 0, n * cd)?.into(),
        gpu.ptr(OP, "dt_raw", dt_raw, dt_offset, (n - 1) * dt_stride + h)?
            .into(),
        Arg::I64(dt_stride as i64),
        gpu.ptr(OP, "dt_bias", dt_bias, 0, h)?.into(),
        gpu.ptr(OP, "A", a, 0, h)?.into(),
        gpu.ptr(OP, "D", d, 0, h)?.into(),
        gpu.ptr(OP, "state", state, 0, h * s.head_dim * s.d_state)?
            .into(),
        gpu.ptr(OP, "y", y, 0, n * di)?.into(),
        Arg::I64(n as i64),
        i32_arg(OP, "heads", h)?,
        i32_arg(OP, "head_dim", s.head_dim)?,
        i32_arg(OP, "d_state", s.d_state)?,
        i32_arg(OP, "n_groups", s.n_groups)?,
        i32_arg(OP, "columns", cols)?,
        Arg::F32(dt_min),
    ];
    // (kernel, d_state capacity, chunk length) as instantiated in kernels/ssm.cu.
    let (prefix, ns_max, l) = if s.d_state <= 128 {
        ("ssd_scan_mma_ns128", 128, 32)
    } else {
        ("ssd_scan_mma_ns256", 256, 16)
    };
    let name = state_name::<T>(prefix)?;
    // Shape-checked above; the shared memory covers the kernel's layout (`scan_smem_bytes`).
    gpu.launch_smem(
        "ssm",
        name,
        (h as u32, col_blocks as u32, 1),
        256, // SSD_WARPS = 8 warps
        scan_smem_bytes(ns_max, l),
        &args,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_split_covers_head_dim_in_multiples_of_eight() {
        for p in 1..=300 {
            let (blocks, cols) = column_split(p);
            assert!(
                cols % 8 == 0 && cols <= COLS_PER_BLOCK,
                "head_dim {p}: {cols}"
            );
            assert!(
                blocks * cols >= p && (blocks - 1) * cols < p,
                "head_dim {p}"
            );
        }
        assert_eq!(column_split(80), (2, 40));
        assert_eq!(column_split(64), (2, 32));
    }

    #[test]
    fn scan_shared_memory_fits_every_target_arch() {
        // 99 KB: the most a block may opt into on sm_86, sm_89 and sm_120.
        for (ns, l, bytes) in [(128, 32, 71_424), (256, 16, 82_752)] {
            assert_eq!(scan_smem_bytes(ns, l), bytes);
            assert!(bytes <= 99 * 1024);
        }
    }
}
