// The MoE mixer's kernels (composed by src/model/cuda/moe_layer.rs; oracle
// model::moe::Moe): the f32 router, routing, the grouped expert GEMVs of decode, and the
// gather / combine around the per-expert GEMMs of a prompt.
//
// MoE routing of Nemotron-H (oracle: backend::cpu::moe::route):
//   scores = sigmoid(logits); choice = scores + correction bias;
//   group score = sum of the group's top-2 choices; keep the topk_group best groups
//   (ties → lower index), mask the rest to -inf; pick top_k experts by choice (ties → lower
//   index); weights = their uncorrected scores, / (sum + 1e-20) if norm, × scale.
#include "common.cuh"

#define MOE_MAX_E 1024
#define MOE_MAX_GROUPS 64

// moe_route_f32: grid (n tokens), block 32 (one warp per token).
// Reads logits [n, e] (router output, f32) and bias [e]; writes ids [n, top_k] (u32, in
// the order chosen, best first) and weights [n, top_k] f32. e ≤ 1024, n_group ≤ 64.
extern "C" __global__ void moe_route_f32(const float* __restrict__ logits, const float* __restrict__ bias,
                                         uint32_t* __restrict__ ids, float* __restrict__ weights, int e,
                                         int n_group, int topk_group, int top_k, int norm, float scale) {
    __shared__ float scores[MOE_MAX_E];
    __shared__ float choice[MOE_MAX_E];
    __shared__ unsigned char taken[MOE_MAX_E];
    __shared__ float gscore[MOE_MAX_GROUPS];
    __shared__ unsigned char keep[MOE_MAX_GROUPS];
    const int t = blockIdx.x, lane = threadIdx.x;
    const float* lg = logits + (int64_t)t * e;
    for (int j = lane; j < e; j += NEMO_WARP) {
        const float s = 1.f / (1.f + expf(-lg[j]));
        scores[j] = s;
        // A NaN (from a NaN activation) may never win nor leave the pick unset below.
        const float c = s + bias[j];
        choice[j] = c == c ? c : -INFINITY;
        taken[j] = 0;
    }
    __syncwarp();
    if (topk_group < n_group) {
        const int per = e / n_group;
        for (int g = lane; g < n_group; g += NEMO_WARP) {
            float b1 = -INFINITY, b2 = -INFINITY;  // the two largest (sum is tie-agnostic)
            for (int j = 0; j < per; ++j) {
                const float v = choice[g * per + j];
                if (v > b1) {
                    b2 = b1;
                    b1 = v;
                } else if (v > b2) {
                    b2 = v;
                }
            }
            gscore[g] = per >= 2 ? b1 + b2 : b1;
            keep[g] = 0;
        }
        __syncwarp();
        if (lane == 0) {
            for (int r = 0; r < topk_group; ++r) {
                int best = -1;
                for (int g = 0; g < n_group; ++g)
                    if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
                keep[best] = 1;
            }
        }
        __syncwarp();
        for (int j = lane; j < e; j += NEMO_WARP)
            if (!keep[j / per]) choice[j] = -INFINITY;
        __syncwarp();
    }
    float wsum = 0.f;
    float myw = 0.f;
    uint32_t myid = 0;
    for (int r = 0; r < top_k; ++r) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int j = lane; j < e; j += NEMO_WARP) {
            const float v = choice[j];
            if (!taken[j] && (v > bv || (v == bv && j < bi))) {
                bv = v;
                bi = j;
            }
        }
        for (int o = NEMO_WARP / 2; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        // Every lane now holds the same (bv, bi).
        if (lane == 0) taken[bi] = 1;
        __syncwarp();
        const float w = scores[bi];
        wsum += w;
        if (lane == r) {  // lane r keeps pick r (top_k ≤ 32)
            myw = w;
            myid = (uint32_t)bi;
        }
    }
    if (lane < top_k) {
        float w = norm ? myw / (wsum + 1e-20f) : myw;
        ids[(int64_t)t * top_k + lane] = myid;
        weights[(int64_t)t * top_k + lane] = w * scale;
    }
}

// ---- The routed experts (oracle: model::moe::Moe::forward). ----------------------------
// Weights are stacked per expert: up [E, inter, inner], down [E, inner, inter], bf16,
// row-major, so expert e's matrix starts at e · rows · cols. Rows are read 8 bf16 (16 B)
// at a time: every row length and row start must be a multiple of 8 elements (the Rust
// `supports` checks it), and base addresses come from cudaMalloc (256-B aligned).

namespace {

// 8 bf16 in a uint4 → 8 f32.
__device__ __forceinline__ void unpack8(const uint4 v, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 p = __bfloat1622float2(h[i]);
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
    }
}

