// Causal prefill attention on tensor cores (flash-style tiling, online softmax in f32).
// Oracle: model::attention::Attention (after the projections: GQA, query head h reads kv
// head h / (nh / kvh), scale hd^-0.5, no positional embedding; query i of n new tokens,
// at position start + i, sees cache positions 0 ..= start + i).
//
// Cache layout as kernels/attention.cu and state::KvCache: k and v [positions, kvh, hd] in
// the cache dtype (one byte per element for FP8), scales [positions, kvh] f32 (FP8 only):
// value = decode(byte) · scale.
//
// Precision: both products run as mma.sync m16n8k16 with bf16 inputs and f32 accumulators.
// q, f32 and f16 cache values are rounded to bf16 once; bf16 cache values and FP8 codes
// are exact in bf16, and the FP8 per-position scales are applied in f32 outside the MMA
// (k scale on the score, v scale folded into the probability before it is rounded).
// Softmax (max, exp, sums, rescaling) is f32; the probabilities are rounded to bf16 for
// P·V while the normaliser sums the unrounded ones.
#include "common.cuh"

namespace fa {

__device__ __forceinline__ uint16_t bits(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
    return (uint32_t)bits(lo) | ((uint32_t)bits(hi) << 16);
}

// D += A·B, m16n8k16, bf16 in, f32 accumulate (fragment layouts: kernels/common.cuh).
__device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    nemo::mma_bf16_16816(d, a, b);
}

// B fragment of the 16x8 tile at (k0, n0) of B[k][n] = s[n][k] (k contiguous).
__device__ __forceinline__ void load_b(uint32_t b[2], const uint16_t* s, int ld, int n0, int k0) {
    const int lane = threadIdx.x % NEMO_WARP, g = lane >> 2, q = lane & 3;
    const uint16_t* p = s + (n0 + g) * ld + k0 + 2 * q;
    b[0] = *reinterpret_cast<const uint32_t*>(p);
    b[1] = *reinterpret_cast<const uint32_t*>(p + 8);
}

// B fragment of the 16x8 tile at (k0, n0) of B[k][n] = s[k][n] (n contiguous), by
// ldmatrix.trans: lanes 0-7 address rows k0 .. k0+7, lanes 8-15 rows k0+8 .. k0+15 (lanes
// 16-31 repeat them, unused by .x2); each 8x8 matrix arrives transposed, so lane (g, q)
// gets B[k0+2q .. k0+2q+1][n0+g] from the first and B[k0+8+2q ..][n0+g] from the second,
// the mma B layout. Rows must be 16-byte aligned.
__device__ __forceinline__ void load_b_trans(uint32_t b[2], const uint16_t* s, int ld, int n0, int k0) {
    const int lane = threadIdx.x % NEMO_WARP;
    const uint16_t* p = s + (k0 + (lane & 15)) * ld + n0;
    nemo::ldmatrix_x2_trans(b, p);
}

// Eight consecutive cache elements (d .. d+8 of one row), without the FP8 scale.
struct KvF32 {
    typedef float T;
    static constexpr bool SCALED = false;
    static __device__ __forceinline__ void load8(const T* c, int64_t at, float v[8]) {
        const float4 a = *reinterpret_cast<const float4*>(c + at);
        const float4 b = *reinterpret_cast<const float4*>(c + at + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
};
struct KvF16 {
    typedef __half T;
    static constexpr bool SCALED = false;
    static __device__ __forceinline__ void load8(const T* c, int64_t at, float v[8]) {
        const uint4 u = *reinterpret_cast<const uint4*>(c + at);
        const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 f = __half22float2(h[j]);
            v[2 * j] = f.x, v[2 * j + 1] = f.y;
        }
    }
};
struct KvBF16 {
    typedef __nv_bfloat16 T;
    static constexpr bool SCALED = false;
    static __device__ __forceinline__ void load8(const T* c, int64_t at, float v[8]) {
        const uint4 u = *reinterpret_cast<const uint4*>(c + at);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 f = __bfloat1622float2(h[j]);
            v[2 * j] = f.x, v[2 * j + 1] = f.y;
        }
    }
};
template <int KIND> struct KvFp8 {
    typedef uint8_t T;
    static constexpr bool SCALED = true;
    static __device__ __forceinline__ void load8(const T* c, int64_t at, float v[8]) {
        const uint2 u = *reinterpret_cast<const uint2*>(c + at);
        const uint8_t* b = reinterpret_cast<const uint8_t*>(&u);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = nemo::fp8_decode<KIND>(b[j]);
    }
};

__device__ __forceinline__ float2 q2(const float* q, int64_t at) {
    return *reinterpret_cast<const float2*>(q + at);
}
__device__ __forceinline__ float2 q2(const __nv_bfloat16* q, int64_t at) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(q + at));
}

}  // namespace fa

