// Runs kernels/moe.cu on the CPU, stage by stage as src/model/cuda/moe_layer.rs chains
// them for a decode step (router → route → up GEMV → down GEMV → combine, the expert ids
// passed in device memory), plus the prompt path's gather. Each stage is checked on the
// previous stage's kernel output:
//  - router, GEMVs: against dot products in double written here; bound (len + 8)·2^-24·
//    Σ|terms| (f32 sums; the bf16 weights and inputs are exact in f32), relu² propagated;
//  - route: against the CPU op itself (backend::cpu::moe::route), on the logits, biases
//    and routings tests/kernel_sim.rs made and routed (the cases file, argv[1]: random and
//    tied logits, grouped and not): the ids exactly, the weights to 4 f32 ulps. Its rule
//    has no rounding to model (sigmoid in f32, sums of two), so the CPU op is the oracle,
//    not a copy of it here;
//  - gather / combine: exact rows / f32 sums in pick order.
#include "../moe.cu"

#include "check.h"

#include <algorithm>
#include <numeric>

static const double U32 = 1.0 / 16777216;

static std::vector<__nv_bfloat16> bf16_vec(size_t n, float a) {
    std::vector<__nv_bfloat16> v(n);
    for (auto& x : v) x = __float2bfloat16_rn(check::sym(a));
    return v;
}
static double bf(__nv_bfloat16 x) { return __bfloat162float(x); }

