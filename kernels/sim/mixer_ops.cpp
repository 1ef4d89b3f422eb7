// Runs the Mamba2 mixer's small kernels on the CPU, kernels/conv1d.cu (causal depthwise conv
// for a prompt, its window update in place, the one-token step) and kernels/norm.cu (RMSNorm
// fused with the residual add, the grouped gated RMSNorm), against double references
// written here from their definitions (backend::cpu::ssm::causal_conv1d,
// backend::cpu::ops). Bounds: f32 sums of k (conv) or dim (norm) terms, (len + 16)·2^-24 of
// the sum of absolute terms, propagated through silu / the normalisation; the conv window
// and the residual are compared exactly.
//
// The conv is also checked against its CPU op itself (backend::cpu::ssm::causal_conv1d), on
// inputs tests/kernel_sim.rs made and ran through it (the cases file, argv[1]): the op
// within the bound above of the double reference, the kernel within twice that of the
// op's output, and the windows equal.
#include "../conv1d.cu"
#include "../norm.cu"

#include "check.h"

#include <algorithm>

static const double U32 = 1.0 / 16777216;
static double silu(double x) { return x / (1 + std::exp(-x)); }

// prompt of n tokens (then m more in a second call) + the decode step, k-tap conv.
static void conv(int cd, int k, int n) {
    const int past = k - 1, stride = cd + 7;
    std::vector<float> state((size_t)past * cd), w((size_t)cd * k), b(cd), x((size_t)n * stride);
    for (auto& v : state) v = check::sym(1.f);
    for (auto& v : w) v = check::sym(0.5f);
    for (auto& v : b) v = check::sym(0.2f);
    for (auto& v : x) v = check::sym(1.f);
    // The whole input stream [state ++ x] for the reference.
    std::vector<double> in((size_t)(past + n + 1) * cd);
    for (int s = 0; s < past; ++s)
        for (int c = 0; c < cd; ++c) in[(size_t)s * cd + c] = state[(size_t)s * cd + c];
    for (int t = 0; t < n; ++t)
        for (int c = 0; c < cd; ++c) in[(size_t)(past + t) * cd + c] = x[(size_t)t * stride + c];
    std::vector<float> out((size_t)n * cd, NAN);
    const unsigned gx = (unsigned)((cd + 255) / 256);
    launch({gx, (unsigned)n, 1}, {256, 1, 1}, 0,
           [&] { conv1d_prefill_f32(x.data(), stride, state.data(), w.data(), b.data(), out.data(), n, cd, k); });
    launch({gx, 1, 1}, {256, 1, 1}, 0, [&] { conv1d_state_f32(x.data(), stride, state.data(), n, cd, k); });
    // One decode token.
    std::vector<float> x1(cd), out1(cd, NAN);
    for (auto& v : x1) v = check::sym(1.f);
    for (int c = 0; c < cd; ++c) in[(size_t)(past + n) * cd + c] = x1[c];
    std::vector<float> state_after_prompt = state;
    launch({gx, 1, 1}, {256, 1, 1}, 0,
           [&] { conv1d_update_f32(x1.data(), state.data(), w.data(), b.data(), out1.data(), cd, k); });
    double worst = 0;
    auto check_token = [&](int t, float got, int c) {  // t: index in the stream of the newest input
        double acc = b[c], acca = std::fabs(b[c]);
        for (int j = 0; j < k; ++j) {
            const double v = w[(size_t)c * k + j] * in[(size_t)(t - past + j) * cd + c];
            acc += v;
            acca += std::fabs(v);
        }
        // silu' ≤ 1.1: the pre-activation error carries over; plus f32 rounding of silu.
        const double bound = 1.1 * (k + 16) * U32 * acca + 8 * U32 * std::fabs(silu(acc)) + 1e-30;
        worst = std::max(worst, std::isnan(got) ? 1e9 : std::fabs(got - silu(acc)) / bound);
    };
    for (int t = 0; t < n; ++t)
        for (int c = 0; c < cd; ++c) check_token(past + t, out[(size_t)t * cd + c], c);
    for (int c = 0; c < cd; ++c) check_token(past + n, out1[c], c);
    int bad_window = 0;
    for (int i = 0; i < past; ++i)
        for (int c = 0; c < cd; ++c) {
            bad_window += state_after_prompt[(size_t)i * cd + c] != (float)in[(size_t)(n + i) * cd + c];
            bad_window += state[(size_t)i * cd + c] != (float)in[(size_t)(n + 1 + i) * cd + c];
        }
    check::expect(worst <= 1 && bad_window == 0,
                  "conv1d prefill + state + update: channels %d, k %d, prompt %d: err/bound %.3f, %d window elements wrong",
                  cd, k, n, worst, bad_window);
}

