// Mamba2 selective scan: the one-step state update for decode and the chunked (SSD) scan
// for prompts. Oracles: backend::cpu::ssm::{ssm_step, ssd_chunked}.
//
// Layouts (as the CPU): xbc [n, cd] after conv+silu, cd = di + 2·ng·ns, holding
// x [di] | B [ng, ns] | C [ng, ns]; dt_raw [n, dt_stride] before softplus (a slice of the
// in_proj output, one value per head); ssm_state [h, p, ns] in T (f32/f16/bf16);
// y [n, di] f32. Head hh reads x[hh·p .. hh·p+p] and group g = hh / (h / ng).
// Arithmetic is f32, except that the prompt scan's matrix products take tf32 inputs
// (see ssd_scan_mma); a half-precision state is rounded once per step / per prompt.
#include "common.cuh"

// ssm_update_<T>: one token. Per head hh and row pi:
//   dt = softplus(dt_raw[hh] + dt_bias[hh]); da = exp(dt·A[hh])
//   st[pi, s] = st[pi, s]·da + dt·x[pi]·B[s];  y[pi] = Σ_s st[pi, s]·C[s] + D[hh]·x[pi]
// grid (h, ceil(p / 4)), block 128 = 4 warps, one row per warp, lanes stride over ns.
// Reads xbc, dt_raw, dt_bias, A, D; writes ssm_state (in place) and y [di].
template <typename T>
__device__ void ssm_update(const float* __restrict__ xbc, const float* __restrict__ dt_raw,
                           const float* __restrict__ dt_bias, const float* __restrict__ A,
                           const float* __restrict__ D, T* __restrict__ state, float* __restrict__ y,
                           int h, int p, int ns, int ng) {
    const int hh = blockIdx.x;
    const int warp = threadIdx.x / NEMO_WARP, lane = threadIdx.x % NEMO_WARP;
    const int pi = blockIdx.y * (blockDim.x / NEMO_WARP) + warp;
    if (pi >= p) return;  // whole warp leaves together: no barrier below
    const int di = h * p;
    const int g = hh / (h / ng);
    const float* B = xbc + di + (int64_t)g * ns;
    const float* C = xbc + di + (int64_t)ng * ns + (int64_t)g * ns;
    const float dt = nemo::softplus(dt_raw[hh] + dt_bias[hh]);
    const float da = expf(dt * A[hh]);
    const float xs = xbc[hh * p + pi];
    const float coef = dt * xs;
    T* row = state + ((int64_t)hh * p + pi) * ns;
    float acc = 0.f;
    for (int s = lane; s < ns; s += NEMO_WARP) {
        const float v = nemo::to_f32(row[s]) * da + coef * B[s];
        row[s] = nemo::from_f32<T>(v);
        acc += v * C[s];
    }
    acc = nemo::warp_sum(acc);
    if (lane == 0) y[hh * p + pi] = acc + D[hh] * xs;
}

#define SSM_UPDATE(NAME, T)                                                                        \
    extern "C" __global__ void NAME(const float* xbc, const float* dt_raw, const float* dt_bias,   \
                                    const float* A, const float* D, T* state, float* y, int h,     \
                                    int p, int ns, int ng) {                                       \
        ssm_update<T>(xbc, dt_raw, dt_bias, A, D, state, y, h, p, ns, ng);                         \
    }
SSM_UPDATE(ssm_update_f32, float)
SSM_UPDATE(ssm_update_f16, __half)
SSM_UPDATE(ssm_update_bf16, __nv_bfloat16)

