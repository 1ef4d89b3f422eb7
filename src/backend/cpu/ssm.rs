//! The Mamba2 sequence ops on the CPU, with the layouts and arguments of the CUDA kernels
//! they are the oracles of (kernels/conv1d.cu, kernels/ssm.cu; launchers
//! `backend::cuda::{conv1d, ssm}`). `model::mamba2` calls them; the GPU tests compare the
//! kernels against them.
//!
//! - `causal_conv1d`: depthwise causal conv + bias + SiLU over `n` rows read with an
//!   offset and a stride (the xBC columns of the in_proj output), the window of the last
//!   `k - 1` inputs carried in `conv_state` `[k-1, cd]` (oldest first).
//! - `ssm_step`: one token of the selective-scan recurrence (decode;
//!   `selective_state_update`): dt = softplus(dt_raw + dt_bias), not clamped.
//! - `ssd_chunked`: `n` tokens in the SSD chunked form (prompts; `mamba_chunk_scan`): dt
//!   clamped below by `dt_min`, chunk-local quadratic part, states passed between chunks.
//!   It equals the recurrence up to rounding for any chunk length.
//!
//! Layouts (as the kernels'): `xbc` `[n, cd]` after the conv (x | B | C, cd = d_inner +
//! 2·n_groups·d_state), `dt_raw[dt_offset + t·dt_stride + head]` (the in_proj's dt columns
//! before softplus), `state` `[heads, head_dim, d_state]` in f32, f16 or bf16 (widened per
//! head, updated in f32, rounded back once per call), `y` `[n, heads·head_dim]` (before the
//! gated norm, D·x included). B and C are shared by the heads of a group.
//!
//! A buffer shorter than its shape needs is a caller's bug (shapes come from a validated
//! config) and panics, as `matmul` does.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{ops, simd};

/// Shape of one Mamba2 layer's scan (the config's `mamba_num_heads`, `mamba_head_dim`,
/// `ssm_state_size`, `n_groups`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanShape {
    pub heads: usize,
    pub head_dim: usize,
    pub d_state: usize,
    pub n_groups: usize,
}

impl ScanShape {
    /// heads · head_dim: the width of x and y.
    pub fn d_inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The width of xBC: x, then B and C of every group.
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.n_groups * self.d_state
    }

    /// Elements of one head's state (`[head_dim, d_state]`).
    pub fn head_state(&self) -> usize {
        self.head_dim * self.d_state
    }

    fn heads_per_group(&self) -> usize {
        self.heads / self.n_groups.max(1)
    }

    /// B (`which` 0) or C (1) of group `g` in one xBC row.
    fn bc<'a>(&self, row: &'a [f32], g: usize, which: usize) -> &'a [f32] {
        let off = self.d_inner() + which * self.n_groups * self.d_state + g * self.d_state;
        &row[off..off + self.d_state]
    }
}

/// A state element: f32, or a half-precision format the state is stored in.
pub trait StateElem: Copy + Send + Sync {
    /// Runs `f` on `s` as f32: in place for f32, else on a widened copy rounded back after.
    fn with_f32<R>(s: &mut [Self], f: impl FnOnce(&mut [f32]) -> R) -> R;
}

impl StateElem for f32 {
    fn with_f32<R>(s: &mut [f32], f: impl FnOnce(&mut [f32]) -> R) -> R {
        f(s)
    }
}

impl StateElem for f16 {
    fn with_f32<R>(s: &mut [f16], f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut w: Vec<f32> = s.iter().map(|x| x.to_f32()).collect();
        let r = f(&mut w);
        s.iter_mut()
            .zip(&w)
            .for_each(|(d, x)| *d = f16::from_f32(*x));
        r
    }
}

impl StateElem for bf16 {
    fn with_f32<R>(s: &mut [bf16], f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut w: Vec<f32> = s.iter().map(|x| x.to_f32()).collect();
        let r = f(&mut w);
        s.iter_mut()
            .zip(&w)
            .for_each(|(d, x)| *d = bf16::from_f32(*x));
        r
    }
}

