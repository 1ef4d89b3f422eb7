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

use super::{ops, panel, simd, team};

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
    {
        let st: &[f32] = conv_state;
        // Input row `s` (negative: from the window).
        let row = |s: isize| -> &[f32] {
            if s < 0 {
                &st[(past as isize + s) as usize * cd..][..cd]
            } else {
                &x[x_offset + s as usize * x_stride..][..cd]
            }
        };
        let level = simd::level();
        let op = SendPtr(out.as_mut_ptr());
        // Rows in chunks of about 32k multiply-adds.
        let per = (32768 / (cd * k).max(1)).max(1);
        team::par_for(n.div_ceil(per), &|ci| {
            for t in ci * per..((ci + 1) * per).min(n) {
                // SAFETY: row t of `out` (checked to hold n rows) belongs to this chunk only.
                let o = unsafe { std::slice::from_raw_parts_mut(op.get().add(t * cd), cd) };
                let tap = |j: usize| row(t as isize - past as isize + j as isize);
                if k == 4 {
                    conv_row4(level, o, b, w, [tap(0), tap(1), tap(2), tap(3)]);
                } else {
                    let taps: Vec<&[f32]> = (0..k).map(tap).collect();
                    for (c, v) in o.iter_mut().enumerate() {
                        *v = b[c];
                        for (j, r) in taps.iter().enumerate() {
                            *v += w[c * k + j] * r[c];
                        }
                    }
                    for v in o.iter_mut() {
                        *v = ops::silu(*v);
                    }
                }
            }
        });
    }
    // The new window: the last k-1 inputs (some still from the old window when n < k-1).
    let input = |st: &[f32], s: isize, c: usize| -> f32 {
        if s < 0 {
            st[(past as isize + s) as usize * cd + c]
        } else {
            x[x_offset + s as usize * x_stride + c]
        }
    };
    let mut window = vec![0f32; past * cd];
    for i in 0..past {
        let s = n as isize - past as isize + i as isize;
        for c in 0..cd {
            window[i * cd + c] = input(conv_state, s, c);
        }
    }
    conv_state[..past * cd].copy_from_slice(&window);
}

