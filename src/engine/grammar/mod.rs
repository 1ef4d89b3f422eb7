//! Constrained decoding with llguidance: structured output (`protocol::Constraint`: a
//! JSON schema, a regex, a choice, a Lark grammar) and tool calls held to the family's
//! format (`tools`).
//!
//! A `Vocabulary` (the model's tokens as bytes, built once per model and shared) compiles
//! a `Grammar` into a per-request `Guide`, which `Session::generate` calls at fixed points
//! of its loop once the answer starts (after `</think>`, sampled or forced by the budget;
//! at the first token when the template opens no reasoning):
//! 1. `done`: the grammar is complete (nothing can follow): the answer ends, `Stop`.
//! 2. `forced`: tokens the grammar allows alone (fast-forward); they are fed through the
//!    model like the thinking budget's forced text (the Mamba state must see them) and
//!    passed to `consume`. The model state is never rolled back.
//! 3. `mask`: the allowed tokens for the next draw, a bitset over the vocabulary; EOS is in
//!    it only when the grammar accepts the answer as it stands.
//! 4. `consume` the drawn token.
//!
//! Invariants:
//! - Every token the loop emits while the guide is active went through `consume`, so the
//!   answer is always a prefix of a sentence of the grammar, and when `stats().complete`
//!   it is one.
//! - The grammar's work (fast-forward check, mask, consume) is timed per drawn token and
//!   reported (`ConstraintStats`): it runs on the decode thread, serially.
//! - Errors in a grammar, schema or regex are one line naming the request field
//!   (`json_schema`, `regex`, `choice`, `grammar`, `tools`, `tool_choice`); front ends map
//!   the field to their flag.
//! - JSON schemas without their own `x-guidance` options compile to single-line JSON
//!   with `", "` and `": "` separators and no other whitespace (what chat templates'
//!   `tojson` writes, and no room for a model to loop on whitespace).

mod tools;
mod vocab;

pub use tools::tool_call_grammar;
pub use vocab::Vocabulary;

use std::sync::Arc;
use std::time::Instant;

use llguidance::api::{StopReason, TopLevelGrammar};
use llguidance::Matcher;
use serde_json::{json, Value};

use crate::protocol::{Constraint, ConstraintStats, ToolChoice, ToolFormat, ToolSpec};

#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// The tokenizer's tokens cannot be turned into bytes.
    #[error("constrained decoding: tokenizer: {0}")]
    Vocabulary(String),
    /// A grammar, schema, regex or tool list that does not compile.
    #[error("{field}: {msg}")]
    Invalid { field: &'static str, msg: String },
    /// The matcher failed while decoding (a grammar too complex for its limits, or a
    /// vocabulary that cannot spell what the grammar requires).
    #[error("constrained decoding: {0}")]
    Matcher(String),
}

/// The JSON compile options used when a schema brings none (see the module doc).
pub fn json_defaults() -> Value {
    json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

/// `schema` with `json_defaults()` as its `x-guidance` unless it has its own.
fn with_json_defaults(mut schema: Value) -> Value {
    if let Value::Object(m) = &mut schema {
        m.entry("x-guidance").or_insert_with(json_defaults);
    }
    schema
}

/// A grammar ready to compile against a `Vocabulary`, and the request field it came
/// from (errors name it).
#[derive(Clone, Debug)]
pub struct Grammar {
    top: TopLevelGrammar,
    field: &'static str,
}

impl Grammar {
    /// Structured output: `JsonSchema` (see the module doc for the JSON layout), `Regex`
    /// (the whole answer matches), `Choice` (exactly one of the strings), `Lark`.
    pub fn from_constraint(c: &Constraint) -> Result<Grammar, GrammarError> {
        Ok(match c {
            Constraint::JsonSchema(schema) => {
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(GrammarError::Invalid {
                        field: "json_schema",
                        msg: "a JSON schema is an object (or true/false)".into(),
                    });
                }
                Grammar {
                    top: TopLevelGrammar::from_json_schema(with_json_defaults(schema.clone())),
                    field: "json_schema",
                }
            }
            Constraint::Regex(rx) => Grammar {
                top: TopLevelGrammar::from_regex(rx),
                field: "regex",
            },
            Constraint::Choice(items) => {
                let invalid = |msg: String| GrammarError::Invalid {
                    field: "choice",
                    msg,
                };
                if items.is_empty() {
                    return Err(invalid("give at least one choice".into()));
                }
                if let Some(i) = items.iter().position(String::is_empty) {
                    return Err(invalid(format!("choice {} is empty", i + 1)));
                }
                let alts: Vec<String> = items.iter().map(|s| lark_string(s)).collect();
                Grammar::lark(format!("start: {}\n", alts.join(" | ")), "choice")
            }
            Constraint::Lark(src) => {
                if src.trim().is_empty() {
                    return Err(GrammarError::Invalid {
                        field: "grammar",
                        msg: "the grammar is empty".into(),
                    });
                }
                Grammar::lark(src.clone(), "grammar")
            }
        })
    }

    /// A grammar for tool calls in `format` (see `tools`); None when `choice` is `None`
    /// or no tool is offered.
    pub fn tool_calls(
        vocab: &Vocabulary,
        format: ToolFormat,
        tools: &[ToolSpec],
        choice: &ToolChoice,
    ) -> Result<Option<Grammar>, GrammarError> {
        Ok(tool_call_grammar(vocab, format, tools, choice)?.map(|src| Grammar::lark(src, "tools")))
    }

    fn lark(src: String, field: &'static str) -> Grammar {
        Grammar {
            top: TopLevelGrammar::from_lark(src),
            field,
        }
    }

    /// The request field errors name.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

/// A Lark string literal for `s` (Lark's literals are JSON strings in llguidance).
pub(crate) fn lark_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// One request's grammar state (see the module doc for the calls and their order).
pub struct Guide {
    matcher: Matcher,
    vocab: Arc<Vocabulary>,
    mask: Vec<u32>,
    /// Grammar time since the last draw, and per draw.
    pending_s: f64,
    step_s: Vec<f64>,
    forced_tokens: usize,
    host_steps: usize,
    /// The answer has begun under this grammar (see `started`).
    started: bool,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide")
            .field("draws", &self.step_s.len())
            .field("forced_tokens", &self.forced_tokens)
            .finish_non_exhaustive()
    }
}

