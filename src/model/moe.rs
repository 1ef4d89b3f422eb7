//! The MoE mixer of Nemotron-H (`E` layers; transformers `NemotronHMoE`):
//!
//! ```text
//! scores  = sigmoid(x · gateᵀ)                       (f32)
//! choice  = scores + e_score_correction_bias          (for choosing only)
//! groups  = n_group groups of experts; a group's score = sum of its top-2 `choice`
//! keep the topk_group best groups, pick top-k experts by `choice` among them
//! weights = scores of the picked experts (uncorrected), / their sum if norm_topk_prob,
//!           × routed_scaling_factor                    (`backend::cpu::moe::route`)
//! out     = fc2(Σ_k weights_k · expert_k(fc1(x))) + shared_expert(x)
//! expert  = down_proj(relu(up_proj(·))²)              (non-gated)
//! ```
//! fc1/fc2 are the optional latent projections (`moe_latent_size`). Experts are stored
//! per expert (published checkpoints) or stacked 3-D; both load. Each token runs only its
//! chosen experts, so decode touches only those experts' weights.

use super::config::NemotronHConfig;
use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::cpu::moe::{route, Routing};
use crate::backend::cpu::{matmul, ops};

struct Expert {
    up: Tensor,
    down: Tensor,
}

impl Expert {
    /// `x` `[n, in]` → `[n, in]`.
    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let inter = self.up.shape[0];
        let mut h = vec![0f32; n * inter];
        matmul(x, n, self.up.mat(), &mut h);
        ops::relu2_inplace(&mut h);
        let mut out = vec![0f32; n * self.down.shape[0]];
        matmul(&h, n, self.down.mat(), &mut out);
        out
    }
}

pub struct Moe {
    /// Router weight, widened once: `[experts, hidden]`.
    gate: Vec<f32>,
    bias: Vec<f32>,
    experts: Vec<Expert>,
    shared: Option<Expert>,
    fc1: Option<Tensor>,
    fc2: Option<Tensor>,
    hidden: usize,
    routing: Routing,
}

/// The router's configuration in `cfg` (the kernel's and the CPU op's argument).
pub fn routing(cfg: &NemotronHConfig) -> Routing {
    Routing {
        n_routed_experts: cfg.n_routed_experts,
        n_group: cfg.n_group,
        topk_group: cfg.topk_group,
        top_k: cfg.num_experts_per_tok,
        norm_topk_prob: cfg.norm_topk_prob,
        routed_scaling_factor: cfg.routed_scaling_factor,
    }
}

/// An MoE mixer's parameters, whatever file they came from: the safetensors names
/// (`Moe::load`) or llama.cpp's GGUF names (`nemotron_h_gguf`).
pub struct MoeWeights {
    /// Router, `[experts, hidden]`.
    pub gate: Tensor,
    /// `e_score_correction_bias`, `[experts]` (zeros when absent).
    pub bias: Vec<f32>,
    /// Per expert: up `[moe_intermediate, inner]`, down `[inner, moe_intermediate]`
    /// (inner = moe_latent_size or hidden).
    pub experts: Vec<(Tensor, Tensor)>,
    /// Shared expert: up `[shared_intermediate, hidden]`, down `[hidden, shared_intermediate]`.
    pub shared: Option<(Tensor, Tensor)>,
    /// Latent projections `[latent, hidden]` and `[hidden, latent]`.
    pub latent: Option<(Tensor, Tensor)>,
}

