//! The Mamba2 mixer of Nemotron-H (transformers `NemotronHMamba2Mixer.torch_forward`):
//!
//! ```text
//! zxbcdt = in_proj(h);  z | xBC | dt
//! xBC    = silu(causal_conv1d(xBC) + bias)          (depthwise, kernel conv_kernel)
//! x | B | C = xBC;  B, C shared by the heads of a group
//! dt     = softplus(dt + dt_bias)   (chunked form: clamped below by time_step_min)
//! A      = -exp(A_log)
//! h_t    = exp(dt·A) h_{t-1} + dt · x_t ⊗ B_t;   y_t = C_t · h_t + D · x_t
//! out    = out_proj(gated_rms_norm(y, z))
//! ```
//!
//! `forward_chunked` is the SSD chunked form used for prompts (chunk-local quadratic part,
//! states passed between chunks, the same decomposition as `mamba2_chunk_scan`);
//! `step` is the one-step recurrence used for decode (`mamba2_selective_state_update`,
//! which, like the reference, does not clamp dt). The conv and both scans are the CPU ops
//! `backend::cpu::ssm::{causal_conv1d, ssd_chunked, ssm_step}`, the oracles of the CUDA
//! kernels, called on the in_proj output in place (the kernels' layouts).

use super::config::NemotronHConfig;
use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::cpu::ssm::{self, ScanShape};
use crate::backend::cpu::{matmul, ops};
use crate::state::mamba_state::SsmStore;
use crate::state::MambaState;

/// The mixer's intermediates, reused from layer to layer and call to call instead of fresh
/// zeroed vectors (their zeroing was part of a 200-token prefill's `memset` share, 1.96% →
/// 1.59% of its samples with the copy of z gone too). Every op writes all of the part it is
/// sized to, so stale contents are never read.
#[derive(Default)]
struct Buffers {
    zxbcdt: Vec<f32>,
    xbc: Vec<f32>,
    y: Vec<f32>,
}

thread_local! {
    static BUFFERS: std::cell::Cell<Buffers> = const {
        std::cell::Cell::new(Buffers { zxbcdt: Vec::new(), xbc: Vec::new(), y: Vec::new() })
    };
}

/// Runs `f` on this thread's buffers (taken out while it runs, so a nested call gets
/// fresh ones).
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    let mut b = BUFFERS.with(|c| c.take());
    let r = f(&mut b);
    BUFFERS.with(|c| c.set(b));
    r
}

pub struct Mamba2 {
    in_proj: Tensor,
    in_proj_bias: Option<Vec<f32>>,
    /// `[conv_dim, conv_kernel]`
    conv_w: Vec<f32>,
    conv_b: Vec<f32>,
    dt_bias: Vec<f32>,
    /// `-exp(A_log)`
    a: Vec<f32>,
    d: Vec<f32>,
    norm_w: Vec<f32>,
    out_proj: Tensor,
    out_proj_bias: Option<Vec<f32>>,
    heads: usize,
    head_dim: usize,
    d_state: usize,
    n_groups: usize,
    d_inner: usize,
    conv_dim: usize,
    kernel: usize,
    chunk_size: usize,
    dt_min: f32,
    eps: f32,
}

/// A Mamba2 mixer's parameters as the forward pass uses them, whatever file they came
/// from: the safetensors names (`Mamba2::load`) or llama.cpp's GGUF names
/// (`nemotron_h_gguf`, which stores `A` itself rather than `A_log`).
pub struct Mamba2Weights {
    /// `[in_proj_dim, hidden]`
    pub in_proj: Tensor,
    pub in_proj_bias: Option<Vec<f32>>,
    /// `[conv_dim, conv_kernel]`, row-major.
    pub conv_w: Vec<f32>,
    /// `[conv_dim]` (zeros when the checkpoint has no conv bias).
    pub conv_b: Vec<f32>,
    /// `[heads]`
    pub dt_bias: Vec<f32>,
    /// `A = -exp(A_log)`, `[heads]`.
    pub a: Vec<f32>,
    /// `[heads]`
    pub d: Vec<f32>,
    /// Gated RMSNorm weight, `[d_inner]`.
    pub norm_w: Vec<f32>,
    /// `[hidden, d_inner]`
    pub out_proj: Tensor,
    pub out_proj_bias: Option<Vec<f32>>,
}

impl Mamba2 {
    pub fn load(cfg: &NemotronHConfig, w: &WeightStore, p: &str) -> Result<Self, ModelError> {
        let (h, di, cd, k) = (
            cfg.mamba_num_heads,
            cfg.d_inner(),
            cfg.conv_dim(),
            cfg.conv_kernel,
        );
        let a_log = w.get_squeezed(&format!("{p}.A_log"), &[h])?.to_f32();
        let bias = |name: &str, n: usize, on: bool| -> Result<Option<Vec<f32>>, ModelError> {
            let full = format!("{p}.{name}");
            if on || w.contains(&full) {
                Ok(Some(w.get(&full, &[n])?.to_f32()))
            } else {
                Ok(None)
            }
        };
        let weights = Mamba2Weights {
            in_proj: w.get(
                &format!("{p}.in_proj.weight"),
                &[cfg.in_proj_dim(), cfg.hidden_size],
            )?,
            in_proj_bias: bias("in_proj.bias", cfg.in_proj_dim(), cfg.use_bias)?,
            conv_w: w
                .get_squeezed(&format!("{p}.conv1d.weight"), &[cd, 1, k])?
                .to_f32(),
            conv_b: if cfg.use_conv_bias {
                w.get(&format!("{p}.conv1d.bias"), &[cd])?.to_f32()
            } else {
                vec![0.0; cd]
            },
            dt_bias: w.get_squeezed(&format!("{p}.dt_bias"), &[h])?.to_f32(),
            a: a_log.iter().map(|x| -x.exp()).collect(),
            d: w.get_squeezed(&format!("{p}.D"), &[h])?.to_f32(),
            norm_w: w.get(&format!("{p}.norm.weight"), &[di])?.to_f32(),
            out_proj: w.get(&format!("{p}.out_proj.weight"), &[cfg.hidden_size, di])?,
            out_proj_bias: bias("out_proj.bias", cfg.hidden_size, cfg.use_bias)?,
        };
        Ok(Self::new(cfg, weights))
    }