static void rms(int rows, int dim, bool with_delta, int threads) {
    std::vector<float> res((size_t)rows * dim), delta(res.size()), w(dim), out(res.size(), NAN);
    std::vector<__nv_bfloat16> ob(res.size());
    for (auto& v : res) v = check::sym(3.f);
    for (auto& v : delta) v = check::sym(1.f);
    for (auto& v : w) v = check::uniform(0.5f, 1.5f);
    const std::vector<float> res0 = res;
    const float eps = 1e-5f;
    launch({(unsigned)rows, 1, 1}, {(unsigned)threads, 1, 1}, 0, [&] {
        rms_norm_residual_f32(res.data(), with_delta ? delta.data() : nullptr, w.data(), out.data(), ob.data(), dim, eps);
    });
    double worst = 0;
    int bad = 0;
    for (int r = 0; r < rows; ++r) {
        double ss = 0;
        std::vector<float> v(dim);
        for (int c = 0; c < dim; ++c) {
            const size_t i = (size_t)r * dim + c;
            v[c] = with_delta ? res0[i] + delta[i] : res0[i];  // the f32 add the kernel stores
            bad += res[i] != v[c];
            ss += (double)v[c] * v[c];
        }
        const double inv = 1 / std::sqrt(ss / dim + eps);
        for (int c = 0; c < dim; ++c) {
            const size_t i = (size_t)r * dim + c;
            const double want = w[c] * v[c] * inv;
            worst = std::max(worst, std::fabs(out[i] - want) / ((dim + 16) * U32 * std::fabs(want) + 1e-30));
            bad += ob[i].x != __float2bfloat16_rn(out[i]).x;
        }
    }
    check::expect(worst <= 1 && bad == 0, "rms_norm_residual_f32 rows %d dim %d delta %d block %d: err/bound %.3f, %d residual/bf16 mismatches",
                  rows, dim, (int)with_delta, threads, worst, bad);
}

static void gated(int rows, int groups, int gs) {
    const int dim = groups * gs, zs = dim + 40;
    std::vector<float> y((size_t)rows * dim), z((size_t)rows * zs), w(dim);
    std::vector<__nv_bfloat16> ob(y.size());
    for (auto& v : y) v = check::sym(2.f);
    for (auto& v : z) v = check::sym(3.f);
    for (auto& v : w) v = check::uniform(0.5f, 1.5f);
    const std::vector<float> y0 = y;
    launch({(unsigned)groups, (unsigned)rows, 1}, {256, 1, 1}, 0,
           [&] { gated_rms_norm_f32(y.data(), z.data(), zs, w.data(), ob.data(), dim, gs, 1e-5f); });
    double worst = 0;
    int bad = 0;
    for (int r = 0; r < rows; ++r)
        for (int g = 0; g < groups; ++g) {
            std::vector<double> v(gs);
            double ss = 0;
            for (int c = 0; c < gs; ++c) {
                v[c] = y0[(size_t)r * dim + g * gs + c] * silu(z[(size_t)r * zs + g * gs + c]);
                ss += v[c] * v[c];
            }
            const double inv = 1 / std::sqrt(ss / gs + 1e-5);
            for (int c = 0; c < gs; ++c) {
                const size_t i = (size_t)r * dim + g * gs + c;
                const double want = w[g * gs + c] * v[c] * inv;
                worst = std::max(worst, std::fabs(y[i] - want) / ((gs + 32) * U32 * std::fabs(want) + 1e-30));
                bad += ob[i].x != __float2bfloat16_rn(y[i]).x;
            }
        }
    check::expect(worst <= 1 && bad == 0, "gated_rms_norm_f32 rows %d groups %d group size %d: err/bound %.3f, %d bf16 mismatches",
                  rows, groups, gs, worst, bad);
}