fn need(op: &str, what: &str, have: usize, need: usize) {
    assert!(
        have >= need,
        "{op}: `{what}` holds {have} elements, the shape needs {need}"
    );
}

/// Depthwise causal conv1d + bias + SiLU over `n` rows `x[x_offset + t·x_stride ..][..cd]`
/// (kernels/conv1d.cu `conv1d_prefill_f32` + `conv1d_state_f32`, or `conv1d_update_f32`
/// for one row): `out[t, c] = silu(b[c] + Σ_j w[c, j] · input(t − (k−1) + j, c))`, where
/// inputs before the first row come from `conv_state` `[k-1, cd]` (oldest first);
/// `w` is `[cd, k]`; `out` `[n, cd]`. `conv_state` becomes the last `k - 1` inputs.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d(
    x: &[f32],
    x_offset: usize,
    x_stride: usize,
    n: usize,
    conv_state: &mut [f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    cd: usize,
    k: usize,
) {
    const OP: &str = "causal_conv1d";
    assert!(k >= 1, "{OP}: conv kernel {k}");
    if n == 0 {
        return;
    }
    let past = k - 1;
    need(OP, "x", x.len(), x_offset + (n - 1) * x_stride + cd);
    need(OP, "conv_state", conv_state.len(), past * cd);
    need(OP, "weight", w.len(), cd * k);
    need(OP, "bias", b.len(), cd);
    need(OP, "out", out.len(), n * cd);
    // Input `s` (negative: from the window) of channel `c`.
    let input = |st: &[f32], s: isize, c: usize| -> f32 {
        if s < 0 {
            st[(past as isize + s) as usize * cd + c]
        } else {
            x[x_offset + s as usize * x_stride + c]
        }
    };
    for t in 0..n {
        for c in 0..cd {
            let mut acc = b[c];
            for j in 0..k {
                acc += w[c * k + j] * input(conv_state, t as isize - past as isize + j as isize, c);
            }
            out[t * cd + c] = ops::silu(acc);
        }
    }
    // The new window: the last k-1 inputs (some still from the old window when n < k-1).
    let mut window = vec![0f32; past * cd];
    for i in 0..past {
        let s = n as isize - past as isize + i as isize;
        for c in 0..cd {
            window[i * cd + c] = input(conv_state, s, c);
        }
    }
    conv_state[..past * cd].copy_from_slice(&window);
}

/// One decode token of the selective scan (kernels/ssm.cu `ssm_update_*`): per head,
/// `dt = softplus(dt_raw[dt_offset + head] + dt_bias)` (not clamped, like the reference's
/// `selective_state_update`), `S ← exp(dt·A)·S + dt·x ⊗ B`, `y = S·C + D·x`. `xbc` is one
/// row `[cd]`, `y` `[d_inner]`. Heads run in parallel.
#[allow(clippy::too_many_arguments)]
pub fn ssm_step<T: StateElem>(
    s: &ScanShape,
    xbc: &[f32],
    dt_raw: &[f32],
    dt_offset: usize,
    dt_bias: &[f32],
    a: &[f32],
    d: &[f32],
    state: &mut [T],
    y: &mut [f32],
) {
    const OP: &str = "ssm_step";
    let (h, p, ns) = (s.heads, s.head_dim, s.d_state);
    need(OP, "xbc", xbc.len(), s.conv_dim());
    need(OP, "dt_raw", dt_raw.len(), dt_offset + h);
    need(OP, "dt_bias", dt_bias.len(), h);
    need(OP, "A", a.len(), h);
    need(OP, "D", d.len(), h);
    need(OP, "state", state.len(), h * s.head_state());
    need(OP, "y", y.len(), s.d_inner());
    let hpg = s.heads_per_group();
    state[..h * s.head_state()]
        .par_chunks_mut(s.head_state())
        .zip(y[..s.d_inner()].par_chunks_mut(p))
        .enumerate()
        .for_each(|(hh, (st, yh))| {
            let g = hh / hpg;
            let (b, c) = (s.bc(xbc, g, 0), s.bc(xbc, g, 1));
            let xs = &xbc[hh * p..(hh + 1) * p];
            let dth = ops::softplus(dt_raw[dt_offset + hh] + dt_bias[hh]);
            let da = (dth * a[hh]).exp();
            T::with_f32(st, |st| {
                for pi in 0..p {
                    let row = &mut st[pi * ns..(pi + 1) * ns];
                    let coef = dth * xs[pi];
                    for (sv, bv) in row.iter_mut().zip(b) {
                        *sv = *sv * da + coef * bv;
                    }
                    yh[pi] = simd::dot(row, c) + d[hh] * xs[pi];
                }
            });
        });
}