    /// The mixer from parameters already checked against `cfg`'s shapes.
    pub fn new(cfg: &NemotronHConfig, w: Mamba2Weights) -> Self {
        Mamba2 {
            in_proj: w.in_proj,
            in_proj_bias: w.in_proj_bias,
            conv_w: w.conv_w,
            conv_b: w.conv_b,
            dt_bias: w.dt_bias,
            a: w.a,
            d: w.d,
            norm_w: w.norm_w,
            out_proj: w.out_proj,
            out_proj_bias: w.out_proj_bias,
            heads: cfg.mamba_num_heads,
            head_dim: cfg.mamba_head_dim,
            d_state: cfg.ssm_state_size,
            n_groups: cfg.n_groups,
            d_inner: cfg.d_inner(),
            conv_dim: cfg.conv_dim(),
            kernel: cfg.conv_kernel,
            chunk_size: cfg.chunk_size,
            dt_min: cfg.time_step_min,
            eps: cfg.layer_norm_epsilon,
        }
    }

    fn shape(&self) -> ScanShape {
        ScanShape {
            heads: self.heads,
            head_dim: self.head_dim,
            d_state: self.d_state,
            n_groups: self.n_groups,
        }
    }

    /// Projection and conv shared by both forms: `bufs.zxbcdt` ← in_proj(x) `[n,
    /// in_proj_dim]` (z is its first d_inner columns), `bufs.xbc` ← xBC after the conv +
    /// SiLU `[n, conv_dim]`, `bufs.y` sized `[n, d_inner]` for the scan; the conv window
    /// moves on.
    fn project(&self, x: &[f32], n: usize, state: &mut MambaState, bufs: &mut Buffers) {
        let pd = self.in_proj.shape[0];
        let (di, cd, k) = (self.d_inner, self.conv_dim, self.kernel);
        // `resize` zero-fills only what grows; the ops below overwrite the rest.
        bufs.zxbcdt.resize(n * pd, 0.0);
        bufs.xbc.resize(n * cd, 0.0);
        bufs.y.resize(n * di, 0.0);
        let zxbcdt = &mut bufs.zxbcdt;
        matmul(x, n, self.in_proj.mat(), zxbcdt);
        if let Some(b) = &self.in_proj_bias {
            zxbcdt
                .chunks_exact_mut(pd)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        }
        ssm::causal_conv1d(
            zxbcdt,
            di,
            pd,
            n,
            &mut state.conv_state,
            &self.conv_w,
            &self.conv_b,
            &mut bufs.xbc,
            cd,
            k,
        );
    }

    /// `out = out_proj(gated_rms_norm(y, z))`, z read in place from zxbcdt.
    fn finish(&self, bufs: &mut Buffers, n: usize, out: &mut [f32]) {
        ops::gated_rms_norm_strided(
            &mut bufs.y,
            &bufs.zxbcdt,
            self.in_proj.shape[0],
            &self.norm_w,
            self.d_inner / self.n_groups,
            self.eps,
        );
        matmul(&bufs.y, n, self.out_proj.mat(), out);
        if let Some(b) = &self.out_proj_bias {
            let hdim = b.len();
            out.chunks_exact_mut(hdim)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        }
    }

    /// Prompt path: `n` tokens `x` `[n, hidden]` → `out` `[n, hidden]`, state updated.
    pub fn forward_chunked(&self, x: &[f32], n: usize, state: &mut MambaState, out: &mut [f32]) {
        with_buffers(|bufs| {
            self.project(x, n, state, bufs);
            let (sh, pd) = (self.shape(), self.in_proj.shape[0]);
            macro_rules! scan {
                ($st:expr) => {
                    ssm::ssd_chunked(
                        &sh,
                        n,
                        self.chunk_size,
                        &bufs.xbc,
                        &bufs.zxbcdt,
                        self.d_inner + self.conv_dim,
                        pd,
                        &self.dt_bias,
                        &self.a,
                        &self.d,
                        self.dt_min,
                        $st,
                        &mut bufs.y,
                    )
                };
            }
            match &mut state.ssm {
                SsmStore::F32(st) => scan!(st),
                SsmStore::F16(st) => scan!(st),
                SsmStore::BF16(st) => scan!(st),
            }
            self.finish(bufs, n, out);
        })
    }

    /// Decode path: one token.
    pub fn step(&self, x: &[f32], state: &mut MambaState, out: &mut [f32]) {
        with_buffers(|bufs| {
            self.project(x, 1, state, bufs);
            let sh = self.shape();
            macro_rules! step {
                ($st:expr) => {
                    ssm::ssm_step(
                        &sh,
                        &bufs.xbc,
                        &bufs.zxbcdt,
                        self.d_inner + self.conv_dim,
                        &self.dt_bias,
                        &self.a,
                        &self.d,
                        $st,
                        &mut bufs.y,
                    )
                };
            }
            match &mut state.ssm {
                SsmStore::F32(st) => step!(st),
                SsmStore::F16(st) => step!(st),
                SsmStore::BF16(st) => step!(st),
            }
            self.finish(bufs, 1, out);
        })
    }
}
