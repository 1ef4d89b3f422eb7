//! The full-screen chat interface (`nemo chat`). Depends on `protocol` (and the chat
//! data types), never on the model: `app` is the state and logic, `view` draws it,
//! `runner` is the loop, the rest are widgets and helpers.

pub mod app;
pub mod commands;
pub mod input;
pub mod markdown;
pub mod runner;
pub mod theme;
pub mod tool_card;
pub mod view;
