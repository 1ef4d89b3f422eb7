//! Which tool-call format a model uses, from its chat template and vocabulary.
//!
//! Invariant: the template decides first, the vocabulary only when the template shows no
//! format (see [`detect`]).

use super::{hermes, nano_v2};
use crate::protocol::ToolFormat;

/// Chooses the tool-call format from the chat template and the vocabulary; `None` when
/// neither shows one (the caller then uses hermes with nemo's own tool preamble).
///
/// The template decides first, the vocabulary only when the template shows no format:
/// a vocabulary can carry tokens of a format the model no longer uses (Nemotron 3
/// descends from the Nemotron-H vocabulary), while the template is what the model was
/// trained to read.
/// - `<parameter=`, or `<function=` together with `<tool_call>`, in the template:
///   qwen3-coder (`<function=` alone also appears in Llama 3.1's custom-tool prompt).
/// - `<TOOLCALL>` or `<TOOL_RESPONSE>` in the template: nano-v2.
/// - `<tool_call>` in the template: hermes.
/// - Otherwise `<TOOLCALL>` in the vocabulary: nano-v2; `<tool_call>`: hermes.
pub fn detect(template_source: &str, vocab_has: impl Fn(&str) -> bool) -> Option<ToolFormat> {
    let t = template_source;
    if t.contains("<parameter=") || (t.contains("<function=") && t.contains("<tool_call>")) {
        Some(ToolFormat::Qwen3Coder)
    } else if t.contains(nano_v2::OPEN) || t.contains(nano_v2::RESULT_OPEN) {
        Some(ToolFormat::NanoV2)
    } else if t.contains(hermes::OPEN) {
        Some(ToolFormat::Hermes)
    } else if vocab_has(nano_v2::OPEN) {
        Some(ToolFormat::NanoV2)
    } else if vocab_has(hermes::OPEN) {
        Some(ToolFormat::Hermes)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn detect_reads_the_template_first_then_the_vocabulary() {
        let none = |_: &str| false;
        let qwen = "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '<parameter=' + k + '>\\n' }}";
        assert_eq!(detect(qwen, none), Some(ToolFormat::Qwen3Coder));
        // A vocabulary with <TOOLCALL> does not overrule a qwen3-coder template.
        assert_eq!(
            detect(qwen, |t| t == "<TOOLCALL>"),
            Some(ToolFormat::Qwen3Coder)
        );
        let nano = "{{- '<TOOLCALL>[' -}}{%- for call in message.tool_calls -%}";
        assert_eq!(detect(nano, none), Some(ToolFormat::NanoV2));
        let nano_results = "{{- '<SPECIAL_11>User\\n<TOOL_RESPONSE>\\n' + message['content'] }}";
        assert_eq!(detect(nano_results, none), Some(ToolFormat::NanoV2));
        let hermes = "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}";
        assert_eq!(detect(hermes, none), Some(ToolFormat::Hermes));
        // Llama 3.1's custom-tool prompt mentions <function= without the XML form.
        let llama = "Use <function=example_function_name>{\"a\": 1}</function>";
        assert_eq!(detect(llama, none), None);
        let plain = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}";
        assert_eq!(detect(plain, none), None);
        assert_eq!(
            detect(plain, |t| t == "<TOOLCALL>"),
            Some(ToolFormat::NanoV2)
        );
        assert_eq!(
            detect(plain, |t| t == "<tool_call>"),
            Some(ToolFormat::Hermes)
        );
    }

    /// The committed fixtures: the Nemotron-H ones render results as `<TOOL_RESPONSE>`,
    /// and every fixture vocabulary holds `<TOOLCALL>` (the Llama ones as Llama-Nemotron).
    #[test]
    fn detect_on_the_committed_fixtures() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut seen = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let dir = entry.unwrap().path();
            let Ok(config) = std::fs::read_to_string(dir.join("tokenizer_config.json")) else {
                continue;
            };
            let config: Value = serde_json::from_str(&config).unwrap();
            let template = std::fs::read_to_string(dir.join("chat_template.jinja"))
                .ok()
                .or_else(|| config["chat_template"].as_str().map(str::to_string))
                .unwrap_or_default();
            let vocab: Vec<String> = config["added_tokens_decoder"]
                .as_object()
                .unwrap()
                .values()
                .map(|t| t["content"].as_str().unwrap().to_string())
                .collect();
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let has = |t: &str| vocab.iter().any(|v| v == t);
            // Nemotron 3's fixture speaks Qwen3-Coder XML; the others the Nano v2 form.
            let want = if name.starts_with("nemotron3") {
                ToolFormat::Qwen3Coder
            } else {
                ToolFormat::NanoV2
            };
            assert_eq!(detect(&template, has), Some(want), "{name}");
            if name.starts_with("nemotron") && !template.is_empty() {
                // The template alone decides, before the vocabulary is asked.
                assert_eq!(detect(&template, |_| false), Some(want), "{name}");
            }
            seen += 1;
        }
        assert!(
            seen >= 5,
            "only {seen} fixtures found under {}",
            root.display()
        );
    }
}
