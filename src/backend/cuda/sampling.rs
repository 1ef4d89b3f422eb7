//! Logits processing and sampling on the device (kernels/sampling.cu); oracle
//! `engine::sampler::Sampler::sample`. Only the chosen id comes back to the host.

use cudarc::driver::CudaSlice;

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

pub fn supports(vocab: usize) -> Result<(), CudaError> {
    ensure(vocab >= 1 && vocab <= i32::MAX as usize, "sample", || {
        format!("vocab {vocab}")
    })
}

/// Applies bans and penalties to `logits` (in place, like the CPU) and draws one token
/// with the uniform `u` ∈ [0, 1) (from the host's seeded generator); returns its id.
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
    let rep_on = a.repetition_penalty != 1.0 && a.repetition_penalty > 0.0;
    if !history.is_empty() && (rep_on || a.presence_penalty != 0.0) {
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
    let temperature = if a.temperature.is_nan() {
        0.0
    } else {
        a.temperature
    };
    let args = [
        lp.into(),
        i32_arg(OP, "vocab", vocab)?,
        Arg::F32(temperature),
        i32_arg(OP, "top_k", a.top_k.min(i32::MAX as usize))?,
        Arg::F32(a.top_p),
        Arg::F32(a.min_p),
        Arg::F32(u),
        gpu.ptr(OP, "out", out, 0, 1)?.into(),
    ];
    gpu.launch("sampling", "sample_f32", (1, 1, 1), 1024, &args)?;
    let id = gpu.download(out)?;
    id.first()
        .copied()
        .ok_or_else(|| CudaError::Driver("sample: empty result buffer".into()))
}