// ---- chunked scan for prompts on tensor cores -----------------------------------------
// Warp-level MMA (sm_80+): mma.sync m16n8k8 with tf32 inputs and f32 accumulators. TF32 has
// f32's range and 11 significant bits: the sums C·B over d_state and the states are not
// bounded by anything we control, which rules out f16, and the scan is latency-bound (one
// chunk after the other), so the 8× smaller input rounding of tf32 against bf16 costs
// little time. Operands are rounded to tf32 once (cvt.rna) when they are staged in shared
// memory. Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32),
// g = lane / 4, q = lane % 4:
//   A 16x8 row-major: a0 = A[g][q], a1 = A[g+8][q], a2 = A[g][q+4], a3 = A[g+8][q+4]
//   B 8x8:            b0 = B[q][g], b1 = B[q+4][g]
//   C 16x8 f32:       c0,c1 = C[g][2q, 2q+1], c2,c3 = C[g+8][2q, 2q+1]
namespace ssd {

__device__ __forceinline__ uint32_t tf32(float x) { return nemo::to_tf32(x); }

__device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    nemo::mma_tf32_1688(d, a, b);
}

// A fragment of the 16x8 tile at (m0, k0) of s[m][k] (row stride ld, k contiguous).
__device__ __forceinline__ void load_a(uint32_t a[4], const uint32_t* s, int ld, int m0, int k0) {
    const int lane = threadIdx.x % NEMO_WARP, g = lane >> 2, q = lane & 3;
    const uint32_t* p = s + (m0 + g) * ld + k0 + q;
    a[0] = p[0];
    a[1] = p[8 * ld];
    a[2] = p[4];
    a[3] = p[8 * ld + 4];
}

// A fragment of the 16x8 tile at (m0, k0) of A[m][k] = s[k][m] (stored transposed).
__device__ __forceinline__ void load_a_trans(uint32_t a[4], const uint32_t* s, int ld, int m0,
                                             int k0) {
    const int lane = threadIdx.x % NEMO_WARP, g = lane >> 2, q = lane & 3;
    const uint32_t* p = s + (k0 + q) * ld + m0 + g;
    a[0] = p[0];
    a[1] = p[8];
    a[2] = p[4 * ld];
    a[3] = p[4 * ld + 8];
}

// B fragment of the 8x8 tile at (k0, n0) of B[k][n] = s[n][k] (k contiguous).
__device__ __forceinline__ void load_b(uint32_t b[2], const uint32_t* s, int ld, int n0, int k0) {
    const int lane = threadIdx.x % NEMO_WARP, g = lane >> 2, q = lane & 3;
    const uint32_t* p = s + (n0 + g) * ld + k0 + q;
    b[0] = p[0];
    b[1] = p[4];
}

}  // namespace ssd

#define SSD_PB 40   // head_dim columns per block (a multiple of 8)
#define SSD_WARPS 8
#define SSD_PAD 4   // row padding (words): row strides ≡ 4 mod 32, conflict-free fragments

// Dynamic shared memory of ssd_scan_mma<NS, L> (src/backend/cuda/ssm.rs computes the same):
// cum f64 [L] | dts f32 [L] | Cs, Bs [L][NS+4] | Xt, Wt [SSD_PB][L+4] | Ms [L][L+4] |
// St [SSD_PB][NS+4], the last five as tf32 words.
template <int NS, int L> __host__ __device__ constexpr int ssd_smem_bytes() {
    return 8 * L + 4 * L +
           4 * (2 * L * (NS + SSD_PAD) + 2 * SSD_PB * (L + SSD_PAD) + L * (L + SSD_PAD) +
                SSD_PB * (NS + SSD_PAD));
}

