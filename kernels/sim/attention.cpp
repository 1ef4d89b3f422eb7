// Runs kernels/attention.cu on the CPU: the KV append (kv_append_*, position read from
// device memory, FP8 with per-row scales), the split decode (attn_decode_* with a fixed split
// count, then attn_decode_combine_f32) and the fallback prefill (attn_prefill_*), against
// references written here:
//  - append: every stored element equals the cache dtype's round-to-nearest-even of the
//    input (FP8: of input / scale, scale = amax / max finite, the code found by searching all
//    256 codes for the nearest value, ties to the even code, saturating), rows past the
//    capacity untouched, nothing else written;
//  - decode / prefill: attention in double over the cache's decoded values. The kernels are
//    f32 throughout: the bound is e^{2e}(1 + γ) − 1 of Σ p·|v| with e the f32 error of a
//    score ((hd + 8)·u·Σ|q·k|·scale) and γ = (2·len + hd + 32)·u for the sums, u = 2^-24.
// A position outside the window, a wrong split boundary, a missed or doubled split, the
// wrong kv head: O(1) of the output scale.
#include "../attention.cu"

#include "check.h"

#include <algorithm>
#include <string>

enum Kind { F32, F16, BF16, E4M3, E5M2 };
static const char* kind_name[] = {"f32", "f16", "bf16", "fp8e4m3", "fp8e5m2"};

// The value of an FP8 code, from the OCP 8-bit formats' definitions (E4M3FN: bias 7, no
// infinities, S.1111.111 NaN; E5M2: bias 15, IEEE-like).
static double fp8_value(uint8_t b, Kind kind) {
    const int eb = kind == E4M3 ? 4 : 5, mb = 7 - eb, bias = kind == E4M3 ? 7 : 15;
    const int e = (b >> mb) & ((1 << eb) - 1), m = b & ((1 << mb) - 1);
    if (kind == E4M3 && e == 15 && m == 7) return NAN;
    if (kind == E5M2 && e == 31) return m ? NAN : (b >> 7 ? -INFINITY : INFINITY);
    const double v = e == 0 ? std::ldexp((double)m, 1 - bias - mb) : std::ldexp(1.0 + (double)m / (1 << mb), e - bias);
    return b >> 7 ? -v : v;
}
static double fp8_max(Kind kind) { return kind == E4M3 ? 448.0 : 57344.0; }
// Nearest finite code, ties to the one with an even mantissa; beyond max: ±max.
static uint8_t fp8_nearest(float x, Kind kind) {
    int best = -1;
    double bd = 0;
    for (int b = 0; b < 256; ++b) {
        const double v = fp8_value((uint8_t)b, kind);
        if (!std::isfinite(v) || (v == 0 && std::signbit(v) != std::signbit(x))) continue;
        const double d = std::fabs(v - (double)x);
        if (best < 0 || d < bd || (d == bd && (b & 1) == 0)) {
            best = b;
            bd = d;
        }
    }
    const double mx = fp8_max(kind);
    if (std::fabs(x) > mx) {  // nearest is ±max anyway, but say it explicitly: satfinite
        for (int b = 0; b < 256; ++b)
            if (fp8_value((uint8_t)b, kind) == (x > 0 ? mx : -mx)) return (uint8_t)b;
    }
    return (uint8_t)best;
}

