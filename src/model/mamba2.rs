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
//! which, like the reference, does not clamp dt).

use super::config::NemotronHConfig;
use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::cpu::{matmul, ops, simd};
use crate::state::MambaState;

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

    /// Projection, conv and activations shared by both forms. Returns (z, xBC after conv, dt after softplus).
    fn project(
        &self,
        x: &[f32],
        n: usize,
        state: &mut MambaState,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let pd = self.in_proj.shape[0];
        let mut zxbcdt = vec![0f32; n * pd];
        matmul(x, n, self.in_proj.mat(), &mut zxbcdt);
        if let Some(b) = &self.in_proj_bias {
            zxbcdt
                .chunks_exact_mut(pd)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        }
        let (di, cd, h, k) = (self.d_inner, self.conv_dim, self.heads, self.kernel);
        let mut z = vec![0f32; n * di];
        let mut xbc_in = vec![0f32; n * cd];
        let mut dt = vec![0f32; n * h];
        for t in 0..n {
            let row = &zxbcdt[t * pd..(t + 1) * pd];
            z[t * di..(t + 1) * di].copy_from_slice(&row[..di]);
            xbc_in[t * cd..(t + 1) * cd].copy_from_slice(&row[di..di + cd]);
            for j in 0..h {
                dt[t * h + j] = ops::softplus(row[di + cd + j] + self.dt_bias[j]);
            }
        }
        // Depthwise causal conv over [conv_state (k-1 past inputs) ++ new inputs].
        let past = k - 1;
        let mut xbc = vec![0f32; n * cd];
        let input = |s: isize, c: usize| -> f32 {
            if s < 0 {
                state.conv_state[(past as isize + s) as usize * cd + c]
            } else {
                xbc_in[s as usize * cd + c]
            }
        };
        for t in 0..n {
            for c in 0..cd {
                let mut acc = self.conv_b[c];
                for j in 0..k {
                    acc +=
                        self.conv_w[c * k + j] * input(t as isize - past as isize + j as isize, c);
                }
                xbc[t * cd + c] = ops::silu(acc);
            }
        }
        // New conv window: the last k-1 inputs.
        let mut window = vec![0f32; past * cd];
        for i in 0..past {
            let s = n as isize - past as isize + i as isize;
            for c in 0..cd {
                window[i * cd + c] = input(s, c);
            }
        }
        state.conv_state = window;
        (z, xbc, dt)
    }

    fn finish(&self, mut y: Vec<f32>, z: &[f32], n: usize, out: &mut [f32]) {
        ops::gated_rms_norm(
            &mut y,
            z,
            &self.norm_w,
            self.d_inner / self.n_groups,
            self.eps,
        );
        matmul(&y, n, self.out_proj.mat(), out);
        if let Some(b) = &self.out_proj_bias {
            let hdim = b.len();
            out.chunks_exact_mut(hdim)
                .for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        }
    }

    /// Prompt path: `n` tokens `x` `[n, hidden]` → `out` `[n, hidden]`, state updated.
    pub fn forward_chunked(&self, x: &[f32], n: usize, state: &mut MambaState, out: &mut [f32]) {
        let (z, xbc, mut dt) = self.project(x, n, state);
        for v in dt.iter_mut() {
            *v = v.max(self.dt_min);
        }
        let (h, p, ns, cd, di) = (
            self.heads,
            self.head_dim,
            self.d_state,
            self.conv_dim,
            self.d_inner,
        );
        let heads_per_group = h / self.n_groups;
        let cs = self.chunk_size;
        let bc = |t: usize, g: usize, which: usize| -> &[f32] {
            let off = t * cd + di + which * self.n_groups * ns + g * ns;
            &xbc[off..off + ns]
        };
        let per_head: Vec<Vec<f32>> = state.par_heads_map(|hh, st| {
            let g = hh / heads_per_group;
            let a = self.a[hh];
            let mut y = vec![0f32; n * p];
            let xh = |t: usize| &xbc[t * cd + hh * p..t * cd + (hh + 1) * p];
            let mut c0 = 0;
            while c0 < n {
                let l = cs.min(n - c0);
                // a_l = A·dt_l and its running sum within the chunk.
                let da: Vec<f32> = (0..l).map(|i| a * dt[(c0 + i) * h + hh]).collect();
                let mut cum = vec![0f32; l];
                let mut s = 0.0;
                for i in 0..l {
                    s += da[i];
                    cum[i] = s;
                }
                // Diagonal block: y_l += Σ_{s≤l} (C_l·B_s) exp(Σ_{i=s+1..l} a_i) dt_s x_s
                for li in 0..l {
                    let cl = bc(c0 + li, g, 1);
                    let yl = &mut y[(c0 + li) * p..(c0 + li + 1) * p];
                    let mut seg = 0f32; // Σ_{i=s+1..l} a_i, built from s = l downwards
                    for si in (0..=li).rev() {
                        if si < li {
                            seg += da[si + 1];
                        }
                        let w =
                            simd::dot(cl, bc(c0 + si, g, 0)) * seg.exp() * dt[(c0 + si) * h + hh];
                        simd::axpy(yl, w, xh(c0 + si));
                    }
                    // Off-diagonal: exp(cum_l) · (state_prev · C_l)
                    let decay = cum[li].exp();
                    for pi in 0..p {
                        yl[pi] += decay * simd::dot(&st[pi * ns..(pi + 1) * ns], cl);
                    }
                }
                // State passing: h ← exp(cum_last) h + Σ_s exp(cum_last − cum_s) dt_s x_s ⊗ B_s
                let total = cum[l - 1];
                let e = total.exp();
                st.iter_mut().for_each(|v| *v *= e);
                let mut seg = 0f32; // Σ_{i=s+1..last} a_i
                for si in (0..l).rev() {
                    if si + 1 < l {
                        seg += da[si + 1];
                    }
                    let w = seg.exp() * dt[(c0 + si) * h + hh];
                    let bs = bc(c0 + si, g, 0);
                    let xs = xh(c0 + si);
                    for pi in 0..p {
                        simd::axpy(&mut st[pi * ns..(pi + 1) * ns], w * xs[pi], bs);
                    }
                }
                c0 += l;
            }
            // D skip
            for t in 0..n {
                let xs = xh(t);
                for pi in 0..p {
                    y[t * p + pi] += self.d[hh] * xs[pi];
                }
            }
            y
        });
        let mut y = vec![0f32; n * di];
        for (hh, yh) in per_head.iter().enumerate() {
            for t in 0..n {
                y[t * di + hh * p..t * di + (hh + 1) * p].copy_from_slice(&yh[t * p..(t + 1) * p]);
            }
        }
        self.finish(y, &z, n, out);
    }

    /// Decode path: one token.
    pub fn step(&self, x: &[f32], state: &mut MambaState, out: &mut [f32]) {
        let (z, xbc, dt) = self.project(x, 1, state);
        let (h, p, ns, di) = (self.heads, self.head_dim, self.d_state, self.d_inner);
        let heads_per_group = h / self.n_groups;
        let per_head: Vec<Vec<f32>> = state.par_heads_map(|hh, st| {
            let g = hh / heads_per_group;
            let b = &xbc[di + g * ns..di + (g + 1) * ns];
            let c = &xbc[di + self.n_groups * ns + g * ns..di + self.n_groups * ns + (g + 1) * ns];
            let xs = &xbc[hh * p..(hh + 1) * p];
            let dth = dt[hh];
            let da = (dth * self.a[hh]).exp();
            let mut yh = vec![0f32; p];
            for pi in 0..p {
                let row = &mut st[pi * ns..(pi + 1) * ns];
                let coef = dth * xs[pi];
                for (s, bv) in row.iter_mut().zip(b) {
                    *s = *s * da + coef * bv;
                }
                yh[pi] = simd::dot(row, c) + self.d[hh] * xs[pi];
            }
            yh
        });
        self.finish(per_head.concat(), &z, 1, out);
    }
}
