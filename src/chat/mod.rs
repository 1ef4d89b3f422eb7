//! Chat-level text handling: turning a conversation into a prompt (`template`) and
//! splitting the model's streamed output into reasoning, answer and tool calls
//! (`stream_parser`, over `reasoning_parser` and the per-family `tool_parser`).
//!
//! Invariants:
//! - The conversation record itself is `protocol::Message`, shared by every layer.
//! - Nothing here touches tokens or the model; these modules work on text only.
//! - `session_store` keeps chats on disk (`export` writes one as Markdown, `clock` gives
//!   its ids and timestamps); `model_identity` fingerprints which model one ran on from
//!   file headers and sizes, never from whole weight files.

pub mod clock;
pub mod export;
pub mod model_identity;
pub mod reasoning_parser;
pub mod session_store;
pub mod stream_parser;
pub mod template;
pub mod template_sandbox;
pub mod tool_parser;
