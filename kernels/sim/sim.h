// A host simulation of the CUDA subset nemo's kernels use, so that the real kernel files run
// on the CPU in CI (tests/kernel_sim.rs):
//   g++ -std=c++20 -DNEMO_KERNEL_SIM -include kernels/sim/sim.h -x c++ kernels/X.cu ...
// (the drivers kernels/sim/*.cpp #include the .cu file after this header).
//
// Model: `launch` runs a grid's blocks one after another; each CUDA thread of a block is a
// fiber (ucontext, its own stack) on the calling OS thread, scheduled cooperatively: a
// thread runs until it waits at a barrier or returns. `__shared__` variables are function
// statics, so the block's threads share them; `__syncthreads` is a barrier of the block's
// live threads, warp collectives (`__shfl_*_sync`, `__syncwarp`, mma.sync, ldmatrix) a
// barrier of the warp's live threads. A thread that returns early leaves both (as an exited
// thread no longer counts for bar.sync on the GPU). When every live thread waits and none
// can go on (a barrier inside divergent code), the simulation stops with a deadlock message.
// Released waiters resume in a seeded shuffled order, so a missing barrier between a write
// and another thread's read tends to show up as a wrong result. Dynamic shared memory is
// filled with 0xFF bytes (f32 NaN) before every block, so a read of an element the block did
// not write shows up. What this proves and what it does not: README.md, *CUDA*.
//
// The PTX instructions behind kernels/common.cuh's wrappers are implemented here from the
// PTX ISA's definitions (each cites its section), not from the kernels' own comments.
#pragma once
#ifndef NEMO_KERNEL_SIM
#error "kernels/sim/sim.h is for -DNEMO_KERNEL_SIM builds"
#endif

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <type_traits>
#include <vector>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

using std::isfinite;
using std::isnan;

// CUDA's min/max accept mixed integer types (as the kernels call them).
template <typename A, typename B> inline std::common_type_t<A, B> min(A a, B b) {
    return a < b ? a : b;
}
template <typename A, typename B> inline std::common_type_t<A, B> max(A a, B b) {
    return a > b ? a : b;
}

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3 threadIdx, blockIdx;  // of the running fiber
inline dim3 blockDim, gridDim;

struct float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { uint32_t x, y; };
struct __attribute__((aligned(16))) uint4 { uint32_t x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }

inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

[[noreturn]] inline void __trap() {
    std::fprintf(stderr, "kernel sim: __trap() in block (%u, %u, %u) thread %u\n", blockIdx.x,
                 blockIdx.y, blockIdx.z, threadIdx.x);
    std::abort();
}

// ---- bf16 / f16: IEEE round to nearest even (cuda_bf16.h / cuda_fp16.h's _rn) ------------
struct __nv_bfloat16 { uint16_t x; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((uint32_t)b.x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40u)};  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) {
    return {__bfloat162float(v.x), __bfloat162float(v.y)};
}

struct __half { uint16_t x; };
struct __attribute__((aligned(4))) __half2 { __half x, y; };
inline float __half2float(__half h) {
    const uint32_t s = (uint32_t)(h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu;
    if (e == 0x1f) return __uint_as_float(s | 0x7f800000u | (m << 13));
    if (e == 0) {
        const float v = (float)m * 5.9604644775390625e-8f;  // m · 2^-24
        return s ? -v : v;
    }
    return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
}
inline __half __float2half_rn(float f) {
    const uint32_t x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return {(uint16_t)(sign | 0x7e00u)};
    if (ax >= 0x477ff000u) return {(uint16_t)(sign | 0x7c00u)};  // ≥ 65520 rounds to inf
    if (ax < 0x38800000u) {  // below 2^-14: a multiple of 2^-24, rounded to nearest even
        const float q = std::nearbyint(__uint_as_float(ax) * 16777216.f);
        return {(uint16_t)(sign | (uint32_t)q)};
    }
    uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return {(uint16_t)(sign | h)};
}
inline __half __ushort_as_half(unsigned short s) { return {s}; }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }

