//! Nemotron-H from a llama.cpp GGUF file (`general.architecture` `nemotron_h`, or
//! `nemotron_h_moe` for the MoE models), with the metadata keys and tensor names
//! llama.cpp's `convert_hf_to_gguf.py` writes and its `llama_model_nemotron_h` reads.
//!
//! Metadata (prefixed by the architecture's name): `embedding_length`, `block_count`, per-layer arrays
//! `feed_forward_length` and `attention.head_count_kv`, `attention.head_count`,
//! `attention.key_length`, `attention.layer_norm_rms_epsilon`, `context_length`, and the
//! Mamba2 sizes `ssm.conv_kernel`, `ssm.inner_size` (d_inner), `ssm.state_size`,
//! `ssm.time_step_rank` (the number of Mamba heads) and `ssm.group_count`. A layer's kind
//! is not stored; llama.cpp derives it, and so do we: both per-layer numbers 0 = Mamba2,
//! feed-forward length 0 = attention, otherwise MLP, or MoE when `expert_count` is set.
//! MoE keys: `expert_count`, `expert_used_count` (top-k), `expert_group_count` /
//! `expert_group_used_count` (n_group / topk_group), `expert_feed_forward_length`,
//! `expert_shared_feed_forward_length`, `expert_weights_norm` (norm_topk_prob),
//! `expert_weights_scale` (routed_scaling_factor), `moe_latent_size`.
//!
//! Tensors, and what the converter did to them (undone or accounted for here):
//!
//! | GGUF | checkpoint | converter |
//! |---|---|---|
//! | `token_embd.weight`, `output_norm.weight`, `output.weight` | embeddings, `norm_f`, `lm_head` | none (`output` absent = tied) |
//! | `blk.{i}.attn_norm.weight` | `layers.{i}.norm.weight` | none |
//! | `blk.{i}.ssm_in.weight` / `ssm_out.weight` | `mixer.in_proj` / `out_proj` | none |
//! | `blk.{i}.ssm_conv1d.weight` `[conv_dim, kernel]`, `.bias` | `mixer.conv1d.*` `[conv_dim, 1, kernel]` | squeezed |
//! | `blk.{i}.ssm_dt.bias` | `mixer.dt_bias` | renamed |
//! | `blk.{i}.ssm_a` `[heads, 1]` | `mixer.A_log` | **stores A = −exp(A_log)**, in f32 |
//! | `blk.{i}.ssm_d` `[heads, 1]` | `mixer.D` | unsqueezed |
//! | `blk.{i}.ssm_norm.weight` `[n_groups, d_inner/n_groups]` | `mixer.norm.weight` `[d_inner]` | reshaped per group |
//! | `blk.{i}.attn_{q,k,v,output}.weight` | `mixer.{q,k,v,o}_proj` | none (no RoPE, so no permutation) |
//! | `blk.{i}.ffn_up.weight` / `ffn_down.weight` | `mixer.up_proj` / `down_proj` | none |
//! | `blk.{i}.ffn_gate_inp.weight`, `exp_probs_b.bias` | `mixer.gate.weight`, `.e_score_correction_bias` | none |
//! | `blk.{i}.ffn_{up,down}_exps.weight` `[experts, rows, cols]` | `mixer.experts.{j}.{up,down}_proj.weight` | stacked |
//! | `blk.{i}.ffn_{up,down}_shexp.weight` | `mixer.shared_experts.{up,down}_proj.weight` | none |
//! | `blk.{i}.ffn_latent_{down,up}.weight` | `mixer.fc{1,2}_latent_proj.weight` | none |
//!
//! So `A` is used as stored (it equals what `Mamba2::load` computes from `A_log`, up to
//! the last bit of `exp`); the reshapes are row-major no-ops on the data. Small tensors
//! (norms, A, D, biases, conv) are F32 in every converter output type; the matrices carry
//! the file's type (BF16, Q8_0, ...) and stay in it, mapped, for the quantized matmuls.
//!
//! Two settings of the checkpoint are not in the file. `chunk_size` only orders the
//! arithmetic of the chunked scan (every chunk size computes the same function), so the
//! published value 128 is used. `time_step_min` (the lower clamp of dt in the chunked
//! scan) is 0.001 in every published Nemotron-H config, and that is used.

