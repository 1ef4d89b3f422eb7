//! The Mamba2 mixer on the GPU, composed from the ops (in_proj GEMM → conv1d → scan →
//! gated RMSNorm → out_proj GEMM); oracle `model::mamba2::Mamba2` (same formulas, same
//! layouts: zxbcdt = z | xBC | dt per token). Weights are bf16 on the device (the GEMM
//! operands), small tensors f32. The whole model (`nemotron_h`) and the op tests run this
//! one composition (`GpuMamba2::forward_with`): the model on its session's buffers, the
//! tests through `forward`, which allocates scratch per call. `new` builds one from plain
//! host arrays, so the backend does not depend on `model`.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::ssm::ScanShape;
use super::{conv1d, elementwise, gemm, norm, ssm, CudaError, Gpu, KernelDtype};

/// Host-side weights of one mixer (`in_proj` `[in_proj_dim, hidden]`, `out_proj`
/// `[hidden, d_inner]`, both row-major bf16; `a` is `-exp(A_log)`).
pub struct Mamba2Host<'a> {
    pub shape: ScanShape,
    pub hidden: usize,
    pub conv_kernel: usize,
    pub chunk_size: usize,
    pub time_step_min: f32,
    pub eps: f32,
    pub in_proj: &'a [bf16],
    pub in_proj_bias: Option<&'a [f32]>,
    pub conv_w: &'a [f32],
    pub conv_b: &'a [f32],
    pub dt_bias: &'a [f32],
    pub a: &'a [f32],
    pub d: &'a [f32],
    pub norm_w: &'a [f32],
    pub out_proj: &'a [bf16],
    pub out_proj_bias: Option<&'a [f32]>,
}

/// One Mamba2 mixer's weights on the device and its shape (the one composition of the
/// mixer: `nemotron_h` holds one per `M` layer, the op tests build one with `new`).
pub struct GpuMamba2 {
    pub shape: ScanShape,
    pub hidden: usize,
    pub conv_kernel: usize,
    pub chunk_size: usize,
    pub time_step_min: f32,
    pub eps: f32,
    pub in_proj: CudaSlice<bf16>,
    pub in_proj_bias: Option<CudaSlice<f32>>,
    pub conv_w: CudaSlice<f32>,
    pub conv_b: CudaSlice<f32>,
    pub dt_bias: CudaSlice<f32>,
    pub a: CudaSlice<f32>,
    pub d: CudaSlice<f32>,
    pub norm_w: CudaSlice<f32>,
    pub out_proj: CudaSlice<bf16>,
    pub out_proj_bias: Option<CudaSlice<f32>>,
}

/// One sequence's Mamba2 state on the device (`conv_state` `[k-1, cd]` f32, `ssm`
/// `[heads, head_dim, d_state]` in T).
pub struct GpuMambaState<T> {
    pub conv: CudaSlice<f32>,
    pub ssm: CudaSlice<T>,
}

/// Scratch for `n` tokens: `zxbcdt` `[n, in_proj_dim]`, `xbc` `[n, conv_dim]`, `y` `[n,
/// d_inner]` f32 and `inner` `[n, d_inner]` bf16 (the out_proj GEMM's input). A session
/// lends its own buffers (shared with the other mixers); `GpuMamba2::forward` allocates.
pub struct MambaScratch<'a> {
    pub zxbcdt: &'a mut CudaSlice<f32>,
    pub xbc: &'a mut CudaSlice<f32>,
    pub y: &'a mut CudaSlice<f32>,
    pub inner: &'a mut CudaSlice<bf16>,
}

impl GpuMamba2 {
    pub fn di(&self) -> usize {
        self.shape.heads * self.shape.head_dim
    }
    pub fn cd(&self) -> usize {
        self.di() + 2 * self.shape.n_groups * self.shape.d_state
    }
    pub fn pd(&self) -> usize {
        2 * self.di() + 2 * self.shape.n_groups * self.shape.d_state + self.shape.heads
    }

    /// Uploads `h`.
    pub fn new(gpu: &Gpu, h: &Mamba2Host<'_>) -> Result<Self, CudaError> {
        let opt = |v: Option<&[f32]>| v.map(|b| gpu.upload(b)).transpose();
        GpuMamba2 {
            shape: h.shape,
            hidden: h.hidden,
            conv_kernel: h.conv_kernel,
            chunk_size: h.chunk_size,
            time_step_min: h.time_step_min,
            eps: h.eps,
            in_proj: gpu.upload(h.in_proj)?,
            in_proj_bias: opt(h.in_proj_bias)?,
            conv_w: gpu.upload(h.conv_w)?,
            conv_b: gpu.upload(h.conv_b)?,
            dt_bias: gpu.upload(h.dt_bias)?,
            a: gpu.upload(h.a)?,
            d: gpu.upload(h.d)?,
            norm_w: gpu.upload(h.norm_w)?,
            out_proj: gpu.upload(h.out_proj)?,
            out_proj_bias: opt(h.out_proj_bias)?,
        }
        .checked()
    }

