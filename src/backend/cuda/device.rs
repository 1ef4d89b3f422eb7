//! The device context: driver probe, the embedded kernel modules, one stream, cuBLAS.
//!
//! The stream is a created (non-blocking) stream, not the legacy default stream: CUDA
//! cannot capture work on the legacy stream into a graph, and the decode step is captured
//! (`nemotron_h`). cuBLAS gets a workspace of its own, allocated once with the handle, so
//! that it never allocates while a graph is being captured.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::{CudaError, DeviceInfo};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
}

/// The CUDA version the driver supports (`cuDriverGetVersion`: 13000 → (13, 0)).
pub fn driver_cuda_version() -> Option<(i32, i32)> {
    let mut v: std::ffi::c_int = 0;
    // SAFETY: one out-parameter, written by the driver; the call needs no context.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS && v > 0)
        .then_some((v / 1000, (v % 1000) / 10))
}

/// Why this build's kernels do not load on a GPU of compute capability `cc` with a driver
/// for CUDA `driver`: one line naming the fix.
fn load_failure(cc: (i32, i32), driver: Option<(i32, i32)>) -> String {
    let arch = format!("sm_{}{}", cc.0, cc.1);
    let built = embedded::ARCHS;
    let nvcc = embedded::NVCC_VERSION;
    let too_old = match (driver, nvcc.split_once('.')) {
        (Some((dmaj, dmin)), Some((a, b))) => match (a.parse::<i32>(), b.parse::<i32>()) {
            (Ok(a), Ok(b)) => (dmaj, dmin) < (a, b),
            _ => false,
        },
        _ => false,
    };
    let drv = driver.map_or("unknown".to_string(), |(a, b)| format!("{a}.{b}"));
    if too_old {
        format!(
            "the kernels were built by nvcc {nvcc}, but this driver supports CUDA {drv}: update the driver, or rebuild with an nvcc no newer than CUDA {drv} (NVCC=…)"
        )
    } else {
        format!(
            "the kernels were not built for this GPU ({arch}; this build has {built}): rebuild with NEMO_CUDA_ARCHS={arch}"
        )
    }
}

/// Whether this build carries compiled kernels (nvcc was found at build time).
pub fn has_kernels() -> bool {
    !embedded::FATBINS.is_empty()
}

