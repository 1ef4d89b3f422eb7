//! The token environment against each tokenizer nemo builds, and the grammars (structured
//! output and tool calls) walked token by token under their masks.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::*;
use crate::model::gguf::{GgufFile, Value as GgufValue};
use crate::model::gguf_tokenizer;

// ---------------------------------------------------------------------------------------
// Token bytes

fn fixture_tokenizer() -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nemotron_h_tiny/tokenizer.json");
    Tokenizer::from_file(p).unwrap()
}

/// Every fixture folder shares this tokenizer; its model vocabulary is 512 (12 padding ids).
const FIXTURE_VOCAB: usize = 512;

/// A SentencePiece GGUF tokenizer (`llama` model, byte fallback, `▁`), as
/// `gguf_tokenizer` builds it from metadata.
fn sentencepiece_gguf() -> (tempfile::TempDir, Tokenizer) {
    let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    toks.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "▁hell", "llo", "▁hello", "▁w",
        "▁wor", "or", "ld", "▁world", "é", "▁é",
    ];
    toks.extend(pieces.iter().map(|s| s.to_string()));
    let n = toks.len();
    let strings = |v: &[String]| {
        GgufValue::array(v.iter().map(|s| GgufValue::String(s.clone())).collect()).unwrap()
    };
    let scores: Vec<GgufValue> = toks
        .iter()
        .map(|t| GgufValue::F32(t.chars().count() as f32))
        .collect();
    let mut types = vec![GgufValue::I32(2), GgufValue::I32(3), GgufValue::I32(3)];
    types.extend((0..256).map(|_| GgufValue::I32(6)));
    types.extend((259..n).map(|_| GgufValue::I32(1)));
    let kv = vec![
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&toks)),
        ("tokenizer.ggml.scores", GgufValue::array(scores).unwrap()),
        (
            "tokenizer.ggml.token_type",
            GgufValue::array(types).unwrap(),
        ),
        ("tokenizer.ggml.unknown_token_id", GgufValue::U32(0)),
    ];
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sp.gguf");
    std::fs::write(&p, crate::model::gguf::tests::metadata_only_gguf(&kv)).unwrap();
    let g = GgufFile::open(&p).unwrap();
    let tok = gguf_tokenizer::from_gguf(&g).unwrap();
    (dir, tok)
}

fn smollm2_tokenizer() -> Option<Tokenizer> {
    let p = std::env::var_os("NEMO_SMOLLM2_GGUF").map(PathBuf::from)?;
    if !p.is_file() {
        eprintln!("skipped: NEMO_SMOLLM2_GGUF={} is not a file", p.display());
        return None;
    }
    let g = GgufFile::open(&p).unwrap();
    Some(gguf_tokenizer::from_gguf(&g).unwrap())
}

