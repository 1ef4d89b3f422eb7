//! The remote model's own tokenizer and chat template, held here (`--tokenizer DIR` or a
//! `.gguf`): the two-request budget path renders the conversation with them and continues
//! the answer through `/v1/completions`, as the Nemotron team's ThinkingBudgetClient does.
//! The thinking conventions of the template (system flag, `enable_thinking`, `detailed
//! thinking`) come from the same reading the engine uses (`engine::prompt`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::RemoteError;
use crate::chat::template::{self, ChatTemplate};
use crate::chat::tool_parser;
use crate::engine::prompt::{thinking_style, PromptBuilder, PromptTools, ThinkingStyle};
use crate::model::files;
use crate::model::gguf::GgufFile;
use crate::model::gguf_tokenizer;
use crate::protocol::{Message, ToolFormat, ToolSpec};

pub struct LocalTemplate {
    path: PathBuf,
    builder: Mutex<PromptBuilder>,
    style: ThinkingStyle,
    tool_format: Option<ToolFormat>,
}

/// A tokenizer-and-template error naming `path`.
fn bad(path: &Path, msg: impl std::fmt::Display) -> RemoteError {
    RemoteError::Tokenizer(format!("{}: {msg}", path.display()))
}

impl LocalTemplate {
    /// From a folder (`tokenizer.json` and `tokenizer_config.json` or
    /// `chat_template.jinja`) or a `.gguf` file (its tokenizer and template metadata; the
    /// weights are not read).
    pub fn open(path: &Path) -> Result<LocalTemplate, RemoteError> {
        let (tokenizer, template) = if path.is_dir() {
            let tok_path = path.join("tokenizer.json");
            let bytes = files::read_bytes(&tok_path, files::MAX_TOKENIZER_BYTES)
                .map_err(|e| bad(&tok_path, e))?;
            let tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| bad(&tok_path, e))?;
            let (src, bos, eos) = template::load_from_dir(path)
                .map_err(|e| bad(path, e))?
                .ok_or_else(|| {
                    bad(
                        path,
                        "has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)",
                    )
                })?;
            let t = ChatTemplate::new(&src, bos, eos).map_err(|e| bad(path, e))?;
            (tok, t)
        } else {
            let g = GgufFile::open(path).map_err(|e| bad(path, e))?;
            let tok = gguf_tokenizer::from_gguf(&g).map_err(|e| bad(path, e))?;
            let src = g
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad(path, "has no tokenizer.chat_template"))?
                .to_string();
            let bos = gguf_tokenizer::token_text(&g, "tokenizer.ggml.bos_token_id");
            let eos = gguf_tokenizer::token_text(&g, "tokenizer.ggml.eos_token_id");
            let t = ChatTemplate::new(&src, bos, eos).map_err(|e| bad(path, e))?;
            (tok, t)
        };
        let template = Arc::new(template.with_name(path.display().to_string()));
        let tool_format =
            tool_parser::detect(template.source(), |t| tokenizer.token_to_id(t).is_some());
        let style = thinking_style(&template);
        Ok(LocalTemplate {
            path: path.to_path_buf(),
            builder: Mutex::new(PromptBuilder::new(template, Arc::new(tokenizer))),
            style,
            tool_format,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn style(&self) -> ThinkingStyle {
        self.style
    }

    /// The tool-call format the template and vocabulary show.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// The prompt text for `messages` with the generation prompt, and whether it ends
    /// inside `<think>`.
    pub fn prompt(
        &self,
        messages: &[Message],
        thinking: bool,
        tools: Option<(&[ToolSpec], ToolFormat)>,
    ) -> Result<(String, bool), RemoteError> {
        let tools = tools.map(|(specs, format)| PromptTools { specs, format });
        let mut b = self.builder.lock().unwrap_or_else(|e| e.into_inner());
        let plan = b
            .build(messages, thinking, tools.as_ref(), 1 << 22, &|| false)
            .map_err(|e| bad(&self.path, e))?;
        Ok((plan.text, plan.starts_in_reasoning))
    }

    /// Tokens of `text` by this tokenizer (for the budget arithmetic).
    pub fn count(&self, text: &str) -> usize {
        let b = self.builder.lock().unwrap_or_else(|e| e.into_inner());
        b.encode(text).map_or(0, |ids| ids.len())
    }
}

/// The thinking switch written into `messages` the way `style` reads it (the engine's
/// rule, `engine::prompt`): `/think` or `/no_think` in the system message, or `detailed
/// thinking on|off`; a template variable is sent as `chat_template_kwargs` instead.
pub fn with_thinking(messages: &[Message], style: ThinkingStyle, thinking: bool) -> Vec<Message> {
    let mut msgs = messages.to_vec();
    let (flag, seen): (&str, &[&str]) = match style {
        ThinkingStyle::TemplateVariable | ThinkingStyle::NoThinking => return msgs,
        ThinkingStyle::DetailedThinking if thinking => {
            ("detailed thinking on", &["detailed thinking"])
        }
        ThinkingStyle::DetailedThinking => ("detailed thinking off", &["detailed thinking"]),
        ThinkingStyle::SystemFlag if thinking => ("/think", &["/think", "/no_think"]),
        ThinkingStyle::SystemFlag => ("/no_think", &["/think", "/no_think"]),
    };
    match msgs.first_mut() {
        Some(m) if m.role == "system" => {
            if !seen.iter().any(|s| m.content.contains(s)) {
                m.content = if m.content.is_empty() {
                    flag.to_string()
                } else if style == ThinkingStyle::DetailedThinking {
                    format!("{flag}\n{}", m.content)
                } else {
                    format!("{}\n{flag}", m.content)
                };
            }
        }
        _ => msgs.insert(0, Message::system(flag)),
    }
    msgs
}

/// The family's thinking convention guessed from a model name, when no template is at
/// hand: Nano v2 reads a system flag, Llama-Nemotron `detailed thinking`, the rest (Nemotron
/// 3, Qwen3, another nemo) the template variable.
pub fn style_from_name(model: &str) -> ThinkingStyle {
    let m = model.to_ascii_lowercase();
    if m.contains("nemotron") && m.contains("nano") && m.contains("v2") {
        ThinkingStyle::SystemFlag
    } else if m.contains("llama") && m.contains("nemotron") {
        ThinkingStyle::DetailedThinking
    } else {
        ThinkingStyle::TemplateVariable
    }
}