// ---- atomics and streaming loads (fibers never interleave inside one) --------------------
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    const unsigned long long old = *p;
    *p = std::max(old, v);
    return old;
}
inline int atomicMax(int* p, int v) {
    const int old = *p;
    *p = std::max(old, v);
    return old;
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = std::min(old, v);
    return old;
}
template <typename T> inline T __ldcs(const T* p) { return *p; }

// ---- the block's threads (fibers) and barriers --------------------------------------------
namespace nemo_sim {

constexpr int kMaxWarps = 32;
constexpr size_t kStack = 256 * 1024;

struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    bool done = false;
};
inline std::vector<Fiber> fibers;
inline ucontext_t scheduler;
inline int current = -1;
inline std::vector<int> ready;  // a stack: the last pushed runs next
inline std::mt19937 order(12345);
inline const std::function<void()>* body = nullptr;

[[noreturn]] inline void die(const char* what) {
    std::fprintf(stderr, "kernel sim: %s (block (%u, %u, %u), thread %u)\n", what, blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x);
    std::fflush(stderr);
    std::abort();
}

// Gives the CPU back to the scheduler; the caller has queued itself somewhere (a barrier).
inline void block_current() {
    if (swapcontext(&fibers[current].ctx, &scheduler) != 0) die("swapcontext failed");
}

struct Barrier {
    int expected = 0, arrived = 0;
    std::vector<int> waiters;
    void release() {
        arrived = 0;
        std::shuffle(waiters.begin(), waiters.end(), order);
        for (int w : waiters) ready.push_back(w);
        waiters.clear();
    }
    void arrive_and_wait() {
        waiters.push_back(current);  // the last to arrive is released in the shuffle too
        if (++arrived == expected) release();
        block_current();
    }
    void arrive_and_drop() {
        --expected;
        if (expected > 0 && arrived == expected) release();
    }
};
inline Barrier block_bar;
inline Barrier warp_bar[kMaxWarps];
inline uint64_t xchg[kMaxWarps][32];            // shuffle values
inline const void* ptrs[kMaxWarps][32];         // ldmatrix row addresses
inline uint32_t frag[kMaxWarps][32][6];         // mma operands
inline std::vector<unsigned char> dyn_smem;
inline uint32_t dyn_smem_bytes = 0;

inline int warp_id() { return (int)threadIdx.x / 32; }
inline int lane_id() { return (int)threadIdx.x % 32; }
inline void warp_sync() { warp_bar[warp_id()].arrive_and_wait(); }

inline void fiber_main() {
    (*body)();
    const unsigned t = threadIdx.x;
    fibers[t].done = true;
    warp_bar[t / 32].arrive_and_drop();
    block_bar.arrive_and_drop();
    // returning resumes uc_link = the scheduler
}

// Runs one block: every thread from the start of `fn` to its return.
inline void run_block(unsigned threads) {
    block_bar = Barrier{(int)threads, 0, {}};
    for (unsigned w = 0; w * 32 < threads; ++w) warp_bar[w] = Barrier{(int)std::min(32u, threads - 32 * w), 0, {}};
    std::memset(dyn_smem.data(), 0xff, dyn_smem.size());
    ready.clear();
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        f.done = false;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_main, 0);
        ready.push_back((int)(threads - 1 - t));  // thread 0 starts first
    }
    while (!ready.empty()) {
        current = ready.back();
        ready.pop_back();
        threadIdx = {(unsigned)current, 0, 0};
        if (swapcontext(&scheduler, &fibers[current].ctx) != 0) die("swapcontext failed");
    }
    for (unsigned t = 0; t < threads; ++t)
        if (!fibers[t].done) {
            threadIdx = {t, 0, 0};
            die("deadlock: threads wait at a barrier that the others never reach");
        }
}

