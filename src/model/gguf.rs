//! GGUF files (llama.cpp's single-file format), versions 2 and 3.
//!
//! Layout (ggml `docs/gguf.md`): magic `GGUF`, u32 version, u64 tensor count, u64 metadata
//! count; metadata as (string key, u32 type, value); tensor infos as (string name, u32
//! n_dims, u64 dims innermost first, u32 ggml type, u64 offset); padding to
//! `general.alignment` (default 32); then the tensor data, offsets relative to its start.
//!
//! The file is memory-mapped and tensors stay in it in their stored (often block-quantized)
//! type. Every read is bounds-checked: a truncated or corrupt file is an error naming the
//! file and the field being read, never a panic. Shapes are reported outermost first
//! (`[rows, cols]`, like safetensors), the reverse of GGUF's `ne` order.
//!
//! Memory follows the file, not its claims: every count is checked against the bytes
//! that follow it before anything is sized by it; metadata arrays stay in the map
//! (`Array`, decoded when read; a string array keeps one offset per element, no more than
//! the element's own length prefix); tensors may not overlap, and the data section must
//! account for the file's end (a tensor count one too low shifts every tensor and would
//! otherwise load as noise).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::weights::{Blob, Tensor, WeightStore};
use super::{shown, ModelError};
use crate::backend::DType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// The fewest bytes one metadata entry takes: key length, an empty key, type, a u8 value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// The fewest bytes one tensor info takes: name length, an empty name, n_dims 0, type,
/// offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

// GGUF metadata value types (`gguf_type`).
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type (and bool) that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of `values` (all of the first one's type), as a file would hold it: for
    /// writing test files and building expected values. None for mixed types or nesting.
    pub fn array(values: Vec<Value>) -> Option<Value> {
        Array::from_values(&values).map(Value::Array)
    }

    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => T_U8,
            Value::I8(_) => T_I8,
            Value::U16(_) => T_U16,
            Value::I16(_) => T_I16,
            Value::U32(_) => T_U32,
            Value::I32(_) => T_I32,
            Value::F32(_) => T_F32,
            Value::Bool(_) => T_BOOL,
            Value::String(_) => T_STRING,
            Value::Array(_) => T_ARRAY,
            Value::U64(_) => T_U64,
            Value::I64(_) => T_I64,
            Value::F64(_) => T_F64,
        }
    }

    /// The value's bytes as GGUF stores them (after its type id).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Value::Array(a) => {
                out.extend(a.ty.to_le_bytes());
                out.extend((a.len as u64).to_le_bytes());
                out.extend(a.raw());
            }
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
        }
    }
}

/// Bytes of one element of a fixed-size type; None for strings and arrays.
fn fixed_size(ty: u32) -> Option<usize> {
    match ty {
        T_U8 | T_I8 | T_BOOL => Some(1),
        T_U16 | T_I16 => Some(2),
        T_U32 | T_I32 | T_F32 => Some(4),
        T_U64 | T_I64 | T_F64 => Some(8),
        _ => None,
    }
}

/// Decodes one fixed-size element (`b` holds exactly its bytes).
fn decode_fixed(ty: u32, b: &[u8]) -> Option<Value> {
    let a = |n: usize| b.get(..n);
    Some(match ty {
        T_U8 => Value::U8(*b.first()?),
        T_I8 => Value::I8(*b.first()? as i8),
        T_BOOL => Value::Bool(*b.first()? != 0),
        T_U16 => Value::U16(u16::from_le_bytes(a(2)?.try_into().ok()?)),
        T_I16 => Value::I16(i16::from_le_bytes(a(2)?.try_into().ok()?)),
        T_U32 => Value::U32(u32::from_le_bytes(a(4)?.try_into().ok()?)),
        T_I32 => Value::I32(i32::from_le_bytes(a(4)?.try_into().ok()?)),
        T_F32 => Value::F32(f32::from_le_bytes(a(4)?.try_into().ok()?)),
        T_U64 => Value::U64(u64::from_le_bytes(a(8)?.try_into().ok()?)),
        T_I64 => Value::I64(i64::from_le_bytes(a(8)?.try_into().ok()?)),
        T_F64 => Value::F64(f64::from_le_bytes(a(8)?.try_into().ok()?)),
        _ => return None,
    })
}