template <typename T> struct Cache {
    Kind kind;
    int cap, kvh, hd;
    std::vector<T> k, v;
    std::vector<float> ks, vs;
    Cache(Kind kind_, int cap_, int kvh_, int hd_)
        : kind(kind_), cap(cap_), kvh(kvh_), hd(hd_), k((size_t)cap_ * kvh_ * hd_), v(k.size()),
          ks((size_t)cap_ * kvh_, 1.f), vs(ks.size(), 1.f) {}
    double at(bool value, size_t i) const {
        const T c = (value ? v : k)[i];
        if constexpr (std::is_same_v<T, float>) return c;
        else if constexpr (std::is_same_v<T, __half>) return __half2float(c);
        else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(c);
        else return fp8_value(c, kind) * (double)(value ? vs : ks)[i / hd];
    }
    // Random contents for positions [0, n): what earlier appends left.
    void fill(int n) {
        for (size_t i = 0; i < (size_t)n * kvh * hd; ++i)
            for (int w = 0; w < 2; ++w) {
                T& c = (w ? v : k)[i];
                const float x = check::sym(2.f);
                if constexpr (std::is_same_v<T, float>) c = x;
                else if constexpr (std::is_same_v<T, __half>) c = __float2half_rn(x);
                else if constexpr (std::is_same_v<T, __nv_bfloat16>) c = __float2bfloat16_rn(x);
                else do c = (uint8_t)(check::rng() & 0xff); while (!std::isfinite(fp8_value(c, kind)));
            }
        if constexpr (std::is_same_v<T, uint8_t>)
            for (size_t r = 0; r < (size_t)n * kvh; ++r) {
                ks[r] = check::uniform(0.001f, 0.01f);
                vs[r] = check::uniform(0.001f, 0.01f);
            }
    }
};

template <typename T> static void append(Cache<T>& c, const std::vector<float>& kn, const std::vector<float>& vn,
                                         int n, int pos) {
    std::vector<int> pos_dev{pos};
    launch({(unsigned)(n * c.kvh), 2, 1}, {32, 1, 1}, 0, [&] {
        auto *K = c.k.data(), *V = c.v.data();
        float *ks = c.ks.data(), *vs = c.vs.data();
        const int *p = pos_dev.data(), cap = c.cap, kvh = c.kvh, hd = c.hd;
        switch (c.kind) {
        case F32: if constexpr (std::is_same_v<T, float>) kv_append_f32(kn.data(), vn.data(), K, V, ks, vs, p, cap, kvh, hd); break;
        case F16: if constexpr (std::is_same_v<T, __half>) kv_append_f16(kn.data(), vn.data(), K, V, ks, vs, p, cap, kvh, hd); break;
        case BF16: if constexpr (std::is_same_v<T, __nv_bfloat16>) kv_append_bf16(kn.data(), vn.data(), K, V, ks, vs, p, cap, kvh, hd); break;
        case E4M3: if constexpr (std::is_same_v<T, uint8_t>) kv_append_fp8e4m3(kn.data(), vn.data(), K, V, ks, vs, p, cap, kvh, hd); break;
        case E5M2: if constexpr (std::is_same_v<T, uint8_t>) kv_append_fp8e5m2(kn.data(), vn.data(), K, V, ks, vs, p, cap, kvh, hd); break;
        }
    });
}

