//! Llama (`LlamaForCausalLM`): Llama-3.1-Nemotron-Nano and small test models.
//! `x = x + attn(rmsnorm(x))` with RoPE (llama3 scaling optional) and GQA, then
//! `x = x + down(silu(gate(x)) · up(x))`; final norm; LM head (or tied embeddings).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::attention::{Attention, Rope};
use super::config::{self, read_fields, Check};
use super::gguf::GgufFile;
use super::weights::{Tensor, WeightStore};
use super::{shown, ModelError};
use crate::backend::cpu::{matmul, matmul_many, ops};
use crate::backend::DType;
use crate::state::{CacheConfig, LayerShape, LayerState, SequenceState};

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub eos_token_id: Vec<u32>,
}

/// `rope_scaling` with `rope_type: llama3`.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// config.json's fields as serde reads them; `rope_scaling` / `rope_parameters` are read
/// by hand (their form depends on `rope_type`).
#[derive(Deserialize)]
struct LlamaConfigFile {
    hidden_size: usize,
    vocab_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: usize,
    #[serde(default, deserialize_with = "config::number")]
    rms_norm_eps: Option<f64>,
    #[serde(default, deserialize_with = "config::number")]
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default = "config::default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default, deserialize_with = "config::token_ids")]
    eos_token_id: Vec<u32>,
    #[serde(default, deserialize_with = "config::token_ids")]
    bos_token_id: Vec<u32>,
}

