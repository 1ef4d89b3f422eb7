//! Where the GPU model's weights come from (`nemotron_h::GpuNemotronH::load`): a loaded
//! checkpoint's `WeightStore` (GEMM operands converted to bf16 on the host in slices and
//! uploaded; quantized and FP8 tensors refused; `with_progress` reports the bytes as they
//! go up, for a progress bar), or random values for `nemo bench` (filled on the device
//! from one uploaded pool per scale, never zeros).

use std::collections::HashMap;

use cudarc::driver::CudaSlice;
use half::bf16;

use super::GpuModelError;
use crate::backend::cuda::{CudaError, Gpu};
use crate::backend::dtype::widen_into;
use crate::backend::DType;
use crate::model::synthetic::XorShift64;
use crate::model::weights::WeightStore;

fn drv(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// Where the weights come from.
pub trait WeightSource {
    fn contains(&self, name: &str) -> bool;
    /// Tensor `name` of `shape` as bf16 on the device (GEMM operands, tables).
    fn matrix(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
    ) -> Result<CudaSlice<bf16>, GpuModelError>;
    /// Tensor `name` of `shape` widened to f32 on the host (small per-channel tensors);
    /// `squeeze` accepts unit dimensions beyond `shape` (`A_log` `[h, 1]`, conv `[cd, 1, k]`).
    fn vector(
        &mut self,
        name: &str,
        shape: &[usize],
        squeeze: bool,
    ) -> Result<Vec<f32>, GpuModelError>;
}

/// A checkpoint's tensors, uploaded in slices of rows (no host copy of a whole tensor).
pub struct StoreWeights<'a>(pub &'a WeightStore);

/// Elements converted and uploaded per copy.
const UPLOAD_CHUNK: usize = 1 << 22;

impl WeightSource for StoreWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    fn matrix(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
    ) -> Result<CudaSlice<bf16>, GpuModelError> {
        upload_matrix(self.0, gpu, name, shape, &mut |_| {})
    }

    fn vector(
        &mut self,
        name: &str,
        shape: &[usize],
        squeeze: bool,
    ) -> Result<Vec<f32>, GpuModelError> {
        Ok(read_vector(self.0, name, shape, squeeze)?.0)
    }
}

/// `StoreWeights` that reports its progress: `progress(done, total)` after every uploaded
/// slice and small tensor, in bytes read from the checkpoint (`total` = every tensor's
/// stored bytes, `WeightStore::total_bytes`), for a progress bar.
pub struct StoreWeightsProgress<'a> {
    store: &'a WeightStore,
    done: usize,
    total: usize,
    progress: Box<dyn FnMut(usize, usize) + 'a>,
}

impl<'a> StoreWeights<'a> {
    pub fn with_progress(
        self,
        progress: impl FnMut(usize, usize) + 'a,
    ) -> StoreWeightsProgress<'a> {
        StoreWeightsProgress {
            store: self.0,
            done: 0,
            total: self.0.total_bytes(),
            progress: Box::new(progress),
        }
    }
}

impl StoreWeightsProgress<'_> {
    /// Reports the whole checkpoint as read (tensors the model does not use included).
    pub fn finish(&mut self) {
        self.done = self.total;
        (self.progress)(self.total, self.total);
    }

    fn advance(&mut self, bytes: usize) {
        self.done = (self.done + bytes).min(self.total);
        (self.progress)(self.done, self.total);
    }
}

impl WeightSource for StoreWeightsProgress<'_> {
    fn contains(&self, name: &str) -> bool {
        self.store.contains(name)
    }

    fn matrix(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
    ) -> Result<CudaSlice<bf16>, GpuModelError> {
        // Each slice moves the bar as it goes up: a big tensor does not stall it.
        let (store, done, total) = (self.store, self.done, self.total);
        let progress = &mut self.progress;
        let mut read = 0;
        let t = upload_matrix(store, gpu, name, shape, &mut |b| {
            read += b;
            progress((done + read).min(total), total);
        })?;
        self.done = (done + read).min(total);
        Ok(t)
    }

    fn vector(
        &mut self,
        name: &str,
        shape: &[usize],
        squeeze: bool,
    ) -> Result<Vec<f32>, GpuModelError> {
        let (v, bytes) = read_vector(self.store, name, shape, squeeze)?;
        self.advance(bytes);
        Ok(v)
    }
}