/// One output row of the models' 4-tap conv: `o[c] = silu(b[c] + Σ_j w[c, j]·x_j[c])`
/// with `w` in its stored `[cd, 4]` layout (no copy per call; decode calls this every
/// token), at `level`.
fn conv_row4(level: simd::Level, o: &mut [f32], b: &[f32], w: &[f32], x: [&[f32]; 4]) {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the features were detected at run time.
        simd::Level::Avx512 => return unsafe { conv_row4_avx512(o, b, w, x) },
        // SAFETY: as above.
        simd::Level::Avx2 => return unsafe { conv_row4_avx2(o, b, w, x) },
        simd::Level::Scalar | simd::Level::Neon => {}
    }
    let _ = level;
    conv_row4_body(o, b, w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_row4_avx2(o: &mut [f32], b: &[f32], w: &[f32], x: [&[f32]; 4]) {
    conv_row4_body(o, b, w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn conv_row4_avx512(o: &mut [f32], b: &[f32], w: &[f32], x: [&[f32]; 4]) {
    conv_row4_body(o, b, w, x)
}

/// The body of `conv_row4` (separate multiply and add at every level: the sum is the plain
/// loop's, in the same order; the SiLU here too, so that its exp vectorises at the level).
#[inline(always)]
fn conv_row4_body(o: &mut [f32], b: &[f32], w: &[f32], x: [&[f32]; 4]) {
    let cd = o.len();
    let (b, w) = (&b[..cd], &w[..4 * cd]);
    let [x0, x1, x2, x3] = x.map(|r| &r[..cd]);
    for (c, (v, wc)) in o.iter_mut().zip(w.chunks_exact(4)).enumerate() {
        *v = b[c] + wc[0] * x0[c] + wc[1] * x1[c] + wc[2] * x2[c] + wc[3] * x3[c];
    }
    for v in o.iter_mut() {
        *v = ops::silu(*v);
    }
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
    let hs = s.head_state();
    let level = simd::level();
    let (sp, yp) = (SendPtr(state.as_mut_ptr()), SendPtr(y.as_mut_ptr()));
    // Heads on the team (spinning through decode), not rayon: a decode step is too short
    // for rayon's wake-ups.
    team::par_for(h, &|hh| {
        // SAFETY: head hh's state and its rows of y belong to this task only; both lie in
        // the buffers (checked above).
        let (st, yh) = unsafe {
            (
                std::slice::from_raw_parts_mut(sp.get().add(hh * hs), hs),
                std::slice::from_raw_parts_mut(yp.get().add(hh * p), p),
            )
        };
        let g = hh / hpg;
        let (b, c) = (s.bc(xbc, g, 0), s.bc(xbc, g, 1));
        let xs = &xbc[hh * p..(hh + 1) * p];
        let dth = ops::softplus(dt_raw[dt_offset + hh] + dt_bias[hh]);
        let da = (dth * a[hh]).exp();
        T::with_f32(st, |st| {
            step_head(level, st, ns, b, c, xs, dth, da, d[hh], yh)
        });
    });
}

/// One head of `ssm_step` on its f32 state (`[head_dim, d_state]`): per channel,
/// `S ← da·S + (dt·x)·B` and `y = S·C + D·x` in one pass over the row, at `level` (one
/// this CPU has).
#[allow(clippy::too_many_arguments)]
fn step_head(
    level: simd::Level,
    st: &mut [f32],
    ns: usize,
    b: &[f32],
    c: &[f32],
    xs: &[f32],
    dth: f32,
    da: f32,
    dh: f32,
    yh: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use simd::Level;
        match level {
            // SAFETY: the caller passes a level this CPU has.
            Level::Avx512 => return unsafe { step_head_avx512(st, ns, b, c, xs, dth, da, dh, yh) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { step_head_avx2(st, ns, b, c, xs, dth, da, dh, yh) },
            Level::Scalar | Level::Neon => {}
        }
    }
    // Elsewhere one plain body for every level (NEON is aarch64's baseline, so the
    // compiler vectorises it there).
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    step_head_body::<false>(st, ns, b, c, xs, dth, da, dh, yh)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn step_head_avx2(
    st: &mut [f32],
    ns: usize,
    b: &[f32],
    c: &[f32],
    xs: &[f32],
    dth: f32,
    da: f32,
    dh: f32,
    yh: &mut [f32],
) {
    step_head_body::<true>(st, ns, b, c, xs, dth, da, dh, yh)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn step_head_avx512(
    st: &mut [f32],
    ns: usize,
    b: &[f32],
    c: &[f32],
    xs: &[f32],
    dth: f32,
    da: f32,
    dh: f32,
    yh: &mut [f32],
) {
    step_head_body::<true>(st, ns, b, c, xs, dth, da, dh, yh)
}

/// The body of `step_head`, inlined into each SIMD level's copy: 16 lanes of the dot, summed
/// pairwise at the end of each row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step_head_body<const FMA: bool>(
    st: &mut [f32],
    ns: usize,
    b: &[f32],
    c: &[f32],
    xs: &[f32],
    dth: f32,
    da: f32,
    dh: f32,
    yh: &mut [f32],
) {
    const L: usize = 16;
    let (b, c) = (&b[..ns], &c[..ns]);
    for ((row, y), &x) in st.chunks_exact_mut(ns).zip(yh.iter_mut()).zip(xs) {
        let coef = dth * x;
        let mut acc = [0f32; L];
        let mut rows = row.chunks_exact_mut(L);
        let (mut bs, mut cs) = (b.chunks_exact(L), c.chunks_exact(L));
        for ((sv, bv), cv) in (&mut rows).zip(&mut bs).zip(&mut cs) {
            for l in 0..L {
                let v = simd::fmadd::<FMA>(sv[l], da, coef * bv[l]);
                sv[l] = v;
                acc[l] = simd::fmadd::<FMA>(v, cv[l], acc[l]);
            }
        }
        let mut tail = 0f32;
        for ((sv, bv), cv) in rows
            .into_remainder()
            .iter_mut()
            .zip(bs.remainder())
            .zip(cs.remainder())
        {
            *sv = simd::fmadd::<FMA>(*sv, da, coef * bv);
            tail = simd::fmadd::<FMA>(*sv, *cv, tail);
        }
        *y = simd::sum_lanes(acc) + tail + dh * x;
    }
}

/// `n` prompt tokens of the selective scan in the SSD chunked form (kernels/ssm.cu
/// `ssd_scan_mma_*`), chunks of `chunk` tokens. Per head, with
/// `dt_t = max(softplus(dt_raw[dt_offset + t·dt_stride + head] + dt_bias), dt_min)`,
/// `a_t = A·dt_t` and `cum_l = Σ_{i≤l} a_i` within a chunk:
/// `y_l = Σ_{s≤l} (C_l·B_s) exp(cum_l − cum_s) dt_s x_s + exp(cum_l) (S·C_l)`, then the
/// state passes on: `S ← exp(cum_last) S + Σ_s exp(cum_last − cum_s) dt_s x_s ⊗ B_s`;
/// finally `y += D·x`. `xbc` `[n, cd]`, `y` `[n, d_inner]`.
///
/// Each chunk is four small matrix products (as the kernels do them): `G = C·Bᵀ` once per
/// group (its heads share B and C), then per head `Y = (G ∘ decay ∘ dt)·X`,
/// `Y += diag(exp(cum))·C·Sᵀ` and `Sᵀ ← exp(cum_last)·Sᵀ + (B ∘ w)ᵀ·X`, with the state held
/// transposed (`[d_state, head_dim]`) in f32 for the whole call. Groups, then heads, run on
/// the team.
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
    let (hpg, groups, hs) = (s.heads_per_group(), s.n_groups.max(1), s.head_state());
    let level = simd::level();
    // dt of every head and token: dts[head·n + t].
    let mut dts = vec![0f32; h * n];
    // softplus is two libm calls: ~1k values per task.
    team::par_rows(&mut dts, n, 1024, &|hh, dh| {
        for (t, v) in dh.iter_mut().enumerate() {
            *v = ops::softplus(dt_raw[dt_offset + t * dt_stride + hh] + dt_bias[hh]).max(dt_min);
        }
    });
    // The states in f32, transposed per head: st[head·hs + n·p + pi]. Each head's task
    // transposes its state in at the first chunk and back after the last (on the calling
    // thread alone the transposes were a fixed cost of every prefill while the team
    // waited). The buffers are this thread's, reused from call to call: every value read
    // is written first.
    let mut bufs = SCAN_BUFS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let st = take(&mut bufs.st, h * hs);
    let chunk = chunk.min(n);
    // G of every group for the current chunk: gbuf[g·chunk² + li·l + si]; the group's B
    // transposed: btbuf[g·ns·chunk + nn·l + si] (its heads scale it by their weights).
    let gbuf = take(&mut bufs.g, groups * chunk * chunk);
    let btbuf = take(&mut bufs.bt, groups * ns * chunk);
    let (gp, bp, sp, yp, stp) = (
        SendPtr(gbuf.as_mut_ptr()),
        SendPtr(btbuf.as_mut_ptr()),
        SendPtr(st.as_mut_ptr()),
        SendPtr(y.as_mut_ptr()),
        SendPtr(state.as_mut_ptr()),
    );
    let (b_at, c_at) = (di, di + groups * ns);
    let mut c0 = 0;
    while c0 < n {
        let l = chunk.min(n - c0);
        let x0 = &xbc[c0 * cd..];
        team::par_for(groups, &|g| {
            // SAFETY: group g's l×l slice of gbuf and its ns×l slice of btbuf are written
            // by this task only.
            let gg =
                unsafe { std::slice::from_raw_parts_mut(gp.get().add(g * chunk * chunk), l * l) };
            let bt =
                unsafe { std::slice::from_raw_parts_mut(bp.get().add(g * ns * chunk), ns * l) };
            for si in 0..l {
                let b = &x0[si * cd + b_at + g * ns..][..ns];
                for (nn, v) in b.iter().enumerate() {
                    bt[nn * l + si] = *v;
                }
            }
            gg.fill(0.0);
            // G[li][si] = C_li · B_si for si ≤ li.
            gemm_acc(
                level,
                Tri::C,
                l,
                l,
                ns,
                &x0[c_at + g * ns..],
                cd,
                bt,
                l,
                gg,
                l,
            );
        });
        team::par_for(h, &|hh| {
            let g = hh / hpg;
            let head = HeadChunk {
                l,
                p,
                ns,
                cd,
                a: a[hh],
                d: d[hh],
                g: &gbuf[g * chunk * chunk..g * chunk * chunk + l * l],
                bt: &btbuf[g * ns * chunk..g * ns * chunk + ns * l],
                dt: &dts[hh * n + c0..hh * n + c0 + l],
                x: &x0[hh * p..],
                c: &x0[c_at + g * ns..],
            };
            // SAFETY: head hh's state (stored and transposed) and its y columns are this
            // task's only; gbuf and btbuf are not written while the heads run.
            let sth = unsafe { std::slice::from_raw_parts_mut(sp.get().add(hh * hs), hs) };
            // SAFETY: as above (`state` holds h·hs values, checked above).
            let stored = unsafe { std::slice::from_raw_parts_mut(stp.get().add(hh * hs), hs) };
            if c0 == 0 {
                T::with_f32(stored, |sh| panel::transpose(sh, p, ns, sth, p));
            }
            SCRATCH.with(|sc| {
                let mut sc = sc.borrow_mut();
                // SAFETY: rows c0..c0+l, columns hh·p..(hh+1)·p of y (`[n, di]`, checked
                // above) belong to this head.
                unsafe {
                    head_chunk(
                        level,
                        &head,
                        sth,
                        &mut sc,
                        yp.get().add(c0 * di + hh * p),
                        di,
                    )
                };
            });
            if c0 + l == n {
                T::with_f32(stored, |sh| panel::transpose(sth, ns, p, sh, ns));
            }
        });
        c0 += l;
    }
    SCAN_BUFS.with(|b| *b.borrow_mut() = bufs);
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: the tasks above write disjoint parts of the buffers these point to.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so a closure captures the whole `SendPtr`).
    fn get(self) -> *mut T {
        self.0
    }
}

/// One team thread's scratch for the scan.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    y: Vec<f32>,
    cum: Vec<f32>,
    w: Vec<f32>,
}

/// The calling thread's buffers for `ssd_chunked`: the transposed states, and every
/// group's G and Bᵀ of a chunk.
#[derive(Default)]
struct ScanBufs {
    st: Vec<f32>,
    g: Vec<f32>,
    bt: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
    static SCAN_BUFS: std::cell::RefCell<ScanBufs> = std::cell::RefCell::new(ScanBufs::default());
}

/// The first `len` values of `v` (grown as needed; contents unspecified).
fn take(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// One head's inputs for one chunk of `ssd_chunked` (rows of `x` and `c` are `cd` apart).
struct HeadChunk<'a> {
    l: usize,
    p: usize,
    ns: usize,
    cd: usize,
    /// A and D of the head.
    a: f32,
    d: f32,
    /// The group's `G = C·Bᵀ` (`[l, l]`, lower triangle) and `Bᵀ` (`[ns, l]`).
    g: &'a [f32],
    bt: &'a [f32],
    /// dt of the chunk's tokens; the head's x (`[l, p]`) and the group's C (`[l, ns]`).
    dt: &'a [f32],
    x: &'a [f32],
    c: &'a [f32],
}

/// One head's chunk of `ssd_chunked` at `level`: its state `sth` (`[ns, p]`) passes on and
/// its outputs go to `y` (rows `ldy` apart).
///
/// # Safety
/// `y` points at `l` rows of `p` writable values, `ldy` apart, that no other thread touches.
unsafe fn head_chunk(
    level: simd::Level,
    hc: &HeadChunk<'_>,
    sth: &mut [f32],
    sc: &mut Scratch,
    y: *mut f32,
    ldy: usize,
) {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the features were detected at run time; the caller keeps `y`'s promise.
        simd::Level::Avx512 => return unsafe { head_chunk_avx512(hc, sth, sc, y, ldy) },
        // SAFETY: as above.
        simd::Level::Avx2 => return unsafe { head_chunk_avx2(hc, sth, sc, y, ldy) },
        simd::Level::Scalar | simd::Level::Neon => {}
    }
    // SAFETY: the caller keeps `y`'s promise.
    unsafe { head_chunk_body(level, hc, sth, sc, y, ldy) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_chunk_avx2(
    hc: &HeadChunk<'_>,
    sth: &mut [f32],
    sc: &mut Scratch,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: the caller keeps `y`'s promise.
    unsafe { head_chunk_body(simd::Level::Avx2, hc, sth, sc, y, ldy) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn head_chunk_avx512(
    hc: &HeadChunk<'_>,
    sth: &mut [f32],
    sc: &mut Scratch,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: the caller keeps `y`'s promise.
    unsafe { head_chunk_body(simd::Level::Avx512, hc, sth, sc, y, ldy) }
}

/// The body of `head_chunk`, inlined into each level's copy so that its exps and scalings
/// vectorise under the level's features (plain loops, no closures: a closure would be
/// compiled for the baseline).
#[inline(always)]
unsafe fn head_chunk_body(
    level: simd::Level,
    hc: &HeadChunk<'_>,
    sth: &mut [f32],
    sc: &mut Scratch,
    y: *mut f32,
    ldy: usize,
) {
    let (l, p, ns, cd) = (hc.l, hc.p, hc.ns, hc.cd);
    let dt = &hc.dt[..l];
    let cum = take(&mut sc.cum, l);
    let mut sum = 0f32;
    for (c, v) in cum.iter_mut().zip(dt) {
        sum += hc.a * v;
        *c = sum;
    }
    let cum = &*cum;
    // M = G ∘ exp(cum_l − cum_s) ∘ dt_s (lower triangle), Y = M·X.
    let m = take(&mut sc.a, l * l);
    for li in 0..l {
        let row = &mut m[li * l..(li + 1) * l];
        let cl = cum[li];
        let (lower, upper) = row.split_at_mut(li + 1);
        for (((o, gv), cs), dv) in lower
            .iter_mut()
            .zip(&hc.g[li * l..li * l + li + 1])
            .zip(&cum[..=li])
            .zip(&dt[..=li])
        {
            *o = gv * ops::exp(cl - cs) * dv;
        }
        upper.fill(0.0);
    }
    let yh = take(&mut sc.y, l * p);
    yh.fill(0.0);
    gemm_acc(level, Tri::A, l, p, l, m, l, hc.x, cd, yh, p);
    // Y += diag(exp(cum))·C·Sᵀ (the state before this chunk).
    let cs = take(&mut sc.b, l * ns);
    for li in 0..l {
        let e = ops::exp(cum[li]);
        for (o, v) in cs[li * ns..(li + 1) * ns]
            .iter_mut()
            .zip(&hc.c[li * cd..li * cd + ns])
        {
            *o = v * e;
        }
    }
    gemm_acc(level, Tri::None, l, p, ns, cs, ns, sth, p, yh, p);
    // Sᵀ ← exp(cum_last)·Sᵀ + (B ∘ w)ᵀ·X, w_s = exp(cum_last − cum_s)·dt_s.
    let last = cum[l - 1];
    let e = ops::exp(last);
    for v in sth.iter_mut() {
        *v *= e;
    }
    let w = take(&mut sc.w, l);
    for ((o, cs), dv) in w.iter_mut().zip(cum).zip(dt) {
        *o = ops::exp(last - cs) * dv;
    }
    let bw = take(&mut sc.a, ns * l);
    for (brow, trow) in bw.chunks_exact_mut(l).zip(hc.bt.chunks_exact(l)) {
        for ((o, b), wv) in brow.iter_mut().zip(trow).zip(&*w) {
            *o = b * wv;
        }
    }
    gemm_acc(level, Tri::None, ns, p, l, bw, l, hc.x, cd, sth, p);
    // y = Y + D·x
    for li in 0..l {
        // SAFETY: row li of the head's y block (the caller's promise).
        let yr = unsafe { std::slice::from_raw_parts_mut(y.add(li * ldy), p) };
        for ((o, v), xv) in yr
            .iter_mut()
            .zip(&yh[li * p..(li + 1) * p])
            .zip(&hc.x[li * cd..li * cd + p])
        {
            *o = v + hc.d * xv;
        }
    }
}

/// Which triangle of a product `gemm_acc` may skip.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tri {
    /// The full product.
    None,
    /// A is lower triangular (`A[i][k] = 0` for k > i): row i reads k ≤ i only.
    A,
    /// Only C's lower triangle (columns j ≤ i) is wanted; the rest may be left unwritten.
    C,
}

/// `C[m×n] += A[m×k]·B[k×n]`, row-major with row strides `lda`, `ldb`, `ldc`, on this
/// thread, at SIMD `level` (FMA from AVX2 on, so the levels differ by rounding only).
#[allow(clippy::too_many_arguments)]
fn gemm_acc(
    level: simd::Level,
    tri: Tri,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "gemm_acc: A");
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "gemm_acc: B");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm_acc: C");
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the features were detected at run time (`level` is at most the CPU's).
        simd::Level::Avx512 => return unsafe { gemm_avx512(tri, m, n, k, a, lda, b, ldb, c, ldc) },
        // SAFETY: as above.
        simd::Level::Avx2 => return unsafe { gemm_avx2(tri, m, n, k, a, lda, b, ldb, c, ldc) },
        simd::Level::Scalar | simd::Level::Neon => {}
    }
    #[cfg(target_arch = "aarch64")]
    if level == simd::Level::Neon {
        return gemm_body::<true, 4>(tri, m, n, k, a, lda, b, ldb, c, ldc);
    }
    let _ = level;
    gemm_body::<false, 4>(tri, m, n, k, a, lda, b, ldb, c, ldc)
}

/// `gemm_acc` at AVX2: blocks of 6 rows × 16 columns in 12 ymm accumulators with explicit
/// intrinsics (`gemm_body`'s arrays spilled at 6 rows; against its 4 × 16 the products'
/// share of an AVX2 Nemotron-H F16 prefill went 8.7% → 5.9%);
/// the rows and columns past the last whole block go through `gemm_body` as full
/// products (A's zeros above the diagonal make that exact for `Tri::A`, and `Tri::C` lets
/// the upper triangle be written).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2(
    tri: Tri,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    const R: usize = 6;
    let full = m / R * R;
    let mut i0 = 0;
    while i0 < full {
        let kk = if tri == Tri::A { k.min(i0 + R) } else { k };
        let nn = if tri == Tri::C { n.min(i0 + R) } else { n };
        let mut j0 = 0;
        while j0 + 16 <= nn {
            // SAFETY: rows i0..i0+6 of A (kk ≤ k columns), rows 0..kk of B from column j0
            // (16 wide, j0 + 16 ≤ n) and the 6 × 16 block of C lie in the slices
            // (`gemm_acc` asserted their lengths).
            unsafe {
                gemm6x16_avx2(
                    a.as_ptr().add(i0 * lda),
                    lda,
                    b.as_ptr().add(j0),
                    ldb,
                    kk,
                    c.as_mut_ptr().add(i0 * ldc + j0),
                    ldc,
                )
            };
            j0 += 16;
        }
        if j0 < nn {
            gemm_body::<true, 4>(
                Tri::None,
                R,
                nn - j0,
                kk,
                &a[i0 * lda..],
                lda,
                &b[j0..],
                ldb,
                &mut c[i0 * ldc + j0..],
                ldc,
            );
        }
        i0 += R;
    }
    if full < m {
        gemm_body::<true, 4>(
            Tri::None,
            m - full,
            n,
            k,
            &a[full * lda..],
            lda,
            b,
            ldb,
            &mut c[full * ldc..],
            ldc,
        );
    }
}