// One decode-like step of n tokens.
static void step(int n, int experts, int n_group, int topk_group, int top_k, bool norm, float scale, int hidden,
                 int inter) {
    // Router.
    auto x = bf16_vec((size_t)n * hidden, 1.f);
    std::vector<float> gate((size_t)experts * hidden), bias(experts), logits((size_t)n * experts, NAN);
    for (auto& g : gate) g = check::sym(0.2f);
    for (auto& b : bias) b = check::sym(0.05f);
    launch({(unsigned)((experts + 3) / 4), (unsigned)((n + 3) / 4), 1}, {128, 1, 1}, 0,
           [&] { moe_router_f32(x.data(), gate.data(), logits.data(), n, experts, hidden); });
    double wr = 0;
    for (int t = 0; t < n; ++t)
        for (int e = 0; e < experts; ++e) {
            double s = 0, sa = 0;
            for (int c = 0; c < hidden; ++c) {
                const double p = bf(x[(size_t)t * hidden + c]) * gate[(size_t)e * hidden + c];
                s += p;
                sa += std::fabs(p);
            }
            const float g = logits[(size_t)t * experts + e];
            wr = std::max(wr, std::isnan(g) ? 1e9 : std::fabs(g - s) / ((hidden + 8) * U32 * sa + 1e-30));
        }
    check::expect(wr <= 1, "moe_router_f32 tokens %d experts %d hidden %d: err/bound %.3f", n, experts, hidden, wr);

    // Route on the router's logits (checked against the CPU op in `route_cases`): the ids
    // and weights the next stages read.
    std::vector<uint32_t> ids((size_t)n * top_k, 0xdeadbeefu);
    std::vector<float> wts((size_t)n * top_k, NAN);
    launch({(unsigned)n, 1, 1}, {32, 1, 1}, 0, [&] {
        moe_route_f32(logits.data(), bias.data(), ids.data(), wts.data(), experts, n_group, topk_group, top_k, norm, scale);
    });
    for (int p = 0; p < n * top_k; ++p)
        if (ids[p] >= (uint32_t)experts || std::isnan(wts[p])) {
            check::expect(false, "moe_route_f32 tokens %d experts %d: pick %d unset", n, experts, p);
            return;
        }

    // Up GEMV + relu² for every (token, pick); the last pick of token 0 gets an id past the
    // experts, which must leave its row untouched.
    const int inner = hidden;
    auto up = bf16_vec((size_t)experts * inter * inner, 0.3f);
    ids[top_k - 1] = (uint32_t)experts;
    const int pairs = n * top_k;
    std::vector<float> h((size_t)pairs * inter, NAN);
    launch({(unsigned)((inter + 4 * MOE_UP_ROWS - 1) / (4 * MOE_UP_ROWS)), (unsigned)pairs, 1}, {128, 1, 1},
           (size_t)inner * 2, [&] { moe_up_gemv_bf16(x.data(), up.data(), ids.data(), h.data(), top_k, experts, inter, inner); });
    double wu = 0;
    bool untouched = true;
    for (int p = 0; p < pairs; ++p)
        for (int r = 0; r < inter; ++r) {
            const float got = h[(size_t)p * inter + r];
            if (ids[p] >= (uint32_t)experts) {
                untouched &= std::isnan(got);
                continue;
            }
            double s = 0, sa = 0;
            for (int c = 0; c < inner; ++c) {
                const double v = bf(up[((size_t)ids[p] * inter + r) * inner + c]) * bf(x[(size_t)(p / top_k) * inner + c]);
                s += v;
                sa += std::fabs(v);
            }
            const double d = (inner + 8) * U32 * sa, want = s > 0 ? s * s : 0;
            const double b = (2 * std::max(s, 0.0) + d) * d + 2 * U32 * want + 1e-30;
            wu = std::max(wu, std::isnan(got) ? 1e9 : std::fabs(got - want) / b);
        }
    check::expect(wu <= 1 && untouched, "moe_up_gemv_bf16 pairs %d inter %d inner %d: err/bound %.3f, row of an id past the experts %s",
                  pairs, inter, inner, wu, untouched ? "untouched" : "WRITTEN");

    // Down GEMV (on the kernel's h; the skipped row gets finite values first).
    for (int r = 0; r < inter; ++r) h[(size_t)(top_k - 1) * inter + r] = 0.5f;
    ids[top_k - 1] = 0;
    const int dim = hidden;
    auto down = bf16_vec((size_t)experts * dim * inter, 0.3f);
    std::vector<float> ys((size_t)pairs * dim, NAN);
    launch({(unsigned)((dim + 4 * MOE_DOWN_ROWS - 1) / (4 * MOE_DOWN_ROWS)), (unsigned)pairs, 1}, {128, 1, 1},
           (size_t)inter * 4, [&] { moe_down_gemv_bf16(h.data(), down.data(), ids.data(), ys.data(), experts, dim, inter); });
    double wd = 0;
    for (int p = 0; p < pairs; ++p)
        for (int c = 0; c < dim; ++c) {
            double s = 0, sa = 0;
            for (int r = 0; r < inter; ++r) {
                const double v = bf(down[((size_t)ids[p] * dim + c) * inter + r]) * h[(size_t)p * inter + r];
                s += v;
                sa += std::fabs(v);
            }
            const float got = ys[(size_t)p * dim + c];
            wd = std::max(wd, std::isnan(got) ? 1e9 : std::fabs(got - s) / ((inter + 8) * U32 * sa + 1e-30));
        }
    check::expect(wd <= 1, "moe_down_gemv_bf16 pairs %d dim %d inter %d: err/bound %.3f", pairs, dim, inter, wd);

    // Combine, with pos null (pairs in order) and with a permutation (expert-sorted rows).
    for (int with_pos = 0; with_pos < 2; ++with_pos) {
        std::vector<uint32_t> pos(pairs);
        std::iota(pos.begin(), pos.end(), 0u);
        if (with_pos) std::shuffle(pos.begin(), pos.end(), check::rng);
        std::vector<float> yp(ys.size());
        for (int p = 0; p < pairs; ++p)
            std::copy_n(&ys[(size_t)p * dim], dim, &yp[(size_t)pos[p] * dim]);
        std::vector<float> out((size_t)n * dim, NAN);
        std::vector<__nv_bfloat16> ob(out.size());
        launch({(unsigned)n, 1, 1}, {256, 1, 1}, 0, [&] {
            moe_combine_f32(yp.data(), with_pos ? pos.data() : nullptr, wts.data(), out.data(), ob.data(), top_k, dim);
        });
        int bad = 0;
        for (int t = 0; t < n; ++t)
            for (int c = 0; c < dim; ++c) {
                float s = 0.f;
                for (int k = 0; k < top_k; ++k)
                    s = std::fma(wts[(size_t)t * top_k + k], ys[((size_t)t * top_k + k) * dim + c], s);
                const size_t at = (size_t)t * dim + c;
                bad += out[at] != s || ob[at].x != __float2bfloat16_rn(s).x;
            }
        check::expect(bad == 0, "moe_combine_f32 tokens %d top_k %d dim %d pos %s: %d elements differ from the f32 sum in pick order",
                      n, top_k, dim, with_pos ? "permuted" : "null", bad);
    }
}

