//! Embedding gather (kernels/embedding.cu); oracle `model::lm_head::embed`.

use cudarc::driver::CudaSlice;

use super::{blocks, ensure, i32_arg, CudaError, Gpu, KernelDtype};

const OP: &str = "embedding_gather";

pub fn supports(hidden: usize) -> Result<(), CudaError> {
    ensure(hidden > 0 && hidden <= i32::MAX as usize, OP, || {
        format!("hidden size {hidden}")
    })
}

/// `out[t] = table[ids[t]]` widened to f32; `table` is `[vocab, hidden]`. Ids are checked
/// on the host (`ids_host`), as the CPU does, so an out-of-range id is an error.
#[allow(clippy::too_many_arguments)]
pub fn gather<T: KernelDtype>(
    gpu: &Gpu,
    table: &CudaSlice<T>,
    vocab: usize,
    hidden: usize,
    ids_host: &[u32],
    ids: &CudaSlice<u32>,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    supports(hidden)?;
    let n = ids_host.len();
    if let Some(&id) = ids_host.iter().find(|&&id| id as usize >= vocab) {
        return Err(CudaError::Unsupported {
            op: OP,
            why: format!("token id {id} is outside the vocabulary ({vocab})"),
        });
    }
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