/// Whether the NVIDIA driver library (libcuda) can be loaded.
pub fn driver_present() -> bool {
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn driver_err(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// Checks, without panicking, that kernels, driver and a GPU are there; names GPU 0.
pub fn probe() -> Result<DeviceInfo, CudaError> {
    if !has_kernels() {
        return Err(CudaError::NoKernels);
    }
    // cudarc panics when it cannot load libcuda; look first.
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let n = CudaContext::device_count().map_err(|e| CudaError::NoDevice(format!("{e:?}")))?;
    if n < 1 {
        return Err(CudaError::NoDevice("the driver sees 0 devices".into()));
    }
    let ctx = CudaContext::new(0).map_err(|e| CudaError::NoDevice(format!("{e:?}")))?;
    info(&ctx)
}

fn info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo, CudaError> {
    Ok(DeviceInfo {
        name: ctx.name().map_err(driver_err)?,
        compute_capability: ctx.compute_capability().map_err(driver_err)?,
        total_memory: ctx.total_mem().map_err(driver_err)?,
    })
}

/// A raw device address of `T` elements; launchers build these from checked slices.
#[derive(Clone, Copy, Debug)]
pub struct DPtr<T> {
    raw: u64,
    _t: PhantomData<T>,
}

impl<T> DPtr<T> {
    pub fn null() -> Self {
        DPtr {
            raw: 0,
            _t: PhantomData,
        }
    }
    pub fn raw(&self) -> u64 {
        self.raw
    }
}

/// One GPU: context, stream, the kernel modules, cuBLAS (loaded on first use).
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub info: DeviceInfo,
    /// Streaming multiprocessors (sizes the split-K decode attention).
    pub sm_count: usize,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// The handle and the workspace it was given (kept alive as long as the handle).
    blas: Mutex<Option<(Arc<cudarc::cublas::CudaBlas>, CudaSlice<u8>)>>,
}

/// cuBLAS workspace: the size the cuBLAS docs recommend for `cublasSetWorkspace` (32 MiB
/// from Hopper on, 4 MiB before), as PyTorch and MLX give their handles.
fn blas_workspace_bytes(cc: (i32, i32)) -> usize {
    if cc.0 >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

impl Gpu {
    /// Opens GPU `ordinal` and loads every embedded kernel module.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        probe()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice(format!("{e:?}")))?;
        // One stream, so cudarc's per-buffer event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        let info = info(&ctx)?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(driver_err)?
            .max(1) as usize;
        let stream = ctx.new_stream().map_err(driver_err)?;
        let mut modules = HashMap::new();
        for (name, bin) in embedded::FATBINS {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(bin.to_vec()))
                .map_err(|e| {
                    let s = format!("{e:?}");
                    if s.contains("NO_BINARY_FOR_GPU") || s.contains("UNSUPPORTED_PTX_VERSION") {
                        CudaError::KernelsDoNotLoad(load_failure(
                            info.compute_capability,
                            driver_cuda_version(),
                        ))
                    } else {
                        CudaError::Driver(format!("loading kernels/{name}.cu: {s}"))
                    }
                })?;
            modules.insert(*name, m);
        }
        Ok(Gpu {
            ctx,
            stream,
            info,
            sm_count,
            modules,
            functions: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    /// Kernel `name` from `kernels/<module>.cu`.
    pub fn func(
        &self,
        module: &'static str,
        name: &'static str,
    ) -> Result<CudaFunction, CudaError> {
        let mut cache = self
            .functions
            .lock()
            .map_err(|_| CudaError::Driver("poisoned lock".into()))?;
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let m = self.modules.get(module).ok_or_else(|| {
            CudaError::Driver(format!("no kernel module `{module}` in this build"))
        })?;
        let f = m
            .load_function(name)
            .map_err(|e| CudaError::Driver(format!("kernel `{name}` in {module}.cu: {e:?}")))?;
        cache.insert(name, f.clone());
        Ok(f)
    }

    /// cuBLAS on this GPU's stream (loaded on first use), with its own workspace.
    pub fn blas(&self) -> Result<Arc<cudarc::cublas::CudaBlas>, CudaError> {
        let mut b = self
            .blas
            .lock()
            .map_err(|_| CudaError::Driver("poisoned lock".into()))?;
        if let Some((h, _)) = b.as_ref() {
            return Ok(h.clone());
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoCublas);
        }
        let h = Arc::new(
            cudarc::cublas::CudaBlas::new(self.stream.clone())
                .map_err(|e| CudaError::Blas(format!("{e:?}")))?,
        );
        // After the handle's cublasSetStream (which resets the workspace to cuBLAS's own
        // pool): from here on cuBLAS takes its scratch from this buffer and never
        // allocates, which stream capture requires.
        let bytes = blas_workspace_bytes(self.info.compute_capability);
        let ws = self.zeros::<u8>(bytes)?;
        let ptr = {
            let (ptr, _sync) = ws.device_ptr(&self.stream);
            ptr
        };
        let status = unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*h.handle(), ptr as *mut _, bytes)
        };
        if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(CudaError::Blas(format!("cublasSetWorkspace: {status:?}")));
        }
        *b = Some((h.clone(), ws));
        Ok(h)
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream.clone_htod(host).map_err(driver_err)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        self.stream.alloc_zeros(n.max(1)).map_err(driver_err)
    }

    /// Copies to the host once every queued kernel is done.
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        // Pageable copies already wait for the stream; the sync makes it explicit.
        let v = self.stream.clone_dtoh(dev).map_err(driver_err)?;
        self.sync()?;
        Ok(v)
    }

    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver_err)
    }

    /// The address of element `offset` of `s`, after checking that `need` elements from
    /// there are inside it.
    pub fn ptr<T>(
        &self,
        op: &'static str,
        buf: &'static str,
        s: &CudaSlice<T>,
        offset: usize,
        need: usize,
    ) -> Result<DPtr<T>, CudaError> {
        if offset + need > s.len() {
            return Err(CudaError::BadBuffer {
                op,
                buf,
                have: s.len().saturating_sub(offset),
                need,
            });
        }
        let (raw, _sync) = s.device_ptr(&self.stream);
        Ok(DPtr {
            raw: raw + (offset * std::mem::size_of::<T>()) as u64,
            _t: PhantomData,
        })
    }

    /// Launches `module::name` with `args` (each a plain value: device addresses as u64,
    /// sizes as i32/i64, scalars as f32), in order.
    pub fn launch(
        &self,
        module: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        self.launch_smem(module, name, grid, block, 0, args)
    }

    /// `launch` with `smem` bytes of dynamic shared memory; past the 48 KiB every kernel
    /// gets by default the function opts in first (every target arch has ≥ 99 KiB).
    pub fn launch_smem(
        &self,
        module: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: usize,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let f = self.func(module, name)?;
        let bytes = u32::try_from(smem)
            .map_err(|_| CudaError::Driver(format!("{name}: {smem} B of shared memory")))?;
        if smem > 48 << 10 {
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| CudaError::Driver(format!("{name}: {smem} B of shared memory: {e:?}")))?;
        }
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: bytes,
        };
        // SAFETY: each launcher passes the arguments its kernel's signature takes, checked
        // against the buffers' lengths (`Gpu::ptr`).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| CudaError::Driver(format!("launching {name}: {e:?}")))
    }
}