/// Tensor `name` converted to bf16 on the host `UPLOAD_CHUNK` elements at a time and
/// uploaded; `uploaded(bytes)` is told the stored bytes of each slice once it is queued.
fn upload_matrix(
    store: &WeightStore,
    gpu: &Gpu,
    name: &str,
    shape: &[usize],
    uploaded: &mut dyn FnMut(usize),
) -> Result<CudaSlice<bf16>, GpuModelError> {
    let t = store.get(name, shape)?;
    if !matches!(t.dtype, DType::BF16 | DType::F16 | DType::F32)
        || !matches!(t.scale(), crate::backend::cpu::WeightScale::None)
    {
        return Err(GpuModelError::Unsupported(format!(
            "tensor `{name}` is {}: the GPU backend takes bf16, f16 or f32 weights (quantized and FP8 weights are not supported on cuda yet)",
            t.dtype
        )));
    }
    let n = t.numel();
    let sz = t.dtype.size();
    let bytes = t.data();
    let mut dev = gpu.zeros::<bf16>(n)?;
    let mut wide = vec![0f32; UPLOAD_CHUNK.min(n)];
    let mut host = vec![bf16::ZERO; UPLOAD_CHUNK.min(n)];
    let mut at = 0;
    while at < n {
        let m = UPLOAD_CHUNK.min(n - at);
        let src = &bytes[at * sz..(at + m) * sz];
        if t.dtype == DType::BF16 {
            for (h, b) in host.iter_mut().zip(src.chunks_exact(2)) {
                *h = bf16::from_bits(u16::from_le_bytes([b[0], b[1]]));
            }
        } else {
            widen_into(t.dtype, src, &mut wide[..m]);
            for (h, w) in host.iter_mut().zip(&wide[..m]) {
                *h = bf16::from_f32(*w);
            }
        }
        let mut dst = dev.slice_mut(at..at + m);
        gpu.stream.memcpy_htod(&host[..m], &mut dst).map_err(drv)?;
        uploaded(m * sz);
        at += m;
    }
    Ok(dev)
}

/// Tensor `name` widened to f32, and its stored bytes.
fn read_vector(
    store: &WeightStore,
    name: &str,
    shape: &[usize],
    squeeze: bool,
) -> Result<(Vec<f32>, usize), GpuModelError> {
    let t = if squeeze {
        store.get_squeezed(name, shape)?
    } else {
        store.get(name, shape)?
    };
    Ok((t.to_f32(), t.data().len()))
}

/// Random weights for benchmarks, scaled as `model::synthetic` scales them (so activations
/// stay finite), never zeros. Matrices are filled on the device from one uploaded pool of
/// random bf16 per scale: speed does not depend on the values.
pub struct RandomWeights {
    pools: HashMap<u32, CudaSlice<bf16>>,
    rng: XorShift64,
}

const POOL: usize = 1 << 22;

impl Default for RandomWeights {
    fn default() -> Self {
        Self::new()
    }
}

impl RandomWeights {
    pub fn new() -> Self {
        RandomWeights {
            pools: HashMap::new(),
            rng: XorShift64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Uniform in [-scale, scale], never exactly zero.
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.uniform(scale)).collect()
    }

    fn scale_of(name: &str, shape: &[usize]) -> f32 {
        // Each output sums over the last dimension (stacked experts `[E, rows, cols]` too).
        let cols = if shape.len() > 1 {
            shape[shape.len() - 1].max(1)
        } else {
            1
        };
        let inv = (3.0 / cols as f32).sqrt();
        if name.ends_with("embeddings.weight") {
            1.0
        } else if name.contains("out_proj") || name.contains("o_proj") || name.contains("down_proj")
        {
            inv / 4.0
        } else {
            inv
        }
    }
}

impl WeightSource for RandomWeights {
    fn contains(&self, name: &str) -> bool {
        // The synthetic shapes have no projection biases and a separate LM head; the MoE
        // router has its correction bias (as `model::synthetic`).
        !name.contains("bias")
            || name.ends_with("conv1d.bias")
            || name.ends_with("dt_bias")
            || name.ends_with("e_score_correction_bias")
    }

