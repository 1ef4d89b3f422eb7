// Shared by the simulation drivers (kernels/sim/*.cpp): a seeded generator, exact host
// conversions for building inputs, failure reporting, and the reader of the cases file a
// Rust test writes with the CPU ops' answers. Included after kernels/sim/sim.h.
#pragma once
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// Cases written by tests/kernel_sim.rs (`Cases`): inputs made in Rust and the answers of
// the CPU op the kernel is the twin of (backend::cpu::*), as little-endian 4-byte words
// (i32 counts and shapes, f32 and u32 arrays). The file is the driver's first argument; a
// missing or short file stops the driver with a message (exit 2).
struct Cases {
    std::FILE* f = nullptr;
    const char* path = "";

    Cases(int argc, char** argv) {
        if (argc < 2) die("no cases file: run by tests/kernel_sim.rs, which writes it and passes its path");
        path = argv[1];
        f = std::fopen(path, "rb");
        if (!f) die("cannot open");
    }
    ~Cases() {
        if (f) std::fclose(f);
    }
    Cases(const Cases&) = delete;
    Cases& operator=(const Cases&) = delete;

    [[noreturn]] void die(const char* why) const {
        std::printf("FAIL cases file %s: %s\n", path, why);
        std::fflush(stdout);
        std::exit(2);
    }
    void read(void* dst, size_t bytes) {
        if (std::fread(dst, 1, bytes, f) != bytes) die("shorter than its cases");
    }
    int i32() {
        int32_t v;
        read(&v, 4);
        if (v < 0) die("a negative count or shape");
        return v;
    }
    float f32() {
        float v;
        read(&v, 4);
        return v;
    }
    std::vector<float> f32s(size_t n) {
        std::vector<float> v(n);
        read(v.data(), n * 4);
        return v;
    }
    std::vector<uint32_t> u32s(size_t n) {
        std::vector<uint32_t> v(n);
        read(v.data(), n * 4);
        return v;
    }
    // After the last case: nothing may be left.
    void done() {
        char c;
        if (std::fread(&c, 1, 1, f) != 0) die("longer than its cases");
    }
};

inline int finish(const char* name) {
    if (failures) std::printf("%s: %d check(s) FAILED\n", name, failures);
    else std::printf("%s: all checks passed\n", name);
    std::fflush(stdout);
    return failures ? 1 : 0;
}

}  // namespace check