/// A kernel argument, pushed by value.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl<T> From<DPtr<T>> for Arg {
    fn from(p: DPtr<T>) -> Self {
        Arg::Ptr(p.raw)
    }
}

impl<T> From<Option<DPtr<T>>> for Arg {
    fn from(p: Option<DPtr<T>>) -> Self {
        Arg::Ptr(p.map_or(0, |p| p.raw))
    }
}

/// `n` as an i32 kernel argument, or an `Unsupported` error naming `what`.
pub fn i32_arg(op: &'static str, what: &str, n: usize) -> Result<Arg, CudaError> {
    i32::try_from(n)
        .map(Arg::I32)
        .map_err(|_| CudaError::Unsupported {
            op,
            why: format!("{what} = {n} does not fit in 32 bits"),
        })
}

/// Blocks of `threads` covering `n` items.
pub fn blocks(n: usize, threads: usize) -> u32 {
    n.div_ceil(threads).max(1) as u32
}

/// Element types the kernels are instantiated for, by the suffix of their names.
pub trait KernelDtype: DeviceRepr {
    const SUFFIX: &'static str;
}
impl KernelDtype for f32 {
    const SUFFIX: &'static str = "f32";
}
impl KernelDtype for half::f16 {
    const SUFFIX: &'static str = "f16";
}
impl KernelDtype for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

#[cfg(test)]
mod tests {
    use super::load_failure;

    #[test]
    fn a_kernel_load_failure_names_the_driver_or_the_arch() {
        let nvcc = super::embedded::NVCC_VERSION;
        if let Some((a, b)) = nvcc.split_once('.') {
            let (a, b): (i32, i32) = (a.parse().unwrap(), b.parse().unwrap());
            // A driver older than the nvcc that built the kernels: update it or rebuild.
            let old = load_failure((9, 0), Some((a - 1, 8)));
            assert!(old.contains(&format!("nvcc {nvcc}")), "{old}");
            assert!(old.contains(&format!("CUDA {}.8", a - 1)), "{old}");
            // A driver new enough: the arch is what is missing.
            let arch = load_failure((12, 1), Some((a, b)));
            assert!(arch.contains("NEMO_CUDA_ARCHS=sm_121"), "{arch}");
        }
        let unknown = load_failure((8, 6), None);
        assert!(unknown.contains("NEMO_CUDA_ARCHS=sm_86"), "{unknown}");
    }
}
