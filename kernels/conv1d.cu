// Depthwise causal conv1d of the Mamba2 mixer, + bias, then silu (oracle:
// backend::cpu::ssm::causal_conv1d). conv_state is [k-1, cd] f32, oldest first.
#include "common.cuh"

// conv1d_prefill_f32: for t < n, c < cd:
//   out[t, c] = silu(b[c] + Σ_j w[c, j] · in(t - (k-1) + j, c))
// where in(s, c) = conv_state[k-1+s, c] for s < 0, else x[s·x_stride + c].
// grid (ceil(cd / 256), n), block 256: one (token, channel) per thread.
// Reads x, conv_state (not written here), w [cd, k], b [cd]; writes out [n, cd].
extern "C" __global__ void conv1d_prefill_f32(const float* __restrict__ x, int64_t x_stride,
                                              const float* __restrict__ conv_state,
                                              const float* __restrict__ w,
                                              const float* __restrict__ b, float* __restrict__ out,
                                              int n, int cd, int k) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (c >= cd || t >= n) return;
    const int past = k - 1;
    float acc = b[c];
    for (int j = 0; j < k; ++j) {
        const int s = t - past + j;
        const float v = s < 0 ? conv_state[(int64_t)(past + s) * cd + c] : x[(int64_t)s * x_stride + c];
        acc += w[(int64_t)c * k + j] * v;
    }
    out[(int64_t)t * cd + c] = nemo::silu(acc);
}

// conv1d_state_f32: after conv1d_prefill_f32 on the same stream, the new window is the
// last k-1 inputs of [conv_state ++ x]: conv_state[i, c] = in(n - (k-1) + i, c).
// grid (ceil(cd / 256)), block 256: one channel per thread, positions in ascending order,
// so the in-place shift reads index n+i (> i) before anything overwrites it.
extern "C" __global__ void conv1d_state_f32(const float* __restrict__ x, int64_t x_stride,
                                            float* __restrict__ conv_state, int n, int cd, int k) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    const int past = k - 1;
    for (int i = 0; i < past; ++i) {
        const int s = n - past + i;
        const float v = s < 0 ? conv_state[(int64_t)(past + s) * cd + c] : x[(int64_t)s * x_stride + c];
        conv_state[(int64_t)i * cd + c] = v;
    }
}

#define NEMO_CONV_MAX_K 8

// conv1d_update_f32: one decode token, conv_state updated in place.
//   out[c] = silu(b[c] + Σ_{j<k-1} w[c, j]·state[j, c] + w[c, k-1]·x[c]); state shifts by one.
// grid (ceil(cd / 256)), block 256: one channel per thread. k ≤ NEMO_CONV_MAX_K.
// Reads x [cd], conv_state, w, b; writes out [cd] and conv_state.
extern "C" __global__ void conv1d_update_f32(const float* __restrict__ x, float* __restrict__ conv_state,
                                             const float* __restrict__ w, const float* __restrict__ b,
                                             float* __restrict__ out, int cd, int k) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cd || k > NEMO_CONV_MAX_K) return;
    const int past = k - 1;
    float win[NEMO_CONV_MAX_K];
    for (int j = 0; j < past; ++j) win[j] = conv_state[(int64_t)j * cd + c];
    win[past] = x[c];
    float acc = b[c];
    for (int j = 0; j < k; ++j) acc += w[(int64_t)c * k + j] * win[j];
    out[c] = nemo::silu(acc);
    for (int j = 0; j < past; ++j) conv_state[(int64_t)j * cd + c] = win[j + 1];
}
