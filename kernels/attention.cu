// Attention over the KV cache: append (with FP8 per-token-per-head scales), decode (one
// query token, split over the sequence) and prefill (causal, tiled over K/V).
// Oracles: state::KvCache::{append, read_head} and model::attention::Attention::forward_rope
// (after the projections: GQA, query head h reads kv head h / (nh / nkv), scale hd^-0.5,
// query i of n new tokens sees positions 0 ..= past + i).
//
// Cache layout (as the CPU): k and v [max_pos, kvh, hd] in the cache dtype (one byte per
// element for FP8), scales [max_pos, kvh] f32 (FP8 only): value = decode(byte) · scale,
// scale = amax(row) / max_finite (1 when the row is all zero).
#include "common.cuh"

#define ATT_MAX_HD 256
#define ATT_PER_LANE (ATT_MAX_HD / NEMO_WARP)

struct KvF32 {
    typedef float T;
    static __device__ __forceinline__ float load(const T* c, const float*, int64_t row, int hd, int d) {
        return c[row * hd + d];
    }
};
struct KvF16 {
    typedef __half T;
    static __device__ __forceinline__ float load(const T* c, const float*, int64_t row, int hd, int d) {
        return __half2float(c[row * hd + d]);
    }
};
struct KvBF16 {
    typedef __nv_bfloat16 T;
    static __device__ __forceinline__ float load(const T* c, const float*, int64_t row, int hd, int d) {
        return __bfloat162float(c[row * hd + d]);
    }
};
template <int KIND> struct KvFp8 {
    typedef uint8_t T;
    static __device__ __forceinline__ float load(const T* c, const float* sc, int64_t row, int hd, int d) {
        return nemo::fp8_decode<KIND>(c[row * hd + d]) * sc[row];
    }
};

// ---- append ----------------------------------------------------------------------------
// kv_append_<dtype>: rows r = t·kvh + kh of k_new / v_new [n, kvh, hd] f32 go to cache row
// pos·kvh + r, where pos = *pos_dev is the sequence's position on the device (so a captured
// decode step writes where the sequence is at replay time). A row at or past `capacity`
// is skipped (the launcher checks the host mirror; this keeps a wrong device value from
// writing out of bounds). grid (n·kvh, 2: k then v), block 32: one row per warp, lanes
// over hd. Writes k_cache/v_cache rows (and k_scale/v_scale for FP8).
__device__ __forceinline__ int64_t kv_row(const int* __restrict__ pos_dev, int capacity, int kvh) {
    const int64_t r = blockIdx.x;
    const int64_t p = (int64_t)*pos_dev + r / kvh;
    return p < capacity ? p * kvh + r % kvh : -1;
}

template <typename T>
__device__ void kv_append_plain(const float* __restrict__ k_new, const float* __restrict__ v_new,
                                T* __restrict__ k_cache, T* __restrict__ v_cache,
                                const int* __restrict__ pos_dev, int capacity, int kvh, int hd) {
    const int64_t row = kv_row(pos_dev, capacity, kvh);
    if (row < 0) return;
    const float* src = (blockIdx.y == 0 ? k_new : v_new) + (int64_t)blockIdx.x * hd;
    T* dst = (blockIdx.y == 0 ? k_cache : v_cache) + row * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) dst[d] = nemo::from_f32<T>(src[d]);
}

template <int KIND>
__device__ void kv_append_fp8(const float* __restrict__ k_new, const float* __restrict__ v_new,
                              uint8_t* __restrict__ k_cache, uint8_t* __restrict__ v_cache,
                              float* __restrict__ k_scale, float* __restrict__ v_scale,
                              const int* __restrict__ pos_dev, int capacity, int kvh, int hd) {
    const int64_t row = kv_row(pos_dev, capacity, kvh);
    if (row < 0) return;
    const float* src = (blockIdx.y == 0 ? k_new : v_new) + (int64_t)blockIdx.x * hd;
    uint8_t* dst = (blockIdx.y == 0 ? k_cache : v_cache) + row * hd;
    float amax = 0.f;
    for (int d = threadIdx.x; d < hd; d += NEMO_WARP) amax = fmaxf(amax, fabsf(src[d]));
    amax = nemo::warp_max(amax);
    const float scale = amax > 0.f ? amax / nemo::fp8_max<KIND>() : 1.f;
    for (int d = threadIdx.x; d < hd; d += NEMO_WARP) dst[d] = nemo::fp8_encode<KIND>(src[d] / scale);
    if (threadIdx.x == 0) (blockIdx.y == 0 ? k_scale : v_scale)[row] = scale;
}

