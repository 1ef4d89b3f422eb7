//! Nemotron-H (`NemotronHForCausalLM`): embeddings, a stack of pre-norm residual blocks
//! `x = x + mixer(rmsnorm(x))` whose mixer the layer pattern picks (Mamba2, attention,
//! MLP), the final norm and the LM head. Reads top to bottom like the reference.
//!
//! Tensor names: the published checkpoints' `backbone.*` and what transformers 5 saves
//! (`model.*`, `embed_tokens`) are both accepted.

use super::attention::Attention;
use super::config::{LayerKind, NemotronHConfig};
use super::lm_head::Logits;
use super::mamba2::Mamba2;
use super::mlp::Mlp;
use super::moe::Moe;
use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::cpu::ops;
use crate::backend::DType;
use crate::state::{CacheConfig, LayerShape, LayerState, SequenceState};

pub(crate) enum Mixer {
    Mamba2(Mamba2),
    Attention(Attention),
    Mlp(Mlp),
    Moe(Moe),
}

pub(crate) struct Block {
    /// The pre-norm weight, `[hidden]`.
    pub(crate) norm: Vec<f32>,
    pub(crate) mixer: Mixer,
}

pub struct NemotronH {
    pub config: NemotronHConfig,
    embeddings: Tensor,
    layers: Vec<Block>,
    norm_f: Vec<f32>,
    lm_head: Tensor,
    /// Dtype most weights are stored in.
    pub weight_dtype: DType,
    pub weight_bytes: usize,
}

fn prefix_of(w: &WeightStore) -> &'static str {
    if w.names().any(|n| n.starts_with("backbone.")) {
        "backbone"
    } else {
        "model"
    }
}

impl NemotronH {
    pub fn load(config: NemotronHConfig, w: &WeightStore) -> Result<Self, ModelError> {
        let pre = prefix_of(w);
        let (hs, vocab) = (config.hidden_size, config.vocab_size);
        let emb_name = if w.contains(&format!("{pre}.embeddings.weight")) {
            format!("{pre}.embeddings.weight")
        } else {
            format!("{pre}.embed_tokens.weight")
        };
        let embeddings = w.get(&emb_name, &[vocab, hs])?;
        let mut layers = Vec::with_capacity(config.layers.len());
        for (i, kind) in config.layers.iter().enumerate() {
            let p = format!("{pre}.layers.{i}");
            let norm = w.get(&format!("{p}.norm.weight"), &[hs])?.to_f32();
            let mp = format!("{p}.mixer");
            let mixer = match kind {
                LayerKind::Mamba2 => Mixer::Mamba2(Mamba2::load(&config, w, &mp)?),
                LayerKind::Attention => Mixer::Attention(Attention::load(&config, w, &mp)?),
                LayerKind::Mlp => Mixer::Mlp(Mlp::load(&config, w, &mp)?),
                LayerKind::Moe => Mixer::Moe(Moe::load(&config, w, &mp)?),
            };
            layers.push(Block { norm, mixer });
        }
        let norm_name = if w.contains(&format!("{pre}.norm_f.weight")) {
            format!("{pre}.norm_f.weight")
        } else {
            format!("{pre}.norm.weight")
        };
        let norm_f = w.get(&norm_name, &[hs])?.to_f32();
        let lm_head = if w.contains("lm_head.weight") || !config.tie_word_embeddings {
            w.get("lm_head.weight", &[vocab, hs])?
        } else {
            embeddings.clone()
        };
        Ok(Self::from_parts(
            config, embeddings, layers, norm_f, lm_head, w,
        ))
    }

    /// The model from loaded parts (`nemotron_h_gguf` names its tensors its own way);
    /// `w` is the store they came from, for the dtype and size reports.
    pub(crate) fn from_parts(
        config: NemotronHConfig,
        embeddings: Tensor,
        layers: Vec<Block>,
        norm_f: Vec<f32>,
        lm_head: Tensor,
        w: &WeightStore,
    ) -> Self {
        NemotronH {
            weight_dtype: w.main_dtype(),
            weight_bytes: w.total_bytes(),
            config,
            embeddings,
            layers,
            norm_f,
            lm_head,
        }
    }

    pub fn new_state(&self, cache: CacheConfig) -> SequenceState {
        let c = &self.config;
        let shape = |k: &LayerKind| match k {
            LayerKind::Mamba2 => LayerShape::Mamba {
                conv_dim: c.conv_dim(),
                conv_kernel: c.conv_kernel,
                heads: c.mamba_num_heads,
                head_dim: c.mamba_head_dim,
                d_state: c.ssm_state_size,
            },
            LayerKind::Attention => LayerShape::Attention {
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            },
            LayerKind::Mlp | LayerKind::Moe => LayerShape::Stateless,
        };
        SequenceState::new(c.layers.iter().map(shape), cache)
    }

    /// Feeds `tokens` after the state's current position. One token uses the recurrent
    /// (decode) form of the Mamba layers; more use the chunked (prompt) form.
    /// Returns logits `[positions, vocab]` as `want` asks.
    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        want: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let n = tokens.len();
        let c = &self.config;
        let hs = c.hidden_size;
        if n == 0 {
            return Ok(vec![]);
        }
        let mut x = super::lm_head::embed(&self.embeddings, tokens)?;
        let mut normed = vec![0f32; n * hs];
        let mut mixed = vec![0f32; n * hs];
        for (block, layer_state) in self.layers.iter().zip(state.layers.iter_mut()) {
            ops::rms_norm(&x, &block.norm, c.layer_norm_epsilon, &mut normed);
            match (&block.mixer, layer_state) {
                (Mixer::Mamba2(m), LayerState::Mamba(s)) => {
                    if n == 1 {
                        m.step(&normed, s, &mut mixed)
                    } else {
                        m.forward_chunked(&normed, n, s, &mut mixed)
                    }
                }
                (Mixer::Attention(a), LayerState::Attention(kv)) => {
                    a.forward(&normed, n, kv, &mut mixed)
                }
                (Mixer::Mlp(m), _) => m.forward(&normed, n, &mut mixed),
                (Mixer::Moe(m), _) => m.forward(&normed, n, &mut mixed),
                _ => {
                    return Err(ModelError::Unsupported(
                        "sequence state does not match the model's layers".into(),
                    ))
                }
            }
            for (xv, mv) in x.iter_mut().zip(&mixed) {
                *xv += mv;
            }
        }
        state.len += n;
        Ok(super::lm_head::logits(
            &x,
            &self.norm_f,
            c.layer_norm_epsilon,
            &self.lm_head,
            want,
        ))
    }

    /// Weight bytes one decoded token reads: everything but the embedding table (one row
    /// of it) and, in MoE layers, the experts it does not choose.
    pub fn bytes_per_token(&self) -> usize {
        let emb = self.embeddings.data().len();
        let unread_experts: usize = self
            .layers
            .iter()
            .map(|b| match &b.mixer {
                Mixer::Moe(m) => m.unread_bytes_per_token(),
                _ => 0,
            })
            .sum();
        self.weight_bytes - emb + emb / self.config.vocab_size - unread_experts
    }
}
