//! Entry points of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run with `cargo fuzz`)
//! and of their stable replay (`tests/fuzz_replay.rs`): each feeds arbitrary bytes
//! through the code a real load runs, from the bytes on, and returns `Ok` or the one-line
//! error a user would see. Nothing here touches the file system.
//!
//! The contract every target is held to (`check`): no panic, an error is one non-empty
//! line, and (checked by the replay, and by libFuzzer's `-rss_limit_mb`) memory follows
//! the input's size, not the sizes it claims.
//!
//! The chat template (`chat_template`, replayed by `tests/fuzz_template.rs`) and the
//! session loader (`chat::session_store::parse_session_bytes`, `tests/fuzz_session.rs`)
//! have their own replays.
//!
//! Adding a target: a function
//! `fn(&[u8]) -> Result<(), String>` here, a line in `TARGETS`, a
//! `fuzz/fuzz_targets/<name>.rs` that calls `check(<name>, data)`, a `[[bin]]` in
//! `fuzz/Cargo.toml`, and seeds in `fuzz/corpus/<name>/`. The replay test runs every
//! target in `TARGETS` over its corpus and over seeded mutations of it.
#![doc(hidden)]

use std::path::Path;

use crate::model::config::{self, NemotronHConfig};
use crate::model::folder::{self, ModelFolder};
use crate::model::gguf::GgufFile;
use crate::model::llama::LlamaConfig;
use crate::model::memory::RunBytes;
use crate::model::weights::{self, WeightStore};
use crate::model::{files, ModelError};
use crate::state::CacheConfig;

/// A fuzz target: bytes in, `Ok` or the error's one line out.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// Every target by name (the name of its `fuzz/fuzz_targets/*.rs` and corpus folder).
pub const TARGETS: &[(&str, Target)] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("config", config),
];

/// Runs `target` on `data` and holds its error to one non-empty line (panics otherwise,
/// which is what a fuzzer reports).
pub fn check(target: Target, data: &[u8]) {
    if let Err(e) = target(data) {
        assert!(
            !e.trim().is_empty() && !e.contains('\n'),
            "not one line: {e:?}"
        );
    }
}

fn line(e: ModelError) -> String {
    e.to_string()
}

/// A `.gguf` file: header, metadata, tensor layout, the model's config and weights
/// (`llama`, `nemotron_h`, `nemotron_h_moe`), the tokenizer and chat template from the
/// metadata, and the state-size claims (`ModelFolder::from_gguf`).
pub fn gguf(data: &[u8]) -> Result<(), String> {
    let g = GgufFile::from_bytes(data.to_vec(), Path::new("fuzz.gguf")).map_err(line)?;
    ModelFolder::from_gguf(g).map(|_| ()).map_err(line)
}

/// One `.safetensors` file: the header, every tensor's bounds and dtype, FP8 weights'
/// scales, layer indices (`WeightStore::open_dir` on one file).
pub fn safetensors(data: &[u8]) -> Result<(), String> {
    let w = WeightStore::from_safetensors_bytes(data.to_vec(), Path::new("fuzz.safetensors"))
        .map_err(line)?;
    let _ = w.last_layer();
    let _ = (w.main_dtype(), w.total_bytes());
    Ok(())
}

/// `model.safetensors.index.json`: the shard list, each name kept inside the folder.
pub fn safetensors_index(data: &[u8]) -> Result<(), String> {
    let index = Path::new("model/model.safetensors.index.json");
    let text =
        std::str::from_utf8(data).map_err(|_| format!("{}: is not UTF-8 text", index.display()))?;
    for name in weights::shard_names(text, index).map_err(line)? {
        files::shard_path(Path::new("model"), index, &name).map_err(line)?;
    }
    Ok(())
}

/// `config.json` (Nemotron-H in both forms, or Llama, as `ModelFolder::open` picks) and
/// the same bytes as `generation_config.json`; a config that parses also has its memory
/// estimate computed (saturating arithmetic on every claimed size).
pub fn config(data: &[u8]) -> Result<(), String> {
    let path = Path::new("config.json");
    let text =
        std::str::from_utf8(data).map_err(|_| format!("{}: is not UTF-8 text", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&config::python_json_to_strict(text))
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    let llama = v.pointer("/architectures/0").and_then(|a| a.as_str()) == Some("LlamaForCausalLM");
    let parsed = if llama {
        LlamaConfig::from_json(&v, path).map(|c| {
            (
                c.vocab_size,
                RunBytes::llama(&c, CacheConfig::default()).run(512, 4096, 1),
            )
        })
    } else {
        NemotronHConfig::from_json(&v, path).map(|c| {
            (
                c.vocab_size,
                RunBytes::nemotron_h(&c, CacheConfig::default()).run(512, 4096, 1),
            )
        })
    };
    let vocab = parsed.as_ref().map(|p| p.0).unwrap_or(1 << 17);
    let generation = folder::generation_from_json(&v, Path::new("generation_config.json"), vocab);
    parsed.map_err(line)?;
    generation.map(|_| ()).map_err(line)
}

/// A chat template as one arrives with a downloaded model: the bytes up to the first NUL
/// are its source, the rest (when present and valid) a JSON array of messages, else a short
/// fixed conversation. It is compiled as `ModelFolder::open` compiles one
/// (`ChatTemplate::new`: the compile check runs in a helper process when one is
/// registered) and rendered as a request renders it (`TemplateRenderer`, in its helper,
/// under `RenderLimits::for_input`). Not in `TARGETS`: without a helper there is no memory
/// cap, so it is replayed by `tests/fuzz_template.rs`, which registers the `nemo` binary
/// as the helper; `fuzz/fuzz_targets/chat_template.rs` registers `$NEMO_FUZZ_HELPER`.
pub fn chat_template(data: &[u8]) -> Result<(), String> {
    use crate::chat::template::{ChatTemplate, InputSize, RenderLimits};
    use crate::chat::template_sandbox::TemplateRenderer;
    use crate::protocol::Message;

    let (src, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let src = std::str::from_utf8(src).map_err(|_| "chat template: not UTF-8 text".to_string())?;
    let messages: Vec<Message> = serde_json::from_slice(rest).unwrap_or_else(|_| {
        vec![
            Message::system("Be brief."),
            Message::user("What is 2+2?"),
            Message::assistant("4"),
            Message::user("And 3+3?"),
        ]
    });
    let t = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into()))
        .map_err(|e| e.to_string())?
        .with_name("fuzz.jinja");
    let mut extra = serde_json::Map::new();
    extra.insert("enable_thinking".into(), serde_json::Value::Bool(true));
    let limits = RenderLimits::for_input(InputSize::of(&messages, &extra), 1 << 20);
    let prefixes: Vec<usize> = (1..=messages.len()).collect();
    TemplateRenderer::new(std::sync::Arc::new(t))
        .render(&messages, &extra, &prefixes, &limits, &|| false)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_empty_and_junk_input() {
        for (name, t) in TARGETS {
            for data in [&b""[..], b"\0", b"{}", b"GGUF", b"\xff\xfe\xfd"] {
                assert!(t(data).is_err(), "{name} accepted {data:?}");
                check(*t, data);
            }
        }
    }
}
