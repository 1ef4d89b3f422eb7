// Embedding gather (oracle: model::lm_head::embed).
#include "common.cuh"

// embedding_gather_<dtype>: out[t, :] = f32(table[ids[t], :]).
// grid (n tokens), block 256: thread i copies columns i, i+256, ... of one row.
// Reads table [vocab, hidden] and ids [n] (on the device: a decode step's id may come from
// the device sampler); writes out [n, hidden] f32. An id >= vocab (host ids are checked
// before upload) gives a row of NaN rather than a wild read.
template <typename T>
__device__ void embedding_gather(const T* __restrict__ table, const uint32_t* __restrict__ ids,
                                 float* __restrict__ out, int hidden, int vocab) {
    const int t = blockIdx.x;
    const uint32_t id = ids[t];
    float* o = out + (int64_t)t * hidden;
    if (id >= (uint32_t)vocab) {
        for (int c = threadIdx.x; c < hidden; c += blockDim.x) o[c] = __int_as_float(0x7fc00000);
        return;
    }
    const T* row = table + (int64_t)id * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) o[c] = nemo::to_f32(row[c]);
}

extern "C" __global__ void embedding_gather_bf16(const __nv_bfloat16* table, const uint32_t* ids,
                                                 float* out, int hidden, int vocab) {
    embedding_gather(table, ids, out, hidden, vocab);
}
extern "C" __global__ void embedding_gather_f32(const float* table, const uint32_t* ids, float* out,
                                                int hidden, int vocab) {
    embedding_gather(table, ids, out, hidden, vocab);
}
