// Runs kernels/flash_attention.cu (causal prefill attention on tensor cores) on the CPU and
// compares it with a double-precision attention written here.
//
// Two bounds per output element, both relative to Σ_t p_t·|v_t| (what an error in the
// probabilities or the values can move the output by):
//  1. against the exact inputs: q and f32/f16 cache values are rounded to bf16 (u = 2^-8
//     each), the scores pick up (1+u)²−1 of Σ|q·k|·scale, which the softmax turns into a
//     factor e^{2e}; the probabilities are rounded to bf16 for P·V (u), the values (u for
//     f32/f16 caches), f32 sums over the visible positions (γ);
//  2. against attention over the MMA's own inputs (q, k, v rounded to bf16 here first):
//     only f32 rounding and the probabilities' bf16 rounding remain.
// A wrong mask, tile edge, GQA head or fragment layout is off by O(1) of the output scale,
// far above either bound.
#include "../flash_attention.cu"

#include "check.h"

#include <algorithm>
#include <string>

using check::bf16;

enum Kind { F32, F16, BF16, E4M3, E5M2 };
static const char* kind_name[] = {"f32", "f16", "bf16", "fp8e4m3", "fp8e5m2"};

// Dispatch to the extern "C" entry points by name, as src/backend/cuda does.
template <typename Q, typename KV>
void flash(int hd, const Q* q, const typename KV::T* kc, const typename KV::T* vc,
                  const float* ks, const float* vs, float* out, __nv_bfloat16* ob, int n, int start,
                  int nh, int kvh, float scale);
#define FLASH_DISPATCH(QN, Q, KVN, KV)                                                              \
    template <>                                                                                     \
    void flash<Q, KV>(int hd, const Q* q, const KV::T* kc, const KV::T* vc, const float* ks,        \
                      const float* vs, float* out, __nv_bfloat16* ob, int n, int start, int nh,     \
                      int kvh, float scale) {                                                       \
        if (hd == 64) flash_prefill_##QN##_##KVN##_hd64(q, kc, vc, ks, vs, out, ob, n, start, nh, kvh, scale); \
        else flash_prefill_##QN##_##KVN##_hd128(q, kc, vc, ks, vs, out, ob, n, start, nh, kvh, scale); \
    }
#define FLASH_DISPATCH_KV(QN, Q)                                                                    \
    FLASH_DISPATCH(QN, Q, f32, fa::KvF32)                                                           \
    FLASH_DISPATCH(QN, Q, f16, fa::KvF16)                                                           \
    FLASH_DISPATCH(QN, Q, bf16, fa::KvBF16)                                                         \
    FLASH_DISPATCH(QN, Q, fp8e4m3, fa::KvFp8<nemo::E4M3>)                                           \
    FLASH_DISPATCH(QN, Q, fp8e5m2, fa::KvFp8<nemo::E5M2>)
FLASH_DISPATCH_KV(f32, float)
FLASH_DISPATCH_KV(bf16, __nv_bfloat16)

// FP8 decode written here from the formats' definitions (OCP 8-bit floating point):
// E4M3FN bias 7, no infinities, S.1111.111 NaN; E5M2 bias 15, IEEE-like.
static double fp8_value(uint8_t b, Kind kind) {
    const int s = b >> 7;
    const int eb = kind == E4M3 ? 4 : 5, mb = 7 - eb, bias = kind == E4M3 ? 7 : 15;
    const int e = (b >> mb) & ((1 << eb) - 1), m = b & ((1 << mb) - 1);
    const double v = e == 0 ? std::ldexp((double)m, 1 - bias - mb)
                            : std::ldexp(1.0 + (double)m / (1 << mb), e - bias);
    return s ? -v : v;
}

