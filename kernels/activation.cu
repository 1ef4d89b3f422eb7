// Element-wise ops: relu² (oracle ops::relu2_inplace), bias add, f32 → bf16 cast.
#include "common.cuh"

// relu2_f32: x ← max(x, 0)²; also out_bf16 (may be null) for the next GEMM.
// grid (ceil(n / 256)), block 256, one element per thread. Reads/writes x [n].
extern "C" __global__ void relu2_f32(float* __restrict__ x, __nv_bfloat16* __restrict__ out_bf16,
                                     int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float r = fmaxf(x[i], 0.f);
    const float v = r * r;
    x[i] = v;
    if (out_bf16) out_bf16[i] = __float2bfloat16_rn(v);
}

// bias_add_f32: x[r, c] += b[c] for rows × cols. grid (ceil(rows·cols / 256)), block 256.
extern "C" __global__ void bias_add_f32(float* __restrict__ x, const float* __restrict__ b, int64_t rows,
                                        int cols) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    x[i] += b[i % cols];
}

// cast_f32_bf16: out[i] = bf16(x[i]) (round to nearest even). grid (ceil(n / 256)), block 256.
extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ out,
                                         int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}
