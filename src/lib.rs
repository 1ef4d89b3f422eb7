//! nemo: NVIDIA Nemotron models in one process, on the CPU (and CUDA, later).
//!
//! Data flows one way: `chat` (conversation, template) → `engine` (session, generation
//! loop, sampler) → `model` + `state` → `backend`. The binary's `cli` sits on top.

pub mod backend;
pub mod chat;
pub mod config;
pub mod engine;
pub mod fuzzing;
pub mod hub;
pub mod model;
pub mod protocol;
pub mod state;
pub mod tui;
