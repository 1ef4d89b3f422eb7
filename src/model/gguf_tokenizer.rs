//! A `tokenizers::Tokenizer` built from a GGUF file's `tokenizer.ggml.*` metadata, so a
//! single `.gguf` runs without a `tokenizer.json`.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE): `tokens` are the vocabulary
//! in id order, `merges` are "left right" pairs by rank, `token_type` 3 (control) marks
//! special tokens and 4 (user-defined) added ones. `tokenizer.ggml.pre` picks the
//! pre-tokenizer as llama.cpp's `llama-vocab.cpp` does (the same splits as the model's
//! `tokenizer.json`).
//!
//! `"llama"` (SentencePiece BPE: Llama-2, TinyLlama, Mistral v0.1) is built the way
//! transformers' `LlamaConverter` does: merges derived from the vocabulary, ranked by the
//! merged piece's score (llama.cpp's `llm_tokenizer_spm` merges the best-scoring bigram
//! first, which is the same order), byte fallback to `<0xNN>` pieces, "▁" for spaces and a
//! leading "▁" when `tokenizer.ggml.add_space_prefix` is true (the default).
//! No BOS is added when encoding: chat templates write it.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use super::gguf::{GgufFile, Value};
use super::{shown, ModelError};

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Llama-3's split regex (`LLAMA_VOCAB_PRE_TYPE_LLAMA3`), also used by several other BPE
/// vocabularies (`tokenizer.json`'s `Split` pre-tokenizer for those models).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn err(g: &GgufFile, msg: String) -> ModelError {
    ModelError::Tokenizer {
        file: g.path.clone(),
        msg: shown(&msg),
    }
}

fn tokens(g: &GgufFile) -> Result<Vec<&str>, ModelError> {
    g.get_array("tokenizer.ggml.tokens")?
        .strs()
        .collect::<Option<_>>()
        .ok_or_else(|| err(g, "tokenizer.ggml.tokens holds a non-string".into()))
}

fn token_types(g: &GgufFile) -> Vec<i64> {
    match g.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        _ => vec![],
    }
}

/// Control tokens become special added tokens, user-defined ones plain added tokens.
fn add_typed_tokens(tok: &mut Tokenizer, tokens: &[&str], types: &[i64]) {
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
        .map(|(s, &t)| AddedToken::from(s.to_string(), t == TOKEN_CONTROL))
        .collect();
    let (special, normal): (Vec<AddedToken>, Vec<AddedToken>) =
        added.into_iter().partition(|t| t.special);
    tok.add_special_tokens(&special);
    tok.add_tokens(&normal);
}

pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer, ModelError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    match model {
        "gpt2" => byte_level_bpe(g),
        "llama" => sentencepiece_bpe(g),
        _ => Err(err(
            g,
            format!(
                "tokenizer.ggml.model `{}` is not supported (gpt2 and llama are)",
                shown(model)
            ),
        )),
    }
}

fn sentencepiece_bpe(g: &GgufFile) -> Result<Tokenizer, ModelError> {
    let tokens = tokens(g)?;
    let types = token_types(g);
    let scores: Vec<f64> = g
        .get_array("tokenizer.ggml.scores")?
        .iter()
        .map(|v| v.as_f64().unwrap_or(0.0))
        .collect();
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, i as u32))
        .collect();
    // Every split of a piece into two pieces is a merge, ranked by the piece's score.
    let mut ranked: Vec<(f64, u32, u32, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        for (at, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(at);
            if let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) {
                ranked.push((scores.get(i).copied().unwrap_or(0.0), ia, ib, a, b));
            }
        }
    }
    ranked.sort_by(|x, y| {
        y.0.partial_cmp(&x.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then((x.1, x.2).cmp(&(y.1, y.2)))
    });
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, _, _, a, b)| (a.to_string(), b.to_string()))
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(Value::as_u64)
        .and_then(|i| tokens.get(i as usize))
        .unwrap_or(&"<unk>");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| err(g, format!("cannot build the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let space = |e: tokenizers::Error| err(g, format!("bad normalizer: {e}"));
    let replace: NormalizerWrapper = Replace::new(" ", "▁").map_err(space)?.into();
    let prefix = g
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let normalizer: NormalizerWrapper = if prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), replace]).into()
    } else {
        replace
    };
    tok.with_normalizer(Some(normalizer));
    let decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(space)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', if prefix { 1 } else { 0 }, 0).into(),
    ];
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    add_typed_tokens(&mut tok, &tokens, &types);
    Ok(tok)
}

