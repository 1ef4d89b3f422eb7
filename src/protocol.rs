//! The only bridge between a front end (`nemo run`, the chat UI) and the engine thread:
//! `Request` goes in with its `Controls`, `Event`s come out. Plain data, no UI types.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chat::Message;
use crate::engine::sampler::SamplingParams;

/// How the model should think on this request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThinkingOptions {
    /// Reasoning on or off, passed the way the model family expects.
    pub enabled: bool,
    /// Most reasoning tokens before the end of thinking is forced; None = unlimited.
    /// Budget 0 means thinking off.
    pub budget: Option<usize>,
    /// The end-of-thinking tag (and EOS) are masked until this many reasoning tokens.
    pub min_tokens: usize,
    /// Soft landing: text added before the forced end tag, e.g. "Time to answer.".
    pub closing_message: Option<String>,
    /// Soft landing: up to this many extra tokens to finish the current sentence once the
    /// budget is reached (0 = close at once).
    pub grace_tokens: usize,
}

impl Default for ThinkingOptions {
    fn default() -> Self {
        ThinkingOptions {
            enabled: true,
            budget: None,
            min_tokens: 0,
            closing_message: None,
            grace_tokens: 0,
        }
    }
}

/// Live handles a front end keeps while a request runs; checked by the engine every step.
#[derive(Clone, Debug)]
pub struct Controls {
    cancel: Arc<AtomicBool>,
    wrap_up: Arc<AtomicBool>,
    /// Current thinking budget; -1 = unlimited. Changing it takes effect on the next token.
    budget: Arc<AtomicI64>,
}

impl Controls {
    pub fn new(budget: Option<usize>) -> Self {
        Controls {
            cancel: Arc::new(AtomicBool::new(false)),
            wrap_up: Arc::new(AtomicBool::new(false)),
            budget: Arc::new(AtomicI64::new(budget.map(|b| b as i64).unwrap_or(-1))),
        }
    }
    /// Stop generating; what was produced so far is kept.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    /// End thinking now and answer from the reasoning so far.
    pub fn wrap_up(&self) {
        self.wrap_up.store(true, Ordering::SeqCst)
    }
    pub fn wants_wrap_up(&self) -> bool {
        self.wrap_up.load(Ordering::SeqCst)
    }
    pub fn set_budget(&self, budget: Option<usize>) {
        self.budget
            .store(budget.map(|b| b as i64).unwrap_or(-1), Ordering::SeqCst)
    }
    pub fn budget(&self) -> Option<usize> {
        let b = self.budget.load(Ordering::SeqCst);
        (b >= 0).then_some(b as usize)
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub messages: Vec<Message>,
    pub sampling: SamplingParams,
    /// Most new tokens (reasoning included).
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub thinking: ThinkingOptions,
    pub controls: Controls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn (EOS).
    Stop,
    /// A stop string matched.
    StopString,
    /// `max_tokens` or the context limit was reached.
    Length,
    /// The user cancelled.
    Cancelled,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub reasoning_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub ttft_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub total_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// Prompt tokens not processed again thanks to a session checkpoint.
    pub reused_tokens: usize,
    /// Whether the end of thinking was forced (budget, wrap-up).
    pub thinking_forced: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt is rendered and tokenized; prefill starts.
    Started {
        prompt_tokens: usize,
        reused_tokens: usize,
    },
    Reasoning(String),
    Content(String),
    /// Live numbers during generation (about every few tokens).
    Progress {
        reasoning_tokens: usize,
        completion_tokens: usize,
        tokens_per_s: f64,
    },
    Done(Done),
    Error(String),
}
