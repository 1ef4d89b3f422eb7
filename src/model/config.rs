//! `config.json` of a `NemotronHForCausalLM` checkpoint, in both forms that exist:
//! the published one (`hybrid_override_pattern`, e.g. Nano 9B v2) and what transformers 5
//! writes (`layers_block_type` list, MoE keys present even for dense models, `mamba_*`
//! spellings). Field names keep the HF keys. The layer pattern is parsed once, here.
//!
//! serde reads the fields (`ConfigFile`); code of our own is left for what serde cannot
//! say: other spellings of a key that may stand beside it (`SPELLINGS`), Python's bare
//! `NaN` / `Infinity` ([`python_json_to_strict`], [`number`]), the layer pattern, and
//! validation ([`Check`]). Invariant: every error names the file and the field, and a
//! value of the wrong type is an error, never taken as absent; `null` is absent.

use std::path::Path;

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::Deserialize;
use serde_json::Value;

use super::{shown, ModelError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `M` / `linear_attention`
    Mamba2,
    /// `*` / `full_attention`
    Attention,
    /// `-` / `mlp`
    Mlp,
    /// `E` / `moe`
    Moe,
}

impl LayerKind {
    pub fn symbol(self) -> char {
        match self {
            LayerKind::Mamba2 => 'M',
            LayerKind::Attention => '*',
            LayerKind::Mlp => '-',
            LayerKind::Moe => 'E',
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NemotronHConfig {
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub layers: Vec<LayerKind>,
    pub layer_norm_epsilon: f32,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    // Mamba2
    pub mamba_num_heads: usize,
    pub mamba_head_dim: usize,
    pub ssm_state_size: usize,
    pub n_groups: usize,
    pub conv_kernel: usize,
    pub chunk_size: usize,
    pub use_conv_bias: bool,
    /// `in_proj` / `out_proj` bias (`use_bias` in the reference).
    pub use_bias: bool,
    /// Lower clamp of dt in the chunked scan. The reference mixer uses
    /// `(time_step_min, inf)` as its limit, whatever `time_step_limit` says.
    pub time_step_min: f32,
    // Attention
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    // MLP
    pub intermediate_size: usize,
    pub mlp_bias: bool,
    // MoE (`E` layers)
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    /// Routing groups (not Mamba's `n_groups`).
    pub n_group: usize,
    pub topk_group: usize,
    pub moe_intermediate_size: usize,
    pub moe_shared_expert_intermediate_size: usize,
    pub moe_latent_size: Option<usize>,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
    // Ids
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
    /// The dtype the checkpoint says it is stored in (`torch_dtype` / `dtype`), informational.
    pub torch_dtype: Option<String>,
}

impl NemotronHConfig {
    pub fn d_inner(&self) -> usize {
        self.mamba_num_heads * self.mamba_head_dim
    }
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.n_groups * self.ssm_state_size
    }
    pub fn in_proj_dim(&self) -> usize {
        self.d_inner() + self.conv_dim() + self.mamba_num_heads
    }
    /// The field whose claim makes a derived size (d_inner, conv_dim, in_proj_dim, the
    /// attention projections' rows) overflow, if any: such a size is no model, and the
    /// loaders compute with these sizes unchecked once they exist.
    pub fn overflowing_field(&self) -> Option<&'static str> {
        let d_inner = self.mamba_num_heads.checked_mul(self.mamba_head_dim);
        let Some(d_inner) = d_inner else {
            return Some("mamba_head_dim");
        };
        let conv = self
            .n_groups
            .checked_mul(self.ssm_state_size)
            .and_then(|x| x.checked_mul(2))
            .and_then(|x| x.checked_add(d_inner));
        let in_proj = conv
            .and_then(|c| c.checked_add(d_inner))
            .and_then(|x| x.checked_add(self.mamba_num_heads));
        if in_proj.is_none() {
            return Some("ssm_state_size");
        }
        let heads = self.num_attention_heads.max(self.num_key_value_heads);
        if heads.checked_mul(self.head_dim).is_none() {
            return Some("head_dim");
        }
        None
    }

    pub fn pattern(&self) -> String {
        self.layers.iter().map(|k| k.symbol()).collect()
    }

    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        Self::from_json(&read_json(path)?, path)
    }

    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ModelError> {
        let check = Check::new(path);
        check_quantization_config(value, path)?;

        let arch = value
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_string);
        let model_type = value.get("model_type").and_then(|v| v.as_str());
        let is_nemotron_h =
            arch.as_deref() == Some("NemotronHForCausalLM") || model_type == Some("nemotron_h");
        if !is_nemotron_h {
            return Err(ModelError::UnsupportedArchitecture {
                file: path.to_path_buf(),
                arch: arch
                    .or(model_type.map(str::to_string))
                    .map(|a| shown(&a))
                    .unwrap_or_else(|| "(none given)".into()),
            });
        }