// ssd_scan_mma_ns<NS>_<T>: n prompt tokens of one head through the SSD (chunked) form of
// the recurrence, per chunk of L tokens (c0 = first token, len = tokens in the chunk):
//   dt_t = max(softplus(dt_raw[t, hh] + dt_bias[hh]), dt_min); cum_l = Σ_{i≤l} A[hh]·dt_i
//   M[l, s]  = (C_l · B_s) · exp(cum_l − cum_s) · dt_s   for s ≤ l (0 above the diagonal)
//   y[l, pi] = Σ_s M[l, s] · x[s, pi] + exp(cum_l) · (C_l · S[pi, :]) + D[hh] · x[l, pi]
//   S[pi, n] ← exp(cum_last) · S[pi, n] + Σ_s exp(cum_last − cum_s) · dt_s · x[s, pi] · B_s[n]
// The four products (C·Bᵀ, M·x, C·Sᵀ, Bᵀ·W) run on tensor cores (tf32 in, f32 accumulate);
// the state S stays f32 (in registers) from the first chunk to the last and is rounded to
// T once, at the end. cum is summed in f64 so that cum_l − cum_s does not cancel when
// |cum| is large (the CPU sums the segment directly for the same reason).
// L is the kernel's own chunk length (32 for d_state ≤ 128, 16 up to 256), independent of
// the model's chunk_size: the chunked form equals the recurrence for any chunk length, and
// L ≤ 32 lets one warp scan a chunk's dt and keeps shared memory under 99 KB (sm_86/89/120).
// grid (h, ceil(p / pb)), block 256 = 8 warps; block (hh, j) owns head_dim columns
// [j·pb, min(p, (j+1)·pb)), pb ≤ SSD_PB a multiple of 8. Warp w holds state rows
// n ∈ [w·NS/8, (w+1)·NS/8) × all of the block's columns as MMA accumulators.
// Reads xbc, dt_raw, dt_bias, A, D; reads and writes ssm_state; writes y [n, di].
template <typename T, int NS, int L>
__device__ void ssd_scan_mma(const float* __restrict__ xbc, const float* __restrict__ dt_raw,
                             int64_t dt_stride, const float* __restrict__ dt_bias,
                             const float* __restrict__ A, const float* __restrict__ D,
                             T* __restrict__ state, float* __restrict__ y, int64_t n, int h, int p,
                             int ns, int ng, int pb, float dt_min) {
    constexpr int LDN = NS + SSD_PAD;  // rows along d_state
    constexpr int LDL = L + SSD_PAD;   // rows along the chunk
    constexpr int MT = NS / 16 / SSD_WARPS;  // state m-tiles (16 rows of n) per warp
    constexpr int NT = SSD_PB / 8;           // n-tiles (8 columns of pi) per block
    static_assert(L <= NEMO_WARP && L % 16 == 0, "one lane per token of a chunk");
    static_assert(MT >= 1 && NS % (16 * SSD_WARPS) == 0, "state rows split evenly over the warps");
    unsigned char* ssd_smem = nemo::dynamic_smem();
    // A launch with less shared memory than the layout needs is a bug in the launcher.
    if (nemo::dynamic_smem_size() < (uint32_t)ssd_smem_bytes<NS, L>()) __trap();
    double* cum = reinterpret_cast<double*>(ssd_smem);
    float* dts = reinterpret_cast<float*>(cum + L);
    uint32_t* Cs = reinterpret_cast<uint32_t*>(dts + L);  // C[l][n]
    uint32_t* Bs = Cs + L * LDN;                           // B[s][n]
    uint32_t* Xt = Bs + L * LDN;                           // x[s][pi] at [pi][s]
    uint32_t* Wt = Xt + SSD_PB * LDL;  // exp(cum_last − cum_s)·dt_s·x[s][pi] at [pi][s]
    uint32_t* Ms = Wt + SSD_PB * LDL;  // M[l][s]
    uint32_t* St = Ms + L * LDL;       // S[pi][n] at the chunk's start

    const int hh = blockIdx.x, p0 = blockIdx.y * pb;
    const int pw = min(pb, p - p0);
    const int tid = threadIdx.x, nthr = blockDim.x, warp = tid / NEMO_WARP;
    const int lane = tid % NEMO_WARP, g = lane >> 2, q = lane & 3;
    const int di = h * p;
    const int64_t cd = (int64_t)di + 2 * (int64_t)ng * ns;
    const int grp = hh / (h / ng);
    const float a = A[hh], dskip = D[hh], bias = dt_bias[hh];
    const float* xh = xbc + (int64_t)hh * p + p0;  // x[t][pi] = xh[t·cd + pi]
    const float* bg = xbc + di + (int64_t)grp * ns;
    const float* cg = bg + (int64_t)ng * ns;

    // acc[mt][nt][r] = S[pi][n], n = (warp·MT + mt)·16 + g (+8 for r ≥ 2), pi = nt·8 + 2q + (r & 1).
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int sn = (warp * MT + mt) * 16 + g + (r >= 2 ? 8 : 0);
                const int pi = nt * 8 + 2 * q + (r & 1);
                acc[mt][nt][r] = sn < ns && pi < pw
                                     ? nemo::to_f32(state[((int64_t)hh * p + p0 + pi) * ns + sn])
                                     : 0.f;
            }

    for (int64_t c0 = 0; c0 < n; c0 += L) {
        const int len = (int)min((int64_t)L, n - c0);
        if (warp == 0) {
            // Lane i: token i's dt, then an inclusive scan of A·dt over the lanes (L ≤ 32).
            const float dv =
                lane < len ? fmaxf(nemo::softplus(dt_raw[(c0 + lane) * dt_stride + hh] + bias), dt_min)
                           : 0.f;
            double s = (double)(a * dv);
#pragma unroll
            for (int o = 1; o < NEMO_WARP; o <<= 1) {
                const double up = __shfl_up_sync(0xffffffffu, s, o);
                if (lane >= o) s += up;
            }
            if (lane < L) {
                dts[lane] = dv;
                cum[lane] = s;
            }
        }
        // Operands of this chunk; rows past len, columns past ns / pw are zero.
        for (int i = tid; i < L * NS; i += nthr) {
            const int l = i / NS, sn = i % NS;
            float b = 0.f, c = 0.f;
            if (l < len && sn < ns) {
                b = bg[(c0 + l) * cd + sn];
                c = cg[(c0 + l) * cd + sn];
            }
            Bs[l * LDN + sn] = ssd::tf32(b);
            Cs[l * LDN + sn] = ssd::tf32(c);
        }
        for (int i = tid; i < L * SSD_PB; i += nthr) {
            const int s = i / SSD_PB, pi = i % SSD_PB;
            Xt[pi * LDL + s] = ssd::tf32(s < len && pi < pw ? xh[(c0 + s) * cd + pi] : 0.f);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int sn = (warp * MT + mt) * 16 + g + (r >= 2 ? 8 : 0);
                    const int pi = nt * 8 + 2 * q + (r & 1);
                    St[pi * LDN + sn] = ssd::tf32(acc[mt][nt][r]);
                }
        __syncthreads();  // dts, cum, Bs, Cs, Xt, St are ready

        const double last = cum[len - 1];
        const float e = expf((float)last);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[mt][nt][r] *= e;
        for (int i = tid; i < L * SSD_PB; i += nthr) {
            const int s = i / SSD_PB, pi = i % SSD_PB;
            float w = 0.f;
            if (s < len && pi < pw)
                w = expf((float)(last - cum[s])) * dts[s] * xh[(c0 + s) * cd + pi];
            Wt[pi * LDL + s] = ssd::tf32(w);
        }
        // M = (C·Bᵀ) ∘ decay: tiles of 16 rows (l) × 8 columns (s); above the diagonal 0.
        for (int tile = warp; tile < (L / 16) * (L / 8); tile += SSD_WARPS) {
            const int m0 = (tile / (L / 8)) * 16, n0 = (tile % (L / 8)) * 8;
            float cb[4] = {0.f, 0.f, 0.f, 0.f};
            if (n0 <= m0 + 15) {
#pragma unroll 4
                for (int k0 = 0; k0 < NS; k0 += 8) {
                    uint32_t af[4], bf[2];
                    ssd::load_a(af, Cs, LDN, m0, k0);
                    ssd::load_b(bf, Bs, LDN, n0, k0);
                    ssd::mma(cb, af, bf);
                }
            }
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int l = m0 + g + (r >= 2 ? 8 : 0), s = n0 + 2 * q + (r & 1);
                float v = 0.f;
                if (s <= l && l < len) v = cb[r] * expf((float)(cum[l] - cum[s])) * dts[s];
                Ms[l * LDL + s] = ssd::tf32(v);
            }
        }
        __syncthreads();  // Ms, Wt are ready

        // y tiles: 16 rows (l) × 8 columns (pi).
        for (int tile = warp; tile < (L / 16) * NT; tile += SSD_WARPS) {
            const int m0 = (tile / NT) * 16, n0 = (tile % NT) * 8;
            if (n0 >= pw) continue;
            float yd[4] = {0.f, 0.f, 0.f, 0.f}, yo[4] = {0.f, 0.f, 0.f, 0.f};
            for (int k0 = 0; k0 < m0 + 16; k0 += 8) {  // s ≤ l: only tiles left of the diagonal
                uint32_t af[4], bf[2];
                ssd::load_a(af, Ms, LDL, m0, k0);
                ssd::load_b(bf, Xt, LDL, n0, k0);
                ssd::mma(yd, af, bf);
            }
#pragma unroll 4
            for (int k0 = 0; k0 < NS; k0 += 8) {
                uint32_t af[4], bf[2];
                ssd::load_a(af, Cs, LDN, m0, k0);
                ssd::load_b(bf, St, LDN, n0, k0);
                ssd::mma(yo, af, bf);
            }
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int l = m0 + g + (r >= 2 ? 8 : 0), pi = n0 + 2 * q + (r & 1);
                if (l < len && pi < pw) {
                    const float xv = xh[(c0 + l) * cd + pi];
                    y[(c0 + l) * di + (int64_t)hh * p + p0 + pi] =
                        yd[r] + expf((float)cum[l]) * yo[r] + dskip * xv;
                }
            }
        }
        // State: Sᵀ[n][pi] += Σ_s B[s][n] · W[s][pi] (A = Bᵀ read transposed from Bs).
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int k0 = 0; k0 < L; k0 += 8) {
                uint32_t af[4];
                ssd::load_a_trans(af, Bs, LDN, (warp * MT + mt) * 16, k0);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    if (nt * 8 >= pw) continue;
                    uint32_t bf[2];
                    ssd::load_b(bf, Wt, LDL, nt * 8, k0);
                    ssd::mma(acc[mt][nt], af, bf);
                }
            }
        }
        __syncthreads();  // every shared operand is rewritten by the next chunk
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int sn = (warp * MT + mt) * 16 + g + (r >= 2 ? 8 : 0);
                const int pi = nt * 8 + 2 * q + (r & 1);
                if (sn < ns && pi < pw)
                    state[((int64_t)hh * p + p0 + pi) * ns + sn] = nemo::from_f32<T>(acc[mt][nt][r]);
            }
}

