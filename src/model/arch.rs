//! The architectures nemo runs, behind one type the engine and the commands use.

use super::llama::Llama;
use super::lm_head::Logits;
use super::memory::RunBytes;
use super::nemotron_h::NemotronH;
use super::ModelError;
use crate::backend::DType;
use crate::state::{CacheConfig, SequenceState};

pub enum Model {
    NemotronH(NemotronH),
    Llama(Llama),
}

impl Model {
    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        want: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        match self {
            Model::NemotronH(m) => m.forward(tokens, state, want),
            Model::Llama(m) => m.forward(tokens, state, want),
        }
    }

    pub fn new_state(&self, cache: CacheConfig) -> SequenceState {
        match self {
            Model::NemotronH(m) => m.new_state(cache),
            Model::Llama(m) => m.new_state(cache),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Model::NemotronH(m) => m.config.vocab_size,
            Model::Llama(m) => m.config.vocab_size,
        }
    }

    /// `max_position_embeddings`.
    pub fn context(&self) -> usize {
        match self {
            Model::NemotronH(m) => m.config.max_position_embeddings,
            Model::Llama(m) => m.config.max_position_embeddings,
        }
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            Model::NemotronH(m) => &m.config.eos_token_id,
            Model::Llama(m) => &m.config.eos_token_id,
        }
    }

    pub fn weight_dtype(&self) -> DType {
        match self {
            Model::NemotronH(m) => m.weight_dtype,
            Model::Llama(m) => m.weight_dtype,
        }
    }

    pub fn weight_bytes(&self) -> usize {
        match self {
            Model::NemotronH(m) => m.weight_bytes,
            Model::Llama(m) => m.weight_bytes,
        }
    }

    /// Weight bytes one decode step reads (all of them but the embedding table; MoE
    /// models read fewer, only their chosen experts).
    pub fn bytes_per_token(&self) -> usize {
        match self {
            Model::NemotronH(m) => m.bytes_per_token(),
            Model::Llama(m) => m.weight_bytes,
        }
    }

    /// What runs of this model need in memory, by what it scales with (`memory`).
    pub fn run_bytes(&self, cache: CacheConfig) -> RunBytes {
        match self {
            Model::NemotronH(m) => RunBytes::nemotron_h(&m.config, cache),
            Model::Llama(m) => RunBytes::llama(&m.config, cache),
        }
    }

    pub fn layer_count(&self) -> usize {
        match self {
            Model::NemotronH(m) => m.config.layers.len(),
            Model::Llama(m) => m.config.num_hidden_layers,
        }
    }

    /// Layer kinds in pattern form (`M`, `*`, `-`, `E`); Llama layers read `*-` each.
    pub fn pattern(&self) -> String {
        match self {
            Model::NemotronH(m) => m.config.pattern(),
            Model::Llama(m) => "*-".repeat(m.config.num_hidden_layers),
        }
    }

    /// One line for `/model` and reports.
    pub fn describe(&self) -> String {
        match self {
            Model::NemotronH(m) => format!(
                "NemotronH · hidden {} · {} layers",
                m.config.hidden_size,
                m.config.layers.len()
            ),
            Model::Llama(m) => format!(
                "Llama · hidden {} · {} layers",
                m.config.hidden_size, m.config.num_hidden_layers
            ),
        }
    }
}
