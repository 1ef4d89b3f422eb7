//! GGUF bytes for tests, written and walked here independently of nemo's reader: a
//! writer for small (or sparse) files of claimed shapes, and a walker that finds where
//! each header field of an existing file lies, so a test can break exactly one of them.

use std::path::Path;

const ALIGN: usize = 32;
pub const F32: u32 = 0;

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A GGUF v3 file under construction: metadata entries, then tensor infos (F32 unless
/// said otherwise) laid out one after the other, each padded to 32 bytes.
#[derive(Default)]
pub struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    /// (name, dims outermost first, ggml type, bytes)
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&mut self, key: &str, ty: u32) -> &mut Vec<u8> {
        self.n_kv += 1;
        put_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        &mut self.kv
    }

    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.key(key, 4).extend(v.to_le_bytes());
        self
    }

    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.key(key, 6).extend(v.to_le_bytes());
        self
    }

    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        put_str(self.key(key, 8), v);
        self
    }

    pub fn strs(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let b = self.key(key, 9);
        b.extend(8u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(b, s);
        }
        self
    }

    pub fn u32s(&mut self, key: &str, v: &[u32]) -> &mut Self {
        let b = self.key(key, 9);
        b.extend(4u32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        self
    }

    /// An array of `n` zero bytes (u8 elements).
    pub fn zero_bytes(&mut self, key: &str, n: usize) -> &mut Self {
        let b = self.key(key, 9);
        b.extend(0u32.to_le_bytes());
        b.extend((n as u64).to_le_bytes());
        b.resize(b.len() + n, 0);
        self
    }

    /// A value already encoded as GGUF stores it after its type id (`ty`): metadata copied
    /// from another file.
    pub fn raw(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        self.key(key, ty).extend(value);
        self
    }

    /// A tensor of ggml type `ty` and `bytes` bytes of data, `shape` outermost first.
    pub fn typed_tensor(&mut self, name: &str, shape: &[u64], ty: u32, bytes: u64) -> &mut Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), ty, bytes));
        self
    }

    /// The whole file with the tensors' data given, in order (each as long as declared).
    pub fn with_data(&self, data: &[Vec<u8>]) -> Vec<u8> {
        let mut b = self.header();
        for ((name, _, _, bytes), d) in self.tensors.iter().zip(data) {
            assert_eq!(d.len() as u64, *bytes, "{name}: data length");
            b.extend(d);
            b.resize(b.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        b
    }

    /// An F32 tensor of `shape` (outermost first, as nemo reports shapes).
    pub fn tensor(&mut self, name: &str, shape: &[u64]) -> &mut Self {
        let n: u64 = shape.iter().product();
        self.tensors
            .push((name.to_string(), shape.to_vec(), F32, n * 4));
        self
    }

    /// The header, metadata, tensor infos and padding: where the data starts.
    pub fn header(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        let mut off = 0u64;
        for (name, shape, ty, bytes) in &self.tensors {
            put_str(&mut b, name);
            b.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
            off += bytes.div_ceil(ALIGN as u64) * ALIGN as u64;
        }
        b.resize(b.len().div_ceil(ALIGN) * ALIGN, 0);
        b
    }

    /// Bytes of the data section (every tensor padded to the alignment).
    pub fn data_len(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.3.div_ceil(ALIGN as u64) * ALIGN as u64)
            .sum()
    }

    /// The whole file with every tensor element `value(tensor index, element index)`.
    pub fn bytes(&self, value: impl Fn(usize, u64) -> f32) -> Vec<u8> {
        let mut b = self.header();
        for (i, (_, _, _, bytes)) in self.tensors.iter().enumerate() {
            for e in 0..bytes / 4 {
                b.extend(value(i, e).to_le_bytes());
            }
            b.resize(b.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        b
    }

    /// Writes the header and extends the file to its full length without writing the
    /// data: a sparse file whose claims fit its apparent size, every weight zero.
    pub fn write_sparse(&self, path: &Path) {
        let h = self.header();
        std::fs::write(path, &h).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(h.len() as u64 + self.data_len())
            .unwrap();
    }
}

/// Where the fields of an existing GGUF file lie.
#[derive(Debug)]
pub struct Layout {
    /// Offset of the u64 tensor count (the metadata count follows it).
    pub n_tensors_at: usize,
    pub n_tensors: u64,
    /// (key, offset of its value type id)
    pub kv: Vec<(String, usize)>,
    /// (name, offset of its n_dims field)
    pub infos: Vec<(String, usize)>,
    /// Offset just past the last tensor info.
    pub infos_end: usize,
    /// Where the data section starts (32-byte alignment; the fixtures use the default).
    pub data_start: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Skips one value of type `ty` at `at`; returns the offset after it.
fn skip(b: &[u8], ty: u32, at: usize) -> usize {
    match ty {
        0 | 1 | 7 => at + 1,
        2 | 3 => at + 2,
        4..=6 => at + 4,
        10..=12 => at + 8,
        8 => at + 8 + u64_at(b, at) as usize,
        9 => {
            let ety = u32_at(b, at);
            let n = u64_at(b, at + 4);
            (0..n).fold(at + 12, |p, _| skip(b, ety, p))
        }
        t => panic!("value type {t}"),
    }
}

/// Walks a well-formed file's header.
pub fn layout(b: &[u8]) -> Layout {
    let n_tensors = u64_at(b, 8);
    let n_kv = u64_at(b, 16);
    let mut at = 24;
    let mut kv = Vec::new();
    for _ in 0..n_kv {
        let n = u64_at(b, at) as usize;
        let key = String::from_utf8(b[at + 8..at + 8 + n].to_vec()).unwrap();
        at += 8 + n;
        kv.push((key, at));
        let ty = u32_at(b, at);
        at = skip(b, ty, at + 4);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let n = u64_at(b, at) as usize;
        let name = String::from_utf8(b[at + 8..at + 8 + n].to_vec()).unwrap();
        at += 8 + n;
        infos.push((name, at));
        let nd = u32_at(b, at) as usize;
        at += 4 + 8 * nd + 4 + 8;
    }
    Layout {
        n_tensors_at: 8,
        n_tensors,
        kv,
        infos,
        infos_end: at,
        data_start: at.div_ceil(ALIGN) * ALIGN,
    }
}

impl Layout {
    /// Offset of the value type id of metadata `key`.
    pub fn kv_at(&self, key: &str) -> usize {
        self.kv.iter().find(|(k, _)| k == key).unwrap().1
    }

    /// Offset of the n_dims field of tensor `name`.
    pub fn info_at(&self, name: &str) -> usize {
        self.infos.iter().find(|(n, _)| n == name).unwrap().1
    }
}

/// Dimensions of `mamba_model`.
pub struct MambaShape {
    pub hidden: u64,
    pub heads: u64,
    pub head_dim: u64,
    pub d_state: u64,
    pub groups: u64,
    pub vocab: u64,
    /// Layers whose tensors the file holds.
    pub layers: u64,
}

/// A `nemotron_h` GGUF of Mamba2 layers (per-layer metadata as scalars), untied-free
/// (the head is the embedding), with a gpt2 tokenizer of `vocab` tokens `t0`, `t1`, …
/// and no merges; `block_count` is written as given.
pub fn mamba_model(s: &MambaShape, block_count: u32) -> Writer {
    let (hs, h, di, k) = (s.hidden, s.heads, s.heads * s.head_dim, 4u64);
    let cd = di + 2 * s.groups * s.d_state;
    let tokens: Vec<String> = (0..s.vocab).map(|i| format!("t{i}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut w = Writer::new();
    w.str("general.architecture", "nemotron_h")
        .u32("nemotron_h.embedding_length", hs as u32)
        .u32("nemotron_h.block_count", block_count)
        .u32("nemotron_h.feed_forward_length", 0)
        .u32("nemotron_h.attention.head_count", 1)
        .u32("nemotron_h.attention.head_count_kv", 0)
        .f32("nemotron_h.attention.layer_norm_rms_epsilon", 1e-5)
        .u32("nemotron_h.ssm.conv_kernel", k as u32)
        .u32("nemotron_h.ssm.inner_size", di as u32)
        .u32("nemotron_h.ssm.state_size", s.d_state as u32)
        .u32("nemotron_h.ssm.time_step_rank", h as u32)
        .u32("nemotron_h.ssm.group_count", s.groups as u32)
        .str("tokenizer.ggml.model", "gpt2")
        .strs("tokenizer.ggml.tokens", &tokens)
        .strs("tokenizer.ggml.merges", &[])
        .u32("tokenizer.ggml.eos_token_id", 0)
        .tensor("token_embd.weight", &[s.vocab, hs]);
    for i in 0..s.layers {
        let t = |n: &str| format!("blk.{i}.{n}");
        w.tensor(&t("attn_norm.weight"), &[hs])
            .tensor(&t("ssm_in.weight"), &[di + cd + h, hs])
            .tensor(&t("ssm_conv1d.weight"), &[cd, k])
            .tensor(&t("ssm_dt.bias"), &[h])
            .tensor(&t("ssm_a"), &[h, 1])
            .tensor(&t("ssm_d"), &[h, 1])
            .tensor(&t("ssm_norm.weight"), &[s.groups, di / s.groups])
            .tensor(&t("ssm_out.weight"), &[hs, di]);
    }
    w.tensor("output_norm.weight", &[hs]);
    w
}

/// A `llama` GGUF: hidden 8, 2 heads of 4 (1 KV head), feed-forward 16, `layers` layers,
/// a gpt2 tokenizer of 16 tokens, a chat template; the head is the embedding.
pub fn llama_model(layers: u32) -> Writer {
    let tokens: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut w = Writer::new();
    w.str("general.architecture", "llama")
        .u32("llama.embedding_length", 8)
        .u32("llama.block_count", layers)
        .u32("llama.feed_forward_length", 16)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .f32("llama.rope.freq_base", 10000.0)
        .u32("llama.context_length", 64)
        .str("tokenizer.ggml.model", "gpt2")
        .strs("tokenizer.ggml.tokens", &tokens)
        .strs("tokenizer.ggml.merges", &[])
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .str(
            "tokenizer.chat_template",
            "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
        )
        .tensor("token_embd.weight", &[16, 8]);
    for i in 0..layers {
        let t = |n: &str| format!("blk.{i}.{n}.weight");
        w.tensor(&t("attn_norm"), &[8])
            .tensor(&t("attn_q"), &[8, 8])
            .tensor(&t("attn_k"), &[4, 8])
            .tensor(&t("attn_v"), &[4, 8])
            .tensor(&t("attn_output"), &[8, 8])
            .tensor(&t("ffn_norm"), &[8])
            .tensor(&t("ffn_gate"), &[16, 8])
            .tensor(&t("ffn_up"), &[16, 8])
            .tensor(&t("ffn_down"), &[8, 16]);
    }
    w.tensor("output_norm.weight", &[8]);
    w
}
