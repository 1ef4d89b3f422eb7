//! The log-probabilities a request asked for (`Request::logprobs`), as protocol entries:
//! token ids and the sampler's numbers (`sampler::StepLogprobs`) → `GeneratedLogprob`s
//! with the tokens' bytes.
//!
//! Invariants:
//! - A token's bytes are what it adds to the text, from the model's `Vocabulary` (the
//!   table constrained decoding uses, built once per session); a special token is its
//!   name (`<think>`), without the vocabulary's 0xFF marker.
//! - A forced token (fed without a draw: the grammar's only continuation, the end of
//!   thinking a budget closes) has logprob 0 and is its own only alternative: given the
//!   constraint that forced it, it was certain (`sampler`'s module doc: the numbers are
//!   over what the constraint allowed).
//! - At most `MAX_TOP_LOGPROBS` alternatives, whatever was asked.

use std::sync::Arc;

use super::grammar::Vocabulary;
use super::sampler::StepLogprobs;
use crate::protocol::{GeneratedLogprob, TokenLogprob, MAX_TOP_LOGPROBS};

/// What one request's log-probabilities need: the token table and how many alternatives.
pub struct Logprobs {
    vocab: Arc<Vocabulary>,
    top: usize,
}

impl Logprobs {
    pub fn new(vocab: Arc<Vocabulary>, top: usize) -> Logprobs {
        Logprobs {
            vocab,
            top: top.min(MAX_TOP_LOGPROBS),
        }
    }

    /// Alternatives per token.
    pub fn top(&self) -> usize {
        self.top
    }

    /// The bytes token `id` adds to the text (see the module doc).
    pub fn bytes(&self, id: u32) -> Vec<u8> {
        let b = self.vocab.token_bytes(id);
        match b.split_first() {
            Some((&0xFF, name)) if self.vocab.is_special(id) || name.starts_with(b"<[") => {
                name.to_vec()
            }
            _ => b.to_vec(),
        }
    }

    fn entry(&self, id: u32, logprob: f32) -> TokenLogprob {
        TokenLogprob {
            id,
            bytes: self.bytes(id),
            logprob,
        }
    }

    /// The entry of token `id`, drawn with `step`'s numbers.
    pub fn drawn(&self, id: u32, step: &StepLogprobs) -> GeneratedLogprob {
        GeneratedLogprob {
            token: self.entry(id, step.chosen),
            top: step
                .top
                .iter()
                .take(self.top)
                .map(|&(t, l)| self.entry(t, l))
                .collect(),
        }
    }

    /// The entries of tokens fed without a draw (see the module doc).
    pub fn forced(&self, ids: &[u32]) -> Vec<GeneratedLogprob> {
        ids.iter()
            .map(|&id| GeneratedLogprob {
                token: self.entry(id, 0.0),
                top: if self.top > 0 {
                    vec![self.entry(id, 0.0)]
                } else {
                    Vec::new()
                },
            })
            .collect()
    }
}
