//! Attention KV cache of one layer, stored per KV head as f32, f16, bf16 or FP8 (E4M3 /
//! E5M2). Keys are kept transposed in blocks of `KEY_BLOCK` positions (`[block][head_dim]
//! [KEY_BLOCK]`, lanes past `len` zero) so that attention's `q·Kᵀ` reads whole rows of
//! consecutive positions (`flash`'s layout, widened by one contiguous conversion); values
//! are `[position][head_dim]`. FP8 rows carry one f32 scale per (position, kv_head):
//! `scale = amax / max_finite`, chosen when the token arrives, so no calibration is needed
//! and a token's quantisation error is relative to its own magnitude.

use std::ops::Range;

use crate::backend::cpu::flash::{HalfKv, KvSource, KEY_BLOCK};
use crate::backend::dtype::{narrow_into, widen_into};
use crate::backend::fp8;
use crate::backend::DType;

#[derive(Clone, Debug)]
pub struct KvCache {
    pub dtype: DType,
    pub kv_heads: usize,
    pub head_dim: usize,
    len: usize,
    /// Per KV head: keys, `[block][head_dim][KEY_BLOCK]` raw elements.
    k: Vec<Vec<u8>>,
    /// Per KV head: values, `[position][head_dim]` raw elements.
    v: Vec<Vec<u8>>,
    /// Per KV head (FP8 only): the scale of each position's key and value row.
    k_scale: Vec<Vec<f32>>,
    v_scale: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(dtype: DType, kv_heads: usize, head_dim: usize) -> Self {
        KvCache {
            dtype,
            kv_heads,
            head_dim,
            len: 0,
            k: vec![vec![]; kv_heads],
            v: vec![vec![]; kv_heads],
            k_scale: vec![vec![]; kv_heads],
            v_scale: vec![vec![]; kv_heads],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        let raw = |x: &Vec<Vec<u8>>| x.iter().map(Vec::len).sum::<usize>();
        let scales = |x: &Vec<Vec<f32>>| x.iter().map(Vec::len).sum::<usize>();
        raw(&self.k) + raw(&self.v) + 4 * (scales(&self.k_scale) + scales(&self.v_scale))
    }

    fn is_fp8(&self) -> bool {
        matches!(self.dtype, DType::F8E4M3 | DType::F8E5M2)
    }

    /// Bytes of one key block of one head.
    fn block_bytes(&self) -> usize {
        KEY_BLOCK * self.head_dim * self.dtype.size()
    }

    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let (hd, sz) = (self.head_dim, self.dtype.size());
        let blocks = len.div_ceil(KEY_BLOCK);
        let lane = len % KEY_BLOCK;
        let bb = self.block_bytes();
        for h in 0..self.kv_heads {
            self.v[h].truncate(len * hd * sz);
            self.k[h].truncate(blocks * bb);
            if lane != 0 {
                // Zero the dropped lanes of the last block, as a fresh block has them.
                let last = &mut self.k[h][(blocks - 1) * bb..];
                for row in last.chunks_exact_mut(KEY_BLOCK * sz) {
                    row[lane * sz..].fill(0);
                }
            }
            self.k_scale[h].truncate(len);
            self.v_scale[h].truncate(len);
        }
        self.len = len;
    }

