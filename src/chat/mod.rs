//! Chat-level text handling: turning a conversation into a prompt (`template`) and
//! splitting the model's streamed output into reasoning and answer (`reasoning_parser`).
//!
//! Invariants:
//! - [`Message`] is the one conversation record shared by the engine, the agent and the
//!   UI; it serializes to the shape Hugging Face chat templates expect
//!   (`{"role", "content", "reasoning_content"?}`), and `reasoning_content` is omitted
//!   entirely when absent so templates can test it with `is defined`.
//! - Nothing here touches tokens or the model; both modules work on text only.

pub mod reasoning_parser;
pub mod session_store;
pub mod template;
pub mod template_sandbox;

use serde::{Deserialize, Serialize};

/// One turn of a conversation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The visible text of the turn (for the assistant: the answer, without reasoning).
    pub content: String,
    /// The assistant's reasoning, when it was kept apart from `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl Message {
    fn with_role(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
            reasoning_content: None,
        }
    }

    /// A `system` turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self::with_role("system", content)
    }

    /// A `user` turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::with_role("user", content)
    }

    /// An `assistant` turn with no separate reasoning.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::with_role("assistant", content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_without_reasoning_omits_the_field_in_json() {
        let json = serde_json::to_string(&Message::user("hi")).unwrap();
        assert_eq!(json, r#"{"role":"user","content":"hi"}"#);
    }

    #[test]
    fn message_round_trips_reasoning_content() {
        let mut m = Message::assistant("42");
        m.reasoning_content = Some("think".into());
        let json = serde_json::to_string(&m).unwrap();
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let plain: Message = serde_json::from_str(r#"{"role":"system","content":"s"}"#).unwrap();
        assert_eq!(plain, Message::system("s"));
    }
}
