//! What a run needs in memory, from a model's shapes alone, before anything is allocated:
//! the fixed state of one sequence (Mamba conv windows and SSM states), the KV cache each
//! token adds, and the scratch a forward pass over `n` tokens allocates at its peak
//! (activations; each layer's buffers are freed before the next layer's).
//!
//! The scratch figures follow the CPU forward (`nemotron_h`, `mamba2`, `attention`,
//! `moe`, `llama`, `lm_head`) buffer by buffer, rounded up; they are estimates for
//! refusing what cannot fit (`nemo bench`) and for checking a file's claims (a sequence's
//! state larger than all the weights is no real model), not an allocator. All arithmetic
//! saturates: a claim past u64 is simply "too much".

use super::config::{LayerKind, NemotronHConfig};
use super::llama::LlamaConfig;
use crate::state::CacheConfig;

/// Bytes of an f32.
const F32: u64 = 4;

/// The memory a model's runs need, by what it scales with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunBytes {
    /// One sequence's fixed state, whatever its length.
    pub state: u64,
    /// KV cache bytes each token adds.
    pub kv_per_token: u64,
    /// Forward-pass scratch per token fed in one call (activations at the peak layer).
    pub scratch_per_token: u64,
    /// Scratch per token of context already in the cache, for a call of many tokens
    /// (attention widens the cached keys and values of a head for every query).
    pub scratch_per_past_token: u64,
    /// Logits and final-norm bytes per position whose logits are returned.
    pub logits_per_position: u64,
}

fn mul(a: &[u64]) -> u64 {
    a.iter().fold(1u64, |acc, &x| acc.saturating_mul(x))
}

fn sum(a: &[u64]) -> u64 {
    a.iter().fold(0u64, |acc, &x| acc.saturating_add(x))
}

/// KV bytes one attention layer adds per token: K and V rows, and FP8's one f32 scale
/// per (token, head) for each.
fn kv_row(nkv: u64, hd: u64, cache: CacheConfig) -> u64 {
    let size = cache.kv_dtype.size() as u64;
    let scales = if size == 1 { mul(&[2, F32, nkv]) } else { 0 };
    mul(&[2, nkv, hd, size]).saturating_add(scales)
}

impl RunBytes {
    /// Peak bytes of one sequence that has `context` tokens after a forward call of
    /// `batch` tokens returning `logits` positions: state + KV cache + scratch.
    pub fn run(&self, batch: u64, context: u64, logits: u64) -> u64 {
        // One token decodes against the cache in place; more widen it per head.
        let widened = if batch > 1 {
            self.scratch_per_past_token.saturating_mul(context)
        } else {
            0
        };
        self.state
            .saturating_add(self.kv_per_token.saturating_mul(context))
            .saturating_add(self.scratch_per_token.saturating_mul(batch))
            .saturating_add(widened)
            .saturating_add(self.logits_per_position.saturating_mul(logits))
    }

