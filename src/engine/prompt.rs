//! Turns a conversation into prompt tokens the way the model family expects, and finds
//! the token positions where earlier messages end (the session checkpoints there).
//!
//! Thinking on/off (DESIGN.md): templates that read `enable_thinking` (Nemotron 3) get
//! the variable; Llama-Nemotron templates get `detailed thinking on|off` as the system
//! message; otherwise (Nano v2 convention) `/think` or `/no_think` goes into the system
//! message. The variable is passed in every case; templates ignore what they don't read.
//! A template that never mentions thinking (SmolLM2 and other plain GGUF chat models) gets
//! no flag at all: the model would read `/no_think` as part of the system prompt.

use std::sync::Arc;

use tokenizers::Tokenizer;

use super::EngineError;
use crate::chat::template::ChatTemplate;
use crate::protocol::Message;

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

pub struct PromptBuilder {
    pub template: Arc<ChatTemplate>,
    pub tokenizer: Arc<Tokenizer>,
}

impl PromptBuilder {
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

    pub fn build(&self, messages: &[Message], thinking: bool) -> Result<PromptPlan, EngineError> {
        let (msgs, extra) = self.with_thinking(messages, thinking);
        let text = self
            .template
            .render(&msgs, true, &extra)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let ids = self.encode(&text)?;
        let mut boundaries = Vec::new();
        for k in 1..=msgs.len() {
            // A template may refuse a prefix (e.g. one that must end with a user turn);
            // then there is simply no checkpoint there.
            if let Ok(prefix) = self.template.render(&msgs[..k], false, &extra) {
                if text.starts_with(&prefix) && !prefix.is_empty() {
                    let pids = self.encode(&prefix)?;
                    if pids.len() < ids.len()
                        && ids.starts_with(&pids)
                        && boundaries.last() != Some(&pids.len())
                    {
                        boundaries.push(pids.len());
                    }
                }
            }
        }
        let starts_in_reasoning = text.trim_end().ends_with(THINK_START);
        Ok(PromptPlan {
            text,
            ids,
            boundaries,
            starts_in_reasoning,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_without_thinking_gets_no_flag() {
        let plain = ChatTemplate::new("{{ messages[0].content }}", None, None).unwrap();
        assert_eq!(thinking_style(&plain), ThinkingStyle::NoThinking);
        let nano = ChatTemplate::new("{% if '/no_think' in x %}{% endif %}", None, None).unwrap();
        assert_eq!(thinking_style(&nano), ThinkingStyle::SystemFlag);
    }
}