/// `C[6×16] += A[6×k]·B[k×16]` (row strides `lda`, `ldb`, `ldc`).
///
/// # Safety
/// AVX2 and FMA; the 6 rows of A (k values each), k rows of B (16 each) and 6 rows of C
/// (16 each) are readable (C writable) at those strides.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm6x16_avx2(
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    for q in 0..k {
        let b0 = _mm256_loadu_ps(b.add(q * ldb));
        let b1 = _mm256_loadu_ps(b.add(q * ldb + 8));
        for (i, ai) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(i * lda + q));
            ai[0] = _mm256_fmadd_ps(av, b0, ai[0]);
            ai[1] = _mm256_fmadd_ps(av, b1, ai[1]);
        }
    }
    for (i, ai) in acc.iter().enumerate() {
        let p = c.add(i * ldc);
        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), ai[0]));
        _mm256_storeu_ps(p.add(8), _mm256_add_ps(_mm256_loadu_ps(p.add(8)), ai[1]));
    }
}

/// `gemm_acc` at AVX-512: blocks of 8 rows × 32 columns in 16 zmm accumulators with
/// explicit intrinsics (per k, two loads of B and 8 broadcasts of A for 16 FMAs), a
/// block's columns past n masked, the rows past the last whole 8 repeating the last row
/// (their results dropped). `gemm_body`'s 8 × 16 arrays at this level kept their row
/// offsets and some accumulators on the stack and checked every index: 6% of an F16
/// Nemotron-H prefill at 200 tokens. Each output is the same FMA chain over k as there, so
/// the results are unchanged.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_avx512(
    tri: Tri,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    const R: usize = 8;
    let mut i0 = 0;
    while i0 < m {
        let rows = R.min(m - i0);
        let kk = if tri == Tri::A { k.min(i0 + R) } else { k };
        let nn = if tri == Tri::C { n.min(i0 + R) } else { n };
        let ar: [*const f32; R] = std::array::from_fn(|i| a[(i0 + i).min(m - 1) * lda..].as_ptr());
        let mut j0 = 0;
        while j0 < nn {
            // SAFETY: rows of A (kk ≤ k values each from `ar`), rows 0..kk of B from column
            // j0 (the columns below nn ≤ n read, the rest masked) and rows i0..i0+rows of C
            // (the same columns) lie in the slices (`gemm_acc` asserted their lengths).
            unsafe {
                gemm8_avx512(
                    ar,
                    b.as_ptr().add(j0),
                    ldb,
                    kk,
                    c.as_mut_ptr().add(i0 * ldc + j0),
                    ldc,
                    rows,
                    (nn - j0).min(32),
                )
            };
            j0 += 32;
        }
        i0 += R;
    }
}

