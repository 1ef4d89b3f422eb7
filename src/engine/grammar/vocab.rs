//! The token environment llguidance works in (`toktrie::TokEnv`), built from nemo's own
//! `tokenizers::Tokenizer` — a folder's `tokenizer.json` or the one `model::gguf_tokenizer`
//! builds from GGUF metadata — so no second tokenizer library is involved.
//!
//! Invariants:
//! - There is one entry per id the model can emit (the logits' length), in id order; ids
//!   the tokenizer lacks (vocabulary padding) and tokens whose bytes cannot be told are
//!   placeholders `\xFF<[id]>` that no grammar ever allows.
//! - A token's entry is the bytes it adds to generated text:
//!   - byte-level BPE (a `ByteLevel` decoder): each character through GPT-2's
//!     byte↔unicode table (`Ġ` → 0x20, `Ċ` → 0x0A, ...);
//!   - SentencePiece-style pieces (a `ByteFallback` decoder with `Replace("▁", " ")`, or a
//!     `Metaspace` decoder): `<0xNN>` is the byte NN, and `▁` is a space everywhere in a
//!     piece, including a leading one (the decoder's strip of the very first space is a
//!     detail of decoding whole texts, not of a token);
//!   - special tokens (an added token marked special, or an added token shaped `<…>`, the
//!     rule of llguidance's own HF adapter) are toktrie's marker byte 0xFF followed by
//!     their text. A grammar reaches them only as `<name>` or `<[id]>`, never as text, so
//!     `"<think>"` in a grammar is spelled with ordinary tokens. Vocabularies whose special
//!     tokens do not look like `<…>` (Tekken's `[INST]`) are marked by the flag alone.
//! - `tokenize_bytes` (what llguidance uses to turn forced bytes into forced tokens) is
//!   the tokenizer's own encoding of the text with no prefix space added (the GGUF
//!   SentencePiece `Prepend("▁")` normalizer and Metaspace's prepend scheme are removed on
//!   a private copy), kept only when its tokens spell exactly those bytes; otherwise the
//!   trie's greedy longest-match tokenization.
//! - The environment and the `ParserFactory` (its token-class slices) are built once per
//!   model and shared (`Arc<Vocabulary>`); each request only compiles its grammar.

use std::sync::Arc;

use llguidance::ParserFactory;
use tokenizers::normalizers::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::metaspace::PrependScheme;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv, INVALID_TOKEN};

use super::GrammarError;

/// How a vocabulary's token strings spell bytes (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    ByteLevel,
    Pieces { space: char, byte_fallback: bool },
}

/// A model's tokens as bytes, the trie over them, and llguidance's parser factory.
pub struct Vocabulary {
    env: TokEnv,
    factory: ParserFactory,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

impl Vocabulary {
    /// From the model's tokenizer; `vocab_size` is the logits' length, `eos` the ids that
    /// end a turn.
    pub fn from_tokenizer(
        tokenizer: &Tokenizer,
        vocab_size: usize,
        eos: &[u32],
    ) -> Result<Vocabulary, GrammarError> {
        let words = token_bytes(tokenizer, vocab_size)?;
        let text = Some(encoder(tokenizer));
        Self::build(words, eos, text)
    }

    /// From raw token bytes (`words[id]`; 0xFF-prefixed for special tokens), e.g. a
    /// synthetic vocabulary for benchmarks. Forced bytes are tokenized greedily, which is
    /// this vocabulary's canonical tokenization.
    pub fn from_token_bytes(words: Vec<Vec<u8>>, eos: &[u32]) -> Result<Vocabulary, GrammarError> {
        Self::build(words, eos, None)
    }