#define SSD_SCAN_MMA(NAME, T, NS, L)                                                               \
    extern "C" __global__ void __launch_bounds__(SSD_WARPS * NEMO_WARP, 2)                         \
        NAME(const float* xbc, const float* dt_raw, int64_t dt_stride, const float* dt_bias,       \
             const float* A, const float* D, T* state, float* y, int64_t n, int h, int p, int ns,  \
             int ng, int pb, float dt_min) {                                                       \
        ssd_scan_mma<T, NS, L>(xbc, dt_raw, dt_stride, dt_bias, A, D, state, y, n, h, p, ns, ng,   \
                               pb, dt_min);                                                        \
    }
SSD_SCAN_MMA(ssd_scan_mma_ns128_f32, float, 128, 32)
SSD_SCAN_MMA(ssd_scan_mma_ns128_f16, __half, 128, 32)
SSD_SCAN_MMA(ssd_scan_mma_ns128_bf16, __nv_bfloat16, 128, 32)
SSD_SCAN_MMA(ssd_scan_mma_ns256_f32, float, 256, 16)
SSD_SCAN_MMA(ssd_scan_mma_ns256_f16, __half, 256, 16)
SSD_SCAN_MMA(ssd_scan_mma_ns256_bf16, __nv_bfloat16, 256, 16)
