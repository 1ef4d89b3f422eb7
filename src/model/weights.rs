//! Memory-mapped safetensors (one file, or shards listed in `model.safetensors.index.json`).
//!
//! Tensors stay in the mapped file in their stored dtype; `Tensor` is a view with a shape.
//! Synthetic weights (benchmarks) use the same type with owned bytes.
//!
//! FP8 checkpoints (the published `*-FP8` folders) keep their F8_E4M3 weights as bytes in
//! the map; each carries its `weight_scale` (per tensor or per row), which the matmul
//! applies as it multiplies (`backend::cpu::fp8_matmul`). See `attach_fp8_scales`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use super::files;
use super::{shown, ModelError};
use crate::backend::cpu::{interleave, MatRef, WeightScale};
use crate::backend::dtype::widen_into;
use crate::backend::DType;

/// The bytes tensors are views into: a memory-mapped file, or bytes in memory (a model
/// parsed from a buffer: the fuzz targets).
pub(crate) enum Blob {
    Map(Mmap),
    Vec(Vec<u8>),
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Map(m) => m,
            Blob::Vec(v) => v,
        }
    }
}

impl Blob {
    /// Maps the regular file `path` (see `files::open_regular`), its pages populated at
    /// once (`MAP_POPULATE` on Linux, as llama.cpp maps): otherwise the first prompt after
    /// loading paid one page fault per 4 KiB of weights (a 560 MB BF16 file: ~150 ms more
    /// on its first prefill, Zen 4), where a loader's progress line is the place for it.
    pub(crate) fn map_file(path: &Path) -> Result<Arc<Blob>, ModelError> {
        let f = files::open_regular(path)?;
        // SAFETY: the file is opened read-only; a concurrent writer truncating it would
        // fault, the same contract every mmap-based model loader has.
        let map = unsafe { MmapOptions::new().populate().map(&f) }
            .map_err(|e| ModelError::io(path, e))?;
        Ok(Arc::new(Blob::Map(map)))
    }

    /// Gives the mapped pages wholly inside bytes `start..start + len` back to the kernel
    /// (a tensor another copy now serves: `WeightStore::interleave_for_cpu`), so they stop
    /// counting twice. Whatever still reads them gets them again from the page cache. A
    /// no-op for bytes in memory and off Linux.
    fn release(&self, start: usize, len: usize) {
        #[cfg(target_os = "linux")]
        if let Blob::Map(map) = self {
            // SAFETY: sysconf only reads a constant of the system.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
            let base = map.as_ptr() as usize;
            let first = (base + start).next_multiple_of(page) - base;
            let end = (base + start + len) / page * page - base;
            if end > first && end <= map.len() {
                // SAFETY: the map is a read-only shared mapping of a regular file
                // (`map_file`): dropping its pages changes no byte a later read sees, it
                // only makes that read fault them back in from the page cache.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        first,
                        end - first,
                    )
                };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (start, len);
    }
}

#[derive(Clone)]
enum Bytes {
    Mapped {
        map: Arc<Blob>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    /// The file it was read from (None for synthetic weights), for messages.
    pub file: Option<Arc<PathBuf>>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    bytes: Bytes,
    /// FP8 weights' `weight_scale`: one value (per tensor) or one per row.
    scale: Option<Arc<[f32]>>,
    /// The rows interleaved for decode (`backend::cpu::interleave`; Q4_0, Q4_1 and Q4_K on x86),
    /// made by `interleave_for_cpu`: bytes `start..start + len` of the buffer.
    interleaved: Option<(Arc<Vec<u8>>, usize, usize)>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {} {:?})", self.name, self.dtype, self.shape)
    }
}

