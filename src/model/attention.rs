//! Nemotron-H attention (`NemotronHAttention`): GQA, no positional embedding at all,
//! causal, softmax scale `head_dim^-0.5`, KV cache appended as tokens arrive.

use rayon::prelude::*;

use super::config::NemotronHConfig;
use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::cpu::{matmul, matmul_many, ops, simd, team};
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
    /// `x` is `[n, heads, head_dim]` for positions `start..start+n`.
    pub fn apply(&self, x: &mut [f32], heads: usize, hd: usize, start: usize) {
        let half = hd / 2;
        if self.interleaved {
            for (t, tok) in x.chunks_exact_mut(heads * hd).enumerate() {
                let pos = (start + t) as f64;
                for head in tok.chunks_exact_mut(hd) {
                    for i in 0..half {
                        let theta = pos * self.inv_freq[i] as f64;
                        let (sin, cos) = (theta.sin() as f32, theta.cos() as f32);
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = a * cos - b * sin;
                        head[2 * i + 1] = b * cos + a * sin;
                    }
                }
            }
            return;
        }
        for (t, tok) in x.chunks_exact_mut(heads * hd).enumerate() {
            let pos = (start + t) as f64;
            for head in tok.chunks_exact_mut(hd) {
                for i in 0..half {
                    let theta = pos * self.inv_freq[i] as f64;
                    let (sin, cos) = (theta.sin() as f32, theta.cos() as f32);
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos - b * sin;
                    head[i + half] = b * cos + a * sin;
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
        let total = past + n;
        let group = nh / nkv;
        let scale = (hd as f32).powf(-0.5);
        if n == 1 {
            let mut attn = vec![0f32; nh * hd];
            decode_heads(&q, cache, nkv, group, hd, scale, &mut attn);
            matmul(&attn, n, self.o_proj.mat(), out);
            return;
        }
        // Widen each KV head once (shared by its `group` query heads), then one task per
        // query head over every query position.
        let widened: Vec<(Vec<f32>, Vec<f32>)> = (0..nkv)
            .into_par_iter()
            .map(|kvh| {
                let mut kk = vec![0f32; total * hd];
                let mut vv = vec![0f32; total * hd];
                cache.read_head(kvh, total, &mut kk, &mut vv);
                (kk, vv)
            })
            .collect();
        let per_head: Vec<Vec<f32>> = (0..nh)
            .into_par_iter()
            .map(|h| {
                let (kk, vv) = &widened[h / group];
                let mut o = vec![0f32; n * hd];
                let mut scores = vec![0f32; total];
                for i in 0..n {
                    let qi = &q[(i * nh + h) * hd..(i * nh + h + 1) * hd];
                    let visible = past + i + 1;
                    for t in 0..visible {
                        scores[t] = simd::dot(qi, &kk[t * hd..(t + 1) * hd]) * scale;
                    }
                    ops::softmax_inplace(&mut scores[..visible]);
                    let oi = &mut o[i * hd..(i + 1) * hd];
                    for t in 0..visible {
                        simd::axpy(oi, scores[t], &vv[t * hd..(t + 1) * hd]);
                    }
                }
                o
            })
            .collect();
        let mut attn = vec![0f32; n * nh * hd];
        for (h, o) in per_head.iter().enumerate() {
            for i in 0..n {
                attn[(i * nh + h) * hd..(i * nh + h + 1) * hd]
                    .copy_from_slice(&o[i * hd..(i + 1) * hd]);
            }
        }
        matmul(&attn, n, self.o_proj.mat(), out);
    }
}

#[derive(Clone, Copy)]
struct HeadsOut(*mut f32);
// SAFETY: each task writes only its own KV head's query heads.
unsafe impl Send for HeadsOut {}
unsafe impl Sync for HeadsOut {}

thread_local! {
    /// Widened K and V of one KV head, and one query's scores (decode scratch).
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()])
    };
}

/// One decode position (`q` `[nh, hd]`) against the whole cache: one team task per KV head,
/// which widens that head once into reused scratch and serves its `group` query heads.
fn decode_heads(
    q: &[f32],
    cache: &KvCache,
    nkv: usize,
    group: usize,
    hd: usize,
    scale: f32,
    attn: &mut [f32],
) {
    let total = cache.len();
    let outp = HeadsOut(attn.as_mut_ptr());
    team::par_for(nkv, &|kvh| {
        let o = outp;
        SCRATCH.with(|s| {
            let [kk, vv, scores] = &mut *s.borrow_mut();
            kk.resize(total * hd, 0.0);
            vv.resize(total * hd, 0.0);
            scores.resize(total, 0.0);
            cache.read_head(kvh, total, kk, vv);
            for h in kvh * group..(kvh + 1) * group {
                let qi = &q[h * hd..(h + 1) * hd];
                for (t, sc) in scores.iter_mut().enumerate() {
                    *sc = simd::dot(qi, &kk[t * hd..(t + 1) * hd]) * scale;
                }
                ops::softmax_inplace(scores);
                // SAFETY: query head h belongs to this task (KV head kvh) only.
                let oi = unsafe { std::slice::from_raw_parts_mut(o.0.add(h * hd), hd) };
                oi.fill(0.0);
                for (t, &p) in scores.iter().enumerate() {
                    simd::axpy(oi, p, &vv[t * hd..(t + 1) * hd]);
                }
            }
        });
    });
}
