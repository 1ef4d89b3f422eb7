// Mamba2 selective scan: the one-step state update for decode and the chunked (SSD) scan
// for prompts. Oracle: model::mamba2::Mamba2::{step, forward_chunked}.
//
// Layouts (as the CPU): xbc [n, cd] after conv+silu, cd = di + 2·ng·ns, holding
// x [di] | B [ng, ns] | C [ng, ns]; dt_raw [n, dt_stride] before softplus (a slice of the
// in_proj output, one value per head); ssm_state [h, p, ns] in T (f32/f16/bf16);
// y [n, di] f32. Head hh reads x[hh·p .. hh·p+p] and group g = hh / (h / ng).
// Arithmetic is f32; a half-precision state is rounded once per step / per prompt.
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

// ssd_chunk_cb_f32: the chunk-local C·Bᵀ products shared by every head of a group:
//   cb[chunk, g, li, si] = C[c0+li, g] · B[c0+si, g] for si ≤ li < l (0 elsewhere),
// c0 = chunk·cs, l = min(cs, n - c0).
// grid (cs, ng, nchunks), block 128: block = one (chunk, g, li) row, threads over si.
// Reads xbc; writes cb [nchunks, ng, cs, cs].
extern "C" __global__ void ssd_chunk_cb_f32(const float* __restrict__ xbc, float* __restrict__ cb, int n,
                                            int cd, int di, int ns, int ng, int cs) {
    const int li = blockIdx.x, g = blockIdx.y, chunk = blockIdx.z;
    const int64_t c0 = (int64_t)chunk * cs;
    float* out = cb + (((int64_t)chunk * ng + g) * cs + li) * cs;
    const bool row_ok = c0 + li < n;
    const float* C = xbc + (c0 + li) * cd + di + (int64_t)ng * ns + (int64_t)g * ns;
    for (int si = threadIdx.x; si < cs; si += blockDim.x) {
        float acc = 0.f;
        if (row_ok && si <= li) {
            const float* B = xbc + (c0 + si) * cd + di + (int64_t)g * ns;
            for (int s = 0; s < ns; ++s) acc += C[s] * B[s];
        }
        out[si] = acc;
    }
}

#define SSD_PT 8       // rows (head_dim) per block
#define SSD_MAX_NS 256 // d_state limit (supports() checks)
#define SSD_MAX_CS 256 // chunk_size limit

