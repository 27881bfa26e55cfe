// The small-M convolution kernels of cpu/small_m.h: im2col transposed, dot-product forward tiles,
// broadcast backward tiles, col2im; blocking from the CPU's cache sizes.
#include "cpu/small_m.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "cpu/avx512.h"
#include "cpu/direct_conv.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {
#if defined(__x86_64__)
namespace {

constexpr int kFwdRows = 6;   // weight rows per forward tile
constexpr int kFwdCols = 4;   // pixel rows per forward tile
constexpr int kBwdRows = 6;   // broadcast rows per backward tile
constexpr int kBwdCols = 64;  // columns per backward tile (4 vectors)

// A depth of `depth` split into equal chunks of at most `most` (>= 16), each a multiple of 16.
int64_t chunk_of(int64_t depth, int64_t most) {
  most = std::max<int64_t>(16, most / 16 * 16);
  return round_up(ceil_div(depth, ceil_div(depth, most)), 16);
}

// x, or 0 where a gate (relu's output) is <= 0: relu_backward's rule (a NaN gate passes x).
inline float gated(float v, const float* gate, int64_t i) { return gate && gate[i] <= 0.f ? 0.f : v; }

// Channels per transpose task (a multiple of 16: transpose_panel's register blocks).
constexpr int64_t kBlock = 64;

// A 1x1 convolution with stride 1 and no padding: output pixel pq reads input pixel pq, so colT is
// the input transposed and col2im the gradient transposed back (transpose_panel, both ways).
bool pointwise(const Conv2dShape& s) {
  return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
}

// For output pixel (p, q): off[r*S + s] = h*W + w, the offset of its tap (r, s) in an input plane,
// with h = p*sh - ph + r*dh, w = q*sw - pw + s*dw, or -1 where the tap reads padding.
void pixel_taps(const Conv2dShape& s, int64_t p, int64_t q, int64_t* off) {
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
    for (int64_t t = 0; t < s.S; ++t) {
      const int64_t w = q * s.stride_w - s.pad_w + t * s.dil_w;
      off[r * s.S + t] = h >= 0 && h < s.H && w >= 0 && w < s.W ? h * s.W + w : -1;
    }
  }
}

// colT[m][crs] of group g (M rows of CRSp floats): x[n][g*Cg + c] at the tap (r, s) of pixel m,
// 0 in the padding and for crs in [CRS, CRSp).
void im2col_transposed(const float* x, const Conv2dShape& s, int64_t g, float* colT, int64_t CRSp) {
  const int64_t PQ = s.P * s.Q, M = s.N * PQ, Cg = s.Cg(), HW = s.H * s.W, RS = s.R * s.S, CRS = Cg * RS;
  if (pointwise(s)) {  // colT[n*PQ + pq][c] = x[n][g*Cg + c][pq]: image by image, 64-channel blocks
    const int64_t cblocks = ceil_div(CRSp, kBlock);
    at::parallel_for(0, s.N * cblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / cblocks, c0 = task % cblocks * kBlock;
        transpose_panel(x + (n * s.C + g * Cg + c0) * HW, nullptr, HW, std::min(kBlock, Cg - c0), PQ,
                        colT + n * PQ * CRSp + c0, CRSp, std::min(kBlock, CRSp - c0));
      }
    });
    return;
  }
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> off(RS);
    for (int64_t m = begin; m < end; ++m) {
      const int64_t n = m / PQ, pq = m % PQ;
      pixel_taps(s, pq / s.Q, pq % s.Q, off.data());
      float* row = colT + m * CRSp;
      const float* xc = x + (n * s.C + g * Cg) * HW;
      for (int64_t c = 0; c < Cg; ++c, xc += HW, row += RS)
        for (int64_t i = 0; i < RS; ++i) row[i] = off[i] >= 0 ? xc[off[i]] : 0.f;
      for (int64_t i = CRS; i < CRSp; ++i) colT[m * CRSp + i] = 0.f;
    }
  });
}

