//! Incremental detokenization: token ids in, finished text out.
//!
//! Technique (as in TGI and vLLM): keep a `prefix_offset` and a `read_offset` into the
//! id list; decode `ids[prefix_offset..]` and `ids[prefix_offset..read_offset]`, and emit
//! the difference only when the full decode does not end in U+FFFD (an incomplete
//! UTF-8 sequence from byte tokens). Decoding a small window with one token of left
//! context keeps leading spaces (`▁`, `Ġ`) and merges right.
//!
//! Invariants:
//! - A pushed chunk never ends inside a UTF-8 character: text ending in U+FFFD is held
//!   until a later token completes it or `finish` flushes it.
//! - The concatenation of all chunks plus `finish()` equals the decode of the generated
//!   ids in context, for tokenizers whose decode of a window is a prefix of the decode
//!   of a longer window (true of byte-level and byte-fallback BPE).
//! - Decoding keeps special tokens (`skip_special_tokens = false`), so `<think>` and
//!   `</think>` reach the reasoning parser.
//! - Memory stays bounded: ids before `prefix_offset` are dropped as the text advances.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// Decoding failed inside the tokenizer (e.g. an id outside the vocabulary).
#[derive(Debug, thiserror::Error)]
pub enum DetokError {
    #[error("cannot decode token ids {ids:?}: {message}")]
    Decode { ids: Vec<u32>, message: String },
}

const REPLACEMENT: char = '\u{FFFD}';

/// Turns a stream of generated ids into a stream of text.
#[derive(Clone)]
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    /// Context ids then generated ids, minus those already dropped.
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of the ids whose text has been emitted.
    read_offset: usize,
}

impl std::fmt::Debug for Detokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detokenizer")
            .field("ids", &self.ids)
            .field("prefix_offset", &self.prefix_offset)
            .field("read_offset", &self.read_offset)
            .finish_non_exhaustive()
    }
}

impl Detokenizer {
    /// `prompt_tail_ids` are the last few prompt ids (a handful is enough); they are
    /// decoded only as context and never emitted.
    pub fn new(tokenizer: Arc<Tokenizer>, prompt_tail_ids: &[u32]) -> Self {
        Self {
            tokenizer,
            ids: prompt_tail_ids.to_vec(),
            prefix_offset: 0,
            read_offset: prompt_tail_ids.len(),
        }
    }

    /// Adds one generated id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, DetokError> {
        self.ids.push(id);
        let (prefix_text, full_text) = self.decode_window()?;
        if full_text.len() <= prefix_text.len() || full_text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let new_text = suffix_after(&full_text, &prefix_text);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.compact();
        Ok(new_text)
    }

    /// Emits whatever is still held (e.g. an incomplete character, as U+FFFD).
    pub fn finish(&mut self) -> Result<String, DetokError> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let (prefix_text, full_text) = self.decode_window()?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.compact();
        Ok(suffix_after(&full_text, &prefix_text))
    }

    fn decode_window(&self) -> Result<(String, String), DetokError> {
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        Ok((prefix, full))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, DetokError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| DetokError::Decode {
                ids: ids.to_vec(),
                message: e.to_string(),
            })
    }

    /// Drops ids before `prefix_offset`; they are never decoded again.
    fn compact(&mut self) {
        if self.prefix_offset > 0 {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
    }
}

