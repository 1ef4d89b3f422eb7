//! Element types of stored tensors and caches.

use half::{bf16, f16};

/// The block-quantized types are ggml's (GGUF files), named as llama.cpp names them; a row
/// of them is a whole number of blocks (`block()`), so use `row_bytes` for byte sizes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F8E4M3,
    F8E5M2,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl DType {
    /// Bytes per element. For block-quantized types, the bytes of one block (see `block`);
    /// callers that may see them use `row_bytes`.
    pub fn size(self) -> usize {
        self.block().1
    }

    /// (elements, bytes) of one block; (1, size) for element types.
    pub fn block(self) -> (usize, usize) {
        match self {
            DType::F32 => (1, 4),
            DType::F16 | DType::BF16 => (1, 2),
            DType::F8E4M3 | DType::F8E5M2 => (1, 1),
            DType::Q4_0 => (32, 18),
            DType::Q4_1 => (32, 20),
            DType::Q8_0 => (32, 34),
            DType::Q4_K => (256, 144),
            DType::Q5_K => (256, 176),
            DType::Q6_K => (256, 210),
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block().0 > 1
    }

    /// Bytes of `cols` elements (a whole number of blocks for quantized types).
    pub fn row_bytes(self, cols: usize) -> usize {
        let (e, b) = self.block();
        cols.div_ceil(e) * b
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "fp8_e4m3",
            DType::F8E5M2 => "fp8_e5m2",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0 => "q8_0",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Widens `src` (raw little-endian elements of `dtype`) into `dst`.
/// `src.len()` must be `dtype.row_bytes(dst.len())`; FP8 needs a scale and is handled in
/// `fp8`; block-quantized types are dequantized by `cpu::quant`.
pub fn widen_into(dtype: DType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dtype.row_bytes(dst.len()));
    if dtype.is_quantized() {
        crate::backend::cpu::quant::dequantize_row(dtype, src, dst);
        return;
    }
    match dtype {
        DType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::BF16 => crate::backend::cpu::simd::bf16_to_f32(src, dst),
        DType::F16 => crate::backend::cpu::simd::f16_to_f32(src, dst),
        DType::F8E4M3 | DType::F8E5M2 => {
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = crate::backend::fp8::decode(dtype, b);
            }
        }
        _ => unreachable!("quantized types return above"),
    }
}

/// Narrows f32 values into raw little-endian elements of `dtype` (round to nearest even).
/// Block-quantized types round each block as ggml's reference quantizers do
/// (`cpu::quant::quantize_row`).
pub fn narrow_into(dtype: DType, src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), dtype.row_bytes(src.len()));
    if dtype.is_quantized() {
        crate::backend::cpu::quant::quantize_row(dtype, src, dst);
        return;
    }
    match dtype {
        DType::F32 => {
            for (s, d) in src.iter().zip(dst.chunks_exact_mut(4)) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        DType::BF16 => {
            for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&bf16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
        DType::F16 => {
            for (s, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&f16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
        DType::F8E4M3 | DType::F8E5M2 => {
            for (s, d) in src.iter().zip(dst.iter_mut()) {
                *d = crate::backend::fp8::encode(dtype, *s);
            }
        }
        _ => unreachable!("quantized types return above"),
    }
}