/// A metadata array, left in the file's bytes: elements are decoded when read.
/// String arrays are checked (bounds, UTF-8) when the file is opened and keep where each
/// element starts.
#[derive(Clone)]
pub struct Array {
    /// Element type id.
    ty: u32,
    len: usize,
    blob: Arc<Blob>,
    /// The elements' bytes in `blob`.
    start: usize,
    end: usize,
    /// String arrays: each element's length prefix, relative to `start`.
    offsets: Arc<Vec<usize>>,
}

impl Array {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type id (`gguf_type`).
    pub fn element_type(&self) -> u32 {
        self.ty
    }

    /// The elements' bytes as stored.
    fn raw(&self) -> &[u8] {
        &self.blob[self.start..self.end]
    }

    /// Element `i`, decoded (a string element is copied: prefer `str_at`).
    pub fn get(&self, i: usize) -> Option<Value> {
        if i >= self.len {
            return None;
        }
        match fixed_size(self.ty) {
            Some(n) => decode_fixed(self.ty, self.raw().get(i * n..(i + 1) * n)?),
            None => self.str_at(i).map(|s| Value::String(s.to_string())),
        }
    }

    /// Element `i` of a string array, borrowed from the file.
    pub fn str_at(&self, i: usize) -> Option<&str> {
        if self.ty != T_STRING {
            return None;
        }
        let at = *self.offsets.get(i)?;
        let raw = self.raw();
        let n = u64::from_le_bytes(raw.get(at..at + 8)?.try_into().ok()?) as usize;
        std::str::from_utf8(raw.get(at + 8..(at + 8).checked_add(n)?)?).ok()
    }

    /// Every element, decoded in turn.
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// Every element of a string array, borrowed (None in place of each element of an
    /// array of another type).
    pub fn strs(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        (0..self.len).map(|i| self.str_at(i))
    }

    /// An array of `values` in memory, encoded as a file holds it (see `Value::array`).
    pub fn from_values(values: &[Value]) -> Option<Array> {
        let ty = values.first().map(Value::type_id).unwrap_or(T_U32);
        if ty == T_ARRAY || values.iter().any(|v| v.type_id() != ty) {
            return None;
        }
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for v in values {
            offsets.push(bytes.len());
            v.encode(&mut bytes);
        }
        if ty != T_STRING {
            offsets.clear();
        }
        let end = bytes.len();
        Some(Array {
            ty,
            len: values.len(),
            blob: Arc::new(Blob::Vec(bytes)),
            start: 0,
            end,
            offsets: Arc::new(offsets),
        })
    }
}

impl PartialEq for Array {
    fn eq(&self, other: &Array) -> bool {
        self.ty == other.ty && self.len == other.len && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array(type {}, {} elements", self.ty, self.len)?;
        let head: Vec<Value> = self.iter().take(4).collect();
        write!(f, ", starting {head:?})")
    }
}

/// Where one tensor lives in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Outermost first (`[rows, cols]`).
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub len: usize,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    map: Arc<Blob>,
}

/// The ggml type id → nemo dtype (`ggml_type` in ggml.h).
fn ggml_dtype(id: u32) -> Option<DType> {
    Some(match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        12 => DType::Q4_K,
        13 => DType::Q5_K,
        14 => DType::Q6_K,
        30 => DType::BF16,
        _ => return None,
    })
}

fn ggml_type_name(id: u32) -> &'static str {
    match id {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        15 => "Q8_K",
        16..=23 => "IQ*",
        _ => "unknown",
    }
}