// Each case: cd, k, n rows at offset / stride of x, the window before; the CPU op's
// output rows and window after. n = 1 with `decode` runs conv1d_update_f32, else
// conv1d_prefill_f32 + conv1d_state_f32.
static void conv_cases(check::Cases& in) {
    const int count = in.i32();
    for (int c = 0; c < count; ++c) {
        const int cd = in.i32(), k = in.i32(), n = in.i32(), offset = in.i32(), stride = in.i32();
        const bool decode = in.i32() != 0;
        const int past = k - 1;
        const auto x = in.f32s((size_t)offset + (size_t)(n - 1) * stride + cd);
        auto state = in.f32s((size_t)past * cd);
        const auto w = in.f32s((size_t)cd * k), b = in.f32s(cd);
        const auto cpu_out = in.f32s((size_t)n * cd), cpu_state = in.f32s((size_t)past * cd);
        // The input stream [window ++ rows] for the double reference.
        std::vector<double> stream((size_t)(past + n) * cd);
        for (int i = 0; i < past * cd; ++i) stream[i] = state[i];
        for (int t = 0; t < n; ++t)
            for (int ch = 0; ch < cd; ++ch) stream[(size_t)(past + t) * cd + ch] = x[offset + (size_t)t * stride + ch];
        std::vector<float> out((size_t)n * cd, NAN);
        const unsigned gx = (unsigned)((cd + 255) / 256);
        const float* xp = x.data() + offset;
        if (decode && n == 1) {
            launch({gx, 1, 1}, {256, 1, 1}, 0,
                   [&] { conv1d_update_f32(xp, state.data(), w.data(), b.data(), out.data(), cd, k); });
        } else {
            launch({gx, (unsigned)n, 1}, {256, 1, 1}, 0,
                   [&] { conv1d_prefill_f32(xp, stride, state.data(), w.data(), b.data(), out.data(), n, cd, k); });
            launch({gx, 1, 1}, {256, 1, 1}, 0, [&] { conv1d_state_f32(xp, stride, state.data(), n, cd, k); });
        }
        double op = 0, kernel = 0;
        for (int t = 0; t < n; ++t)
            for (int ch = 0; ch < cd; ++ch) {
                double acc = b[ch], acca = std::fabs(b[ch]);
                for (int j = 0; j < k; ++j) {
                    const double v = w[(size_t)ch * k + j] * stream[(size_t)(t + j) * cd + ch];
                    acc += v;
                    acca += std::fabs(v);
                }
                const double bound = 1.1 * (k + 16) * U32 * acca + 8 * U32 * std::fabs(silu(acc)) + 1e-30;
                const size_t i = (size_t)t * cd + ch;
                op = std::max(op, std::isnan(cpu_out[i]) ? 1e9 : std::fabs(cpu_out[i] - silu(acc)) / bound);
                kernel = std::max(kernel, std::isnan(out[i]) ? 1e9 : std::fabs(out[i] - cpu_out[i]) / (2 * bound));
            }
        int bad_window = 0;
        for (size_t i = 0; i < state.size(); ++i) bad_window += state[i] != cpu_state[i];
        check::expect(op <= 1 && kernel <= 1 && bad_window == 0,
                      "conv1d %s vs backend::cpu::ssm::causal_conv1d: channels %d, k %d, rows %d (stride %d): op vs "
                      "reference err/bound %.3f, kernel vs op err/bound %.3f, %d window elements differ",
                      decode ? "update" : "prefill + state", cd, k, n, stride, op, kernel, bad_window);
    }
}

int main(int argc, char** argv) {
    check::Cases cases(argc, argv);
    conv_cases(cases);
    cases.done();
    conv(300, 4, 5);   // two channel blocks, ragged; a prompt longer than the window
    conv(40, 4, 2);    // a prompt shorter than the window: the state shifts in place
    conv(33, 2, 1);
    rms(3, 1000, true, 256);
    rms(2, 96, false, 1024);  // more threads than elements
    gated(2, 4, 96);
    return check::finish("mixer_ops");
}
