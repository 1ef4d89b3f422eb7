//! Logits processing and sampling on the device (kernels/sampling.cu); oracle
//! `engine::sampler::Sampler::sample`. Only the chosen id comes back to the host.
//!
//! The draw reads its knobs and its uniform `u` from a device struct (`DrawArgs`), which
//! the host writes with one small copy before each launch: `draw` itself depends on no
//! host value, so a captured decode step samples with whatever the host wrote last. `u`
//! stays the host's (its seeded generator), so a seed gives the same draws eager or
//! replayed. Bans and penalties need the token history, which lives on the host: they
//! are `sample`'s (eager) business, not a captured step's.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use super::{blocks, ensure, i32_arg, Arg, CudaError, Gpu};

/// The sampler's knobs (neutral values switch a step off, as `SamplingParams`).
#[derive(Clone, Copy, Debug)]
pub struct SampleArgs {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
}

impl From<&crate::engine::sampler::SamplingParams> for SampleArgs {
    /// The device sampler's knobs for the CPU sampler's parameters (the seed stays on the
    /// host: it drives the uniform draw passed to `sample`).
    fn from(p: &crate::engine::sampler::SamplingParams) -> Self {
        SampleArgs {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
        }
    }
}

impl SampleArgs {
    /// Whether a repetition or presence penalty is on (they need the token history).
    pub fn has_penalties(&self) -> bool {
        (self.repetition_penalty != 1.0 && self.repetition_penalty > 0.0)
            || self.presence_penalty != 0.0
    }
}

/// The draw's knobs and uniform as `sample_f32` reads them (`SampleParams` in
/// kernels/sampling.cu: the same five 4-byte fields in the same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DrawArgs {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub u: f32,
}

// SAFETY: a #[repr(C)] struct of plain 4-byte numbers, for which all-zero bits are valid.
unsafe impl DeviceRepr for DrawArgs {}
unsafe impl ValidAsZeroBits for DrawArgs {}

impl DrawArgs {
    /// `a`'s draw knobs with the uniform `u` (a NaN temperature is greedy, as on the CPU).
    pub fn new(a: &SampleArgs, u: f32) -> Self {
        DrawArgs {
            temperature: if a.temperature.is_nan() {
                0.0
            } else {
                a.temperature
            },
            top_k: a.top_k.min(i32::MAX as usize) as i32,
            top_p: a.top_p,
            min_p: a.min_p,
            u,
        }
    }
}

/// Queues the copy of `a` and `u` into `dev` (one 20-byte host-to-device copy).
pub fn write_args(
    gpu: &Gpu,
    a: &SampleArgs,
    u: f32,
    dev: &mut CudaSlice<DrawArgs>,
) -> Result<(), CudaError> {
    gpu.stream
        .memcpy_htod(&[DrawArgs::new(a, u)], dev)
        .map_err(|e| CudaError::Driver(format!("{e:?}")))
}

/// Queues one draw from `logits` with the knobs in `args` (on the device) into `out[0]`.
/// No allocation, no host value, no sync: a graph can capture it.
pub fn draw(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    vocab: usize,
    args: &CudaSlice<DrawArgs>,
    out: &mut CudaSlice<u32>,
) -> Result<(), CudaError> {
    const OP: &str = "sample";
    supports(vocab)?;
    let a = [
        gpu.ptr(OP, "logits", logits, 0, vocab)?.into(),
        i32_arg(OP, "vocab", vocab)?,
        gpu.ptr(OP, "args", args, 0, 1)?.into(),
        gpu.ptr(OP, "out", out, 0, 1)?.into(),
    ];
    gpu.launch("sampling", "sample_f32", (1, 1, 1), 1024, &a)
}

pub fn supports(vocab: usize) -> Result<(), CudaError> {
    ensure(vocab >= 1 && vocab <= i32::MAX as usize, "sample", || {
        format!("vocab {vocab}")
    })
}

/// Applies bans and penalties to `logits` (in place, like the CPU) and draws one token
/// with the uniform `u` ∈ [0, 1) (from the host's seeded generator); returns its id. The
/// eager, standalone form (it uploads the lists and the knobs, and waits for the id).
#[allow(clippy::too_many_arguments)]
pub fn sample(
    gpu: &Gpu,
    logits: &mut CudaSlice<f32>,
    vocab: usize,
    a: &SampleArgs,
    history: &[u32],
    banned: &[u32],
    u: f32,
    out: &mut CudaSlice<u32>,
) -> Result<u32, CudaError> {
    const OP: &str = "sample";
    supports(vocab)?;
    let lp = gpu.ptr(OP, "logits", logits, 0, vocab)?;
    if !banned.is_empty() {
        let b = gpu.upload(banned)?;
        let args = [
            lp.into(),
            gpu.ptr(OP, "banned", &b, 0, banned.len())?.into(),
            i32_arg(OP, "banned", banned.len())?,
            i32_arg(OP, "vocab", vocab)?,
        ];
        gpu.launch(
            "sampling",
            "sample_ban_f32",
            (blocks(banned.len(), 256), 1, 1),
            256,
            &args,
        )?;
    }
    if !history.is_empty() && a.has_penalties() {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        let h = gpu.upload(&seen)?;
        let args = [
            lp.into(),
            gpu.ptr(OP, "history", &h, 0, seen.len())?.into(),
            i32_arg(OP, "history", seen.len())?,
            i32_arg(OP, "vocab", vocab)?,
            Arg::F32(a.repetition_penalty),
            Arg::F32(a.presence_penalty),
        ];
        gpu.launch(
            "sampling",
            "sample_penalties_f32",
            (blocks(seen.len(), 256), 1, 1),
            256,
            &args,
        )?;
    }
    let mut dev_args = gpu.zeros::<DrawArgs>(1)?;
    write_args(gpu, a, u, &mut dev_args)?;
    draw(gpu, logits, vocab, &dev_args, out)?;
    let id = gpu.download(out)?;
    id.first()
        .copied()
        .ok_or_else(|| CudaError::Driver("sample: empty result buffer".into()))
}