use super::attention::Attention;
use super::config::{LayerKind, NemotronHConfig};
use super::gguf::{GgufFile, Value};
use super::mamba2::{Mamba2, Mamba2Weights};
use super::mlp::Mlp;
use super::moe::{Moe, MoeWeights};
use super::nemotron_h::{Block, Mixer, NemotronH};
use super::weights::WeightStore;
use super::{shown, ModelError};

/// `chunk_size` of the published checkpoints (not stored in GGUF; see the module doc).
const CHUNK_SIZE: usize = 128;
/// `time_step_min` of the published checkpoints (not stored in GGUF).
const TIME_STEP_MIN: f32 = 0.001;

fn field_err(g: &GgufFile, key: &str, msg: String) -> ModelError {
    ModelError::ConfigField {
        file: g.path.clone(),
        field: key.into(),
        msg,
    }
}

/// A per-layer value: an array of `n` integers, or one integer for every layer.
fn per_layer(g: &GgufFile, key: &str, n: usize) -> Result<Vec<usize>, ModelError> {
    match g.get(key) {
        None => Err(field_err(g, key, "is missing".into())),
        Some(Value::Array(a)) => {
            if a.len() != n {
                return Err(field_err(
                    g,
                    key,
                    format!("has {} entries, but block_count is {n}", a.len()),
                ));
            }
            a.iter()
                .map(|v| {
                    v.as_u64().map(|x| x as usize).ok_or_else(|| {
                        field_err(g, key, "holds a value that is not a count".into())
                    })
                })
                .collect()
        }
        Some(_) => Ok(vec![g.get_usize(key)?; n]),
    }
}

/// The one non-zero value a per-layer array holds for the layers of a kind (nemo's config
/// has one size per kind; llama.cpp allows them to differ, no Nemotron-H does).
fn one_size(
    g: &GgufFile,
    key: &str,
    values: &[usize],
    kinds: &[LayerKind],
    kind: LayerKind,
) -> Result<usize, ModelError> {
    let mut sizes: Vec<usize> = kinds
        .iter()
        .zip(values)
        .filter(|(k, _)| **k == kind)
        .map(|(_, v)| *v)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    match sizes.as_slice() {
        [] => Ok(0),
        [s] => Ok(*s),
        _ => Err(field_err(
            g,
            key,
            format!("differs between layers ({sizes:?}); nemo needs one size per layer kind"),
        )),
    }
}