// [sum a, sum b, sum c, sum d] of four 16-lane vectors.
FC_TARGET_AVX512 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // Per 128-bit lane: t0 = [a0+a2, b0+b2, a1+a3, b1+b3], t1 the same for c, d.
  const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  // Per 128-bit lane: [a, b, c, d] summed over that lane's 4 elements.
  const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, 0x44), _mm512_shuffle_ps(t0, t1, 0xEE));
  const __m256 v = _mm256_add_ps(_mm512_castps512_ps256(u), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

// Forward tile: for i < mi weight rows a + i*lda and j < nj pixel rows b + j*ldb, the dot product
// over depth [0, kc) (kc > 0; b rows hold zeros past the weight's depth, a is read masked past kc)
// is added to y[i*ldy + yoff[j]] (or stored when !accumulate). On the last chunk (`last`), adds
// bias[i] (when given) and applies ReLU when `relu` (v < 0 -> 0, NaN stays NaN).
FC_TARGET_AVX512 void forward_tile(const float* a, int64_t lda, int mi, const float* b, int64_t ldb, int nj,
                                   int64_t kc, float* y, int64_t ldy, const int64_t* yoff, bool accumulate,
                                   bool last, const float* bias, bool relu) {
  const float* ar[kFwdRows];
  const float* br[kFwdCols];
  for (int i = 0; i < kFwdRows; ++i) ar[i] = a + (i < mi ? i : 0) * lda;  // rows past mi: repeat row 0
  for (int j = 0; j < kFwdCols; ++j) br[j] = b + (j < nj ? j : 0) * ldb;
  __m512 r[kFwdRows][kFwdCols];
#pragma GCC unroll 6
  for (int i = 0; i < kFwdRows; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kFwdCols; ++j) r[i][j] = _mm512_setzero_ps();
  const int64_t full = kc / 16 * 16;
  for (int64_t t = 0; t < full; t += 16) {
    __m512 bv[kFwdCols];
#pragma GCC unroll 4
    for (int j = 0; j < kFwdCols; ++j) bv[j] = _mm512_loadu_ps(br[j] + t);
#pragma GCC unroll 6
    for (int i = 0; i < kFwdRows; ++i) {
      const __m512 av = _mm512_loadu_ps(ar[i] + t);
#pragma GCC unroll 4
      for (int j = 0; j < kFwdCols; ++j) r[i][j] = _mm512_fmadd_ps(av, bv[j], r[i][j]);
    }
  }
  if (full < kc) {
    const __mmask16 mask = __mmask16((1u << (kc - full)) - 1);
    __m512 bv[kFwdCols];
    for (int j = 0; j < kFwdCols; ++j) bv[j] = _mm512_maskz_loadu_ps(mask, br[j] + full);
    for (int i = 0; i < kFwdRows; ++i) {
      const __m512 av = _mm512_maskz_loadu_ps(mask, ar[i] + full);
      for (int j = 0; j < kFwdCols; ++j) r[i][j] = _mm512_fmadd_ps(av, bv[j], r[i][j]);
    }
  }
  for (int i = 0; i < mi; ++i) {
    alignas(16) float sum[4];
    _mm_store_ps(sum, reduce4(r[i][0], r[i][1], r[i][2], r[i][3]));
    float* yi = y + i * ldy;
    for (int j = 0; j < nj; ++j) {
      float v = accumulate ? yi[yoff[j]] + sum[j] : sum[j];
      if (last) {
        if (bias) v += bias[i];
        if (relu && v < 0.f) v = 0.f;
      }
      yi[yoff[j]] = v;
    }
  }
}

// Backward tile: c[i*ldc + j] (=|+=) sum over t < kc of a[i*lda + t] * b[t*ldb + j], for i < mi
// (broadcast rows; rows past mi repeat row 0 and are not stored) and j < n <= 64 (masked).
FC_TARGET_AVX512 void broadcast_tile(const float* a, int64_t lda, int mi, const float* b, int64_t ldb, int64_t n,
                                     int64_t kc, float* c, int64_t ldc, bool accumulate) {
  __mmask16 mask[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t left = std::clamp<int64_t>(n - 16 * j, 0, 16);
    mask[j] = __mmask16((1u << left) - 1);
  }
  const float* ar[kBwdRows];
  for (int i = 0; i < kBwdRows; ++i) ar[i] = a + (i < mi ? i : 0) * lda;
  __m512 r[kBwdRows][4];
#pragma GCC unroll 6
  for (int i = 0; i < kBwdRows; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) r[i][j] = _mm512_setzero_ps();
  if (n == 64) {
    for (int64_t t = 0; t < kc; ++t, b += ldb) {
      __m512 bv[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) bv[j] = _mm512_loadu_ps(b + 16 * j);
#pragma GCC unroll 6
      for (int i = 0; i < kBwdRows; ++i) {
        const __m512 av = _mm512_set1_ps(ar[i][t]);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) r[i][j] = _mm512_fmadd_ps(av, bv[j], r[i][j]);
      }
    }
  } else {
    for (int64_t t = 0; t < kc; ++t, b += ldb) {
      __m512 bv[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) bv[j] = _mm512_maskz_loadu_ps(mask[j], b + 16 * j);
#pragma GCC unroll 6
      for (int i = 0; i < kBwdRows; ++i) {
        const __m512 av = _mm512_set1_ps(ar[i][t]);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) r[i][j] = _mm512_fmadd_ps(av, bv[j], r[i][j]);
      }
    }
  }
  for (int i = 0; i < mi; ++i) {
    float* ci = c + i * ldc;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      __m512 v = r[i][j];
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[j], ci + 16 * j));
      _mm512_mask_storeu_ps(ci + 16 * j, mask[j], v);
    }
  }
}

