//! The Mamba2 mixer on the GPU, composed from the ops (in_proj GEMM → conv1d → scan →
//! gated RMSNorm → out_proj GEMM); oracle `model::mamba2::Mamba2` (same formulas, same
//! layouts: zxbcdt = z | xBC | dt per token). Built from plain host arrays so the backend
//! does not depend on `model`; weights are bf16 on the device, small tensors f32.

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

pub struct GpuMamba2 {
    shape: ScanShape,
    hidden: usize,
    k: usize,
    chunk: usize,
    dt_min: f32,
    eps: f32,
    in_proj: CudaSlice<bf16>,
    in_proj_bias: Option<CudaSlice<f32>>,
    conv_w: CudaSlice<f32>,
    conv_b: CudaSlice<f32>,
    dt_bias: CudaSlice<f32>,
    a: CudaSlice<f32>,
    d: CudaSlice<f32>,
    norm_w: CudaSlice<f32>,
    out_proj: CudaSlice<bf16>,
    out_proj_bias: Option<CudaSlice<f32>>,
}

/// One sequence's Mamba2 state on the device (`conv_state` `[k-1, cd]` f32, `ssm`
/// `[heads, head_dim, d_state]` in T).
pub struct GpuMambaState<T> {
    pub conv: CudaSlice<f32>,
    pub ssm: CudaSlice<T>,
}

impl GpuMamba2 {
    fn di(&self) -> usize {
        self.shape.heads * self.shape.head_dim
    }
    fn cd(&self) -> usize {
        self.di() + 2 * self.shape.n_groups * self.shape.d_state
    }
    fn pd(&self) -> usize {
        2 * self.di() + 2 * self.shape.n_groups * self.shape.d_state + self.shape.heads
    }

    pub fn new(gpu: &Gpu, h: &Mamba2Host<'_>) -> Result<Self, CudaError> {
        let s = h.shape;
        ssm::supports_scan(&s, h.chunk_size)?;
        conv1d::supports(1, h.conv_kernel, 1)?;
        let di = s.heads * s.head_dim;
        norm::supports_gated(di, di / s.n_groups)?;
        let opt = |v: Option<&[f32]>| v.map(|b| gpu.upload(b)).transpose();
        let m = GpuMamba2 {
            shape: s,
            hidden: h.hidden,
            k: h.conv_kernel,
            chunk: h.chunk_size,
            dt_min: h.time_step_min,
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
        };
        let want = [
            ("in_proj", m.in_proj.len(), m.pd() * m.hidden),
            ("out_proj", m.out_proj.len(), m.hidden * di),
            ("conv1d.weight", m.conv_w.len(), m.cd() * m.k),
            ("norm.weight", m.norm_w.len(), di),
        ];
        for (name, have, need) in want {
            if have != need {
                return Err(CudaError::Unsupported {
                    op: "mamba2",
                    why: format!("{name} has {have} elements, the shape needs {need}"),
                });
            }
        }
        Ok(m)
    }

    pub fn new_state<T: KernelDtype + cudarc::driver::ValidAsZeroBits>(
        &self,
        gpu: &Gpu,
    ) -> Result<GpuMambaState<T>, CudaError> {
        let s = &self.shape;
        Ok(GpuMambaState {
            conv: gpu.zeros((self.k - 1) * self.cd())?,
            ssm: gpu.zeros(s.heads * s.head_dim * s.d_state)?,
        })
    }

    /// `x` `[n, hidden]` (bf16, the normed residual) → `out` `[n, hidden]` f32. One token
    /// takes the recurrent step (dt unclamped), more the chunked scan, as on the CPU.
    pub fn forward<T: KernelDtype>(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<bf16>,
        n: usize,
        state: &mut GpuMambaState<T>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (di, cd, pd) = (self.di(), self.cd(), self.pd());
        if n == 0 {
            return Ok(());
        }
        let mut zxbcdt = gpu.zeros::<f32>(n * pd)?;
        gemm::matmul_bf16(gpu, x, n, &self.in_proj, pd, self.hidden, &mut zxbcdt, 0.0)?;
        if let Some(b) = &self.in_proj_bias {
            elementwise::bias_add(gpu, &mut zxbcdt, b, n, pd)?;
        }
        let mut xbc = gpu.zeros::<f32>(n * cd)?;
        let mut y = gpu.zeros::<f32>(n * di)?;
        if n == 1 {
            conv1d::update(
                gpu,
                &zxbcdt,
                di,
                &mut state.conv,
                &self.conv_w,
                &self.conv_b,
                &mut xbc,
                cd,
                self.k,
            )?;
            ssm::update(
                gpu,
                &self.shape,
                &xbc,
                &zxbcdt,
                di + cd,
                &self.dt_bias,
                &self.a,
                &self.d,
                &mut state.ssm,
                &mut y,
            )?;
        } else {
            conv1d::prefill(
                gpu,
                &zxbcdt,
                di,
                pd,
                &mut state.conv,
                &self.conv_w,
                &self.conv_b,
                &mut xbc,
                n,
                cd,
                self.k,
            )?;
            ssm::chunk_scan(
                gpu,
                &self.shape,
                n,
                self.chunk,
                &xbc,
                &zxbcdt,
                di + cd,
                pd,
                &self.dt_bias,
                &self.a,
                &self.d,
                self.dt_min,
                &mut state.ssm,
                &mut y,
            )?;
        }
        let mut yb = gpu.zeros::<bf16>(n * di)?;
        let group = di / self.shape.n_groups;
        norm::gated_rms_norm(
            gpu,
            &mut y,
            &zxbcdt,
            0,
            pd,
            &self.norm_w,
            Some(&mut yb),
            n,
            di,
            group,
            self.eps,
        )?;
        gemm::matmul_bf16(gpu, &yb, n, &self.out_proj, self.hidden, di, out, 0.0)?;
        if let Some(b) = &self.out_proj_bias {
            elementwise::bias_add(gpu, out, b, n, self.hidden)?;
        }
        Ok(())
    }
}
