//! Chat-level text handling: turning a conversation into a prompt (`template`) and
//! splitting the model's streamed output into reasoning and answer (`reasoning_parser`).
//!
//! Invariants:
//! - The conversation record itself is `protocol::Message`, shared by every layer.
//! - Nothing here touches tokens or the model; both modules work on text only.
//! - `session_store` keeps chats on disk; `model_identity` fingerprints which model one
//!   ran on from file headers and sizes, never from whole weight files.

pub mod model_identity;
pub mod reasoning_parser;
pub mod session_store;
pub mod template;