// Appends n rows at pos (some past the capacity when pos + n > cap) and checks every byte
// of the cache against the expected contents.
template <typename T> static void check_append(Kind kind, int cap, int kvh, int hd, int pos, int n) {
    Cache<T> c(kind, cap, kvh, hd);
    c.fill(cap);
    const Cache<T> before = c;
    std::vector<float> kn((size_t)n * kvh * hd), vn(kn.size());
    for (auto& x : kn) x = check::sym(3.f);
    for (auto& x : vn) x = check::sym(3.f);
    kn[5] = 0.f;
    if (hd >= 8) for (int d = 0; d < hd; ++d) vn[d] = 0.f;  // an all-zero row: scale 1
    append(c, kn, vn, n, pos);
    long bad = 0;
    std::string first;
    auto mismatch = [&](const std::string& what) {
        if (bad++ == 0) first = what;
    };
    for (int p = 0; p < cap; ++p)
        for (int kh = 0; kh < kvh; ++kh)
            for (int w = 0; w < 2; ++w) {
                const size_t row = (size_t)p * kvh + kh;
                const bool fresh = p >= pos && p < pos + n;
                const std::vector<float>& src = w ? vn : kn;
                const auto& got = w ? c.v : c.k;
                const auto& old = w ? before.v : before.k;
                float scale = 1.f;
                if constexpr (std::is_same_v<T, uint8_t>) {
                    const float gs = (w ? c.vs : c.ks)[row], os = (w ? before.vs : before.ks)[row];
                    if (fresh) {
                        float amax = 0.f;
                        for (int d = 0; d < hd; ++d) amax = std::max(amax, std::fabs(src[((size_t)(p - pos) * kvh + kh) * hd + d]));
                        scale = amax > 0.f ? amax / (float)fp8_max(kind) : 1.f;
                    }
                    if (gs != (fresh ? scale : os)) mismatch("scale of row " + std::to_string(row) + (w ? " v" : " k"));
                }
                for (int d = 0; d < hd; ++d) {
                    const size_t i = row * hd + d;
                    T want = old[i];
                    if (fresh) {
                        const float x = src[((size_t)(p - pos) * kvh + kh) * hd + d];
                        if constexpr (std::is_same_v<T, float>) want = x;
                        else if constexpr (std::is_same_v<T, __half>) want = __float2half_rn(x);
                        else if constexpr (std::is_same_v<T, __nv_bfloat16>) want = __float2bfloat16_rn(x);
                        else want = fp8_nearest(x / scale, kind);
                    }
                    if (std::memcmp(&want, &got[i], sizeof(T)) != 0)
                        mismatch("position " + std::to_string(p) + " kv head " + std::to_string(kh) + " d " +
                                 std::to_string(d) + (w ? " v" : " k"));
                }
            }
    check::expect(bad == 0, "kv_append_%s capacity %d kv heads %d hd %d at position %d, %d rows (%d past the capacity): %ld wrong elements%s%s",
                  kind_name[kind], cap, kvh, hd, pos, n, std::max(0, pos + n - cap), bad, bad ? ", first at " : "", first.c_str());
}

// Attention in double of query rows against positions [0, vis) of the cache.
template <typename T>
static void attend(const Cache<T>& c, const float* q, int kh, int vis, double scale, std::vector<double>& o,
                   std::vector<double>& oa, double& qk) {
    const int hd = c.hd;
    std::vector<double> s(vis);
    qk = 0;
    for (int t = 0; t < vis; ++t) {
        double dot = 0, da = 0;
        for (int d = 0; d < hd; ++d) {
            const double kv = c.at(false, ((size_t)t * c.kvh + kh) * hd + d);
            dot += q[d] * kv;
            da += std::fabs(q[d] * kv);
        }
        s[t] = dot * scale;
        qk = std::max(qk, da * scale);
    }
    const double mx = *std::max_element(s.begin(), s.end());
    double z = 0;
    for (auto& x : s) z += (x = std::exp(x - mx));
    o.assign(hd, 0);
    oa.assign(hd, 0);
    for (int t = 0; t < vis; ++t)
        for (int d = 0; d < hd; ++d) {
            const double vv = c.at(true, ((size_t)t * c.kvh + kh) * hd + d);
            o[d] += s[t] / z * vv;
            oa[d] += s[t] / z * std::fabs(vv);
        }
}

static double bound(int hd, int vis, double qk) {
    const double u = 1.0 / 16777216;
    const double e = (hd + 8) * u * qk, g = (2.0 * vis + hd + 32) * u;
    return std::exp(2 * e) * (1 + g) - 1;
}

