//! A model folder as the hub ships it: `config.json`, safetensors, `tokenizer.json`,
//! `tokenizer_config.json` / `chat_template.jinja`, `generation_config.json`; or a single
//! `.gguf` file, which carries all of that in its metadata.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::arch::Model;
use super::config::{self, Check, NemotronHConfig};
use super::files;
use super::gguf::GgufFile;
use super::gguf_tokenizer;
use super::llama::{Llama, LlamaConfig};
use super::memory;
use super::nemotron_h::NemotronH;
use super::nemotron_h_gguf;
use super::weights::WeightStore;
use super::{shown, ModelError};
use crate::chat::template::{self, ChatTemplate};
use crate::protocol::SamplingParams;
use crate::state::CacheConfig;

/// Defaults from `generation_config.json`.
#[derive(Clone, Debug, Default)]
pub struct GenerationDefaults {
    pub eos_token_ids: Vec<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

impl GenerationDefaults {
    pub fn apply(&self, p: &mut SamplingParams) {
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(t) = self.top_p {
            p.top_p = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(r) = self.repetition_penalty {
            p.repetition_penalty = r;
        }
    }
}

pub struct ModelFolder {
    /// The folder, or the `.gguf` file.
    pub dir: PathBuf,
    pub model: Arc<Model>,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub template: Option<Arc<ChatTemplate>>,
    pub generation: GenerationDefaults,
    /// Ids that end a turn: config + generation_config + the template's eos token.
    pub eos_token_ids: Vec<u32>,
}

/// `generation_config.json`, when there is one. Fields nemo reads must have their type:
/// a string where a number belongs is an error naming the field, as is an end id past
/// the vocabulary of `vocab` tokens.
fn read_generation_config(path: &Path, vocab: usize) -> Result<GenerationDefaults, ModelError> {
    if files::probe(path, files::MAX_TEXT_BYTES)?.is_none() {
        return Ok(GenerationDefaults::default());
    }
    generation_from_json(&config::read_json(path)?, path, vocab)
}

/// `generation_config.json`'s fields from its parsed JSON (`path` names it in errors).
pub fn generation_from_json(
    v: &serde_json::Value,
    path: &Path,
    vocab: usize,
) -> Result<GenerationDefaults, ModelError> {
    /// The fields nemo reads, as serde reads them.
    #[derive(serde::Deserialize)]
    struct GenerationFile {
        #[serde(default, deserialize_with = "config::token_ids")]
        eos_token_id: Vec<u32>,
        #[serde(default, deserialize_with = "config::number")]
        temperature: Option<f64>,
        #[serde(default, deserialize_with = "config::number")]
        top_p: Option<f64>,
        top_k: Option<usize>,
        #[serde(default, deserialize_with = "config::number")]
        repetition_penalty: Option<f64>,
        max_new_tokens: Option<usize>,
    }
    let g: GenerationFile = config::read_fields(v, path, &[])?;
    let check = Check::new(path);
    check.ids_below("eos_token_id", &g.eos_token_id, vocab)?;
    let f = |k: &str, x: Option<f64>| -> Result<Option<f32>, ModelError> {
        let Some(x) = x else { return Ok(None) };
        let x = check.finite(k, Some(x), 0.0)?;
        if x < 0.0 {
            return Err(check.err(k, format!("is {x}; it must not be negative")));
        }
        Ok(Some(x as f32))
    };
    Ok(GenerationDefaults {
        temperature: f("temperature", g.temperature)?,
        top_p: f("top_p", g.top_p)?,
        top_k: g.top_k,
        repetition_penalty: f("repetition_penalty", g.repetition_penalty)?,
        max_new_tokens: g.max_new_tokens,
        eos_token_ids: g.eos_token_id,
    })
}

/// Sampling defaults a GGUF file carries (`general.sampling.*`, from the checkpoint's
/// generation_config.json); eos ids come from the tokenizer metadata instead. A value of
/// the wrong type, or a negative or non-finite one, is an error naming the key.
fn gguf_sampling(g: &GgufFile) -> Result<GenerationDefaults, ModelError> {
    let f = |k: &str| -> Result<Option<f32>, ModelError> {
        if g.get(k).is_none() {
            return Ok(None);
        }
        let x = g.get_f64(k)?;
        if !x.is_finite() || x < 0.0 {
            return Err(ModelError::ConfigField {
                file: g.path.clone(),
                field: k.into(),
                msg: format!("is {x}; it must be a finite number, not negative"),
            });
        }
        Ok(Some(x as f32))
    };
    Ok(GenerationDefaults {
        temperature: f("general.sampling.temp")?,
        top_p: f("general.sampling.top_p")?,
        top_k: match g.get("general.sampling.top_k") {
            Some(_) => Some(g.get_usize("general.sampling.top_k")?),
            None => None,
        },
        ..GenerationDefaults::default()
    })
}

/// Refuses weights holding layers past the `n` the config describes (`field` of `file`):
/// they would be silently left out.
fn check_layer_count(
    w: &WeightStore,
    n: usize,
    file: &Path,
    field: &str,
) -> Result<(), ModelError> {
    match w.last_layer() {
        Some((i, name)) if i >= n => Err(ModelError::ConfigField {
            file: file.to_path_buf(),
            field: field.into(),
            msg: format!(
                "describes {n} layers, but the weights hold layer {i} (`{}`)",
                shown(name)
            ),
        }),
        _ => Ok(()),
    }
}

/// Below this, a sequence's state is small enough whatever the weights (tiny test models).
const STATE_ALLOWANCE: u64 = 64 << 20;

/// A file's shapes against the architecture's relations, before anything is sized by
/// them: a Mamba layer's state (heads × head_dim × d_state) grows with claims that add
/// few weight bytes, so a small (or sparse) file could otherwise make every session
/// allocate gigabytes. Every published hybrid model's state is a small fraction of its
/// weights; one larger than all of them is refused, naming `field` of `file`.
fn check_state_claims(model: &Model, file: &Path, field: &str) -> Result<(), ModelError> {
    let state = model.run_bytes(CacheConfig::default()).state;
    let weights = model.weight_bytes() as u64;
    if state > STATE_ALLOWANCE.max(weights) {
        return Err(ModelError::ConfigField {
            file: file.to_path_buf(),
            field: field.into(),
            msg: format!(
                "gives each sequence a recurrent state of {}, more than the model's {} of weights; \
                 the file's shapes claim more than it holds",
                memory::human(state),
                memory::human(weights)
            ),
        });
    }
    Ok(())
}

/// The template's end token as an id, refused past the model's vocabulary.
fn template_eos(
    t: &ChatTemplate,
    tokenizer: &tokenizers::Tokenizer,
    vocab: usize,
    file: &Path,
    field: &str,
) -> Result<Option<u32>, ModelError> {
    let Some(id) = t.eos_token().and_then(|e| tokenizer.token_to_id(e)) else {
        return Ok(None);
    };
    if id as usize >= vocab {
        return Err(ModelError::ConfigField {
            file: file.to_path_buf(),
            field: field.into(),
            msg: format!("is token id {id}, past the model's vocabulary of {vocab} tokens"),
        });
    }
    Ok(Some(id))
}

impl ModelFolder {
    /// A hub-style folder, or a `.gguf` file (see `open_gguf`). Every file is opened only
    /// if it is a regular file (`files`).
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            let e = if e.kind() == std::io::ErrorKind::NotFound {
                std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found")
            } else {
                e
            };
            ModelError::io(dir, e)
        })?;
        if !meta.is_dir() {
            if dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
                return Self::open_gguf(dir);
            }
            return Err(ModelError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is neither a model folder nor a .gguf file",
                ),
            ));
        }
        let config_path = dir.join("config.json");
        let config_json = config::read_json(&config_path)?;
        let is_llama = config_json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            == Some("LlamaForCausalLM");
        let model = if is_llama {
            let config = LlamaConfig::from_json(&config_json, &config_path)?;
            let w = WeightStore::open_dir(dir)?;
            check_layer_count(
                &w,
                config.num_hidden_layers,
                &config_path,
                "num_hidden_layers",
            )?;
            Model::Llama(Llama::load(config, &w)?)
        } else {
            let config = NemotronHConfig::from_json(&config_json, &config_path)?;
            let w = WeightStore::open_dir(dir)?;
            let field = if config_json.get("layers_block_type").is_some() {
                "layers_block_type"
            } else {
                "hybrid_override_pattern"
            };
            check_layer_count(&w, config.layers.len(), &config_path, field)?;
            Model::NemotronH(NemotronH::load(config, &w)?)
        };
        check_state_claims(&model, &config_path, "ssm_state_size")?;
        let vocab = model.vocab_size();
        let tok_path = dir.join("tokenizer.json");
        if files::probe(&tok_path, files::MAX_TOKENIZER_BYTES)?.is_none() {
            return Err(ModelError::Tokenizer {
                file: tok_path,
                msg: "missing".into(),
            });
        }
        let tok_bytes = files::read_bytes(&tok_path, files::MAX_TOKENIZER_BYTES)?;
        let tokenizer =
            tokenizers::Tokenizer::from_bytes(&tok_bytes).map_err(|e| ModelError::Tokenizer {
                file: tok_path.clone(),
                msg: format!("cannot be read: {}", shown(&e.to_string())),
            })?;
        drop(tok_bytes);
        // `template::load_from_dir` reads these two whole: only regular files of a sane size.
        let jinja = files::probe(&dir.join("chat_template.jinja"), files::MAX_TEXT_BYTES)?;
        files::probe(&dir.join("tokenizer_config.json"), files::MAX_TEXT_BYTES)?;
        // Name the file the template came from in any error.
        let template_file = if jinja.is_some() {
            dir.join("chat_template.jinja")
        } else {
            dir.join("tokenizer_config.json")
        };
        let template_err = |e: template::TemplateError| {
            ModelError::Template(format!(
                "{}: {}",
                template_file.display(),
                shown(&e.to_string())
            ))
        };
        let template = match template::load_from_dir(dir).map_err(template_err)? {
            Some((src, bos, eos)) => Some(Arc::new(
                ChatTemplate::new(&src, bos, eos)
                    .map_err(template_err)?
                    .with_name(template_file.display().to_string()),
            )),
            None => None,
        };
        let generation = read_generation_config(&dir.join("generation_config.json"), vocab)?;
        let mut eos: Vec<u32> = model.eos_token_ids().to_vec();
        eos.extend(&generation.eos_token_ids);
        if let Some(t) = &template {
            let file = dir.join("tokenizer_config.json");
            eos.extend(template_eos(t, &tokenizer, vocab, &file, "eos_token")?);
        }
        eos.sort_unstable();
        eos.dedup();
        Ok(ModelFolder {
            dir: dir.to_path_buf(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
            generation,
            eos_token_ids: eos,
        })
    }

    /// A llama.cpp GGUF file: weights, tokenizer (`tokenizer.ggml.*`), chat template
    /// (`tokenizer.chat_template`) and end-of-turn id (`tokenizer.ggml.eos_token_id`), all
    /// from the one file. Sampling defaults come from `general.sampling.{temp,top_p,top_k}`
    /// (where convert_hf_to_gguf.py puts generation_config.json's), when present.
    /// `general.architecture` picks the model: `llama`, or `nemotron_h` / `nemotron_h_moe`.
    pub fn open_gguf(path: &Path) -> Result<Self, ModelError> {
        Self::from_gguf(GgufFile::open(path)?)
    }

    /// The model, tokenizer and template of a parsed GGUF file (`open_gguf` after the
    /// read; the fuzz target's entry for files held in memory).
    pub fn from_gguf(g: GgufFile) -> Result<Self, ModelError> {
        let path = g.path.clone();
        let path = path.as_path();
        let model = match g.architecture()? {
            "llama" => Model::Llama(Llama::load_gguf(&g)?),
            "nemotron_h" | "nemotron_h_moe" => Model::NemotronH(nemotron_h_gguf::load(&g)?),
            arch => {
                return Err(ModelError::ConfigField {
                    file: path.to_path_buf(),
                    field: "general.architecture".into(),
                    msg: format!("is `{}`; nemo reads GGUF files of the `llama`, `nemotron_h` and `nemotron_h_moe` architectures", shown(arch)),
                })
            }
        };
        let arch = g.architecture()?;
        check_state_claims(&model, path, &format!("{arch}.ssm.state_size"))?;
        let tokenizer = gguf_tokenizer::from_gguf(&g)?;
        let bos = gguf_tokenizer::token_text(&g, "tokenizer.ggml.bos_token_id");
        let eos_text = gguf_tokenizer::token_text(&g, "tokenizer.ggml.eos_token_id");
        let template = match g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(src) => Some(Arc::new(
                ChatTemplate::new(src, bos, eos_text)
                    .map_err(|e| {
                        ModelError::Template(format!(
                            "{}: tokenizer.chat_template: {}",
                            path.display(),
                            shown(&e.to_string())
                        ))
                    })?
                    .with_name(format!("{} (tokenizer.chat_template)", path.display())),
            )),
            None => None,
        };
        let generation = gguf_sampling(&g)?;
        let mut eos: Vec<u32> = model.eos_token_ids().to_vec();
        eos.sort_unstable();
        eos.dedup();
        Ok(ModelFolder {
            dir: path.to_path_buf(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
            generation,
            eos_token_ids: eos,
        })
    }
}
