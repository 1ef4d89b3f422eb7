//! Chat-level text handling: turning a conversation into a prompt (`template`) and
//! splitting the model's streamed output into reasoning and answer (`reasoning_parser`).
//!
//! Invariants:
//! - The conversation record itself is `protocol::Message`, shared by every layer.
//! - Nothing here touches tokens or the model; both modules work on text only.

pub mod reasoning_parser;
pub mod session_store;
pub mod template;
