//! Mamba2 recurrent state of one layer: the causal-conv window (`conv_state`, always f32,
//! `conv_kernel - 1` past inputs of `conv_dim` channels, oldest first) and the SSM state
//! (`ssm_state`, `[heads, head_dim, d_state]`) in f32, f16 or bf16 like vLLM's
//! `mamba_ssm_cache_dtype`. Arithmetic is always f32: a half-precision state is widened
//! per head, updated, and rounded back once per step (or once per prefill call).

use half::{bf16, f16};
use rayon::prelude::*;

use crate::backend::DType;

#[derive(Clone, Debug)]
pub enum SsmStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

#[derive(Clone, Debug)]
pub struct MambaState {
    pub conv_state: Vec<f32>,
    pub ssm: SsmStore,
    pub head_size: usize,
}

impl MambaState {
    pub fn new(
        conv_dim: usize,
        conv_kernel: usize,
        heads: usize,
        head_dim: usize,
        d_state: usize,
        dtype: DType,
    ) -> Self {
        let n = heads * head_dim * d_state;
        let ssm = match dtype {
            DType::F16 => SsmStore::F16(vec![f16::ZERO; n]),
            DType::BF16 => SsmStore::BF16(vec![bf16::ZERO; n]),
            _ => SsmStore::F32(vec![0.0; n]),
        };
        MambaState {
            conv_state: vec![0.0; conv_dim * (conv_kernel - 1)],
            ssm,
            head_size: head_dim * d_state,
        }
    }

    pub fn reset(&mut self) {
        self.conv_state.fill(0.0);
        match &mut self.ssm {
            SsmStore::F32(v) => v.fill(0.0),
            SsmStore::F16(v) => v.fill(f16::ZERO),
            SsmStore::BF16(v) => v.fill(bf16::ZERO),
        }
    }

    pub fn bytes(&self) -> usize {
        self.conv_state.len() * 4
            + match &self.ssm {
                SsmStore::F32(v) => v.len() * 4,
                SsmStore::F16(v) => v.len() * 2,
                SsmStore::BF16(v) => v.len() * 2,
            }
    }

    /// Runs `f(head, state_of_head_as_f32)` for every head in parallel and returns the
    /// results in head order; half-precision states are widened before and rounded back after.
    pub fn par_heads_map<R, F>(&mut self, f: F) -> Vec<R>
    where
        R: Send,
        F: Fn(usize, &mut [f32]) -> R + Sync + Send,
    {
        let hs = self.head_size;
        match &mut self.ssm {
            SsmStore::F32(v) => v
                .par_chunks_mut(hs)
                .enumerate()
                .map(|(h, s)| f(h, s))
                .collect(),
            SsmStore::F16(v) => v
                .par_chunks_mut(hs)
                .enumerate()
                .map(|(h, s)| {
                    let mut w: Vec<f32> = s.iter().map(|x| x.to_f32()).collect();
                    let r = f(h, &mut w);
                    for (d, x) in s.iter_mut().zip(&w) {
                        *d = f16::from_f32(*x);
                    }
                    r
                })
                .collect(),
            SsmStore::BF16(v) => v
                .par_chunks_mut(hs)
                .enumerate()
                .map(|(h, s)| {
                    let mut w: Vec<f32> = s.iter().map(|x| x.to_f32()).collect();
                    let r = f(h, &mut w);
                    for (d, x) in s.iter_mut().zip(&w) {
                        *d = bf16::from_f32(*x);
                    }
                    r
                })
                .collect(),
        }
    }
}
