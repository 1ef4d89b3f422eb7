// Shared helpers for nemo's kernels: dtype loads/stores, softplus/silu as the CPU backend
// computes them (src/backend/cpu/ops.rs), warp and block reductions, FP8 encode/decode.
//
// Conventions: activations are f32; weights are bf16 unless a kernel's name says otherwise;
// every index is computed in 64-bit where it can exceed 2^31 (positions × heads × dims).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#define NEMO_WARP 32

namespace nemo {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// torch's softplus with threshold 20 (ops::softplus).
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = NEMO_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = NEMO_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. `scratch` holds 32 floats. Contains __syncthreads: call from all threads.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % NEMO_WARP, warp = threadIdx.x / NEMO_WARP;
    const int nwarps = blockDim.x / NEMO_WARP;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % NEMO_WARP, warp = threadIdx.x / NEMO_WARP;
    const int nwarps = blockDim.x / NEMO_WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// ---- FP8 (OCP E4M3FN / E5M2), as src/backend/fp8.rs: round to nearest even, saturate to
// the largest finite value. From sm_89 on the hardware cvt instructions do it; before
// that cuda_fp8.h's software path gives the same bits. The arch gate is explicit here so
// that ptxas -v shows which path each target got.
enum Fp8Kind { E4M3 = 0, E5M2 = 1 };

template <int KIND> __device__ __forceinline__ uint8_t fp8_encode(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    // cvt packs (a, b) as a in the high byte, b in the low byte.
    unsigned short r;
    if (KIND == E4M3) asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.f), "f"(x));
    else asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.f), "f"(x));
    return (uint8_t)(r & 0xffu);
#else
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, KIND == E4M3 ? __NV_E4M3 : __NV_E5M2);
#endif
}

template <int KIND> __device__ __forceinline__ float fp8_decode(uint8_t b) {
    if (KIND == E5M2) {
        // E5M2 is the top byte of an IEEE half.
        return __half2float(__ushort_as_half((unsigned short)((unsigned)b << 8)));
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
    return __half2float(__half(h));
#else
    // Bit manipulation: sign, 4-bit exponent (bias 7), 3-bit mantissa; 0x7F/0xFF are NaN.
    const uint32_t sign = (b & 0x80u) << 24;
    const uint32_t e = (b >> 3) & 0xFu, m = b & 0x7u;
    if (e == 0xFu && m == 0x7u) return __uint_as_float(0x7fc00000u | sign);
    float mag;
    if (e == 0) mag = (float)m * 0.001953125f;  // m/8 · 2^-6
    else mag = __uint_as_float(((e + 120u) << 23) | (m << 20));  // (1+m/8)·2^(e-7)
    return __uint_as_float(__float_as_uint(mag) | sign);
#endif
}

template <int KIND> __device__ __forceinline__ float fp8_max() { return KIND == E4M3 ? 448.f : 57344.f; }

}  // namespace nemo