/// Checks every token's bytes against the tokenizer's own decoder, and the environment's
/// tokenization of sample texts against their bytes.
fn check_round_trip(tok: &Tokenizer, vocab_size: usize, texts: &[&str]) -> Vocabulary {
    let v = Vocabulary::from_tokenizer(tok, vocab_size, &[]).unwrap();
    assert_eq!(v.size(), vocab_size);
    let added = tok.get_added_tokens_decoder();
    // A context token that decodes to one ASCII letter, so that decoders which strip a
    // leading space (SentencePiece) keep the token's own.
    let anchor = (0..tok.get_vocab_size(true) as u32)
        .find(|&i| {
            tok.id_to_token(i)
                .is_some_and(|p| p.len() == 1 && p.as_bytes()[0].is_ascii_alphabetic())
        })
        .unwrap();
    let anchor_text = tok.decode(&[anchor], false).unwrap();
    let mut checked = 0;
    for id in 0..vocab_size as u32 {
        let bytes = v.token_bytes(id);
        let Some(piece) = tok.id_to_token(id) else {
            assert!(v.is_special(id), "padding id {id} must be a placeholder");
            let mut want = vec![0xFF];
            want.extend(format!("<[{id}]>").bytes());
            assert_eq!(bytes, want);
            continue;
        };
        if let Some(a) = added.get(&id) {
            if a.special {
                assert!(v.is_special(id), "{piece}");
                assert_eq!(&bytes[1..], a.content.as_bytes(), "{piece}");
                assert_eq!(v.special_token(&a.content), Some(id), "{piece}");
                checked += 1;
                continue;
            }
        }
        // Byte 0xFF (invalid UTF-8 anywhere) reads as toktrie's special marker; no grammar
        // can allow such a token as text, which is right for it.
        assert!(!v.is_special(id) || bytes[0] == 0xFF, "{id} {piece:?}");
        let got = tok.decode(&[anchor, id], false).unwrap();
        let want = format!("{anchor_text}{}", String::from_utf8_lossy(bytes));
        assert_eq!(got, want, "token {id} {piece:?} bytes {bytes:?}");
        checked += 1;
    }
    assert!(checked > 250, "only {checked} tokens checked");
    for text in texts {
        let ids = v.tokenize(text.as_bytes());
        let spelled: Vec<u8> = ids
            .iter()
            .flat_map(|&i| v.token_bytes(i).to_vec())
            .collect();
        assert_eq!(String::from_utf8_lossy(&spelled), *text, "{ids:?}");
        // Canonical: what the tokenizer itself writes for the text (no prefix space).
        if !text.starts_with(' ') {
            let enc = tok.encode(*text, false).unwrap();
            let own: Vec<u8> = enc
                .get_ids()
                .iter()
                .flat_map(|&i| v.token_bytes(i).to_vec())
                .collect();
            if own == text.as_bytes() {
                assert_eq!(ids, enc.get_ids(), "{text:?}");
            }
        }
    }
    v
}

#[test]
fn fixture_tokens_spell_their_bytes_and_specials_are_marked() {
    let tok = fixture_tokenizer();
    let v = check_round_trip(
        &tok,
        FIXTURE_VOCAB,
        &["hello world", "{\"city\": \"Paris\"}", "a\nb  c", "é 🦀"],
    );
    // Byte-level: `Ġ` is a space, `Ċ` a newline.
    let space = tok.token_to_id("Ġ").unwrap();
    assert_eq!(v.token_bytes(space), b" ");
    let newline = tok.token_to_id("Ċ").unwrap();
    assert_eq!(v.token_bytes(newline), b"\n");
    for name in ["<TOOLCALL>", "</think>", "<SPECIAL_12>"] {
        let id = tok.token_to_id(name).unwrap();
        assert_eq!(v.special_token(name), Some(id));
        assert_eq!(v.token_bytes(id)[0], 0xFF);
    }
    // The text `<think>` is spelled with ordinary tokens, never the special one.
    let think = tok.token_to_id("<think>").unwrap();
    assert!(!v.tokenize(b"<think>").contains(&think));
}

#[test]
fn sentencepiece_gguf_tokens_spell_their_bytes() {
    let (_dir, tok) = sentencepiece_gguf();
    let n = tok.get_vocab_size(true);
    let v = check_round_trip(&tok, n + 3, &["hello world", "hello", "é h", "wörld"]);
    // `▁` is a space, including a leading one; `<0xNN>` is the byte NN.
    let hello = tok.token_to_id("▁hello").unwrap();
    assert_eq!(v.token_bytes(hello), b" hello");
    let c3 = tok.token_to_id("<0xC3>").unwrap();
    assert_eq!(v.token_bytes(c3), &[0xC3]);
    // No prefix space when llguidance tokenizes forced text.
    let ids = v.tokenize(b"hello");
    assert_ne!(ids.first(), Some(&hello), "{ids:?}");
}

#[test]
fn smollm2_gguf_tokens_spell_their_bytes() {
    let Some(tok) = smollm2_tokenizer() else {
        eprintln!("skipped: NEMO_SMOLLM2_GGUF is not set");
        return;
    };
    let n = tok.get_vocab_size(true);
    check_round_trip(
        &tok,
        n,
        &[
            "What is the weather in Paris?",
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            "<tool_call>\n1234 é 🦀",
        ],
    );
}