/// `n` prompt tokens of the selective scan in the SSD chunked form (kernels/ssm.cu
/// `ssd_scan_mma_*`), chunks of `chunk` tokens. Per head, with
/// `dt_t = max(softplus(dt_raw[dt_offset + t·dt_stride + head] + dt_bias), dt_min)` and
/// `a_t = A·dt_t`: within a chunk
/// `y_l = Σ_{s≤l} (C_l·B_s) exp(Σ_{i=s+1..l} a_i) dt_s x_s + exp(cum_l) (S·C_l)`, then the
/// state passes on: `S ← exp(cum_last) S + Σ_s exp(cum_last − cum_s) dt_s x_s ⊗ B_s`;
/// finally `y += D·x`. `xbc` `[n, cd]`, `y` `[n, d_inner]`. Heads run in parallel.
#[allow(clippy::too_many_arguments)]
pub fn ssd_chunked<T: StateElem>(
    s: &ScanShape,
    n: usize,
    chunk: usize,
    xbc: &[f32],
    dt_raw: &[f32],
    dt_offset: usize,
    dt_stride: usize,
    dt_bias: &[f32],
    a: &[f32],
    d: &[f32],
    dt_min: f32,
    state: &mut [T],
    y: &mut [f32],
) {
    const OP: &str = "ssd_chunked";
    assert!(chunk >= 1, "{OP}: chunk {chunk}");
    if n == 0 {
        return;
    }
    let (h, p, ns, cd, di) = (s.heads, s.head_dim, s.d_state, s.conv_dim(), s.d_inner());
    need(OP, "xbc", xbc.len(), n * cd);
    need(
        OP,
        "dt_raw",
        dt_raw.len(),
        dt_offset + (n - 1) * dt_stride + h,
    );
    need(OP, "dt_bias", dt_bias.len(), h);
    need(OP, "A", a.len(), h);
    need(OP, "D", d.len(), h);
    need(OP, "state", state.len(), h * s.head_state());
    need(OP, "y", y.len(), n * di);
    let hpg = s.heads_per_group();
    let row = |t: usize| &xbc[t * cd..(t + 1) * cd];
    let per_head: Vec<Vec<f32>> = state[..h * s.head_state()]
        .par_chunks_mut(s.head_state())
        .enumerate()
        .map(|(hh, st)| {
            let g = hh / hpg;
            let ah = a[hh];
            let dt: Vec<f32> = (0..n)
                .map(|t| {
                    ops::softplus(dt_raw[dt_offset + t * dt_stride + hh] + dt_bias[hh]).max(dt_min)
                })
                .collect();
            let xh = |t: usize| &row(t)[hh * p..(hh + 1) * p];
            let mut yh = vec![0f32; n * p];
            T::with_f32(st, |st| {
                let mut c0 = 0;
                while c0 < n {
                    let l = chunk.min(n - c0);
                    // a_l = A·dt_l and its running sum within the chunk.
                    let da: Vec<f32> = (0..l).map(|i| ah * dt[c0 + i]).collect();
                    let mut cum = vec![0f32; l];
                    let mut sum = 0.0;
                    for i in 0..l {
                        sum += da[i];
                        cum[i] = sum;
                    }
                    // Diagonal block: y_l += Σ_{s≤l} (C_l·B_s) exp(Σ_{i=s+1..l} a_i) dt_s x_s
                    for li in 0..l {
                        let cl = s.bc(row(c0 + li), g, 1);
                        let yl = &mut yh[(c0 + li) * p..(c0 + li + 1) * p];
                        let mut seg = 0f32; // Σ_{i=s+1..l} a_i, built from s = l downwards
                        for si in (0..=li).rev() {
                            if si < li {
                                seg += da[si + 1];
                            }
                            let w =
                                simd::dot(cl, s.bc(row(c0 + si), g, 0)) * seg.exp() * dt[c0 + si];
                            simd::axpy(yl, w, xh(c0 + si));
                        }
                        // Off-diagonal: exp(cum_l) · (state_prev · C_l)
                        let decay = cum[li].exp();
                        for pi in 0..p {
                            yl[pi] += decay * simd::dot(&st[pi * ns..(pi + 1) * ns], cl);
                        }
                    }
                    // State passing: S ← exp(cum_last) S + Σ_s exp(cum_last − cum_s) dt_s x_s ⊗ B_s
                    let e = cum[l - 1].exp();
                    st.iter_mut().for_each(|v| *v *= e);
                    let mut seg = 0f32; // Σ_{i=s+1..last} a_i
                    for si in (0..l).rev() {
                        if si + 1 < l {
                            seg += da[si + 1];
                        }
                        let w = seg.exp() * dt[c0 + si];
                        let bs = s.bc(row(c0 + si), g, 0);
                        let xs = xh(c0 + si);
                        for pi in 0..p {
                            simd::axpy(&mut st[pi * ns..(pi + 1) * ns], w * xs[pi], bs);
                        }
                    }
                    c0 += l;
                }
            });
            // D skip
            for t in 0..n {
                let xs = xh(t);
                for pi in 0..p {
                    yh[t * p + pi] += d[hh] * xs[pi];
                }
            }
            yh
        })
        .collect();
    for (hh, yh) in per_head.iter().enumerate() {
        for t in 0..n {
            y[t * di + hh * p..t * di + (hh + 1) * p].copy_from_slice(&yh[t * p..(t + 1) * p]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: reproducible inputs in [-a, a).
    struct Rng(u64);
    impl Rng {
        fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
                })
                .collect()
        }
    }

    struct Case {
        sh: ScanShape,
        n: usize,
        xbc: Vec<f32>,
        /// `[n, dt_stride]` with the dt columns at `DT_OFFSET`.
        dt_raw: Vec<f32>,
        dt_bias: Vec<f32>,
        a: Vec<f32>,
        d: Vec<f32>,
        state: Vec<f32>,
    }

    const DT_OFFSET: usize = 3;

    impl Case {
        fn new(sh: ScanShape, n: usize, seed: u64) -> Self {
            let mut r = Rng(seed | 1);
            Case {
                sh,
                n,
                xbc: r.vec(n * sh.conv_dim(), 1.0),
                dt_raw: r.vec(n * Case::stride(&sh), 3.0),
                dt_bias: r.vec(sh.heads, 1.0),
                a: r.vec(sh.heads, 1.0)
                    .iter()
                    .map(|v| -(v + 1.5).exp())
                    .collect(),
                d: r.vec(sh.heads, 1.0),
                state: r.vec(sh.heads * sh.head_state(), 0.5),
            }
        }
        fn stride(sh: &ScanShape) -> usize {
            sh.heads + DT_OFFSET + 2
        }
        /// (y, state) of the chunked form with chunks of `chunk` and floor `dt_min`.
        fn chunked(&self, chunk: usize, dt_min: f32) -> (Vec<f32>, Vec<f32>) {
            let mut st = self.state.clone();
            let mut y = vec![f32::NAN; self.n * self.sh.d_inner()];
            ssd_chunked(
                &self.sh,
                self.n,
                chunk,
                &self.xbc,
                &self.dt_raw,
                DT_OFFSET,
                Case::stride(&self.sh),
                &self.dt_bias,
                &self.a,
                &self.d,
                dt_min,
                &mut st,
                &mut y,
            );
            (y, st)
        }
        /// (y, state) of `n` decode steps, one token at a time.
        fn stepped(&self) -> (Vec<f32>, Vec<f32>) {
            let (cd, di, stride) = (
                self.sh.conv_dim(),
                self.sh.d_inner(),
                Case::stride(&self.sh),
            );
            let mut st = self.state.clone();
            let mut y = vec![f32::NAN; self.n * di];
            for t in 0..self.n {
                ssm_step(
                    &self.sh,
                    &self.xbc[t * cd..(t + 1) * cd],
                    &self.dt_raw,
                    t * stride + DT_OFFSET,
                    &self.dt_bias,
                    &self.a,
                    &self.d,
                    &mut st,
                    &mut y[t * di..(t + 1) * di],
                );
            }
            (y, st)
        }
    }

    fn assert_near(what: &str, got: &[f32], want: &[f32], rel: f32) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= rel * scale,
                "{what}: at {i} got {g} want {w} (bound {rel} × {scale})"
            );
        }
    }

    fn shapes() -> [ScanShape; 2] {
        [
            ScanShape {
                heads: 4,
                head_dim: 8,
                d_state: 16,
                n_groups: 2,
            },
            ScanShape {
                heads: 3,
                head_dim: 5,
                d_state: 7,
                n_groups: 3,
            },
        ]
    }

    #[test]
    fn the_chunked_scan_equals_the_token_by_token_recurrence_for_any_chunk_length() {
        for (i, sh) in shapes().into_iter().enumerate() {
            let c = Case::new(sh, 37, 11 + i as u64);
            // No floor: the recurrence does not clamp dt.
            let (want_y, want_s) = c.stepped();
            for chunk in [1, 4, 16, 37, 64] {
                let (y, st) = c.chunked(chunk, f32::NEG_INFINITY);
                assert_near(&format!("{sh:?} chunk {chunk} y"), &y, &want_y, 2e-5);
                assert_near(&format!("{sh:?} chunk {chunk} state"), &st, &want_s, 2e-5);
            }
        }
    }

    #[test]
    fn the_chunked_scan_clamps_dt_below_at_dt_min_and_the_step_does_not() {
        let sh = shapes()[0];
        let mut c = Case::new(sh, 1, 5);
        // softplus(-30) ≈ 9e-14: far below the floor.
        c.dt_raw.iter_mut().for_each(|v| *v = -30.0);
        c.dt_bias.iter_mut().for_each(|v| *v = 0.0);
        let (stepped, _) = c.stepped();
        let (clamped, _) = c.chunked(8, 0.5);
        let (unclamped, _) = c.chunked(8, f32::NEG_INFINITY);
        assert_near("no floor", &unclamped, &stepped, 1e-6);
        assert!(
            clamped
                .iter()
                .zip(&stepped)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "dt_min 0.5 changed nothing"
        );
    }

    /// One head, one channel, d_state 1, by hand: S' = e^{dt·A}·S + dt·x·B, y = S'·C + D·x.
    #[test]
    fn one_step_follows_the_recurrence_written_out() {
        let sh = ScanShape {
            heads: 1,
            head_dim: 1,
            d_state: 1,
            n_groups: 1,
        };
        let (x, b, c, s0, dt_raw, dt_bias, a, d) =
            (2.0f32, 3.0f32, 0.5f32, 4.0f32, 0.25, 0.75, -0.5, 0.1);
        let dt = (1.0f32 + 1.0f32.exp()).ln(); // softplus(0.25 + 0.75)
        let s1 = (dt * a).exp() * s0 + dt * x * b;
        let y_want = s1 * c + d * x;
        let mut st = [s0];
        let mut y = [0.0];
        ssm_step(
            &sh,
            &[x, b, c],
            &[dt_raw],
            0,
            &[dt_bias],
            &[a],
            &[d],
            &mut st,
            &mut y,
        );
        assert!((st[0] - s1).abs() < 1e-5, "{} vs {s1}", st[0]);
        assert!((y[0] - y_want).abs() < 1e-5, "{} vs {y_want}", y[0]);
    }

    #[test]
    fn a_half_precision_state_is_updated_in_f32_and_rounded_once() {
        let sh = shapes()[1];
        let c = Case::new(sh, 1, 9);
        let start: Vec<bf16> = c.state.iter().map(|v| bf16::from_f32(*v)).collect();
        let mut wide: Vec<f32> = start.iter().map(|v| v.to_f32()).collect();
        let mut narrow = start.clone();
        let (mut y32, mut y16) = (vec![0.0; sh.d_inner()], vec![0.0; sh.d_inner()]);
        ssm_step(
            &sh, &c.xbc, &c.dt_raw, DT_OFFSET, &c.dt_bias, &c.a, &c.d, &mut wide, &mut y32,
        );
        ssm_step(
            &sh,
            &c.xbc,
            &c.dt_raw,
            DT_OFFSET,
            &c.dt_bias,
            &c.a,
            &c.d,
            &mut narrow,
            &mut y16,
        );
        assert_eq!(y16, y32);
        let rounded: Vec<bf16> = wide.iter().map(|v| bf16::from_f32(*v)).collect();
        assert_eq!(narrow, rounded);
    }

    /// cd 1, k 3, by hand: out_t = silu(b + w0·in_{t-2} + w1·in_{t-1} + w2·in_t).
    #[test]
    fn the_conv_reads_the_window_then_the_strided_rows_and_keeps_the_last_inputs() {
        let (w, b) = ([0.5f32, -1.0, 2.0], [0.25f32]);
        // Rows of width 3 starting at offset 1: the inputs are 10, 20 (the rest is noise).
        let x = [9.0f32, 10.0, 9.0, 9.0, 20.0, 9.0];
        let mut st = [1.0f32, 2.0];
        let mut out = [0.0f32; 2];
        causal_conv1d(&x, 1, 3, 2, &mut st, &w, &b, &mut out, 1, 3);
        let silu = |v: f32| v / (1.0 + (-v).exp());
        let want = [
            silu(0.25 + 0.5 * 1.0 - 2.0 + 2.0 * 10.0),
            silu(0.25 + 0.5 * 2.0 - 10.0 + 2.0 * 20.0),
        ];
        assert!(
            (out[0] - want[0]).abs() < 1e-5 && (out[1] - want[1]).abs() < 1e-5,
            "{out:?} vs {want:?}"
        );
        assert_eq!(st, [10.0, 20.0]);
        // One row more than the window is wide takes the old window's newest input.
        let mut st = [1.0f32, 2.0];
        causal_conv1d(&[7.0], 0, 1, 1, &mut st, &w, &b, &mut out[..1], 1, 3);
        assert_eq!(st, [2.0, 7.0]);
    }

    #[test]
    fn the_conv_over_many_rows_equals_the_rows_one_at_a_time() {
        let (cd, k, n) = (13, 4, 9);
        let mut r = Rng(77);
        let x = r.vec(n * cd, 2.0);
        let (w, b) = (r.vec(cd * k, 0.5), r.vec(cd, 0.5));
        let start = r.vec((k - 1) * cd, 1.0);
        let (mut st_all, mut st_one) = (start.clone(), start);
        let (mut all, mut one) = (vec![0f32; n * cd], vec![0f32; n * cd]);
        causal_conv1d(&x, 0, cd, n, &mut st_all, &w, &b, &mut all, cd, k);
        for t in 0..n {
            causal_conv1d(
                &x,
                t * cd,
                cd,
                1,
                &mut st_one,
                &w,
                &b,
                &mut one[t * cd..(t + 1) * cd],
                cd,
                k,
            );
        }
        assert_eq!(all, one);
        assert_eq!(st_all, st_one);
    }
}
