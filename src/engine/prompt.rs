//! Turns a conversation into prompt tokens the way the model family expects, and finds
//! the token positions where earlier messages end (the session checkpoints there).
//!
//! Cost (a request must not cost more the longer the session already is, beyond reading
//! it once):
//! - One render of the whole conversation per request, plus one render per message prefix
//!   not seen in the last request, and only for the last [`MAX_NEW_PREFIXES`] messages
//!   (normally two: the last answer and the new user message). What the last request
//!   learnt about the prefixes it shares is kept.
//! - Tokens of the last prompt are reused up to an added token both prompts share (turn
//!   markers such as `<|im_start|>`): the tokenizer splits text at added tokens before
//!   anything else, so the ids of the text before one do not depend on the text after it
//!   ([`TokenizerFacts`] says when a cut is safe; elsewhere the whole text is encoded).
//!   Only the rest is tokenized.
//! - A prompt longer in bytes than the context times the most bytes one token can stand
//!   for cannot fit and is refused before any tokenization.
//! - The renders and tokenizations are counted ([`PromptBuilder::stats`]).
//!
//! Thinking on/off (DESIGN.md): templates that read `enable_thinking` (Nemotron 3) get
//! the variable; Llama-Nemotron templates get `detailed thinking on|off` as the system
//! message; otherwise (Nano v2 convention) `/think` or `/no_think` goes into the system
//! message. The variable is passed in every case; templates ignore what they don't read.
//! A template that never mentions thinking (SmolLM2 and other plain GGUF chat models) gets
//! no flag at all: the model would read `/no_think` as part of the system prompt.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

use super::EngineError;
use crate::chat::template::{ChatTemplate, InputSize, RenderLimits, TemplateError};
use crate::chat::template_sandbox::TemplateRenderer;
use crate::chat::tool_parser;
use crate::protocol::{Message, ToolFormat, ToolSpec};

pub const THINK_START: &str = "<think>";
pub const THINK_END: &str = "</think>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThinkingStyle {
    TemplateVariable,
    DetailedThinking,
    SystemFlag,
    /// The template has no thinking switch; messages go in unchanged.
    NoThinking,
}

pub fn thinking_style(template: &ChatTemplate) -> ThinkingStyle {
    let src = template.source();
    if src.contains("enable_thinking") {
        ThinkingStyle::TemplateVariable
    } else if src.contains("detailed thinking") {
        ThinkingStyle::DetailedThinking
    } else if !src.contains("think") {
        ThinkingStyle::NoThinking
    } else {
        ThinkingStyle::SystemFlag
    }
}

/// What the engine feeds and how the output starts.
#[derive(Clone, Debug)]
pub struct PromptPlan {
    pub text: String,
    pub ids: Vec<u32>,
    /// Token counts at which a prefix of the conversation (without a generation prompt)
    /// ends, ascending; each is a prefix of `ids`.
    pub boundaries: Vec<usize>,
    /// The prompt ends inside `<think>`: output starts as reasoning.
    pub starts_in_reasoning: bool,
}

/// Work done by a `PromptBuilder` since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptStats {
    /// Template renders: each whole prompt and each message prefix counts one.
    pub renders: usize,
    /// Calls into the tokenizer for prompt text, and the bytes they read.
    pub tokenizations: usize,
    pub tokenized_bytes: usize,
}

/// New message prefixes rendered per request, newest first: the session keeps only a few
/// checkpoints (the newest positions), so older boundaries would not be used.
pub const MAX_NEW_PREFIXES: usize = 8;

/// Renderer output cap when the tokenizer gives no bound on bytes per token.
const UNBOUNDED_OUTPUT_CAP: usize = 1 << 30;

/// Prompt text is tokenized in pieces of about this size where it can be cut (before an
/// added token): the tokenizer's memory (a few hundred bytes per input byte) is then
/// that of one piece, and a cancel is seen between pieces.
const PIECE_BYTES: usize = 16 << 10;

/// Text pieces longer than this are tokenized on a thread of their own, so a cancel is
/// seen while they run (the result is dropped).
const ENCODE_INLINE_BYTES: usize = 64 << 10;

/// What the previous request left to reuse.
struct LastPrompt {
    /// The messages as rendered (thinking flag applied) and the template variables.
    messages: Vec<Message>,
    extra: serde_json::Map<String, serde_json::Value>,
    /// `[k - 1]`: byte length of the render of the first `k` messages, when `text`
    /// starts with it.
    prefix_len: Vec<Option<usize>>,
    text: String,
    ids: Vec<u32>,
    /// Byte offset in `text` where each token starts (non-decreasing).
    starts: Vec<usize>,
}

/// The tools a request offers and the form its model writes calls in.
#[derive(Clone, Copy, Debug)]
pub struct PromptTools<'a> {
    pub specs: &'a [ToolSpec],
    pub format: ToolFormat,
}

