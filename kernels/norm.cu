// RMSNorm fused with the residual add, and the grouped gated RMSNorm of the Mamba2 mixer.
// Oracles: backend::cpu::ops::{rms_norm, gated_rms_norm}.
#include "common.cuh"

// rms_norm_residual_f32: per row r of `dim`:
//   if delta: residual[r] += delta[r]          (x = x + mixer(...), nemotron_h::forward)
//   out[r] = w · residual[r] / sqrt(mean(residual[r]²) + eps)
// grid (rows), block 256 (any multiple of 32 up to 1024): threads stride over the row.
// Reads residual, delta (may be null), w [dim] f32; writes residual (when delta is given),
// out_f32 and/or out_bf16 (either may be null; bf16 feeds the next GEMM).
extern "C" __global__ void rms_norm_residual_f32(float* __restrict__ residual,
                                                 const float* __restrict__ delta,
                                                 const float* __restrict__ w,
                                                 float* __restrict__ out_f32,
                                                 __nv_bfloat16* __restrict__ out_bf16, int dim,
                                                 float eps) {
    __shared__ float scratch[32];
    const int64_t base = (int64_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float v = residual[base + c];
        if (delta) {
            v += delta[base + c];
            residual[base + c] = v;
        }
        ss += v * v;
    }
    ss = nemo::block_sum(ss, scratch);
    const float inv = 1.f / sqrtf(ss / (float)dim + eps);
    // Each thread re-reads only the elements it wrote itself: no barrier needed.
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float o = w[c] * (residual[base + c] * inv);
        if (out_f32) out_f32[base + c] = o;
        if (out_bf16) out_bf16[base + c] = __float2bfloat16_rn(o);
    }
}

// gated_rms_norm_f32 (NemotronHRMSNormGated, norm_before_gate=False), per row r, group g:
//   y ← y · silu(z);  y[g] ← w[g] · y[g] / sqrt(mean(y[g]²) + eps)
// grid (dim / group_size groups, rows), block 256: threads stride over one group.
// Reads y, z ([rows, dim], z with row stride z_stride since it is a slice of zxbcdt),
// w [dim]; writes y in place and out_bf16 (may be null).
extern "C" __global__ void gated_rms_norm_f32(float* __restrict__ y, const float* __restrict__ z,
                                              int64_t z_stride, const float* __restrict__ w,
                                              __nv_bfloat16* __restrict__ out_bf16, int dim,
                                              int group_size, float eps) {
    __shared__ float scratch[32];
    const int g = blockIdx.x, r = blockIdx.y;
    const int64_t yb = (int64_t)r * dim + (int64_t)g * group_size;
    const int64_t zb = (int64_t)r * z_stride + (int64_t)g * group_size;
    float ss = 0.f;
    for (int c = threadIdx.x; c < group_size; c += blockDim.x) {
        const float v = y[yb + c] * nemo::silu(z[zb + c]);
        y[yb + c] = v;
        ss += v * v;
    }
    ss = nemo::block_sum(ss, scratch);
    const float inv = 1.f / sqrtf(ss / (float)group_size + eps);
    for (int c = threadIdx.x; c < group_size; c += blockDim.x) {
        const float o = w[g * group_size + c] * (y[yb + c] * inv);
        y[yb + c] = o;
        if (out_bf16) out_bf16[yb + c] = __float2bfloat16_rn(o);
    }
}