__device__ __forceinline__ float dot8(const uint4 w, const float* x) {
    float f[8];
    unpack8(w, f);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) s = fmaf(f[i], x[i], s);
    return s;
}

// Streaming load of weights that are read once per step (no reuse in L1).
__device__ __forceinline__ uint4 ld_weights(const uint4* p) { return __ldcs(p); }

}  // namespace

#define MOE_WARPS 4

// moe_router_f32: the router GEMM in f32, as the CPU (gate widened to f32 once).
//   logits[t, e] = Σ_c x[t, c] · gate[e, c]
// grid (ceil(experts / 4), ceil(n / 4)), block 128: warp w takes expert blockIdx.x·4 + w
// and tokens blockIdx.y·4 .. +4 (the gate row is loaded once for the four tokens).
// Reads x [n, hidden] bf16, gate [experts, hidden] f32; writes logits [n, experts] f32.
// hidden % 4 == 0.
extern "C" __global__ void moe_router_f32(const __nv_bfloat16* __restrict__ x, const float* __restrict__ gate,
                                          float* __restrict__ logits, int n, int experts, int hidden) {
    const int warp = threadIdx.x / NEMO_WARP, lane = threadIdx.x % NEMO_WARP;
    const int e = blockIdx.x * MOE_WARPS + warp;
    const int t0 = blockIdx.y * 4;
    if (e >= experts) return;
    const float4* g = reinterpret_cast<const float4*>(gate + (int64_t)e * hidden);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    const int nc = hidden / 4;
    for (int c = lane; c < nc; c += NEMO_WARP) {
        const float4 gv = g[c];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (t0 + j < n) {
                const uint2 raw = *reinterpret_cast<const uint2*>(x + (int64_t)(t0 + j) * hidden + 4 * c);
                const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
                const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
                acc[j] = fmaf(gv.x, a.x, fmaf(gv.y, a.y, fmaf(gv.z, b.x, fmaf(gv.w, b.y, acc[j]))));
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float s = nemo::warp_sum(acc[j]);
        if (lane == 0 && t0 + j < n) logits[(int64_t)(t0 + j) * experts + e] = s;
    }
}

// moe_up_gemv_bf16: the chosen experts' up projections and relu², for few tokens (decode),
// reading the expert ids from device memory (capturable in a CUDA graph).
//   h[p, r] = relu(Σ_c up[ids[p]][r, c] · x[p / top_k, c])²      p = t·top_k + k
// grid (ceil(inter / (4·R)), n·top_k), block 128, dynamic shared memory inner·2 bytes
// (the token's input row). Warp w takes rows (blockIdx.x·4 + w)·R .. +R.
// Reads x [n, inner] bf16, up [experts, inter, inner] bf16, ids [n·top_k] u32;
// writes h [n·top_k, inter] f32. inner % 8 == 0.
template <int R>
__device__ __forceinline__ void up_gemv(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ up,
                                        const uint32_t* __restrict__ ids, float* __restrict__ h, int top_k,
                                        int experts, int inter, int inner) {
    uint4* xs = reinterpret_cast<uint4*>(nemo::dynamic_smem());
    const int p = blockIdx.y;
    const int t = p / top_k;
    const uint32_t e = ids[p];
    const int nc = inner / 8;
    const uint4* src = reinterpret_cast<const uint4*>(x + (int64_t)t * inner);
    for (int c = threadIdx.x; c < nc; c += blockDim.x) xs[c] = src[c];
    __syncthreads();
    if (e >= (uint32_t)experts) return;  // ids come from moe_route: never, but never read outside `up`
    const int warp = threadIdx.x / NEMO_WARP, lane = threadIdx.x % NEMO_WARP;
    const int row0 = (blockIdx.x * MOE_WARPS + warp) * R;
    if (row0 >= inter) return;
    const uint4* w[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = min(row0 + r, inter - 1);  // a ragged last group re-reads a valid row
        w[r] = reinterpret_cast<const uint4*>(up + ((int64_t)e * inter + row) * inner);
    }
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    for (int c = lane; c < nc; c += NEMO_WARP) {
        uint4 wv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) wv[r] = ld_weights(w[r] + c);
        float xf[8];
        unpack8(xs[c], xf);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] += dot8(wv[r], xf);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float s = nemo::warp_sum(acc[r]);
        if (lane == 0 && row0 + r < inter) {
            const float v = fmaxf(s, 0.f);
            h[(int64_t)p * inter + row0 + r] = v * v;
        }
    }
}

#define MOE_UP_ROWS 4
extern "C" __global__ void moe_up_gemv_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ up,
                                            const uint32_t* __restrict__ ids, float* __restrict__ h, int top_k,
                                            int experts, int inter, int inner) {
    up_gemv<MOE_UP_ROWS>(x, up, ids, h, top_k, experts, inter, inner);
}