/// What a chat template does with tools, read from its source: whether it renders the
/// `tools` variable, assistant `tool_calls`, and `tool` messages. Where it does not, nemo
/// puts the family's own text in (the tool preamble in the system message, the call's
/// text in the answer, results as a user turn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToolSupport {
    pub renders_tools: bool,
    pub renders_calls: bool,
    pub has_tool_role: bool,
}

impl ToolSupport {
    pub fn of(template: &ChatTemplate) -> ToolSupport {
        let src = template.source();
        ToolSupport {
            renders_tools: src.contains("tools"),
            renders_calls: src.contains("tool_calls"),
            has_tool_role: src.contains("'tool'") || src.contains("\"tool\""),
        }
    }

    /// For `/model`: how tools reach this model.
    pub fn describe(&self) -> String {
        format!(
            "tools {}, calls {}, results {}",
            if self.renders_tools {
                "by the template"
            } else {
                "in nemo's preamble"
            },
            if self.renders_calls {
                "by the template"
            } else {
                "as raw text"
            },
            if self.has_tool_role {
                "as tool messages"
            } else {
                "as a user turn"
            }
        )
    }
}

pub struct PromptBuilder {
    template: Arc<ChatTemplate>,
    tokenizer: Arc<Tokenizer>,
    renderer: TemplateRenderer,
    facts: TokenizerFacts,
    last: Option<LastPrompt>,
    stats: PromptStats,
}

impl PromptBuilder {
    pub fn new(template: Arc<ChatTemplate>, tokenizer: Arc<Tokenizer>) -> Self {
        Self::with_renderer(TemplateRenderer::new(template), tokenizer)
    }