// Depth chunk of the broadcast tiles: a 64-column chunk of the streamed operand in half of L1.
int64_t broadcast_chunk() { return std::max<int64_t>(16, cache_sizes().l1 / 2 / (kBwdCols * 4)); }

}  // namespace

bool small_m_supports(const Conv2dShape& s) {
  return current_isa() >= Isa::kAvx512 && s.N > 0 && s.P > 0 && s.Q > 0 && s.Cg() > 0 && s.Kg() > 0;
}

bool small_m_faster(const Conv2dShape& s) {
  const int64_t M = s.N * s.P * s.Q, CRS = s.Cg() * s.R * s.S;
  // colT (M x CRS floats) within a quarter of the last-level cache, so that it is still cached
  // while every weight block streams past it.
  return M <= s.Kg() && CRS >= 128 && s.Kg() >= 32 && M * CRS * 4 <= cache_sizes().l3 / 4;
}

void small_m_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s, bool relu) {
  const int64_t PQ = s.P * s.Q, M = s.N * PQ, Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, CRSp = round_up(CRS, 16);
  // Depth chunk: the tile's 6 weight rows in half of L1; pixel block: its colT chunk in half of L2.
  const int64_t kc = chunk_of(CRS, cache_sizes().l1 / 2 / (kFwdRows * 4));
  const int64_t mb = round_up(ceil_div(M, ceil_div(M, std::max<int64_t>(kFwdCols, cache_sizes().l2 / 2 / (kc * 4)))), kFwdCols);
  const int64_t mblocks = ceil_div(M, mb);
  // Weight rows per task: enough tasks to balance the threads (the split does not change any sum).
  const int64_t want = std::max<int64_t>(1, 4 * at::get_num_threads() / mblocks);
  const int64_t kb = round_up(ceil_div(Kg, want), kFwdRows), kblocks = ceil_div(Kg, kb);
  static thread_local Scratch<float> col_scratch;
  float* colT = col_scratch.get(M * CRSp);
  for (int64_t g = 0; g < s.groups; ++g) {
    im2col_transposed(x, s, g, colT, CRSp);
    const float* wg = w + g * Kg * CRS;
    at::parallel_for(0, mblocks * kblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t m0 = task / kblocks * mb, m1 = std::min(M, m0 + mb);
        const int64_t k0 = task % kblocks * kb, k1 = std::min(Kg, k0 + kb);
        for (int64_t pc = 0; pc < CRS; pc += kc) {
          const int64_t depth = std::min(kc, CRS - pc);
          const bool last = pc + kc >= CRS;
          for (int64_t k = k0; k < k1; k += kFwdRows) {
            const int mi = int(std::min<int64_t>(kFwdRows, k1 - k));
            for (int64_t m = m0; m < m1; m += kFwdCols) {
              const int nj = int(std::min<int64_t>(kFwdCols, m1 - m));
              int64_t yoff[kFwdCols];  // y[n][g*Kg + k][pq] for pixel m + j = n*PQ + pq
              for (int j = 0; j < nj; ++j) yoff[j] = ((m + j) / PQ * s.K + g * Kg) * PQ + (m + j) % PQ;
              forward_tile(wg + k * CRS + pc, CRS, mi, colT + m * CRSp + pc, CRSp, nj, depth, y + k * PQ, PQ, yoff,
                           pc > 0, last, bias ? bias + g * Kg + k : nullptr, relu);
            }
          }
        }
      }
    });
  }
}