#define KV_APPEND_PLAIN(NAME, T)                                                                   \
    extern "C" __global__ void NAME(const float* k_new, const float* v_new, T* k_cache, T* v_cache, \
                                    float*, float*, const int* pos_dev, int capacity, int kvh,    \
                                    int hd) {                                                      \
        kv_append_plain<T>(k_new, v_new, k_cache, v_cache, pos_dev, capacity, kvh, hd);            \
    }
KV_APPEND_PLAIN(kv_append_f32, float)
KV_APPEND_PLAIN(kv_append_f16, __half)
KV_APPEND_PLAIN(kv_append_bf16, __nv_bfloat16)

#define KV_APPEND_FP8(NAME, KIND)                                                                  \
    extern "C" __global__ void NAME(const float* k_new, const float* v_new, uint8_t* k_cache,      \
                                    uint8_t* v_cache, float* k_scale, float* v_scale,              \
                                    const int* pos_dev, int capacity, int kvh, int hd) {           \
        kv_append_fp8<KIND>(k_new, v_new, k_cache, v_cache, k_scale, v_scale, pos_dev, capacity,  \
                            kvh, hd);                                                              \
    }
KV_APPEND_FP8(kv_append_fp8e4m3, nemo::E4M3)
KV_APPEND_FP8(kv_append_fp8e5m2, nemo::E5M2)

// seq_position_advance: *pos_dev += n. grid (1), block 1. The last node of a decode step,
// so a replayed graph moves the sequence on by itself.
extern "C" __global__ void seq_position_advance(int* pos_dev, int n) {
    if (threadIdx.x == 0 && blockIdx.x == 0) *pos_dev += n;
}

// ---- decode ----------------------------------------------------------------------------
// attn_decode_<kv>: one query token q [nh, hd] at position pos = *pos_dev (its k/v already
// appended there) against cache positions 0 ..= pos, i.e. len = pos + 1, read on the
// device so a captured step attends over the length at replay time.
// grid (nh, nsplit), block 128 = 4 warps; nsplit is fixed per cache (chosen once from its
// capacity and the SM count). Of those, the first `used` = min(nsplit, ceil(len /
// min_span)) splits share the positions, span = ceil(len / used) each: split s covers
// [s·span, min(len, (s+1)·span)); the rest (and any split that rounding leaves without a
// position) write the empty partial m = -inf, l = 0, acc = 0, which the combine skips.
// Warp w takes every 4th position of a split, lanes hold q/acc for d = lane + 32·j (online
// softmax per warp); the 4 warps merge in shared memory. Writes the split's partial (max m,
// sum l, unnormalised acc[hd]) to part_ml [nh, nsplit, 2] and part_acc [nh, nsplit, hd];
// attn_decode_combine_f32 finishes.
template <typename KV>
__device__ void attn_decode(const float* __restrict__ q, const typename KV::T* __restrict__ kc,
                            const typename KV::T* __restrict__ vc, const float* __restrict__ ks,
                            const float* __restrict__ vs, float* __restrict__ part_ml,
                            float* __restrict__ part_acc, const int* __restrict__ pos_dev,
                            int capacity, int nh, int kvh, int hd, int min_span, float scale) {
    __shared__ float sm[4], sl[4];
    __shared__ float sacc[4][ATT_MAX_HD];
    const int h = blockIdx.x, split = blockIdx.y, nsplit = gridDim.y;
    const int kh = h / (nh / kvh);
    const int warp = threadIdx.x / NEMO_WARP, lane = threadIdx.x % NEMO_WARP;
    const int nwarps = blockDim.x / NEMO_WARP;  // 4
    float qr[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; ++j) {
        const int d = lane + NEMO_WARP * j;
        qr[j] = d < hd ? q[(int64_t)h * hd + d] : 0.f;
        acc[j] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    // Clamped to the cache (the launcher checks the host mirror; this keeps a wrong device
    // value from reading past it).
    const int64_t len = min((int64_t)*pos_dev + 1, (int64_t)capacity);
    const int64_t used = min((int64_t)nsplit, max((int64_t)1, (len + min_span - 1) / min_span));
    const int64_t span = (len + used - 1) / used;
    const int64_t t0 = split * span, t1 = min(len, t0 + span);
    for (int64_t t = t0 + warp; t < t1; t += nwarps) {
        const int64_t row = t * kvh + kh;
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < ATT_PER_LANE; ++j) {
            const int d = lane + NEMO_WARP * j;
            if (d < hd) dot += qr[j] * KV::load(kc, ks, row, hd, d);
        }
        const float s = nemo::warp_sum(dot) * scale;
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);  // 0 on the first position (m = -inf)
        const float pw = expf(s - mn);
        l = l * corr + pw;
#pragma unroll
        for (int j = 0; j < ATT_PER_LANE; ++j) {
            const int d = lane + NEMO_WARP * j;
            if (d < hd) acc[j] = acc[j] * corr + pw * KV::load(vc, vs, row, hd, d);
        }
        m = mn;
    }
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; ++j) {
        const int d = lane + NEMO_WARP * j;
        if (d < hd) sacc[warp][d] = acc[j];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < nwarps; ++w) M = fmaxf(M, sm[w]);
    const int64_t pidx = (int64_t)h * nsplit + split;
    if (threadIdx.x == 0) {
        float L = 0.f;
        if (M != -INFINITY)
            for (int w = 0; w < nwarps; ++w)
                if (sm[w] != -INFINITY) L += sl[w] * expf(sm[w] - M);
        part_ml[2 * pidx] = M;
        part_ml[2 * pidx + 1] = L;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        if (M != -INFINITY)
            for (int w = 0; w < nwarps; ++w)
                if (sm[w] != -INFINITY) a += sacc[w][d] * expf(sm[w] - M);
        part_acc[pidx * hd + d] = a;
    }
}

