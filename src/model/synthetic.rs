//! Synthetic weights at real model shapes, for benchmarks: speed does not depend on the
//! values, but values are random (never zeros) and scaled like a trained model's so the
//! activations stay finite.

use rayon::prelude::*;
use serde_json::json;

use super::config::NemotronHConfig;
use super::nemotron_h::NemotronH;
use super::weights::{Tensor, WeightStore};
use super::{LayerKind, ModelError};
use crate::backend::dtype::narrow_into;
use crate::backend::DType;

/// xorshift64 (Marsaglia 2003, shifts 13, 7, 17): the one generator of nemo's synthetic
/// data (bench weights and prompt ids, the bench's synthetic vocabulary, test inputs).
/// Reproducible from its seed and fast; not the sampler's generator (`engine::sampler`
/// keeps xoshiro256**, whose draws the GPU sampler must reproduce).
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from `seed`; 0 (xorshift's one fixed point) is taken as 1.
    pub fn new(seed: u64) -> Self {
        XorShift64(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Below `n` (0 for `n` = 0), by the remainder: the bias is far below what
    /// synthetic data can notice.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [-scale, scale], never exactly zero (the top 24 bits, centred).
    pub fn uniform(&mut self, scale: f32) -> f32 {
        let u = ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * scale
    }
}

/// `n` values uniform in [-scale, scale], never exactly zero, from `seed`.
pub fn uniform(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut rng = XorShift64::new(seed);
    (0..n).map(|_| rng.uniform(scale)).collect()
}

/// `n` token ids below `vocab`, from `seed` (bench prompts).
pub fn token_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = XorShift64::new(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// Named shapes `nemo bench --shape` knows.
pub const SHAPES: &[&str] = &[
    "nano-9b-v2",
    "nano-9b-v2-slice",
    "nano-12b-v2",
    "nemotron-3-nano-4b",
    "nano-30b-a3b",
    "tiny",
];

/// Layers of `nano-9b-v2-slice`: Nano 9B v2's dimensions with one Mamba2, one MLP, one more
/// Mamba2 and one attention layer, so a short benchmark exercises every kind of mixer at
/// the real size (the full pattern's first attention layer is its 14th).
const NANO_SLICE_PATTERN: &str = "M-M*";

/// config.json of a named shape (published form).
pub fn shape_config(name: &str) -> Option<serde_json::Value> {
    match name {
        "nano-9b-v2-slice" => {
            let mut v = shape_config("nano-9b-v2")?;
            v["hybrid_override_pattern"] = json!(NANO_SLICE_PATTERN);
            Some(v)
        }
        // DESIGN.md: Nano 9B v2.
        "nano-9b-v2" => Some(json!({
            "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
            "hidden_size": 4480, "vocab_size": 131072,
            "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
            "mamba_num_heads": 128, "mamba_head_dim": 80, "ssm_state_size": 128, "n_groups": 8,
            "conv_kernel": 4, "chunk_size": 128, "num_attention_heads": 40, "num_key_value_heads": 8,
            "head_dim": 128, "intermediate_size": 15680, "layer_norm_epsilon": 1e-5,
            "max_position_embeddings": 131072, "eos_token_id": 12
        })),
        // Nemotron Nano 12B v2 (the base the 9B was pruned from): Megatron-Bridge's
        // `NemotronNanoModelProvider12Bv2` (hidden 5120, 62 layers = 28 M / 28 MLP / 6
        // attention, MLP 20480, 128 Mamba heads × 80, 40 query heads, 8 KV groups); the eos
        // id is the Nano v2 family's.
        "nano-12b-v2" => {
            let mut v = shape_config("nano-9b-v2")?;
            v["hidden_size"] = json!(5120);
            v["intermediate_size"] = json!(20480);
            v["hybrid_override_pattern"] =
                json!("M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-");
            Some(v)
        }
        // Nemotron Nano 3 4B (dense): Megatron-Bridge's recipe `nemotron_3_nano_4b`
        // ("the exact dense Nemotron 3 Nano 4B architecture"): 42 layers = 21 M / 17 MLP /
        // 4 attention, hidden 3136, MLP 12544, 96 Mamba heads × 80, d_state 128, 8 groups,
        // 40 query / 8 KV heads × 128, untied head. Context and eos id are not in that
        // recipe: the Nemotron 3 family's (`<|im_end|>`, as the 30B-A3B) are assumed.
        "nemotron-3-nano-4b" => Some(json!({
            "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
            "hidden_size": 3136, "vocab_size": 131072,
            "hybrid_override_pattern": "M-M-M-MM-M-M*-M-M*-M-M-M*-M-M-MM*-MMM-M-M-",
            "mamba_num_heads": 96, "mamba_head_dim": 80, "ssm_state_size": 128, "n_groups": 8,
            "conv_kernel": 4, "chunk_size": 128, "num_attention_heads": 40, "num_key_value_heads": 8,
            "head_dim": 128, "intermediate_size": 12544, "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": false,
            "max_position_embeddings": 262144, "eos_token_id": 11
        })),
        // Nemotron-3-Nano-30B-A3B (MoE): Megatron-Bridge's `Nemotron3NanoProvider` and its
        // `nemotron_3_nano` recipes: 52 layers = 23 Mamba2 / 23 MoE / 6 attention, hidden
        // 2688, 64 Mamba heads × 64, 32 query / 2 KV heads × 128, 128 routed experts (1856),
        // top-6, one group, scaling 2.5, a shared expert (3712).
        "nano-30b-a3b" => Some(json!({
            "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
            "hidden_size": 2688, "vocab_size": 131072,
            "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
            "mamba_num_heads": 64, "mamba_head_dim": 64, "ssm_state_size": 128, "n_groups": 8,
            "conv_kernel": 4, "chunk_size": 128, "num_attention_heads": 32, "num_key_value_heads": 2,
            "head_dim": 128, "intermediate_size": 1856, "layer_norm_epsilon": 1e-5,
            "n_routed_experts": 128, "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1,
            "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712,
            "norm_topk_prob": true, "routed_scaling_factor": 2.5,
            "max_position_embeddings": 262144, "eos_token_id": 11
        })),
        "tiny" => Some(json!({
            "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
            "hidden_size": 256, "vocab_size": 4096, "hybrid_override_pattern": "M-M*-M-",
            "mamba_num_heads": 8, "mamba_head_dim": 64, "ssm_state_size": 64, "n_groups": 2,
            "conv_kernel": 4, "chunk_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2,
            "head_dim": 32, "intermediate_size": 768, "layer_norm_epsilon": 1e-5, "eos_token_id": 2
        })),
        _ => None,
    }
}

fn random_bytes(dtype: DType, n: usize, scale: f32, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n * dtype.size()];
    let chunk = 1 << 16;
    out.par_chunks_mut(chunk * dtype.size())
        .enumerate()
        .for_each(|(ci, bytes)| {
            let chunk_seed =
                seed ^ (ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
            let vals = uniform(chunk_seed, bytes.len() / dtype.size(), scale);
            narrow_into(dtype, &vals, bytes);
        });
    out
}

/// The layer pattern of a named shape (`hybrid_override_pattern`), one symbol per layer.
pub fn shape_pattern(name: &str) -> Option<String> {
    shape_config(name)?["hybrid_override_pattern"]
        .as_str()
        .map(str::to_string)
}

/// The config of a named shape with the first `layers` layers of its pattern (all if
/// None; a count past the end repeats the pattern), as `build` uses it.
pub fn shape(name: &str, layers: Option<usize>) -> Result<NemotronHConfig, ModelError> {
    let pattern = shape_pattern(name).ok_or_else(|| unknown(name))?;
    let cut: String = match layers {
        Some(n) => pattern.chars().cycle().take(n.max(1)).collect(),
        None => pattern,
    };
    shape_with_pattern(name, &cut)
}

fn unknown(name: &str) -> ModelError {
    ModelError::Unsupported(format!(
        "unknown shape `{name}` (known: {})",
        SHAPES.join(", ")
    ))
}

fn shape_with_pattern(name: &str, pattern: &str) -> Result<NemotronHConfig, ModelError> {
    let mut v = shape_config(name).ok_or_else(|| unknown(name))?;
    v["hybrid_override_pattern"] = json!(pattern);
    NemotronHConfig::from_json(&v, std::path::Path::new(name))
}

/// Builds a model of the named shape with the first `layers` layers of its pattern (all if
/// None; a count past the end repeats the pattern).
pub fn build(name: &str, dtype: DType, layers: Option<usize>) -> Result<NemotronH, ModelError> {
    build_config(shape(name, layers)?, dtype)
}

/// Builds a model with the named shape's dimensions and the given layer pattern
/// (`M` Mamba2, `-` MLP, `*` attention), e.g. to time one kind of layer alone.
pub fn build_with_pattern(
    name: &str,
    dtype: DType,
    pattern: &str,
) -> Result<NemotronH, ModelError> {
    build_config(shape_with_pattern(name, pattern)?, dtype)
}

/// Bytes the weights `build` makes for `cfg` take in `dtype`: what a synthetic run
/// allocates before its first token (`nemo bench` checks it against free memory).
pub fn weight_bytes(cfg: &NemotronHConfig, dtype: DType) -> u64 {
    tensor_specs(cfg)
        .iter()
        .map(|(_, shape, _)| {
            shape
                .iter()
                .fold(dtype.size() as u64, |a, &d| a.saturating_mul(d as u64))
        })
        .fold(0u64, u64::saturating_add)
}

fn build_config(cfg: NemotronHConfig, dtype: DType) -> Result<NemotronH, ModelError> {
    let tensors = tensor_specs(&cfg)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape, scale))| {
            let n = shape.iter().product();
            let bytes = random_bytes(dtype, n, scale, i as u64 + 2);
            Tensor::from_owned(&name, dtype, shape, bytes)
        })
        .collect();
    NemotronH::load(cfg, &WeightStore::from_tensors(tensors))
}

