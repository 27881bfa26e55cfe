// Portable vectors for the CPU kernels that are written once for every ISA: VB bytes of T in GCC's
// vector extension. The compiler emits the instructions of the function a helper is inlined into
// (zmm in an FC_TARGET_AVX512 function, ymm in an FC_TARGET_AVX2 one, xmm on the baseline), so a
// kernel templated on VB and instantiated inside one function per ISA serves every x86-64 CPU.
// The helpers are always inlined: no vector crosses a call between functions of different ISAs.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/avx512.h"

#define FC_INLINE inline __attribute__((always_inline))

// Vectors passed between always-inlined helpers; their never-called stand-alone copies would warn
// about the ABI of vector arguments without the ISA enabled.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastconv {
namespace cpu {

template <typename T, int VB>
struct Vec {
  typedef T type __attribute__((vector_size(VB)));
  static constexpr int kLanes = VB / int(sizeof(T));
};

// An unaligned load of one vector.
template <typename V, typename T>
FC_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The first `lanes` lanes of v to p.
template <typename V, typename T>
FC_INLINE void store(T* p, const V& v, int lanes) {
  if (lanes * int(sizeof(T)) == int(sizeof(V))) {
    std::memcpy(p, &v, sizeof v);
  } else {
    std::memcpy(p, &v, size_t(lanes) * sizeof(T));
  }
}

// A non-temporal store of one whole vector to p, which must be aligned to the vector; callers end
// a run of them with stream_fence(). Vectors of 64 or 32 bytes only (the AVX-512 and AVX2 widths,
// in functions of that ISA; the intrinsics sit in plain inline functions of their own target,
// which GCC inlines once the caller has been inlined into a function of that ISA).
#if defined(__x86_64__)
FC_TARGET_AVX512 inline void stream_64(void* p, __m512i v) { _mm512_stream_si512(static_cast<__m512i*>(p), v); }
FC_TARGET_AVX2 inline void stream_32(void* p, __m256i v) { _mm256_stream_si256(static_cast<__m256i*>(p), v); }
#endif

template <typename V, typename T>
FC_INLINE void stream(T* p, const V& v) {
#if defined(__x86_64__)
  static_assert(sizeof(V) == 64 || sizeof(V) == 32, "stream: AVX-512 or AVX2 vectors");
  if constexpr (sizeof(V) == 64) {
    stream_64(p, reinterpret_cast<const __m512i&>(v));
  } else {
    stream_32(p, reinterpret_cast<const __m256i&>(v));
  }
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

// Orders the streamed stores before the stores that follow (another thread may read them next).
FC_INLINE void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

}  // namespace cpu
}  // namespace fastconv
