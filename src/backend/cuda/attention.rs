//! Attention over a device KV cache (kernels/attention.cu): append (FP8 with per-token,
//! per-head scales exactly as `state::KvCache`), decode split over the sequence, causal
//! prefill. Oracles `state::KvCache::{append, read_head}` and `model::attention`.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::{ensure, i32_arg, Arg, CudaError, Gpu};
use crate::backend::DType;

/// Largest head_dim the kernels hold in registers (`ATT_MAX_HD`).
pub const MAX_HEAD_DIM: usize = 256;
/// Most sequence splits of one decode step, and the fewest positions per split.
const MAX_SPLITS: usize = 128;
const MIN_SPAN: usize = 128;

pub fn supports(
    dtype: DType,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(), CudaError> {
    const OP: &str = "attention";
    ensure(
        matches!(
            dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2
        ),
        OP,
        || format!("KV cache dtype {dtype}"),
    )?;
    ensure((1..=MAX_HEAD_DIM).contains(&head_dim), OP, || {
        format!("head_dim {head_dim} (1..={MAX_HEAD_DIM})")
    })?;
    ensure(
        kv_heads > 0 && heads.is_multiple_of(kv_heads) && heads <= 65535,
        OP,
        || format!("{heads} query heads over {kv_heads} kv heads"),
    )
}

fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F8E4M3 => "fp8e4m3",
        _ => "fp8e5m2",
    }
}