// moe_route_f32 on each case of the file against backend::cpu::moe::route's answer.
static void route_cases(check::Cases& in) {
    const int count = in.i32();
    for (int c = 0; c < count; ++c) {
        const int n = in.i32(), e = in.i32(), n_group = in.i32(), topk_group = in.i32(), top_k = in.i32();
        const bool norm = in.i32() != 0;
        const float scale = in.f32();
        const auto logits = in.f32s((size_t)n * e), bias = in.f32s(e);
        const auto want_ids = in.u32s((size_t)n * top_k);
        const auto want_w = in.f32s((size_t)n * top_k);
        std::vector<uint32_t> ids((size_t)n * top_k, 0xdeadbeefu);
        std::vector<float> wts((size_t)n * top_k, NAN);
        launch({(unsigned)n, 1, 1}, {32, 1, 1}, 0, [&] {
            moe_route_f32(logits.data(), bias.data(), ids.data(), wts.data(), e, n_group, topk_group, top_k, norm, scale);
        });
        int wrong_ids = 0;
        double ww = 0;
        for (size_t p = 0; p < ids.size(); ++p) {
            wrong_ids += ids[p] != want_ids[p];
            ww = std::max(ww, std::isnan(wts[p]) ? 1e9 : std::fabs(wts[p] - want_w[p]) / (4 * U32 * 2 * std::fabs(want_w[p]) + 1e-30));
        }
        check::expect(wrong_ids == 0 && ww <= 1,
                      "moe_route_f32 vs backend::cpu::moe::route, case %d: tokens %d experts %d groups %d keep %d top_k %d norm %d: "
                      "%d wrong ids, weight err/bound %.3f",
                      c, n, e, n_group, topk_group, top_k, (int)norm, wrong_ids, ww);
    }
}

static void gather(int n, int dim, int count) {
    auto x = bf16_vec((size_t)n * dim, 1.f);
    std::vector<uint32_t> rows(count);
    for (auto& r : rows) r = (uint32_t)(check::rng() % n);
    std::vector<__nv_bfloat16> xs((size_t)count * dim, __nv_bfloat16{0xffff});
    launch({(unsigned)count, 1, 1}, {128, 1, 1}, 0, [&] { moe_gather_bf16(x.data(), rows.data(), xs.data(), dim); });
    int bad = 0;
    for (int i = 0; i < count; ++i)
        for (int c = 0; c < dim; ++c) bad += xs[(size_t)i * dim + c].x != x[(size_t)rows[i] * dim + c].x;
    check::expect(bad == 0, "moe_gather_bf16 rows %d of %d, dim %d: %d elements differ", count, n, dim, bad);
}

int main(int argc, char** argv) {
    check::Cases cases(argc, argv);
    route_cases(cases);
    cases.done();
    // Grouped routing (8 groups, keep 4, top 6, normalised, scaled); ungrouped routing over
    // 72 experts (not a multiple of the warp), top 8, unnormalised. inter 40 (ragged over
    // the 16-row blocks), hidden 72 (lanes partly idle).
    step(3, 64, 8, 4, 6, true, 2.5f, 72, 40);
    step(2, 64, 8, 4, 6, true, 2.5f, 72, 40);
    step(1, 72, 1, 1, 8, false, 1.f, 264, 24);
    gather(5, 72, 9);
    return check::finish("moe");
}