// ssd_chunk_scan_<T>: n prompt tokens of one head, chunk by chunk (chunk_size cs):
//   dt_t = max(softplus(dt_raw[t, hh] + dt_bias[hh]), dt_min); a_t = A[hh]·dt_t;
//   cum_i = Σ_{j≤i} a_j within the chunk
//   y[t=c0+li, pi] = Σ_{si≤li} cb[li, si]·exp(Σ_{i=si+1..li} a_i)·dt_si·x[si, pi]
//                   + exp(cum_li)·(st[pi, :]·C_li) + D[hh]·x[li, pi]
//   st[pi, s] ← exp(cum_last)·st[pi, s] + Σ_si exp(Σ_{i=si+1..last} a_i)·dt_si·x[si, pi]·B_si[s]
// grid (h, ceil(p / SSD_PT)), block 256. The block keeps its SSD_PT state rows in shared
// memory as f32 for the whole prompt; chunks run in order inside the block.
// Reads xbc, dt_raw, dt_bias, A, D, cb (from ssd_chunk_cb_f32); reads and writes ssm_state;
// writes y [n, di].
template <typename T>
__device__ void ssd_chunk_scan(const float* __restrict__ xbc, const float* __restrict__ dt_raw,
                               int64_t dt_stride, const float* __restrict__ dt_bias,
                               const float* __restrict__ A, const float* __restrict__ D,
                               const float* __restrict__ cb, T* __restrict__ state,
                               float* __restrict__ y, int n, int h, int p, int ns, int ng, int cs,
                               float dt_min) {
    __shared__ float st[SSD_PT * SSD_MAX_NS];
    __shared__ float dts[SSD_MAX_CS];
    __shared__ float cum[SSD_MAX_CS];
    const int hh = blockIdx.x, p0 = blockIdx.y * SSD_PT;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int di = h * p, cd = di + 2 * ng * ns;
    const int g = hh / (h / ng);
    const float a = A[hh], dskip = D[hh], bias = dt_bias[hh];
    for (int i = tid; i < SSD_PT * ns; i += nt) {
        const int pi = p0 + i / ns, s = i % ns;
        st[i] = pi < p ? nemo::to_f32(state[((int64_t)hh * p + pi) * ns + s]) : 0.f;
    }
    const int nchunks = (n + cs - 1) / cs;
    for (int chunk = 0; chunk < nchunks; ++chunk) {
        const int64_t c0 = (int64_t)chunk * cs;
        const int l = min(cs, (int)(n - c0));
        for (int i = tid; i < l; i += nt)
            dts[i] = fmaxf(nemo::softplus(dt_raw[(c0 + i) * dt_stride + hh] + bias), dt_min);
        __syncthreads();
        if (tid == 0) {
            float s = 0.f;
            for (int i = 0; i < l; ++i) {
                s += a * dts[i];
                cum[i] = s;
            }
        }
        __syncthreads();
        const float* cbc = cb + ((int64_t)chunk * ng + g) * cs * cs;
        for (int idx = tid; idx < l * SSD_PT; idx += nt) {
            const int li = idx / SSD_PT, r = idx % SSD_PT, pi = p0 + r;
            if (pi >= p) continue;
            const float* xcol = xbc + c0 * cd + hh * p + pi;  // x[c0+si, pi] = xcol[si·cd]
            // seg = Σ_{i=si+1..li} a·dt_i, summed from li downwards as the CPU does: the
            // difference cum_li − cum_si would cancel catastrophically once |cum| is large.
            float acc = 0.f, seg = 0.f;
            for (int si = li; si >= 0; --si) {
                if (si < li) seg += a * dts[si + 1];
                acc += cbc[(int64_t)li * cs + si] * expf(seg) * dts[si] * xcol[(int64_t)si * cd];
            }
            const float* C = xbc + (c0 + li) * cd + di + (int64_t)ng * ns + (int64_t)g * ns;
            float dot = 0.f;
            for (int s = 0; s < ns; ++s) dot += st[r * ns + s] * C[s];
            acc += expf(cum[li]) * dot + dskip * xcol[(int64_t)li * cd];
            y[(c0 + li) * di + hh * p + pi] = acc;
        }
        __syncthreads();  // every read of st for this chunk is done
        const float e = expf(cum[l - 1]);
        for (int idx = tid; idx < SSD_PT * ns; idx += nt) {
            const int r = idx / ns, s = idx % ns, pi = p0 + r;
            if (pi >= p) continue;
            const float* xcol = xbc + c0 * cd + hh * p + pi;
            const float* Bcol = xbc + c0 * cd + di + (int64_t)g * ns + s;  // B[c0+si][s]
            float v = e * st[idx], seg = 0.f;  // seg = Σ_{i=si+1..l-1} a·dt_i
            for (int si = l - 1; si >= 0; --si) {
                if (si + 1 < l) seg += a * dts[si + 1];
                v += expf(seg) * dts[si] * xcol[(int64_t)si * cd] * Bcol[(int64_t)si * cd];
            }
            st[idx] = v;
        }
        __syncthreads();  // dts/cum/st are rewritten by the next chunk
    }
    for (int i = tid; i < SSD_PT * ns; i += nt) {
        const int pi = p0 + i / ns, s = i % ns;
        if (pi < p) state[((int64_t)hh * p + pi) * ns + s] = nemo::from_f32<T>(st[i]);
    }
}

#define SSD_SCAN(NAME, T)                                                                          \
    extern "C" __global__ void NAME(const float* xbc, const float* dt_raw, int64_t dt_stride,      \
                                    const float* dt_bias, const float* A, const float* D,          \
                                    const float* cb, T* state, float* y, int n, int h, int p,      \
                                    int ns, int ng, int cs, float dt_min) {                        \
        ssd_chunk_scan<T>(xbc, dt_raw, dt_stride, dt_bias, A, D, cb, state, y, n, h, p, ns, ng,    \
                          cs, dt_min);                                                             \
    }
SSD_SCAN(ssd_chunk_scan_f32, float)
SSD_SCAN(ssd_chunk_scan_f16, __half)
SSD_SCAN(ssd_chunk_scan_bf16, __nv_bfloat16)