impl Guide {
    pub fn new(vocab: Arc<Vocabulary>, grammar: &Grammar) -> Result<Guide, GrammarError> {
        let t = Instant::now();
        let parser = vocab
            .factory()
            .create_parser(grammar.top.clone())
            .map_err(|e| GrammarError::Invalid {
                field: grammar.field,
                msg: vocab::one_line(&e.to_string()),
            })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid {
                field: grammar.field,
                msg: vocab::one_line(&e),
            });
        }
        Ok(Guide {
            matcher,
            vocab,
            mask: Vec::new(),
            pending_s: t.elapsed().as_secs_f64(),
            step_s: Vec::new(),
            forced_tokens: 0,
            host_steps: 0,
            started: false,
        })
    }

    pub fn vocabulary(&self) -> &Arc<Vocabulary> {
        &self.vocab
    }

    fn check(&self) -> Result<(), GrammarError> {
        match self.matcher.stop_reason() {
            StopReason::NotStopped | StopReason::NoExtension | StopReason::EndOfSentence => Ok(()),
            _ => Err(GrammarError::Matcher(vocab::one_line(
                &self
                    .matcher
                    .get_error()
                    .unwrap_or_else(|| self.matcher.stop_reason().to_string()),
            ))),
        }
    }

    /// The grammar is complete and nothing can follow: the answer ends here.
    pub fn done(&self) -> Result<bool, GrammarError> {
        self.check()?;
        Ok(self.matcher.is_stopped())
    }

    /// The tokens the grammar forces next (fast-forward; empty when the model has a
    /// choice). Not consumed: feed them, then `consume` what was fed.
    pub fn forced(&mut self) -> Result<Vec<u32>, GrammarError> {
        self.started = true;
        let t = Instant::now();
        let ff = self.matcher.compute_ff_tokens();
        self.pending_s += t.elapsed().as_secs_f64();
        self.check()?;
        Ok(ff)
    }

    /// The tokens allowed next, a bitset in `Sampler::sample_masked`'s layout.
    pub fn mask(&mut self) -> Result<&[u32], GrammarError> {
        self.started = true;
        let t = Instant::now();
        let m = self.matcher.compute_mask();
        self.step_s.push(self.pending_s + t.elapsed().as_secs_f64());
        self.pending_s = 0.0;
        match m {
            Ok(v) => {
                self.mask = v.into();
                Ok(&self.mask)
            }
            Err(e) => Err(GrammarError::Matcher(vocab::one_line(&e.to_string()))),
        }
    }

    /// `ids` were emitted (drawn under the mask, or forced and fed).
    pub fn consume(&mut self, ids: &[u32], forced: bool) -> Result<(), GrammarError> {
        self.started = true;
        let t = Instant::now();
        let r = self.matcher.consume_tokens(ids);
        self.pending_s += t.elapsed().as_secs_f64();
        if forced {
            self.forced_tokens += ids.len();
        }
        r.map_err(|e| GrammarError::Matcher(vocab::one_line(&e.to_string())))
    }

    /// The answer has begun under the grammar: from then on it holds every token, even
    /// if the text looks like a `<think>` tag to the reasoning parser.
    pub fn started(&self) -> bool {
        self.started
    }

    /// A masked draw was made on the host by a sequence that draws on the device otherwise.
    pub fn host_step(&mut self) {
        self.host_steps += 1;
    }

    /// Whether the answer so far is a sentence of the grammar.
    pub fn complete(&mut self) -> bool {
        match self.matcher.stop_reason() {
            StopReason::NoExtension | StopReason::EndOfSentence => true,
            StopReason::NotStopped => self.matcher.is_accepting().unwrap_or(false),
            _ => false,
        }
    }

    pub fn stats(&mut self) -> ConstraintStats {
        ConstraintStats {
            complete: self.complete(),
            masked_tokens: self.step_s.len(),
            forced_tokens: self.forced_tokens,
            host_steps: self.host_steps,
            mask_ms_p50: percentile(&self.step_s, 50.0) * 1e3,
            mask_ms_p99: percentile(&self.step_s, 99.0) * 1e3,
        }
    }

    /// Grammar time per draw, in seconds.
    pub fn step_times(&self) -> &[f64] {
        &self.step_s
    }
}

/// Nearest-rank percentile, `p` in (0, 100]; 0 for none.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests;
