//! The engine: sessions that reuse work across turns, the generation loop with thinking
//! control, the sampler, and the engine thread that front ends talk to through
//! `protocol::{Request, Event}`.

pub mod detokenizer;
pub mod engine_thread;
pub mod grammar;
pub mod logprobs;
pub mod prompt;
pub mod sampler;
pub mod sequence;
pub mod session;
pub mod stop;
pub mod thinking;

pub use engine_thread::{Engine, Submitter};
pub use sequence::{Checkpoint, Sequence};
pub use session::{Session, SessionOptions};

use crate::chat::template::TemplateError;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("chat template: {0}")]
    Template(String),
    /// Rendering the chat template failed or went past its limits; names the template.
    #[error(transparent)]
    Render(TemplateError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Detokenizer(#[from] detokenizer::DetokError),
    #[error("the prompt is {prompt} tokens, which does not fit the context of {context} tokens")]
    ContextOverflow { prompt: usize, context: usize },
    /// Refused before tokenizing: more bytes than `context` tokens can stand for.
    #[error("the prompt rendered by the {template} is {bytes} bytes, more than a context of {context} tokens can hold ({max_bytes} bytes at most)")]
    PromptTooLong {
        template: String,
        bytes: usize,
        context: usize,
        max_bytes: usize,
    },
    #[error("cancelled")]
    Cancelled,
    /// Constrained decoding: a grammar that does not compile, or a matcher failure.
    #[error(transparent)]
    Grammar(#[from] grammar::GrammarError),
    /// The GPU model or its session (`model::cuda`; in a build without the `cuda`
    /// feature, only "this build has no CUDA support").
    #[error(transparent)]
    Gpu(#[from] crate::model::cuda::GpuModelError),
}

impl From<TemplateError> for EngineError {
    fn from(e: TemplateError) -> Self {
        match e {
            TemplateError::Cancelled => EngineError::Cancelled,
            e => EngineError::Render(e),
        }
    }
}