    fn build(
        words: Vec<Vec<u8>>,
        eos: &[u32],
        text: Option<Tokenizer>,
    ) -> Result<Vocabulary, GrammarError> {
        let n = u32::try_from(words.len())
            .map_err(|_| GrammarError::Vocabulary("more than 2^32 tokens".into()))?;
        if n == 0 {
            return Err(GrammarError::Vocabulary("the vocabulary is empty".into()));
        }
        if words.iter().any(|w| w.len() > u16::MAX as usize) {
            return Err(GrammarError::Vocabulary(
                "a token is longer than 65535 bytes".into(),
            ));
        }
        let eos: Vec<u32> = eos.iter().copied().filter(|&e| e < n).collect();
        let info = TokRxInfo::new(n, eos.first().copied().unwrap_or(INVALID_TOKEN));
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(&eos);
        }
        let env: TokEnv = Arc::new(Env {
            trie,
            text,
            vocab_size: n,
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| GrammarError::Vocabulary(one_line(&e.to_string())))?;
        // Grammar errors come back as values (without the parser state and grammar
        // dump); nothing goes to stderr behind our back.
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        Ok(Vocabulary { env, factory })
    }

    /// Ids the trie covers: the model's vocabulary size.
    pub fn size(&self) -> usize {
        self.env.tok_trie().vocab_size()
    }

    /// The bytes token `id` adds to the text (0xFF + name for a special token; empty for
    /// an id past the end).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        if (id as usize) < self.size() {
            self.env.tok_trie().token(id)
        } else {
            &[]
        }
    }

    /// Whether `id` is a special token (reached by a grammar only as `<name>`/`<[id]>`).
    pub fn is_special(&self, id: u32) -> bool {
        (id as usize) < self.size() && self.env.tok_trie().is_special_token(id)
    }

    /// The special token whose text is `name` (e.g. `<TOOLCALL>`), if there is one.
    pub fn special_token(&self, name: &str) -> Option<u32> {
        let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        b.extend_from_slice(name.as_bytes());
        self.env.tok_trie().token_id(&b)
    }

    /// The tokens llguidance would force for `bytes` (the environment's tokenization).
    pub fn tokenize(&self, bytes: &[u8]) -> Vec<u32> {
        self.env.tokenize_bytes(bytes)
    }

    pub(super) fn factory(&self) -> &ParserFactory {
        &self.factory
    }
}

/// The `TokenizerEnv` llguidance calls back into.
struct Env {
    trie: TokTrie,
    /// The model's tokenizer without prefix-space insertion; None: greedy only.
    text: Option<Tokenizer>,
    vocab_size: u32,
}

impl Env {
    fn encode(&self, s: &str) -> Vec<TokenId> {
        if let Some(tok) = &self.text {
            if let Ok(enc) = tok.encode(s, false) {
                let ids = enc.get_ids();
                if ids.iter().all(|&i| i < self.vocab_size)
                    && self.trie.decode_raw(ids) == s.as_bytes()
                {
                    return ids.to_vec();
                }
            }
        }
        self.trie.greedy_tokenize(s.as_bytes())
    }
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie
            .tokenize_with_greedy_fallback(s, |s| self.encode(s))
    }
}

/// A copy of `tok` that adds no prefix space when encoding (see the module doc).
fn encoder(tok: &Tokenizer) -> Tokenizer {
    fn strip_prepend(n: NormalizerWrapper) -> Option<NormalizerWrapper> {
        match n {
            NormalizerWrapper::Prepend(_) => None,
            NormalizerWrapper::Sequence(seq) => {
                let kept: Vec<NormalizerWrapper> = seq
                    .as_ref()
                    .iter()
                    .filter_map(|n| strip_prepend(n.clone()))
                    .collect();
                (!kept.is_empty()).then(|| NormalizerSequence::new(kept).into())
            }
            other => Some(other),
        }
    }
    fn no_prefix(p: PreTokenizerWrapper) -> PreTokenizerWrapper {
        match p {
            PreTokenizerWrapper::Metaspace(mut m) => {
                m.prepend_scheme = PrependScheme::Never;
                PreTokenizerWrapper::Metaspace(m)
            }
            PreTokenizerWrapper::ByteLevel(mut b) => {
                b.add_prefix_space = false;
                PreTokenizerWrapper::ByteLevel(b)
            }
            PreTokenizerWrapper::Sequence(seq) => PreTokenizerSequence::new(
                seq.as_ref().iter().map(|p| no_prefix(p.clone())).collect(),
            )
            .into(),
            other => other,
        }
    }
    let mut t = tok.clone();
    let normalizer = t.get_normalizer().cloned().and_then(strip_prepend);
    t.with_normalizer(normalizer);
    let pre = t.get_pre_tokenizer().cloned().map(no_prefix);
    t.with_pre_tokenizer(pre);
    t
}