#[test]
fn a_tokenizer_without_a_byte_decoder_is_refused_in_one_line() {
    let mut tok = fixture_tokenizer();
    tok.with_decoder(None::<tokenizers::DecoderWrapper>);
    let e = Vocabulary::from_tokenizer(&tok, FIXTURE_VOCAB, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("tokenizer") && !msg.contains('\n'), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Grammars, walked under their masks

/// Bytes 0..=255, some multi-byte tokens, and special tokens (the last is EOS).
fn byte_vocab() -> Arc<Vocabulary> {
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for w in [
        "\"name\"",
        "\": \"",
        "\", \"",
        "arguments",
        "{\"",
        "\"}",
        "get",
        "_weather",
        "Paris",
        "<tool_call>",
        "\n",
        "function",
        "parameter",
        "</",
        "city",
        "true",
        "false",
    ] {
        words.push(w.as_bytes().to_vec());
    }
    for s in ["<TOOLCALL>", "</TOOLCALL>", "<|eos|>"] {
        let mut b = vec![0xFF];
        b.extend_from_slice(s.as_bytes());
        words.push(b);
    }
    let eos = words.len() as u32 - 1;
    Arc::new(Vocabulary::from_token_bytes(words, &[eos]).unwrap())
}

/// A byte vocabulary without the `<TOOLCALL>` special tokens.
fn plain_byte_vocab() -> Arc<Vocabulary> {
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    words.push(b"\xFF<|eos|>".to_vec());
    Arc::new(Vocabulary::from_token_bytes(words, &[256]).unwrap())
}

/// A tiny xorshift for the walks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Walks `grammar` the way `Session::generate` does (forced tokens, then a draw under
/// the mask), drawing uniformly among the allowed tokens; EOS is taken when allowed with
/// probability 1/2. Returns the text (special tokens as their names) and the ids.
fn walk(vocab: &Arc<Vocabulary>, grammar: &Grammar, seed: u64) -> (String, Vec<u32>) {
    let mut g = Guide::new(vocab.clone(), grammar).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let eos = vocab.size() as u32 - 1;
    let mut ids = Vec::new();
    for _ in 0..3000 {
        if g.done().unwrap() {
            break;
        }
        let ff = g.forced().unwrap();
        if !ff.is_empty() {
            g.consume(&ff, true).unwrap();
            ids.extend(ff);
            continue;
        }
        let mask = g.mask().unwrap().to_vec();
        let allowed: Vec<u32> = (0..vocab.size() as u32)
            .filter(|&i| mask[i as usize / 32] & (1 << (i % 32)) != 0)
            .collect();
        assert!(!allowed.is_empty());
        if allowed.contains(&eos) && rng.next().is_multiple_of(2) {
            break;
        }
        let choices: Vec<u32> = allowed.iter().copied().filter(|&i| i != eos).collect();
        if choices.is_empty() {
            break;
        }
        // Prefer short strings: a closing quote, when allowed, a quarter of the time.
        let quote = 34u32;
        let id = if choices.contains(&quote) && rng.next().is_multiple_of(4) {
            quote
        } else {
            choices[(rng.next() % choices.len() as u64) as usize]
        };
        g.consume(&[id], false).unwrap();
        ids.push(id);
    }
    assert!(
        g.complete(),
        "walk {seed} did not complete: {:?}",
        text(vocab, &ids)
    );
    (text(vocab, &ids), ids)
}

fn text(vocab: &Vocabulary, ids: &[u32]) -> String {
    let mut b = Vec::new();
    for &i in ids {
        let t = vocab.token_bytes(i);
        b.extend_from_slice(if vocab.is_special(i) { &t[1..] } else { t });
    }
    String::from_utf8(b).unwrap()
}

/// Python's `json.dumps` layout outside strings: one space after each `,` and `:`, no
/// other whitespace.
fn assert_layout(t: &str) {
    let (mut in_str, mut esc, mut prev) = (false, false, ' ');
    for c in t.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_str = true,
                ' ' => assert!(prev == ',' || prev == ':', "layout: {t:?}"),
                c if c.is_whitespace() => panic!("layout: {t:?}"),
                _ => assert!(prev != ',' && prev != ':' || c == ' ', "layout: {t:?}"),
            }
        }
        prev = if in_str && c != '"' { 'x' } else { c };
    }
}

