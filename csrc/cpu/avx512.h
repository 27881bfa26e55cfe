// AVX-512 code paths of the CPU kernels. The extension is compiled for baseline x86-64; functions
// marked FC_TARGET_AVX512 are compiled for AVX-512F and may only run when
// cpu::current_isa() >= Isa::kAvx512 (cpu/dispatch.h), so one binary serves every x86-64 CPU and tests
// can run each path.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#define FC_TARGET_AVX512 __attribute__((target("avx512f")))
// The AVX2 paths, likewise only when cpu::current_isa() >= Isa::kAvx2.
#define FC_TARGET_AVX2 __attribute__((target("avx2,fma")))

// GCC 12's AVX-512 intrinsics start several operations (shuffles, max, unpack) from a deliberately
// undefined vector and then warn "used uninitialized" at every call site; the warning is about the
// header, not the caller, so files that include this one silence it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