#define ATT_DECODE(NAME, KV)                                                                        \
    extern "C" __global__ void NAME(const float* q, const KV::T* kc, const KV::T* vc, const float* ks, \
                                    const float* vs, float* part_ml, float* part_acc,                \
                                    const int* pos_dev, int capacity, int nh, int kvh, int hd,       \
                                    int min_span, float scale) {                                     \
        attn_decode<KV>(q, kc, vc, ks, vs, part_ml, part_acc, pos_dev, capacity, nh, kvh, hd,       \
                        min_span, scale);                                                            \
    }
ATT_DECODE(attn_decode_f32, KvF32)
ATT_DECODE(attn_decode_f16, KvF16)
ATT_DECODE(attn_decode_bf16, KvBF16)
ATT_DECODE(attn_decode_fp8e4m3, KvFp8<nemo::E4M3>)
ATT_DECODE(attn_decode_fp8e5m2, KvFp8<nemo::E5M2>)

// attn_decode_combine_f32: out[h, d] = Σ_s acc_s[d]·e^(m_s − M) / Σ_s l_s·e^(m_s − M) over
// the splits with m_s > -inf (an empty split adds nothing; split 0 is never empty, as
// len ≥ 1). grid (nh), block 256: threads over d. Reads part_ml, part_acc; writes out [nh, hd] f32 and
// out_bf16 (may be null).
extern "C" __global__ void attn_decode_combine_f32(const float* __restrict__ part_ml,
                                                   const float* __restrict__ part_acc,
                                                   float* __restrict__ out,
                                                   __nv_bfloat16* __restrict__ out_bf16, int nsplit,
                                                   int hd) {
    const int h = blockIdx.x;
    const float* ml = part_ml + (int64_t)h * nsplit * 2;
    float M = -INFINITY;
    for (int s = 0; s < nsplit; ++s) M = fmaxf(M, ml[2 * s]);
    float L = 0.f;
    for (int s = 0; s < nsplit; ++s)
        if (ml[2 * s] != -INFINITY) L += ml[2 * s + 1] * expf(ml[2 * s] - M);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < nsplit; ++s)
            if (ml[2 * s] != -INFINITY) a += part_acc[((int64_t)h * nsplit + s) * hd + d] * expf(ml[2 * s] - M);
        const float o = a / L;
        out[(int64_t)h * hd + d] = o;
        if (out_bf16) out_bf16[(int64_t)h * hd + d] = __float2bfloat16_rn(o);
    }
}

// ---- prefill ---------------------------------------------------------------------------
#define ATT_QW 8   // queries (warps) per block
#define ATT_TK 16  // cache positions per shared tile

