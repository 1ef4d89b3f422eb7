//! Helpers of the GPU tests (feature `cuda`): the GPU or a `SKIP` line, reproducible random
//! inputs, uploads, relative errors.

use cudarc::driver::{CudaSlice, DeviceRepr};
use nemo::backend::cuda::Gpu;

/// Whether a missing GPU must fail the test (`NEMO_REQUIRE_GPU=1`, set by
/// scripts/gpu-check.sh) instead of skipping it.
pub fn require_gpu() -> bool {
    std::env::var("NEMO_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The GPU, or None after printing why the test is skipped.
pub fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            if require_gpu() {
                panic!("NEMO_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            eprintln!("SKIP {test}: no usable GPU: {e}");
            None
        }
    }
}

/// xorshift64*: fresh but reproducible inputs (the seed is printed on failure).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-a, a).
    pub fn f(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
    pub fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(a)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A fresh seed per run (printed by the tests that use it).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

pub fn up<T: DeviceRepr>(g: &Gpu, v: &[T]) -> CudaSlice<T> {
    g.upload(v).unwrap()
}

/// Relative L2 error ‖got − want‖ / ‖want‖.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt() as f32
}