/// The model's configuration from `nemotron_h.*` metadata.
pub fn config_from_gguf(g: &GgufFile) -> Result<NemotronHConfig, ModelError> {
    let arch = g.architecture()?;
    if arch != "nemotron_h" && arch != "nemotron_h_moe" {
        return Err(field_err(
            g,
            "general.architecture",
            format!("is `{}`, not `nemotron_h` or `nemotron_h_moe`", shown(arch)),
        ));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let opt = |s: &str| -> Result<Option<usize>, ModelError> {
        match g.get(&k(s)) {
            Some(_) => g.get_usize(&k(s)).map(Some),
            None => Ok(None),
        }
    };
    let n_routed_experts = opt("expert_count")?.unwrap_or(0);
    let hidden_size = g.get_usize(&k("embedding_length"))?;
    let n = g.get_usize(&k("block_count"))?;
    // Every layer has at least its norm tensor: this bounds the per-layer vectors below.
    if n == 0 || n > g.tensors.len() {
        return Err(field_err(
            g,
            &k("block_count"),
            format!("{n} does not fit the file's {} tensors", g.tensors.len()),
        ));
    }
    g.check_block_count(&k("block_count"), n)?;
    let ff = per_layer(g, &k("feed_forward_length"), n)?;
    let kv = per_layer(g, &k("attention.head_count_kv"), n)?;
    let layers: Vec<LayerKind> = ff
        .iter()
        .zip(&kv)
        .map(|(&f, &h)| match (f, h) {
            (0, 0) => LayerKind::Mamba2,
            (0, _) => LayerKind::Attention,
            // llama.cpp: every feed-forward layer of a model with experts is MoE.
            _ if n_routed_experts > 0 => LayerKind::Moe,
            _ => LayerKind::Mlp,
        })
        .collect();
    let heads = per_layer(g, &k("attention.head_count"), n)?;
    let num_attention_heads = match one_size(
        g,
        &k("attention.head_count"),
        &heads,
        &layers,
        LayerKind::Attention,
    )? {
        // No attention layer: any value will do, none is used.
        0 => heads.iter().copied().max().unwrap_or(1).max(1),
        h => h,
    };
    let num_key_value_heads = one_size(
        g,
        &k("attention.head_count_kv"),
        &kv,
        &layers,
        LayerKind::Attention,
    )?
    .max(1);
    let intermediate_size = one_size(g, &k("feed_forward_length"), &ff, &layers, LayerKind::Mlp)?;
    let moe_ff = one_size(g, &k("feed_forward_length"), &ff, &layers, LayerKind::Moe)?;
    let n_group = opt("expert_group_count")?.unwrap_or(1).max(1);
    let head_dim = match g.get(&k("attention.key_length")) {
        Some(_) => g.get_usize(&k("attention.key_length"))?,
        None => hidden_size / num_attention_heads.max(1),
    };
    let mamba_num_heads = g.get_usize(&k("ssm.time_step_rank"))?;
    let d_inner = g.get_usize(&k("ssm.inner_size"))?;
    if mamba_num_heads == 0 || d_inner % mamba_num_heads != 0 {
        return Err(field_err(
            g,
            &k("ssm.inner_size"),
            format!("{d_inner} is not a multiple of ssm.time_step_rank {mamba_num_heads}"),
        ));
    }
    let eps_key = if g.get(&k("attention.layer_norm_rms_epsilon")).is_some() {
        k("attention.layer_norm_rms_epsilon")
    } else {
        k("attention.layer_norm_epsilon")
    };
    let vocab_size = g
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .and_then(|t| t.shape.first().copied())
        .ok_or_else(|| ModelError::MissingTensor {
            name: "token_embd.weight".into(),
            files: g.path.display().to_string(),
        })?;
    // llama.cpp sizes the embedding by the token list (`n_vocab`); a table longer than
    // the vocabulary is rows no token can reach, and logits no id can name.
    if let Some(Value::Array(tokens)) = g.get("tokenizer.ggml.tokens") {
        if tokens.len() != vocab_size {
            return Err(field_err(
                g,
                "tokenizer.ggml.tokens",
                format!(
                    "has {} entries, but `token_embd.weight` has {vocab_size} rows",
                    tokens.len()
                ),
            ));
        }
    }
    let id = |key: &str| g.token_id(key, vocab_size);
    let opt_bool = |key: &str| match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| field_err(g, key, "is not true or false".into())),
    };
    let cfg = NemotronHConfig {
        hidden_size,
        vocab_size,
        layers,
        layer_norm_epsilon: g.get_positive(&eps_key)? as f32,
        tie_word_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
        max_position_embeddings: match g.get(&k("context_length")) {
            Some(_) => g.get_usize(&k("context_length"))?,
            None => 4096,
        },
        mamba_num_heads,
        mamba_head_dim: d_inner / mamba_num_heads,
        ssm_state_size: g.get_usize(&k("ssm.state_size"))?,
        n_groups: g.get_usize(&k("ssm.group_count"))?,
        conv_kernel: g.get_usize(&k("ssm.conv_kernel"))?,
        chunk_size: CHUNK_SIZE,
        use_conv_bias: g
            .tensors
            .iter()
            .any(|t| t.name.ends_with(".ssm_conv1d.bias")),
        use_bias: false,
        time_step_min: TIME_STEP_MIN,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        intermediate_size,
        mlp_bias: false,
        n_routed_experts,
        num_experts_per_tok: opt("expert_used_count")?.unwrap_or(0),
        n_group,
        // Absent: no group is masked (llama.cpp's reading).
        topk_group: opt("expert_group_used_count")?.unwrap_or(n_group),
        moe_intermediate_size: opt("expert_feed_forward_length")?.unwrap_or(moe_ff),
        moe_shared_expert_intermediate_size: opt("expert_shared_feed_forward_length")?.unwrap_or(0),
        moe_latent_size: opt("moe_latent_size")?.filter(|&l| l > 0),
        norm_topk_prob: opt_bool(&k("expert_weights_norm"))?.unwrap_or(false),
        routed_scaling_factor: match g.get(&k("expert_weights_scale")) {
            Some(_) => g.get_positive(&k("expert_weights_scale"))? as f32,
            None => 1.0,
        },
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: id("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        torch_dtype: None,
    };
    if let Some(field) = cfg.overflowing_field() {
        let key = match field {
            "mamba_head_dim" => "ssm.inner_size",
            "ssm_state_size" => "ssm.state_size",
            _ => "attention.key_length",
        };
        return Err(field_err(
            g,
            &k(key),
            "makes the model's sizes overflow".into(),
        ));
    }
    for (key, v) in [
        ("ssm.group_count", cfg.n_groups),
        ("ssm.state_size", cfg.ssm_state_size),
        ("ssm.conv_kernel", cfg.conv_kernel),
        ("embedding_length", cfg.hidden_size),
    ] {
        if v == 0 {
            return Err(field_err(g, &k(key), "must be greater than 0".into()));
        }
    }
    if mamba_num_heads % cfg.n_groups != 0 {
        return Err(field_err(
            g,
            &k("ssm.group_count"),
            format!(
                "{} does not divide ssm.time_step_rank {mamba_num_heads}",
                cfg.n_groups
            ),
        ));
    }
    if cfg.layers.contains(&LayerKind::Moe) {
        let e = cfg.n_routed_experts;
        let bad = |key: &str, msg: String| Err(field_err(g, &k(key), msg));
        if cfg.num_experts_per_tok == 0 || cfg.num_experts_per_tok > e {
            return bad(
                "expert_used_count",
                format!("{} is not within 1..={e}", cfg.num_experts_per_tok),
            );
        }
        if !e.is_multiple_of(cfg.n_group) || cfg.topk_group == 0 || cfg.topk_group > cfg.n_group {
            return bad(
                "expert_group_used_count",
                format!(
                    "{} groups of which {} are used do not fit {e} experts",
                    cfg.n_group, cfg.topk_group
                ),
            );
        }
        if cfg.topk_group * (e / cfg.n_group) < cfg.num_experts_per_tok {
            return bad(
                "expert_group_used_count",
                "leaves fewer experts than expert_used_count".into(),
            );
        }
    }
    if !cfg
        .num_attention_heads
        .is_multiple_of(cfg.num_key_value_heads)
    {
        return Err(field_err(
            g,
            &k("attention.head_count_kv"),
            format!(
                "{} does not divide attention.head_count {}",
                cfg.num_key_value_heads, cfg.num_attention_heads
            ),
        ));
    }
    Ok(cfg)
}