fn field_err(file: &Path, field: &str, msg: &str) -> ModelError {
    ModelError::ConfigField {
        file: file.to_path_buf(),
        field: field.into(),
        msg: msg.into(),
    }
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        Self::from_json(&config::read_json(path)?, path)
    }

    pub fn from_json(v: &Value, file: &Path) -> Result<Self, ModelError> {
        let check = Check::new(file);
        config::check_quantization_config(v, file)?;
        let f: LlamaConfigFile = read_fields(v, file, &[])?;
        let heads = f.num_attention_heads;
        if f.attention_bias || f.mlp_bias {
            return Err(field_err(
                file,
                "attention_bias",
                "biases are not supported for Llama models",
            ));
        }
        // transformers 5 writes `rope_parameters` (theta + scaling together); the hub's
        // Llama-3.1 configs write `rope_theta` and `rope_scaling`.
        let rope_params = f.rope_parameters.as_ref().filter(|p| p.is_object());
        let rope_scaling = match f.rope_scaling.as_ref().or(rope_params) {
            None => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or(s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match kind {
                    "llama3" => {
                        let f = |k: &str| -> Result<f64, ModelError> {
                            let field = format!("rope_scaling.{k}");
                            let x = match s.get(k).filter(|x| !x.is_null()) {
                                None => return Err(field_err(file, &field, "missing")),
                                Some(x) => check.number(&field, x)?,
                            };
                            if !x.is_finite() || x <= 0.0 {
                                return Err(field_err(
                                    file,
                                    &field,
                                    &format!("is {x}; it must be a finite number greater than 0"),
                                ));
                            }
                            Ok(x)
                        };
                        let scaling = Llama3Scaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f(
                                "original_max_position_embeddings",
                            )?,
                        };
                        // The blend divides by their difference.
                        if scaling.high_freq_factor <= scaling.low_freq_factor {
                            return Err(field_err(
                                file,
                                "rope_scaling.high_freq_factor",
                                "must be greater than rope_scaling.low_freq_factor",
                            ));
                        }
                        Some(scaling)
                    }
                    "default" | "" => None,
                    other => {
                        return Err(field_err(
                            file,
                            "rope_scaling",
                            &format!("rope_type `{}` is not supported (llama3 is)", shown(other)),
                        ))
                    }
                }
            }
        };
        let theta_in_params = rope_params
            .and_then(|p| p.get("rope_theta"))
            .filter(|t| !t.is_null() && f.rope_theta.is_none());
        let rope_theta = match theta_in_params {
            Some(t) => {
                check.positive("rope_theta", Some(check.number("rope_theta", t)?), 10000.0)?
            }
            None => check.positive("rope_theta", f.rope_theta, 10000.0)?,
        };
        check.ids_below("eos_token_id", &f.eos_token_id, f.vocab_size)?;
        check.ids_below("bos_token_id", &f.bos_token_id, f.vocab_size)?;
        let cfg = LlamaConfig {
            hidden_size: f.hidden_size,
            vocab_size: f.vocab_size,
            num_hidden_layers: f.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: f.num_key_value_heads.unwrap_or(heads),
            head_dim: f.head_dim.unwrap_or(f.hidden_size / heads.max(1)),
            intermediate_size: f.intermediate_size,
            rms_norm_eps: check.positive("rms_norm_eps", f.rms_norm_eps, 1e-5)? as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.max_position_embeddings,
            tie_word_embeddings: f.tie_word_embeddings,
            eos_token_id: f.eos_token_id,
        };
        if cfg.num_key_value_heads == 0
            || !heads.is_multiple_of(cfg.num_key_value_heads)
            || !cfg.head_dim.is_multiple_of(2)
        {
            return Err(field_err(
                file,
                "num_key_value_heads",
                "must divide num_attention_heads (and head_dim must be even)",
            ));
        }
        if heads.checked_mul(cfg.head_dim).is_none() {
            return Err(field_err(
                file,
                "head_dim",
                "makes the model's sizes overflow",
            ));
        }
        for (name, v) in [
            ("hidden_size", cfg.hidden_size),
            ("vocab_size", cfg.vocab_size),
            ("num_hidden_layers", cfg.num_hidden_layers),
            ("head_dim", cfg.head_dim),
        ] {
            if v == 0 {
                return Err(check.err(name, "must be greater than 0".into()));
            }
        }
        Ok(cfg)
    }

    /// From GGUF `llama.*` metadata (llama.cpp's `llm_load_hparams` keys); the vocabulary
    /// size is the length of `tokenizer.ggml.tokens`.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g.architecture()?;
        if arch != "llama" {
            return Err(field_err(
                &g.path,
                "general.architecture",
                &format!(
                    "is `{}`; nemo reads GGUF files of the `llama` architecture",
                    shown(arch)
                ),
            ));
        }
        let k = |s: &str| format!("llama.{s}");
        let hidden_size = g.get_usize(&k("embedding_length"))?;
        let heads = g.get_usize(&k("attention.head_count"))?;
        let kv = match g.get(&k("attention.head_count_kv")) {
            Some(_) => g.get_usize(&k("attention.head_count_kv"))?,
            None => heads,
        };
        let head_dim = match g.get(&k("attention.key_length")) {
            Some(_) => g.get_usize(&k("attention.key_length"))?,
            None => hidden_size / heads.max(1),
        };
        // Llama-3.1's scaling comes as the `rope_freqs.weight` tensor (see `load_gguf`);
        // linear scaling as a factor there too; yarn and longrope are not read.
        let scaling = g.get(&k("rope.scaling.type")).and_then(|v| v.as_str());
        if scaling.is_some_and(|t| t != "none" && t != "linear") {
            return Err(field_err(
                &g.path,
                "llama.rope.scaling.type",
                &format!(
                    "`{}` is not supported (none and linear are)",
                    scaling.unwrap_or("")
                ),
            ));
        }
        let vocab_size = g.get_array("tokenizer.ggml.tokens")?.len();
        let eos = g
            .token_id("tokenizer.ggml.eos_token_id", vocab_size)?
            .into_iter()
            .collect();
        g.token_id("tokenizer.ggml.bos_token_id", vocab_size)?;
        let num_hidden_layers = g.get_usize(&k("block_count"))?;
        g.check_block_count(&k("block_count"), num_hidden_layers)?;
        let cfg = LlamaConfig {
            hidden_size,
            vocab_size,
            num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            intermediate_size: g.get_usize(&k("feed_forward_length"))?,
            rms_norm_eps: match g.get(&k("attention.layer_norm_rms_epsilon")) {
                Some(_) => g.get_positive(&k("attention.layer_norm_rms_epsilon"))? as f32,
                None => 1e-5,
            },
            rope_theta: match g.get(&k("rope.freq_base")) {
                Some(_) => g.get_positive(&k("rope.freq_base"))?,
                None => 10000.0,
            },
            rope_scaling: None,
            max_position_embeddings: match g.get(&k("context_length")) {
                Some(_) => g.get_usize(&k("context_length"))?,
                None => 4096,
            },
            tie_word_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
            eos_token_id: eos,
        };
        if kv == 0 || heads % kv != 0 || head_dim % 2 != 0 {
            return Err(field_err(
                &g.path,
                "llama.attention.head_count_kv",
                "must divide llama.attention.head_count (and the head size must be even)",
            ));
        }
        if heads.checked_mul(head_dim).is_none() {
            return Err(field_err(
                &g.path,
                "llama.attention.key_length",
                "makes the model's sizes overflow",
            ));
        }
        Ok(cfg)
    }

    /// inv_freq_i = θ^(-2i/d), with llama3 scaling: long wavelengths divided by `factor`,
    /// short ones kept, a smooth blend between (transformers `_compute_llama3_parameters`).
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64);
                let f = match &self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings / wavelen
                                - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

