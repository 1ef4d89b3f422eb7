//! Attention over a device KV cache (kernels/attention.cu): append (FP8 with per-token,
//! per-head scales exactly as `state::KvCache`), decode split over the sequence, causal
//! prefill. Oracles `state::KvCache::{append, read_head}` and `model::attention`.
//!
//! Invariants:
//! - How many positions a sequence holds lives on the device (`DevicePosition`, one i32)
//!   with a host mirror; append writes at the device value and decode reads its length
//!   from it, so a decode step captured into a CUDA graph stays right at every replay.
//!   The host mirror is what launchers check bounds against; only `DevicePosition` moves
//!   either, and it moves both.
//! - A cache keeps no length of its own: the sequence's position is the one length (every
//!   attention layer of a sequence holds the same positions), so rewinding a sequence is
//!   setting its position.
//! - Decode splits the sequence over a FIXED number of blocks per head, chosen when the
//!   cache is made (from its capacity and the SM count); the kernel spreads the device
//!   length over them, and splits left empty add nothing in the combine.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::{ensure, i32_arg, Arg, CudaError, Gpu};
use crate::backend::DType;

/// Largest head_dim the kernels hold in registers (`ATT_MAX_HD`).
pub const MAX_HEAD_DIM: usize = 256;
/// Most sequence splits of one decode step, and the fewest positions per used split.
pub const MAX_SPLITS: usize = 128;
const MIN_SPAN: usize = 128;
/// Decode blocks (heads × splits) to aim for per SM: enough warps in flight to keep the
/// memory system busy at long contexts (4 warps a block).
const BLOCKS_PER_SM: usize = 16;

/// The decode split count for a cache of `capacity` positions and `heads` query heads on
/// a GPU with `sms` SMs: no more than the capacity can fill at `MIN_SPAN` positions a
/// split, no more than needed for `BLOCKS_PER_SM` blocks per SM, at most `MAX_SPLITS`.
pub fn decode_splits(capacity: usize, heads: usize, sms: usize) -> usize {
    let by_len = capacity.div_ceil(MIN_SPAN);
    let by_sms = (BLOCKS_PER_SM * sms.max(1)).div_ceil(heads.max(1));
    by_len.min(by_sms).clamp(1, MAX_SPLITS)
}

/// How many positions a sequence holds: one i32 on the device, which the attention
/// kernels read and a kernel advances (so a replayed graph moves it itself), and its host
/// mirror.
pub struct DevicePosition {
    dev: CudaSlice<i32>,
    host: usize,
}

impl DevicePosition {
    /// Position 0.
    pub fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        Ok(DevicePosition {
            dev: gpu.zeros(1)?,
            host: 0,
        })
    }

    /// The host mirror: positions fed so far.
    pub fn get(&self) -> usize {
        self.host
    }

    /// Sets both (one 4-byte copy to the device, queued on the stream).
    pub fn set(&mut self, gpu: &Gpu, len: usize) -> Result<(), CudaError> {
        let v = i32::try_from(len).map_err(|_| CudaError::Unsupported {
            op: "position",
            why: format!("position {len} does not fit in 32 bits"),
        })?;
        gpu.stream
            .memcpy_htod(&[v], &mut self.dev)
            .map_err(|e| CudaError::Driver(format!("{e:?}")))?;
        self.host = len;
        Ok(())
    }

    /// Advances both by `n`.
    pub fn advance(&mut self, gpu: &Gpu, n: usize) -> Result<(), CudaError> {
        self.record_advance(gpu, n)?;
        self.note_advanced(n);
        Ok(())
    }

    /// Queues the device-side advance only (the last launch of a decode step, so that it
    /// is part of a captured graph); the caller moves the mirror with `note_advanced`
    /// once the step has been launched.
    pub fn record_advance(&self, gpu: &Gpu, n: usize) -> Result<(), CudaError> {
        const OP: &str = "seq_position_advance";
        let args = [
            gpu.ptr(OP, "pos", &self.dev, 0, 1)?.into(),
            i32_arg(OP, "n", n)?,
        ];
        gpu.launch("attention", OP, (1, 1, 1), 1, &args)
    }

    /// Moves the host mirror by `n` (after `record_advance` ran or a graph holding it was
    /// launched).
    pub fn note_advanced(&mut self, n: usize) {
        self.host += n;
    }

    fn ptr(&self, gpu: &Gpu, op: &'static str) -> Result<Arg, CudaError> {
        Ok(gpu.ptr(op, "pos", &self.dev, 0, 1)?.into())
    }
}