    /// A builder on a given renderer (e.g. `TemplateRenderer::in_process`).
    pub fn with_renderer(renderer: TemplateRenderer, tokenizer: Arc<Tokenizer>) -> Self {
        PromptBuilder {
            template: renderer.template().clone(),
            facts: TokenizerFacts::of(&tokenizer),
            tokenizer,
            renderer,
            last: None,
            stats: PromptStats::default(),
        }
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn stats(&self) -> PromptStats {
        self.stats
    }

    /// Most bytes of text one token stands for, when the tokenizer bounds it.
    pub fn max_token_bytes(&self) -> Option<usize> {
        self.facts.max_token_bytes
    }

    /// How the template takes tools, calls and results.
    pub fn tool_support(&self) -> ToolSupport {
        ToolSupport::of(&self.template)
    }

    /// The messages and template variables as this template must see them: the thinking
    /// flag the family expects, and tools, calls and results in the template's own way or,
    /// where it is silent, in the family's text (`ToolSupport`).
    fn adapt(
        &self,
        messages: &[Message],
        thinking: bool,
        tools: Option<&PromptTools>,
    ) -> (Vec<Message>, serde_json::Map<String, serde_json::Value>) {
        let (mut msgs, mut extra) = self.with_thinking(messages, thinking);
        let support = self.tool_support();
        let format = tools.map(|t| t.format).unwrap_or(ToolFormat::Hermes);
        if let Some(t) = tools.filter(|t| !t.specs.is_empty()) {
            if support.renders_tools {
                extra.insert(
                    "tools".into(),
                    serde_json::to_value(t.specs).unwrap_or(serde_json::Value::Null),
                );
            } else {
                let text = tool_parser::preamble(t.format, t.specs);
                match msgs.first_mut() {
                    Some(m) if m.role == "system" => {
                        m.content = if m.content.is_empty() {
                            text
                        } else {
                            format!("{}\n\n{text}", m.content)
                        };
                    }
                    _ => msgs.insert(0, Message::system(text)),
                }
            }
        }
        if !support.renders_calls {
            for m in msgs.iter_mut().filter(|m| !m.tool_calls.is_empty()) {
                let calls = tool_parser::render_calls(format, &m.tool_calls);
                m.content = if m.content.is_empty() {
                    calls
                } else {
                    format!("{}\n{calls}", m.content)
                };
                m.tool_calls.clear();
            }
        }
        if !support.has_tool_role && msgs.iter().any(|m| m.role == "tool") {
            // Consecutive results become one user turn, in call order.
            let mut out: Vec<Message> = Vec::with_capacity(msgs.len());
            let mut i = 0;
            while i < msgs.len() {
                if msgs[i].role != "tool" {
                    out.push(msgs[i].clone());
                    i += 1;
                    continue;
                }
                let start = i;
                while i < msgs.len() && msgs[i].role == "tool" {
                    i += 1;
                }
                let outputs: Vec<&str> =
                    msgs[start..i].iter().map(|m| m.content.as_str()).collect();
                out.push(Message::user(tool_parser::render_results(format, &outputs)));
            }
            msgs = out;
        }
        (msgs, extra)
    }

    fn with_thinking(
        &self,
        messages: &[Message],
        thinking: bool,
    ) -> (Vec<Message>, serde_json::Map<String, serde_json::Value>) {
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), serde_json::Value::Bool(thinking));
        let mut msgs = messages.to_vec();
        match thinking_style(&self.template) {
            ThinkingStyle::TemplateVariable | ThinkingStyle::NoThinking => {}
            ThinkingStyle::DetailedThinking => {
                let flag = if thinking {
                    "detailed thinking on"
                } else {
                    "detailed thinking off"
                };
                match msgs.first_mut() {
                    Some(m) if m.role == "system" => {
                        if !m.content.contains("detailed thinking") {
                            m.content = format!("{flag}\n{}", m.content).trim_end().to_string();
                        }
                    }
                    _ => msgs.insert(0, Message::system(flag)),
                }
            }
            ThinkingStyle::SystemFlag => {
                let flag = if thinking { "/think" } else { "/no_think" };
                match msgs.first_mut() {
                    Some(m) if m.role == "system" => {
                        if !m.content.contains("/think") && !m.content.contains("/no_think") {
                            m.content = if m.content.is_empty() {
                                flag.to_string()
                            } else {
                                format!("{}\n{flag}", m.content)
                            };
                        }
                    }
                    _ => msgs.insert(0, Message::system(flag)),
                }
            }
        }
        (msgs, extra)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// The prompt for `messages` in a context of `context` tokens. `cancelled` is polled
    /// between the steps and while the template renders in its helper process.
    pub fn build(
        &mut self,
        messages: &[Message],
        thinking: bool,
        tools: Option<&PromptTools>,
        context: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<PromptPlan, EngineError> {
        let (msgs, extra) = self.adapt(messages, thinking, tools);
        let n = msgs.len();
        // Message prefixes already rendered for the last prompt.
        let same_prefixes = match &self.last {
            Some(last) if last.extra == extra => last
                .messages
                .iter()
                .zip(&msgs)
                .take_while(|(a, b)| a == b)
                .count(),
            _ => 0,
        };
        let new_prefixes: Vec<usize> = (same_prefixes + 1..=n)
            .filter(|k| k + MAX_NEW_PREFIXES > n)
            .collect();
        let max_bytes = self
            .facts
            .max_token_bytes
            .map(|l| context.saturating_mul(l));
        let limits = RenderLimits::for_input(
            InputSize::of(&msgs, &extra),
            max_bytes.unwrap_or(UNBOUNDED_OUTPUT_CAP),
        );
        let rendered = self
            .renderer
            .render(&msgs, &extra, &new_prefixes, &limits, cancelled);
        if !matches!(rendered, Err(TemplateError::Cancelled)) {
            self.stats.renders += 1 + new_prefixes.len();
        }
        let rendered = rendered.map_err(|e| match (e, max_bytes) {
            (
                TemplateError::OutputTooLarge {
                    template, bytes, ..
                },
                Some(max_bytes),
            ) => EngineError::PromptTooLong {
                template,
                bytes,
                context,
                max_bytes,
            },
            (e, _) => EngineError::from(e),
        })?;
        let text = rendered.text;
        // Refuse what cannot fit before tokenizing any of it.
        if let Some(max_bytes) = max_bytes {
            if text.len() > max_bytes {
                return Err(EngineError::PromptTooLong {
                    template: self.template.label(),
                    bytes: text.len(),
                    context,
                    max_bytes,
                });
            }
        }
        if cancelled() {
            return Err(EngineError::Cancelled);
        }

        let shared = self
            .last
            .as_ref()
            .map_or(0, |last| common_prefix_len(&last.text, &text));
        let (ids, starts) = self.tokenize(&text, shared, cancelled)?;

        // Where message prefixes end: known ones still valid up to `shared`, new ones as
        // the renderer found them.
        let mut prefix_len: Vec<Option<usize>> = vec![None; n];
        if let Some(last) = &self.last {
            for (k, len) in last.prefix_len.iter().enumerate().take(same_prefixes) {
                prefix_len[k] = len.filter(|l| *l <= shared);
            }
        }
        for (k, len) in new_prefixes.iter().zip(&rendered.prefixes) {
            prefix_len[k - 1] = *len;
        }
        let mut boundaries: Vec<usize> = prefix_len
            .iter()
            .flatten()
            .map(|len| starts.partition_point(|s| s < len))
            .filter(|i| *i > 0 && *i < ids.len())
            .collect();
        boundaries.sort_unstable();
        boundaries.dedup();

        let starts_in_reasoning = text.trim_end().ends_with(THINK_START);
        let plan = PromptPlan {
            text: text.clone(),
            ids: ids.clone(),
            boundaries,
            starts_in_reasoning,
        };
        self.last = Some(LastPrompt {
            messages: msgs,
            extra,
            prefix_len,
            text,
            ids,
            starts,
        });
        Ok(plan)
    }

    /// Ids of `text` and where each starts, reusing the last prompt's ids before the last
    /// added token both share within their first `shared` bytes, and encoding the rest in
    /// pieces cut before added tokens (a cancel is seen between pieces).
    fn tokenize(
        &mut self,
        text: &str,
        shared: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Vec<u32>, Vec<usize>), EngineError> {
        let reuse = self.last.as_ref().and_then(|last| {
            let (j, off) = self
                .facts
                .cut_before(&last.ids, &last.starts, text, shared)?;
            Some((last.ids[..j].to_vec(), last.starts[..j].to_vec(), off))
        });
        let (mut ids, mut starts, mut from) = reuse.unwrap_or_default();
        for end in self.facts.pieces(text, from, PIECE_BYTES) {
            if cancelled() {
                return Err(EngineError::Cancelled);
            }
            let (piece_ids, piece_starts) = self.encode_piece(&text[from..end], cancelled)?;
            ids.extend(piece_ids);
            let mut prev = starts.last().copied().unwrap_or(0);
            for s in piece_starts {
                // Offsets of byte-level pieces may be trimmed; keep them non-decreasing.
                prev = prev.max(s + from);
                starts.push(prev);
            }
            from = end;
        }
        Ok((ids, starts))
    }

    /// Encodes one piece of prompt text: ids and byte offsets of token starts.
    fn encode_piece(
        &mut self,
        piece: &str,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Vec<u32>, Vec<usize>), EngineError> {
        self.stats.tokenizations += 1;
        self.stats.tokenized_bytes += piece.len();
        let encode = |tok: &Tokenizer, text: &str| {
            tok.encode(text, false)
                .map(|e| {
                    let starts = e.get_offsets().iter().map(|o| o.0).collect();
                    (e.get_ids().to_vec(), starts)
                })
                .map_err(|e| EngineError::Tokenizer(e.to_string()))
        };
        if piece.len() <= ENCODE_INLINE_BYTES {
            return encode(&self.tokenizer, piece);
        }
        // A long piece cannot be interrupted: run it aside and stop waiting on a cancel.
        let (tx, rx) = std::sync::mpsc::channel();
        let tok = self.tokenizer.clone();
        let owned = piece.to_string();
        let spawned = std::thread::Builder::new()
            .name("nemo-tokenize".into())
            .spawn(move || {
                let _ = tx.send(encode(&tok, &owned));
            });
        if spawned.is_err() {
            return encode(&self.tokenizer, piece);
        }
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(10)) {
                Ok(result) => return result,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if cancelled() {
                        return Err(EngineError::Cancelled);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(EngineError::Tokenizer(
                        "the tokenizer thread stopped".into(),
                    ))
                }
            }
        }
    }
}