template <typename KV, typename Q>
static void run(Kind kind, int hd, int nh, int kvh, int start, int n) {
    const int len = start + n;
    const size_t el = (size_t)len * kvh * hd;
    std::vector<typename KV::T> kc(el), vc(el);
    // kw/vw: the cache's exact values; km/vm: as the MMA sees them (bf16).
    std::vector<double> kw(el), vw(el), km(el), vm(el);
    std::vector<float> ks((size_t)len * kvh, 1.f), vs((size_t)len * kvh, 1.f);
    const bool fp8 = kind == E4M3 || kind == E5M2;
    if (fp8) {
        for (auto& s : ks) s = check::uniform(0.001f, 0.01f);
        for (auto& s : vs) s = check::uniform(0.001f, 0.01f);
    }
    for (int which = 0; which < 2; ++which) {
        auto& c = which ? vc : kc;
        auto& w = which ? vw : kw;
        auto& m = which ? vm : km;
        const auto& sc = which ? vs : ks;
        for (size_t i = 0; i < el; ++i) {
            const float x = check::sym(2.f);
            if constexpr (std::is_same_v<typename KV::T, float>) {
                c[i] = x;
                w[i] = x;
                m[i] = bf16(x);
            } else if constexpr (std::is_same_v<typename KV::T, __half>) {
                c[i] = __float2half_rn(x);
                w[i] = __half2float(c[i]);
                m[i] = bf16((float)w[i]);
            } else if constexpr (std::is_same_v<typename KV::T, __nv_bfloat16>) {
                c[i] = __float2bfloat16_rn(x);
                w[i] = m[i] = __bfloat162float(c[i]);
            } else {
                uint8_t b;
                do b = (uint8_t)(check::rng() & 0xff);
                while (std::isnan(fp8_value(b, kind)) || std::isinf(fp8_value(b, kind)) ||
                       (kind == E4M3 && (b & 0x7f) == 0x7f) || (kind == E5M2 && ((b >> 2) & 0x1f) == 0x1f));
                c[i] = b;
                w[i] = m[i] = fp8_value(b, kind) * sc[i / hd];  // codes and scales are exact in bf16·f32
            }
        }
    }
    const bool q_bf16 = std::is_same_v<Q, __nv_bfloat16>;
    std::vector<float> q((size_t)n * nh * hd);
    std::vector<Q> qd(q.size());
    for (size_t i = 0; i < q.size(); ++i) {
        q[i] = check::sym(2.f);
        if (q_bf16) q[i] = bf16(q[i]);
        if constexpr (std::is_same_v<Q, float>) qd[i] = q[i];
        else qd[i] = __float2bfloat16_rn(q[i]);
    }
    std::vector<float> out(q.size(), NAN);
    std::vector<__nv_bfloat16> ob(q.size());
    const float scale = 1.f / std::sqrt((float)hd);
    const unsigned qb = (unsigned)((n + FA_BQ - 1) / FA_BQ);
    launch({qb, (unsigned)nh, 1}, {FA_WARPS * NEMO_WARP, 1, 1}, 0, [&] {
        flash<Q, KV>(hd, qd.data(), kc.data(), vc.data(), ks.data(), vs.data(), out.data(), ob.data(), n,
                     start, nh, kvh, scale);
    });

    const double u = 1.0 / 256, u32 = 1.0 / 16777216;
    const double rk = (kind == F32 || kind == F16) ? u : 0, rq = q_bf16 ? 0 : u;
    double worst1 = 0, worst2 = 0;
    bool bf16_ok = true;
    std::string where;
    for (int i = 0; i < n; ++i)
        for (int h = 0; h < nh; ++h) {
            const int kh = h / (nh / kvh), vis = start + i + 1;
            const float* qi = &q[((size_t)i * nh + h) * hd];
            const double gam = (2.0 * vis + hd + 16) * u32;
            auto attend = [&](const std::vector<double>& K, const std::vector<double>& V, bool round_q,
                              std::vector<double>& o, std::vector<double>& oa) {
                std::vector<double> sc(vis);
                double qk = 0, sd = 1.0 / std::sqrt((double)hd);
                for (int t = 0; t < vis; ++t) {
                    double s = 0, sa = 0;
                    for (int d = 0; d < hd; ++d) {
                        const double qv = round_q ? bf16(qi[d]) : qi[d];
                        const double kv = K[((size_t)t * kvh + kh) * hd + d];
                        s += qv * kv;
                        sa += std::fabs(qv * kv);
                    }
                    sc[t] = s * sd;
                    qk = std::max(qk, sa * sd);
                }
                const double mx = *std::max_element(sc.begin(), sc.end());
                double z = 0;
                for (auto& s : sc) z += (s = std::exp(s - mx));
                o.assign(hd, 0);
                oa.assign(hd, 0);
                for (int t = 0; t < vis; ++t)
                    for (int d = 0; d < hd; ++d) {
                        const double vv = V[((size_t)t * kvh + kh) * hd + d];
                        o[d] += sc[t] / z * vv;
                        oa[d] += sc[t] / z * std::fabs(vv);
                    }
                return qk;
            };
            std::vector<double> o, oa, om, oam;
            const double qk = attend(kw, vw, false, o, oa), qkm = attend(km, vm, true, om, oam);
            const double e = ((1 + rq) * (1 + rk) * (1 + (2 * hd + 4) * u32) - 1) * qk;
            const double f = std::exp(2 * e) * (1 + u) * (1 + rk) * (1 + gam) - 1;
            const double em = (2 * hd + 4) * u32 * qkm, fm = std::exp(2 * em) * (1 + u) * (1 + gam) - 1;
            for (int d = 0; d < hd; ++d) {
                const size_t at = ((size_t)i * nh + h) * hd + d;
                const double g = out[at];
                double r1 = std::fabs(g - o[d]) / (f * oa[d] + 1e-30);
                double r2 = std::fabs(g - om[d]) / (fm * oam[d] + 1e-30);
                if (std::isnan(g)) r1 = r2 = 1e9;
                if (r1 > worst1 || r2 > worst2)
                    where = "query " + std::to_string(i) + " head " + std::to_string(h) + " d " + std::to_string(d);
                worst1 = std::max(worst1, r1);
                worst2 = std::max(worst2, r2);
                bf16_ok &= ob[at].x == __float2bfloat16_rn(out[at]).x;
            }
        }
    check::expect(worst1 <= 1 && worst2 <= 1 && bf16_ok,
                  "flash_prefill q %s kv %s hd %d heads %d/%d start %d n %d: err/bound %.3f (exact inputs), "
                  "%.3f (MMA inputs), worst at %s, out_bf16 %s",
                  q_bf16 ? "bf16" : "f32", kind_name[kind], hd, nh, kvh, start, n, worst1, worst2,
                  where.c_str(), bf16_ok ? "= bf16(out)" : "DIFFERS from bf16(out)");
}

int main() {
    // Every cache dtype; GQA 5:1 and 1:1; head_dim 64 and 128; ragged n; start > 0; one
    // prompt of two query blocks (n > 128: the longest rows start first).
    run<fa::KvF32, float>(F32, 128, 5, 1, 37, 17);
    run<fa::KvF16, float>(F16, 64, 2, 2, 70, 65);
    run<fa::KvBF16, __nv_bfloat16>(BF16, 128, 5, 1, 100, 33);
    run<fa::KvFp8<nemo::E4M3>, float>(E4M3, 128, 5, 1, 21, 40);
    run<fa::KvFp8<nemo::E5M2>, __nv_bfloat16>(E5M2, 64, 2, 2, 0, 70);
    run<fa::KvBF16, float>(BF16, 64, 1, 1, 3, 130);
    run<fa::KvFp8<nemo::E4M3>, __nv_bfloat16>(E4M3, 64, 5, 1, 200, 1);  // one query, deep in the cache
    return check::finish("flash_attention");
}
