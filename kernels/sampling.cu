// Logits processing and sampling on the device; only the chosen token id goes back to the
// host. Oracle: engine::sampler::Sampler::sample (same order of operations: banned tokens,
// repetition penalty, presence penalty, greedy or temperature → top-k → softmax → top-p →
// min-p → draw). The uniform number `u` in [0, 1) comes from the host's seeded generator,
// with the knobs, through a small device struct (SampleParams) that the host writes before
// each launch or graph replay: nothing of a step is baked into a captured graph. The
// struct also carries up to SAMPLE_MAX_BANS banned ids (sample_ban_args_f32), so a
// replayed step can mask tokens (e.g. the end of thinking before a minimum) with no
// upload of its own.
//
// The kept set is the CPU's: candidates are ordered by score, then by lower id, so at a
// top-k / top-p boundary only the lowest ids among the tokens tied with the boundary value
// are kept (top-k = 1 and a tiny top-p are exactly greedy, ties included); a greedy pick or
// a draw with nothing finite left takes the argmax over non-NaN, non-(-inf) logits, else the
// lowest id not in the args' bans. One difference, by design: a draw walks the kept tokens
// in id order (the CPU walks them in its candidate order; both sample the same distribution).
#include "common.cuh"

// sample_ban_f32: logits[banned[i]] = -inf. grid (ceil(n / 256)), block 256.
extern "C" __global__ void sample_ban_f32(float* __restrict__ logits, const uint32_t* __restrict__ banned,
                                          int n, int vocab) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && banned[i] < (uint32_t)vocab) logits[banned[i]] = -INFINITY;
}

// sample_penalties_f32: for each DISTINCT token of the history (the launcher dedups):
// a positive logit is divided by `rep`, a negative one multiplied (rep = 1: off); then
// `presence` is subtracted (0: off). grid (ceil(n / 256)), block 256, one token per thread.
extern "C" __global__ void sample_penalties_f32(float* __restrict__ logits, const uint32_t* __restrict__ tokens,
                                                int n, int vocab, float rep, float presence) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || tokens[i] >= (uint32_t)vocab) return;
    float l = logits[tokens[i]];
    if (rep != 1.f && rep > 0.f) l = l > 0.f ? l / rep : l * rep;
    if (presence != 0.f) l -= presence;
    logits[tokens[i]] = l;
}