/// Length of the longest common prefix of `a` and `b`, in bytes.
fn common_prefix_len(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Compare in blocks first: this runs over the whole prompt on every request.
    const BLOCK: usize = 4096;
    let mut i = 0;
    let n = a.len().min(b.len());
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// What the tokenizer lets the prompt builder assume, worked out once from its
/// configuration (`tokenizers` 0.22 semantics).
///
/// Cutting text before an added token: the tokenizer first finds added tokens in the raw
/// text (leftmost-longest), then normalizes, pre-tokenizes and encodes each stretch
/// between them on its own. So `encode(a + b) == encode(a) + encode(b)` when `b` starts
/// with an added token that the tokenizer matches there: none overlaps the cut, none
/// longer starts there, and nothing about the token depends on the text before it (no
/// stripping to its left, no whole-word rule, a first character that is neither a word
/// character nor whitespace, so whole-word or stripping tokens before it end where it
/// starts). No truncation, padding or BPE dropout.
struct TokenizerFacts {
    /// Most bytes of text one token can stand for: the longest vocabulary entry (the
    /// byte-level and `▁` alphabets spell each byte with at least one byte), times 4
    /// after a Unicode normalizer (composition and case folding shrink text at most 3×).
    /// None when one token can swallow any amount of text: an unknown-word token, a
    /// normalizer or pre-tokenizer that drops text, an added token that strips the
    /// whitespace around it.
    max_token_bytes: Option<usize>,
    /// Added tokens matched on the raw text, and a leftmost-longest matcher over them.
    raw_added: Vec<String>,
    matcher: Option<AhoCorasick>,
    /// `[pattern]`: whether text may be cut before that added token.
    cuttable: Vec<bool>,
    /// Token id → text, for added tokens text may be cut before.
    cut_tokens: HashMap<u32, String>,
}

impl TokenizerFacts {
    fn of(tok: &Tokenizer) -> Self {
        let added = tok.get_added_tokens_decoder();
        let strips = added.values().any(|t| t.lstrip || t.rstrip);
        let (model_bounded, dropout) = match tok.get_model() {
            ModelWrapper::BPE(bpe) => (
                bpe.byte_fallback || bpe.unk_token.is_none() || !bpe.fuse_unk,
                bpe.dropout.is_some(),
            ),
            _ => (false, false),
        };
        let normalizer = match tok.get_normalizer() {
            None => Some(1),
            Some(n) => serde_json::to_value(n)
                .ok()
                .and_then(|v| normalizer_shrink(&v)),
        };
        let pre_tokenizer_keeps_text = match tok.get_pre_tokenizer() {
            None => true,
            Some(p) => serde_json::to_value(p)
                .ok()
                .is_some_and(|v| pre_tokenizer_keeps_text(&v)),
        };
        let longest = tok
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(4);
        let max_token_bytes = match normalizer {
            Some(shrink) if model_bounded && pre_tokenizer_keeps_text && !strips => {
                Some(longest * shrink)
            }
            _ => None,
        };
        let splittable = tok.get_truncation().is_none() && tok.get_padding().is_none() && !dropout;
        let mut raw_added = Vec::new();
        let mut cuttable = Vec::new();
        let mut cut_tokens = HashMap::new();
        let mut by_id: Vec<_> = added.iter().collect();
        by_id.sort_by_key(|(id, _)| **id);
        for (id, t) in by_id {
            if t.normalized || t.content.is_empty() {
                continue;
            }
            let first = t.content.chars().next().unwrap_or(' ');
            let cut = splittable
                && !t.lstrip
                && !t.single_word
                && !first.is_alphanumeric()
                && first != '_'
                && !first.is_whitespace();
            raw_added.push(t.content.clone());
            cuttable.push(cut);
            if cut {
                cut_tokens.insert(*id, t.content.clone());
            }
        }
        let matcher = if cut_tokens.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&raw_added)
                .ok()
        };
        TokenizerFacts {
            max_token_bytes,
            raw_added,
            matcher,
            cuttable,
            cut_tokens,
        }
    }

    /// The last token of the previous prompt (`ids`, `starts`) that `text` may be cut
    /// before: a cut token lying within the `shared` bytes both prompts begin with.
    /// Returns (token index, byte offset).
    fn cut_before(
        &self,
        ids: &[u32],
        starts: &[usize],
        text: &str,
        shared: usize,
    ) -> Option<(usize, usize)> {
        if self.cut_tokens.is_empty() {
            return None;
        }
        let mut j = starts.partition_point(|s| *s < shared);
        while j > 0 {
            j -= 1;
            let Some(content) = self.cut_tokens.get(&ids[j]) else {
                continue;
            };
            let off = starts[j];
            if off + content.len() <= shared
                && text.as_bytes()[off..].starts_with(content.as_bytes())
                && self.cut_ok(text.as_bytes(), off, content.len())
            {
                return Some((j, off));
            }
        }
        None
    }

    /// Where to end the pieces `text[from..]` is encoded in: cut points at least
    /// `min_len` bytes apart, then `text.len()`.
    fn pieces(&self, text: &str, from: usize, min_len: usize) -> Vec<usize> {
        let mut ends = Vec::new();
        if let Some(matcher) = &self.matcher {
            let bytes = text.as_bytes();
            let mut start = from;
            for m in matcher.find_iter(&bytes[from..]) {
                let at = from + m.start();
                if at >= start + min_len
                    && self.cuttable[m.pattern().as_usize()]
                    && self.cut_ok(bytes, at, m.len())
                {
                    ends.push(at);
                    start = at;
                }
            }
        }
        ends.push(text.len());
        ends
    }

    /// Whether the tokenizer matches the `len`-byte added token at `off` as itself: no
    /// added token occurs across `off`, and none longer starts there.
    fn cut_ok(&self, text: &[u8], off: usize, len: usize) -> bool {
        !self.raw_added.iter().any(|t| {
            let t = t.as_bytes();
            let across = (off.saturating_sub(t.len() - 1)..off)
                .any(|p| p + t.len() > off && text.get(p..p + t.len()) == Some(t));
            across || (t.len() > len && text[off..].starts_with(t))
        })
    }
}

