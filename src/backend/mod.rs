//! Compute backends. `cpu` is the reference and the fallback; every other backend is
//! tested op by op against it.
//!
//! Invariant: activations are f32 on the CPU; weights stay in their stored dtype and are
//! widened to f32 inside the kernels, never copied to an f32 model.

pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod fp8;

pub use dtype::DType;
