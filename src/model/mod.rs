//! Model definitions and loading: config, weights, the Nemotron-H forward pass, and the
//! files that come with a checkpoint (tokenizer, chat template, generation config).

pub mod arch;
pub mod attention;
pub mod config;
pub mod cuda;
pub mod files;
pub mod folder;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod llama;
pub mod lm_head;
pub mod mamba2;
pub mod memory;
pub mod mlp;
pub mod moe;
pub mod nemotron_h;
pub mod nemotron_h_gguf;
pub mod synthetic;
pub mod weights;

use std::path::{Path, PathBuf};

pub use arch::Model;
pub use config::{LayerKind, NemotronHConfig};
pub use folder::{GenerationDefaults, ModelFolder};
pub use lm_head::Logits;
pub use nemotron_h::NemotronH;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", file.display())]
    Config { file: PathBuf, msg: String },
    #[error("{}: field `{field}` {msg}", file.display())]
    ConfigField {
        file: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{}: architecture `{arch}` is not supported (nemo runs NemotronHForCausalLM)", file.display())]
    UnsupportedArchitecture { file: PathBuf, arch: String },
    #[error("{}: {msg}", file.display())]
    Weights { file: PathBuf, msg: String },
    #[error("{files}: tensor `{name}` is missing")]
    MissingTensor { name: String, files: String },
    #[error("{file}: tensor `{name}` has shape {got:?}, but {implied_by} implies {want:?}")]
    TensorShape {
        file: String,
        name: String,
        /// Where the expected shape comes from: `config.json`, or a GGUF file's metadata.
        implied_by: &'static str,
        want: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{}: {msg}", file.display())]
    Tokenizer { file: PathBuf, msg: String },
    /// A chat template that cannot be read or compiled (the message names the file).
    #[error("{0}")]
    Template(String),
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    /// A forward pass gave NaN or infinite logits: the weights (or the configuration they
    /// were read with) are broken, and sampling from them would only print noise.
    #[error("the model's logits at position {position} are not finite ({value}): its weights or configuration are broken, so nothing was sampled")]
    NonFiniteLogits { position: usize, value: f32 },
    #[error("{0}")]
    Unsupported(String),
}

/// Text from a file, fit for a one-line message: control characters (a newline in a
/// tensor name, a key, a template error) escaped, and cut after 200 characters.
pub(crate) fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(256));
    for (i, c) in s.chars().enumerate() {
        if i == 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