/// How many times a normalizer may shrink text (1 = never), None when unbounded or unknown.
fn normalizer_shrink(v: &serde_json::Value) -> Option<usize> {
    match v.get("type")?.as_str()? {
        "Prepend" | "ByteLevel" => Some(1),
        "Replace" => {
            // A literal replaced by something at least as long never shrinks the text.
            let pattern = v.get("pattern")?.get("String")?.as_str()?;
            let content = v.get("content")?.as_str()?;
            (content.len() >= pattern.len()).then_some(1)
        }
        "NFC" | "NFD" | "NFKC" | "NFKD" | "Lowercase" => Some(4),
        "Sequence" => {
            let mut shrink = 1usize;
            for n in v.get("normalizers")?.as_array()? {
                shrink = shrink.checked_mul(normalizer_shrink(n)?)?;
            }
            Some(shrink.min(16))
        }
        _ => None,
    }
}

/// Whether a pre-tokenizer only splits text (never drops any of it).
fn pre_tokenizer_keeps_text(v: &serde_json::Value) -> bool {
    let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
    match kind {
        "ByteLevel" | "Metaspace" | "Digits" | "UnicodeScripts" => true,
        "Split" | "Punctuation" => v.get("behavior").and_then(|b| b.as_str()) != Some("Removed"),
        "Sequence" => v
            .get("pretokenizers")
            .and_then(|p| p.as_array())
            .is_some_and(|list| list.iter().all(pre_tokenizer_keeps_text)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::tests::metadata_only_gguf;
    use crate::model::gguf::{GgufFile, Value};
    use crate::model::gguf_tokenizer::from_gguf;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    #[test]
    fn a_template_without_thinking_gets_no_flag() {
        let plain = ChatTemplate::new("{{ messages[0].content }}", None, None).unwrap();
        assert_eq!(thinking_style(&plain), ThinkingStyle::NoThinking);
        let nano = ChatTemplate::new("{% if '/no_think' in x %}{% endif %}", None, None).unwrap();
        assert_eq!(thinking_style(&nano), ThinkingStyle::SystemFlag);
    }

    fn weather() -> Vec<ToolSpec> {
        vec![serde_json::from_value(serde_json::json!({
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}
        }))
        .unwrap()]
    }

    fn agent_turns() -> Vec<Message> {
        let mut call = Message::assistant("");
        call.tool_calls = vec![crate::protocol::ToolCall::new(
            "call_0",
            "get_weather",
            serde_json::json!({"city": "Paris"}),
        )];
        vec![
            Message::user("Weather in Paris?"),
            call,
            Message::tool("call_0", "get_weather", "sunny"),
        ]
    }

    /// A template that knows nothing of tools (SmolLM2's kind) still gets them: the
    /// family's preamble in a system message, the call as the model's raw text, the
    /// result as a user turn in the family's result form.
    #[test]
    fn a_template_silent_on_tools_gets_the_familys_text() {
        let t = ChatTemplate::compile(
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let mut b = PromptBuilder::with_renderer(
            TemplateRenderer::in_process(Arc::new(t)),
            Arc::new(fixture_tokenizer()),
        );
        assert_eq!(
            b.tool_support(),
            ToolSupport {
                renders_tools: false,
                renders_calls: false,
                has_tool_role: false
            }
        );
        let specs = weather();
        let tools = PromptTools {
            specs: &specs,
            format: ToolFormat::Hermes,
        };
        let plan = b
            .build(&agent_turns(), true, Some(&tools), 4096, &|| false)
            .unwrap();
        let text = plan.text;
        assert!(text.starts_with("<|system|># Tools"), "{text}");
        assert!(text.contains(r#""name": "get_weather""#), "{text}");
        assert!(
            text.contains(
                "<|assistant|><tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
            ),
            "{text}"
        );
        assert!(
            text.contains("<|user|><tool_response>\nsunny\n</tool_response>"),
            "{text}"
        );
        assert!(!text.contains("<|tool|>"), "{text}");
    }

    /// A template that renders tools gets them as the `tools` variable, untouched
    /// messages, and no preamble of nemo's.
    #[test]
    fn a_template_that_renders_tools_gets_the_variable() {
        let t = ChatTemplate::compile(
            "{% if tools %}[{{ tools[0].function.name }}]{% endif %}{% for m in messages %}{{ m.role }}:{% if m.tool_calls %}{{ m.tool_calls[0].function.arguments.city }}{% endif %}{{ m.content }};{% endfor %}{% if false %}'tool'{% endif %}",
            None,
            None,
        )
        .unwrap();
        let mut b = PromptBuilder::with_renderer(
            TemplateRenderer::in_process(Arc::new(t)),
            Arc::new(fixture_tokenizer()),
        );
        let specs = weather();
        let tools = PromptTools {
            specs: &specs,
            format: ToolFormat::NanoV2,
        };
        let plan = b
            .build(&agent_turns(), true, Some(&tools), 4096, &|| false)
            .unwrap();
        assert_eq!(
            plan.text,
            "[get_weather]user:Weather in Paris?;assistant:Paris;tool:sunny;"
        );
    }

    fn fixture_tokenizer() -> Tokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nemotron_h_tiny/tokenizer.json");
        Tokenizer::from_file(path).unwrap()
    }

    fn gguf_tokenizer(kv: Vec<(&str, Value)>) -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        std::fs::write(&p, metadata_only_gguf(&kv)).unwrap();
        from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
    }

    fn strings(v: &[&str]) -> Value {
        Value::array(v.iter().map(|s| Value::String(s.to_string())).collect()).unwrap()
    }

    /// A llama.cpp SentencePiece vocabulary (`▁` prefix normalizer, byte fallback) with
    /// control tokens for turns, as `gguf_tokenizer` builds it.
    fn sentencepiece() -> Tokenizer {
        let mut toks: Vec<String> = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<|im_start|>"]
            .map(String::from)
            .to_vec();
        let specials = toks.len();
        toks.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let pieces = [
            "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "▁hell", "llo", "▁hello",
            "▁w", "or", "▁wor", "▁world", "\n", "▁\n",
        ];
        toks.extend(pieces.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
        let scores: Vec<Value> = toks
            .iter()
            .map(|t| Value::F32(t.chars().count() as f32))
            .collect();
        let mut types = vec![Value::I32(2)];
        types.extend((1..specials).map(|_| Value::I32(3)));
        types.extend((0..256).map(|_| Value::I32(6)));
        types.extend((specials + 256..toks.len()).map(|_| Value::I32(1)));
        gguf_tokenizer(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&refs)),
            ("tokenizer.ggml.scores", Value::array(scores).unwrap()),
            ("tokenizer.ggml.token_type", Value::array(types).unwrap()),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ])
    }

    /// A byte-level BPE with Llama 3's split and ChatML control tokens.
    fn byte_level_llama3() -> Tokenizer {
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        let mut toks: Vec<String> = vec!["<|im_start|>".into(), "<|im_end|>".into()];
        toks.extend(alphabet.iter().map(|c| c.to_string()));
        toks.extend(["he", "ll", "hell", "hello", "Ġw", "Ċ", "ĊĊ"].map(String::from));
        let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
        let mut types = vec![Value::I32(3), Value::I32(3)];
        types.extend((2..toks.len()).map(|_| Value::I32(1)));
        gguf_tokenizer(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("llama-bpe".into())),
            ("tokenizer.ggml.tokens", strings(&refs)),
            (
                "tokenizer.ggml.token_type",
                Value::array(types.clone()).unwrap(),
            ),
            (
                "tokenizer.ggml.merges",
                strings(&["h e", "l l", "he ll", "hell o", "Ġ w", "Ċ Ċ"]),
            ),
        ])
    }

    /// Deterministic texts of words, spaces, newlines, non-ASCII, added tokens and
    /// pieces of added tokens, in every order.
    fn texts(specials: &[&str]) -> Vec<String> {
        let mut atoms: Vec<String> = [
            "hello", " world", "  ", "\n", "\n\n", " ", "é", "🦀", "x1", "<", ">", "|", "_a", "[",
            "[/", "12345", "\t",
        ]
        .map(String::from)
        .to_vec();
        for s in specials {
            atoms.push(s.to_string());
            atoms.push(s[..s.len() / 2].to_string());
            atoms.push(s[s.len() / 2..].to_string());
        }
        let mut rng = crate::model::synthetic::XorShift64::new(0x2545_f491_4f6c_dd1d);
        let mut next = move || rng.next_u64();
        (0..300)
            .map(|_| {
                let n = 2 + (next() % 24) as usize;
                (0..n)
                    .map(|_| atoms[(next() % atoms.len() as u64) as usize].as_str())
                    .collect()
            })
            .collect()
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).unwrap().get_ids().to_vec()
    }

    /// Encoding a text in the pieces `TokenizerFacts` cuts it into, or reusing the ids
    /// of another text up to the cut `cut_before` picks, gives the ids of the whole text.
    fn check_cuts(tok: &Tokenizer, specials: &[&str]) {
        let facts = TokenizerFacts::of(tok);
        assert!(!facts.cut_tokens.is_empty());
        let all = texts(specials);
        let mut cuts = 0;
        for (i, text) in all.iter().enumerate() {
            let whole = ids(tok, text);
            let mut from = 0;
            let mut pieces = Vec::new();
            for end in facts.pieces(text, 0, 0) {
                pieces.extend(ids(tok, &text[from..end]));
                from = end;
                cuts += usize::from(end < text.len());
            }
            assert_eq!(pieces, whole, "{text:?}");

            // The previous prompt was `text`; the new one shares a prefix of it.
            let other = &all[(i + 1) % all.len()];
            let enc = tok.encode(text.as_str(), false).unwrap();
            let starts: Vec<usize> = enc.get_offsets().iter().map(|o| o.0).collect();
            for keep in [text.len() / 3, text.len() / 2, text.len()] {
                let Some(keep) = (keep..=text.len()).find(|k| text.is_char_boundary(*k)) else {
                    continue;
                };
                let new = format!("{}{other}", &text[..keep]);
                let shared = common_prefix_len(text, &new);
                if let Some((j, off)) = facts.cut_before(enc.get_ids(), &starts, &new, shared) {
                    let mut reused = enc.get_ids()[..j].to_vec();
                    reused.extend(ids(tok, &new[off..]));
                    assert_eq!(reused, ids(tok, &new), "{text:?} -> {new:?}");
                }
            }
        }
        assert!(cuts > all.len() / 2, "too few cuts to test: {cuts}");
    }

    #[test]
    fn cuts_before_added_tokens_tokenize_like_the_whole_text() {
        check_cuts(
            &fixture_tokenizer(),
            &[
                "<SPECIAL_10>",
                "<SPECIAL_11>",
                "<SPECIAL_12>",
                "<think>",
                "</think>",
                "<s>",
            ],
        );
        check_cuts(
            &sentencepiece(),
            &["[INST]", "[/INST]", "<|im_start|>", "<s>", "</s>"],
        );
        check_cuts(&byte_level_llama3(), &["<|im_start|>", "<|im_end|>"]);
        // Added tokens that overlap each other: `b<a` wins over `<a>` in "b<a>", so
        // "b<a>" may not be cut before `<a>`.
        let mut tok = fixture_tokenizer();
        tok.add_special_tokens(&[
            tokenizers::AddedToken::from("<a>", true),
            tokenizers::AddedToken::from("b<a", true),
            tokenizers::AddedToken::from("<a>>", true).lstrip(true),
        ]);
        check_cuts(&tok, &["<a>", "b<a", "<a>>", "<SPECIAL_11>"]);
    }

    /// The last prompt had `<a>` where the new one, sharing the text up to its end, has a
    /// longer added token across it: the ids before `<a>` cannot be reused.
    #[test]
    fn no_cut_where_an_added_token_spans_it_in_the_new_text() {
        let mut tok = fixture_tokenizer();
        tok.add_special_tokens(&[
            tokenizers::AddedToken::from("<a>", true),
            tokenizers::AddedToken::from("b<a>q", true),
        ]);
        let facts = TokenizerFacts::of(&tok);
        let (old, new) = ("zz b<a>c", "zz b<a>q");
        let enc = tok.encode(old, false).unwrap();
        let starts: Vec<usize> = enc.get_offsets().iter().map(|o| o.0).collect();
        let shared = common_prefix_len(old, new);
        assert_eq!(facts.cut_before(enc.get_ids(), &starts, new, shared), None);
        // Where nothing spans it, the cut is taken and right.
        let new = "zz b<a>d";
        let (j, off) = facts
            .cut_before(enc.get_ids(), &starts, new, common_prefix_len(old, new))
            .unwrap();
        assert_eq!(off, 4);
        let mut reused = enc.get_ids()[..j].to_vec();
        reused.extend(ids(&tok, &new[off..]));
        assert_eq!(reused, ids(&tok, new));
    }

    #[test]
    fn max_token_bytes_bounds_every_encoding() {
        for (tok, specials) in [
            (fixture_tokenizer(), &["<SPECIAL_11>", "<think>"][..]),
            (sentencepiece(), &["[INST]", "<|im_start|>"][..]),
            (byte_level_llama3(), &["<|im_start|>"][..]),
        ] {
            let max = TokenizerFacts::of(&tok).max_token_bytes.unwrap();
            for text in texts(specials) {
                let n = ids(&tok, &text).len();
                assert!(n * max >= text.len(), "{text:?}: {n} tokens × {max}");
            }
        }
    }

    #[test]
    fn a_tokenizer_that_can_swallow_text_gives_no_byte_bound() {
        // Whitespace splitting drops the whitespace: any run of it is no token at all.
        let mut tok = fixture_tokenizer();
        tok.with_pre_tokenizer(Some(
            tokenizers::pre_tokenizers::whitespace::WhitespaceSplit,
        ));
        assert_eq!(TokenizerFacts::of(&tok).max_token_bytes, None);
        // A token that strips the whitespace after it swallows any run of it.
        let mut tok = fixture_tokenizer();
        tok.add_special_tokens(&[tokenizers::AddedToken::from("<eat>", true).rstrip(true)]);
        assert_eq!(TokenizerFacts::of(&tok).max_token_bytes, None);
        // Unknown words fused into one token.
        let mut tok = fixture_tokenizer();
        tok.with_model(
            tokenizers::models::bpe::BPE::builder()
                .unk_token("<unk>".into())
                .fuse_unk(true)
                .build()
                .unwrap(),
        );
        assert_eq!(TokenizerFacts::of(&tok).max_token_bytes, None);
    }

    #[test]
    fn a_truncating_tokenizer_is_never_cut() {
        let mut tok = fixture_tokenizer();
        tok.with_truncation(Some(tokenizers::TruncationParams {
            max_length: 8,
            ..Default::default()
        }))
        .unwrap();
        let facts = TokenizerFacts::of(&tok);
        assert!(facts.cut_tokens.is_empty());
        assert_eq!(
            facts.pieces("a<SPECIAL_11>b<SPECIAL_11>c", 0, 0),
            vec!["a<SPECIAL_11>b<SPECIAL_11>c".len()]
        );
    }
}
