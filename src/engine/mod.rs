//! The engine: sessions that reuse work across turns, the generation loop with thinking
//! control, the sampler, and the engine thread that front ends talk to through
//! `protocol::{Request, Event}`.

pub mod detokenizer;
pub mod grammar;
pub mod prompt;
pub mod runner;
pub mod sampler;
pub mod session;
pub mod stop;
pub mod thinking;
pub mod worker;

pub use runner::{Runner, RunnerSnapshot};
pub use session::{Session, SessionOptions};
pub use worker::Engine;

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Detokenizer(#[from] detokenizer::DetokError),
    #[error("the prompt is {prompt} tokens, which does not fit the context of {context} tokens")]
    ContextOverflow { prompt: usize, context: usize },
    #[error("cancelled")]
    Cancelled,
    /// Constrained decoding: a grammar that does not compile, or a matcher failure.
    #[error(transparent)]
    Grammar(#[from] grammar::GrammarError),
    /// The GPU model or its session (feature `cuda`).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] crate::backend::cuda::nemotron_h::GpuModelError),
}
