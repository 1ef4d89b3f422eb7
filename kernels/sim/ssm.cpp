// Runs kernels/ssm.cu on the CPU: the tensor-core chunked scan (ssd_scan_mma_*) for prompts
// and the one-token update (ssm_update_*), against the Mamba2 recurrence in double written
// here, token by token (not the chunked form the kernel uses):
//   dt = max(softplus(dt_raw + dt_bias), dt_min); S ← e^{dt·A}·S + dt·x·Bᵀ; y = S·C + D·x.
// Bounds, relative to the same recurrence run on absolute values (Σ|terms|, so that
// cancellation cannot hide an error): the scan's four products take tf32 inputs (u = 2^-11
// each operand, at most four roundings along a path to y, two to the state) plus f32
// rounding over the sums (γ); a half-precision state adds its own rounding once at the start
// (the input state is given in T) and once at the end. A wrong chunk edge, decay, group,
// column block or fragment layout is off by O(1).
//
// The double recurrence stays here as the independent oracle: it is exact to ~2^-50, and
// its run on absolute values is what every bound is relative to. The CPU ops the kernels
// are the twins of (backend::cpu::ssm::{ssd_chunked, ssm_step}, f32) are checked too, on
// inputs tests/kernel_sim.rs made and ran through them (the cases file, argv[1]): each op
// within its own f32 error γ_ref = (2·d_state + 2·chunk + 4·n + 512)·2^-24 of Σ|terms| of the
// double recurrence, and the kernel within its bound plus γ_ref of the op's answer.
#include "../ssm.cu"

#include "check.h"

#include <algorithm>