impl Moe {
    pub fn load(cfg: &NemotronHConfig, w: &WeightStore, p: &str) -> Result<Self, ModelError> {
        let (hs, e) = (cfg.hidden_size, cfg.n_routed_experts);
        let inner = cfg.moe_latent_size.unwrap_or(hs);
        let mi = cfg.moe_intermediate_size;
        let bias_name = format!("{p}.gate.e_score_correction_bias");
        let bias = if w.contains(&bias_name) {
            w.get_squeezed(&bias_name, &[e])?.to_f32()
        } else {
            vec![0.0; e]
        };
        let stacked_up = format!("{p}.experts.up_proj");
        let experts = if w.contains(&stacked_up) {
            let up = w.get(&stacked_up, &[e, mi, inner])?;
            let down = w.get(&format!("{p}.experts.down_proj"), &[e, inner, mi])?;
            (0..e)
                .map(|j| (up.index_first(j), down.index_first(j)))
                .collect()
        } else {
            (0..e)
                .map(|j| {
                    Ok((
                        w.get(&format!("{p}.experts.{j}.up_proj.weight"), &[mi, inner])?,
                        w.get(&format!("{p}.experts.{j}.down_proj.weight"), &[inner, mi])?,
                    ))
                })
                .collect::<Result<Vec<_>, ModelError>>()?
        };
        let si = cfg.moe_shared_expert_intermediate_size;
        let shared_up = format!("{p}.shared_experts.up_proj.weight");
        let shared = if si > 0 || w.contains(&shared_up) {
            let up = w.get(&shared_up, &[si, hs])?;
            let down = w.get(
                &format!("{p}.shared_experts.down_proj.weight"),
                &[hs, up.shape[0]],
            )?;
            Some((up, down))
        } else {
            None
        };
        let latent = match cfg.moe_latent_size {
            Some(l) => Some((
                w.get(&format!("{p}.fc1_latent_proj.weight"), &[l, hs])?,
                w.get(&format!("{p}.fc2_latent_proj.weight"), &[hs, l])?,
            )),
            None => None,
        };
        let gate = w.get(&format!("{p}.gate.weight"), &[e, hs])?;
        Ok(Self::new(
            cfg,
            MoeWeights {
                gate,
                bias,
                experts,
                shared,
                latent,
            },
        ))
    }

    /// The mixer from parameters already checked against `cfg`'s shapes.
    pub fn new(cfg: &NemotronHConfig, w: MoeWeights) -> Self {
        let expert = |(up, down): (Tensor, Tensor)| Expert { up, down };
        let (fc1, fc2) = match w.latent {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        Moe {
            gate: w.gate.to_f32(),
            bias: w.bias,
            experts: w.experts.into_iter().map(expert).collect(),
            shared: w.shared.map(expert),
            fc1,
            fc2,
            hidden: cfg.hidden_size,
            routing: routing(cfg),
        }
    }

    /// Bytes of the experts one token does not run (all but `top_k` of them).
    pub fn unread_bytes_per_token(&self) -> usize {
        let per: usize = self
            .experts
            .first()
            .map(|x| x.up.data().len() + x.down.data().len())
            .unwrap_or(0);
        per * self.experts.len().saturating_sub(self.routing.top_k)
    }

    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let (hs, e) = (self.hidden, self.experts.len());
        let mut logits = vec![0f32; n * e];
        for t in 0..n {
            let xt = &x[t * hs..(t + 1) * hs];
            for j in 0..e {
                logits[t * e + j] =
                    crate::backend::cpu::simd::dot(xt, &self.gate[j * hs..(j + 1) * hs]);
            }
        }
        let k = self.routing.top_k;
        let (mut ids, mut weights) = (vec![0u32; n * k], vec![0f32; n * k]);
        route(
            &self.routing,
            &logits,
            &self.bias,
            &mut ids,
            &mut weights,
            n,
        );
        let routes: Vec<Vec<(usize, f32)>> = (0..n)
            .map(|t| {
                (t * k..(t + 1) * k)
                    .map(|i| (ids[i] as usize, weights[i]))
                    .collect()
            })
            .collect();
        let latent = match &self.fc1 {
            Some(fc1) => {
                let mut l = vec![0f32; n * fc1.shape[0]];
                matmul(x, n, fc1.mat(), &mut l);
                l
            }
            None => x.to_vec(),
        };
        let inner = latent.len() / n;
        let mut acc = vec![0f32; n * inner];
        // Expert by expert over the tokens routed to it (one batched matmul per expert).
        for (j, expert) in self.experts.iter().enumerate() {
            let users: Vec<(usize, f32)> = routes
                .iter()
                .enumerate()
                .filter_map(|(t, r)| r.iter().find(|(i, _)| *i == j).map(|(_, w)| (t, *w)))
                .collect();
            if users.is_empty() {
                continue;
            }
            let mut xin = Vec::with_capacity(users.len() * inner);
            for (t, _) in &users {
                xin.extend_from_slice(&latent[t * inner..(t + 1) * inner]);
            }
            let y = expert.forward(&xin, users.len());
            for (k, (t, w)) in users.iter().enumerate() {
                for (a, v) in acc[t * inner..(t + 1) * inner]
                    .iter_mut()
                    .zip(&y[k * inner..(k + 1) * inner])
                {
                    *a += w * v;
                }
            }
        }
        match &self.fc2 {
            Some(fc2) => matmul(&acc, n, fc2.mat(), out),
            None => out.copy_from_slice(&acc),
        }
        if let Some(shared) = &self.shared {
            let s = shared.forward(x, n);
            out.iter_mut().zip(&s).for_each(|(o, v)| *o += v);
        }
    }
}
