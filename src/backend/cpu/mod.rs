//! The CPU backend: the reference every other backend is tested against, and the fallback.
//!
//! Kernels pick their SIMD path at run time (`simd::level()`), never by build flags, so one
//! shipped binary runs on every x86-64 and aarch64 CPU.

pub mod fp8_matmul;
pub mod matmul;
pub mod ops;
pub mod quant;
pub mod simd;
pub mod team;

pub use fp8_matmul::WeightScale;
pub use matmul::{matmul, matmul_many, MatRef};
