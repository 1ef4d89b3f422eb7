//! Embedding gather (kernels/embedding.cu); oracle `model::lm_head::embed`.
//!
//! The ids are read on the device (a decode step's id may be the device sampler's output,
//! never seen by the host), so they are not checked here: a caller with host ids checks
//! them (`check_ids`, as the CPU does); an id outside the vocabulary that reaches the
//! kernel gives a row of NaN, never a read outside the table.

use cudarc::driver::CudaSlice;

use super::{blocks, ensure, i32_arg, CudaError, Gpu, KernelDtype};

const OP: &str = "embedding_gather";

pub fn supports(hidden: usize) -> Result<(), CudaError> {
    ensure(hidden > 0 && hidden <= i32::MAX as usize, OP, || {
        format!("hidden size {hidden}")
    })
}

/// An error naming the first host id outside the vocabulary.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<(), CudaError> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(CudaError::Unsupported {
            op: OP,
            why: format!("token id {id} is outside the vocabulary ({vocab})"),
        }),
        None => Ok(()),
    }
}

/// `out[t] = table[ids[t]]` for `t < n`, widened to f32; `table` is `[vocab, hidden]`.
pub fn gather<T: KernelDtype>(
    gpu: &Gpu,
    table: &CudaSlice<T>,
    vocab: usize,
    hidden: usize,
    ids: &CudaSlice<u32>,
    n: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    supports(hidden)?;
    let name: &'static str = match T::SUFFIX {
        "bf16" => "embedding_gather_bf16",
        "f32" => "embedding_gather_f32",
        other => {
            return Err(CudaError::Unsupported {
                op: OP,
                why: format!("table dtype {other}"),
            })
        }
    };
    let args = [
        gpu.ptr(OP, "table", table, 0, vocab * hidden)?.into(),
        gpu.ptr(OP, "ids", ids, 0, n)?.into(),
        gpu.ptr(OP, "out", out, 0, n * hidden)?.into(),
        i32_arg(OP, "hidden", hidden)?,
        i32_arg(OP, "vocab", vocab)?,
    ];
    if n == 0 {
        return Ok(());
    }
    gpu.launch("embedding", name, (blocks(n, 1), 1, 1), 256, &args)
}