fn byte_level_bpe(g: &GgufFile) -> Result<Tokenizer, ModelError> {
    let tokens = tokens(g)?;
    let merges: Vec<(String, String)> = g
        .get_array("tokenizer.ggml.merges")?
        .strs()
        .map(|v| {
            let (a, b) = v?.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            err(
                g,
                "tokenizer.ggml.merges holds an entry that is not \"a b\"".into(),
            )
        })?;
    let types = token_types(g);
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(g, format!("cannot build the BPE model: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        // SmolLM's tokenizer.json: every digit its own piece, then GPT-2's split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "llama-bpe" | "llama3" | "falcon3" | "exaone" | "pixtral" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(g, format!("bad split pattern: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        _ => byte_level.into(),
    };
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevel::default()));
    add_typed_tokens(&mut tok, &tokens, &types);
    Ok(tok)
}

/// The text of token `key` (`tokenizer.ggml.bos_token_id` ...), if the file names one.
pub fn token_text(g: &GgufFile, key: &str) -> Option<String> {
    let id = g.get(key)?.as_u64()? as usize;
    g.get("tokenizer.ggml.tokens")?
        .as_array()?
        .str_at(id)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::tests::metadata_only_gguf;

    fn open(kv: Vec<(&str, Value)>) -> (tempfile::TempDir, GgufFile) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        std::fs::write(&p, metadata_only_gguf(&kv)).unwrap();
        let g = GgufFile::open(&p).unwrap();
        (dir, g)
    }

    fn strings(v: &[&str]) -> Value {
        Value::array(v.iter().map(|s| Value::String(s.to_string())).collect()).unwrap()
    }

    #[test]
    fn byte_level_bpe_with_the_llama3_split_round_trips() {
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        let mut toks: Vec<String> = vec!["<|eot|>".into()];
        toks.extend(alphabet.iter().map(|c| c.to_string()));
        toks.extend(["he", "ll", "hell", "hello", "Ġw"].map(String::from));
        let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
        let mut types = vec![Value::I32(3)];
        types.extend((1..toks.len()).map(|_| Value::I32(1)));
        let (_d, g) = open(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("llama-bpe".into())),
            ("tokenizer.ggml.tokens", strings(&refs)),
            ("tokenizer.ggml.token_type", Value::array(types).unwrap()),
            (
                "tokenizer.ggml.merges",
                strings(&["h e", "l l", "he ll", "hell o", "Ġ w"]),
            ),
        ]);
        let tok = from_gguf(&g).unwrap();
        let enc = tok.encode("hello world<|eot|>", false).unwrap();
        assert_eq!(&enc.get_tokens()[..2], ["hello", "Ġw"]);
        assert_eq!(enc.get_tokens().last().map(String::as_str), Some("<|eot|>"));
        let text = "hello wörld 123 🦀";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn sentencepiece_merges_by_score_and_falls_back_to_bytes() {
        let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        toks.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let pieces = [
            "▁", "h", "e", "l", "o", "he", "ll", "▁he", "▁hell", "llo", "▁hello",
        ];
        toks.extend(pieces.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
        let n = toks.len();
        // Longer pieces score higher, as in a trained model.
        let scores: Vec<Value> = toks
            .iter()
            .map(|t| Value::F32(t.chars().count() as f32))
            .collect();
        let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
        types.extend((0..256).map(|_| Value::I32(6)));
        types.extend((259..n).map(|_| Value::I32(1)));
        let (_d, g) = open(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&refs)),
            ("tokenizer.ggml.scores", Value::array(scores).unwrap()),
            ("tokenizer.ggml.token_type", Value::array(types).unwrap()),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ]);
        let tok = from_gguf(&g).unwrap();
        let enc = tok.encode("hello hé", false).unwrap();
        assert_eq!(enc.get_tokens()[0], "▁hello");
        assert!(
            enc.get_tokens().iter().any(|t| t == "<0xC3>"),
            "{:?}",
            enc.get_tokens()
        );
        for text in ["hello hé", "hello  hello", "é\nh"] {
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }
}
