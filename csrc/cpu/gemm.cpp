// GEMM micro-kernels (AVX-512, AVX2+FMA, portable), chosen by the ISA in use (cpu/dispatch.h).
#include "cpu/gemm.h"

#include <cstring>

#include "cpu/avx512.h"
#include "cpu/dispatch.h"

#include <c10/util/Exception.h>

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
#define FC_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

// Writes the 8 x 32 float32 accumulators r (rows i: r[i][0], r[i][1]) to C.
FC_TARGET_AVX512 inline void store_tile_8x32(__m512 (&r)[8][2], float* c, int64_t rsc, int64_t csc,
                                             bool accumulate, int m, int n) {
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
  store_tile_8x32(r, c, rsc, csc, accumulate, m, n);
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

// AVX512_BF16: 8 rows x 32 columns of float32 accumulators as uk_avx512_f32, two depths per step:
// vdpbf16ps adds a[i][k]*b[k][j] + a[i][k+1]*b[k+1][j] to lane j (products exact in float32).
// a and b are to_pairs panels; kc may be odd (its last pair ends in a zero).
FC_TARGET_AVX512_BF16 void uk_avx512_bf16(int64_t kc, const c10::BFloat16* a, const c10::BFloat16* b, float* c,
                                          int64_t rsc, int64_t csc, bool accumulate, int m, int n) {
  __m512 r[8][2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i][0] = r[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k += 2, a += 16, b += 64) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 32);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      int32_t pair;  // row i's (k, k+1)
      std::memcpy(&pair, a + 2 * i, sizeof pair);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
      r[i][0] = _mm512_dpbf16_ps(r[i][0], ai, b0);
      r[i][1] = _mm512_dpbf16_ps(r[i][1], ai, b1);
    }
  }
  store_tile_8x32(r, c, rsc, csc, accumulate, m, n);
}

// to_pairs of one panel for widths dividing 32: 64 values (64/width depths, an even count) at a
// time, re-laid by two 16-bit permutes; out[o] = in[(2*(o/(2w)) + o%2)*w + (o%(2w))/2] within the
// 64. Returns the first depth left to the caller.
FC_TARGET_AVX512_BF16 int64_t to_pairs_avx512(const uint16_t* src, uint16_t* dst, int64_t kc, int w) {
  alignas(64) uint16_t idx[64];
  for (int o = 0; o < 64; ++o) idx[o] = uint16_t((2 * (o / (2 * w)) + o % 2) * w + (o % (2 * w)) / 2);
  const __m512i i0 = _mm512_load_si512(idx), i1 = _mm512_load_si512(idx + 32);
  const int64_t rows = 64 / w;
  int64_t k = 0;
  for (; k + rows <= kc; k += rows) {
    const __m512i z0 = _mm512_loadu_si512(src + k * w), z1 = _mm512_loadu_si512(src + k * w + 32);
    _mm512_storeu_si512(dst + k * w, _mm512_permutex2var_epi16(z0, i0, z1));
    _mm512_storeu_si512(dst + k * w + 32, _mm512_permutex2var_epi16(z0, i1, z1));
  }
  return k;
}
#endif  // __x86_64__

}  // namespace

const c10::BFloat16* to_pairs(const c10::BFloat16* src, c10::BFloat16* dst, int64_t xn, int64_t kc, int width) {
  const int64_t kp = round_up(kc, 2), panels = ceil_div(xn, width);
  for (int64_t p = 0; p < panels; ++p) {
    // bf16 values as their bits: a copy, no arithmetic
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src) + p * width * kc;
    uint16_t* d = reinterpret_cast<uint16_t*>(dst) + p * width * kp;
    int64_t k = 0;
#if defined(__x86_64__)
    if (current_isa() == Isa::kAvx512Bf16 && 32 % width == 0) k = to_pairs_avx512(s, d, kc, width);
#endif
    for (; k < kc; k += 2)  // element (k, x) at d[(k/2)*2w + 2x + k%2] = d[k*w + 2x + k%2], k even
      for (int x = 0; x < width; ++x) {
        d[k * width + 2 * x] = s[k * width + x];
        d[k * width + 2 * x + 1] = k + 1 < kc ? s[(k + 1) * width + x] : uint16_t(0);
      }
  }
  return dst;
}

template <>
MicroKernel<float> micro_kernel<float>() {
  switch (current_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512Bf16:  // float32 is the same there
    case Isa::kAvx512: return {8, 32, &uk_avx512_f32};
    case Isa::kAvx2: return {6, 16, &uk_avx2_f32};
#endif
    default: return {4, 16, &uk_generic<float, 4, 16>};
  }
}

template <>
MicroKernel<c10::BFloat16> micro_kernel<c10::BFloat16>() {
#if defined(__x86_64__)
  if (current_isa() == Isa::kAvx512Bf16) return {8, 32, &uk_avx512_bf16};
#endif
  TORCH_INTERNAL_ASSERT(false, "fastconv: the bfloat16 GEMM needs AVX512_BF16 (cpu::takes_bf16)");
}

template <>
MicroKernel<double> micro_kernel<double>() {
#if defined(__x86_64__)
  if (current_isa() >= Isa::kAvx512) return {8, 16, &uk_avx512_f64};
#endif
  return {4, 8, &uk_generic<double, 4, 8>};
}

}  // namespace cpu
}  // namespace fastconv