struct Layer {
    input_norm: Vec<f32>,
    attn: Attention,
    post_norm: Vec<f32>,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Tensor,
    rope: Rope,
    pub weight_dtype: DType,
    pub weight_bytes: usize,
}

impl Llama {
    pub fn load(config: LlamaConfig, w: &WeightStore) -> Result<Self, ModelError> {
        let c = &config;
        let (hs, is) = (c.hidden_size, c.intermediate_size);
        let embed = w.get("model.embed_tokens.weight", &[c.vocab_size, hs])?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    input_norm: w
                        .get(&format!("{p}.input_layernorm.weight"), &[hs])?
                        .to_f32(),
                    attn: Attention::load_dims(
                        w,
                        &format!("{p}.self_attn"),
                        hs,
                        c.num_attention_heads,
                        c.num_key_value_heads,
                        c.head_dim,
                    )?,
                    post_norm: w
                        .get(&format!("{p}.post_attention_layernorm.weight"), &[hs])?
                        .to_f32(),
                    gate: w.get(&format!("{p}.mlp.gate_proj.weight"), &[is, hs])?,
                    up: w.get(&format!("{p}.mlp.up_proj.weight"), &[is, hs])?,
                    down: w.get(&format!("{p}.mlp.down_proj.weight"), &[hs, is])?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let lm_head = if w.contains("lm_head.weight") {
            w.get("lm_head.weight", &[c.vocab_size, hs])?
        } else if c.tie_word_embeddings {
            embed.clone()
        } else {
            return Err(ModelError::MissingTensor {
                name: "lm_head.weight".into(),
                files: "the weights (tie_word_embeddings is false)".into(),
            });
        };
        Ok(Llama {
            norm: w.get("model.norm.weight", &[hs])?.to_f32(),
            rope: Rope {
                inv_freq: config.inv_freq(),
                interleaved: false,
            },
            weight_dtype: w.main_dtype(),
            weight_bytes: w.total_bytes(),
            embed,
            layers,
            lm_head,
            config,
        })
    }

