//! Nemotron-H attention (`NemotronHAttention`): GQA, no positional embedding at all,
//! causal, softmax scale `head_dim^-0.5`, KV cache appended as tokens arrive. The
//! attention itself is the CPU backend's flash op (`backend::cpu::flash`), for prompts
//! and decode alike.

use super::config::NemotronHConfig;
use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::cpu::{flash, matmul, matmul_many};
use crate::state::KvCache;

/// Rotary position embedding, rotate-half layout (transformers' `apply_rotary_pos_emb`):
/// for i < d/2, `(x_i, x_{i+d/2}) ← (x_i cos θ − x_{i+d/2} sin θ, x_{i+d/2} cos θ + x_i sin θ)`,
/// θ = position · inv_freq_i.
///
/// `interleaved` rotates adjacent pairs `(x_2i, x_2i+1)` instead (llama.cpp's "NORM" rope):
/// GGUF Llama files store q/k rows permuted into that order by `convert_hf_to_gguf.py`'s
/// `permute`, so rotating pairs there computes exactly what rotate-half does on HF rows.
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub interleaved: bool,
}

impl Rope {
    /// `x` is `[n, heads, head_dim]` for positions `start..start+n`. Each position's
    /// angles are computed once (in f64, as before) and applied to all its heads: per head
    /// they were ~5% of a small Llama's prefill in `sincos`.
    pub fn apply(&self, x: &mut [f32], heads: usize, hd: usize, start: usize) {
        let half = hd / 2;
        let mut sc = vec![(0f32, 0f32); half];
        for (t, tok) in x.chunks_exact_mut(heads * hd).enumerate() {
            let pos = (start + t) as f64;
            for (i, v) in sc.iter_mut().enumerate() {
                let theta = pos * self.inv_freq[i] as f64;
                *v = (theta.sin() as f32, theta.cos() as f32);
            }
            for head in tok.chunks_exact_mut(hd) {
                for (i, &(sin, cos)) in sc.iter().enumerate() {
                    let (ia, ib) = if self.interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    let (a, b) = (head[ia], head[ib]);
                    head[ia] = a * cos - b * sin;
                    head[ib] = b * cos + a * sin;
                }
            }
        }
    }
}

pub struct Attention {
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    o_proj: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn load(cfg: &NemotronHConfig, w: &WeightStore, p: &str) -> Result<Self, ModelError> {
        Self::load_dims(
            w,
            p,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
    }

    /// The four projections `{p}.{q,k,v,o}_proj.weight` of any architecture.
    pub fn load_dims(
        w: &WeightStore,
        p: &str,
        hs: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<Self, ModelError> {
        Self::load_named(
            w,
            [
                &format!("{p}.q_proj.weight"),
                &format!("{p}.k_proj.weight"),
                &format!("{p}.v_proj.weight"),
                &format!("{p}.o_proj.weight"),
            ],
            hs,
            nh,
            nkv,
            hd,
        )
    }

    /// The projections under explicit names, q, k, v, o (GGUF's `blk.{i}.attn_q.weight` ...).
    pub fn load_named(
        w: &WeightStore,
        [q, k, v, o]: [&str; 4],
        hs: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<Self, ModelError> {
        Ok(Attention {
            q_proj: w.get(q, &[nh * hd, hs])?,
            k_proj: w.get(k, &[nkv * hd, hs])?,
            v_proj: w.get(v, &[nkv * hd, hs])?,
            o_proj: w.get(o, &[hs, nh * hd])?,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// `n` new tokens at positions `past..past+n`; `cache` holds `past` positions before
    /// and `past + n` after.
    pub fn forward(&self, x: &[f32], n: usize, cache: &mut KvCache, out: &mut [f32]) {
        self.forward_rope(x, n, cache, None, out)
    }

    /// Like `forward`, rotating q and k with `rope` at their absolute positions first
    /// (Llama); Nemotron-H attention has no positional embedding and passes None.
    pub fn forward_rope(
        &self,
        x: &[f32],
        n: usize,
        cache: &mut KvCache,
        rope: Option<&Rope>,
        out: &mut [f32],
    ) {
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let mut q = vec![0f32; n * nh * hd];
        let mut k = vec![0f32; n * nkv * hd];
        let mut v = vec![0f32; n * nkv * hd];
        matmul_many(
            x,
            n,
            &mut [
                (self.q_proj.mat(), &mut q),
                (self.k_proj.mat(), &mut k),
                (self.v_proj.mat(), &mut v),
            ],
        );
        let past = cache.len();
        if let Some(r) = rope {
            r.apply(&mut q, nh, hd, past);
            r.apply(&mut k, nkv, hd, past);
        }
        cache.append(&k, &v);
        let mut attn = vec![0f32; n * nh * hd];
        let shape = flash::Shape {
            n,
            past,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
        };
        flash::attention(&q, shape, &*cache, &mut attn);
        matmul(&attn, n, self.o_proj.mat(), out);
    }
}