    /// Appends `n` positions; `k` and `v` are `[n, kv_heads, head_dim]` f32.
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        let (hd, nkv, sz) = (self.head_dim, self.kv_heads, self.dtype.size());
        let n = k.len() / (nkv * hd);
        assert_eq!(
            k.len(),
            n * nkv * hd,
            "KvCache::append: k is not [n, kv_heads, head_dim]"
        );
        assert_eq!(
            v.len(),
            k.len(),
            "KvCache::append: v and k differ in length"
        );
        let bb = self.block_bytes();
        let mut row = vec![0u8; hd * sz];
        let mut scaled = vec![0f32; hd];
        for t in 0..n {
            let pos = self.len + t;
            let (blk, lane) = (pos / KEY_BLOCK, pos % KEY_BLOCK);
            for h in 0..nkv {
                let at = (t * nkv + h) * hd..(t * nkv + h + 1) * hd;
                if let Some(sc) = self.narrow_row(&k[at.clone()], &mut row, &mut scaled) {
                    self.k_scale[h].push(sc);
                }
                let keys = &mut self.k[h];
                if keys.len() < (blk + 1) * bb {
                    keys.resize((blk + 1) * bb, 0);
                }
                let block = &mut keys[blk * bb..(blk + 1) * bb];
                for (d, x) in row.chunks_exact(sz).enumerate() {
                    let o = (d * KEY_BLOCK + lane) * sz;
                    block[o..o + sz].copy_from_slice(x);
                }
                if let Some(sc) = self.narrow_row(&v[at], &mut row, &mut scaled) {
                    self.v_scale[h].push(sc);
                }
                self.v[h].extend_from_slice(&row);
            }
        }
        self.len += n;
    }

    /// One position's row into `out` (raw elements of the cache's dtype); for FP8, divided
    /// by its scale first (in `scaled`), which it returns.
    fn narrow_row(&self, x: &[f32], out: &mut [u8], scaled: &mut [f32]) -> Option<f32> {
        if !self.is_fp8() {
            narrow_into(self.dtype, x, out);
            return None;
        }
        let amax = x.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if amax > 0.0 {
            amax / fp8::max_finite(self.dtype)
        } else {
            1.0
        };
        for (s, x) in scaled.iter_mut().zip(x) {
            *s = x / scale;
        }
        narrow_into(self.dtype, scaled, out);
        Some(scale)
    }

    /// Widens positions `0..len` of one kv head into `k_out` and `v_out` (`[len, head_dim]`).
    pub fn read_head(&self, head: usize, len: usize, k_out: &mut [f32], v_out: &mut [f32]) {
        self.read_head_range(head, 0..len, k_out, v_out)
    }

    /// Widens positions `range` of one kv head into `k_out` and `v_out`
    /// (`[range.len(), head_dim]`, keys untransposed): the oracle layout of tests and the
    /// CUDA checks. Attention reads through `KvSource::widen`.
    pub fn read_head_range(
        &self,
        head: usize,
        range: Range<usize>,
        k_out: &mut [f32],
        v_out: &mut [f32],
    ) {
        assert!(
            range.end <= self.len,
            "KvCache::read_head_range: past the end"
        );
        let hd = self.head_dim;
        let b0 = range.start / KEY_BLOCK * KEY_BLOCK;
        let blocks = (range.end - b0).div_ceil(KEY_BLOCK);
        let mut kt = vec![0f32; blocks * KEY_BLOCK * hd];
        let mut v = vec![0f32; (range.end - b0) * hd];
        self.widen(head, b0..range.end, &mut kt, &mut v);
        for (t, pos) in range.enumerate() {
            let (blk, lane) = ((pos - b0) / KEY_BLOCK, (pos - b0) % KEY_BLOCK);
            for d in 0..hd {
                k_out[t * hd + d] = kt[(blk * hd + d) * KEY_BLOCK + lane];
            }
            v_out[t * hd..(t + 1) * hd].copy_from_slice(&v[(pos - b0) * hd..(pos - b0 + 1) * hd]);
        }
    }
}

impl KvSource for KvCache {
    fn halves(&self, head: usize) -> Option<HalfKv<'_>> {
        let bf16 = match self.dtype {
            DType::F16 => false,
            DType::BF16 => true,
            _ => return None,
        };
        Some(HalfKv {
            bf16,
            kt: &self.k[head],
            v: &self.v[head],
        })
    }

    fn widen(&self, head: usize, range: Range<usize>, kt: &mut [f32], v: &mut [f32]) {
        let (hd, sz) = (self.head_dim, self.dtype.size());
        assert!(
            range.start.is_multiple_of(KEY_BLOCK) && range.end <= self.len,
            "KvCache::widen: {range:?} of {} positions",
            self.len
        );
        let len = range.len();
        let b0 = range.start / KEY_BLOCK;
        let blocks = len.div_ceil(KEY_BLOCK);
        let kt = &mut kt[..blocks * KEY_BLOCK * hd];
        let v = &mut v[..len * hd];
        let bb = self.block_bytes();
        widen_into(self.dtype, &self.k[head][b0 * bb..(b0 + blocks) * bb], kt);
        widen_into(
            self.dtype,
            &self.v[head][range.start * hd * sz..range.end * hd * sz],
            v,
        );
        if self.is_fp8() {
            let (ks, vs) = (&self.k_scale[head], &self.v_scale[head]);
            for (b, block) in kt.chunks_exact_mut(KEY_BLOCK * hd).enumerate() {
                for row in block.chunks_exact_mut(KEY_BLOCK) {
                    for (lane, x) in row.iter_mut().enumerate() {
                        // Lanes past the end are zero in the cache and stay zero.
                        let pos = range.start + b * KEY_BLOCK + lane;
                        if pos < range.end {
                            *x *= ks[pos];
                        }
                    }
                }
            }
            for (pos, row) in range.zip(v.chunks_exact_mut(hd)) {
                row.iter_mut().for_each(|x| *x *= vs[pos]);
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

    /// The f16 cache reads back (through its transposed key blocks) the halves of the
    /// values appended, for every head and a range that starts past 0 and inside a block.
    #[test]
    fn f16_reads_are_the_stored_halves() {
        let (heads, hd, n) = (3, 20, 40);
        let mut c = KvCache::new(DType::F16, heads, hd);
        let k: Vec<f32> = (0..n * heads * hd)
            .map(|i| (i as f32 * 0.731).sin() * 9.0)
            .collect();
        let v: Vec<f32> = k.iter().map(|x| x * -3.0 + 0.5).collect();
        c.append(&k, &v);
        let half = |x: f32| half::f16::from_f32(x).to_f32();
        for h in 0..heads {
            let r = 18..n;
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