        let f: ConfigFile = read_fields(value, path, SPELLINGS)?;
        let layers = f.layers(&check)?;
        for (field, act, want) in [
            ("mlp_hidden_act", &f.mlp_hidden_act, "relu2"),
            ("mamba_hidden_act", &f.mamba_hidden_act, "silu"),
        ] {
            if let Some(act) = act.as_ref().and_then(Value::as_str) {
                if act != want {
                    return Err(check.err(
                        field,
                        format!("`{}` is not supported (only {want})", shown(act)),
                    ));
                }
            }
        }
        let cfg = NemotronHConfig {
            hidden_size: f.hidden_size,
            vocab_size: f.vocab_size,
            layer_norm_epsilon: check.positive("layer_norm_epsilon", f.layer_norm_epsilon, 1e-5)?
                as f32,
            tie_word_embeddings: f.tie_word_embeddings,
            max_position_embeddings: f.max_position_embeddings,
            mamba_num_heads: f.mamba_num_heads,
            mamba_head_dim: f.mamba_head_dim,
            ssm_state_size: f.ssm_state_size,
            n_groups: f.n_groups,
            conv_kernel: f.conv_kernel,
            chunk_size: f.chunk_size,
            use_conv_bias: f.use_conv_bias,
            use_bias: f.use_bias,
            time_step_min: check.finite("time_step_min", f.time_step_min, 0.001)? as f32,
            num_attention_heads: f.num_attention_heads,
            num_key_value_heads: f.num_key_value_heads.unwrap_or(f.num_attention_heads),
            head_dim: f
                .head_dim
                .unwrap_or(f.hidden_size / f.num_attention_heads.max(1)),
            intermediate_size: f.intermediate_size,
            mlp_bias: f.mlp_bias,
            n_routed_experts: f.n_routed_experts,
            num_experts_per_tok: f.num_experts_per_tok,
            n_group: f.n_group,
            topk_group: f.topk_group,
            moe_intermediate_size: f.moe_intermediate_size,
            moe_shared_expert_intermediate_size: f.moe_shared_expert_intermediate_size,
            moe_latent_size: f.moe_latent_size,
            norm_topk_prob: f.norm_topk_prob,
            routed_scaling_factor: check.positive(
                "routed_scaling_factor",
                f.routed_scaling_factor,
                1.0,
            )? as f32,
            bos_token_id: f.bos_token_id.first().copied(),
            eos_token_id: f.eos_token_id.clone(),
            torch_dtype: value
                .get("torch_dtype")
                .or(value.get("dtype"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
            layers,
        };
        cfg.validate(&check)?;
        check.ids_below("bos_token_id", &f.bos_token_id, cfg.vocab_size)?;
        check.ids_below("eos_token_id", &f.eos_token_id, cfg.vocab_size)?;
        cfg.check_sizes(&check)?;
        Ok(cfg)
    }

    fn validate(&self, check: &Check<'_>) -> Result<(), ModelError> {
        let err = |field: &str, msg: String| Err(check.err(field, msg));
        if let Some(field) = self.overflowing_field() {
            return err(field, "makes the model's sizes overflow".into());
        }
        if self.layers.is_empty() {
            return err("hybrid_override_pattern", "has no layers".into());
        }
        if self.layers.contains(&LayerKind::Moe) {
            let e = self.n_routed_experts;
            if e == 0 {
                return err(
                    "n_routed_experts",
                    "must be set for a model with MoE (`E`) layers".into(),
                );
            }
            if self.num_experts_per_tok == 0 || self.num_experts_per_tok > e {
                return err(
                    "num_experts_per_tok",
                    format!("{} is not within 1..={e}", self.num_experts_per_tok),
                );
            }
            if self.n_group == 0 || !e.is_multiple_of(self.n_group) || e / self.n_group < 2 {
                return err(
                    "n_group",
                    format!(
                        "{} does not split {e} experts into groups of 2 or more",
                        self.n_group
                    ),
                );
            }
            if self.topk_group == 0 || self.topk_group > self.n_group {
                return err(
                    "topk_group",
                    format!("{} is not within 1..={}", self.topk_group, self.n_group),
                );
            }
            if self.topk_group * (e / self.n_group) < self.num_experts_per_tok {
                return err(
                    "topk_group",
                    "leaves fewer experts than num_experts_per_tok".into(),
                );
            }
            if self.moe_intermediate_size == 0 {
                return err(
                    "moe_intermediate_size",
                    "must be set for a model with MoE layers".into(),
                );
            }
        }
        if self.n_groups == 0 || !self.mamba_num_heads.is_multiple_of(self.n_groups) {
            return err(
                "n_groups",
                format!(
                    "{} does not divide mamba_num_heads {}",
                    self.n_groups, self.mamba_num_heads
                ),
            );
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return err(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        Ok(())
    }

    /// Sizes that must not be 0 (checked after the token ids, as the reader always has).
    fn check_sizes(&self, check: &Check<'_>) -> Result<(), ModelError> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("vocab_size", self.vocab_size),
            ("chunk_size", self.chunk_size),
            ("conv_kernel", self.conv_kernel),
            ("mamba_head_dim", self.mamba_head_dim),
            ("ssm_state_size", self.ssm_state_size),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(check.err(name, "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}

/// Other spellings of HF keys, as configs in the wild write them (transformers 5's
/// `mamba_*` names, `rms_norm_eps`, `layer_types`, ...), each after the key it stands for.
/// The first spelling present (and not null) is the value. They are not serde `alias`es
/// because a config may hold two spellings at once (published ones write both `head_dim`
/// and `attention_head_dim`, and `use_bias` beside `mamba_proj_bias`), which serde refuses
/// as a duplicate field.
const SPELLINGS: &[(&str, &[&str])] = &[
    ("head_dim", &["attention_head_dim"]),
    ("layer_norm_epsilon", &["rms_norm_eps"]),
    ("ssm_state_size", &["mamba_d_state"]),
    ("n_groups", &["mamba_n_groups"]),
    ("conv_kernel", &["mamba_d_conv"]),
    ("chunk_size", &["mamba_chunk_size"]),
    ("use_conv_bias", &["mamba_conv_bias"]),
    ("use_bias", &["mamba_proj_bias"]),
    ("time_step_min", &["mamba_dt_min"]),
    ("n_routed_experts", &["num_local_experts"]),
    ("layers_block_type", &["layer_types"]),
];

/// config.json's fields as serde reads them (after [`SPELLINGS`]), with the reference's
/// defaults (transformers' `NemotronHConfig`); numbers that may be Python's `NaN` /
/// `Infinity` and the defaults derived from other fields are settled in
/// [`NemotronHConfig::from_json`].
#[derive(Deserialize)]
struct ConfigFile {
    layers_block_type: Option<Vec<String>>,
    hybrid_override_pattern: Option<String>,
    num_hidden_layers: Option<usize>,
    hidden_size: usize,
    vocab_size: usize,
    #[serde(default, deserialize_with = "number")]
    layer_norm_epsilon: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    mamba_num_heads: usize,
    mamba_head_dim: usize,
    ssm_state_size: usize,
    n_groups: usize,
    conv_kernel: usize,
    chunk_size: usize,
    #[serde(default = "yes")]
    use_conv_bias: bool,
    #[serde(default)]
    use_bias: bool,
    #[serde(default, deserialize_with = "number")]
    time_step_min: Option<f64>,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: usize,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    n_routed_experts: usize,
    #[serde(default)]
    num_experts_per_tok: usize,
    #[serde(default = "one")]
    n_group: usize,
    #[serde(default = "one")]
    topk_group: usize,
    #[serde(default)]
    moe_intermediate_size: usize,
    #[serde(default)]
    moe_shared_expert_intermediate_size: usize,
    moe_latent_size: Option<usize>,
    #[serde(default = "yes")]
    norm_topk_prob: bool,
    #[serde(default, deserialize_with = "number")]
    routed_scaling_factor: Option<f64>,
    #[serde(default, deserialize_with = "token_ids")]
    bos_token_id: Vec<u32>,
    #[serde(default, deserialize_with = "token_ids")]
    eos_token_id: Vec<u32>,
    /// Checked only when a string (`relu2` is the one nemo runs).
    mlp_hidden_act: Option<Value>,
    /// Checked only when a string (`silu`).
    mamba_hidden_act: Option<Value>,
}

/// `max_position_embeddings` when a config leaves it out.
pub(crate) fn default_max_position_embeddings() -> usize {
    4096
}

fn yes() -> bool {
    true
}

fn one() -> usize {
    1
}

impl ConfigFile {
    /// The layer pattern: the `layers_block_type` list (transformers 5), else the
    /// `hybrid_override_pattern` string (published), one symbol per layer.
    fn layers(&self, check: &Check<'_>) -> Result<Vec<LayerKind>, ModelError> {
        let layers = if let Some(list) = &self.layers_block_type {
            list.iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    "linear_attention" | "mamba" => Ok(LayerKind::Mamba2),
                    "full_attention" | "attention" => Ok(LayerKind::Attention),
                    "mlp" => Ok(LayerKind::Mlp),
                    "moe" => Ok(LayerKind::Moe),
                    _ => Err(check.err(
                        "layers_block_type",
                        format!(
                            "entry {i} is {}, not one of linear_attention, full_attention, mlp, moe",
                            Value::from(v.as_str())
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        } else if let Some(p) = &self.hybrid_override_pattern {
            p.chars()
                .enumerate()
                .map(|(i, c)| match c {
                    'M' => Ok(LayerKind::Mamba2),
                    '*' => Ok(LayerKind::Attention),
                    '-' => Ok(LayerKind::Mlp),
                    'E' => Ok(LayerKind::Moe),
                    _ => Err(check.err(
                        "hybrid_override_pattern",
                        format!("character {i} is {c:?}, not one of M * - E"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            return Err(check.err(
                "hybrid_override_pattern",
                "missing (and no `layers_block_type` list either)".into(),
            ));
        };
        if let Some(n) = self.num_hidden_layers {
            if n != layers.len() && self.layers_block_type.is_none() {
                return Err(check.err(
                    "num_hidden_layers",
                    format!(
                        "is {n} but hybrid_override_pattern has {} layers",
                        layers.len()
                    ),
                ));
            }
        }
        Ok(layers)
    }
}

/// Refuses a `quantization_config` nemo cannot run, naming the field. nemo runs FP8
/// weight checkpoints (the tensors themselves say which weights are FP8, see
/// `weights::attach_fp8_scales`):
///
/// - ModelOpt (`quant_method: "modelopt"`; older exports write `quant_library: "modelopt"`
///   instead, modelopt's `convert_hf_quant_config_format`): `quant_algo` `FP8` (per-tensor
///   weight scale; what nvidia/NVIDIA-Nemotron-Nano-9B-v2-FP8 and
///   NVIDIA-Nemotron-3-Nano-30B-A3B-FP8 use) or `FP8_PER_CHANNEL_PER_TOKEN` (per-row
///   scale). vLLM's `ModelOptQuantConfigBase.from_config` reads the same keys
///   (`quant_algo`, `kv_cache_quant_algo`, `ignore`) and upper-cases `quant_algo`.
///   Refused: NVFP4, FP8_PB_WO (128×128 blocks), MIXED_PRECISION, W4A8_AWQ, ...
/// - compressed-tensors (`quant_method: "compressed-tensors"`, `format:
///   "float-quantized"`): every `config_groups.*.weights` must be `num_bits: 8, type:
///   "float"` with `strategy` `tensor` or `channel` (vLLM `CompressedTensorsW8A8Fp8`).
///   Refused: int and 4-bit schemes, `block` / `group` strategies.
///
/// `ignore` / `exclude_modules` and the KV-cache scheme are not needed (see above) and are
/// not read. No `quantization_config` at all is fine.
pub fn check_quantization_config(v: &Value, file: &Path) -> Result<(), ModelError> {
    let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(());
    };
    let err = |field: &str, msg: String| ModelError::ConfigField {
        file: file.to_path_buf(),
        field: if field.is_empty() {
            "quantization_config".into()
        } else {
            format!("quantization_config.{field}")
        },
        msg,
    };
    let q = q
        .as_object()
        .ok_or_else(|| err("", "expected an object".into()))?;
    let text = |k: &str| q.get(k).and_then(Value::as_str);
    let method = text("quant_method")
        .or(text("quant_library"))
        .map(str::to_ascii_lowercase);
    match method.as_deref() {
        Some("modelopt") => {
            let algo = text("quant_algo").ok_or_else(|| {
                err("quant_algo", "missing (a modelopt checkpoint names its algorithm, e.g. FP8)".into())
            })?;
            match algo.to_ascii_uppercase().as_str() {
                "FP8" | "FP8_PER_CHANNEL_PER_TOKEN" => Ok(()),
                _ => Err(err(
                    "quant_algo",
                    format!("`{}` is not supported (nemo reads FP8 and FP8_PER_CHANNEL_PER_TOKEN)", shown(algo)),
                )),
            }
        }
        Some("compressed-tensors") => {
            let format = text("format").unwrap_or("float-quantized");
            if format != "float-quantized" && format != "naive-quantized" {
                return Err(err(
                    "format",
                    format!("`{}` is not supported (nemo reads float-quantized FP8)", shown(format)),
                ));
            }
            let groups = q
                .get("config_groups")
                .and_then(Value::as_object)
                .ok_or_else(|| err("config_groups", "missing or not an object".into()))?;
            for (g, group) in groups {
                let field = format!("config_groups.{}.weights", shown(g));
                let w = group
                    .get("weights")
                    .filter(|w| w.is_object())
                    .ok_or_else(|| err(&field, "missing".into()))?;
                let bits = w.get("num_bits").and_then(Value::as_u64);
                let kind = w.get("type").and_then(Value::as_str);
                let strategy = w.get("strategy").and_then(Value::as_str).unwrap_or("tensor");
                if bits != Some(8) || kind != Some("float") || !matches!(strategy, "tensor" | "channel") {
                    return Err(err(
                        &field,
                        format!(
                            "is {w}; nemo reads FP8 weights (num_bits 8, type float, strategy tensor or channel)"
                        ),
                    ));
                }
            }
            Ok(())
        }
        Some("fp8") => Err(err(
            "quant_method",
            "`fp8` (block-scaled `weight_scale_inv`, the DeepSeek / FineGrainedFP8 layout) is not supported (nemo reads ModelOpt and compressed-tensors FP8)".into(),
        )),
        Some(other) => Err(err(
            "quant_method",
            format!("`{}` is not supported (nemo reads FP8 checkpoints made by modelopt or compressed-tensors)", shown(other)),
        )),
        None => Err(err("quant_method", "missing".into())),
    }
}

/// A model's JSON file (`config.json` and the like): a regular file below
/// `files::MAX_TEXT_BYTES`, Python's non-finite numbers accepted (`python_json_to_strict`).
pub fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = super::files::read_text(path, super::files::MAX_TEXT_BYTES)?;
    serde_json::from_str(&python_json_to_strict(&text)).map_err(|e| ModelError::Config {
        file: path.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })
}

/// Python's `json.dump` writes `Infinity`, `-Infinity` and `NaN` (published Nemotron
/// configs have `"time_step_limit": [0.0, Infinity]`); strict JSON has no such tokens.
/// Replaces them, outside string literals, with the strings `"Infinity"`, `"-Infinity"`
/// and `"NaN"`: a field nemo reads as a number then names the value in its error
/// ([`number`]) instead of taking a NaN for "absent".
pub fn python_json_to_strict(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        } else {
            let tok = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(t) = tok {
                out.push('"');
                out.push_str(t);
                out.push('"');
                rest = &rest[t.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The fields of a model's JSON file (`value`, read from `file`) as `T`: `null` values
/// are left out (absent), the first present spelling of each `spellings` entry stands for
/// its key, and an error names the file and the field (`rope_scaling.factor`,
/// `layers_block_type[2]`); a missing required field is named by serde's message.
pub(crate) fn read_fields<T: DeserializeOwned>(
    value: &Value,
    file: &Path,
    spellings: &[(&str, &[&str])],
) -> Result<T, ModelError> {
    let obj = value.as_object().ok_or_else(|| ModelError::Config {
        file: file.to_path_buf(),
        msg: "top level is not a JSON object".into(),
    })?;
    let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let fields = obj
        .iter()
        .filter(|(_, v)| !v.is_null())
        .filter_map(|(k, v)| {
            let Some((key, others)) = spellings
                .iter()
                .find(|(key, others)| *key == k.as_str() || others.contains(&k.as_str()))
            else {
                return Some((k.as_str(), v));
            };
            let first = std::iter::once(key)
                .chain(others.iter())
                .find(|s| present(s));
            (first.copied() == Some(k.as_str())).then_some((*key, v))
        });
    let de = serde::de::value::MapDeserializer::<_, serde_json::Error>::new(fields);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let msg = e.into_inner().to_string();
        if field == "." {
            ModelError::Config {
                file: file.to_path_buf(),
                msg,
            }
        } else {
            ModelError::ConfigField {
                file: file.to_path_buf(),
                field,
                msg,
            }
        }
    })
}

/// A number, or Python's `NaN` / `Infinity` / `-Infinity` (strings after
/// [`python_json_to_strict`]) as the non-finite values they are: for `deserialize_with` on
/// an `Option<f64>` field (with `default`), whose range the reader then checks ([`Check`]).
pub(crate) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Value::deserialize(d)?;
    number_of(&v).map(Some).map_err(D::Error::custom)
}

/// `v` as a number (see [`number`]), else the message saying what it is.
pub(crate) fn number_of(v: &Value) -> Result<f64, String> {
    match v {
        Value::String(s) if s == "NaN" => Ok(f64::NAN),
        Value::String(s) if s == "Infinity" => Ok(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => v
            .as_f64()
            .ok_or_else(|| format!("expected a number, found {v}")),
    }
}

/// A token id or a list of them (`eos_token_id`): for `deserialize_with` (with `default`:
/// absent is none).
pub(crate) fn token_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let v = Value::deserialize(d)?;
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| D::Error::custom(format!("bad token id {v}")))
    };
    match &v {
        Value::Number(_) => Ok(vec![id(&v)?]),
        Value::Array(a) => a.iter().map(id).collect(),
        _ => Err(D::Error::custom(format!(
            "expected an id or a list of ids, found {v}"
        ))),
    }
}

/// Range checks on a model file's values, each error naming the file and the field.
pub(crate) struct Check<'a> {
    file: &'a Path,
}

impl<'a> Check<'a> {
    pub(crate) fn new(file: &'a Path) -> Self {
        Check { file }
    }

    pub(crate) fn err(&self, field: &str, msg: String) -> ModelError {
        ModelError::ConfigField {
            file: self.file.to_path_buf(),
            field: field.to_string(),
            msg,
        }
    }

    /// `x` as a number ([`number_of`]), the error naming `field`.
    pub(crate) fn number(&self, field: &str, x: &Value) -> Result<f64, ModelError> {
        number_of(x).map_err(|msg| self.err(field, msg))
    }

    /// A finite number (`default` when absent), also finite as the f32 the model keeps.
    pub(crate) fn finite(
        &self,
        field: &str,
        x: Option<f64>,
        default: f64,
    ) -> Result<f64, ModelError> {
        let x = x.unwrap_or(default);
        if !x.is_finite() || !(x as f32).is_finite() {
            return Err(self.err(field, format!("is {x}; it must be a finite number")));
        }
        Ok(x)
    }

    /// A finite number greater than 0 (`default` when absent), also as an f32
    /// (`layer_norm_epsilon`, `rope_theta`).
    pub(crate) fn positive(
        &self,
        field: &str,
        x: Option<f64>,
        default: f64,
    ) -> Result<f64, ModelError> {
        let x = x.unwrap_or(default);
        if !x.is_finite() || !(x as f32).is_finite() || (x as f32) <= 0.0 {
            return Err(self.err(
                field,
                format!("is {x}; it must be a finite number greater than 0"),
            ));
        }
        Ok(x)
    }

    /// Refuses a token id at or past `vocab` (the sampler indexes logits by it).
    pub(crate) fn ids_below(
        &self,
        field: &str,
        ids: &[u32],
        vocab: usize,
    ) -> Result<(), ModelError> {
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(i) => Err(self.err(
                field,
                format!("holds token id {i}, past the vocabulary of {vocab} tokens"),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn published() -> Value {
        json!({
            "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
            "hidden_size": 64, "vocab_size": 512, "hybrid_override_pattern": "M-M*",
            "num_hidden_layers": 4, "mamba_num_heads": 8, "mamba_head_dim": 16,
            "ssm_state_size": 16, "n_groups": 2, "conv_kernel": 4, "chunk_size": 16,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "intermediate_size": 96, "eos_token_id": [2, 11], "time_step_limit": [0.0, null]
        })
    }

    #[test]
    fn published_and_transformers5_forms_give_the_same_pattern() {
        let a = NemotronHConfig::from_json(&published(), Path::new("config.json")).unwrap();
        let mut v = published();
        let o = v.as_object_mut().unwrap();
        o.remove("hybrid_override_pattern");
        o.remove("num_hidden_layers");
        o.remove("n_groups");
        o.insert(
            "layers_block_type".into(),
            json!([
                "linear_attention",
                "mlp",
                "linear_attention",
                "full_attention"
            ]),
        );
        o.insert("mamba_n_groups".into(), json!(2));
        o.insert("n_routed_experts".into(), json!(8));
        let mut b = NemotronHConfig::from_json(&v, Path::new("config.json")).unwrap();
        // The MoE keys transformers 5 writes for dense models are read but unused.
        assert_eq!(b.n_routed_experts, 8);
        b.n_routed_experts = a.n_routed_experts;
        assert_eq!(a, b);
        assert_eq!(a.pattern(), "M-M*");
        assert_eq!(a.eos_token_id, vec![2, 11]);
        assert_eq!(a.conv_dim(), 128 + 2 * 2 * 16);
    }

    #[test]
    fn python_infinity_is_accepted_outside_strings_only() {
        let t = python_json_to_strict(
            r#"{"a": [0.0, Infinity, -Infinity, NaN], "s": "Infinity \" NaN"}"#,
        );
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["a"], json!([0.0, "Infinity", "-Infinity", "NaN"]));
        assert_eq!(v["s"], json!("Infinity \" NaN"));
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = published();
        v.as_object_mut().unwrap().remove("mamba_head_dim");
        let e = NemotronHConfig::from_json(&v, Path::new("x/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mamba_head_dim") && e.contains("x/config.json"),
            "{e}"
        );
    }

    #[test]
    fn moe_fields_are_read_and_checked() {
        let mut v = published();
        v["hybrid_override_pattern"] = json!("MEM*");
        let e = NemotronHConfig::from_json(&v, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_routed_experts"), "{e}");
        v["n_routed_experts"] = json!(8);
        v["num_experts_per_tok"] = json!(2);
        v["moe_intermediate_size"] = json!(32);
        v["n_group"] = json!(3);
        let e = NemotronHConfig::from_json(&v, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_group"), "{e}");
        v["n_group"] = json!(2);
        let c = NemotronHConfig::from_json(&v, Path::new("config.json")).unwrap();
        assert_eq!(
            (
                c.n_routed_experts,
                c.n_group,
                c.topk_group,
                c.routed_scaling_factor
            ),
            (8, 2, 1, 1.0)
        );
    }

    #[test]
    fn fp8_quantization_configs_are_accepted_and_others_refused_by_field() {
        let check = |q: Value| {
            let mut v = published();
            v["quantization_config"] = q;
            NemotronHConfig::from_json(&v, Path::new("x/config.json")).map(|_| ())
        };
        for ok in [
            json!({"quant_method": "modelopt", "quant_algo": "FP8", "ignore": ["lm_head"]}),
            json!({"quant_method": "modelopt", "quant_algo": "fp8_per_channel_per_token"}),
            // older ModelOpt exports name the library instead of the method
            json!({"quant_library": "modelopt", "quant_algo": "FP8", "kv_cache_scheme": "FP8"}),
            json!({"quant_method": "compressed-tensors", "format": "float-quantized",
                   "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}),
            Value::Null,
        ] {
            check(ok.clone()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, field) in [
            (
                json!({"quant_method": "modelopt", "quant_algo": "FP8_PB_WO"}),
                "quantization_config.quant_algo",
            ),
            (
                json!({"quant_method": "modelopt"}),
                "quantization_config.quant_algo",
            ),
            (
                json!({"quant_method": "fp8", "weight_block_size": [128, 128]}),
                "quantization_config.quant_method",
            ),
            (
                json!({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}}),
                "quantization_config.format",
            ),
            (
                json!({"quant_method": "compressed-tensors",
                    "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "block"}}}}),
                "quantization_config.config_groups.g.weights",
            ),
            (json!("FP8"), "quantization_config"),
        ] {
            let e = check(bad.clone()).unwrap_err().to_string();
            assert!(
                e.contains(field) && e.contains("x/config.json"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn unknown_architectures_are_refused_clearly() {
        let mut v = published();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        v["model_type"] = json!("gpt2");
        let e = NemotronHConfig::from_json(&v, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
    }
}