/// The part of `full` after `prefix`. When `full` does not start with `prefix` (a
/// decoder that rewrites earlier text), the part after their longest common prefix.
fn suffix_after(full: &str, prefix: &str) -> String {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest.to_string();
    }
    let common = full
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map_or_else(|| full.len().min(prefix.len()), |((i, _), _)| i);
    full.get(common..).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE tokenizer with single-byte tokens for "h é l o ␠ 😀 !", a merged
    /// "lo" and "Ġw", and `<think>` as a special token.
    fn byte_level_tokenizer() -> Arc<Tokenizer> {
        // GPT-2 byte-to-char map for the bytes we need: printable Latin-1 maps to itself,
        // space → Ġ, and 😀 = F0 9F 98 80 → ð Ł ĺ Ģ.
        let pieces = [
            "h", "e", "l", "o", "w", "r", "d", "!", "Ġ", "Ã", "©", "ð", "Ł", "ĺ", "Ģ", "lo", "Ġw",
        ];
        let mut vocab = serde_json::Map::new();
        for (i, p) in pieces.iter().enumerate() {
            vocab.insert((*p).to_string(), serde_json::json!(i));
        }
        vocab.insert("<think>".into(), serde_json::json!(pieces.len()));
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{
                "id": pieces.len(), "content": "<think>", "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true
            }],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true,
                        "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": [["l", "o"], ["Ġ", "w"]]}
        });
        Arc::new(Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap())
    }

    /// A sentencepiece-style BPE with byte fallback (`<0xC3>` tokens) and `▁` spaces.
    fn byte_fallback_tokenizer() -> Arc<Tokenizer> {
        let mut vocab = serde_json::Map::new();
        let mut next = 0u32;
        for p in ["<unk>", "▁", "c", "a", "f", "▁c", "▁ca", "▁caf", "!"] {
            vocab.insert(p.to_string(), serde_json::json!(next));
            next += 1;
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), serde_json::json!(next));
            next += 1;
        }
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab,
                      "merges": [["▁", "c"], ["▁c", "a"], ["▁ca", "f"]]}
        });
        Arc::new(Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap())
    }

    /// Pushes ids one at a time; asserts no chunk holds U+FFFD; returns the chunks.
    fn stream(det: &mut Detokenizer, ids: &[u32]) -> Vec<String> {
        let mut chunks = Vec::new();
        for &id in ids {
            let chunk = det.push(id).unwrap();
            assert!(
                !chunk.contains(REPLACEMENT),
                "chunk {chunk:?} splits a character"
            );
            chunks.push(chunk);
        }
        chunks.push(det.finish().unwrap());
        chunks
    }

    #[test]
    fn multibyte_chars_split_over_byte_tokens_stream_whole() {
        let tok = byte_level_tokenizer();
        let text = "hé hello 😀 world!";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            text,
            "fixture round-trips"
        );
        let emoji_tokens = ["ð", "Ł", "ĺ", "Ģ"].map(|p| tok.token_to_id(p).unwrap());
        assert!(
            emoji_tokens.iter().all(|t| ids.contains(t)),
            "😀 spans 4 byte tokens"
        );

        let mut det = Detokenizer::new(tok.clone(), &[]);
        let chunks = stream(&mut det, &ids);
        assert_eq!(chunks.concat(), text);
        // The emoji arrives in one piece, with the space before it.
        assert!(chunks.iter().any(|c| c.contains('😀')));
        assert!(chunks.iter().any(|c| c == "é"));
    }

    #[test]
    fn special_tokens_are_kept_in_the_text() {
        let tok = byte_level_tokenizer();
        let think = tok.token_to_id("<think>").unwrap();
        let mut ids = vec![think];
        ids.extend(tok.encode("hello", false).unwrap().get_ids());
        let mut det = Detokenizer::new(tok, &[]);
        assert_eq!(stream(&mut det, &ids).concat(), "<think>hello");
    }

    #[test]
    fn byte_fallback_tokens_and_leading_spaces_decode_in_context() {
        let tok = byte_fallback_tokenizer();
        let prompt = tok.encode("caf", false).unwrap().get_ids().to_vec();
        let generated = tok.encode("café café!", false).unwrap().get_ids().to_vec();
        let e_acute = [
            tok.token_to_id("<0xC3>").unwrap(),
            tok.token_to_id("<0xA9>").unwrap(),
        ];
        assert!(
            generated.windows(2).any(|w| w == e_acute),
            "é is two byte tokens"
        );

        let mut det = Detokenizer::new(tok.clone(), &prompt);
        let chunks = stream(&mut det, &generated);
        // Text after the prompt keeps the space the first token starts with, which a
        // decode of the generated ids alone would strip.
        let whole = tok
            .decode(&[prompt.clone(), generated.clone()].concat(), false)
            .unwrap();
        let prompt_text = tok.decode(&prompt, false).unwrap();
        assert_eq!(format!("{prompt_text}{}", chunks.concat()), whole);
        assert_eq!(chunks.concat(), " café café!");
    }

    #[test]
    fn finish_flushes_an_incomplete_character() {
        let tok = byte_fallback_tokenizer();
        let c3 = tok.token_to_id("<0xC3>").unwrap();
        let bang = tok.token_to_id("!").unwrap();
        let mut det = Detokenizer::new(tok, &[]);
        assert_eq!(det.push(bang).unwrap(), "!");
        assert_eq!(det.push(c3).unwrap(), "");
        assert_eq!(det.finish().unwrap(), "\u{FFFD}");
        assert_eq!(det.finish().unwrap(), "");
    }

    #[test]
    fn window_stays_small_over_a_long_stream() {
        let tok = byte_level_tokenizer();
        let ids = tok
            .encode("hello world! ", false)
            .unwrap()
            .get_ids()
            .to_vec();
        let mut det = Detokenizer::new(tok, &[]);
        let mut out = String::new();
        for _ in 0..200 {
            for &id in &ids {
                out.push_str(&det.push(id).unwrap());
            }
        }
        out.push_str(&det.finish().unwrap());
        assert_eq!(out, "hello world! ".repeat(200));
        assert!(det.ids.len() < 8, "window grew to {}", det.ids.len());
    }

    #[test]
    fn unknown_ids_decode_to_nothing_and_do_not_stall_the_stream() {
        // tokenizers drops ids outside the vocabulary when decoding.
        let tok = byte_level_tokenizer();
        let h = tok.token_to_id("h").unwrap();
        let bang = tok.token_to_id("!").unwrap();
        let mut det = Detokenizer::new(tok, &[]);
        assert_eq!(det.push(h).unwrap(), "h");
        assert_eq!(det.push(1_000_000).unwrap(), "");
        assert_eq!(det.push(bang).unwrap(), "!");
        assert_eq!(det.finish().unwrap(), "");
    }

    #[test]
    fn suffix_after_handles_rewritten_prefixes() {
        assert_eq!(suffix_after("abcdef", "abc"), "def");
        assert_eq!(suffix_after("abXdef", "abc"), "Xdef");
        assert_eq!(suffix_after("ab", "abc"), "");
    }
}
