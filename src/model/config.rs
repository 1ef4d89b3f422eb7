//! `config.json` of a `NemotronHForCausalLM` checkpoint, in both forms that exist:
//! the published one (`hybrid_override_pattern`, e.g. Nano 9B v2) and what transformers 5
//! writes (`layers_block_type` list, MoE keys present even for dense models, `mamba_*`
//! aliases). Field names keep the HF keys. The layer pattern is parsed once, here.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

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
        let r = Reader::new(value, path)?;
        let obj = r.obj;
        check_quantization_config(value, path)?;

        let arch = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_string);
        let model_type = obj.get("model_type").and_then(|v| v.as_str());
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

        let layers = r.layers()?;
        let hidden_size = r.usize("hidden_size", &[])?;
        let num_attention_heads = r.usize("num_attention_heads", &[])?;
        let head_dim = match r.opt_usize("head_dim", &["attention_head_dim"])? {
            Some(h) => h,
            None => hidden_size / num_attention_heads.max(1),
        };
        let cfg = NemotronHConfig {
            hidden_size,
            vocab_size: r.usize("vocab_size", &[])?,
            layer_norm_epsilon: r.positive_or("layer_norm_epsilon", &["rms_norm_eps"], 1e-5)?
                as f32,
            tie_word_embeddings: r.bool_or("tie_word_embeddings", &[], false)?,
            max_position_embeddings: r.opt_usize("max_position_embeddings", &[])?.unwrap_or(4096),
            mamba_num_heads: r.usize("mamba_num_heads", &[])?,
            mamba_head_dim: r.usize("mamba_head_dim", &[])?,
            ssm_state_size: r.usize("ssm_state_size", &["mamba_d_state"])?,
            n_groups: r.usize("n_groups", &["mamba_n_groups"])?,
            conv_kernel: r.usize("conv_kernel", &["mamba_d_conv"])?,
            chunk_size: r.usize("chunk_size", &["mamba_chunk_size"])?,
            use_conv_bias: r.bool_or("use_conv_bias", &["mamba_conv_bias"], true)?,
            use_bias: r.bool_or("use_bias", &["mamba_proj_bias"], false)?,
            time_step_min: r.finite_or("time_step_min", &["mamba_dt_min"], 0.001)? as f32,
            num_attention_heads,
            num_key_value_heads: r
                .opt_usize("num_key_value_heads", &[])?
                .unwrap_or(num_attention_heads),
            head_dim,
            intermediate_size: r.usize("intermediate_size", &[])?,
            mlp_bias: r.bool_or("mlp_bias", &[], false)?,
            n_routed_experts: r
                .opt_usize("n_routed_experts", &["num_local_experts"])?
                .unwrap_or(0),
            num_experts_per_tok: r.opt_usize("num_experts_per_tok", &[])?.unwrap_or(0),
            n_group: r.opt_usize("n_group", &[])?.unwrap_or(1),
            topk_group: r.opt_usize("topk_group", &[])?.unwrap_or(1),
            moe_intermediate_size: r.opt_usize("moe_intermediate_size", &[])?.unwrap_or(0),
            moe_shared_expert_intermediate_size: r
                .opt_usize("moe_shared_expert_intermediate_size", &[])?
                .unwrap_or(0),
            moe_latent_size: r.opt_usize("moe_latent_size", &[])?,
            norm_topk_prob: r.bool_or("norm_topk_prob", &[], true)?,
            routed_scaling_factor: r.positive_or("routed_scaling_factor", &[], 1.0)? as f32,
            bos_token_id: r.ids("bos_token_id")?.first().copied(),
            eos_token_id: r.ids("eos_token_id")?,
            torch_dtype: obj
                .get("torch_dtype")
                .or(obj.get("dtype"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
            layers,
        };
        if let Some(act) = obj.get("mlp_hidden_act").and_then(|v| v.as_str()) {
            if act != "relu2" {
                return Err(r.err(
                    "mlp_hidden_act",
                    format!("`{}` is not supported (only relu2)", shown(act)),
                ));
            }
        }
        if let Some(act) = obj.get("mamba_hidden_act").and_then(|v| v.as_str()) {
            if act != "silu" {
                return Err(r.err(
                    "mamba_hidden_act",
                    format!("`{}` is not supported (only silu)", shown(act)),
                ));
            }
        }
        cfg.validate(&r)?;
        Ok(cfg)
    }

    fn validate(&self, r: &Reader<'_>) -> Result<(), ModelError> {
        if let Some(field) = self.overflowing_field() {
            return Err(r.err(field, "makes the model's sizes overflow".into()));
        }
        if self.layers.is_empty() {
            return Err(r.err("hybrid_override_pattern", "has no layers".into()));
        }
        if self.layers.contains(&LayerKind::Moe) {
            let e = self.n_routed_experts;
            if e == 0 {
                return Err(r.err(
                    "n_routed_experts",
                    "must be set for a model with MoE (`E`) layers".into(),
                ));
            }
            if self.num_experts_per_tok == 0 || self.num_experts_per_tok > e {
                return Err(r.err(
                    "num_experts_per_tok",
                    format!("{} is not within 1..={e}", self.num_experts_per_tok),
                ));
            }
            if self.n_group == 0 || !e.is_multiple_of(self.n_group) || e / self.n_group < 2 {
                return Err(r.err(
                    "n_group",
                    format!(
                        "{} does not split {e} experts into groups of 2 or more",
                        self.n_group
                    ),
                ));
            }
            if self.topk_group == 0 || self.topk_group > self.n_group {
                return Err(r.err(
                    "topk_group",
                    format!("{} is not within 1..={}", self.topk_group, self.n_group),
                ));
            }
            if self.topk_group * (e / self.n_group) < self.num_experts_per_tok {
                return Err(r.err(
                    "topk_group",
                    "leaves fewer experts than num_experts_per_tok".into(),
                ));
            }
            if self.moe_intermediate_size == 0 {
                return Err(r.err(
                    "moe_intermediate_size",
                    "must be set for a model with MoE layers".into(),
                ));
            }
        }
        if self.n_groups == 0 || !self.mamba_num_heads.is_multiple_of(self.n_groups) {
            return Err(r.err(
                "n_groups",
                format!(
                    "{} does not divide mamba_num_heads {}",
                    self.n_groups, self.mamba_num_heads
                ),
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(r.err(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        r.ids_below("bos_token_id", self.vocab_size)?;
        r.ids_below("eos_token_id", self.vocab_size)?;
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
                return Err(r.err(name, "must be greater than 0".into()));
            }
        }
        Ok(())
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
/// (`Reader::number`) instead of taking a NaN for "absent".
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

/// Reads the fields of a model's JSON file by name; every error names the file and the
/// field, and a value of the wrong type is an error, never taken as absent.
pub(crate) struct Reader<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    file: PathBuf,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(value: &'a Value, path: &Path) -> Result<Self, ModelError> {
        let obj = value.as_object().ok_or_else(|| ModelError::Config {
            file: path.to_path_buf(),
            msg: "top level is not a JSON object".into(),
        })?;
        Ok(Reader {
            obj,
            file: path.to_path_buf(),
        })
    }

    pub(crate) fn err(&self, field: &str, msg: String) -> ModelError {
        ModelError::ConfigField {
            file: self.file.clone(),
            field: field.to_string(),
            msg,
        }
    }

    pub(crate) fn find(&self, key: &str, aliases: &[&str]) -> Option<&'a Value> {
        std::iter::once(key)
            .chain(aliases.iter().copied())
            .find_map(|k| self.obj.get(k))
            .filter(|v| !v.is_null())
    }

    pub(crate) fn opt_usize(
        &self,
        key: &str,
        aliases: &[&str],
    ) -> Result<Option<usize>, ModelError> {
        match self.find(key, aliases) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(key, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    pub(crate) fn usize(&self, key: &str, aliases: &[&str]) -> Result<usize, ModelError> {
        self.opt_usize(key, aliases)?
            .ok_or_else(|| self.err(key, "missing".into()))
    }

    /// `v` (the value of `key`) as a number; Python's `NaN` / `Infinity` (strings after
    /// `python_json_to_strict`) as the non-finite values they are.
    pub(crate) fn number(&self, key: &str, v: &Value) -> Result<f64, ModelError> {
        match v {
            Value::String(s) if s == "NaN" => Ok(f64::NAN),
            Value::String(s) if s == "Infinity" => Ok(f64::INFINITY),
            Value::String(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => v
                .as_f64()
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    /// A finite number (`default` when absent); NaN or infinity is an error naming `key`.
    pub(crate) fn finite_or(
        &self,
        key: &str,
        aliases: &[&str],
        default: f64,
    ) -> Result<f64, ModelError> {
        let Some(v) = self.find(key, aliases) else {
            return Ok(default);
        };
        let x = self.number(key, v)?;
        // Also finite as the f32 the model keeps.
        if !x.is_finite() || !(x as f32).is_finite() {
            return Err(self.err(key, format!("is {x}; it must be a finite number")));
        }
        Ok(x)
    }

    /// A finite number, None when absent; NaN or infinity is an error naming `key`.
    pub(crate) fn opt_finite(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.find(key, &[]) {
            None => Ok(None),
            Some(_) => self.finite_or(key, &[], 0.0).map(Some),
        }
    }

    /// A finite number greater than 0, also as an f32 (`layer_norm_epsilon`, `rope_theta`):
    /// NaN, infinity, 0 or a negative value is an error naming `key`.
    pub(crate) fn positive_or(
        &self,
        key: &str,
        aliases: &[&str],
        default: f64,
    ) -> Result<f64, ModelError> {
        let Some(v) = self.find(key, aliases) else {
            return Ok(default);
        };
        let x = self.number(key, v)?;
        if !x.is_finite() || !(x as f32).is_finite() || (x as f32) <= 0.0 {
            return Err(self.err(
                key,
                format!("is {x}; it must be a finite number greater than 0"),
            ));
        }
        Ok(x)
    }

    pub(crate) fn bool_or(
        &self,
        key: &str,
        aliases: &[&str],
        default: bool,
    ) -> Result<bool, ModelError> {
        match self.find(key, aliases) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    /// A token id or a list of them (`eos_token_id`); absent or null is none.
    pub(crate) fn ids(&self, key: &str) -> Result<Vec<u32>, ModelError> {
        let id = |v: &Value| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| self.err(key, format!("bad token id {v}")))
        };
        match self.find(key, &[]) {
            None => Ok(vec![]),
            Some(v @ Value::Number(_)) => Ok(vec![id(v)?]),
            Some(Value::Array(a)) => a.iter().map(id).collect(),
            Some(v) => Err(self.err(key, format!("expected an id or a list of ids, found {v}"))),
        }
    }

    /// Refuses a token id in `key` at or past `vocab` (the sampler indexes logits by it).
    pub(crate) fn ids_below(&self, key: &str, vocab: usize) -> Result<(), ModelError> {
        match self.ids(key)?.into_iter().find(|&i| i as usize >= vocab) {
            Some(i) => Err(self.err(
                key,
                format!("holds token id {i}, past the vocabulary of {vocab} tokens"),
            )),
            None => Ok(()),
        }
    }

    fn layers(&self) -> Result<Vec<LayerKind>, ModelError> {
        let layers = if let Some(list) = self.find("layers_block_type", &["layer_types"]) {
            let arr = list
                .as_array()
                .ok_or_else(|| self.err("layers_block_type", "expected a list".into()))?;
            arr.iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    Some("linear_attention") | Some("mamba") => Ok(LayerKind::Mamba2),
                    Some("full_attention") | Some("attention") => Ok(LayerKind::Attention),
                    Some("mlp") => Ok(LayerKind::Mlp),
                    Some("moe") => Ok(LayerKind::Moe),
                    _ => Err(self.err("layers_block_type", format!("entry {i} is {v}, not one of linear_attention, full_attention, mlp, moe"))),
                })
                .collect::<Result<Vec<_>, _>>()?
        } else if let Some(p) = self.find("hybrid_override_pattern", &[]) {
            let s = p
                .as_str()
                .ok_or_else(|| self.err("hybrid_override_pattern", "expected a string".into()))?;
            s.chars()
                .enumerate()
                .map(|(i, c)| match c {
                    'M' => Ok(LayerKind::Mamba2),
                    '*' => Ok(LayerKind::Attention),
                    '-' => Ok(LayerKind::Mlp),
                    'E' => Ok(LayerKind::Moe),
                    _ => Err(self.err(
                        "hybrid_override_pattern",
                        format!("character {i} is {c:?}, not one of M * - E"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            return Err(self.err(
                "hybrid_override_pattern",
                "missing (and no `layers_block_type` list either)".into(),
            ));
        };
        if let Some(n) = self.opt_usize("num_hidden_layers", &[])? {
            if n != layers.len() && self.find("layers_block_type", &["layer_types"]).is_none() {
                return Err(self.err(
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