/// Python's `json.dumps` layout (", " and ": "), which the grammars write.
fn dumps(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(dumps).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), dumps(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn schema_person() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "ok"],
        "additionalProperties": false
    })
}

fn check_person(v: &Value) {
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 3, "{v}");
    assert!(o["name"].as_str().unwrap().chars().count() <= 6, "{v}");
    let age = o["age"].as_f64().unwrap();
    assert!(age.fract() == 0.0 && (0.0..=120.0).contains(&age), "{v}");
    assert!(o["ok"].is_boolean(), "{v}");
}

#[test]
fn json_schema_walks_give_valid_single_line_json() {
    let vocab = plain_byte_vocab();
    let g = Grammar::from_constraint(&Constraint::JsonSchema(schema_person())).unwrap();
    for seed in 0..20 {
        let (t, _) = walk(&vocab, &g, seed);
        let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        check_person(&v);
        assert_layout(&t);
    }
    // A schema's own x-guidance wins over the defaults.
    let mut s = schema_person();
    s["x-guidance"] =
        json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"});
    let g = Grammar::from_constraint(&Constraint::JsonSchema(s)).unwrap();
    let (t, _) = walk(&vocab, &g, 1);
    assert!(t.starts_with("{\"name\":\""), "{t}");
}

#[test]
fn regex_choice_and_lark_walks_match() {
    let vocab = plain_byte_vocab();
    let rx = Grammar::from_constraint(&Constraint::Regex("[a-c]{2,4}-[0-9]{2}".into())).unwrap();
    let ch = Grammar::from_constraint(&Constraint::Choice(vec![
        "red".into(),
        "green \"x\"\n".into(),
        "blue".into(),
    ]))
    .unwrap();
    let lark = Grammar::from_constraint(&Constraint::Lark(
        "start: NUM (OP NUM){0,2}\nNUM: /[0-9]{1,3}/\nOP: \"+\" | \"*\"\n".into(),
    ))
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..30 {
        let (t, _) = walk(&vocab, &rx, seed);
        let (l, r) = t.split_once('-').unwrap();
        assert!(
            (2..=4).contains(&l.len()) && l.chars().all(|c| ('a'..='c').contains(&c)),
            "{t}"
        );
        assert!(r.len() == 2 && r.chars().all(|c| c.is_ascii_digit()), "{t}");
        let (t, _) = walk(&vocab, &ch, seed);
        assert!(
            ["red", "green \"x\"\n", "blue"].contains(&t.as_str()),
            "{t:?}"
        );
        seen.insert(t);
        let (t, _) = walk(&vocab, &lark, seed);
        let parts: Vec<&str> = t.split(['+', '*']).collect();
        assert!(
            parts.len() <= 3
                && parts
                    .iter()
                    .all(|p| (1..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit())),
            "{t}"
        );
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn bad_constraints_fail_in_one_line_naming_the_field() {
    let vocab = plain_byte_vocab();
    let cases = [
        (Constraint::Regex("[a-".into()), "regex: "),
        (Constraint::Lark("start: nosuchrule\n".into()), "grammar: "),
        (Constraint::Lark("  ".into()), "grammar: "),
        (Constraint::Choice(vec![]), "choice: "),
        (
            Constraint::Choice(vec!["a".into(), String::new()]),
            "choice: choice 2 is empty",
        ),
        (
            Constraint::JsonSchema(json!({"type": "nonsense"})),
            "json_schema: ",
        ),
        (Constraint::JsonSchema(json!([1])), "json_schema: "),
    ];
    for (c, want) in cases {
        let e = Grammar::from_constraint(&c)
            .and_then(|g| Guide::new(vocab.clone(), &g).map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(want), "{c:?}: {e}");
        assert!(!e.contains('\n'), "{c:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Tool calls

fn tools() -> Vec<ToolSpec> {
    serde_json::from_value(json!([
        {"type": "function", "function": {"name": "get_weather", "description": "", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8},
                           "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "parameters": {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/small"}, "b": {"$ref": "#/$defs/small"}},
            "required": ["a", "b"], "additionalProperties": false,
            "$defs": {"small": {"type": "integer", "minimum": -9, "maximum": 99}}}}}
    ]))
    .unwrap()
}

/// Checks one call's arguments against the two tools' schemas.
fn check_args(name: &str, args: &Value) {
    let o = args.as_object().unwrap();
    match name {
        "get_weather" => {
            assert!(o["city"].as_str().unwrap().chars().count() <= 8, "{args}");
            assert!(o.keys().all(|k| k == "city" || k == "unit"), "{args}");
            if let Some(u) = o.get("unit") {
                assert!(u == "c" || u == "f", "{args}");
            }
        }
        "add" => {
            assert_eq!(o.len(), 2, "{args}");
            for k in ["a", "b"] {
                // `-0` is a JSON integer too (serde reads it as a float).
                let x = o[k].as_f64().unwrap();
                assert!(x.fract() == 0.0 && (-9.0..=99.0).contains(&x), "{args}");
            }
        }
        other => panic!("called {other}"),
    }
}

/// Parses `text` in `format` into (name, arguments) pairs, insisting on the exact layout
/// the module doc of `tools` gives.
fn parse_calls(format: ToolFormat, text: &str) -> Vec<(String, Value)> {
    let text = text.trim_start_matches([' ', '\n']);
    let json_call = |s: &str| -> (String, Value) {
        let v: Value = serde_json::from_str(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_layout(s);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "arguments"], "{s}");
        (
            v["name"].as_str().unwrap().to_string(),
            v["arguments"].clone(),
        )
    };
    match format {
        ToolFormat::NanoV2 => {
            let inner = text
                .strip_prefix("<TOOLCALL>")
                .and_then(|t| t.strip_suffix("</TOOLCALL>"))
                .unwrap_or_else(|| panic!("{text:?}"));
            let v: Value = serde_json::from_str(inner).unwrap();
            assert_layout(inner);
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| json_call(&dumps(c)))
                .collect()
        }
        ToolFormat::Hermes => text
            .strip_suffix('\n')
            .unwrap_or(text)
            .split('\n')
            .map(|b| {
                let inner = b
                    .strip_prefix("<tool_call>")
                    .and_then(|t| t.strip_suffix("</tool_call>"))
                    .unwrap_or_else(|| panic!("{text:?}"));
                json_call(inner)
            })
            .collect(),
        ToolFormat::Qwen3Coder => {
            let mut calls = Vec::new();
            let mut rest = text;
            loop {
                rest = rest
                    .strip_prefix("<tool_call>\n<function=")
                    .unwrap_or_else(|| panic!("{text:?}"));
                let (name, r) = rest.split_once(">\n").unwrap();
                rest = r;
                let mut args = serde_json::Map::new();
                while let Some(r) = rest.strip_prefix("<parameter=") {
                    let (p, r) = r.split_once(">\n").unwrap();
                    let (value, r) = r.split_once("\n</parameter>\n").unwrap();
                    let v = match name {
                        "get_weather" => Value::String(value.to_string()),
                        _ => {
                            serde_json::from_str(value).unwrap_or_else(|e| panic!("{value:?}: {e}"))
                        }
                    };
                    args.insert(p.to_string(), v);
                    rest = r;
                }
                rest = rest
                    .strip_prefix("</function>\n</tool_call>")
                    .unwrap_or_else(|| panic!("{text:?}"));
                calls.push((name.to_string(), Value::Object(args)));
                match rest.strip_prefix('\n') {
                    Some("") | None => break,
                    Some(r) => rest = r,
                }
            }
            assert!(rest.is_empty() || rest == "\n", "{text:?}");
            calls
        }
    }
}