// One decode step: the new token's k/v appended at pos (read from device memory), then the
// split decode over len = pos + 1 positions and the combine.
template <typename T>
static void decode(Kind kind, int nh, int kvh, int hd, int pos, int nsplit, int min_span) {
    const int cap = pos + 5;
    Cache<T> c(kind, cap, kvh, hd);
    c.fill(pos);
    std::vector<float> kn((size_t)kvh * hd), vn(kn.size()), q((size_t)nh * hd);
    for (auto& x : kn) x = check::sym(2.f);
    for (auto& x : vn) x = check::sym(2.f);
    for (auto& x : q) x = check::sym(2.f);
    append(c, kn, vn, 1, pos);
    std::vector<int> pos_dev{pos};
    std::vector<float> ml((size_t)nh * nsplit * 2, NAN), acc((size_t)nh * nsplit * hd, NAN), out((size_t)nh * hd, NAN);
    std::vector<__nv_bfloat16> ob(out.size());
    const float scale = 1.f / std::sqrt((float)hd);
    launch({(unsigned)nh, (unsigned)nsplit, 1}, {128, 1, 1}, 0, [&] {
        const float *ks = c.ks.data(), *vs = c.vs.data();
        const auto *K = c.k.data(), *V = c.v.data();
        const int* p = pos_dev.data();
        switch (kind) {
        case F32: if constexpr (std::is_same_v<T, float>) attn_decode_f32(q.data(), K, V, ks, vs, ml.data(), acc.data(), p, cap, nh, kvh, hd, min_span, scale); break;
        case F16: if constexpr (std::is_same_v<T, __half>) attn_decode_f16(q.data(), K, V, ks, vs, ml.data(), acc.data(), p, cap, nh, kvh, hd, min_span, scale); break;
        case BF16: if constexpr (std::is_same_v<T, __nv_bfloat16>) attn_decode_bf16(q.data(), K, V, ks, vs, ml.data(), acc.data(), p, cap, nh, kvh, hd, min_span, scale); break;
        case E4M3: if constexpr (std::is_same_v<T, uint8_t>) attn_decode_fp8e4m3(q.data(), K, V, ks, vs, ml.data(), acc.data(), p, cap, nh, kvh, hd, min_span, scale); break;
        case E5M2: if constexpr (std::is_same_v<T, uint8_t>) attn_decode_fp8e5m2(q.data(), K, V, ks, vs, ml.data(), acc.data(), p, cap, nh, kvh, hd, min_span, scale); break;
        }
    });
    launch({(unsigned)nh, 1, 1}, {256, 1, 1}, 0,
           [&] { attn_decode_combine_f32(ml.data(), acc.data(), out.data(), ob.data(), nsplit, hd); });
    // The split plan the kernel documents: `used` splits of `span` positions, the rest empty.
    const int len = pos + 1;
    const int used = std::min(nsplit, std::max(1, (len + min_span - 1) / min_span));
    const int span = (len + used - 1) / used;
    int empty = 0, empty_ok = 0;
    for (int h = 0; h < nh; ++h)
        for (int s = 0; s < nsplit; ++s)
            if (s * span >= len) {
                ++empty;
                const size_t at = (size_t)h * nsplit + s;
                bool ok = ml[2 * at] == -INFINITY && ml[2 * at + 1] == 0.f;
                for (int d = 0; d < hd; ++d) ok &= acc[at * hd + d] == 0.f;
                empty_ok += ok;
            }
    double worst = 0;
    bool bf16_ok = true;
    for (int h = 0; h < nh; ++h) {
        std::vector<double> o, oa;
        double qk;
        attend(c, &q[(size_t)h * hd], h / (nh / kvh), len, 1.0 / std::sqrt((double)hd), o, oa, qk);
        const double f = bound(hd, len, qk);
        for (int d = 0; d < hd; ++d) {
            const float g = out[(size_t)h * hd + d];
            worst = std::max(worst, std::isnan(g) ? 1e9 : std::fabs(g - o[d]) / (f * oa[d] + 1e-30));
            bf16_ok &= ob[(size_t)h * hd + d].x == __float2bfloat16_rn(g).x;
        }
    }
    check::expect(worst <= 1 && empty_ok == empty && bf16_ok,
                  "attn_decode_%s heads %d/%d hd %d position %d (len %d), %d splits of span %d used of %d: err/bound %.3f, "
                  "%d/%d empty partials (m = -inf, l = 0, acc = 0), out_bf16 %s",
                  kind_name[kind], nh, kvh, hd, pos, len, used, span, nsplit, worst, empty_ok, empty,
                  bf16_ok ? "= bf16(out)" : "DIFFERS");
}