    /// A llama.cpp GGUF file (`general.architecture = llama`), tensors named as llama.cpp
    /// names them (`token_embd`, `blk.{i}.attn_q`, ...; no `output.weight` means tied).
    /// Its q/k rows are in interleaved-rope order (see `Rope::interleaved`).
    pub fn load_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(g)?;
        let mut w = g.weights();
        w.interleave_for_cpu();
        let c = &config;
        let (hs, is) = (c.hidden_size, c.intermediate_size);
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let embed = w.get("token_embd.weight", &[c.vocab_size, hs])?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("blk.{i}");
                let t = |n: &str| format!("{p}.{n}.weight");
                Ok(Layer {
                    input_norm: w.get(&t("attn_norm"), &[hs])?.to_f32(),
                    attn: Attention::load_named(
                        &w,
                        [&t("attn_q"), &t("attn_k"), &t("attn_v"), &t("attn_output")],
                        hs,
                        nh,
                        nkv,
                        hd,
                    )?,
                    post_norm: w.get(&t("ffn_norm"), &[hs])?.to_f32(),
                    gate: w.get(&t("ffn_gate"), &[is, hs])?,
                    up: w.get(&t("ffn_up"), &[is, hs])?,
                    down: w.get(&t("ffn_down"), &[hs, is])?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let lm_head = if w.contains("output.weight") {
            w.get("output.weight", &[c.vocab_size, hs])?
        } else {
            embed.clone()
        };
        // llama.cpp's rope: θ_i = pos · base^(−2i/d) / freq_factors[i] / linear factor
        // (`rope_freqs.weight` is how convert_hf_to_gguf.py stores llama3 scaling).
        let mut inv_freq = config.inv_freq();
        if w.contains("rope_freqs.weight") {
            let ff = w.get("rope_freqs.weight", &[hd / 2])?.to_f32();
            inv_freq.iter_mut().zip(&ff).for_each(|(f, s)| *f /= s);
        }
        if g.get("llama.rope.scaling.type").and_then(|v| v.as_str()) == Some("linear") {
            let factor = g.get_positive("llama.rope.scaling.factor")? as f32;
            inv_freq.iter_mut().for_each(|f| *f /= factor);
        }
        Ok(Llama {
            norm: w.get("output_norm.weight", &[hs])?.to_f32(),
            rope: Rope {
                inv_freq,
                interleaved: true,
            },
            weight_dtype: w.main_dtype(),
            weight_bytes: w.total_bytes(),
            embed,
            layers,
            lm_head,
            config,
        })
    }

    pub fn new_state(&self, cache: CacheConfig) -> SequenceState {
        let c = &self.config;
        let attention = LayerShape::Attention {
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        SequenceState::new(vec![attention; c.num_hidden_layers], cache)
    }

    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        want: super::Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let (n, c) = (tokens.len(), &self.config);
        let hs = c.hidden_size;
        if n == 0 {
            return Ok(vec![]);
        }
        let mut x = super::lm_head::embed(&self.embed, tokens)?;
        let mut normed = vec![0f32; n * hs];
        let mut out = vec![0f32; n * hs];
        let is = c.intermediate_size;
        let mut g = vec![0f32; n * is];
        let mut u = vec![0f32; n * is];
        for (layer, st) in self.layers.iter().zip(state.layers.iter_mut()) {
            let LayerState::Attention(kv) = st else {
                return Err(ModelError::Unsupported(
                    "sequence state does not match the model's layers".into(),
                ));
            };
            ops::rms_norm(&x, &layer.input_norm, c.rms_norm_eps, &mut normed);
            layer
                .attn
                .forward_rope(&normed, n, kv, Some(&self.rope), &mut out);
            x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
            ops::rms_norm(&x, &layer.post_norm, c.rms_norm_eps, &mut normed);
            matmul_many(
                &normed,
                n,
                &mut [(layer.gate.mat(), &mut g), (layer.up.mat(), &mut u)],
            );
            g.iter_mut()
                .zip(&u)
                .for_each(|(a, b)| *a = ops::silu(*a) * b);
            matmul(&g, n, layer.down.mat(), &mut out);
            x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        }
        state.len += n;
        Ok(super::lm_head::logits(
            &x,
            &self.norm,
            c.rms_norm_eps,
            &self.lm_head,
            want,
        ))
    }
}
