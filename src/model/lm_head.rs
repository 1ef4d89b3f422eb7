//! The two ends every architecture shares: token embedding lookup, and final norm + LM
//! head for the positions a caller wants.

use super::weights::Tensor;
use super::ModelError;
use crate::backend::cpu::{matmul, ops};

/// Which positions' logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// Rows of `table` (`[vocab, hidden]`) for `tokens`, widened to f32: `[n, hidden]`.
pub fn embed(table: &Tensor, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    let (vocab, hs) = (table.shape[0], table.shape[1]);
    let mut x = vec![0f32; tokens.len() * hs];
    for (t, &id) in tokens.iter().enumerate() {
        if id as usize >= vocab {
            return Err(ModelError::TokenOutOfRange { id, vocab });
        }
        table.row_f32(id as usize, &mut x[t * hs..(t + 1) * hs]);
    }
    Ok(x)
}

/// RMSNorm with `norm` then `head` (`[vocab, hidden]`) over the last or every position of
/// `x` (`[n, hidden]`): `[positions, vocab]`, empty for `Logits::None`.
pub fn logits(x: &[f32], norm: &[f32], eps: f32, head: &Tensor, want: Logits) -> Vec<f32> {
    let hs = norm.len();
    let n = x.len() / hs;
    let rows: &[f32] = match want {
        Logits::None => return vec![],
        Logits::Last => &x[(n - 1) * hs..],
        Logits::All => x,
    };
    let m = rows.len() / hs;
    let mut fin = vec![0f32; m * hs];
    ops::rms_norm(rows, norm, eps, &mut fin);
    let mut out = vec![0f32; m * head.shape[0]];
    matmul(&fin, m, head.mat(), &mut out);
    out
}