/// Every tensor of a model with `cfg` as (name, shape, scale of its random values), in
/// the order their seeds follow.
fn tensor_specs(cfg: &NemotronHConfig) -> Vec<(String, Vec<usize>, f32)> {
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32| {
        tensors.push((name, shape, scale));
    };
    let (hs, vocab) = (cfg.hidden_size, cfg.vocab_size);
    let inv = |k: usize| (3.0 / k as f32).sqrt();
    add("backbone.embeddings.weight".into(), vec![vocab, hs], 1.0);
    for (i, kind) in cfg.layers.iter().enumerate() {
        let p = format!("backbone.layers.{i}");
        add(format!("{p}.norm.weight"), vec![hs], 1.0);
        let m = format!("{p}.mixer");
        match kind {
            LayerKind::Mamba2 => {
                let (h, di, cd) = (cfg.mamba_num_heads, cfg.d_inner(), cfg.conv_dim());
                add(
                    format!("{m}.in_proj.weight"),
                    vec![cfg.in_proj_dim(), hs],
                    inv(hs),
                );
                add(
                    format!("{m}.conv1d.weight"),
                    vec![cd, 1, cfg.conv_kernel],
                    0.5,
                );
                add(format!("{m}.conv1d.bias"), vec![cd], 0.1);
                add(format!("{m}.dt_bias"), vec![h], 1.0);
                add(format!("{m}.A_log"), vec![h], 1.0);
                add(format!("{m}.D"), vec![h], 1.0);
                add(format!("{m}.norm.weight"), vec![di], 1.0);
                add(format!("{m}.out_proj.weight"), vec![hs, di], inv(di) / 4.0);
            }
            LayerKind::Attention => {
                let (nh, nkv, hd) = (
                    cfg.num_attention_heads,
                    cfg.num_key_value_heads,
                    cfg.head_dim,
                );
                add(format!("{m}.q_proj.weight"), vec![nh * hd, hs], inv(hs));
                add(format!("{m}.k_proj.weight"), vec![nkv * hd, hs], inv(hs));
                add(format!("{m}.v_proj.weight"), vec![nkv * hd, hs], inv(hs));
                add(
                    format!("{m}.o_proj.weight"),
                    vec![hs, nh * hd],
                    inv(nh * hd) / 4.0,
                );
            }
            LayerKind::Mlp => {
                add(
                    format!("{m}.up_proj.weight"),
                    vec![cfg.intermediate_size, hs],
                    inv(hs),
                );
                add(
                    format!("{m}.down_proj.weight"),
                    vec![hs, cfg.intermediate_size],
                    inv(cfg.intermediate_size) / 4.0,
                );
            }
            LayerKind::Moe => {
                let (e, mi, si) = (
                    cfg.n_routed_experts,
                    cfg.moe_intermediate_size,
                    cfg.moe_shared_expert_intermediate_size,
                );
                add(format!("{m}.gate.weight"), vec![e, hs], inv(hs));
                add(format!("{m}.gate.e_score_correction_bias"), vec![e], 0.1);
                for j in 0..e {
                    add(
                        format!("{m}.experts.{j}.up_proj.weight"),
                        vec![mi, hs],
                        inv(hs),
                    );
                    add(
                        format!("{m}.experts.{j}.down_proj.weight"),
                        vec![hs, mi],
                        inv(mi) / 4.0,
                    );
                }
                add(
                    format!("{m}.shared_experts.up_proj.weight"),
                    vec![si, hs],
                    inv(hs),
                );
                add(
                    format!("{m}.shared_experts.down_proj.weight"),
                    vec![hs, si],
                    inv(si) / 4.0,
                );
            }
        }
    }
    add("backbone.norm_f.weight".into(), vec![hs], 1.0);
    add("lm_head.weight".into(), vec![vocab, hs], inv(hs));
    tensors
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_named_shape_is_a_valid_config_and_nano_12b_keeps_the_9b_heads() {
        for name in SHAPES {
            let v = shape_config(name).unwrap();
            NemotronHConfig::from_json(&v, Path::new(name)).unwrap();
        }
        let c = NemotronHConfig::from_json(
            &shape_config("nano-12b-v2").unwrap(),
            Path::new("nano-12b-v2"),
        )
        .unwrap();
        let count = |k: LayerKind| c.layers.iter().filter(|&&l| l == k).count();
        assert_eq!(c.layers.len(), 62);
        assert_eq!(
            (
                count(LayerKind::Mamba2),
                count(LayerKind::Mlp),
                count(LayerKind::Attention)
            ),
            (28, 28, 6)
        );
        assert_eq!((c.hidden_size, c.intermediate_size), (5120, 20480));
        assert_eq!(
            (c.mamba_num_heads, c.mamba_head_dim, c.num_attention_heads),
            (128, 80, 40)
        );
    }

    #[test]
    fn nemotron_3_nano_4b_has_the_published_layer_mix() {
        // Public notes on the released checkpoint: 42 blocks, 21 Mamba2 / 4 attention /
        // 17 MLP, attention at blocks 12, 17, 24 and 32.
        let c = NemotronHConfig::from_json(
            &shape_config("nemotron-3-nano-4b").unwrap(),
            Path::new("nemotron-3-nano-4b"),
        )
        .unwrap();
        let at: Vec<usize> = (0..c.layers.len())
            .filter(|&i| c.layers[i] == LayerKind::Attention)
            .collect();
        let count = |k: LayerKind| c.layers.iter().filter(|&&l| l == k).count();
        assert_eq!(c.layers.len(), 42);
        assert_eq!((count(LayerKind::Mamba2), count(LayerKind::Mlp)), (21, 17));
        assert_eq!(at, vec![12, 17, 24, 32]);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.d_inner(), 96 * 80);
    }
}