#[test]
fn forced_tool_calls_walk_to_valid_calls_in_each_format() {
    let vocab = byte_vocab();
    let tools = tools();
    for format in [
        ToolFormat::NanoV2,
        ToolFormat::Hermes,
        ToolFormat::Qwen3Coder,
    ] {
        for choice in [ToolChoice::Required, ToolChoice::Named("add".into())] {
            let g = Grammar::tool_calls(&vocab, format, &tools, &choice)
                .unwrap_or_else(|e| panic!("{format}: {e}"))
                .unwrap();
            let mut names = std::collections::BTreeSet::new();
            for seed in 0..12 {
                let (t, ids) = walk(&vocab, &g, seed);
                if format == ToolFormat::NanoV2 {
                    // The tags are the special tokens, not text.
                    assert!(ids.contains(&vocab.special_token("<TOOLCALL>").unwrap()));
                }
                let calls = parse_calls(format, &t);
                assert!(!calls.is_empty());
                if matches!(choice, ToolChoice::Named(_)) {
                    assert_eq!(calls.len(), 1, "{t}");
                }
                for (name, args) in calls {
                    if let ToolChoice::Named(n) = &choice {
                        assert_eq!(&name, n, "{t}");
                    }
                    names.insert(name.clone());
                    check_args(&name, &args);
                }
            }
            if choice == ToolChoice::Required {
                assert_eq!(names.len(), 2, "{format}: {names:?}");
            }
        }
    }
}

