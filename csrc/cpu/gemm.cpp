// GEMM micro-kernels (AVX-512, AVX2+FMA, portable), chosen by the ISA in use (cpu/dispatch.h).
#include "cpu/gemm.h"

#include "cpu/avx512.h"
#include "cpu/dispatch.h"

namespace fastconv {
namespace cpu {
namespace {

// Writes the MR x NR register tile `tile` (row-major, NR per row) to C, honouring m, n, strides
// and accumulate. The fast path (full tile, unit column stride) is in each kernel.
template <typename T, int NR>
inline void store_tile_slow(const T* tile, T* c, int64_t rsc, int64_t csc, bool accumulate, int m, int n) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      T& dst = c[i * rsc + j * csc];
      dst = accumulate ? dst + tile[i * NR + j] : tile[i * NR + j];
    }
}

// Portable micro-kernel (any T): the compiler vectorises the j loop for the baseline ISA.
template <typename T, int MR, int NR>
void uk_generic(int64_t kc, const T* a, const T* b, T* c, int64_t rsc, int64_t csc, bool accumulate,
                int m, int n) {
  T acc[MR * NR] = {};
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += a[i] * b[j];
  store_tile_slow<T, NR>(acc, c, rsc, csc, accumulate, m, n);
}

#if defined(__x86_64__)
#define FC_TARGET_AVX2 __attribute__((target("avx2,fma")))

// AVX-512: 8 rows x 32 columns = 16 zmm accumulators; per k one A broadcast per row, two B loads.
FC_TARGET_AVX512 void uk_avx512_f32(int64_t kc, const float* a, const float* b, float* c, int64_t rsc,
                                    int64_t csc, bool accumulate, int m, int n) {
  __m512 r[8][2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i][0] = r[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, a += 8, b += 32) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      r[i][0] = _mm512_fmadd_ps(ai, b0, r[i][0]);
      r[i][1] = _mm512_fmadd_ps(ai, b1, r[i][1]);
    }
  }
  if (m == 8 && n == 32 && csc == 1) {
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      float* ci = c + i * rsc;
      if (accumulate) {
        r[i][0] = _mm512_add_ps(r[i][0], _mm512_loadu_ps(ci));
        r[i][1] = _mm512_add_ps(r[i][1], _mm512_loadu_ps(ci + 16));
      }
      _mm512_storeu_ps(ci, r[i][0]);
      _mm512_storeu_ps(ci + 16, r[i][1]);
    }
    return;
  }
  alignas(64) float tile[8 * 32];
  for (int i = 0; i < 8; ++i) {
    _mm512_store_ps(tile + i * 32, r[i][0]);
    _mm512_store_ps(tile + i * 32 + 16, r[i][1]);
  }
  store_tile_slow<float, 32>(tile, c, rsc, csc, accumulate, m, n);
}

// AVX2+FMA: 6 rows x 16 columns = 12 ymm accumulators.
FC_TARGET_AVX2 void uk_avx2_f32(int64_t kc, const float* a, const float* b, float* c, int64_t rsc,
                                int64_t csc, bool accumulate, int m, int n) {
  __m256 r[6][2];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) r[i][0] = r[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, a += 6, b += 16) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      r[i][0] = _mm256_fmadd_ps(ai, b0, r[i][0]);
      r[i][1] = _mm256_fmadd_ps(ai, b1, r[i][1]);
    }
  }
  if (m == 6 && n == 16 && csc == 1) {
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      float* ci = c + i * rsc;
      if (accumulate) {
        r[i][0] = _mm256_add_ps(r[i][0], _mm256_loadu_ps(ci));
        r[i][1] = _mm256_add_ps(r[i][1], _mm256_loadu_ps(ci + 8));
      }
      _mm256_storeu_ps(ci, r[i][0]);
      _mm256_storeu_ps(ci + 8, r[i][1]);
    }
    return;
  }
  alignas(32) float tile[6 * 16];
  for (int i = 0; i < 6; ++i) {
    _mm256_store_ps(tile + i * 16, r[i][0]);
    _mm256_store_ps(tile + i * 16 + 8, r[i][1]);
  }
  store_tile_slow<float, 16>(tile, c, rsc, csc, accumulate, m, n);
}

// AVX-512 double: 8 rows x 16 columns.
FC_TARGET_AVX512 void uk_avx512_f64(int64_t kc, const double* a, const double* b, double* c, int64_t rsc,
                                    int64_t csc, bool accumulate, int m, int n) {
  __m512d r[8][2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i][0] = r[i][1] = _mm512_setzero_pd();
  for (int64_t k = 0; k < kc; ++k, a += 8, b += 16) {
    const __m512d b0 = _mm512_load_pd(b), b1 = _mm512_load_pd(b + 8);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512d ai = _mm512_set1_pd(a[i]);
      r[i][0] = _mm512_fmadd_pd(ai, b0, r[i][0]);
      r[i][1] = _mm512_fmadd_pd(ai, b1, r[i][1]);
    }
  }
  alignas(64) double tile[8 * 16];
  for (int i = 0; i < 8; ++i) {
    _mm512_store_pd(tile + i * 16, r[i][0]);
    _mm512_store_pd(tile + i * 16 + 8, r[i][1]);
  }
  store_tile_slow<double, 16>(tile, c, rsc, csc, accumulate, m, n);
}
#endif  // __x86_64__

}  // namespace

template <>
MicroKernel<float> micro_kernel<float>() {
  switch (current_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512: return {8, 32, &uk_avx512_f32};
    case Isa::kAvx2: return {6, 16, &uk_avx2_f32};
#endif
    default: return {4, 16, &uk_generic<float, 4, 16>};
  }
}

template <>
MicroKernel<double> micro_kernel<double>() {
#if defined(__x86_64__)
  if (current_isa() == Isa::kAvx512) return {8, 16, &uk_avx512_f64};
#endif
  return {4, 8, &uk_generic<double, 4, 8>};
}

}  // namespace cpu
}  // namespace fastconv