/// An optional 1-D tensor (a bias), widened.
fn optional(w: &WeightStore, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
    if w.contains(name) {
        Ok(Some(w.get(name, &[n])?.to_f32()))
    } else {
        Ok(None)
    }
}

fn mamba2(cfg: &NemotronHConfig, w: &WeightStore, i: usize) -> Result<Mamba2, ModelError> {
    let t = |n: &str| format!("blk.{i}.{n}");
    let (h, di, cd, hs) = (
        cfg.mamba_num_heads,
        cfg.d_inner(),
        cfg.conv_dim(),
        cfg.hidden_size,
    );
    let weights = Mamba2Weights {
        in_proj: w.get(&t("ssm_in.weight"), &[cfg.in_proj_dim(), hs])?,
        in_proj_bias: optional(w, &t("ssm_in.bias"), cfg.in_proj_dim())?,
        conv_w: w
            .get(&t("ssm_conv1d.weight"), &[cd, cfg.conv_kernel])?
            .to_f32(),
        conv_b: optional(w, &t("ssm_conv1d.bias"), cd)?.unwrap_or_else(|| vec![0.0; cd]),
        dt_bias: w.get(&t("ssm_dt.bias"), &[h])?.to_f32(),
        // Stored as A = −exp(A_log) already (see the module doc).
        a: w.get_squeezed(&t("ssm_a"), &[h, 1])?.to_f32(),
        d: w.get_squeezed(&t("ssm_d"), &[h, 1])?.to_f32(),
        norm_w: w
            .get(&t("ssm_norm.weight"), &[cfg.n_groups, di / cfg.n_groups])?
            .to_f32(),
        out_proj: w.get(&t("ssm_out.weight"), &[hs, di])?,
        out_proj_bias: optional(w, &t("ssm_out.bias"), hs)?,
    };
    Ok(Mamba2::new(cfg, weights))
}

