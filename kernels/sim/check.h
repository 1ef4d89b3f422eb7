// Shared by the simulation drivers (kernels/sim/*.cpp): a seeded generator, exact host
// conversions for building inputs, and failure reporting. Included after kernels/sim/sim.h.
#pragma once
#include <cstdarg>
#include <cstdio>
#include <random>
#include <vector>

namespace check {

inline std::mt19937_64 rng(0x6e656d6fu);
inline float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
inline float sym(float a) { return uniform(-a, a); }
inline float bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

inline int failures = 0;

// Records a failure with a clear message when `ok` is false; prints `what` either way.
inline void expect(bool ok, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs(ok ? "ok   " : "FAIL ", stdout);
    std::vprintf(fmt, ap);
    std::fputc('\n', stdout);
    va_end(ap);
    if (!ok) ++failures;
}

inline int finish(const char* name) {
    if (failures) std::printf("%s: %d check(s) FAILED\n", name, failures);
    else std::printf("%s: all checks passed\n", name);
    std::fflush(stdout);
    return failures ? 1 : 0;
}

}  // namespace check