// Order-preserving map of a float to an unsigned key (larger float → larger key).
__device__ __forceinline__ uint32_t okey(float f) {
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#define SAMPLE_THREADS 1024

#define SAMPLE_MAX_BANS 16

// The draw's knobs, as `sampling::DrawArgs` lays them out (#[repr(C)], 4-byte fields).
struct SampleParams {
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float u;
    int n_banned;
    uint32_t banned[SAMPLE_MAX_BANS];
};
static_assert(sizeof(SampleParams) == 88, "SampleParams must match sampling::DrawArgs");

// sample_ban_args_f32: logits[params->banned[i]] = -inf for i < params->n_banned (ids
// >= vocab ignored). grid (1), block 32. A no-op with n_banned = 0, so a captured step
// always launches it.
extern "C" __global__ void sample_ban_args_f32(float* __restrict__ logits, int vocab,
                                               const SampleParams* __restrict__ params) {
    const int i = threadIdx.x;
    const int n = min(params->n_banned, SAMPLE_MAX_BANS);
    if (i < n && params->banned[i] < (uint32_t)vocab) logits[params->banned[i]] = -INFINITY;
}

// Whether token `i` with score key `k` is still a candidate: above the floor key `fk`, or
// at it with an id below `cut` (the CPU's candidate order puts lower ids first among equal
// scores, so a cut-off keeps the lowest of the tied ids). (fk, cut) = (0, vocab): all.
__device__ __forceinline__ bool kept(uint32_t k, int i, uint32_t fk, int cut) {
    return k > fk || (k == fk && i < cut);
}

// The float an `okey` came from.
__device__ __forceinline__ float key_float(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Radix select over the keys of the candidates (finite s_i, kept under (fk, cut)): returns
// the largest key τ such that Σ_{key ≥ τ} weight ≥ need, where weight is 1 (by_mass =
// false) or exp(s_i − M) (by_mass = true), and sets *left = need − Σ_{key > τ} weight (the
// part the ties at τ must cover) and *tied = Σ_{key = τ} weight. If every candidate of the prefix reached falls short
// (rounding), returns that prefix (low bits 0) with *left = −1: keep every candidate with a
// key ≥ it. Only non-empty buckets are chosen, so need ≤ 0 gives the best key. Four passes
// of 8 bits; called by every thread of the block.
__device__ uint32_t radix_select(const float* __restrict__ logits, int vocab, float inv_t, float M,
                                 uint32_t fk, int cut, bool by_mass, float need, float* hist,
                                 uint32_t* shared_word, float* left, float* tied) {
    uint32_t prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0.f;
        __syncthreads();
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float l = logits[i];
            if (!isfinite(l)) continue;
            const float s = l * inv_t;
            const uint32_t k = okey(s);
            if (!kept(k, i, fk, cut) || (k & mask) != prefix) continue;
            atomicAdd(&hist[(k >> shift) & 255u], by_mass ? expf(s - M) : 1.f);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float cum = 0.f;
            int chosen = -1;
            for (int b = 255; b >= 0; --b) {
                if (hist[b] > 0.f && cum + hist[b] >= need) {
                    chosen = b;
                    break;
                }
                cum += hist[b];
            }
            if (chosen < 0) {
                // Short of `need` inside this prefix: keep everything in it.
                shared_word[0] = 0xffffffffu;
            } else {
                shared_word[0] = (uint32_t)chosen;
                shared_word[1] = __float_as_uint(need - cum);
                shared_word[2] = __float_as_uint(hist[chosen]);
            }
        }
        __syncthreads();
        const uint32_t chosen = shared_word[0];
        if (chosen == 0xffffffffu) {
            __syncthreads();
            *left = -1.f;
            return prefix;
        }
        need = __uint_as_float(shared_word[1]);
        *tied = __uint_as_float(shared_word[2]);
        prefix |= chosen << shift;
        mask |= 255u << shift;
        __syncthreads();
    }
    *left = need;
    return prefix;
}

// The new cut when only the `t` lowest ids among the candidates (under fk, cut) whose key
// is τ are kept: the id after the t-th of them, or, when there are no more than t, every
// one of them (`cut` if τ = fk, else `vocab`). Thread tid counts the ties in its contiguous
// ids [tid·per, (tid+1)·per), thread 0 scans, the thread holding the t-th finds it. Called
// by every thread of the block.
__device__ int tie_cut(const float* __restrict__ logits, int vocab, float inv_t, uint32_t fk, int cut,
                       uint32_t tau, uint32_t t, uint32_t* counts, uint32_t* shared_word) {
    const int tid = threadIdx.x, nt = blockDim.x;
    const int per = (vocab + nt - 1) / nt;
    const int lo = min(vocab, tid * per), hi = min(vocab, lo + per);
    uint32_t n = 0;
    for (int i = lo; i < hi; ++i) {
        const float l = logits[i];
        if (!isfinite(l)) continue;
        const uint32_t k = okey(l * inv_t);
        if (k == tau && kept(k, i, fk, cut)) ++n;
    }
    counts[tid] = n;
    __syncthreads();
    if (tid == 0) {
        uint32_t c = 0;
        for (int j = 0; j < nt; ++j) {
            const uint32_t v = counts[j];
            counts[j] = c;  // exclusive prefix
            c += v;
        }
        shared_word[0] = c;
        shared_word[1] = (uint32_t)(tau > fk ? vocab : cut);
    }
    __syncthreads();
    uint32_t c = counts[tid];
    if (shared_word[0] > t && c < t && c + n >= t) {
        for (int i = lo; i < hi; ++i) {
            const float l = logits[i];
            if (!isfinite(l)) continue;
            const uint32_t k = okey(l * inv_t);
            if (k == tau && kept(k, i, fk, cut) && ++c == t) {
                shared_word[1] = (uint32_t)(i + 1);
                break;
            }
        }
    }
    __syncthreads();
    const int r = (int)shared_word[1];
    __syncthreads();
    return r;
}