#define FA_BQ 128    // queries per block: 16 per warp
#define FA_BK 64     // cache positions per tile
#define FA_WARPS 8
#define FA_PAD 8     // row padding (bf16): row strides ≡ 4 words mod 32, conflict-free fragments

// flash_prefill_<q>_<kv>_hd<HD>: n queries q [n, nh, HD] (f32 or bf16; positions start ..
// start+n, whose k/v are already in the cache) against cache positions 0 ..= start + i.
// grid (ceil(n / 128), nh), block 256 = 8 warps; block (j, h) takes queries
// [i0, i0 + 128), i0 = (gridDim.x − 1 − j)·128 (the longest rows start first), warp w the
// 16 rows i0 + 16w ..; q fragments stay in registers. The block walks the cache in tiles of 64
// positions: K and V [t][d] widened to bf16 in shared memory (+ FP8 scales), then
// per warp S = Q·Kᵀ (16 × 64, f32), causal mask, online softmax (row max over the 4 lanes
// that share a row), O = O·corr + P·V with P taken straight from the S accumulators.
// Writes out [n, nh, HD] f32 and out_bf16 (may be null).
template <typename Q, typename KV, int HD>
__device__ void flash_prefill(const Q* __restrict__ q, const typename KV::T* __restrict__ kc,
                              const typename KV::T* __restrict__ vc, const float* __restrict__ ks,
                              const float* __restrict__ vs, float* __restrict__ out,
                              __nv_bfloat16* __restrict__ out_bf16, int n, int start, int nh,
                              int kvh, float scale) {
    constexpr int LDK = HD + FA_PAD;  // Ks and Vs rows (positions), d contiguous
    constexpr int KT = HD / 16;          // k-steps of Q·Kᵀ
    constexpr int DT = HD / 8;           // n-tiles of O
    constexpr int ST = FA_BK / 8;        // n-tiles of S
    __shared__ __align__(16) uint16_t Ks[FA_BK * LDK];
    __shared__ __align__(16) uint16_t Vs[FA_BK * LDK];
    __shared__ float ksc[FA_BK], vsc[FA_BK];

    const int h = blockIdx.y, kh = h / (nh / kvh);
    const int tid = threadIdx.x, warp = tid / NEMO_WARP, lane = tid % NEMO_WARP;
    const int g = lane >> 2, qd = lane & 3;
    const int i0 = (gridDim.x - 1 - blockIdx.x) * FA_BQ;
    const int wi = i0 + warp * 16;              // this warp's first query
    const int rows[2] = {wi + g, wi + g + 8};   // the two query rows this lane holds
    const int kv_end = start + min(n, i0 + FA_BQ);  // positions any row of the block sees

    uint32_t qa[KT][4];
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int i = rows[r & 1], d = kt * 16 + 2 * qd + (r >= 2 ? 8 : 0);
            float2 v = make_float2(0.f, 0.f);
            if (i < n) v = fa::q2(q, ((int64_t)i * nh + h) * HD + d);
            qa[kt][r] = fa::pack(v.x, v.y);
        }
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int r = 0; r < 4; ++r) o[dt][r] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's partial sums

    for (int t0 = 0; t0 < kv_end; t0 += FA_BK) {
        for (int e = tid; e < FA_BK * (HD / 8); e += blockDim.x) {
            const int tt = e / (HD / 8), d = (e % (HD / 8)) * 8, t = t0 + tt;
            float kv[8], vv[8];
            if (t < kv_end) {
                const int64_t at = ((int64_t)t * kvh + kh) * HD + d;
                KV::load8(kc, at, kv);
                KV::load8(vc, at, vv);
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) kv[j] = vv[j] = 0.f;
            }
            uint4 pk, pv;
            pk.x = fa::pack(kv[0], kv[1]);
            pk.y = fa::pack(kv[2], kv[3]);
            pk.z = fa::pack(kv[4], kv[5]);
            pk.w = fa::pack(kv[6], kv[7]);
            pv.x = fa::pack(vv[0], vv[1]);
            pv.y = fa::pack(vv[2], vv[3]);
            pv.z = fa::pack(vv[4], vv[5]);
            pv.w = fa::pack(vv[6], vv[7]);
            *reinterpret_cast<uint4*>(&Ks[tt * LDK + d]) = pk;
            *reinterpret_cast<uint4*>(&Vs[tt * LDK + d]) = pv;
        }
        if (KV::SCALED) {
            for (int tt = tid; tt < FA_BK; tt += blockDim.x) {
                const int t = t0 + tt;
                ksc[tt] = t < kv_end ? ks[(int64_t)t * kvh + kh] : 0.f;
                vsc[tt] = t < kv_end ? vs[(int64_t)t * kvh + kh] : 0.f;
            }
        }
        __syncthreads();
        if (t0 <= start + wi + 15) {  // else every position of the tile is in this warp's future
            float s[ST][4];
#pragma unroll
            for (int st = 0; st < ST; ++st) {
#pragma unroll
                for (int r = 0; r < 4; ++r) s[st][r] = 0.f;
#pragma unroll
                for (int kt = 0; kt < KT; ++kt) {
                    uint32_t bf[2];
                    fa::load_b(bf, Ks, LDK, st * 8, kt * 16);
                    fa::mma(s[st], qa[kt], bf);
                }
            }
            // Scale, mask, row max.
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int st = 0; st < ST; ++st)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int tt = st * 8 + 2 * qd + (r & 1), t = t0 + tt, hr = r >> 1;
                    float v = s[st][r] * scale;
                    if (KV::SCALED) v *= ksc[tt];
                    if (t > start + rows[hr] || t >= kv_end) v = -INFINITY;
                    s[st][r] = v;
                    mx[hr] = fmaxf(mx[hr], v);
                }
            float corr[2], base[2];
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
                mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
                const float mn = fmaxf(m[hr], mx[hr]);
                // A row that has seen nothing yet keeps m = -inf: exp(-inf − 0) = 0, no NaN.
                base[hr] = mn == -INFINITY ? 0.f : mn;
                corr[hr] = expf(m[hr] - base[hr]);
                m[hr] = mn;
                l[hr] *= corr[hr];
            }
