//! Checkpoints of a `GpuSession` on the device, the GPU twin of `state::Checkpoint`: the
//! engine keeps them at prompt boundaries so a follow-up turn feeds only its new tokens.
//!
//! Invariants:
//! - A `GpuCheckpoint` holds a device copy of every Mamba layer's conv window and SSM state
//!   (in the session's SSM dtype) and the length they belong to; attention layers hold
//!   nothing, because the KV cache is append-only: restoring truncates it to that length.
//! - The copies are allocated when the checkpoint is taken (the engine takes them at prompt
//!   boundaries, never inside a decode step) and freed when it is dropped; copies are
//!   device-to-device on the session's stream, so they are ordered with the forward.
//! - `restore` is right only on the session the checkpoint came from, while its tokens up to
//!   `len` are still the ones fed (the caller, `engine::Session`, guarantees it): the KV
//!   positions below `len` must still be there. A checkpoint of another shape is refused.

use cudarc::driver::CudaSlice;

use super::session::{GpuLayerState, GpuSession, SsmBuf};
use crate::backend::cuda::{CudaError, Gpu};

fn drv(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// One Mamba layer's state, copied.
struct MambaCopy {
    conv: CudaSlice<f32>,
    ssm: SsmBuf,
}

/// A device copy of a session's recurrent state at `len` positions.
pub struct GpuCheckpoint {
    /// One entry per layer; `Some` for the Mamba layers.
    mamba: Vec<Option<MambaCopy>>,
    len: usize,
}

impl GpuCheckpoint {
    /// Positions the checkpoint was taken at.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device bytes the copies take.
    pub fn bytes(&self) -> usize {
        self.mamba
            .iter()
            .flatten()
            .map(|m| m.conv.len() * 4 + m.ssm.bytes())
            .sum()
    }
}

/// Dtype and length, to check that two buffers match.
fn ssm_shape(s: &SsmBuf) -> (u8, usize) {
    match s {
        SsmBuf::F32(b) => (0, b.len()),
        SsmBuf::F16(b) => (1, b.len()),
        SsmBuf::BF16(b) => (2, b.len()),
    }
}

fn clone_ssm(gpu: &Gpu, s: &SsmBuf) -> Result<SsmBuf, CudaError> {
    Ok(match s {
        SsmBuf::F32(b) => SsmBuf::F32(gpu.stream.clone_dtod(b).map_err(drv)?),
        SsmBuf::F16(b) => SsmBuf::F16(gpu.stream.clone_dtod(b).map_err(drv)?),
        SsmBuf::BF16(b) => SsmBuf::BF16(gpu.stream.clone_dtod(b).map_err(drv)?),
    })
}

/// Copies `src` into `dst` of the same dtype and length (checked: cudarc asserts it).
fn copy_ssm(gpu: &Gpu, src: &SsmBuf, dst: &mut SsmBuf) -> Result<(), CudaError> {
    let mismatch = || CudaError::Unsupported {
        op: "restore",
        why: "the checkpoint's SSM state has another dtype or size than the session's".into(),
    };
    match (src, dst) {
        (SsmBuf::F32(s), SsmBuf::F32(d)) if s.len() == d.len() => gpu.stream.memcpy_dtod(s, d),
        (SsmBuf::F16(s), SsmBuf::F16(d)) if s.len() == d.len() => gpu.stream.memcpy_dtod(s, d),
        (SsmBuf::BF16(s), SsmBuf::BF16(d)) if s.len() == d.len() => gpu.stream.memcpy_dtod(s, d),
        _ => return Err(mismatch()),
    }
    .map_err(drv)
}

impl GpuSession {
    /// Copies every Mamba layer's conv + SSM state on the device, with the length.
    pub fn checkpoint(&self, gpu: &Gpu) -> Result<GpuCheckpoint, CudaError> {
        let mamba = self
            .layers
            .iter()
            .map(|l| match l {
                GpuLayerState::Mamba { conv, ssm } => Ok(Some(MambaCopy {
                    conv: gpu.stream.clone_dtod(conv).map_err(drv)?,
                    ssm: clone_ssm(gpu, ssm)?,
                })),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        Ok(GpuCheckpoint {
            mamba,
            len: self.len(),
        })
    }

    /// Puts the Mamba states of `snap` back and truncates the KV caches to its length.
    /// The checkpoint must come from this session at a length ≤ the current one, its tokens
    /// still a prefix of the fed ones (see the module doc); one of another shape, or from
    /// past the current length, is refused and the session is left as it was.
    pub fn restore(&mut self, gpu: &Gpu, snap: &GpuCheckpoint) -> Result<(), CudaError> {
        let bad = |why: String| CudaError::Unsupported { op: "restore", why };
        if snap.mamba.len() != self.layers.len() {
            return Err(bad(format!(
                "the checkpoint has {} layers, the session {}",
                snap.mamba.len(),
                self.layers.len()
            )));
        }
        if snap.len > self.len() {
            return Err(bad(format!(
                "the checkpoint is at {} positions, past the session's {}",
                snap.len,
                self.len()
            )));
        }
        // Check every layer before copying any, so a refusal changes nothing.
        for (l, m) in self.layers.iter().zip(&snap.mamba) {
            let ok = match (l, m) {
                (GpuLayerState::Mamba { conv, ssm }, Some(c)) => {
                    conv.len() == c.conv.len() && ssm_shape(ssm) == ssm_shape(&c.ssm)
                }
                (GpuLayerState::Mamba { .. }, None) | (_, Some(_)) => false,
                _ => true,
            };
            if !ok {
                return Err(bad(
                    "the checkpoint's layers do not match the session's".into()
                ));
            }
        }
        for (l, m) in self.layers.iter_mut().zip(&snap.mamba) {
            if let (GpuLayerState::Mamba { conv, ssm }, Some(c)) = (l, m) {
                gpu.stream.memcpy_dtod(&c.conv, conv).map_err(drv)?;
                copy_ssm(gpu, &c.ssm, ssm)?;
            }
        }
        self.rewind(gpu, snap.len)
    }
}
