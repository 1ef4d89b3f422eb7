// MoE routing of Nemotron-H (oracle: model::moe::Moe::route):
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
        choice[j] = s + bias[j];
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