void small_m_backward_weight(const float* dy, const float* x, float* dw, const Conv2dShape& s, const float* gate) {
  const int64_t PQ = s.P * s.Q, M = s.N * PQ, Kg = s.Kg(), CRS = s.Cg() * s.R * s.S, CRSp = round_up(CRS, 16);
  const int64_t kc = chunk_of(M, broadcast_chunk());
  const int64_t panels = ceil_div(CRS, kBwdCols);
  const int64_t want = std::max<int64_t>(1, 4 * at::get_num_threads() / panels);
  const int64_t kb = round_up(ceil_div(Kg, want), kBwdRows), kblocks = ceil_div(Kg, kb);
  static thread_local Scratch<float> col_scratch, dy_scratch;
  float* colT = col_scratch.get(M * CRSp);
  float* dyK = dy_scratch.get(Kg * M);  // dyK[k][m] = dy[n][g*Kg + k][pq] (gated)
  for (int64_t g = 0; g < s.groups; ++g) {
    im2col_transposed(x, s, g, colT, CRSp);
    at::parallel_for(0, Kg, 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        for (int64_t n = 0; n < s.N; ++n) {
          const int64_t at = (n * s.K + g * Kg + k) * PQ;
          for (int64_t pq = 0; pq < PQ; ++pq) dyK[k * M + n * PQ + pq] = gated(dy[at + pq], gate, at + pq);
        }
    });
    at::parallel_for(0, panels * kblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c0 = task / kblocks * kBwdCols, n = std::min<int64_t>(kBwdCols, CRS - c0);
        const int64_t k0 = task % kblocks * kb, k1 = std::min(Kg, k0 + kb);
        for (int64_t pc = 0; pc < M; pc += kc) {
          const int64_t depth = std::min(kc, M - pc);
          for (int64_t k = k0; k < k1; k += kBwdRows)
            broadcast_tile(dyK + k * M + pc, M, int(std::min<int64_t>(kBwdRows, k1 - k)), colT + pc * CRSp + c0,
                           CRSp, n, depth, dw + (g * Kg + k) * CRS + c0, CRS, pc > 0);
        }
      }
    });
  }
}

