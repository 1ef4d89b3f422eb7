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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::weights::{Tensor, WeightStore};
use super::ModelError;
use crate::backend::DType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

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
    Array(Vec<Value>),
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

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
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
    map: Arc<Mmap>,
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

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, ModelError> {
        let n = self.count(1, what)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| self.err(format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<Value, ModelError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                let ety = self.u32(what)?;
                if ety == 9 {
                    // Nested arrays are legal but no model uses them; one level keeps the
                    // recursion bounded on a corrupt file.
                    return Err(self.err(format!("{} is a nested array", what())));
                }
                let n = self.count(1, what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(ety, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(self.err(format!("{} has unknown value type {t}", what()))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only mapping; the same contract as the safetensors loader.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))?;
        let map = Arc::new(map);
        let mut c = Cursor {
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
        let n_tensors = c.count(8, &|| "the tensor count".into())?;
        let n_kv = c.count(8, &|| "the metadata count".into())?;
        let mut metadata = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata `{key}`");
            let ty = c.u32(&what)?;
            let v = c.value(ty, &what)?;
            metadata.insert(key, v);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor #{i}"))?;
            let what = || format!("tensor info `{name}`");
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
        let data_start = (c.pos as u64).div_ceil(align) * align;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, off) in raw {
            let dtype = ggml_dtype(ty).ok_or_else(|| {
                c.err(format!(
                    "tensor `{name}` has ggml type {ty} ({}), which nemo does not read",
                    ggml_type_name(ty)
                ))
            })?;
            let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
            let numel = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= file_len.saturating_mul(8))
                .ok_or_else(|| c.err(format!("tensor `{name}` has impossible dims {dims:?}")))?;
            let cols = dims.first().copied().unwrap_or(1) as usize;
            let (be, _) = dtype.block();
            if !cols.is_multiple_of(be) {
                return Err(c.err(format!(
                    "tensor `{name}` has {cols} columns, not a multiple of {dtype}'s block of {be}"
                )));
            }
            let rows = (numel as usize).checked_div(cols).unwrap_or(0);
            let len = rows * dtype.row_bytes(cols);
            let start = data_start.checked_add(off).filter(|s| s % align == 0);
            let Some(start) = start else {
                return Err(c.err(format!("tensor `{name}` has a misaligned offset {off}")));
            };
            let end = start.saturating_add(len as u64);
            if end > file_len {
                return Err(c.err(format!(
                    "file is truncated ({file_len} bytes): tensor `{name}` ends at byte {end}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                dtype,
                start: start as usize,
                len,
            });
        }
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
            .map(|v| v as usize)
            .ok_or_else(|| self.field_err(key, "is not a non-negative integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, ModelError> {
        self.get(key)
            .ok_or_else(|| self.field_err(key, "is missing"))?
            .as_f64()
            .ok_or_else(|| self.field_err(key, "is not a number"))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], ModelError> {
        self.get(key)
            .ok_or_else(|| self.field_err(key, "is missing"))?
            .as_array()
            .ok_or_else(|| self.field_err(key, "is not an array"))
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.get_str("general.architecture")
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn put_str(b: &mut Vec<u8>, t: &str) {
        b.extend((t.len() as u64).to_le_bytes());
        b.extend(t.as_bytes());
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(b: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => b.push(*x),
            Value::I8(x) => b.push(*x as u8),
            Value::U16(x) => b.extend(x.to_le_bytes()),
            Value::I16(x) => b.extend(x.to_le_bytes()),
            Value::U32(x) => b.extend(x.to_le_bytes()),
            Value::I32(x) => b.extend(x.to_le_bytes()),
            Value::F32(x) => b.extend(x.to_le_bytes()),
            Value::Bool(x) => b.push(*x as u8),
            Value::String(s) => put_str(b, s),
            Value::Array(a) => {
                b.extend(a.first().map(type_id).unwrap_or(4).to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|v| put_value(b, v));
            }
            Value::U64(x) => b.extend(x.to_le_bytes()),
            Value::I64(x) => b.extend(x.to_le_bytes()),
            Value::F64(x) => b.extend(x.to_le_bytes()),
        }
    }

    /// A v3 file with `kv` and no tensors (tokenizer tests).
    pub(crate) fn metadata_only_gguf(kv: &[(&str, Value)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            put_str(&mut b, k);
            b.extend(type_id(v).to_le_bytes());
            put_value(&mut b, v);
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
            ("a", Value::Array(vec![Value::F64(0.25), Value::F64(-2.0)])),
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
            .iter()
            .filter_map(Value::as_str)
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