impl Tensor {
    pub fn from_owned(name: &str, dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Self {
        debug_assert_eq!(
            data.len(),
            shape.iter().product::<usize>() / shape.last().copied().unwrap_or(1).max(1)
                * dtype.row_bytes(shape.last().copied().unwrap_or(1))
        );
        Tensor {
            name: name.to_string(),
            file: None,
            dtype,
            shape,
            bytes: Bytes::Owned(Arc::new(data)),
            scale: None,
            interleaved: None,
        }
    }

    /// A view of `len` bytes at `start` of a mapped file (GGUF tensors).
    pub(crate) fn mapped(
        name: &str,
        file: Arc<PathBuf>,
        dtype: DType,
        shape: Vec<usize>,
        map: Arc<Blob>,
        start: usize,
        len: usize,
    ) -> Self {
        Tensor {
            name: name.to_string(),
            file: Some(file),
            dtype,
            shape,
            bytes: Bytes::Mapped { map, start, len },
            scale: None,
            interleaved: None,
        }
    }

    pub fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(v) => v,
        }
    }

    /// Entry `j` along the first dimension as a tensor of its own (stacked MoE experts).
    pub fn index_first(&self, j: usize) -> Tensor {
        let n = self.shape.first().copied().unwrap_or(1);
        let each = self.data().len() / n.max(1);
        let shape = self.shape[1..].to_vec();
        let name = format!("{}[{j}]", self.name);
        let bytes = match &self.bytes {
            Bytes::Mapped { map, start, .. } => Bytes::Mapped {
                map: map.clone(),
                start: start + j * each,
                len: each,
            },
            Bytes::Owned(v) => Bytes::Owned(Arc::new(v[j * each..(j + 1) * each].to_vec())),
        };
        // A scaled tensor here is 3-D with one scale for all of it (see attach_fp8_scales).
        Tensor {
            name,
            file: self.file.clone(),
            dtype: self.dtype,
            shape,
            bytes,
            scale: self.scale.clone(),
            // Each entry's matrix was interleaved on its own (`interleave_for_cpu`).
            interleaved: self.interleaved.as_ref().map(|(v, start, len)| {
                let each = len / n.max(1);
                (v.clone(), start + j * each, each)
            }),
        }
    }

    /// Makes the decode copy of this tensor's matrices (each `[rows, cols]` of a 2-D tensor,
    /// or of every entry of a 3-D stack of experts) where `interleave::wanted` says this CPU
    /// gains from one: Q4_0, Q4_1 and Q4_K on x86. The stored bytes stay the reference.
    pub fn interleave_for_cpu(&mut self) {
        let (mats, rows, cols) = match self.shape[..] {
            [r, c] => (1, r, c),
            [e, r, c] => (e, r, c),
            _ => return,
        };
        if !interleave::wanted(self.dtype, cols)
            || self.interleaved.is_some()
            || self.data().len() != mats * rows * self.dtype.row_bytes(cols)
        {
            return;
        }
        let (each, out_each) = (
            self.data().len() / mats.max(1),
            rows.div_ceil(interleave::ROWS) * interleave::group_bytes(self.dtype, cols),
        );
        let mut all = vec![0u8; mats * out_each];
        for (m, out) in all.chunks_exact_mut(out_each.max(1)).enumerate() {
            let mat = &self.data()[m * each..(m + 1) * each];
            interleave::interleave_into(self.dtype, mat, rows, cols, out);
        }
        let len = all.len();
        self.interleaved = Some((Arc::new(all), 0, len));
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The dequantization factor of an FP8 weight (`WeightScale::None` for other dtypes).
    pub fn scale(&self) -> WeightScale<'_> {
        match self.scale.as_deref() {
            None => WeightScale::None,
            Some([s]) => WeightScale::Tensor(*s),
            Some(s) => WeightScale::Rows(s),
        }
    }

    /// As a `[rows, cols]` matrix: the first dimension is rows, the rest are flattened.
    pub fn mat(&self) -> MatRef<'_> {
        let rows = self.shape.first().copied().unwrap_or(1);
        MatRef {
            dtype: self.dtype,
            data: self.data(),
            rows,
            cols: self.numel() / rows.max(1),
            scale: self.scale(),
            interleaved: self
                .interleaved
                .as_ref()
                .map(|(v, start, len)| &v[*start..*start + *len]),
        }
    }

    /// Widened copy (dequantized for FP8), for the small per-channel tensors (norms,
    /// biases, A_log, D, conv).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        if self.scale.is_none() {
            widen_into(self.dtype, self.data(), &mut out);
            return out;
        }
        let rows = self.shape.first().copied().unwrap_or(1).max(1);
        let cols = out.len() / rows;
        for r in 0..rows {
            self.row_f32(r, &mut out[r * cols..(r + 1) * cols]);
        }
        out
    }

    /// Widened copy of one row (embedding lookup), dequantized for FP8.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let cols = self.numel() / self.shape.first().copied().unwrap_or(1).max(1);
        let rb = self.dtype.row_bytes(cols);
        let src = &self.data()[r * rb..(r + 1) * rb];
        match self.scale() {
            WeightScale::None => widen_into(self.dtype, src, out),
            s => crate::backend::cpu::fp8_matmul::widen_row(self.dtype, src, s.row(r), out),
        }
    }
}

/// Where the checkpoint's tensors live.
pub struct WeightStore {
    tensors: HashMap<String, Tensor>,
    /// Files the tensors came from, for messages.
    pub files: Vec<PathBuf>,
}