template <typename T> static void prefill(Kind kind, int nh, int kvh, int hd, int past, int n) {
    Cache<T> c(kind, past + n, kvh, hd);
    c.fill(past + n);
    std::vector<float> q((size_t)n * nh * hd), out(q.size(), NAN);
    std::vector<__nv_bfloat16> ob(q.size());
    for (auto& x : q) x = check::sym(2.f);
    const float scale = 1.f / std::sqrt((float)hd);
    launch({(unsigned)nh, (unsigned)((n + ATT_QW - 1) / ATT_QW), 1}, {ATT_QW * 32, 1, 1}, 0, [&] {
        const float *ks = c.ks.data(), *vs = c.vs.data();
        const auto *K = c.k.data(), *V = c.v.data();
        if constexpr (std::is_same_v<T, float>) attn_prefill_f32(q.data(), K, V, ks, vs, out.data(), ob.data(), n, past, nh, kvh, hd, scale);
        else if constexpr (std::is_same_v<T, __half>) attn_prefill_f16(q.data(), K, V, ks, vs, out.data(), ob.data(), n, past, nh, kvh, hd, scale);
        else if constexpr (std::is_same_v<T, __nv_bfloat16>) attn_prefill_bf16(q.data(), K, V, ks, vs, out.data(), ob.data(), n, past, nh, kvh, hd, scale);
        else if (kind == E4M3) attn_prefill_fp8e4m3(q.data(), K, V, ks, vs, out.data(), ob.data(), n, past, nh, kvh, hd, scale);
        else attn_prefill_fp8e5m2(q.data(), K, V, ks, vs, out.data(), ob.data(), n, past, nh, kvh, hd, scale);
    });
    double worst = 0;
    for (int i = 0; i < n; ++i)
        for (int h = 0; h < nh; ++h) {
            std::vector<double> o, oa;
            double qk;
            const size_t base = ((size_t)i * nh + h) * hd;
            attend(c, &q[base], h / (nh / kvh), past + i + 1, 1.0 / std::sqrt((double)hd), o, oa, qk);
            const double f = bound(hd, past + i + 1, qk);
            for (int d = 0; d < hd; ++d)
                worst = std::max(worst, std::isnan(out[base + d]) ? 1e9 : std::fabs(out[base + d] - o[d]) / (f * oa[d] + 1e-30));
        }
    check::expect(worst <= 1, "attn_prefill_%s heads %d/%d hd %d past %d n %d: err/bound %.3f", kind_name[kind], nh,
                  kvh, hd, past, n, worst);
}

int main() {
    // Append: every dtype, rows running past the capacity (skipped), a zero row (scale 1).
    check_append<float>(F32, 6, 2, 64, 3, 4);
    check_append<__half>(F16, 6, 2, 64, 1, 2);
    check_append<__nv_bfloat16>(BF16, 6, 2, 64, 4, 2);
    check_append<uint8_t>(E4M3, 6, 2, 64, 2, 5);
    check_append<uint8_t>(E5M2, 6, 2, 128, 0, 3);
    // Decode: lengths that are no multiple of the span, a split left empty by rounding
    // (len 9 over 4 splits of 3), splits beyond `used` (len 5, min_span 4: 2 of 4), GQA 5:1
    // and 1:1, hd 64 and 128, the production min_span (128) over 3 of 4 splits.
    decode<float>(F32, 5, 1, 64, 8, 4, 2);
    decode<__half>(F16, 2, 2, 128, 4, 4, 4);
    decode<__nv_bfloat16>(BF16, 5, 1, 64, 40, 3, 4);
    decode<uint8_t>(E4M3, 5, 1, 64, 22, 4, 3);
    decode<uint8_t>(E5M2, 2, 2, 64, 0, 2, 4);
    decode<float>(F32, 1, 1, 64, 299, 4, 128);
    // The fallback prefill: one dtype each way, ragged query blocks, past > 0.
    prefill<float>(F32, 5, 1, 64, 17, 11);
    prefill<uint8_t>(E4M3, 2, 2, 128, 3, 9);
    prefill<__half>(F16, 2, 1, 64, 0, 20);
    return check::finish("attention");
}