template <typename T> inline T shfl(T v, int src_of_lane_fn(int, int), int arg) {
    static_assert(sizeof(T) <= 8);
    const int w = warp_id(), l = lane_id();
    uint64_t raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    xchg[w][l] = raw;
    warp_sync();
    raw = xchg[w][src_of_lane_fn(l, arg) & 31];
    warp_sync();
    T r;
    std::memcpy(&r, &raw, sizeof(T));
    return r;
}

}  // namespace nemo_sim

inline void __syncthreads() { nemo_sim::block_bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { nemo_sim::warp_sync(); }
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int m) {
    return nemo_sim::shfl(v, [](int l, int a) { return l ^ a; }, m);
}
template <typename T> inline T __shfl_up_sync(unsigned, T v, int d) {
    return nemo_sim::shfl(v, [](int l, int a) { return l >= a ? l - a : l; }, d);
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, int d) {
    return nemo_sim::shfl(v, [](int l, int a) { return l + a < 32 ? l + a : l; }, d);
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src) {
    return nemo_sim::shfl(v, [](int, int a) { return a; }, src);
}

// launch(grid, block, dynamic shared bytes, fn): runs fn (which calls the kernel) for every
// block of the grid, x fastest, with `block.x` threads (block.y = block.z = 1).
template <typename F> void launch(dim3 grid, dim3 block, size_t dyn_smem, F&& fn) {
    if (block.y != 1 || block.z != 1 || block.x == 0 || block.x > 32u * nemo_sim::kMaxWarps) {
        std::fprintf(stderr, "kernel sim: unsupported block (%u, %u, %u)\n", block.x, block.y, block.z);
        std::abort();
    }
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x;
    nemo_sim::dyn_smem.assign(dyn_smem, 0xff);
    nemo_sim::dyn_smem_bytes = (uint32_t)dyn_smem;
    while (nemo_sim::fibers.size() < threads) {
        nemo_sim::fibers.emplace_back();
        nemo_sim::fibers.back().stack.reset(new char[nemo_sim::kStack]);
    }
    const std::function<void()> body = [&fn] { fn(); };
    nemo_sim::body = &body;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                nemo_sim::run_block(threads);
            }
    nemo_sim::body = nullptr;
}

