//! GEMMs through cuBLAS: `y[n, out] = x[n, in] · W[out, in]ᵀ` with bf16 inputs and f32
//! accumulation and output (`cublasGemmEx`, CUBLAS_COMPUTE_32F); oracle `cpu::matmul`.
//!
//! Row-major to cuBLAS's column-major: W `[out, in]` row-major is `in × out` column-major
//! (ld = in), x is `in × n` (ld = in), y is `out × n` (ld = out); so y = op(W)ᵀ · x with
//! transa = T, m = out, n = n, k = in.

use cudarc::cublas::sys;
use cudarc::driver::CudaSlice;
use half::bf16;

use super::{CudaError, DPtr, Gpu};

pub fn supports(n: usize, out_dim: usize, in_dim: usize) -> Result<(), CudaError> {
    let ok = |v: usize| v <= i32::MAX as usize;
    super::ensure(ok(n) && ok(out_dim) && ok(in_dim), "gemm", || {
        format!("{n}×{in_dim} · {out_dim}×{in_dim}ᵀ")
    })
}

/// `y = beta·y + x · Wᵀ` (beta 0 overwrites, 1 accumulates, e.g. into the residual).
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16(
    gpu: &Gpu,
    x: &CudaSlice<bf16>,
    n: usize,
    w: &CudaSlice<bf16>,
    out_dim: usize,
    in_dim: usize,
    y: &mut CudaSlice<f32>,
    beta: f32,
) -> Result<(), CudaError> {
    const OP: &str = "gemm";
    supports(n, out_dim, in_dim)?;
    let xp = gpu.ptr(OP, "x", x, 0, n * in_dim)?;
    let wp = gpu.ptr(OP, "weight", w, 0, out_dim * in_dim)?;
    let yp = gpu.ptr(OP, "y", y, 0, n * out_dim)?;
    if n == 0 || out_dim == 0 {
        return Ok(());
    }
    gemm_at(gpu, xp, n, wp, out_dim, in_dim, yp, beta)
}

/// `y = beta·y + x · Wᵀ` on raw addresses the caller has checked (`Gpu::ptr`), e.g. rows
/// of a larger activation buffer times one expert of a stacked weight (`moe_layer`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_at(
    gpu: &Gpu,
    x: DPtr<bf16>,
    n: usize,
    w: DPtr<bf16>,
    out_dim: usize,
    in_dim: usize,
    y: DPtr<f32>,
    beta: f32,
) -> Result<(), CudaError> {
    supports(n, out_dim, in_dim)?;
    if n == 0 || out_dim == 0 {
        return Ok(());
    }
    let blas = gpu.blas()?;
    let alpha = 1.0f32;
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            out_dim as i32,
            n as i32,
            in_dim as i32,
            &alpha as *const f32 as *const _,
            w.raw() as *const _,
            sys::cudaDataType::CUDA_R_16BF,
            in_dim as i32,
            x.raw() as *const _,
            sys::cudaDataType::CUDA_R_16BF,
            in_dim as i32,
            &beta as *const f32 as *const _,
            y.raw() as *mut _,
            sys::cudaDataType::CUDA_R_32F,
            out_dim as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| CudaError::Blas(format!("{e:?}")))
}
