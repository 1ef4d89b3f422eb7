//! Attention KV cache of one layer, `[position, kv_head, head_dim]`, stored as f32, f16,
//! bf16 or FP8 (E4M3 / E5M2). FP8 rows carry one f32 scale per (position, kv_head):
//! `scale = amax / max_finite`, chosen when the token arrives, so no calibration is needed
//! and a token's quantisation error is relative to its own magnitude.

use crate::backend::cpu::simd::f16_rows_to_f32;
use crate::backend::dtype::{narrow_into, widen_into};
use crate::backend::fp8;
use crate::backend::DType;

#[derive(Clone, Debug)]
pub struct KvCache {
    pub dtype: DType,
    pub kv_heads: usize,
    pub head_dim: usize,
    len: usize,
    k: Vec<u8>,
    v: Vec<u8>,
    k_scale: Vec<f32>,
    v_scale: Vec<f32>,
}

impl KvCache {
    pub fn new(dtype: DType, kv_heads: usize, head_dim: usize) -> Self {
        KvCache {
            dtype,
            kv_heads,
            head_dim,
            len: 0,
            k: vec![],
            v: vec![],
            k_scale: vec![],
            v_scale: vec![],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.k.len() + self.v.len() + 4 * (self.k_scale.len() + self.v_scale.len())
    }

    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let row = self.kv_heads * self.head_dim * self.dtype.size();
            self.k.truncate(len * row);
            self.v.truncate(len * row);
            self.k_scale.truncate(len * self.kv_heads);
            self.v_scale.truncate(len * self.kv_heads);
            self.len = len;
        }
    }

    /// Appends `n` positions; `k` and `v` are `[n, kv_heads, head_dim]` f32.
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        let n = k.len() / (self.kv_heads * hd);
        let is_fp8 = matches!(self.dtype, DType::F8E4M3 | DType::F8E5M2);
        let sz = self.dtype.size();
        for (src, dst, scales) in [
            (k, &mut self.k, &mut self.k_scale),
            (v, &mut self.v, &mut self.v_scale),
        ] {
            let start = dst.len();
            dst.resize(start + src.len() * sz, 0);
            for (i, vec) in src.chunks_exact(hd).enumerate() {
                let out = &mut dst[start + i * hd * sz..start + (i + 1) * hd * sz];
                if is_fp8 {
                    let amax = vec.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let scale = if amax > 0.0 {
                        amax / fp8::max_finite(self.dtype)
                    } else {
                        1.0
                    };
                    let scaled: Vec<f32> = vec.iter().map(|x| x / scale).collect();
                    narrow_into(self.dtype, &scaled, out);
                    scales.push(scale);
                } else {
                    narrow_into(self.dtype, vec, out);
                }
            }
        }
        self.len += n;
    }

    /// Widens positions `0..len` of one kv head into `k_out` and `v_out` (`[len, head_dim]`).
    pub fn read_head(&self, head: usize, len: usize, k_out: &mut [f32], v_out: &mut [f32]) {
        self.read_head_range(head, 0..len, k_out, v_out)
    }

    /// Widens positions `range` of one kv head into `k_out` and `v_out`
    /// (`[range.len(), head_dim]`).
    pub fn read_head_range(
        &self,
        head: usize,
        range: std::ops::Range<usize>,
        k_out: &mut [f32],
        v_out: &mut [f32],
    ) {
        let hd = self.head_dim;
        let sz = self.dtype.size();
        if self.dtype == DType::F16 && !range.is_empty() {
            // The head's positions as strided rows, widened in one call each for K and V.
            let at = (range.start * self.kv_heads + head) * hd * sz;
            let (stride, rows) = (self.kv_heads * hd * sz, range.len());
            let (k_out, v_out) = (&mut k_out[..rows * hd], &mut v_out[..rows * hd]);
            f16_rows_to_f32(&self.k[at..], stride, rows, k_out);
            f16_rows_to_f32(&self.v[at..], stride, rows, v_out);
            return;
        }
        let is_fp8 = matches!(self.dtype, DType::F8E4M3 | DType::F8E5M2);
        let start = range.start;
        for pos in range {
            let t = pos - start;
            let idx = pos * self.kv_heads + head;
            let range = idx * hd * sz..(idx + 1) * hd * sz;
            widen_into(
                self.dtype,
                &self.k[range.clone()],
                &mut k_out[t * hd..(t + 1) * hd],
            );
            widen_into(self.dtype, &self.v[range], &mut v_out[t * hd..(t + 1) * hd]);
            if is_fp8 {
                let (ks, vs) = (self.k_scale[idx], self.v_scale[idx]);
                k_out[t * hd..(t + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= ks);
                v_out[t * hd..(t + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= vs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_cache_round_trips_within_format_precision_and_truncates() {
        for dt in [DType::F32, DType::BF16, DType::F8E4M3, DType::F8E5M2] {
            let mut c = KvCache::new(dt, 2, 4);
            let k: Vec<f32> = (0..3 * 8).map(|i| (i as f32 - 11.0) * 0.37).collect();
            let v: Vec<f32> = k.iter().map(|x| x * 100.0).collect();
            c.append(&k, &v);
            assert_eq!(c.len(), 3);
            let (mut ko, mut vo) = (vec![0f32; 12], vec![0f32; 12]);
            c.read_head(1, 3, &mut ko, &mut vo);
            let rel = match dt {
                DType::F32 => 0.0,
                DType::BF16 => 1.0 / 256.0,
                DType::F8E4M3 => 1.0 / 16.0,
                _ => 1.0 / 8.0,
            };
            for t in 0..3 {
                for d in 0..4 {
                    let want = k[t * 8 + 4 + d];
                    let amax = k[t * 8 + 4..t * 8 + 8]
                        .iter()
                        .fold(0f32, |m, x| m.max(x.abs()));
                    assert!(
                        (ko[t * 4 + d] - want).abs() <= rel * amax + 1e-6,
                        "{dt}: {} vs {want}",
                        ko[t * 4 + d]
                    );
                }
            }
            c.truncate(1);
            assert_eq!(c.len(), 1);
            c.append(&k[..8], &v[..8]);
            assert_eq!(c.len(), 2);
        }
    }

    /// The f16 cache reads a head's positions as strided rows in one call: the same values
    /// as widening each position's stored halves one by one, for every head and a range
    /// that starts past 0.
    #[test]
    fn f16_reads_are_the_stored_halves() {
        let (heads, hd, n) = (3, 20, 7);
        let mut c = KvCache::new(DType::F16, heads, hd);
        let k: Vec<f32> = (0..n * heads * hd)
            .map(|i| (i as f32 * 0.731).sin() * 9.0)
            .collect();
        let v: Vec<f32> = k.iter().map(|x| x * -3.0 + 0.5).collect();
        c.append(&k, &v);
        let half = |x: f32| half::f16::from_f32(x).to_f32();
        for h in 0..heads {
            let r = 2..n;
            let (mut ko, mut vo) = (vec![0f32; r.len() * hd], vec![0f32; r.len() * hd]);
            c.read_head_range(h, r.clone(), &mut ko, &mut vo);
            for (t, pos) in r.enumerate() {
                for d in 0..hd {
                    let at = (pos * heads + h) * hd + d;
                    assert_eq!(ko[t * hd + d], half(k[at]), "head {h} pos {pos} k[{d}]");
                    assert_eq!(vo[t * hd + d], half(v[at]), "head {h} pos {pos} v[{d}]");
                }
            }
        }
    }
}