    pub fn nemotron_h(c: &NemotronHConfig, cache: CacheConfig) -> RunBytes {
        let u = |x: usize| x as u64;
        let (hs, h) = (u(c.hidden_size), u(c.mamba_num_heads));
        let di = mul(&[h, u(c.mamba_head_dim)]);
        let cd = di.saturating_add(mul(&[2, u(c.n_groups), u(c.ssm_state_size)]));
        let count = |k: LayerKind| u(c.layers.iter().filter(|l| **l == k).count());
        let ssm = mul(&[h, u(c.mamba_head_dim), u(c.ssm_state_size)]);
        let conv = mul(&[cd, u(c.conv_kernel.saturating_sub(1)), F32]);
        let state = count(LayerKind::Mamba2)
            .saturating_mul(conv.saturating_add(ssm.saturating_mul(u(cache.ssm_dtype.size()))));
        let (nh, nkv, hd) = (
            u(c.num_attention_heads),
            u(c.num_key_value_heads),
            u(c.head_dim),
        );
        let kv_per_token = count(LayerKind::Attention).saturating_mul(kv_row(nkv, hd, cache));
        // Per token of a call: x, normed, mixed; then the largest layer's buffers.
        let mamba = mul(&[5, di])
            .saturating_add(mul(&[4, cd]))
            .saturating_add(mul(&[3, h]));
        let attention = mul(&[hd, sum(&[mul(&[4, nh]), mul(&[2, nkv])])]);
        let mlp = u(c.intermediate_size);
        let inner = u(c.moe_latent_size.unwrap_or(c.hidden_size)).max(hs);
        let moe = u(c.n_routed_experts)
            .saturating_add(mul(&[3, inner]))
            .saturating_add(mul(&[
                2,
                u(c.moe_intermediate_size
                    .max(c.moe_shared_expert_intermediate_size)),
            ]));
        let has = |k: LayerKind| c.layers.contains(&k);
        let peak = [
            (LayerKind::Mamba2, mamba),
            (LayerKind::Attention, attention),
            (LayerKind::Mlp, mlp),
            (LayerKind::Moe, moe),
        ]
        .into_iter()
        .filter(|(k, _)| has(*k))
        .map(|(_, b)| b)
        .max()
        .unwrap_or(0);
        RunBytes {
            state,
            kv_per_token,
            scratch_per_token: mul(&[sum(&[mul(&[3, hs]), peak]), F32]),
            scratch_per_past_token: if has(LayerKind::Attention) {
                mul(&[2, nkv, hd, F32]).saturating_add(nh.saturating_mul(F32))
            } else {
                0
            },
            logits_per_position: mul(&[sum(&[u(c.vocab_size), hs]), F32]),
        }
    }

    pub fn llama(c: &LlamaConfig, cache: CacheConfig) -> RunBytes {
        let u = |x: usize| x as u64;
        let (hs, nh, nkv, hd) = (
            u(c.hidden_size),
            u(c.num_attention_heads),
            u(c.num_key_value_heads),
            u(c.head_dim),
        );
        let attention = mul(&[hd, sum(&[mul(&[4, nh]), mul(&[2, nkv])])]);
        RunBytes {
            state: 0,
            kv_per_token: u(c.num_hidden_layers).saturating_mul(kv_row(nkv, hd, cache)),
            // x, normed, out, gate and up, then attention's buffers.
            scratch_per_token: mul(&[
                sum(&[mul(&[3, hs]), mul(&[2, u(c.intermediate_size)]), attention]),
                F32,
            ]),
            scratch_per_past_token: mul(&[2, nkv, hd, F32]).saturating_add(nh.saturating_mul(F32)),
            logits_per_position: mul(&[sum(&[u(c.vocab_size), hs]), F32]),
        }
    }
}

/// `n` bytes for people: `512 B`, `3.2 MiB`, `18.4 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `MemAvailable` of /proc/meminfo in bytes; None where there is no such file.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line["MemAvailable:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DType;
    use crate::model::synthetic;

    fn cfg(name: &str) -> NemotronHConfig {
        NemotronHConfig::from_json(
            &synthetic::shape_config(name).unwrap(),
            std::path::Path::new(name),
        )
        .unwrap()
    }

    #[test]
    fn nano_9b_state_and_kv_match_the_published_shape() {
        let r = RunBytes::nemotron_h(&cfg("nano-9b-v2"), CacheConfig::default());
        // 27 Mamba layers × (128 heads × 80 × 128 state × 4 B + (10240 + 2 × 8 × 128) conv
        // channels × 3 past inputs × 4 B).
        assert_eq!(r.state, 27 * (128 * 80 * 128 * 4 + 12288 * 3 * 4));
        // 4 attention layers × K and V × 8 heads × 128 × 4 B.
        assert_eq!(r.kv_per_token, 4 * 2 * 8 * 128 * 4);
        let half = RunBytes::nemotron_h(
            &cfg("nano-9b-v2"),
            CacheConfig {
                ssm_dtype: DType::BF16,
                kv_dtype: DType::BF16,
            },
        );
        assert!(half.state < r.state && half.kv_per_token < r.kv_per_token);
    }

    #[test]
    fn claims_past_u64_saturate() {
        let mut c = cfg("tiny");
        c.ssm_state_size = usize::MAX;
        let r = RunBytes::nemotron_h(&c, CacheConfig::default());
        assert_eq!(r.state, u64::MAX);
        assert_eq!(r.run(u64::MAX, u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(5 << 40), "5.0 TiB");
    }
}