fn spelling(tok: &Tokenizer) -> Result<Spelling, GrammarError> {
    fn walk(d: &DecoderWrapper, level: &mut bool, fallback: &mut bool, space: &mut Option<char>) {
        match d {
            DecoderWrapper::ByteLevel(_) => *level = true,
            DecoderWrapper::ByteFallback(_) => *fallback = true,
            DecoderWrapper::Metaspace(m) => *space = Some(m.get_replacement()),
            DecoderWrapper::Replace(r) if r.content == " " => {
                // The pattern is private; its serialized form is `{"String": "▁"}`.
                let pattern = serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v["pattern"]["String"].as_str().map(str::to_string));
                let mut chars = pattern.as_deref().unwrap_or("").chars();
                if let (Some(c), None) = (chars.next(), chars.next()) {
                    *space = Some(c);
                }
            }
            DecoderWrapper::Sequence(seq) => {
                for d in seq.get_decoders() {
                    walk(d, level, fallback, space);
                }
            }
            _ => {}
        }
    }
    let (mut level, mut fallback, mut space) = (false, false, None);
    if let Some(d) = tok.get_decoder() {
        walk(d, &mut level, &mut fallback, &mut space);
    }
    if level {
        Ok(Spelling::ByteLevel)
    } else if fallback || space.is_some() {
        Ok(Spelling::Pieces {
            space: space.unwrap_or('▁'),
            byte_fallback: fallback,
        })
    } else {
        Err(GrammarError::Vocabulary(
            "cannot tell the bytes of its tokens: the decoder is neither ByteLevel nor \
             SentencePiece-style (ByteFallback / Metaspace)"
                .into(),
        ))
    }
}

/// GPT-2's byte → unicode table, inverted: the byte each character of a byte-level token
/// string stands for.
fn byte_level_table() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    let mut map = std::collections::HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// `<0xNN>` → NN.
fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn placeholder(id: usize) -> Vec<u8> {
    let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    b.extend_from_slice(format!("<[{id}]>").as_bytes());
    b
}

/// Every token's bytes, `vocab_size` entries (see the module doc).
pub(super) fn token_bytes(
    tok: &Tokenizer,
    vocab_size: usize,
) -> Result<Vec<Vec<u8>>, GrammarError> {
    let spelling = spelling(tok)?;
    let table = byte_level_table();
    let added = tok.get_added_tokens_decoder();
    let mut words = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size {
        let Some(piece) = tok.id_to_token(id as u32) else {
            words.push(placeholder(id));
            continue;
        };
        if let Some(a) = added.get(&(id as u32)) {
            let marked = a.special || (a.content.starts_with('<') && a.content.ends_with('>'));
            let mut b = Vec::with_capacity(a.content.len() + 1);
            if marked {
                b.push(TokTrie::SPECIAL_TOKEN_MARKER);
            }
            b.extend_from_slice(a.content.as_bytes());
            words.push(if b.is_empty() { placeholder(id) } else { b });
            continue;
        }
        let bytes = match spelling {
            Spelling::ByteLevel => piece
                .chars()
                .map(|c| table.get(&c).copied())
                .collect::<Option<Vec<u8>>>(),
            Spelling::Pieces {
                space,
                byte_fallback,
            } => match fallback_byte(&piece).filter(|_| byte_fallback) {
                Some(b) => Some(vec![b]),
                None => Some(piece.replace(space, " ").into_bytes()),
            },
        };
        words.push(match bytes {
            Some(b) if !b.is_empty() => b,
            _ => placeholder(id),
        });
    }
    Ok(words)
}

/// A library message on one line: its lines joined, caret diagrams dropped, at most 300
/// characters.
pub(super) fn one_line(msg: &str) -> String {
    let mut out = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| matches!(c, '^' | '-' | '~' | ' ')))
        .collect::<Vec<_>>()
        .join(" ");
    if out.is_empty() {
        out = "unknown error".into();
    }
    if out.chars().count() > 300 {
        out = out.chars().take(299).collect::<String>() + "…";
    }
    out
}