#[test]
fn auto_tool_choice_leaves_text_free_until_the_tag() {
    let tools = tools();
    for (vocab, format, tag, next) in [
        (byte_vocab(), ToolFormat::NanoV2, None, b'['),
        (byte_vocab(), ToolFormat::Hermes, Some("<tool_call>"), b'{'),
        (
            plain_byte_vocab(),
            ToolFormat::Qwen3Coder,
            Some("<tool_call>"),
            b'\n',
        ),
    ] {
        let g = Grammar::tool_calls(&vocab, format, &tools, &ToolChoice::Auto)
            .unwrap()
            .unwrap();
        let mut guide = Guide::new(vocab.clone(), &g).unwrap();
        // Free text first, EOS allowed there (an answer without a call).
        for &b in b"Let me check. <tool" {
            guide.consume(&[b as u32], false).unwrap();
        }
        assert!(!guide.done().unwrap());
        let open: Vec<u32> = match tag {
            Some(t) => t[5..].bytes().map(u32::from).collect(),
            None => vec![vocab.special_token("<TOOLCALL>").unwrap()],
        };
        if tag.is_none() {
            // `<tool` was text; the special token opens the call.
            assert!(guide.mask().unwrap()[open[0] as usize / 32] & (1 << (open[0] % 32)) != 0);
        }
        guide.consume(&open, false).unwrap();
        // Now the call is held: only its next byte is allowed (forced, or the one token).
        let ff = guide.forced().unwrap();
        let first = match ff.first() {
            Some(&t) => vocab.token_bytes(t)[0],
            None => {
                let m = guide.mask().unwrap().to_vec();
                let allowed: Vec<u32> = (0..vocab.size() as u32)
                    .filter(|&i| m[i as usize / 32] & (1 << (i % 32)) != 0)
                    .collect();
                assert!(
                    allowed.iter().all(|&i| vocab.token_bytes(i)[0] == next),
                    "{format}: {allowed:?}"
                );
                next
            }
        };
        assert_eq!(first, next, "{format}");
    }
}

#[test]
fn tool_choice_errors_and_none() {
    let vocab = byte_vocab();
    let e = Grammar::tool_calls(
        &vocab,
        ToolFormat::Hermes,
        &tools(),
        &ToolChoice::Named("nope".into()),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "tool_choice: no offered tool is named `nope`");
    assert!(
        Grammar::tool_calls(&vocab, ToolFormat::Hermes, &tools(), &ToolChoice::None)
            .unwrap()
            .is_none()
    );
    assert!(
        Grammar::tool_calls(&vocab, ToolFormat::Hermes, &[], &ToolChoice::Required)
            .unwrap()
            .is_none()
    );
}