/// `C[rows × w] += A[8 × k]·B[k × w]` for w ≤ 32 columns: A's rows at `a`, B and C rows
/// `ldb` and `ldc` apart; only C's first `rows` rows are written.
///
/// # Safety
/// AVX-512F; the 8 rows of A (k values each), k rows of B (w values each) and `rows` rows
/// of C (w values each) are readable (C writable) there.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm8_avx512(
    a: [*const f32; 8],
    b: *const f32,
    ldb: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    w: usize,
) {
    use std::arch::x86_64::*;
    let mask = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
    let (m0, m1) = (mask(w), mask(w.saturating_sub(16)));
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    if w > 16 {
        for q in 0..k {
            let b0 = _mm512_maskz_loadu_ps(m0, b.add(q * ldb));
            let b1 = _mm512_maskz_loadu_ps(m1, b.add(q * ldb + 16));
            for (ai, acc) in a.iter().zip(acc.iter_mut()) {
                let av = _mm512_set1_ps(*ai.add(q));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
    } else {
        for q in 0..k {
            let b0 = _mm512_maskz_loadu_ps(m0, b.add(q * ldb));
            for (ai, acc) in a.iter().zip(acc.iter_mut()) {
                acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*ai.add(q)), b0, acc[0]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        let p = c.add(i * ldc);
        let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, p), acc[0]);
        _mm512_mask_storeu_ps(p, m0, v);
        if w > 16 {
            let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, p.add(16)), acc[1]);
            _mm512_mask_storeu_ps(p.add(16), m1, v);
        }
    }
}

