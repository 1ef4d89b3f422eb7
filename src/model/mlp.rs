//! Nemotron-H MLP (`NemotronHMLP`): `down_proj(relu(up_proj(x))²)`, no gate.

use super::config::NemotronHConfig;
use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::cpu::{matmul, ops};

pub struct Mlp {
    up_proj: Tensor,
    down_proj: Tensor,
    up_bias: Option<Vec<f32>>,
    down_bias: Option<Vec<f32>>,
}

impl Mlp {
    pub fn load(cfg: &NemotronHConfig, w: &WeightStore, p: &str) -> Result<Self, ModelError> {
        let (hs, is) = (cfg.hidden_size, cfg.intermediate_size);
        let bias = |name: &str, n: usize| -> Result<Option<Vec<f32>>, ModelError> {
            let full = format!("{p}.{name}");
            if cfg.mlp_bias || w.contains(&full) {
                Ok(Some(w.get(&full, &[n])?.to_f32()))
            } else {
                Ok(None)
            }
        };
        Ok(Self::new(
            w.get(&format!("{p}.up_proj.weight"), &[is, hs])?,
            w.get(&format!("{p}.down_proj.weight"), &[hs, is])?,
            bias("up_proj.bias", is)?,
            bias("down_proj.bias", hs)?,
        ))
    }

    /// From tensors already checked to be `[intermediate, hidden]` and `[hidden,
    /// intermediate]` (and biases of those lengths), whatever they were named.
    pub fn new(
        up_proj: Tensor,
        down_proj: Tensor,
        up_bias: Option<Vec<f32>>,
        down_bias: Option<Vec<f32>>,
    ) -> Self {
        Mlp {
            up_proj,
            down_proj,
            up_bias,
            down_bias,
        }
    }

    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let is = self.up_proj.shape[0];
        let mut h = vec![0f32; n * is];
        matmul(x, n, self.up_proj.mat(), &mut h);
        if let Some(b) = &self.up_bias {
            h.chunks_exact_mut(is)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        }
        ops::relu2_inplace(&mut h);
        matmul(&h, n, self.down_proj.mat(), out);
        if let Some(b) = &self.down_bias {
            let hs = b.len();
            out.chunks_exact_mut(hs)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        }
    }
}
