//! Logits processing and sampling on the device (kernels/sampling.cu); oracle
//! `engine::sampler::Sampler::sample`. Only the chosen id comes back to the host.
//!
//! The draw reads its knobs and its uniform `u` from a device struct (`DrawArgs`), which
//! the host writes with one small copy before each launch: `draw` itself depends on no
//! host value, so a captured decode step samples with whatever the host wrote last. `u`
//! stays the host's (its seeded generator), so a seed gives the same draws eager or
//! replayed. The struct also carries up to `MAX_DEVICE_BANS` banned ids, masked by a
//! kernel before the draw (a no-op with none), so a captured step can ban tokens too.
//! Penalties need the token history, which lives on the host: they are `sample`'s
//! (eager) business, not a captured step's.

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

impl From<&crate::protocol::SamplingParams> for SampleArgs {
    /// The device sampler's knobs for the CPU sampler's parameters (the seed stays on the
    /// host: it drives the uniform draw passed to `sample`).
    fn from(p: &crate::protocol::SamplingParams) -> Self {
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

/// Most banned ids the device args carry (`SAMPLE_MAX_BANS`).
pub const MAX_DEVICE_BANS: usize = 16;

/// The draw's knobs, uniform and bans as `sample_f32` and `sample_ban_args_f32` read them
/// (`SampleParams` in kernels/sampling.cu: the same 4-byte fields in the same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DrawArgs {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub u: f32,
    pub n_banned: i32,
    pub banned: [u32; MAX_DEVICE_BANS],
}

// The kernel side static_asserts the same size.
const _: () = assert!(std::mem::size_of::<DrawArgs>() == 88);

// SAFETY: a #[repr(C)] struct of plain 4-byte numbers, for which all-zero bits are valid.
unsafe impl DeviceRepr for DrawArgs {}
unsafe impl ValidAsZeroBits for DrawArgs {}

impl DrawArgs {
    /// `a`'s draw knobs with the uniform `u` and `banned` (a NaN temperature is greedy,
    /// as on the CPU); more than `MAX_DEVICE_BANS` bans is an error.
    pub fn new(a: &SampleArgs, u: f32, banned: &[u32]) -> Result<Self, CudaError> {
        ensure(banned.len() <= MAX_DEVICE_BANS, "sample", || {
            format!(
                "{} banned tokens (the device draw takes at most {MAX_DEVICE_BANS}; take the logits)",
                banned.len()
            )
        })?;
        let mut b = [0u32; MAX_DEVICE_BANS];
        b[..banned.len()].copy_from_slice(banned);
        Ok(DrawArgs {
            temperature: if a.temperature.is_nan() {
                0.0
            } else {
                a.temperature
            },
            top_k: a.top_k.min(i32::MAX as usize) as i32,
            top_p: a.top_p,
            min_p: a.min_p,
            u,
            n_banned: banned.len() as i32,
            banned: b,
        })
    }
}

/// Queues the copy of `a`, `u` and `banned` into `dev` (one small host-to-device copy).
pub fn write_args(
    gpu: &Gpu,
    a: &SampleArgs,
    u: f32,
    banned: &[u32],
    dev: &mut CudaSlice<DrawArgs>,
) -> Result<(), CudaError> {
    let v = DrawArgs::new(a, u, banned)?;
    gpu.stream
        .memcpy_htod(&[v], dev)
        .map_err(|e| CudaError::Driver(format!("{e:?}")))
}

/// Queues the bans in `args` (on the device; `logits` set to -inf in place, like the
/// CPU) and one draw from `logits` with the knobs in `args` into `out[0]`. No allocation,
/// no host value, no sync: a graph can capture it.
pub fn draw(
    gpu: &Gpu,
    logits: &mut CudaSlice<f32>,
    vocab: usize,
    args: &CudaSlice<DrawArgs>,
    out: &mut CudaSlice<u32>,
) -> Result<(), CudaError> {
    const OP: &str = "sample";
    supports(vocab)?;
    let lp = gpu.ptr(OP, "logits", logits, 0, vocab)?;
    let ap = gpu.ptr(OP, "args", args, 0, 1)?;
    let a = [lp.into(), i32_arg(OP, "vocab", vocab)?, ap.into()];
    gpu.launch("sampling", "sample_ban_args_f32", (1, 1, 1), 32, &a)?;
    let a = [
        lp.into(),
        i32_arg(OP, "vocab", vocab)?,
        ap.into(),
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
    let mut dev_args = gpu.zeros::<DrawArgs>(1)?;
    sample_with(
        gpu,
        logits,
        vocab,
        a,
        history,
        banned,
        u,
        &mut dev_args,
        out,
    )
}

/// `sample` with the draw's args written into `dev_args` (a session's own buffer, so a
/// draw per token allocates only the uploaded lists).
#[allow(clippy::too_many_arguments)]
pub fn sample_with(
    gpu: &Gpu,
    logits: &mut CudaSlice<f32>,
    vocab: usize,
    a: &SampleArgs,
    history: &[u32],
    banned: &[u32],
    u: f32,
    dev_args: &mut CudaSlice<DrawArgs>,
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
    write_args(gpu, a, u, &[], dev_args)?;
    draw(gpu, logits, vocab, dev_args, out)?;
    let id = gpu.download(out)?;
    id.first()
        .copied()
        .ok_or_else(|| CudaError::Driver("sample: empty result buffer".into()))
}