fn kernel(prefix: &'static str, dtype: DType) -> &'static str {
    // Names are `<op>_<variant>_<dtype>`; spelled out so the launcher can never ask for a
    // kernel the .cu file does not define.
    match (prefix, suffix(dtype)) {
        ("kv_append", "f32") => "kv_append_f32",
        ("kv_append", "f16") => "kv_append_f16",
        ("kv_append", "bf16") => "kv_append_bf16",
        ("kv_append", "fp8e4m3") => "kv_append_fp8e4m3",
        ("kv_append", _) => "kv_append_fp8e5m2",
        ("attn_decode", "f32") => "attn_decode_f32",
        ("attn_decode", "f16") => "attn_decode_f16",
        ("attn_decode", "bf16") => "attn_decode_bf16",
        ("attn_decode", "fp8e4m3") => "attn_decode_fp8e4m3",
        ("attn_decode", _) => "attn_decode_fp8e5m2",
        ("attn_prefill", "f32") => "attn_prefill_f32",
        ("attn_prefill", "f16") => "attn_prefill_f16",
        ("attn_prefill", "bf16") => "attn_prefill_bf16",
        ("attn_prefill", "fp8e4m3") => "attn_prefill_fp8e4m3",
        (_, _) => "attn_prefill_fp8e5m2",
    }
}

/// One layer's KV cache on the device, `[capacity, kv_heads, head_dim]` elements of `dtype`
/// (bytes here), plus `[capacity, kv_heads]` f32 scales for FP8; allocated once.
pub struct GpuKvCache {
    pub dtype: DType,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    len: usize,
    k: CudaSlice<u8>,
    v: CudaSlice<u8>,
    k_scale: CudaSlice<f32>,
    v_scale: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
    part_acc: CudaSlice<f32>,
}

impl GpuKvCache {
    pub fn new(
        gpu: &Gpu,
        dtype: DType,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<Self, CudaError> {
        supports(dtype, heads, kv_heads, head_dim)?;
        let elems = capacity * kv_heads * head_dim;
        Ok(GpuKvCache {
            dtype,
            heads,
            kv_heads,
            head_dim,
            capacity,
            len: 0,
            k: gpu.zeros(elems * dtype.size())?,
            v: gpu.zeros(elems * dtype.size())?,
            k_scale: gpu.zeros(capacity * kv_heads)?,
            v_scale: gpu.zeros(capacity * kv_heads)?,
            part_ml: gpu.zeros(heads * MAX_SPLITS * 2)?,
            part_acc: gpu.zeros(heads * MAX_SPLITS * head_dim)?,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn bytes_for(&self, positions: usize) -> usize {
        positions * self.kv_heads * self.head_dim * self.dtype.size()
    }

    /// Appends `n` positions of `k_new`, `v_new` (`[n, kv_heads, head_dim]` f32).
    pub fn append(
        &mut self,
        gpu: &Gpu,
        k_new: &CudaSlice<f32>,
        v_new: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        const OP: &str = "kv_append";
        if self.len + n > self.capacity {
            return Err(CudaError::Unsupported {
                op: OP,
                why: format!(
                    "{} + {n} positions exceed the cache's {}",
                    self.len, self.capacity
                ),
            });
        }
        if n == 0 {
            return Ok(());
        }
        let (kvh, hd) = (self.kv_heads, self.head_dim);
        let cap_bytes = self.bytes_for(self.capacity);
        let args = [
            gpu.ptr(OP, "k_new", k_new, 0, n * kvh * hd)?.into(),
            gpu.ptr(OP, "v_new", v_new, 0, n * kvh * hd)?.into(),
            gpu.ptr(OP, "k_cache", &self.k, 0, cap_bytes)?.into(),
            gpu.ptr(OP, "v_cache", &self.v, 0, cap_bytes)?.into(),
            gpu.ptr(OP, "k_scale", &self.k_scale, 0, self.capacity * kvh)?
                .into(),
            gpu.ptr(OP, "v_scale", &self.v_scale, 0, self.capacity * kvh)?
                .into(),
            Arg::I64(self.len as i64),
            i32_arg(OP, "kv_heads", kvh)?,
            i32_arg(OP, "head_dim", hd)?,
        ];
        let rows = u32::try_from(n * kvh).map_err(|_| CudaError::Unsupported {
            op: OP,
            why: format!("{n} positions at once"),
        })?;
        gpu.launch(
            "attention",
            kernel("kv_append", self.dtype),
            (rows, 2, 1),
            32,
            &args,
        )?;
        self.len += n;
        Ok(())
    }

    fn cache_args(&self, gpu: &Gpu, op: &'static str) -> Result<[Arg; 4], CudaError> {
        let cap_bytes = self.bytes_for(self.capacity);
        let kvh = self.kv_heads;
        Ok([
            gpu.ptr(op, "k_cache", &self.k, 0, cap_bytes)?.into(),
            gpu.ptr(op, "v_cache", &self.v, 0, cap_bytes)?.into(),
            gpu.ptr(op, "k_scale", &self.k_scale, 0, self.capacity * kvh)?
                .into(),
            gpu.ptr(op, "v_scale", &self.v_scale, 0, self.capacity * kvh)?
                .into(),
        ])
    }

    /// One query token `q` `[heads, head_dim]` over every cached position (the new token's
    /// k/v appended first) → `out` `[heads, head_dim]` (and bf16 for the o_proj GEMM).
    pub fn decode(
        &mut self,
        gpu: &Gpu,
        q: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        out_bf16: Option<&mut CudaSlice<bf16>>,
    ) -> Result<(), CudaError> {
        const OP: &str = "attn_decode";
        let (nh, hd) = (self.heads, self.head_dim);
        ensure(self.len > 0, OP, || "empty cache".into())?;
        let nsplit = self.len.div_ceil(MIN_SPAN).clamp(1, MAX_SPLITS);
        let span = self.len.div_ceil(nsplit);
        let [kc, vc, ks, vs] = self.cache_args(gpu, OP)?;
        let ml = gpu.ptr(OP, "part_ml", &self.part_ml, 0, nh * nsplit * 2)?;
        let acc = gpu.ptr(OP, "part_acc", &self.part_acc, 0, nh * nsplit * hd)?;
        let args = [
            gpu.ptr(OP, "q", q, 0, nh * hd)?.into(),
            kc,
            vc,
            ks,
            vs,
            ml.into(),
            acc.into(),
            i32_arg(OP, "len", self.len)?,
            i32_arg(OP, "heads", nh)?,
            i32_arg(OP, "kv_heads", self.kv_heads)?,
            i32_arg(OP, "head_dim", hd)?,
            i32_arg(OP, "span", span)?,
            Arg::F32((hd as f32).powf(-0.5)),
        ];
        gpu.launch(
            "attention",
            kernel("attn_decode", self.dtype),
            (nh as u32, nsplit as u32, 1),
            128,
            &args,
        )?;
        let args = [
            ml.into(),
            acc.into(),
            gpu.ptr(OP, "out", out, 0, nh * hd)?.into(),
            out_bf16
                .map(|o| gpu.ptr(OP, "out_bf16", o, 0, nh * hd))
                .transpose()?
                .into(),
            i32_arg(OP, "nsplit", nsplit)?,
            i32_arg(OP, "head_dim", hd)?,
        ];
        gpu.launch(
            "attention",
            "attn_decode_combine_f32",
            (nh as u32, 1, 1),
            256,
            &args,
        )
    }

    /// The last `n` cached positions' queries `q` `[n, heads, head_dim]`, causal over the
    /// whole cache → `out` `[n, heads, head_dim]`.
    pub fn prefill(
        &mut self,
        gpu: &Gpu,
        q: &CudaSlice<f32>,
        n: usize,
        out: &mut CudaSlice<f32>,
        out_bf16: Option<&mut CudaSlice<bf16>>,
    ) -> Result<(), CudaError> {
        const OP: &str = "attn_prefill";
        let (nh, hd) = (self.heads, self.head_dim);
        ensure(n <= self.len, OP, || {
            format!("{n} queries but {} cached positions", self.len)
        })?;
        if n == 0 {
            return Ok(());
        }
        let qblocks = n.div_ceil(8);
        ensure(qblocks <= 65535, OP, || format!("{n} queries in one call"))?;
        let [kc, vc, ks, vs] = self.cache_args(gpu, OP)?;
        let args = [
            gpu.ptr(OP, "q", q, 0, n * nh * hd)?.into(),
            kc,
            vc,
            ks,
            vs,
            gpu.ptr(OP, "out", out, 0, n * nh * hd)?.into(),
            out_bf16
                .map(|o| gpu.ptr(OP, "out_bf16", o, 0, n * nh * hd))
                .transpose()?
                .into(),
            i32_arg(OP, "n", n)?,
            i32_arg(OP, "past", self.len - n)?,
            i32_arg(OP, "heads", nh)?,
            i32_arg(OP, "kv_heads", self.kv_heads)?,
            i32_arg(OP, "head_dim", hd)?,
            Arg::F32((hd as f32).powf(-0.5)),
        ];
        gpu.launch(
            "attention",
            kernel("attn_prefill", self.dtype),
            (nh as u32, qblocks as u32, 1),
            256,
            &args,
        )
    }

    /// The cache's raw contents for positions `0..len`: (k bytes, v bytes, k scales, v scales).
    #[allow(clippy::type_complexity)]
    pub fn download(&self, gpu: &Gpu) -> Result<(Vec<u8>, Vec<u8>, Vec<f32>, Vec<f32>), CudaError> {
        let b = self.bytes_for(self.len);
        let s = self.len * self.kv_heads;
        let mut k = gpu.download(&self.k)?;
        let mut v = gpu.download(&self.v)?;
        let mut ks = gpu.download(&self.k_scale)?;
        let mut vs = gpu.download(&self.v_scale)?;
        k.truncate(b);
        v.truncate(b);
        ks.truncate(s);
        vs.truncate(s);
        Ok((k, v, ks, vs))
    }
}