    /// `self` after checking every kernel's `supports()` and every weight's length.
    pub fn checked(self) -> Result<Self, CudaError> {
        let s = self.shape;
        ssm::supports_scan(&s, self.chunk_size)?;
        conv1d::supports(self.cd(), self.conv_kernel, 1)?;
        norm::supports_gated(self.di(), self.di() / s.n_groups.max(1))?;
        let (di, cd, pd, hs, h) = (self.di(), self.cd(), self.pd(), self.hidden, s.heads);
        let want = [
            ("in_proj", self.in_proj.len(), pd * hs),
            ("out_proj", self.out_proj.len(), hs * di),
            ("conv1d.weight", self.conv_w.len(), cd * self.conv_kernel),
            ("conv1d.bias", self.conv_b.len(), cd),
            ("dt_bias", self.dt_bias.len(), h),
            ("A", self.a.len(), h),
            ("D", self.d.len(), h),
            ("norm.weight", self.norm_w.len(), di),
        ];
        for (name, have, need) in want {
            if have != need {
                return Err(CudaError::Unsupported {
                    op: "mamba2",
                    why: format!("{name} has {have} elements, the shape needs {need}"),
                });
            }
        }
        Ok(self)
    }

    pub fn new_state<T: KernelDtype + cudarc::driver::ValidAsZeroBits>(
        &self,
        gpu: &Gpu,
    ) -> Result<GpuMambaState<T>, CudaError> {
        let s = &self.shape;
        Ok(GpuMambaState {
            conv: gpu.zeros((self.conv_kernel - 1) * self.cd())?,
            ssm: gpu.zeros(s.heads * s.head_dim * s.d_state)?,
        })
    }

    /// `x` `[n, hidden]` (bf16, the normed residual) → `out` `[n, hidden]` f32, with
    /// scratch allocated for this call. One token takes the recurrent step (dt
    /// unclamped), more the chunked scan, as on the CPU.
    pub fn forward<T: KernelDtype>(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<bf16>,
        n: usize,
        state: &mut GpuMambaState<T>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let mut zxbcdt = gpu.zeros::<f32>(n * self.pd())?;
        let mut xbc = gpu.zeros::<f32>(n * self.cd())?;
        let mut y = gpu.zeros::<f32>(n * self.di())?;
        let mut inner = gpu.zeros::<bf16>(n * self.di())?;
        let scratch = MambaScratch {
            zxbcdt: &mut zxbcdt,
            xbc: &mut xbc,
            y: &mut y,
            inner: &mut inner,
        };
        self.forward_with(
            gpu,
            x,
            n,
            n == 1,
            &mut state.conv,
            &mut state.ssm,
            scratch,
            out,
        )
    }

    /// The mixer: `out = out_proj(gated_norm(scan(conv(in_proj(x)))))` for `n` tokens of
    /// `x` `[n, hidden]` bf16 into `out` `[n, hidden]` f32, with the recurrent step
    /// (`decode`, one token) or the chunked scan, states carried in place. Queues kernels
    /// and GEMMs only (no allocation, no sync): a decode step built on it can be captured.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with<T: KernelDtype>(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<bf16>,
        n: usize,
        decode: bool,
        conv: &mut CudaSlice<f32>,
        ssm_state: &mut CudaSlice<T>,
        b: MambaScratch<'_>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (hs, di, cd, pd, k) = (
            self.hidden,
            self.di(),
            self.cd(),
            self.pd(),
            self.conv_kernel,
        );
        if n == 0 {
            return Ok(());
        }
        if decode && n != 1 {
            return Err(CudaError::Unsupported {
                op: "mamba2",
                why: format!("the recurrent step takes one token, not {n}"),
            });
        }
        gemm::matmul_bf16(gpu, x, n, &self.in_proj, pd, hs, b.zxbcdt, 0.0)?;
        if let Some(bias) = &self.in_proj_bias {
            elementwise::bias_add(gpu, b.zxbcdt, bias, n, pd)?;
        }
        if decode {
            conv1d::update(
                gpu,
                b.zxbcdt,
                di,
                conv,
                &self.conv_w,
                &self.conv_b,
                b.xbc,
                cd,
                k,
            )?;
            ssm::update(
                gpu,
                &self.shape,
                b.xbc,
                b.zxbcdt,
                di + cd,
                &self.dt_bias,
                &self.a,
                &self.d,
                ssm_state,
                b.y,
            )?;
        } else {
            conv1d::prefill(
                gpu,
                b.zxbcdt,
                di,
                pd,
                conv,
                &self.conv_w,
                &self.conv_b,
                b.xbc,
                n,
                cd,
                k,
            )?;
            ssm::chunk_scan(
                gpu,
                &self.shape,
                n,
                self.chunk_size,
                b.xbc,
                b.zxbcdt,
                di + cd,
                pd,
                &self.dt_bias,
                &self.a,
                &self.d,
                self.time_step_min,
                ssm_state,
                b.y,
            )?;
        }
        norm::gated_rms_norm(
            gpu,
            b.y,
            b.zxbcdt,
            0,
            pd,
            &self.norm_w,
            Some(&mut *b.inner),
            n,
            di,
            di / self.shape.n_groups,
            self.eps,
        )?;
        gemm::matmul_bf16(gpu, b.inner, n, &self.out_proj, hs, di, out, 0.0)?;
        if let Some(bias) = &self.out_proj_bias {
            elementwise::bias_add(gpu, out, bias, n, hs)?;
        }
        Ok(())
    }
}