/// A bounds-checked reader over the mapped bytes.
struct Cursor<'a> {
    blob: &'a Arc<Blob>,
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: String) -> ModelError {
        ModelError::Weights {
            file: self.path.to_path_buf(),
            msg,
        }
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], ModelError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.err(format!(
                "file is truncated ({} bytes) while reading {}",
                self.buf.len(),
                what()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], ModelError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in the rest of the file (each item is at least `min_item` bytes).
    fn count(&mut self, min_item: usize, what: &dyn Fn() -> String) -> Result<usize, ModelError> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(self.err(format!(
                "file is truncated or corrupt: {} claims {n} items but only {left} bytes follow",
                what()
            )));
        }
        Ok(n as usize)
    }

    /// A string's bytes, checked to be UTF-8, left in place.
    fn str_bytes(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, ModelError> {
        let n = self.count(1, what)?;
        let s = self.take(n, what)?;
        std::str::from_utf8(s).map_err(|_| self.err(format!("{} is not valid UTF-8", what())))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, ModelError> {
        self.str_bytes(what).map(str::to_string)
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<Value, ModelError> {
        if let Some(n) = fixed_size(ty) {
            let b = self.take(n, what)?;
            return decode_fixed(ty, b)
                .ok_or_else(|| self.err(format!("{} is unreadable", what())));
        }
        Ok(match ty {
            T_STRING => Value::String(self.string(what)?),
            T_ARRAY => {
                let ety = self.u32(what)?;
                if ety == T_ARRAY {
                    // Nested arrays are legal but no model uses them; one level keeps the
                    // recursion bounded on a corrupt file.
                    return Err(self.err(format!("{} is a nested array", what())));
                }
                let size = match (fixed_size(ety), ety) {
                    (Some(n), _) => n,
                    (None, T_STRING) => 8,
                    _ => {
                        return Err(self.err(format!(
                            "{} is an array of unknown value type {ety}",
                            what()
                        )))
                    }
                };
                let n = self.count(size, what)?;
                let start = self.pos;
                let mut offsets = Vec::new();
                if ety == T_STRING {
                    // At most one offset per 8 bytes of the file: `count` checked that.
                    offsets.reserve_exact(n);
                    for _ in 0..n {
                        offsets.push(self.pos - start);
                        self.str_bytes(what)?;
                    }
                } else {
                    self.take(n * size, what)?;
                }
                Value::Array(Array {
                    ty: ety,
                    len: n,
                    blob: self.blob.clone(),
                    start,
                    end: self.pos,
                    offsets: Arc::new(offsets),
                })
            }
            t => return Err(self.err(format!("{} has unknown value type {t}", what()))),
        })
    }
}

impl GgufFile {
    /// Maps and parses the regular file `path` (a FIFO or device is an error, not a wait).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        Self::parse(path, Blob::map_file(path)?)
    }

    /// Parses a file's bytes held in memory; `path` names it in messages (the fuzz
    /// target's entry: the same checks as `open`).
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, ModelError> {
        Self::parse(path, Arc::new(Blob::Vec(bytes)))
    }

    fn parse(path: &Path, map: Arc<Blob>) -> Result<Self, ModelError> {
        let mut c = Cursor {
            blob: &map,
            buf: &map[..],
            pos: 0,
            path,
        };
        let magic = c.array::<4>(&|| "the magic number".into())?;
        if &magic != MAGIC {
            return Err(c.err(format!(
                "not a GGUF file (magic is {magic:02x?}, want \"GGUF\")"
            )));
        }
        let version = c.u32(&|| "the version".into())?;
        if version != 2 && version != 3 {
            return Err(c.err(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = c.count(MIN_TENSOR_INFO_BYTES, &|| "the tensor count".into())?;
        let n_kv = c.count(MIN_KV_BYTES, &|| "the metadata count".into())?;
        let mut metadata = HashMap::with_capacity(n_kv.min(1024));
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata `{}`", shown(&key));
            let ty = c.u32(&what)?;
            let v = c.value(ty, &what)?;
            metadata.insert(key, v);
        }
        let mut raw = Vec::with_capacity(n_tensors.min(1 << 16));
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor #{i}"))?;
            let what = || format!("tensor info `{}`", shown(&name));
            let nd = c.u32(&what)?;
            if nd > 8 {
                return Err(c.err(format!("{} has {nd} dimensions", what())));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(c.u64(&what)?);
            }
            let ty = c.u32(&what)?;
            let off = c.u64(&what)?;
            raw.push((name, dims, ty, off));
        }
        let align = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(c.err("metadata `general.alignment` is not a power of two".into())),
            },
        };
        let data_start = (c.pos as u64).div_ceil(align).saturating_mul(align);
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, off) in raw {
            let shown_name = shown(&name);
            let name_ = &shown_name;
            let dtype = ggml_dtype(ty).ok_or_else(|| {
                c.err(format!(
                    "tensor `{name_}` has ggml type {ty} ({}), which nemo does not read",
                    ggml_type_name(ty)
                ))
            })?;
            if dims.contains(&0) {
                return Err(c.err(format!("tensor `{name_}` has a zero dimension in {dims:?}")));
            }
            let cols = dims.first().copied().unwrap_or(1);
            let (be, bb) = dtype.block();
            if !cols.is_multiple_of(be as u64) {
                return Err(c.err(format!(
                    "tensor `{name_}` has {cols} columns, not a multiple of {dtype}'s block of {be}"
                )));
            }
            // Bytes = elements / block elements × block bytes; a product past u64 is no
            // file at all, anything else is measured against the file's length below.
            let len = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|n| (n / be as u64).checked_mul(bb as u64))
                .ok_or_else(|| c.err(format!("tensor `{name_}` has impossible dims {dims:?}")))?;
            let start = data_start.checked_add(off).filter(|s| s % align == 0);
            let Some(start) = start else {
                return Err(c.err(format!("tensor `{name_}` has a misaligned offset {off}")));
            };
            let end = start.saturating_add(len);
            if end > file_len {
                return Err(c.err(format!(
                    "file is truncated ({file_len} bytes): tensor `{name_}` ends at byte {end}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                // Every dim is at most the file's length now (its bytes fit the file).
                shape: dims.iter().rev().map(|&d| d as usize).collect(),
                dtype,
                start: start as usize,
                len: len as usize,
            });
        }
        check_layout(&c, &tensors, file_len, align, n_tensors)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn field_err(&self, key: &str, msg: &str) -> ModelError {
        ModelError::ConfigField {
            file: self.path.clone(),
            field: key.into(),
            msg: msg.into(),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        self.get(key)
            .ok_or_else(|| self.field_err(key, "is missing"))?
            .as_str()
            .ok_or_else(|| self.field_err(key, "is not a string"))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.get(key)
            .ok_or_else(|| self.field_err(key, "is missing"))?
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.field_err(key, "is not a non-negative integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, ModelError> {
        self.get(key)
            .ok_or_else(|| self.field_err(key, "is missing"))?
            .as_f64()
            .ok_or_else(|| self.field_err(key, "is not a number"))
    }

    /// A number that must be finite and greater than 0 (`layer_norm_rms_epsilon`,
    /// `rope.freq_base`): NaN, infinity, 0 or a negative value is an error naming `key`.
    pub fn get_positive(&self, key: &str) -> Result<f64, ModelError> {
        let v = self.get_f64(key)?;
        // Also as the f32 the model keeps (1e-50 would be an epsilon of 0).
        if !v.is_finite() || !(v as f32).is_finite() || (v as f32) <= 0.0 {
            return Err(self.field_err(
                key,
                &format!("is {v}; it must be a finite number greater than 0"),
            ));
        }
        Ok(v)
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, ModelError> {
        self.get(key)
            .ok_or_else(|| self.field_err(key, "is missing"))?
            .as_array()
            .ok_or_else(|| self.field_err(key, "is not an array"))
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.get_str("general.architecture")
    }

    /// A token id the tokenizer metadata names (`tokenizer.ggml.eos_token_id`, ...), checked
    /// against the vocabulary size `vocab`: None when absent, an error naming `key` when it
    /// is not an id below `vocab`.
    pub fn token_id(&self, key: &str, vocab: usize) -> Result<Option<u32>, ModelError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        let id = self.get_usize(key)?;
        if id >= vocab {
            return Err(self.field_err(
                key,
                &format!("is {id}, past the vocabulary of {vocab} tokens"),
            ));
        }
        Ok(Some(id as u32))
    }

    /// Refuses tensors of blocks past `block_count` (metadata key `key`): a count lower than
    /// the blocks present would silently drop layers.
    pub fn check_block_count(&self, key: &str, block_count: usize) -> Result<(), ModelError> {
        let extra = self
            .tensors
            .iter()
            .filter_map(|t| {
                let i: usize = t
                    .name
                    .strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()?;
                Some((i, &t.name))
            })
            .max();
        match extra {
            Some((i, name)) if i >= block_count => Err(self.field_err(
                key,
                &format!(
                    "is {block_count}, but the file holds tensors of block {i} (`{}`)",
                    shown(name)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// All tensors as views into the mapped file.
    pub fn weights(&self) -> WeightStore {
        let file = Arc::new(self.path.clone());
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                Tensor::mapped(
                    &t.name,
                    file.clone(),
                    t.dtype,
                    t.shape.clone(),
                    self.map.clone(),
                    t.start,
                    t.len,
                )
            })
            .collect();
        let mut w = WeightStore::from_tensors(tensors);
        w.files = vec![self.path.clone()];
        w
    }
}

/// The data section's layout: no two tensors share bytes (so the weights a file claims
/// are never more than it holds), and no more than alignment padding follows the last
/// tensor. llama.cpp's writers pad each tensor to the alignment and end the file there;
/// a tensor count lower than the infos written moves the data start back by at least one
/// info's size, which leaves that much (and the uncounted tensor) unclaimed at the end.
fn check_layout(
    c: &Cursor<'_>,
    tensors: &[TensorInfo],
    file_len: u64,
    align: u64,
    n_tensors: usize,
) -> Result<(), ModelError> {
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .map(|t| (t.start, t.start + t.len, t.name.as_str()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        let ((_, a_end, a), (b_start, _, b)) = (w[0], w[1]);
        let (a, b) = (shown(a), shown(b));
        if b_start < a_end {
            return Err(c.err(format!(
                "tensor `{b}` overlaps tensor `{a}` (it starts at byte {b_start}, before `{a}` ends at {a_end})"
            )));
        }
    }
    if let Some(last_end) = spans.iter().map(|s| s.1).max() {
        let unclaimed = file_len - last_end as u64;
        if unclaimed >= align {
            return Err(c.err(format!(
                "the tensor count ({n_tensors}) is too low: {unclaimed} bytes after the last tensor's data belong to no tensor"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v3 file with `kv` and no tensors (tokenizer tests).
    pub(crate) fn metadata_only_gguf(kv: &[(&str, Value)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            Value::String(k.to_string()).encode(&mut b);
            b.extend(v.type_id().to_le_bytes());
            v.encode(&mut b);
        }
        b
    }

    #[test]
    fn every_value_type_round_trips() {
        let kv = vec![
            ("u8", Value::U8(7)),
            ("i8", Value::I8(-7)),
            ("u16", Value::U16(700)),
            ("i16", Value::I16(-700)),
            ("u32", Value::U32(70000)),
            ("i32", Value::I32(-70000)),
            ("f32", Value::F32(1.5)),
            ("bool", Value::Bool(true)),
            ("s", Value::String("ünï".into())),
            (
                "a",
                Value::array(vec![Value::F64(0.25), Value::F64(-2.0)]).unwrap(),
            ),
            (
                "sa",
                Value::array(vec![Value::String("x".into()), Value::String("".into())]).unwrap(),
            ),
            ("u64", Value::U64(1 << 40)),
            ("i64", Value::I64(-(1 << 40))),
            ("f64", Value::F64(1e-6)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kv.gguf");
        std::fs::write(&p, metadata_only_gguf(&kv)).unwrap();
        let g = GgufFile::open(&p).unwrap();
        for (k, v) in &kv {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
    }

    /// A minimal v3 file: one u32, one string array, one F32 tensor `[2, 3]`.
    pub(crate) fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "llama.block_count");
        b.extend(4u32.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "é");
        s(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..6 {
            b.extend((i as f32).to_le_bytes());
        }
        b
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_metadata_arrays_and_tensors() {
        let (_d, p) = write(&tiny_gguf());
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get_usize("llama.block_count").unwrap(), 7);
        let toks: Vec<&str> = g
            .get_array("tokenizer.ggml.tokens")
            .unwrap()
            .strs()
            .map(Option::unwrap)
            .collect();
        assert_eq!(toks, ["a", "é"]);
        let t = g.weights().get("w", &[2, 3]).unwrap();
        assert_eq!(t.to_f32(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn corrupt_counts_dims_and_offsets_are_errors_not_panics() {
        let full = tiny_gguf();
        // Overwrite 8 bytes at each offset of the header and tensor info with 0xFF…
        let data_start = full.len() - 24;
        for at in 4..data_start.saturating_sub(8) {
            let mut b = full.clone();
            b[at..at + 8].fill(0xFF);
            let (_d, p) = write(&b);
            if let Err(e) = GgufFile::open(&p) {
                assert!(e.to_string().contains("m.gguf"), "{at}: {e}");
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        for n in 0..full.len() {
            let (_d, p) = write(&full[..n]);
            let e = GgufFile::open(&p).err().unwrap().to_string();
            assert!(e.contains("m.gguf") && !e.contains('\n'), "{n}: {e}");
        }
    }
}