fn moe(cfg: &NemotronHConfig, w: &WeightStore, i: usize) -> Result<Moe, ModelError> {
    let t = |n: &str| format!("blk.{i}.{n}");
    let (hs, e, mi) = (
        cfg.hidden_size,
        cfg.n_routed_experts,
        cfg.moe_intermediate_size,
    );
    let inner = cfg.moe_latent_size.unwrap_or(hs);
    // Experts stacked `[experts, rows, cols]`; one view per expert.
    let up = w.get(&t("ffn_up_exps.weight"), &[e, mi, inner])?;
    let down = w.get(&t("ffn_down_exps.weight"), &[e, inner, mi])?;
    let si = cfg.moe_shared_expert_intermediate_size;
    let shared = if si > 0 {
        Some((
            w.get(&t("ffn_up_shexp.weight"), &[si, hs])?,
            w.get(&t("ffn_down_shexp.weight"), &[hs, si])?,
        ))
    } else {
        None
    };
    let latent = match cfg.moe_latent_size {
        Some(l) => Some((
            w.get(&t("ffn_latent_down.weight"), &[l, hs])?,
            w.get(&t("ffn_latent_up.weight"), &[hs, l])?,
        )),
        None => None,
    };
    let weights = MoeWeights {
        gate: w.get(&t("ffn_gate_inp.weight"), &[e, hs])?,
        bias: optional(w, &t("exp_probs_b.bias"), e)?.unwrap_or_else(|| vec![0.0; e]),
        experts: (0..e)
            .map(|j| (up.index_first(j), down.index_first(j)))
            .collect(),
        shared,
        latent,
    };
    Ok(Moe::new(cfg, weights))
}

/// A `nemotron_h` / `nemotron_h_moe` GGUF file's model; tensors stay mapped in their stored types.
pub fn load(g: &GgufFile) -> Result<NemotronH, ModelError> {
    let cfg = config_from_gguf(g)?;
    let mut w = g.weights();
    w.interleave_for_cpu();
    let (hs, vocab) = (cfg.hidden_size, cfg.vocab_size);
    let embeddings = w.get("token_embd.weight", &[vocab, hs])?;
    let mut layers = Vec::with_capacity(cfg.layers.len());
    for (i, kind) in cfg.layers.iter().enumerate() {
        let t = |n: &str| format!("blk.{i}.{n}");
        let norm = w.get(&t("attn_norm.weight"), &[hs])?.to_f32();
        let mixer = match kind {
            LayerKind::Mamba2 => Mixer::Mamba2(mamba2(&cfg, &w, i)?),
            LayerKind::Attention => {
                if w.contains(&t("attn_qkv.weight")) {
                    return Err(ModelError::Weights {
                        file: g.path.clone(),
                        msg: format!(
                            "tensor `{}` (fused q/k/v) is not supported; nemo reads separate attn_q/attn_k/attn_v",
                            t("attn_qkv.weight")
                        ),
                    });
                }
                Mixer::Attention(Attention::load_named(
                    &w,
                    [
                        &t("attn_q.weight"),
                        &t("attn_k.weight"),
                        &t("attn_v.weight"),
                        &t("attn_output.weight"),
                    ],
                    hs,
                    cfg.num_attention_heads,
                    cfg.num_key_value_heads,
                    cfg.head_dim,
                )?)
            }
            LayerKind::Mlp => {
                let is = cfg.intermediate_size;
                Mixer::Mlp(Mlp::new(
                    w.get(&t("ffn_up.weight"), &[is, hs])?,
                    w.get(&t("ffn_down.weight"), &[hs, is])?,
                    optional(&w, &t("ffn_up.bias"), is)?,
                    optional(&w, &t("ffn_down.bias"), hs)?,
                ))
            }
            LayerKind::Moe => Mixer::Moe(moe(&cfg, &w, i)?),
        };
        layers.push(Block { norm, mixer });
    }
    let norm_f = w.get("output_norm.weight", &[hs])?.to_f32();
    let lm_head = if w.contains("output.weight") {
        w.get("output.weight", &[vocab, hs])?
    } else {
        embeddings.clone()
    };
    Ok(NemotronH::from_parts(
        cfg, embeddings, layers, norm_f, lm_head, &w,
    ))
}