void small_m_backward_input(const float* dy, const float* w, float* dx, const Conv2dShape& s, const float* gate) {
  const int64_t PQ = s.P * s.Q, M = s.N * PQ, Kg = s.Kg(), Cg = s.Cg(), RS = s.R * s.S, CRS = Cg * RS;
  const int64_t CRSp = round_up(CRS, 16), HW = s.H * s.W;
  const int64_t kc = chunk_of(Kg, broadcast_chunk());
  const int64_t panels = ceil_div(CRS, kBwdCols);
  // Pixel rows per task: the panels alone may be too few tasks (e.g. 1x1 with 256 channels).
  const int64_t want = std::max<int64_t>(1, 4 * at::get_num_threads() / panels);
  const int64_t mb = round_up(ceil_div(M, want), kBwdRows), mblocks = ceil_div(M, mb);
  static thread_local Scratch<float> colg_scratch, dy_scratch;
  float* colgT = colg_scratch.get(M * CRSp);  // colgT[m][crs]: the gradient of colT
  float* dyT = dy_scratch.get(M * Kg);        // dyT[m][k] = dy[n][g*Kg + k][pq] (gated)
  for (int64_t g = 0; g < s.groups; ++g) {
    const int64_t kblocks = ceil_div(Kg, kBlock);
    at::parallel_for(0, s.N * kblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / kblocks, k0 = task % kblocks * kBlock, kn = std::min(kBlock, Kg - k0);
        const int64_t at = (n * s.K + g * Kg + k0) * PQ;
        transpose_panel(dy + at, gate ? gate + at : nullptr, PQ, kn, PQ, dyT + n * PQ * Kg + k0, Kg, kn);
      }
    });
    const float* wg = w + g * Kg * CRS;
    at::parallel_for(0, panels * mblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c0 = task / mblocks * kBwdCols, n = std::min<int64_t>(kBwdCols, CRS - c0);
        const int64_t m0 = task % mblocks * mb, m1 = std::min(M, m0 + mb);
        for (int64_t pc = 0; pc < Kg; pc += kc) {
          const int64_t depth = std::min(kc, Kg - pc);
          for (int64_t m = m0; m < m1; m += kBwdRows)
            broadcast_tile(dyT + m * Kg + pc, Kg, int(std::min<int64_t>(kBwdRows, m1 - m)), wg + pc * CRS + c0, CRS, n,
                           depth, colgT + m * CRSp + c0, CRSp, pc > 0);
        }
      }
    });
    // col2im: tasks own blocks of input planes (n, c) and add the pixels' rows of colgT into them
    // in pixel order, then tap order (fixed, whatever the split).
    if (pointwise(s)) {  // dx[n][g*Cg + c][pq] = colgT[n*PQ + pq][c]
      const int64_t cblocks = ceil_div(Cg, kBlock);
      at::parallel_for(0, s.N * cblocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t n = task / cblocks, c0 = task % cblocks * kBlock;
          transpose_panel(colgT + n * PQ * CRSp + c0, nullptr, CRSp, PQ, std::min(kBlock, Cg - c0),
                          dx + (n * s.C + g * Cg + c0) * HW, HW, PQ);
        }
      });
      continue;
    }
    const int64_t cb = std::max<int64_t>(1, ceil_div(Cg, ceil_div(2 * at::get_num_threads(), s.N)));
    const int64_t cblocks = ceil_div(Cg, cb);
    at::parallel_for(0, s.N * cblocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> off(RS);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / cblocks, c0 = task % cblocks * cb, c1 = std::min(Cg, c0 + cb);
        float* planes = dx + (n * s.C + g * Cg) * HW;
        std::fill(planes + c0 * HW, planes + c1 * HW, 0.f);
        for (int64_t pq = 0; pq < PQ; ++pq) {
          pixel_taps(s, pq / s.Q, pq % s.Q, off.data());
          const float* row = colgT + (n * PQ + pq) * CRSp;
          for (int64_t c = c0; c < c1; ++c)
            for (int64_t i = 0; i < RS; ++i)
              if (off[i] >= 0) planes[c * HW + off[i]] += row[c * RS + i];
        }
      }
    });
  }
}

#else  // not x86-64: no AVX-512, so dispatch never chooses these.
bool small_m_supports(const Conv2dShape&) { return false; }
bool small_m_faster(const Conv2dShape&) { return false; }
void small_m_forward(const float*, const float*, const float*, float*, const Conv2dShape&, bool) { std::abort(); }
void small_m_backward_input(const float*, const float*, float*, const Conv2dShape&, const float*) { std::abort(); }
void small_m_backward_weight(const float*, const float*, float*, const Conv2dShape&, const float*) { std::abort(); }
#endif

}  // namespace cpu
}  // namespace fastconv
