//! Per-sequence state of a hybrid model, apart from the weights: Mamba conv + SSM states
//! and the attention KV cache, with the dtypes the user chose.
//!
//! Invariant: `SequenceState::len` tokens have been fed; every attention layer's KV cache
//! holds exactly `len` positions and every Mamba layer's state is the state after them.
//! A `Checkpoint` restores all of that at once (Mamba state cannot be rolled back token by
//! token, so checkpoints copy it; the KV cache is only truncated).

pub mod kv_cache;
pub mod mamba_state;

pub use kv_cache::KvCache;
pub use mamba_state::MambaState;

use crate::backend::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// f32 | f16 | bf16
    pub ssm_dtype: DType,
    /// f32 | f16 | bf16 | fp8_e4m3 | fp8_e5m2
    pub kv_dtype: DType,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ssm_dtype: DType::F32,
            kv_dtype: DType::F32,
        }
    }
}

#[derive(Clone, Debug)]
pub enum LayerState {
    Mamba(MambaState),
    Attention(KvCache),
    Stateless,
}

#[derive(Clone, Debug)]
pub struct SequenceState {
    pub layers: Vec<LayerState>,
    pub len: usize,
    pub cache: CacheConfig,
}

/// What one layer of a model keeps between tokens, with the sizes its state needs: the
/// model's side of [`SequenceState::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerShape {
    /// A Mamba2 mixer: a conv window of `conv_kernel - 1` inputs of `conv_dim` channels and
    /// an SSM state `[heads, head_dim, d_state]`.
    Mamba {
        conv_dim: usize,
        conv_kernel: usize,
        heads: usize,
        head_dim: usize,
        d_state: usize,
    },
    /// An attention layer: a KV cache of `kv_heads` heads of `head_dim`.
    Attention { kv_heads: usize, head_dim: usize },
    /// MLP and MoE layers keep nothing.
    Stateless,
}

/// What `SequenceState::restore` needs: the Mamba states (copied) and the length.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    mamba: Vec<Option<MambaState>>,
    pub len: usize,
}

impl Checkpoint {
    pub fn bytes(&self) -> usize {
        self.mamba.iter().flatten().map(|m| m.bytes()).sum()
    }
}

impl SequenceState {
    /// The empty sequence of a model whose layers are `layers`, in `cache`'s dtypes.
    pub fn new(layers: impl IntoIterator<Item = LayerShape>, cache: CacheConfig) -> Self {
        let layers = layers
            .into_iter()
            .map(|shape| match shape {
                LayerShape::Mamba {
                    conv_dim,
                    conv_kernel,
                    heads,
                    head_dim,
                    d_state,
                } => LayerState::Mamba(MambaState::new(
                    conv_dim,
                    conv_kernel,
                    heads,
                    head_dim,
                    d_state,
                    cache.ssm_dtype,
                )),
                LayerShape::Attention { kv_heads, head_dim } => {
                    LayerState::Attention(KvCache::new(cache.kv_dtype, kv_heads, head_dim))
                }
                LayerShape::Stateless => LayerState::Stateless,
            })
            .collect();
        SequenceState {
            layers,
            len: 0,
            cache,
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            mamba: self
                .layers
                .iter()
                .map(|l| match l {
                    LayerState::Mamba(m) => Some(m.clone()),
                    _ => None,
                })
                .collect(),
            len: self.len,
        }
    }

    /// Restores a checkpoint taken on this sequence at a length ≤ the KV caches' length
    /// whose tokens are still a prefix of the cached ones (the caller, `engine::Session`,
    /// guarantees it).
    pub fn restore(&mut self, snap: &Checkpoint) {
        for (layer, m) in self.layers.iter_mut().zip(&snap.mamba) {
            match (layer, m) {
                (LayerState::Mamba(dst), Some(src)) => dst.clone_from(src),
                (LayerState::Attention(kv), _) => kv.truncate(snap.len),
                _ => {}
            }
        }
        self.len = snap.len;
    }

    /// Back to the empty sequence.
    pub fn reset(&mut self) {
        for layer in &mut self.layers {
            match layer {
                LayerState::Mamba(m) => m.reset(),
                LayerState::Attention(kv) => kv.truncate(0),
                LayerState::Stateless => {}
            }
        }
        self.len = 0;
    }

    /// Bytes held by the caches now.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Mamba(m) => m.bytes(),
                LayerState::Attention(kv) => kv.bytes(),
                LayerState::Stateless => 0,
            })
            .sum()
    }
}