    fn matrix(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
    ) -> Result<CudaSlice<bf16>, GpuModelError> {
        let scale = Self::scale_of(name, shape);
        if !self.pools.contains_key(&scale.to_bits()) {
            let v: Vec<bf16> = self
                .values(POOL, scale)
                .into_iter()
                .map(|x| {
                    let b = bf16::from_f32(x);
                    if b.to_f32() == 0.0 {
                        bf16::from_f32(scale * 1e-3)
                    } else {
                        b
                    }
                })
                .collect();
            self.pools.insert(scale.to_bits(), gpu.upload(&v)?);
        }
        let pool = &self.pools[&scale.to_bits()];
        let n: usize = shape.iter().product();
        let mut dev = gpu.zeros::<bf16>(n)?;
        let mut at = 0;
        while at < n {
            let m = POOL.min(n - at);
            let src = pool.slice(0..m);
            let mut dst = dev.slice_mut(at..at + m);
            gpu.stream.memcpy_dtod(&src, &mut dst).map_err(drv)?;
            at += m;
        }
        Ok(dev)
    }

    fn vector(
        &mut self,
        name: &str,
        shape: &[usize],
        _squeeze: bool,
    ) -> Result<Vec<f32>, GpuModelError> {
        let n: usize = shape.iter().product();
        let scale = if name.ends_with("conv1d.weight") {
            0.5
        } else if name.ends_with("gate.weight") {
            // The MoE router `[experts, hidden]`: logits of unit size, so sigmoid scores
            // spread and each token picks its own experts (scale 1 saturated every score
            // at 1.0 and every token took the same lowest-index experts).
            (3.0 / shape.last().copied().unwrap_or(1).max(1) as f32).sqrt()
        } else if name.ends_with("conv1d.bias") || name.ends_with("e_score_correction_bias") {
            0.1
        } else {
            1.0
        };
        Ok(self.values(n, scale))
    }
}

#[cfg(test)]
mod tests {
    use super::{RandomWeights, WeightSource};

    #[test]
    fn random_weights_are_scaled_like_the_cpu_synthetic_shapes_and_never_zero() {
        // `model::synthetic`: inputs sqrt(3/in), outputs sqrt(3/in)/4, embeddings 1.
        let inv = |k: usize| (3.0 / k as f32).sqrt();
        let cases = [
            ("backbone.embeddings.weight", [4096, 256], 1.0),
            (
                "backbone.layers.0.mixer.in_proj.weight",
                [1000, 256],
                inv(256),
            ),
            (
                "backbone.layers.0.mixer.out_proj.weight",
                [256, 512],
                inv(512) / 4.0,
            ),
            (
                "backbone.layers.3.mixer.q_proj.weight",
                [256, 256],
                inv(256),
            ),
            (
                "backbone.layers.3.mixer.o_proj.weight",
                [256, 128],
                inv(128) / 4.0,
            ),
            (
                "backbone.layers.1.mixer.up_proj.weight",
                [768, 256],
                inv(256),
            ),
            (
                "backbone.layers.1.mixer.down_proj.weight",
                [256, 768],
                inv(768) / 4.0,
            ),
            ("lm_head.weight", [4096, 256], inv(256)),
        ];
        for (name, shape, want) in cases {
            assert_eq!(RandomWeights::scale_of(name, &shape), want, "{name}");
        }
        // Stacked experts `[E, rows, cols]` sum over cols, like one expert's matrix.
        let stacked = "backbone.layers.1.mixer.experts.up_proj.weight";
        assert_eq!(RandomWeights::scale_of(stacked, &[8, 64, 256]), inv(256));
        // The router (`model::synthetic`: gate sqrt(3/hidden), correction bias 0.1).
        let mut r = RandomWeights::new();
        let gate = r
            .vector("backbone.layers.1.mixer.gate.weight", &[8, 300], false)
            .unwrap();
        assert!(gate.iter().all(|x| x.abs() <= inv(300)));
        assert!(gate.iter().any(|x| x.abs() > inv(300) / 2.0));
        let bias = "backbone.layers.1.mixer.gate.e_score_correction_bias";
        assert!(r.contains(bias));
        assert!(r
            .vector(bias, &[8], false)
            .unwrap()
            .iter()
            .all(|x| x.abs() <= 0.1));
        let mut r = RandomWeights::new();
        let v = r.values(10_000, 0.5);
        assert!(v.iter().all(|x| *x != 0.0 && x.abs() <= 0.5));
        assert_ne!(v, r.values(10_000, 0.5), "each call draws new values");
    }
}