fn map_dtype(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        safetensors::Dtype::F8_E4M3 => Some(DType::F8E4M3),
        safetensors::Dtype::F8_E5M2 => Some(DType::F8E5M2),
        _ => None,
    }
}

fn shape_error(t: &Tensor, want: &[usize]) -> ModelError {
    let gguf = t
        .file
        .as_ref()
        .and_then(|f| f.extension())
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    ModelError::TensorShape {
        file: t
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "synthetic weights".into()),
        implied_by: if gguf {
            "the file's metadata"
        } else if t.file.is_none() {
            "the shape's config"
        } else {
            "config.json"
        },
        name: t.name.clone(),
        want: want.to_vec(),
        got: t.shape.clone(),
    }
}

impl WeightStore {
    pub fn from_tensors(tensors: Vec<Tensor>) -> Self {
        WeightStore {
            tensors: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
            files: vec![],
        }
    }

    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`,
    /// or every `*.safetensors` in the folder when neither exists. Only regular files are
    /// opened, and an index's shards must lie inside `dir` (`files::shard_path`).
    pub fn open_dir(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if files::probe(&index, files::MAX_TEXT_BYTES)?.is_some() {
            let text = files::read_text(&index, files::MAX_TEXT_BYTES)?;
            shard_names(&text, &index)?
                .iter()
                .map(|n| files::shard_path(dir, &index, n))
                .collect::<Result<_, _>>()?
        } else if single.exists() {
            vec![single]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| ModelError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(ModelError::Weights {
                    file: dir.to_path_buf(),
                    msg: "no *.safetensors file in this folder".into(),
                });
            }
            found
        };
        let mut tensors = HashMap::new();
        for file in &files {
            read_safetensors(Blob::map_file(file)?, file, &mut tensors)?;
        }
        attach_fp8_scales(&mut tensors)?;
        Ok(WeightStore { tensors, files })
    }

    /// One safetensors file held in memory, `path` naming it in messages (the fuzz
    /// target's entry: the same checks as `open_dir`).
    pub fn from_safetensors_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        read_safetensors(Arc::new(Blob::Vec(bytes)), path, &mut tensors)?;
        attach_fp8_scales(&mut tensors)?;
        Ok(WeightStore {
            tensors,
            files: vec![path.to_path_buf()],
        })
    }

    /// The highest layer index any tensor name carries (`*.layers.{i}.*`, GGUF's
    /// `blk.{i}.*`), with that tensor's name: a checkpoint holding layers its config does
    /// not describe is refused by the loaders.
    pub fn last_layer(&self) -> Option<(usize, &str)> {
        self.tensors
            .keys()
            .filter_map(|n| layer_index(n).map(|i| (i, n.as_str())))
            .max()
    }

    fn missing(&self, name: &str) -> ModelError {
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        ModelError::MissingTensor {
            name: name.to_string(),
            files: if files.is_empty() {
                "synthetic weights".into()
            } else {
                files.join(", ")
            },
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// Interleaves the matrices decode multiplies (`Tensor::interleave_for_cpu`): every
    /// tensor but a token embedding with an output matrix of its own (the embedding is
    /// only looked up by rows then). For the CPU backend's GGUF loaders.
    pub fn interleave_for_cpu(&mut self) {
        let untied = ["output.weight", "lm_head.weight"]
            .iter()
            .any(|n| self.tensors.contains_key(*n));
        use rayon::prelude::*;
        self.tensors.par_iter_mut().for_each(|(name, t)| {
            let embedding = name == "token_embd.weight" || name == "model.embed_tokens.weight";
            if !(embedding && untied) {
                t.interleave_for_cpu();
                // The stored bytes of an interleaved tensor are read again only by row
                // lookups (a tied embedding): its resident pages go.
                if t.interleaved.is_some() {
                    if let Bytes::Mapped { map, start, len } = &t.bytes {
                        map.release(*start, *len);
                    }
                }
            }
        });
    }

    /// The tensor named `name`, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        if t.shape != shape {
            return Err(shape_error(t, shape));
        }
        Ok(t.clone())
    }

    /// Like `get`, accepting `[n, 1, k]` for `[n, k]` (conv1d weights) and any shape with
    /// the same element count for 1-D parameters.
    pub fn get_squeezed(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        let squeezed: Vec<usize> = t.shape.iter().copied().filter(|d| *d != 1).collect();
        let want: Vec<usize> = shape.iter().copied().filter(|d| *d != 1).collect();
        if squeezed != want {
            return Err(shape_error(t, shape));
        }
        let mut t = t.clone();
        t.shape = shape.to_vec();
        Ok(t)
    }

    /// The dtype most weights are stored in (for `auto` cache dtypes and reports): for the
    /// published FP8 checkpoints, `fp8_e4m3`.
    pub fn main_dtype(&self) -> DType {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for t in self.tensors.values() {
            *counts.entry(t.dtype).or_default() += t.numel();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or(DType::F32)
    }

    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data().len()).sum()
    }
}

/// The layer a tensor belongs to: `{i}` in `backbone.layers.{i}.…` / `model.layers.{i}.…`
/// or GGUF's `blk.{i}.…`.
fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    let mut prev = parts.next()?;
    if prev == "blk" {
        return parts.next()?.parse().ok();
    }
    for p in parts {
        if prev == "layers" {
            return p.parse().ok();
        }
        prev = p;
    }
    None
}

/// The shard file names `model.safetensors.index.json` lists (its `weight_map` values),
/// sorted and deduplicated; every value must be a string.
pub fn shard_names(text: &str, index: &Path) -> Result<Vec<String>, ModelError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ModelError::Weights {
        file: index.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::ConfigField {
            file: index.to_path_buf(),
            field: "weight_map".into(),
            msg: "is missing or not an object".into(),
        })?;
    let mut names = Vec::with_capacity(map.len().min(1 << 16));
    for (tensor, f) in map {
        let name = f.as_str().ok_or_else(|| ModelError::ConfigField {
            file: index.to_path_buf(),
            field: format!("weight_map.{}", shown(tensor)),
            msg: format!("is {f}, not a file name"),
        })?;
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The tensors of one safetensors file (`blob` holds its bytes) into `out`.
fn read_safetensors(
    blob: Arc<Blob>,
    path: &Path,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), ModelError> {
    let werr = |msg: String| ModelError::Weights {
        file: path.to_path_buf(),
        msg,
    };
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&blob[..]).map_err(|e| {
        werr(match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => format!(
                "file is truncated ({} bytes, fewer than its header describes)",
                blob.len()
            ),
            e => format!("not a valid safetensors file: {}", shown(&e.to_string())),
        })
    })?;
    let base = 8 + header_len;
    let file = Arc::new(path.to_path_buf());
    for (name, info) in meta.tensors() {
        let name_ = shown(&name);
        let dtype = map_dtype(info.dtype).ok_or_else(|| {
            werr(format!(
                "tensor `{name_}` has dtype {:?}, which nemo does not read",
                info.dtype
            ))
        })?;
        let (s, e) = info.data_offsets;
        if base.checked_add(e).is_none_or(|end| end > blob.len()) || s > e {
            return Err(werr(format!(
                "file is truncated (tensor `{name_}` ends past the end)"
            )));
        }
        out.insert(
            name.clone(),
            Tensor {
                name: name.clone(),
                file: Some(file.clone()),
                dtype,
                shape: info.shape.clone(),
                bytes: Bytes::Mapped {
                    map: blob.clone(),
                    start: base + s,
                    len: e - s,
                },
                scale: None,
                interleaved: None,
            },
        );
    }
    Ok(())
}

fn weights_err(t: &Tensor, msg: String) -> ModelError {
    ModelError::Weights {
        file: t.file.as_deref().cloned().unwrap_or_default(),
        msg,
    }
}

/// Gives every FP8 weight its dequantization scale, the tensor named `<module>.weight_scale`
/// next to `<module>.weight` (possibly in another shard). The layouts, and where each fact
/// comes from:
///
/// - NVIDIA ModelOpt export (`quantization_config.quant_method: "modelopt"`, `quant_algo:
///   "FP8"`; the nvidia/*-FP8 repos, e.g. NVIDIA-Nemotron-Nano-9B-v2-FP8 and
///   NVIDIA-Nemotron-3-Nano-30B-A3B-FP8): `X.weight` F8_E4M3 `[out, in]`, `X.weight_scale`
///   F32 with one value (vLLM `ModelOptFp8LinearMethod` reads one per tensor), `X.input_scale`
///   F32 one value (static activation scale). `quant_algo: "FP8_PER_CHANNEL_PER_TOKEN"`:
///   `weight_scale` F32 `[out]`, no `input_scale` (vLLM `ModelOptFp8PcPtLinearMethod`).
///   MoE experts are stored per expert, each with its own scales
///   (`mixer.experts.{j}.up_proj.weight_scale`). With `kv_cache_quant_algo: "FP8"` the
///   attention layers also carry `k_proj.k_scale` / `v_proj.v_scale` (one F32 each).
/// - compressed-tensors (`quant_method: "compressed-tensors"`, `format: "float-quantized"`,
///   llm-compressor's FP8 recipes): `weight_scale` `[1]` for `strategy: "tensor"`, `[out, 1]`
///   for `"channel"` (vLLM `CompressedTensorsW8A8Fp8.create_weights`); `input_scale` only
///   with static activations.
/// - What stays unquantized (it is simply stored in bf16/f32 and needs nothing here):
///   embeddings, `lm_head`, every norm, Mamba `conv1d`, `A_log`, `D`, `dt_bias`, the MoE
///   router `gate` (F32) and its correction bias; in the Nemotron-H FP8 recipes also the
///   attention projections and (Nemotron-3-Nano) the Mamba layers next to attention. The
///   model card of Nano-9B-v2-FP8 says attention and conv1d stay BF16; the per-layer list is
///   the config's `quantization_config.ignore`. nemo does not need that list: a tensor's
///   stored dtype says whether it is FP8.
///
/// Scales stored as BF16/F16 are widened (llm-compressor can write scales in the model's
/// dtype; not confirmed for a published file). `input_scale`, `k_scale` and `v_scale` are
/// left unused: activations stay f32 (see `backend::cpu::fp8_matmul`) and the KV cache
/// runs in the dtype the user picks.
fn attach_fp8_scales(tensors: &mut HashMap<String, Tensor>) -> Result<(), ModelError> {
    let fp8: Vec<String> = tensors
        .values()
        .filter(|t| matches!(t.dtype, DType::F8E4M3 | DType::F8E5M2))
        .map(|t| t.name.clone())
        .collect();
    for name in fp8 {
        let t = &tensors[&name];
        let name_ = shown(&name);
        let Some(stem) = name.strip_suffix(".weight") else {
            return Err(weights_err(
                t,
                format!(
                    "tensor `{name_}` is {} but not a `.weight`; nemo reads FP8 only for weights with a `weight_scale`",
                    t.dtype
                ),
            ));
        };
        let scale_name = format!("{stem}.weight_scale");
        let scale_ = shown(&scale_name);
        let Some(s) = tensors.get(&scale_name) else {
            return Err(weights_err(
                t,
                format!(
                    "tensor `{name_}` is {} but its scale `{scale_}` is missing",
                    t.dtype
                ),
            ));
        };
        if !matches!(s.dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(weights_err(
                s,
                format!(
                    "tensor `{scale_}` has dtype {}; a weight scale must be f32, bf16 or f16",
                    s.dtype
                ),
            ));
        }
        let rows = t.shape.first().copied().unwrap_or(1);
        let per_row = t.shape.len() == 2 && (s.shape == [rows] || s.shape == [rows, 1]);
        if s.numel() != 1 && !per_row {
            return Err(weights_err(
                s,
                format!(
                    "tensor `{scale_}` has shape {:?}; for `{name_}` {:?} it must hold one value \
                     (per tensor) or be [{rows}] / [{rows}, 1] (per row)",
                    s.shape, t.shape
                ),
            ));
        }
        let values = s.to_f32();
        if let Some(bad) = values.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(weights_err(
                s,
                format!("tensor `{scale_}` holds {bad}; a weight scale must be finite and ≥ 0"),
            ));
        }
        let values: Arc<[f32]> = values.into();
        if let Some(t) = tensors.get_mut(&name) {
            t.scale = Some(values);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stack of Q4_0 experts interleaves each expert on its own, and `index_first` hands
    /// each expert its own part (what an expert's matmul reads on x86).
    #[test]
    fn stacked_experts_interleave_one_by_one() {
        let (e, rows, cols) = (3, 20, 64);
        let rb = DType::Q4_0.row_bytes(cols);
        let data: Vec<u8> = (0..e * rows * rb).map(|i| (i * 31 % 253) as u8).collect();
        let mut t = Tensor::from_owned("experts", DType::Q4_0, vec![e, rows, cols], data);
        t.interleave_for_cpu();
        if !interleave::wanted(DType::Q4_0, cols) {
            assert!(t.mat().interleaved.is_none());
            return crate::backend::cpu::skip_test("no interleaved Q4_0 kernel on this CPU");
        }
        for j in 0..e {
            let x = t.index_first(j);
            let want = interleave::interleave(DType::Q4_0, x.data(), rows, cols);
            assert_eq!(x.mat().interleaved, Some(&want[..]), "expert {j}");
        }
    }
}