/// The body of `gemm_acc`, inlined into each level's copy: `R` rows × 16 columns of
/// accumulators, one broadcast of A per row and k, one 16-wide load of B per k: 4 × 16 at
/// the plain level and NEON (AVX2 and AVX-512 have their own kernels, `gemm_avx2` and
/// `gemm_avx512`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_body<const FMA: bool, const R: usize>(
    tri: Tri,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    const W: usize = 16;
    let mut i0 = 0;
    while i0 < m {
        let rows = R.min(m - i0);
        // Rows past m repeat the last (their results are dropped).
        let ar: [usize; R] = std::array::from_fn(|i| (i0 + i).min(m - 1) * lda);
        let kk = if tri == Tri::A { k.min(i0 + R) } else { k };
        let nn = if tri == Tri::C { n.min(i0 + R) } else { n };
        let mut j0 = 0;
        while j0 < nn {
            let w = W.min(nn - j0);
            let mut acc = [[0f32; W]; R];
            if w == W {
                for q in 0..kk {
                    let bv: &[f32; W] = b[q * ldb + j0..q * ldb + j0 + W]
                        .try_into()
                        .unwrap_or(&[0.0; W]);
                    for i in 0..R {
                        let av = a[ar[i] + q];
                        for (o, bx) in acc[i].iter_mut().zip(bv) {
                            *o = simd::fmadd::<FMA>(av, *bx, *o);
                        }
                    }
                }
            } else {
                for q in 0..kk {
                    let mut bv = [0f32; W];
                    bv[..w].copy_from_slice(&b[q * ldb + j0..q * ldb + j0 + w]);
                    for i in 0..R {
                        let av = a[ar[i] + q];
                        for (o, bx) in acc[i].iter_mut().zip(&bv) {
                            *o = simd::fmadd::<FMA>(av, *bx, *o);
                        }
                    }
                }
            }
            for (i, ai) in acc.iter().enumerate().take(rows) {
                for (o, v) in c[(i0 + i) * ldc + j0..(i0 + i) * ldc + j0 + w]
                    .iter_mut()
                    .zip(ai)
                {
                    *o += v;
                }
            }
            j0 += W;
        }
        i0 += R;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The conv as it was written first (one channel of one row at a time, libm's exp):
    /// the plain form the row-wise form is tested against.
    /// Depthwise causal conv1d + bias + SiLU over `n` rows `x[x_offset + t·x_stride ..][..cd]`
    /// (kernels/conv1d.cu `conv1d_prefill_f32` + `conv1d_state_f32`, or `conv1d_update_f32`
    /// for one row): `out[t, c] = silu(b[c] + Σ_j w[c, j] · input(t − (k−1) + j, c))`, where
    /// inputs before the first row come from `conv_state` `[k-1, cd]` (oldest first);
    /// `w` is `[cd, k]`; `out` `[n, cd]`. `conv_state` becomes the last `k - 1` inputs.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn causal_conv1d_reference(
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
                    acc += w[c * k + j]
                        * input(conv_state, t as isize - past as isize + j as isize, c);
                }
                out[t * cd + c] = acc / (1.0 + (-acc).exp());
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

    /// The scan as it was written first (one head at a time, every term a dot or an axpy):
    /// the plain form the matrix form is tested against.
    /// `n` prompt tokens of the selective scan in the SSD chunked form (kernels/ssm.cu
    /// `ssd_scan_mma_*`), chunks of `chunk` tokens. Per head, with
    /// `dt_t = max(softplus(dt_raw[dt_offset + t·dt_stride + head] + dt_bias), dt_min)` and
    /// `a_t = A·dt_t`: within a chunk
    /// `y_l = Σ_{s≤l} (C_l·B_s) exp(Σ_{i=s+1..l} a_i) dt_s x_s + exp(cum_l) (S·C_l)`, then the
    /// state passes on: `S ← exp(cum_last) S + Σ_s exp(cum_last − cum_s) dt_s x_s ⊗ B_s`;
    /// finally `y += D·x`. `xbc` `[n, cd]`, `y` `[n, d_inner]`. Heads run in parallel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ssd_chunked_reference<T: StateElem>(
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
                        ops::softplus(dt_raw[dt_offset + t * dt_stride + hh] + dt_bias[hh])
                            .max(dt_min)
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
                                let w = simd::dot(cl, s.bc(row(c0 + si), g, 0))
                                    * seg.exp()
                                    * dt[c0 + si];
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

    #[test]
    fn the_row_wise_conv_equals_the_channel_by_channel_conv() {
        // k = 4 (the models'), 9 (past the 8 taps held at once); n below, at and past k − 1.
        for (cd, k, n, off, stride) in [
            (37, 4, 1, 0, 37),
            (37, 4, 2, 5, 50),
            (160, 4, 70, 3, 170),
            (33, 9, 20, 0, 33),
            (33, 9, 3, 0, 33),
        ] {
            let mut r = Rng((cd * 100 + k * 10 + n) as u64);
            let x = r.vec(off + n * stride + cd, 4.0);
            let (w, b) = (r.vec(cd * k, 0.8), r.vec(cd, 0.5));
            let start = r.vec((k - 1) * cd, 2.0);
            let (mut st_new, mut st_ref) = (start.clone(), start);
            let (mut got, mut want) = (vec![f32::NAN; n * cd], vec![f32::NAN; n * cd]);
            causal_conv1d(&x, off, stride, n, &mut st_new, &w, &b, &mut got, cd, k);
            causal_conv1d_reference(&x, off, stride, n, &mut st_ref, &w, &b, &mut want, cd, k);
            assert_eq!(st_new, st_ref, "cd={cd} k={k} n={n}: window");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // The same sums; only SiLU's exp differs (ops::exp, ≤ 2 ulp, against libm).
                assert!(
                    (g - w).abs() <= 4.0 * f32::EPSILON * w.abs().max(1e-30),
                    "cd={cd} k={k} n={n} at {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn the_matrix_form_of_the_scan_equals_the_plain_form_at_a_model_shape() {
        // Nano 9B v2's scan shape scaled down in heads only: 64-wide heads, d_state 128,
        // chunk 128, two chunks plus a ragged one.
        let sh = ScanShape {
            heads: 8,
            head_dim: 64,
            d_state: 128,
            n_groups: 2,
        };
        let c = Case::new(sh, 300, 5);
        let (got_y, got_s) = c.chunked(128, 1e-3);
        let mut want_s = c.state.clone();
        let mut want_y = vec![f32::NAN; c.n * sh.d_inner()];
        ssd_chunked_reference(
            &sh,
            c.n,
            128,
            &c.xbc,
            &c.dt_raw,
            DT_OFFSET,
            Case::stride(&sh),
            &c.dt_bias,
            &c.a,
            &c.d,
            1e-3,
            &mut want_s,
            &mut want_y,
        );
        assert_near("y", &got_y, &want_y, 2e-5);
        assert_near("state", &got_s, &want_s, 2e-5);
        // A half-precision state goes the same way.
        let mut st16: Vec<half::f16> = c.state.iter().map(|v| half::f16::from_f32(*v)).collect();
        let mut want16 = st16.clone();
        let (mut y16, mut wy16) = (
            vec![0f32; c.n * sh.d_inner()],
            vec![0f32; c.n * sh.d_inner()],
        );
        ssd_chunked(
            &sh,
            c.n,
            128,
            &c.xbc,
            &c.dt_raw,
            DT_OFFSET,
            Case::stride(&sh),
            &c.dt_bias,
            &c.a,
            &c.d,
            1e-3,
            &mut st16,
            &mut y16,
        );
        ssd_chunked_reference(
            &sh,
            c.n,
            128,
            &c.xbc,
            &c.dt_raw,
            DT_OFFSET,
            Case::stride(&sh),
            &c.dt_bias,
            &c.a,
            &c.d,
            1e-3,
            &mut want16,
            &mut wy16,
        );
        assert_near("y (f16 state)", &y16, &wy16, 2e-5);
        let (g16, w16): (Vec<f32>, Vec<f32>) = (
            st16.iter().map(|v| v.to_f32()).collect(),
            want16.iter().map(|v| v.to_f32()).collect(),
        );
        assert_near("f16 state", &g16, &w16, 2e-3);
    }

    /// A, B, C and their row strides.
    type GemmInputs = (Vec<f32>, Vec<f32>, Vec<f32>, (usize, usize, usize));

    /// A, B and C of an `m × n × k` product with row strides wider than the rows (A lower
    /// triangular for `Tri::A`).
    fn gemm_inputs(r: &mut Rng, tri: Tri, m: usize, n: usize, k: usize) -> GemmInputs {
        let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
        let mut a = r.vec(m * lda, 1.0);
        if tri == Tri::A {
            for i in 0..m {
                for q in (i + 1)..k {
                    a[i * lda + q] = 0.0;
                }
            }
        }
        let b = r.vec(k.max(1) * ldb, 1.0);
        let c0 = r.vec(m * ldc, 1.0);
        (a, b, c0, (lda, ldb, ldc))
    }

    /// `gemm_acc` at `level` against an f64 product, for every triangle mode and ragged
    /// shapes (rows not a multiple of 4, columns not of 16, strides wider than the rows).
    fn gemm_matches_f64(level: simd::Level) {
        let mut r = Rng(99);
        for (m, n, k) in [
            (1, 1, 1),
            (5, 17, 3),
            (8, 16, 8),
            (13, 40, 29),
            (64, 64, 128),
            (7, 3, 0),
        ] {
            for tri in [Tri::None, Tri::A, Tri::C] {
                let (a, b, c0, (lda, ldb, ldc)) = gemm_inputs(&mut r, tri, m, n, k);
                let mut c = c0.clone();
                gemm_acc(level, tri, m, n, k, &a, lda, &b, ldb, &mut c, ldc);
                for i in 0..m {
                    for j in 0..n {
                        if tri == Tri::C && j > i {
                            continue;
                        }
                        let want = c0[i * ldc + j] as f64
                            + (0..k)
                                .map(|q| a[i * lda + q] as f64 * b[q * ldb + j] as f64)
                                .sum::<f64>();
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + k as f64),
                            "{level:?} {tri:?} m={m} n={n} k={k} ({i},{j}): {got} vs {want}"
                        );
                    }
                    // Columns past n are never written.
                    for j in n..ldc {
                        assert_eq!(
                            c[i * ldc + j],
                            c0[i * ldc + j],
                            "{level:?} {tri:?} wrote past n"
                        );
                    }
                }
            }
        }
    }

    /// `step_head` at `level` against the recurrence in f64, with a d_state that is and one
    /// that is not a multiple of 16.
    fn step_head_matches_f64(level: simd::Level) {
        let mut r = Rng(7);
        for (p, ns) in [(5, 128), (3, 40), (2, 7)] {
            let st0 = r.vec(p * ns, 1.0);
            let (b, c, xs) = (r.vec(ns, 1.0), r.vec(ns, 1.0), r.vec(p, 1.0));
            let (dth, da, dh) = (0.7f32, 0.9f32, 0.3f32);
            let mut st = st0.clone();
            let mut y = vec![0f32; p];
            step_head(level, &mut st, ns, &b, &c, &xs, dth, da, dh, &mut y);
            for pi in 0..p {
                let mut yw = dh as f64 * xs[pi] as f64;
                for k in 0..ns {
                    let sw = da as f64 * st0[pi * ns + k] as f64
                        + dth as f64 * xs[pi] as f64 * b[k] as f64;
                    let got = st[pi * ns + k] as f64;
                    assert!(
                        (got - sw).abs() <= 1e-6 * (1.0 + sw.abs()),
                        "{level:?} S: {got} vs {sw}"
                    );
                    yw += sw * c[k] as f64;
                }
                let got = y[pi] as f64;
                assert!(
                    (got - yw).abs() <= 1e-5 * (1.0 + ns as f64),
                    "{level:?} y: {got} vs {yw}"
                );
            }
        }
    }

    #[test]
    fn one_decode_step_of_a_head_matches_f64_at_every_simd_level() {
        step_head_matches_f64(simd::Level::Scalar);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                step_head_matches_f64(simd::Level::Avx2);
            } else {
                crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA");
            }
            if is_x86_feature_detected!("avx512f") {
                step_head_matches_f64(simd::Level::Avx512);
            } else {
                crate::backend::cpu::skip_test("this CPU has no AVX-512");
            }
        }
    }

    #[test]
    fn the_scan_products_match_f64_at_every_simd_level() {
        gemm_matches_f64(simd::Level::Scalar);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                gemm_matches_f64(simd::Level::Avx2);
            } else {
                crate::backend::cpu::skip_test("this CPU has no AVX2 + FMA");
            }
            if is_x86_feature_detected!("avx512f") {
                gemm_matches_f64(simd::Level::Avx512);
            } else {
                crate::backend::cpu::skip_test("this CPU has no AVX-512");
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            gemm_matches_f64(simd::Level::Neon);
        }
    }

    /// The AVX-512 kernel's outputs are bit for bit those of `gemm_body`'s 8 × 16 FMA
    /// chains (what the level ran before it had its own kernel): same shapes as above, C's
    /// lower triangle for `Tri::C`.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_scan_product_sums_as_the_generic_body() {
        if !is_x86_feature_detected!("avx512f") {
            return crate::backend::cpu::skip_test("this CPU has no AVX-512");
        }
        let mut r = Rng(5);
        for (m, n, k) in [(5, 17, 3), (13, 40, 29), (64, 64, 128), (72, 72, 128)] {
            for tri in [Tri::None, Tri::A, Tri::C] {
                let (a, b, c0, (lda, ldb, ldc)) = gemm_inputs(&mut r, tri, m, n, k);
                let (mut got, mut want) = (c0.clone(), c0.clone());
                // SAFETY: avx512f checked; the slices hold the shapes (as gemm_acc asserts).
                unsafe { gemm_avx512(tri, m, n, k, &a, lda, &b, ldb, &mut got, ldc) };
                gemm_body::<true, 8>(tri, m, n, k, &a, lda, &b, ldb, &mut want, ldc);
                for i in 0..m {
                    for j in 0..if tri == Tri::C { n.min(i + 1) } else { n } {
                        let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                        assert_eq!(g.to_bits(), w.to_bits(), "{tri:?} {m}×{n}×{k} ({i},{j})");
                    }
                }
            }
        }
    }
}