#pragma unroll
            for (int dt = 0; dt < DT; ++dt)
#pragma unroll
                for (int r = 0; r < 4; ++r) o[dt][r] *= corr[r >> 1];
#pragma unroll
            for (int st = 0; st < ST; ++st)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const float pv = expf(s[st][r] - base[r >> 1]);
                    l[r >> 1] += pv;
                    s[st][r] = KV::SCALED ? pv * vsc[st * 8 + 2 * qd + (r & 1)] : pv;
                }
            // O += P·V: the S accumulators of n-tiles 2k, 2k+1 are the A fragment of k-step k.
#pragma unroll
            for (int kt = 0; kt < FA_BK / 16; ++kt) {
                uint32_t pa[4];
                pa[0] = fa::pack(s[2 * kt][0], s[2 * kt][1]);
                pa[1] = fa::pack(s[2 * kt][2], s[2 * kt][3]);
                pa[2] = fa::pack(s[2 * kt + 1][0], s[2 * kt + 1][1]);
                pa[3] = fa::pack(s[2 * kt + 1][2], s[2 * kt + 1][3]);
#pragma unroll
                for (int dt = 0; dt < DT; ++dt) {
                    uint32_t bf[2];
                    fa::load_b_trans(bf, Vs, LDK, dt * 8, kt * 16);
                    fa::mma(o[dt], pa, bf);
                }
            }
        }
        __syncthreads();  // the tile is overwritten next
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
    }
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int i = rows[r >> 1], d = dt * 8 + 2 * qd + (r & 1);
            if (i < n) {
                const float v = o[dt][r] / l[r >> 1];
                const int64_t at = ((int64_t)i * nh + h) * HD + d;
                out[at] = v;
                if (out_bf16) out_bf16[at] = __float2bfloat16_rn(v);
            }
        }
}

#define FLASH(NAME, Q, KV, HD)                                                                     \
    extern "C" __global__ void __launch_bounds__(FA_WARPS * NEMO_WARP, 1)                          \
        NAME(const Q* q, const KV::T* kc, const KV::T* vc, const float* ks, const float* vs,       \
             float* out, __nv_bfloat16* out_bf16, int n, int start, int nh, int kvh, float scale) { \
        flash_prefill<Q, KV, HD>(q, kc, vc, ks, vs, out, out_bf16, n, start, nh, kvh, scale);      \
    }
#define FLASH_KV(QN, Q, HD)                                                                        \
    FLASH(flash_prefill_##QN##_f32_hd##HD, Q, fa::KvF32, HD)                                       \
    FLASH(flash_prefill_##QN##_f16_hd##HD, Q, fa::KvF16, HD)                                       \
    FLASH(flash_prefill_##QN##_bf16_hd##HD, Q, fa::KvBF16, HD)                                     \
    FLASH(flash_prefill_##QN##_fp8e4m3_hd##HD, Q, fa::KvFp8<nemo::E4M3>, HD)                       \
    FLASH(flash_prefill_##QN##_fp8e5m2_hd##HD, Q, fa::KvFp8<nemo::E5M2>, HD)
FLASH_KV(f32, float, 64)
FLASH_KV(f32, float, 128)
FLASH_KV(bf16, __nv_bfloat16, 64)
FLASH_KV(bf16, __nv_bfloat16, 128)