template <typename T> static T to_t(float x);
template <> float to_t<float>(float x) { return x; }
template <> __half to_t<__half>(float x) { return __float2half_rn(x); }
template <> __nv_bfloat16 to_t<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
static float from_t(float x) { return x; }
static float from_t(__half x) { return __half2float(x); }
static float from_t(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> static const char* tname() {
    return std::is_same_v<T, float> ? "f32" : std::is_same_v<T, __half> ? "f16" : "bf16";
}
template <typename T> static double unit_roundoff() {
    return std::is_same_v<T, float> ? 0.0 : std::is_same_v<T, __half> ? 1.0 / 2048 : 1.0 / 256;
}

static double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

struct Problem {
    int h = 0, p = 0, ns = 0, ng = 0, n = 0, dts = 0;
    std::vector<float> xbc, dt, bias, A, D, state;
    Problem() = default;
    Problem(int h_, int p_, int ns_, int ng_, int n_) : h(h_), p(p_), ns(ns_), ng(ng_), n(n_), dts(h_ + 3) {
        const int cd = h * p + 2 * ng * ns;
        xbc.resize((size_t)n * cd);
        dt.resize((size_t)n * dts);
        bias.resize(h);
        A.resize(h);
        D.resize(h);
        state.resize((size_t)h * p * ns);
        for (auto& v : xbc) v = check::sym(1.f);
        for (auto& v : dt) v = check::sym(3.f);
        for (auto& v : bias) v = check::sym(1.f);
        for (auto& v : A) v = -std::exp(check::sym(1.f) + 1.f);
        for (auto& v : D) v = check::sym(1.f);
        for (auto& v : state) v = check::sym(0.5f);  // a nonzero initial state
    }
    int di() const { return h * p; }
    int cd() const { return h * p + 2 * ng * ns; }
};

// The recurrence in double over tokens [0, n): y [n, di], the final state, and the same run
// on absolute values (ya, Sa) for the bounds.
static void reference(const Problem& pr, const std::vector<double>& s0, float dt_min, std::vector<double>& y,
                      std::vector<double>& ya, std::vector<double>& S, std::vector<double>& Sa) {
    const int di = pr.di(), cd = pr.cd();
    S = s0;
    Sa.resize(S.size());
    for (size_t i = 0; i < S.size(); ++i) Sa[i] = std::fabs(S[i]);
    y.assign((size_t)pr.n * di, 0);
    ya.assign(y.size(), 0);
    for (int t = 0; t < pr.n; ++t) {
        const float* row = &pr.xbc[(size_t)t * cd];
        for (int hh = 0; hh < pr.h; ++hh) {
            const int g = hh / (pr.h / pr.ng);
            const float* B = row + di + g * pr.ns;
            const float* C = row + di + pr.ng * pr.ns + g * pr.ns;
            const double dtv = std::max(softplus((double)pr.dt[(size_t)t * pr.dts + hh] + pr.bias[hh]), (double)dt_min);
            const double da = std::exp(dtv * pr.A[hh]);
            for (int pi = 0; pi < pr.p; ++pi) {
                const double xs = row[hh * pr.p + pi];
                double acc = 0, acca = 0;
                const size_t base = ((size_t)hh * pr.p + pi) * pr.ns;
                for (int s = 0; s < pr.ns; ++s) {
                    S[base + s] = S[base + s] * da + dtv * xs * B[s];
                    Sa[base + s] = Sa[base + s] * da + dtv * std::fabs(xs * B[s]);
                    acc += S[base + s] * C[s];
                    acca += Sa[base + s] * std::fabs(C[s]);
                }
                y[(size_t)t * di + hh * pr.p + pi] = acc + pr.D[hh] * xs;
                ya[(size_t)t * di + hh * pr.p + pi] = acca + std::fabs(pr.D[hh] * xs);
            }
        }
    }
}

// head_dim split over blocks as src/backend/cuda/ssm.rs's column_split.
static void column_split(int p, unsigned& blocks, int& cols) {
    const int b = (p + SSD_PB - 1) / SSD_PB;
    cols = ((p + b - 1) / b + 7) / 8 * 8;
    blocks = (unsigned)((p + cols - 1) / cols);
}

template <typename T> static void scan(int h, int p, int ns, int ng, int n) {
    Problem pr(h, p, ns, ng, n);
    std::vector<T> st(pr.state.size());
    std::vector<double> s0(st.size());
    for (size_t i = 0; i < st.size(); ++i) {
        st[i] = to_t<T>(pr.state[i]);
        s0[i] = from_t(st[i]);
    }
    std::vector<float> y((size_t)n * pr.di(), NAN);
    const float dt_min = 1e-3f;
    unsigned blocks;
    int cols;
    column_split(p, blocks, cols);
    const bool big = ns > 128;
    const size_t smem = big ? ssd_smem_bytes<256, 16>() : ssd_smem_bytes<128, 32>();
    launch({(unsigned)h, blocks, 1}, {SSD_WARPS * NEMO_WARP, 1, 1}, smem, [&] {
        const float *x = pr.xbc.data(), *dt = pr.dt.data(), *b = pr.bias.data(), *A = pr.A.data(), *D = pr.D.data();
        if constexpr (std::is_same_v<T, float>) {
            (big ? ssd_scan_mma_ns256_f32 : ssd_scan_mma_ns128_f32)(x, dt, pr.dts, b, A, D, st.data(), y.data(), n, h, p, ns, ng, cols, dt_min);
        } else if constexpr (std::is_same_v<T, __half>) {
            (big ? ssd_scan_mma_ns256_f16 : ssd_scan_mma_ns128_f16)(x, dt, pr.dts, b, A, D, st.data(), y.data(), n, h, p, ns, ng, cols, dt_min);
        } else {
            (big ? ssd_scan_mma_ns256_bf16 : ssd_scan_mma_ns128_bf16)(x, dt, pr.dts, b, A, D, st.data(), y.data(), n, h, p, ns, ng, cols, dt_min);
        }
    });
    std::vector<double> yr, ya, S, Sa;
    reference(pr, s0, dt_min, yr, ya, S, Sa);
    const double u = 1.0 / 2048, ut = unit_roundoff<T>();
    const double gamma = (2.0 * ns + 4.0 * std::min(n, 32) + 512) / 16777216.0;
    const double fy = std::pow(1 + u, 4) * (1 + gamma) - 1, fs = std::pow(1 + u, 2) * (1 + gamma) - 1;
    double wy = 0, ws = 0;
    long at = -1;
    for (size_t i = 0; i < yr.size(); ++i) {
        double r = std::fabs(y[i] - yr[i]) / (fy * ya[i] + 1e-30);
        if (std::isnan(y[i])) r = 1e9;
        if (r > wy) at = (long)i;
        wy = std::max(wy, r);
    }
    for (size_t i = 0; i < S.size(); ++i) {
        const double got = from_t(st[i]);
        double r = std::fabs(got - S[i]) / (ut * std::fabs(S[i]) + (1 + ut) * fs * Sa[i] + 1e-30);
        if (std::isnan(got)) r = 1e9;
        ws = std::max(ws, r);
    }
    check::expect(wy <= 1 && ws <= 1,
                  "ssd_scan_mma_ns%d_%s heads %d head_dim %d d_state %d groups %d n %d (%u column blocks of %d): "
                  "y err/bound %.3f (worst at %ld), state err/bound %.3f",
                  big ? 256 : 128, tname<T>(), h, p, ns, ng, n, blocks, cols, wy, at, ws);
}

template <typename T> static void update(int h, int p, int ns, int ng) {
    Problem pr(h, p, ns, ng, 1);
    std::vector<T> st(pr.state.size());
    std::vector<double> s0(st.size());
    for (size_t i = 0; i < st.size(); ++i) {
        st[i] = to_t<T>(pr.state[i]);
        s0[i] = from_t(st[i]);
    }
    std::vector<float> y(pr.di(), NAN);
    launch({(unsigned)h, (unsigned)((p + 3) / 4), 1}, {128, 1, 1}, 0, [&] {
        const float *x = pr.xbc.data(), *dt = pr.dt.data(), *b = pr.bias.data(), *A = pr.A.data(), *D = pr.D.data();
        if constexpr (std::is_same_v<T, float>) ssm_update_f32(x, dt, b, A, D, st.data(), y.data(), h, p, ns, ng);
        else if constexpr (std::is_same_v<T, __half>) ssm_update_f16(x, dt, b, A, D, st.data(), y.data(), h, p, ns, ng);
        else ssm_update_bf16(x, dt, b, A, D, st.data(), y.data(), h, p, ns, ng);
    });
    std::vector<double> yr, ya, S, Sa;
    reference(pr, s0, 0.f, yr, ya, S, Sa);  // ssm_update has no dt floor
    const double u32 = 1.0 / 16777216, ut = unit_roundoff<T>(), f = (ns + 16) * u32;
    double wy = 0, ws = 0;
    for (size_t i = 0; i < yr.size(); ++i)
        wy = std::max(wy, std::isnan(y[i]) ? 1e9 : std::fabs(y[i] - yr[i]) / (f * ya[i] + 1e-30));
    for (size_t i = 0; i < S.size(); ++i) {
        const double got = from_t(st[i]);
        ws = std::max(ws, std::isnan(got) ? 1e9 : std::fabs(got - S[i]) / (ut * std::fabs(S[i]) + 16 * u32 * Sa[i] + 1e-30));
    }
    check::expect(wy <= 1 && ws <= 1, "ssm_update_%s heads %d head_dim %d d_state %d groups %d: y err/bound %.3f, state err/bound %.3f",
                  tname<T>(), h, p, ns, ng, wy, ws);
}

// Each case of the file: shape, whether it is a decode step (ssm_update, dt not clamped)
// or a prompt (ssd_scan_mma, dt ≥ dt_min), the inputs (f32 state), and the CPU op's y and
// final state.
static void cpu_cases(check::Cases& in) {
    const int count = in.i32();
    for (int c = 0; c < count; ++c) {
        Problem pr;
        pr.h = in.i32();
        pr.p = in.i32();
        pr.ns = in.i32();
        pr.ng = in.i32();
        pr.n = in.i32();
        const int chunk = in.i32();
        const bool decode = in.i32() != 0;
        pr.dts = in.i32();
        const float dt_min = in.f32();
        const int di = pr.di(), n = pr.n, h = pr.h, p = pr.p, ns = pr.ns, ng = pr.ng;
        pr.xbc = in.f32s((size_t)n * pr.cd());
        pr.dt = in.f32s((size_t)n * pr.dts);
        pr.bias = in.f32s(h);
        pr.A = in.f32s(h);
        pr.D = in.f32s(h);
        pr.state = in.f32s((size_t)h * p * ns);
        const auto cpu_y = in.f32s((size_t)n * di), cpu_s = in.f32s(pr.state.size());
        std::vector<float> st = pr.state, y((size_t)n * di, NAN);
        const float *x = pr.xbc.data(), *dt = pr.dt.data(), *b = pr.bias.data(), *A = pr.A.data(), *D = pr.D.data();
        if (decode) {
            launch({(unsigned)h, (unsigned)((p + 3) / 4), 1}, {128, 1, 1}, 0,
                   [&] { ssm_update_f32(x, dt, b, A, D, st.data(), y.data(), h, p, ns, ng); });
        } else {
            unsigned blocks;
            int cols;
            column_split(p, blocks, cols);
            const bool big = ns > 128;
            const size_t smem = big ? ssd_smem_bytes<256, 16>() : ssd_smem_bytes<128, 32>();
            launch({(unsigned)h, blocks, 1}, {SSD_WARPS * NEMO_WARP, 1, 1}, smem, [&] {
                (big ? ssd_scan_mma_ns256_f32 : ssd_scan_mma_ns128_f32)(x, dt, pr.dts, b, A, D, st.data(), y.data(), n, h, p,
                                                                        ns, ng, cols, dt_min);
            });
        }
        std::vector<double> s0(pr.state.begin(), pr.state.end()), yr, ya, S, Sa;
        reference(pr, s0, decode ? 0.f : dt_min, yr, ya, S, Sa);
        const double u = 1.0 / 2048, u32 = 1.0 / 16777216;
        const double g_ref = (2.0 * ns + 2.0 * chunk + 4.0 * n + 512) * u32;
        double fy, fs;
        if (decode) {
            fy = (ns + 16) * u32;
            fs = 16 * u32;
        } else {
            const double gamma = (2.0 * ns + 4.0 * std::min(n, 32) + 512) * u32;
            fy = std::pow(1 + u, 4) * (1 + gamma) - 1;
            fs = std::pow(1 + u, 2) * (1 + gamma) - 1;
        }
        // The op against the recurrence; the kernel against the op.
        double oy = 0, os = 0, ky = 0, ks = 0;
        for (size_t i = 0; i < yr.size(); ++i) {
            oy = std::max(oy, std::isnan(cpu_y[i]) ? 1e9 : std::fabs(cpu_y[i] - yr[i]) / (g_ref * ya[i] + 1e-30));
            ky = std::max(ky, std::isnan(y[i]) ? 1e9 : std::fabs(y[i] - cpu_y[i]) / ((fy + g_ref) * (1 + g_ref) * ya[i] + 1e-30));
        }
        for (size_t i = 0; i < S.size(); ++i) {
            os = std::max(os, std::isnan(cpu_s[i]) ? 1e9 : std::fabs(cpu_s[i] - S[i]) / (g_ref * Sa[i] + 1e-30));
            ks = std::max(ks, std::isnan(st[i]) ? 1e9 : std::fabs(st[i] - cpu_s[i]) / ((fs + g_ref) * (1 + g_ref) * Sa[i] + 1e-30));
        }
        check::expect(oy <= 1 && os <= 1 && ky <= 1 && ks <= 1,
                      "%s vs backend::cpu::ssm::%s, heads %d head_dim %d d_state %d groups %d n %d (op chunk %d): "
                      "op vs recurrence err/bound y %.3f state %.3f; kernel vs op err/bound y %.3f state %.3f",
                      decode ? "ssm_update_f32" : (ns > 128 ? "ssd_scan_mma_ns256_f32" : "ssd_scan_mma_ns128_f32"),
                      decode ? "ssm_step" : "ssd_chunked", h, p, ns, ng, n, chunk, oy, os, ky, ks);
    }
}

int main(int argc, char** argv) {
    check::Cases cases(argc, argv);
    cpu_cases(cases);
    cases.done();
    // head_dim 64 (2 × 32 columns) and 80 (2 × 40); d_state 128; several chunks of 32 with a
    // ragged tail; one token; every state dtype; d_state 256 (chunks of 16) once; a small
    // d_state and head_dim (one column block of 16) with three groups.
    scan<float>(2, 64, 128, 1, 100);
    scan<__nv_bfloat16>(2, 80, 128, 2, 70);
    scan<__half>(2, 64, 128, 2, 33);
    scan<float>(2, 80, 128, 1, 1);
    scan<float>(1, 64, 256, 1, 20);
    scan<float>(3, 16, 40, 3, 33);
    scan<float>(1, 64, 128, 1, 600);  // 19 chunks: the decay summed in f64 across many  // d_state and head_dim below the tile sizes (zero padding)
    update<float>(4, 80, 128, 2);
    update<__half>(2, 64, 128, 1);
    update<__nv_bfloat16>(2, 64, 128, 2);
    return check::finish("ssm");
}