// Greedy: the argmax over non-NaN, non-(-inf) logits, ties → lowest id; with none, the
// lowest id not in params' bans (the CPU's rule). Called by every thread of the block.
__device__ void greedy_pick(const float* __restrict__ logits, int vocab,
                            const SampleParams* __restrict__ params, uint32_t* __restrict__ out,
                            unsigned long long* best) {
    const int tid = threadIdx.x, nt = blockDim.x;
    // Pack (key, ~id) so that atomicMax picks the largest value, then the lowest id.
    if (tid == 0) *best = 0ull;
    __syncthreads();
    unsigned long long mine = 0ull;
    for (int i = tid; i < vocab; i += nt) {
        const float l = logits[i];
        if (isnan(l) || l == -INFINITY) continue;
        const unsigned long long k = ((unsigned long long)okey(l) << 32) | (0xffffffffu - (uint32_t)i);
        if (k > mine) mine = k;
    }
    atomicMax(best, mine);
    __syncthreads();
    if (tid == 0) {
        if (*best != 0ull) {
            out[0] = 0xffffffffu - (uint32_t)(*best & 0xffffffffull);
        } else {
            const int n = min(params->n_banned, SAMPLE_MAX_BANS);
            uint32_t id = 0;
            for (bool hit = true; hit && id < (uint32_t)vocab;) {
                hit = false;
                for (int j = 0; j < n; ++j) hit |= params->banned[j] == id;
                if (hit) ++id;
            }
            out[0] = id < (uint32_t)vocab ? id : 0u;
        }
    }
}

