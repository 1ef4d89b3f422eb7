//! A model folder as the hub ships it: `config.json`, safetensors, `tokenizer.json`,
//! `tokenizer_config.json` / `chat_template.jinja`, `generation_config.json`; or a single
//! `.gguf` file, which carries all of that in its metadata.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::arch::Model;
use super::config::NemotronHConfig;
use super::gguf::GgufFile;
use super::gguf_tokenizer;
use super::llama::{Llama, LlamaConfig};
use super::nemotron_h::NemotronH;
use super::nemotron_h_gguf;
use super::weights::WeightStore;
use super::ModelError;
use crate::chat::template::{self, ChatTemplate};
use crate::protocol::SamplingParams;

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

fn read_generation_config(path: &Path) -> Result<GenerationDefaults, ModelError> {
    if !path.exists() {
        return Ok(GenerationDefaults::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })?;
    let ids = match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    };
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
    Ok(GenerationDefaults {
        eos_token_ids: ids,
        temperature: f("temperature"),
        top_p: f("top_p"),
        top_k: v.get("top_k").and_then(|x| x.as_u64()).map(|x| x as usize),
        repetition_penalty: f("repetition_penalty"),
        max_new_tokens: v
            .get("max_new_tokens")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize),
    })
}

/// Sampling defaults a GGUF file carries (`general.sampling.*`, from the checkpoint's
/// generation_config.json); eos ids come from the tokenizer metadata instead.
fn gguf_sampling(g: &GgufFile) -> GenerationDefaults {
    let f = |k: &str| g.get(k).and_then(|v| v.as_f64()).map(|x| x as f32);
    GenerationDefaults {
        temperature: f("general.sampling.temp"),
        top_p: f("general.sampling.top_p"),
        top_k: g
            .get("general.sampling.top_k")
            .and_then(|v| v.as_u64())
            .map(|x| x as usize),
        ..GenerationDefaults::default()
    }
}

/// `architectures[0]` of a config.json, if it names one.
fn architecture(path: &Path) -> Result<Option<String>, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&super::config::python_json_to_strict(&text))
        .map_err(|e| ModelError::Config {
        file: path.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })?;
    Ok(v.get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .map(str::to_string))
}

impl ModelFolder {
    /// A hub-style folder, or a `.gguf` file (see `open_gguf`).
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        if dir.is_file()
            && dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Self::open_gguf(dir);
        }
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            });
        }
        let config_path = dir.join("config.json");
        let model = if architecture(&config_path)?.as_deref() == Some("LlamaForCausalLM") {
            let config = LlamaConfig::from_file(&config_path)?;
            Model::Llama(Llama::load(config, &WeightStore::open_dir(dir)?)?)
        } else {
            let config = NemotronHConfig::from_file(&config_path)?;
            Model::NemotronH(NemotronH::load(config, &WeightStore::open_dir(dir)?)?)
        };
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(ModelError::Tokenizer {
                file: tok_path,
                msg: "missing".into(),
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
                file: tok_path.clone(),
                msg: format!("cannot be read: {e}"),
            })?;
        // Name the file the template came from in any error.
        let template_file = if dir.join("chat_template.jinja").exists() {
            dir.join("chat_template.jinja")
        } else {
            dir.join("tokenizer_config.json")
        };
        let template_err = |e: template::TemplateError| {
            ModelError::Template(format!("{}: {e}", template_file.display()))
        };
        let template = match template::load_from_dir(dir).map_err(template_err)? {
            Some((src, bos, eos)) => Some(Arc::new(
                ChatTemplate::new(&src, bos, eos)
                    .map_err(template_err)?
                    .with_name(template_file.display().to_string()),
            )),
            None => None,
        };
        let generation = read_generation_config(&dir.join("generation_config.json"))?;
        let mut eos: Vec<u32> = model.eos_token_ids().to_vec();
        eos.extend(&generation.eos_token_ids);
        if let Some(t) = &template {
            if let Some(e) = t.eos_token() {
                if let Some(id) = tokenizer.token_to_id(e) {
                    eos.push(id);
                }
            }
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
        let g = GgufFile::open(path)?;
        let model = match g.architecture()? {
            "llama" => Model::Llama(Llama::load_gguf(&g)?),
            "nemotron_h" | "nemotron_h_moe" => Model::NemotronH(nemotron_h_gguf::load(&g)?),
            arch => {
                return Err(ModelError::ConfigField {
                    file: path.to_path_buf(),
                    field: "general.architecture".into(),
                    msg: format!("is `{arch}`; nemo reads GGUF files of the `llama`, `nemotron_h` and `nemotron_h_moe` architectures"),
                })
            }
        };
        let tokenizer = gguf_tokenizer::from_gguf(&g)?;
        let bos = gguf_tokenizer::token_text(&g, "tokenizer.ggml.bos_token_id");
        let eos_text = gguf_tokenizer::token_text(&g, "tokenizer.ggml.eos_token_id");
        let template = match g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(src) => Some(Arc::new(
                ChatTemplate::new(src, bos, eos_text)
                    .map_err(|e| {
                        ModelError::Template(format!(
                            "{}: tokenizer.chat_template: {e}",
                            path.display()
                        ))
                    })?
                    .with_name(format!("{} (tokenizer.chat_template)", path.display())),
            )),
            None => None,
        };
        let mut eos: Vec<u32> = model.eos_token_ids().to_vec();
        eos.sort_unstable();
        eos.dedup();
        Ok(ModelFolder {
            dir: path.to_path_buf(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
            generation: gguf_sampling(&g),
            eos_token_ids: eos,
        })
    }
}