// ---- The PTX instructions behind kernels/common.cuh's wrappers --------------------------
namespace nemo {

inline unsigned char* dynamic_smem() { return nemo_sim::dyn_smem.data(); }
inline uint32_t dynamic_smem_size() { return nemo_sim::dyn_smem_bytes; }

// cvt.rna.tf32.f32 (PTX ISA, "cvt"; .rna = round to nearest, ties away from zero): the
// result keeps f32's sign and exponent and the top 10 mantissa bits, low 13 bits zero.
inline uint32_t to_tf32(float x) {
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, NaN unchanged
    return (u + 0x1000u) & ~0x1fffu;  // adding half an ulp to the magnitude rounds it half-up
}

namespace sim_detail {
inline float bf16_lo(uint32_t r) { return __uint_as_float(r << 16); }
inline float bf16_hi(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }
// tf32 operands: the hardware reads the sign, exponent and top 10 mantissa bits only.
inline float tf32_val(uint32_t r) { return __uint_as_float(r & ~0x1fffu); }

// One warp-wide D = A·B + C of shape 16 x 8 x K: every lane deposits its fragment registers,
// then every lane computes its four D elements from the whole warp's A and B (rows from the
// lanes that the PTX layout says hold them). The products are exact (bf16/tf32 products fit
// in f64) and summed in f64 before one rounding to f32: at least as accurate as the tensor
// core, so a kernel's error bound must not rely on the hardware's order of additions.
template <int K, typename GetA, typename GetB>
inline void warp_mma(float d[4], const uint32_t a[4], const uint32_t b[2], GetA get_a, GetB get_b) {
    const int w = nemo_sim::warp_id(), l = nemo_sim::lane_id();
    for (int i = 0; i < 4; ++i) nemo_sim::frag[w][l][i] = a[i];
    for (int i = 0; i < 2; ++i) nemo_sim::frag[w][l][4 + i] = b[i];
    nemo_sim::warp_sync();
    const int g = l >> 2, q = l & 3;
    float out[4];
    for (int r = 0; r < 4; ++r) {
        const int row = g + (r >= 2 ? 8 : 0), col = 2 * q + (r & 1);  // C/D layout
        double s = d[r];
        for (int k = 0; k < K; ++k) s += (double)get_a(row, k) * (double)get_b(k, col);
        out[r] = (float)s;
    }
    nemo_sim::warp_sync();
    for (int r = 0; r < 4; ++r) d[r] = out[r];
}
}  // namespace sim_detail

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32. PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type" (groupID = lane >> 2, threadID_in_group = lane % 4):
//   A (16x16, .bf16, four .b32 regs a0..a3 holding elements a0..a7, lower element in the
//     low half): row = groupID for a0, a1, a4, a5, groupID + 8 for a2, a3, a6, a7;
//     col = threadID_in_group·2 + (i & 1) for a0..a3, + 8 for a4..a7.
//   B (16x8, two regs, elements b0..b3): row = threadID_in_group·2 + (i & 1) for b0, b1,
//     + 8 for b2, b3; col = groupID.
//   C/D (16x8, f32 c0..c3): row = groupID for c0, c1, groupID + 8 for c2, c3;
//     col = threadID_in_group·2 + (i & 1).
// Inverted: A[row][col] is element i of lane 4·(row % 8) + (col % 8) / 2 with
// i = (row ≥ 8 ? 2 : 0) + (col ≥ 8 ? 4 : 0) + col % 2, i.e. register i / 2, half i % 2.
inline void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    const int w = nemo_sim::warp_id();
    auto get_a = [w](int row, int col) {
        const int lane = 4 * (row % 8) + (col % 8) / 2;
        const int i = (row >= 8 ? 2 : 0) + (col >= 8 ? 4 : 0) + col % 2;
        const uint32_t reg = nemo_sim::frag[w][lane][i / 2];
        return i % 2 ? sim_detail::bf16_hi(reg) : sim_detail::bf16_lo(reg);
    };
    auto get_b = [w](int row, int col) {
        const int lane = 4 * col + (row % 8) / 2;
        const int i = (row >= 8 ? 2 : 0) + row % 2;
        const uint32_t reg = nemo_sim::frag[w][lane][4 + i / 2];
        return i % 2 ? sim_detail::bf16_hi(reg) : sim_detail::bf16_lo(reg);
    };
    sim_detail::warp_mma<16>(d, a, b, get_a, get_b);
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32. PTX ISA, "Matrix Fragments for
// mma.m16n8k8", .tf32 case (one element per register):
//   A (16x8, a0..a3): row = groupID for a0, a2, groupID + 8 for a1, a3;
//     col = threadID_in_group for a0, a1, threadID_in_group + 4 for a2, a3.
//   B (8x8, b0, b1): row = threadID_in_group for b0, threadID_in_group + 4 for b1;
//     col = groupID.
//   C/D as for m16n8k16.
inline void mma_tf32_1688(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    const int w = nemo_sim::warp_id();
    auto get_a = [w](int row, int col) {
        const int lane = 4 * (row % 8) + col % 4;
        const int i = (row >= 8 ? 1 : 0) + (col >= 4 ? 2 : 0);
        return sim_detail::tf32_val(nemo_sim::frag[w][lane][i]);
    };
    auto get_b = [w](int row, int col) {
        const int lane = 4 * col + row % 4;
        return sim_detail::tf32_val(nemo_sim::frag[w][lane][4 + (row >= 4 ? 1 : 0)]);
    };
    sim_detail::warp_mma<8>(d, a, b, get_a, get_b);
}

// ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16. PTX ISA, "Warp-level matrix load
// instruction: ldmatrix": for .x2, threads 0-7 give the addresses of the 8 rows (8 b16 each)
// of matrix 0, threads 8-15 those of matrix 1. Without .trans, register r[i] of lane l holds
// row l / 4, elements 2·(l % 4) and 2·(l % 4) + 1 of matrix i; .trans delivers the
// transposed matrix: row 2·(l % 4) (low half) and row 2·(l % 4) + 1 (high half), both at
// element l / 4.
inline void ldmatrix_x2_trans(uint32_t r[2], const void* smem_row) {
    const int w = nemo_sim::warp_id(), l = nemo_sim::lane_id();
    nemo_sim::ptrs[w][l] = smem_row;
    nemo_sim::warp_sync();
    uint32_t out[2];
    for (int m = 0; m < 2; ++m) {
        const auto* r0 = static_cast<const uint16_t*>(nemo_sim::ptrs[w][8 * m + 2 * (l % 4)]);
        const auto* r1 = static_cast<const uint16_t*>(nemo_sim::ptrs[w][8 * m + 2 * (l % 4) + 1]);
        if (((uintptr_t)r0 | (uintptr_t)r1) % 16 != 0) {
            std::fprintf(stderr, "kernel sim: ldmatrix row address not 16-byte aligned\n");
            std::abort();
        }
        out[m] = (uint32_t)r0[l / 4] | ((uint32_t)r1[l / 4] << 16);
    }
    nemo_sim::warp_sync();
    r[0] = out[0];
    r[1] = out[1];
}

// cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32 d, a, b (PTX ISA, "cvt"): a → the upper byte, b → the
// lower; round to nearest even; .satfinite: a finite value or ±inf beyond the largest
// finite one gives ±max finite (E4M3 448, E5M2 57344); NaN gives NaN (0x7F).
namespace sim_detail {
inline uint8_t fp8_rn_sat(float x, int mbits, int bias, float maxf, uint8_t maxcode) {
    if (std::isnan(x)) return 0x7f;
    const uint8_t sign = std::signbit(x) ? 0x80 : 0;
    const float a = std::fabs(x);
    if (a >= maxf) return sign | maxcode;
    // The spacing of representable values around a: 2^(E − mbits) for a normal a (binade
    // 2^E), the subnormal spacing 2^(1 − bias − mbits) below the smallest normal.
    int e2;
    std::frexp(a, &e2);  // a = f · 2^e2, f ∈ [0.5, 1)
    const int E = std::max(e2 - 1, 1 - bias);
    const double quantum = std::ldexp(1.0, E - mbits);
    const double v = std::nearbyint(a / quantum) * quantum;  // ties to even multiple
    if (v >= maxf) return sign | maxcode;
    if (v == 0) return sign;
    int ev;
    std::frexp(v, &ev);
    const int Ev = ev - 1;
    if (Ev < 1 - bias) return sign | (uint8_t)(v / std::ldexp(1.0, 1 - bias - mbits));  // subnormal
    const uint32_t m = (uint32_t)((v / std::ldexp(1.0, Ev) - 1.0) * (1 << mbits));
    return sign | (uint8_t)(((uint32_t)(Ev + bias) << mbits) | m);
}
}  // namespace sim_detail
inline unsigned short cvt_e4m3x2(float a, float b) {
    return (unsigned short)((sim_detail::fp8_rn_sat(a, 3, 7, 448.f, 0x7e) << 8) |
                            sim_detail::fp8_rn_sat(b, 3, 7, 448.f, 0x7e));
}
inline unsigned short cvt_e5m2x2(float a, float b) {
    return (unsigned short)((sim_detail::fp8_rn_sat(a, 2, 15, 57344.f, 0x7b) << 8) |
                            sim_detail::fp8_rn_sat(b, 2, 15, 57344.f, 0x7b));
}

}  // namespace nemo