// sample_f32: one token from `logits` [vocab] (after ban/penalties), knobs read from
// `params` on the device. grid (1), block 1024. temperature ≤ 0 (or NaN) → argmax over
// non-NaN, non-(-inf) logits, ties → lowest id (0 if there is none). Otherwise s = logit · (1/T) over finite logits;
// top_k > 0 keeps the k best; softmax; top_p < 1 keeps the smallest best-first set with
// mass ≥ top_p; min_p > 0 drops p < min_p · p_max; then draws with u ∈ [0, 1).
// Writes out[0] = token id.
extern "C" __global__ void sample_f32(const float* __restrict__ logits, int vocab,
                                      const SampleParams* __restrict__ params,
                                      uint32_t* __restrict__ out) {
    const float temperature = params->temperature, top_p = params->top_p, min_p = params->min_p;
    const float u = params->u;
    const int top_k = params->top_k;
    __shared__ float scratch[32];
    __shared__ float hist[256];
    __shared__ uint32_t word[3];
    __shared__ float part[SAMPLE_THREADS];
    __shared__ uint32_t counts[SAMPLE_THREADS];
    __shared__ unsigned long long best;
    const int tid = threadIdx.x, nt = blockDim.x;
    if (!(temperature > 0.f)) {
        greedy_pick(logits, vocab, params, out, &best);
        return;
    }
    const float inv_t = 1.f / temperature;
    float mx = -INFINITY, cnt = 0.f;
    for (int i = tid; i < vocab; i += nt) {
        const float l = logits[i];
        if (isfinite(l)) {
            mx = fmaxf(mx, l * inv_t);
            cnt += 1.f;
        }
    }
    const float M = nemo::block_max(mx, scratch);
    const float count = nemo::block_sum(cnt, scratch);
    if (count == 0.f) {  // nothing finite: greedy, as on the CPU
        greedy_pick(logits, vocab, params, out, &best);
        return;
    }
    // The candidates: key > fk, or key = fk and id < cut (see `kept`).
    uint32_t fk = 0;
    int cut = vocab;
    if (top_k > 0 && (float)top_k < count) {
        float left, tied;
        const uint32_t tau =
            radix_select(logits, vocab, inv_t, M, fk, cut, false, (float)top_k, hist, word, &left, &tied);
        if (left < 0.f || tied <= left) {
            // Every candidate at τ is kept (with real logits, the usual case: no pass more).
            if (tau > fk) {
                fk = tau;
                cut = vocab;
            }
        } else {
            // left = how many of the `tied` ties at τ the k best still need (≥ 1).
            cut = tie_cut(logits, vocab, inv_t, fk, cut, tau, (uint32_t)left, counts, word);
            fk = tau;
        }
    }
    // Z over the survivors of top-k.
    float z = 0.f;
    for (int i = tid; i < vocab; i += nt) {
        const float l = logits[i];
        if (!isfinite(l)) continue;
        const float s = l * inv_t;
        if (kept(okey(s), i, fk, cut)) z += expf(s - M);
    }
    const float Z = nemo::block_sum(z, scratch);
    if (top_p < 1.f) {
        float left, tied;
        const uint32_t tau =
            radix_select(logits, vocab, inv_t, M, fk, cut, true, fmaxf(top_p, 0.f) * Z, hist, word, &left, &tied);
        // The ties at τ weigh w each (`tied` = their number × w): one alone is kept.
        const float w = expf(key_float(tau) - M);
        if (left < 0.f || tied <= 1.5f * w) {
            if (tau > fk) {
                fk = tau;
                cut = vocab;
            }
        } else {
            // The CPU's prefix takes ⌈left / w⌉ of them (≥ 1).
            const float q = w > 0.f ? ceilf(left / w) : 4.0e9f;
            const uint32_t t = q >= 4.0e9f ? 0xffffffffu : (q < 1.f ? 1u : (uint32_t)q);
            cut = tie_cut(logits, vocab, inv_t, fk, cut, tau, t, counts, word);
            fk = tau;
        }
    }
    // min-p: p ≥ min_p · p_max  ⇔  exp(s − M) ≥ min_p (p_max = 1/Z).
    const float minw = min_p > 0.f ? min_p : 0.f;
    // Draw: thread tid owns the contiguous ids [tid·per, (tid+1)·per).
    const int per = (vocab + nt - 1) / nt;
    const int lo = min(vocab, tid * per), hi = min(vocab, lo + per);
    float local = 0.f;
    for (int i = lo; i < hi; ++i) {
        const float l = logits[i];
        if (!isfinite(l)) continue;
        const float s = l * inv_t;
        const float w = expf(s - M);
        if (kept(okey(s), i, fk, cut) && w >= minw) local += w;
    }
    part[tid] = local;
    __syncthreads();
    if (tid == 0) {
        float c = 0.f;
        for (int i = 0; i < nt; ++i) {
            const float v = part[i];
            part[i] = c;  // exclusive prefix
            c += v;
        }
        scratch[0] = c;  // total kept mass
        word[0] = 0xffffffffu;
        word[1] = 0u;  // the last kept id, if the draw falls past the end
    }
    __syncthreads();
    const float r = u * scratch[0];
    float c = part[tid];
    int last = -1;
    for (int i = lo; i < hi; ++i) {
        const float l = logits[i];
        if (!isfinite(l)) continue;
        const float s = l * inv_t;
        const float w = expf(s - M);
        if (!kept(okey(s), i, fk, cut) || w < minw) continue;
        last = i;
        if (r < c + w) {
            atomicMin(&word[0], (uint32_t)i);
            break;
        }
        c += w;
    }
    __syncthreads();  // word[0] is final
    // Rounding left a sliver past the last token: take the last kept one.
    if (word[0] == 0xffffffffu && last >= 0) atomicMax((int*)&word[1], last);
    __syncthreads();
    if (tid == 0) out[0] = word[0] != 0xffffffffu ? word[0] : word[1];
}