// moe_down_gemv_bf16: the chosen experts' down projections, one (token, pick) pair per
// blockIdx.y (so the six experts of a decode token stream in parallel; `moe_combine_f32`
// then weighs and sums them).
//   ys[p, c] = Σ_r down[ids[p]][c, r] · h[p, r]
// grid (ceil(dim / (4·R)), n·top_k), block 128, dynamic shared memory inter·4 bytes (the
// pair's h row). Warp w takes rows (blockIdx.x·4 + w)·R .. +R.
// Reads h [n·top_k, inter] f32, down [experts, dim, inter] bf16, ids [n·top_k] u32;
// writes ys [n·top_k, dim] f32. inter % 8 == 0.
template <int R>
__device__ __forceinline__ void down_gemv(const float* __restrict__ h, const __nv_bfloat16* __restrict__ down,
                                          const uint32_t* __restrict__ ids, float* __restrict__ ys, int experts,
                                          int dim, int inter) {
    float4* hs = reinterpret_cast<float4*>(nemo::dynamic_smem());
    const int p = blockIdx.y;
    const uint32_t e = ids[p];
    const float4* src = reinterpret_cast<const float4*>(h + (int64_t)p * inter);
    for (int c = threadIdx.x; c < inter / 4; c += blockDim.x) hs[c] = src[c];
    __syncthreads();
    if (e >= (uint32_t)experts) return;  // ids come from moe_route: never
    const int warp = threadIdx.x / NEMO_WARP, lane = threadIdx.x % NEMO_WARP;
    const int row0 = (blockIdx.x * MOE_WARPS + warp) * R;
    if (row0 >= dim) return;
    const uint4* w[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = min(row0 + r, dim - 1);
        w[r] = reinterpret_cast<const uint4*>(down + ((int64_t)e * dim + row) * inter);
    }
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    const int nc = inter / 8;
    for (int c = lane; c < nc; c += NEMO_WARP) {
        uint4 wv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) wv[r] = ld_weights(w[r] + c);
        const float4 a = hs[2 * c], b = hs[2 * c + 1];
        const float hf[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] += dot8(wv[r], hf);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float s = nemo::warp_sum(acc[r]);
        if (lane == 0 && row0 + r < dim) ys[(int64_t)p * dim + row0 + r] = s;
    }
}

#define MOE_DOWN_ROWS 4
extern "C" __global__ void moe_down_gemv_bf16(const float* __restrict__ h, const __nv_bfloat16* __restrict__ down,
                                              const uint32_t* __restrict__ ids, float* __restrict__ ys, int experts,
                                              int dim, int inter) {
    down_gemv<MOE_DOWN_ROWS>(h, down, ids, ys, experts, dim, inter);
}

// moe_gather_bf16: rows of x in expert order for the per-expert GEMMs of a prompt.
//   xs[i, :] = x[rows[i], :]
// grid (count), block 128. Reads x [n, dim] bf16, rows [count] u32; writes xs [count, dim].
// dim % 8 == 0.
extern "C" __global__ void moe_gather_bf16(const __nv_bfloat16* __restrict__ x, const uint32_t* __restrict__ rows,
                                           __nv_bfloat16* __restrict__ xs, int dim) {
    const int i = blockIdx.x;
    const uint4* src = reinterpret_cast<const uint4*>(x + (int64_t)rows[i] * dim);
    uint4* dst = reinterpret_cast<uint4*>(xs + (int64_t)i * dim);
    for (int c = threadIdx.x; c < dim / 8; c += blockDim.x) dst[c] = src[c];
}

// moe_combine_f32: the weighted sum of each token's expert outputs (in pick order).
//   out[t, c] = Σ_k wts[t, k] · ys[pos[t·top_k + k], c]     (pos null: pos[p] = p)
// grid (n), block 256. Reads ys [rows, dim] f32, pos/wts [n·top_k]; writes out [n, dim]
// f32 and, when out_bf16 is not null, its bf16 rounding.
extern "C" __global__ void moe_combine_f32(const float* __restrict__ ys, const uint32_t* __restrict__ pos,
                                           const float* __restrict__ wts, float* __restrict__ out,
                                           __nv_bfloat16* __restrict__ out_bf16, int top_k, int dim) {
    const int t = blockIdx.x;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float s = 0.f;
        for (int k = 0; k < top_k; ++k) {
            const int p = t * top_k + k;
            s = fmaf(wts[p], ys[(int64_t)(pos ? pos[p] : p) * dim + c], s);
        }
        out[(int64_t)t * dim + c] = s;
        if (out_bf16) out_bf16[(int64_t)t * dim + c] = __float2bfloat16_rn(s);
    }
}
