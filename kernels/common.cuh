// Shared helpers for nemo's kernels: dtype loads/stores, softplus/silu as the CPU backend
// computes them (src/backend/cpu/ops.rs), warp and block reductions, FP8 encode/decode.
//
// Conventions: activations are f32; weights are bf16 unless a kernel's name says otherwise;
// every index is computed in 64-bit where it can exceed 2^31 (positions × heads × dims).
#pragma once

#ifndef NEMO_KERNEL_SIM
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#endif

#define NEMO_WARP 32

namespace nemo {

// ---- Every inline PTX instruction of the kernels, behind one wrapper each. ----------------
// With NEMO_KERNEL_SIM (the CPU simulation, kernels/sim/sim.h) these are declared and
// implemented on the host from the PTX ISA's definitions instead; the kernel files compile
// unchanged for both. All force-inlined: nvcc emits exactly the instruction it replaces.
#ifndef NEMO_KERNEL_SIM
// D += A·B, mma.sync m16n8k16, bf16 inputs (two per register, the lower index in the low
// half), f32 accumulators. Fragment layouts: PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"; g = lane / 4, q = lane % 4:
//   A 16x16: a[0] = A[g][2q, 2q+1], a[1] = A[g+8][2q, 2q+1], a[2] = A[g][2q+8, +9], a[3] = A[g+8][2q+8, +9]
//   B 16x8:  b[0] = B[2q, 2q+1][g], b[1] = B[2q+8, 2q+9][g]
//   C 16x8:  d[0], d[1] = C[g][2q, 2q+1], d[2], d[3] = C[g+8][2q, 2q+1]
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// D += A·B, mma.sync m16n8k8, tf32 inputs, f32 accumulators. PTX ISA, "Matrix Fragments
// for mma.m16n8k8", .tf32 (g, q as above):
//   A 16x8: a[0] = A[g][q], a[1] = A[g+8][q], a[2] = A[g][q+4], a[3] = A[g+8][q+4]
//   B 8x8:  b[0] = B[q][g], b[1] = B[q+4][g]
//   C 16x8: as for m16n8k16
__device__ __forceinline__ void mma_tf32_1688(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16: lanes 0-7 give the row addresses of the
// first 8x8 b16 matrix, lanes 8-15 those of the second (16-byte aligned rows in shared
// memory); with .trans lane (g, q) receives rows 2q, 2q+1 of column g of matrix i in r[i]
// (PTX ISA, "Warp-level matrix load instruction: ldmatrix").
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem_row) {
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

// cvt.rna.tf32.f32: f32 → tf32 (10 mantissa bits), round to nearest, ties away from zero.
__device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

// The launch's dynamic shared memory size in bytes (%dynamic_smem_size).
__device__ __forceinline__ uint32_t dynamic_smem_size() {
    uint32_t r;
    asm("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(r));
    return r;
}

// The start of the launch's dynamic shared memory (every `extern __shared__` array of a
// kernel is this address).
__device__ __forceinline__ unsigned char* dynamic_smem() {
    extern __shared__ __align__(16) unsigned char nemo_dynamic_smem[];
    return nemo_dynamic_smem;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
// cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32 d, a, b: a → the high byte, b → the low byte; round
// to nearest even, finite values past the largest saturate to it.
__device__ __forceinline__ unsigned short cvt_e4m3x2(float a, float b) {
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ unsigned short cvt_e5m2x2(float a, float b) {
    unsigned short r;
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(a), "f"(b));
    return r;
}
#endif
#endif  // NEMO_KERNEL_SIM

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
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890) || defined(NEMO_KERNEL_SIM)
    // x goes to the low byte.
    const unsigned short r = KIND == E4M3 ? cvt_e4m3x2(0.f, x) : cvt_e5m2x2(0.f, x);
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
