//! nemo: NVIDIA Nemotron models in one process, on the CPU or an NVIDIA GPU.
//!
//! Data flows one way: `cli` / `tui` → `protocol` (plain data shared by all) → `agent`
//! (tools, approvals, the tool loop) → `engine` (session, generation loop, sampler) →
//! `model` + `state` → `backend`; `chat` is the text layer (templates, parsers, sessions).

pub mod agent;
pub mod backend;
pub mod chat;
pub mod config;
pub mod engine;
pub mod fuzzing;
pub mod hub;
pub mod model;
pub mod protocol;
pub mod remote;
pub mod serve;
pub mod state;
pub mod tui;