// attn_prefill_<kv>: n new queries q [n, nh, hd] (positions past .. past+n, already in the
// cache) against cache positions 0 ..= past + i (causal).
// grid (nh, ceil(n / 8)), block 256 = 8 warps, warp w = query i = blockIdx.y·8 + w.
// The block walks the cache in tiles of 16 positions, widened into shared memory once and
// read by all 8 queries; each warp keeps an online softmax (m, l, acc in lanes, d = lane+32j).
// Writes out [n, nh, hd] f32 and out_bf16 (may be null).
template <typename KV>
__device__ void attn_prefill(const float* __restrict__ q, const typename KV::T* __restrict__ kc,
                             const typename KV::T* __restrict__ vc, const float* __restrict__ ks,
                             const float* __restrict__ vs, float* __restrict__ out,
                             __nv_bfloat16* __restrict__ out_bf16, int n, int past, int nh, int kvh,
                             int hd, float scale) {
    __shared__ float kt[ATT_TK * ATT_MAX_HD];
    __shared__ float vt[ATT_TK * ATT_MAX_HD];
    const int h = blockIdx.x;
    const int kh = h / (nh / kvh);
    const int warp = threadIdx.x / NEMO_WARP, lane = threadIdx.x % NEMO_WARP;
    const int i = blockIdx.y * ATT_QW + warp;
    const bool active = i < n;
    const int visible = active ? past + i + 1 : 0;
    const int last_i = min(n, (int)(blockIdx.y + 1) * ATT_QW) - 1;
    const int block_visible = past + last_i + 1;  // the most any warp of the block sees
    float qr[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; ++j) {
        const int d = lane + NEMO_WARP * j;
        qr[j] = active && d < hd ? q[((int64_t)i * nh + h) * hd + d] : 0.f;
        acc[j] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int t0 = 0; t0 < block_visible; t0 += ATT_TK) {
        const int tn = min(ATT_TK, block_visible - t0);
        for (int e = threadIdx.x; e < tn * hd; e += blockDim.x) {
            const int tt = e / hd, d = e % hd;
            const int64_t row = (int64_t)(t0 + tt) * kvh + kh;
            kt[tt * hd + d] = KV::load(kc, ks, row, hd, d);
            vt[tt * hd + d] = KV::load(vc, vs, row, hd, d);
        }
        __syncthreads();
        const int mine = min(tn, visible - t0);  // ≤ 0 when this warp sees none of the tile
        for (int tt = 0; tt < mine; ++tt) {
            float dot = 0.f;
#pragma unroll
            for (int j = 0; j < ATT_PER_LANE; ++j) {
                const int d = lane + NEMO_WARP * j;
                if (d < hd) dot += qr[j] * kt[tt * hd + d];
            }
            const float s = nemo::warp_sum(dot) * scale;
            const float mn = fmaxf(m, s);
            const float corr = expf(m - mn);
            const float pw = expf(s - mn);
            l = l * corr + pw;
#pragma unroll
            for (int j = 0; j < ATT_PER_LANE; ++j) {
                const int d = lane + NEMO_WARP * j;
                if (d < hd) acc[j] = acc[j] * corr + pw * vt[tt * hd + d];
            }
            m = mn;
        }
        __syncthreads();  // the tile is overwritten next
    }
    if (!active) return;
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; ++j) {
        const int d = lane + NEMO_WARP * j;
        if (d < hd) {
            const float o = acc[j] / l;
            const int64_t idx = ((int64_t)i * nh + h) * hd + d;
            out[idx] = o;
            if (out_bf16) out_bf16[idx] = __float2bfloat16_rn(o);
        }
    }
}

#define ATT_PREFILL(NAME, KV)                                                                       \
    extern "C" __global__ void NAME(const float* q, const KV::T* kc, const KV::T* vc, const float* ks, \
                                    const float* vs, float* out, __nv_bfloat16* out_bf16, int n,     \
                                    int past, int nh, int kvh, int hd, float scale) {                \
        attn_prefill<KV>(q, kc, vc, ks, vs, out, out_bf16, n, past, nh, kvh, hd, scale);             \
    }
ATT_PREFILL(attn_prefill_f32, KvF32)
ATT_PREFILL(attn_prefill_f16, KvF16)
ATT_PREFILL(attn_prefill_bf16, KvBF16)
ATT_PREFILL(attn_prefill_fp8e4m3, KvFp8<nemo::E4M3>)
ATT_PREFILL(attn_prefill_fp8e5m2, KvFp8<nemo::E5M2>)