pub fn supports(
    dtype: DType,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(), CudaError> {
    const OP: &str = "attention";
    super::flash::supports_cache_dtype(OP, dtype)?;
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
/// (bytes here), plus `[capacity, kv_heads]` f32 scales for FP8, and the decode partials
/// for its fixed split count; allocated once. Positions come from the sequence's
/// `DevicePosition`.
pub struct GpuKvCache {
    pub dtype: DType,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    splits: usize,
    k: CudaSlice<u8>,
    v: CudaSlice<u8>,
    k_scale: CudaSlice<f32>,
    v_scale: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
    part_acc: CudaSlice<f32>,
}

impl GpuKvCache {
    /// A cache whose decode split count suits its capacity on this GPU (`decode_splits`).
    pub fn new(
        gpu: &Gpu,
        dtype: DType,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<Self, CudaError> {
        let splits = decode_splits(capacity, heads, gpu.sm_count);
        Self::with_splits(gpu, dtype, heads, kv_heads, head_dim, capacity, splits)
    }

    /// A cache whose decode always launches `splits` blocks per head (1..=`MAX_SPLITS`).
    pub fn with_splits(
        gpu: &Gpu,
        dtype: DType,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        splits: usize,
    ) -> Result<Self, CudaError> {
        supports(dtype, heads, kv_heads, head_dim)?;
        ensure((1..=MAX_SPLITS).contains(&splits), "attention", || {
            format!("{splits} decode splits (1..={MAX_SPLITS})")
        })?;
        ensure(capacity <= i32::MAX as usize, "attention", || {
            format!("capacity {capacity} positions")
        })?;
        let elems = capacity * kv_heads * head_dim;
        Ok(GpuKvCache {
            dtype,
            heads,
            kv_heads,
            head_dim,
            capacity,
            splits,
            k: gpu.zeros(elems * dtype.size())?,
            v: gpu.zeros(elems * dtype.size())?,
            k_scale: gpu.zeros(capacity * kv_heads)?,
            v_scale: gpu.zeros(capacity * kv_heads)?,
            part_ml: gpu.zeros(heads * splits * 2)?,
            part_acc: gpu.zeros(heads * splits * head_dim)?,
        })
    }

    /// Decode blocks per head (fixed for the cache's life).
    pub fn splits(&self) -> usize {
        self.splits
    }

    fn bytes_for(&self, positions: usize) -> usize {
        positions * self.kv_heads * self.head_dim * self.dtype.size()
    }

    /// Writes `n` positions of `k_new`, `v_new` (`[n, kv_heads, head_dim]` f32) at
    /// positions `pos ..pos + n` (the device value; the mirror is checked here). Does not
    /// move `pos`: the sequence does once the whole step is queued.
    pub fn append(
        &mut self,
        gpu: &Gpu,
        k_new: &CudaSlice<f32>,
        v_new: &CudaSlice<f32>,
        n: usize,
        pos: &DevicePosition,
    ) -> Result<(), CudaError> {
        const OP: &str = "kv_append";
        if pos.get() + n > self.capacity {
            return Err(CudaError::Unsupported {
                op: OP,
                why: format!(
                    "{} + {n} positions exceed the cache's {}",
                    pos.get(),
                    self.capacity
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
            pos.ptr(gpu, OP)?,
            i32_arg(OP, "capacity", self.capacity)?,
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
        )
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

    /// One query token `q` `[heads, head_dim]` at position `pos` (its k/v appended there
    /// first) over cached positions `0 ..= pos` → `out` `[heads, head_dim]` (and bf16 for
    /// the o_proj GEMM). The length is read on the device; the launch does not depend on
    /// it, so the same launch serves every step of a captured graph.
    pub fn decode(
        &mut self,
        gpu: &Gpu,
        q: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        out_bf16: Option<&mut CudaSlice<bf16>>,
        pos: &DevicePosition,
    ) -> Result<(), CudaError> {
        const OP: &str = "attn_decode";
        let (nh, hd, nsplit) = (self.heads, self.head_dim, self.splits);
        ensure(pos.get() < self.capacity, OP, || {
            format!(
                "position {} is outside the cache's {}",
                pos.get(),
                self.capacity
            )
        })?;
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
            pos.ptr(gpu, OP)?,
            i32_arg(OP, "capacity", self.capacity)?,
            i32_arg(OP, "heads", nh)?,
            i32_arg(OP, "kv_heads", self.kv_heads)?,
            i32_arg(OP, "head_dim", hd)?,
            i32_arg(OP, "min_span", MIN_SPAN)?,
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

    /// Queries `q` `[n, heads, head_dim]` of positions `past .. past + n` (their k/v
    /// appended there first), causal over the cache → `out` `[n, heads, head_dim]`. The
    /// prompt path: `past` comes from the host, the launch depends on it.
    pub fn prefill(
        &mut self,
        gpu: &Gpu,
        q: &CudaSlice<f32>,
        n: usize,
        past: usize,
        out: &mut CudaSlice<f32>,
        out_bf16: Option<&mut CudaSlice<bf16>>,
    ) -> Result<(), CudaError> {
        const OP: &str = "attn_prefill";
        let (nh, hd) = (self.heads, self.head_dim);
        ensure(past + n <= self.capacity, OP, || {
            format!(
                "{past} + {n} positions exceed the cache's {}",
                self.capacity
            )
        })?;
        if n == 0 {
            return Ok(());
        }
        // Head dims with a tensor-core kernel take it (kernels/flash_attention.cu); the
        // CUDA-core kernel below serves the others (tests/cuda_ops.rs checks it).
        if super::flash::supports(self.dtype, nh, self.kv_heads, hd).is_ok() {
            let kv = super::flash::KvView {
                dtype: self.dtype,
                kv_heads: self.kv_heads,
                head_dim: hd,
                positions: past + n,
                k: &self.k,
                v: &self.v,
                k_scale: &self.k_scale,
                v_scale: &self.v_scale,
            };
            return super::flash::prefill(
                gpu,
                &kv,
                nh,
                n,
                super::flash::Queries::F32(q),
                out,
                out_bf16,
            );
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
            i32_arg(OP, "past", past)?,
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
    pub fn download(
        &self,
        gpu: &Gpu,
        len: usize,
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<f32>, Vec<f32>), CudaError> {
        let len = len.min(self.capacity);
        let b = self.bytes_for(len);
        let s = len * self.kv_heads;
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
