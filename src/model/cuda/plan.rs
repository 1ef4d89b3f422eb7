//! The memory plan of a GPU session: how many positions its KV caches hold and how many
//! tokens one step processes, chosen before `session::GpuSession::new` allocates them.
//! Plain Rust on the config (no device), so it builds and is tested without the `cuda`
//! feature.
//!
//! Invariant: the byte counts here are upper bounds of what `GpuSession::new` allocates
//! for the same config and plan (KV caches, activation buffers) and of what a
//! `GpuCheckpoint` copies; when they grow there, they grow here.

use super::GpuModelError;
use crate::backend::DType;
use crate::model::{LayerKind, NemotronHConfig};
use crate::state::CacheConfig;

/// How big a session's buffers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Most positions a session holds (KV cache capacity).
    pub max_context: usize,
    /// Most tokens one forward step processes (prompts are cut into chunks of this size).
    pub prefill_chunk: usize,
}

/// Device bytes reserved besides the KV caches, the activations and the checkpoints:
/// cuBLAS's workspace and the allocator's slack.
const SLACK: usize = 256 << 20;

/// KV bytes per position over every attention layer (`GpuKvCache` keeps f32 scales per
/// position and KV head beside K and V, whatever the dtype).
pub fn kv_bytes_per_position(c: &NemotronHConfig, kv: DType) -> usize {
    let attn = c
        .layers
        .iter()
        .filter(|k| **k == LayerKind::Attention)
        .count();
    attn * 2 * c.num_key_value_heads * (c.head_dim * kv.size() + 4)
}

/// Device bytes of one checkpoint (`GpuCheckpoint`): every Mamba layer's conv window and
/// SSM state.
pub fn checkpoint_bytes(c: &NemotronHConfig, ssm: DType) -> usize {
    let mamba = c.layers.iter().filter(|k| **k == LayerKind::Mamba2).count();
    mamba
        * ((c.conv_kernel - 1) * c.conv_dim() * 4
            + c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size * ssm.size())
}

/// f32 words per token of the MoE layers' scratch (router logits, the chosen experts'
/// hidden and output rows, the shared expert, the latent rows), generously.
fn moe_per_token(c: &NemotronHConfig) -> usize {
    if !c.layers.contains(&LayerKind::Moe) {
        return 0;
    }
    let inner = c.moe_latent_size.unwrap_or(c.hidden_size);
    c.n_routed_experts
        + c.num_experts_per_tok * (c.moe_intermediate_size + inner + 2)
        + c.moe_shared_expert_intermediate_size
        + 2 * inner
        + c.hidden_size
}

/// Activation buffers of a session for `n` tokens per step: an upper bound of
/// `GpuSession::new`'s (every buffer counted as f32, every mixer's buffers whether the
/// model has that mixer or not).
pub fn activation_bytes(c: &NemotronHConfig, n: usize) -> usize {
    let per_token = 4 * c.hidden_size
        + c.in_proj_dim()
        + c.conv_dim()
        + 2 * c.d_inner()
        + 3 * c.num_attention_heads * c.head_dim
        + 2 * c.num_key_value_heads * c.head_dim
        + 2 * c.intermediate_size
        + moe_per_token(c);
    4 * (n * per_token + 2 * c.vocab_size)
}

/// The largest context whose KV cache fits the device: what is free after the weights,
/// less `reserve` (activation buffers, checkpoints, cuBLAS and allocator slack), with a
/// tenth of the rest kept free too, over the KV bytes one position takes in every
/// attention layer; at most `model_max`. A model without attention layers takes
/// `model_max` (its state does not grow with the context).
pub fn fit_context(
    free: usize,
    reserve: usize,
    bytes_per_position: usize,
    model_max: usize,
) -> usize {
    if bytes_per_position == 0 {
        return model_max;
    }
    let usable = free.saturating_sub(reserve) / 10 * 9;
    (usable / bytes_per_position).min(model_max)
}

/// The plan of a session of a model of config `c` with caches `cache`: `context`
/// positions when given; otherwise what fits `free()` (the device's free bytes, asked only
/// then, after the weights are up), keeping room for the activation buffers of
/// `prefill_chunk` tokens, `max_checkpoints` checkpoints, 256 MiB of slack and a tenth of
/// the rest, at most the model's `max_position_embeddings`. Refused in one line when not
/// even one position fits.
pub fn plan_for(
    c: &NemotronHConfig,
    cache: CacheConfig,
    context: Option<usize>,
    prefill_chunk: usize,
    max_checkpoints: usize,
    free: impl FnOnce() -> Result<usize, GpuModelError>,
) -> Result<Plan, GpuModelError> {
    let max_context = match context {
        Some(n) => n,
        None => {
            let free = free()?;
            let reserve = activation_bytes(c, prefill_chunk)
                + max_checkpoints * checkpoint_bytes(c, cache.ssm_dtype)
                + SLACK;
            let per_pos = kv_bytes_per_position(c, cache.kv_dtype);
            let n = fit_context(free, reserve, per_pos, c.max_position_embeddings);
            if n < 1 {
                return Err(GpuModelError::Unsupported(format!(
                    "not enough free device memory for a KV cache: {} MiB free after the weights, {} KiB per position",
                    free >> 20,
                    per_pos >> 10
                )));
            }
            n
        }
    };
    Ok(Plan {
        max_context,
        prefill_chunk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> NemotronHConfig {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nemotron_h_tiny/config.json");
        NemotronHConfig::from_file(&dir).unwrap()
    }

    #[test]
    fn the_context_fits_what_is_free_after_the_reserve_and_never_exceeds_the_model() {
        let gib = 1usize << 30;
        // 10 GiB free, 2 GiB reserved: 90% of 8 GiB over 16 KiB per position.
        assert_eq!(fit_context(10 * gib, 2 * gib, 16 << 10, 1 << 20), 471_859);
        assert_eq!(fit_context(10 * gib, 2 * gib, 16 << 10, 131_072), 131_072);
        assert_eq!(fit_context(gib, 2 * gib, 16 << 10, 131_072), 0);
        // No attention layer: the state does not grow with the context.
        assert_eq!(fit_context(0, 0, 0, 4096), 4096);
    }

    #[test]
    fn a_given_context_is_taken_without_asking_the_device() {
        let plan = plan_for(&tiny(), CacheConfig::default(), Some(64), 8, 4, || {
            panic!("free memory asked for a given context")
        })
        .unwrap();
        assert_eq!(
            plan,
            Plan {
                max_context: 64,
                prefill_chunk: 8
            }
        );
    }

    #[test]
    fn without_a_context_the_plan_fits_the_free_memory_or_says_in_one_line_why_not() {
        let c = tiny();
        let cache = CacheConfig::default();
        // Plenty free: the model's own maximum.
        let plan = plan_for(&c, cache, None, 8, 4, || Ok(64 << 30)).unwrap();
        assert_eq!(plan.max_context, c.max_position_embeddings);
        // The reserve alone does not fit: refused, naming what was free.
        let reserve = activation_bytes(&c, 8) + 4 * checkpoint_bytes(&c, cache.ssm_dtype);
        let e = plan_for(&c, cache, None, 8, 4, || Ok(reserve))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("not enough free device memory for a KV cache"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        // A device error while asking is passed on.
        let e = plan_for(&c, cache, None, 8, 4, || {
            Err(GpuModelError::Unsupported("asked".into()))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "asked");
    }
}
