// max_pool2d forward (with indices) and backward on the CPU, output rows of all planes in
// parallel. PyTorch's conventions: a window's maximum is updated when `value > max || isnan(value)`
// (so ties keep the first maximum and the window's last NaN wins), starting from -inf with the
// index of the window's first element inside the input; indices are offsets h*W + w into the
// input plane.
//   forward:  2x2 stride 2 (float, AVX-512 or AVX2) one output row at a time, full-width loads of
//             its two input rows split into even/odd columns by permutes; any other configuration
//             (float, AVX-512) 16 outputs of a row at a time from its window rows staged as
//             stride-phase rows; other dtypes and ISAs a scalar loop.
//   backward: disjoint windows (stride >= kernel, dilation 1) are done one output row at a time,
//             each dx element written once (no zeroing pass): 2x2/2 float with AVX-512 selects dy
//             or 0 per window position; other disjoint windows zero the row's input rows and store
//             the gradients while in cache. Overlapping windows zero-fill and scatter-add per plane.
//   channels_last: NHWC kernels (below), vectorised along C (AVX-512 float with masked tails, a
//             portable loop otherwise); outputs and indices channels_last, indices the same in-plane
//             offsets as NCHW.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "cpu/dispatch.h"
#include "cpu/avx512.h"
#include "cpu/gemm.h"  // Scratch


namespace fastconv {
namespace cpu {
namespace {


// Work is split over output rows of all planes (row r = plane * P + p), so that both threads are
// busy even when N*C is small; about this many input elements per task.
constexpr int64_t kGrainElems = 1 << 14;

int64_t row_grain(const Pool2dShape& s) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, s.Q * s.kh * s.kw)); }

// The 2x2 stride-2 row kernels (AVX-512, AVX2) handle exactly this configuration (floor or ceil mode).
bool is_2x2_s2(const Pool2dShape& s) {
  return s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.ph == 0 && s.pw == 0 && s.dh == 1 && s.dw == 1;
}

// Windows of different outputs share no input element (and none is skipped by dilation), so the
// backward pass can write each input element once.
bool windows_disjoint(const Pool2dShape& s) { return s.dh == 1 && s.dw == 1 && s.sh >= s.kh && s.sw >= s.kw; }

// ---- Forward, any configuration: output row p of one plane (xp: H x W, yrow/irow: Q). ----
template <typename T>
void pool_row_general(const T* xp, T* yrow, int64_t* irow, int64_t p, const Pool2dShape& s) {
  int64_t h0 = p * s.sh - s.ph;
  const int64_t h1 = std::min(h0 + (s.kh - 1) * s.dh + 1, s.H);
  while (h0 < 0) h0 += s.dh;
  for (int64_t q = 0; q < s.Q; ++q) {
    int64_t w0 = q * s.sw - s.pw;
    const int64_t w1 = std::min(w0 + (s.kw - 1) * s.dw + 1, s.W);
    while (w0 < 0) w0 += s.dw;
    T best = -std::numeric_limits<T>::infinity();
    int64_t best_i = h0 * s.W + w0;
    for (int64_t h = h0; h < h1; h += s.dh) {
      const T* xr = xp + h * s.W;
      for (int64_t w = w0; w < w1; w += s.dw) {
        const T v = xr[w];
        if (v > best || std::isnan(v)) {
          best = v;
          best_i = h * s.W + w;
        }
      }
    }
    yrow[q] = best;
    irow[q] = best_i;
  }
}

// ---- Backward, disjoint windows (dilation 1, stride >= kernel): output row p owns input rows
// [p*sh - ph, (p+1)*sh - ph) (the first row from 0, the last to H), contiguous in the plane. They
// are zeroed, then each window's gradient is stored (not added: no other window reaches that
// element) while the rows are still in cache. Returns false if some index lies outside its
// window (possible only for indices not produced by the forward pass); nothing is written for it
// (it might lie in another thread's rows) and the caller redoes the whole tensor with the scatter.
template <typename T>
bool unpool_row_disjoint(const T* dyrow, const int64_t* irow, T* dxp, int64_t p, const Pool2dShape& s) {
  const int64_t r0 = p == 0 ? 0 : std::min(p * s.sh - s.ph, s.H);
  const int64_t r1 = p == s.P - 1 ? s.H : std::min((p + 1) * s.sh - s.ph, s.H);
  std::fill(dxp + r0 * s.W, dxp + r1 * s.W, T(0));
  const int64_t h_lo = std::max<int64_t>(p * s.sh - s.ph, 0), h_hi = std::min(p * s.sh - s.ph + s.kh, s.H);
  bool ok = true;
  for (int64_t q = 0; q < s.Q; ++q) {
    const int64_t w_lo = std::max<int64_t>(q * s.sw - s.pw, 0), w_hi = std::min(q * s.sw - s.pw + s.kw, s.W);
    const int64_t i = irow[q];
    bool in_window = false;
    for (int64_t h = h_lo; h < h_hi; ++h) in_window |= i - h * s.W >= w_lo && i - h * s.W < w_hi;
    if (!in_window) {
      ok = false;
      continue;
    }
    dxp[i] = dyrow[q];
  }
  return ok;
}

#if defined(__x86_64__)

// The 2x2 stride-2 kernels below (float, no padding, floor or ceil mode) work on one output row p
// of one plane at a time: its outputs j..j+15 come from input columns [2j, 2j+32) of rows a = 2p
// and b = 2p+1 (b missing when a ceil_mode window is cut by the bottom edge), read as two full
// 16-float vectors per row and split into even and odd columns with permutes. Columns past the
// right edge (the last block, or the odd column of a ceil_mode window cut by the edge) are masked.
// In-plane indices are kept as int32 lanes (the caller guarantees H*W + W < 2^31).

// The columns [c, c+16) that exist when the row has `cols` columns from c on (cols may be <= 0).
FC_TARGET_AVX512 inline __mmask16 first_lanes(int64_t cols) {
  return cols >= 16 ? __mmask16(0xFFFF) : cols <= 0 ? __mmask16(0) : __mmask16((1u << cols) - 1);
}

// Forward, output row p: a, b the input rows 2p, 2p+1 (b null when missing), y / idx the Q outputs.
// Missing columns read as -inf, which never wins. The four candidates are visited in PyTorch's scan
// order (2p,2j) (2p,2j+1) (2p+1,2j) (2p+1,2j+1) and replace the maximum when greater or NaN,
// exactly as pool_row_general.
FC_TARGET_AVX512 void pool_row_2x2_avx512(const float* a, const float* b, float* y, int64_t* idx, int64_t p,
                                          const Pool2dShape& s) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i one = _mm512_set1_epi32(1), wv = _mm512_set1_epi32(int(s.W));
  for (int64_t j = 0; j < s.Q; j += 16) {
    const __mmask16 n = first_lanes(s.Q - j), m0 = first_lanes(s.W - 2 * j), m1 = first_lanes(s.W - 2 * j - 16);
    const __m512 a0 = _mm512_mask_loadu_ps(ninf, m0, a + 2 * j), a1 = _mm512_mask_loadu_ps(ninf, m1, a + 2 * j + 16);
    __m512 best = _mm512_permutex2var_ps(a0, even, a1);
    __mmask16 col = 0, row = 0;  // which of the four the maximum is
    auto visit = [&](__m512 v, bool odd_col, bool b_row) FC_TARGET_AVX512 {
      const __mmask16 m = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      best = _mm512_mask_mov_ps(best, m, v);
      col = odd_col ? __mmask16(col | m) : __mmask16(col & ~m);
      row = b_row ? __mmask16(row | m) : __mmask16(row & ~m);
    };
    visit(_mm512_permutex2var_ps(a0, odd, a1), true, false);
    if (b) {
      const __m512 b0 = _mm512_mask_loadu_ps(ninf, m0, b + 2 * j), b1 = _mm512_mask_loadu_ps(ninf, m1, b + 2 * j + 16);
      visit(_mm512_permutex2var_ps(b0, even, b1), false, true);
      visit(_mm512_permutex2var_ps(b0, odd, b1), true, true);
    }
    _mm512_mask_storeu_ps(y + j, n, best);
    // index = 2p*W + 2j + 2*lane + col + row*W
    __m512i i = _mm512_add_epi32(_mm512_set1_epi32(int(2 * p * s.W + 2 * j)), _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1));
    i = _mm512_mask_add_epi32(i, col, i, one);
    i = _mm512_mask_add_epi32(i, row, i, wv);
    _mm512_mask_storeu_epi64(idx + j, __mmask8(n), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(i)));
    _mm512_mask_storeu_epi64(idx + j + 8, __mmask8(n >> 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(i, 1)));
  }
}

// ---- Forward, any other configuration (float, AVX-512), vectorised along the output row: output
// row p scans its window rows (ascending) and in each its taps (ascending) for 16 outputs q at
// once, with pool_row_general's update rule, so values and indices are identical to it. The window
// rows are staged first as sw phase rows, -inf where a window leaves the input (padding, ceil_mode's
// cut windows; -inf never wins): phase f, column j holds input column j*sw + f - pw, so tap c of
// outputs q.. reads phase (c*dw) % sw from column q + (c*dw) / sw on, contiguously. A task stages
// each input row once for the consecutive output rows that share it (a ring of window-height slots).

// Whether every index and candidate index fits the int32 lanes.
bool pool_any_fits(const Pool2dShape& s) {
  return (s.H + 1) * (s.W + 1) + s.Q * s.sw + s.kw * s.dw + s.pw < (int64_t(1) << 31);
}

// Staged columns per phase: every column a block of 16 outputs reads.
int64_t staged_cols(const Pool2dShape& s) { return round_up(s.Q, 16) + (s.kw - 1) * s.dw / s.sw + 1; }

// d[f*J + j] = x[j*sw + f - pw] (one input row, W columns), -inf outside the row.
FC_TARGET_AVX512 void stage_pool_row(const float* x, const Pool2dShape& s, int64_t J, float* d) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t f = 0; f < s.sw; ++f) {
    float* df = d + f * J;
    const int64_t lo = std::min(ceil_div(std::max<int64_t>(0, s.pw - f), s.sw), J);
    const int64_t hi = std::clamp<int64_t>(floor_div(s.W - 1 + s.pw - f, s.sw) + 1, lo, J);
    const float* xf = x + f - s.pw;
    std::fill(df, df + lo, ninf);
    for (int64_t j = lo; j < hi; ++j) df[j] = xf[j * s.sw];
    std::fill(df + hi, df + J, ninf);
  }
}

// Output rows [r0, r1) (row r = plane * P + p). first[q] (16-padded): the column of output q's
// first window element inside the input, its index's column when nothing in the window wins.
FC_TARGET_AVX512 void pool_rows_any_avx512(const float* x, float* y, int64_t* idx, int64_t r0, int64_t r1,
                                           const Pool2dShape& s, const int32_t* first) {
  const int64_t J = staged_cols(s), slots = (s.kh - 1) * s.dh + 1;
  static thread_local Scratch<float> stage_scratch;
  float* stage = stage_scratch.get(slots * s.sw * J);
  std::vector<int64_t> tag(size_t(slots), -1);  // the row (plane*H + h) each slot holds
  std::vector<const float*> rows(size_t(s.kh));
  std::vector<int64_t> row_h(size_t(s.kh)), tap_at(size_t(s.kw));  // tap c's staged phase and column
  for (int64_t c = 0; c < s.kw; ++c) tap_at[size_t(c)] = (c * s.dw) % s.sw * J + (c * s.dw) / s.sw;
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i lane_col =  // lane l: l * sw
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(int(s.sw)));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t plane = r / s.P, p = r % s.P;
    int64_t h_first = p * s.sh - s.ph, nrows = 0;  // the window's first row inside the input, as pool_row_general
    while (h_first < 0) h_first += s.dh;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t h = p * s.sh - s.ph + i * s.dh;
      if (h < 0 || h >= s.H) continue;
      const int64_t key = plane * s.H + h;
      float* slot = stage + (h % slots) * s.sw * J;
      if (tag[size_t(h % slots)] != key) {
        stage_pool_row(x + key * s.W, s, J, slot);
        tag[size_t(h % slots)] = key;
      }
      rows[size_t(nrows)] = slot;
      row_h[size_t(nrows++)] = h;
    }
    float* yr = y + r * s.Q;
    int64_t* ir = idx + r * s.Q;
    for (int64_t q = 0; q < s.Q; q += 16) {
      __m512 best = ninf;
      __m512i bi = _mm512_add_epi32(_mm512_loadu_si512(first + q), _mm512_set1_epi32(int(h_first * s.W)));
      for (int64_t i = 0; i < nrows; ++i) {
        const float* row = rows[size_t(i)] + q;
        const int64_t base = row_h[size_t(i)] * s.W + q * s.sw - s.pw;  // input offset of lane 0, tap 0
        for (int64_t c = 0; c < s.kw; ++c) {
          const __m512 v = _mm512_loadu_ps(row + tap_at[size_t(c)]);
          const __mmask16 m = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
          best = _mm512_mask_mov_ps(best, m, v);
          bi = _mm512_mask_add_epi32(bi, m, lane_col, _mm512_set1_epi32(int(base + c * s.dw)));
        }
      }
      const __mmask16 n = first_lanes(s.Q - q);
      _mm512_mask_storeu_ps(yr + q, n, best);
      _mm512_mask_storeu_epi64(ir + q, __mmask8(n), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(bi)));
      _mm512_mask_storeu_epi64(ir + q + 8, __mmask8(n >> 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(bi, 1)));
    }
  }
}

// One 2x2 window (outputs j of row p, portable): as pool_row_general for this configuration.
inline void pool_window_2x2(const float* a, const float* b, float* y, int64_t* idx, int64_t j, int64_t p,
                            const Pool2dShape& s) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t bi = 2 * p * s.W + 2 * j;
  for (int r = 0; r < (b ? 2 : 1); ++r)
    for (int64_t w = 2 * j; w < std::min(2 * j + 2, s.W); ++w) {
      const float v = (r ? b : a)[w];
      if (v > best || std::isnan(v)) best = v, bi = (2 * p + r) * s.W + w;
    }
  y[j] = best;
  idx[j] = bi;
}

// AVX2: the same scan, 8 outputs a step from two 8-float loads per input row; even/odd columns by
// an in-lane shuffle and a cross-lane 64-bit permute. Blocks cut by the right edge go through
// pool_window_2x2.
FC_TARGET_AVX2 void pool_row_2x2_avx2(const float* a, const float* b, float* y, int64_t* idx, int64_t p,
                                      const Pool2dShape& s) {
  auto split = [](__m256 v0, __m256 v1, __m256& even, __m256& odd) FC_TARGET_AVX2 {
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(v0, v1, 0x88)), 0xD8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(v0, v1, 0xDD)), 0xD8));
  };
  const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), one = _mm256_set1_epi32(1);
  const __m256i wv = _mm256_set1_epi32(int(s.W));
  int64_t j = 0;
  for (; j + 8 <= s.Q && 2 * j + 16 <= s.W; j += 8) {
    __m256 best, v;
    split(_mm256_loadu_ps(a + 2 * j), _mm256_loadu_ps(a + 2 * j + 8), best, v);
    __m256i col = _mm256_setzero_si256(), row = _mm256_setzero_si256();  // all-ones lanes: odd column / row b
    auto visit = [&](__m256 c, bool odd_col, bool b_row) FC_TARGET_AVX2 {
      const __m256i m = _mm256_castps_si256(
          _mm256_or_ps(_mm256_cmp_ps(c, best, _CMP_GT_OQ), _mm256_cmp_ps(c, c, _CMP_UNORD_Q)));
      best = _mm256_blendv_ps(best, c, _mm256_castsi256_ps(m));
      col = odd_col ? _mm256_or_si256(col, m) : _mm256_andnot_si256(m, col);
      row = b_row ? _mm256_or_si256(row, m) : _mm256_andnot_si256(m, row);
    };
    visit(v, true, false);
    if (b) {
      __m256 be, bo;
      split(_mm256_loadu_ps(b + 2 * j), _mm256_loadu_ps(b + 2 * j + 8), be, bo);
      visit(be, false, true);
      visit(bo, true, true);
    }
    _mm256_storeu_ps(y + j, best);
    __m256i i = _mm256_add_epi32(_mm256_set1_epi32(int(2 * p * s.W + 2 * j)), lane2);
    i = _mm256_add_epi32(_mm256_add_epi32(i, _mm256_and_si256(col, one)), _mm256_and_si256(row, wv));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + j), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + j + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(i, 1)));
  }
  for (; j < s.Q; ++j) pool_window_2x2(a, b, y, idx, j, p, s);
}

// Backward, output row p: each element of the input rows 2p, 2p+1 (da, db; db null when missing)
// written exactly once: each index is compared with its window's four positions, dy or 0 selected
// per position, even and odd columns interleaved back; the columns no window covers (the last one
// in floor mode with odd W) are zeroed. Returns false if some index is not in its window.
FC_TARGET_AVX512 bool unpool_row_2x2_avx512(const float* dy, const int64_t* idx, float* da, float* db, int64_t p,
                                            const Pool2dShape& s) {
  const __m512i lane2 = _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_add_epi32(ilo, _mm512_set1_epi32(8));
  const __m512i k1 = _mm512_set1_epi32(1), kw = _mm512_set1_epi32(int(s.W)), kw1 = _mm512_set1_epi32(int(s.W + 1));
  const int64_t ncols = std::min(2 * s.Q, s.W);  // the columns the windows cover
  __mmask16 bad = 0;
  for (int64_t j = 0; j < s.Q; j += 16) {
    const __mmask16 n = first_lanes(s.Q - j);
    const __mmask16 odd_ok = first_lanes(s.W / 2 - j);  // windows whose odd column exists
    const __m512 g = _mm512_maskz_loadu_ps(n, dy + j);
    // Saturating narrowing: an index outside int32 cannot alias a position of its window.
    const __m256i lo = _mm512_cvtsepi64_epi32(_mm512_maskz_loadu_epi64(__mmask8(n), idx + j));
    const __m256i hi = _mm512_cvtsepi64_epi32(_mm512_maskz_loadu_epi64(__mmask8(n >> 8), idx + j + 8));
    const __m512i off = _mm512_sub_epi32(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                         _mm512_add_epi32(_mm512_set1_epi32(int(2 * p * s.W + 2 * j)), lane2));
    const __mmask16 a_e = _mm512_cmpeq_epi32_mask(off, _mm512_setzero_si512());
    const __mmask16 a_o = _mm512_cmpeq_epi32_mask(off, k1) & odd_ok;
    const __mmask16 b_e = db ? _mm512_cmpeq_epi32_mask(off, kw) : __mmask16(0);
    const __mmask16 b_o = db ? __mmask16(_mm512_cmpeq_epi32_mask(off, kw1) & odd_ok) : __mmask16(0);
    bad |= n & ~(a_e | a_o | b_e | b_o);
    const __mmask16 w0 = first_lanes(ncols - 2 * j), w1 = first_lanes(ncols - 2 * j - 16);
    const __m512 ae = _mm512_maskz_mov_ps(a_e, g), ao = _mm512_maskz_mov_ps(a_o, g);
    _mm512_mask_storeu_ps(da + 2 * j, w0, _mm512_permutex2var_ps(ae, ilo, ao));
    _mm512_mask_storeu_ps(da + 2 * j + 16, w1, _mm512_permutex2var_ps(ae, ihi, ao));
    if (db) {
      const __m512 be = _mm512_maskz_mov_ps(b_e, g), bo = _mm512_maskz_mov_ps(b_o, g);
      _mm512_mask_storeu_ps(db + 2 * j, w0, _mm512_permutex2var_ps(be, ilo, bo));
      _mm512_mask_storeu_ps(db + 2 * j + 16, w1, _mm512_permutex2var_ps(be, ihi, bo));
    }
  }
  for (int64_t w = ncols; w < s.W; ++w) {
    da[w] = 0.f;
    if (db) db[w] = 0.f;
  }
  return bad == 0;
}
#endif  // __x86_64__

// The ISA of the 2x2 stride-2 row kernels that run s on T (their int32 in-plane indices must fit);
// kGeneric: none.
template <typename T>
Isa fast_2x2(const Pool2dShape& s) {
  const bool fits = std::is_same_v<T, float> && is_2x2_s2(s) && s.H * s.W + s.W < (int64_t(1) << 31);
  return fits ? current_isa() : Isa::kGeneric;
}

#if defined(__x86_64__)
// Any configuration on float with AVX-512 (pool_rows_any_avx512).
void max_pool2d_forward_any(const float* x, float* y, int64_t* idx, const Pool2dShape& s) {
  std::vector<int32_t> first(size_t(round_up(s.Q, 16)), 0);
  for (int64_t q = 0; q < s.Q; ++q) {
    int64_t w0 = q * s.sw - s.pw;
    while (w0 < 0) w0 += s.dw;
    first[size_t(q)] = int32_t(w0);
  }
  at::parallel_for(0, s.N * s.C * s.P, row_grain(s), [&](int64_t begin, int64_t end) {
    pool_rows_any_avx512(x, y, idx, begin, end, s, first.data());
  });
}
#endif

template <typename T>
void max_pool2d_forward(const T* x, T* y, int64_t* idx, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W;
  const Isa fast = fast_2x2<T>(s);
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (fast == Isa::kGeneric && current_isa() >= Isa::kAvx512 && pool_any_fits(s)) return max_pool2d_forward_any(x, y, idx, s);
  }
#endif
  at::parallel_for(0, s.N * s.C * s.P, row_grain(s), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // output row r = plane * P + p
      const int64_t plane = r / s.P, p = r % s.P;
#if defined(__x86_64__)
      if constexpr (std::is_same_v<T, float>) {
        if (fast != Isa::kGeneric) {
          const float* a = x + plane * HW + 2 * p * s.W;
          (fast >= Isa::kAvx512 ? pool_row_2x2_avx512 : pool_row_2x2_avx2)(
              a, 2 * p + 1 < s.H ? a + s.W : nullptr, y + r * s.Q, idx + r * s.Q, p, s);
          continue;
        }
      }
#endif
      pool_row_general(x + plane * HW, y + r * s.Q, idx + r * s.Q, p, s);
    }
  });
}

// Any configuration: zero-fill dx, then scatter-add dy[j] into dx[idx[j]], per plane in order, so
// the sums of overlapping windows are deterministic. Indices are range-checked on the way (no
// separate pass): one outside its plane is skipped, and check_pool_indices then raises for it.
template <typename T>
void max_pool2d_backward_scatter(const T* dy, const at::Tensor& indices, T* dx, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    bool out = false;
    for (int64_t plane = begin; plane < end; ++plane) {
      T* dxp = dx + plane * HW;
      std::fill(dxp, dxp + HW, T(0));
      const T* dyp = dy + plane * PQ;
      const int64_t* ip = idx + plane * PQ;
      for (int64_t j = 0; j < PQ; ++j) {
        const bool inside = uint64_t(ip[j]) < uint64_t(HW);
        out |= !inside;
        if (inside) dxp[ip[j]] += dyp[j];
      }
    }
    if (out) bad = true;
  });
  if (bad) check_pool_indices(indices, s.H, s.W);
}

// indices: range-checked by the scatter as it goes (the disjoint path validates each index against
// its window, which implies the range).
template <typename T>
void max_pool2d_backward(const T* dy, const at::Tensor& indices, T* dx, const Pool2dShape& s) {
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  if (!windows_disjoint(s)) return max_pool2d_backward_scatter(dy, indices, dx, s);
  const int64_t HW = s.H * s.W;
  const bool fast = fast_2x2<T>(s) >= Isa::kAvx512;
  std::atomic<bool> all_ok{true};
  at::parallel_for(0, s.N * s.C * s.P, row_grain(s), [&](int64_t begin, int64_t end) {
    bool ok = true;
    for (int64_t r = begin; r < end; ++r) {  // output row r = plane * P + p
      const int64_t plane = r / s.P, p = r % s.P;
#if defined(__x86_64__)
      if constexpr (std::is_same_v<T, float>) {
        if (fast) {
          float* da = dx + plane * HW + 2 * p * s.W;
          ok &= unpool_row_2x2_avx512(dy + r * s.Q, idx + r * s.Q, da, 2 * p + 1 < s.H ? da + s.W : nullptr, p, s);
          if (p == s.P - 1) std::fill(dx + plane * HW + std::min(2 * s.P, s.H) * s.W, dx + (plane + 1) * HW, 0.f);
          continue;
        }
      }
#endif
      ok &= unpool_row_disjoint(dy + r * s.Q, idx + r * s.Q, dx + plane * HW, p, s);
    }
    if (!ok) all_ok = false;
  });
  // Some index was not inside its own window: not a forward pass's output, but still a valid
  // scatter request, so honour it exactly.
  if (!all_ok) max_pool2d_backward_scatter(dy, indices, dx, s);
}

// ---- channels_last (NHWC): x (N, H, W, C), y and indices (N, P, Q, C), dx (N, H, W, C) ----
// The same window scan as pool_row_general, vectorised along C: each output pixel's C maxima are
// computed together, reading C contiguous values per window position. Indices are the same
// in-plane offsets h*W + w as in NCHW (PyTorch's convention for either layout).

// The input rows [h0, h1) step dh and columns [w0, w1) step dw of output (p, q)'s window, clipped
// to the input; the window's first element, h0*W + w0, is its index when nothing in it wins.
struct Window {
  int64_t h0, h1, w0, w1;
};
inline Window window_of(int64_t p, int64_t q, const Pool2dShape& s) {
  Window win;
  win.h0 = p * s.sh - s.ph;
  win.h1 = std::min(win.h0 + (s.kh - 1) * s.dh + 1, s.H);
  while (win.h0 < 0) win.h0 += s.dh;
  win.w0 = q * s.sw - s.pw;
  win.w1 = std::min(win.w0 + (s.kw - 1) * s.dw + 1, s.W);
  while (win.w0 < 0) win.w0 += s.dw;
  return win;
}

// Output pixel (p, q) of one image: xn the image (H, W, C), y / idx its C outputs.
template <typename T>
void pool_pixel_nhwc(const T* xn, T* y, int64_t* idx, int64_t p, int64_t q, const Pool2dShape& s) {
  const Window win = window_of(p, q, s);
  const int64_t C = s.C;
  std::fill(y, y + C, -std::numeric_limits<T>::infinity());
  std::fill(idx, idx + C, win.h0 * s.W + win.w0);
  for (int64_t h = win.h0; h < win.h1; h += s.dh)
    for (int64_t w = win.w0; w < win.w1; w += s.dw) {
      const T* v = xn + (h * s.W + w) * C;
      const int64_t i = h * s.W + w;
      for (int64_t c = 0; c < C; ++c)
        if (v[c] > y[c] || std::isnan(v[c])) {
          y[c] = v[c];
          idx[c] = i;
        }
    }
}

#if defined(__x86_64__)
// AVX-512 float: 16 channels a step (the last step masked), indices kept as int32 lanes (the
// caller guarantees H*W < 2^31) and widened to int64 on the store.
FC_TARGET_AVX512 void pool_pixel_nhwc_avx512(const float* xn, float* y, int64_t* idx, int64_t p, int64_t q,
                                             const Pool2dShape& s) {
  const Window win = window_of(p, q, s);
  const int64_t C = s.C;
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = C - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (C - c)) - 1);
    __m512 best = ninf;
    __m512i bi = _mm512_set1_epi32(int(win.h0 * s.W + win.w0));
    for (int64_t h = win.h0; h < win.h1; h += s.dh)
      for (int64_t w = win.w0; w < win.w1; w += s.dw) {
        const __m512 v = _mm512_maskz_loadu_ps(m, xn + (h * s.W + w) * C + c);
        const __mmask16 up = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        best = _mm512_mask_mov_ps(best, up, v);
        bi = _mm512_mask_mov_epi32(bi, up, _mm512_set1_epi32(int(h * s.W + w)));
      }
    _mm512_mask_storeu_ps(y + c, m, best);
    _mm512_mask_storeu_epi64(idx + c, __mmask8(m), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(bi)));
    _mm512_mask_storeu_epi64(idx + c + 8, __mmask8(m >> 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(bi, 1)));
  }
}
#endif

template <typename T>
void max_pool2d_forward_nhwc(const T* x, T* y, int64_t* idx, const Pool2dShape& s) {
  const int64_t HWC = s.H * s.W * s.C, PQ = s.P * s.Q;
  bool fast = false;
#if defined(__x86_64__)
  fast = std::is_same_v<T, float> && current_isa() >= Isa::kAvx512 && s.H * s.W + s.W < (int64_t(1) << 31);
#endif
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, s.C * s.kh * s.kw));
  at::parallel_for(0, s.N * PQ, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {  // output pixel o = (n*P + p)*Q + q
      const int64_t n = o / PQ, p = (o / s.Q) % s.P, q = o % s.Q;
#if defined(__x86_64__)
      if constexpr (std::is_same_v<T, float>) {
        if (fast) {
          pool_pixel_nhwc_avx512(x + n * HWC, y + o * s.C, idx + o * s.C, p, q, s);
          continue;
        }
      }
#endif
      pool_pixel_nhwc(x + n * HWC, y + o * s.C, idx + o * s.C, p, q, s);
    }
  });
}

// Backward, overlapping windows: per image and block of channels (disjoint parts of dx), zero,
// then add dy into dx at each output's index, outputs in order: deterministic sums. Indices are
// range-checked on the way, as in max_pool2d_backward_scatter.
template <typename T>
void max_pool2d_backward_scatter_nhwc(const T* dy, const at::Tensor& indices, T* dx, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q, C = s.C;
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  constexpr int64_t kCB = 64;  // channels per task
  const int64_t cblocks = ceil_div(C, kCB);
  std::atomic<bool> bad{false};
  at::parallel_for(0, s.N * cblocks, 1, [&](int64_t begin, int64_t end) {
    bool out = false;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / cblocks, c0 = (task % cblocks) * kCB, c1 = std::min(C, c0 + kCB);
      T* dxn = dx + n * HW * C;
      for (int64_t i = 0; i < HW; ++i) std::fill(dxn + i * C + c0, dxn + i * C + c1, T(0));
      for (int64_t o = 0; o < PQ; ++o) {
        const T* g = dy + (n * PQ + o) * C;
        const int64_t* ix = idx + (n * PQ + o) * C;
        for (int64_t c = c0; c < c1; ++c) {
          const bool inside = uint64_t(ix[c]) < uint64_t(HW);
          out |= !inside;
          if (inside) dxn[ix[c] * C + c] += g[c];
        }
      }
    }
    if (out) bad = true;
  });
  if (bad) check_pool_indices(indices, s.H, s.W);
}

// Backward, disjoint windows (dilation 1, stride >= kernel): output row p of image n owns the
// input rows [r0, r1) (as unpool_row_disjoint), contiguous in NHWC: zeroed, then each window's
// gradient stored at its index. Returns false (having written nothing for it) if some index lies
// outside its window; the caller then redoes the tensor with the scatter.
template <typename T>
bool unpool_row_disjoint_nhwc(const T* dyrow, const int64_t* irow, T* dxn, int64_t p, const Pool2dShape& s) {
  const int64_t C = s.C;
  const int64_t r0 = p == 0 ? 0 : std::min(p * s.sh - s.ph, s.H);
  const int64_t r1 = p == s.P - 1 ? s.H : std::min((p + 1) * s.sh - s.ph, s.H);
  std::fill(dxn + r0 * s.W * C, dxn + r1 * s.W * C, T(0));
  const int64_t h_lo = std::max<int64_t>(p * s.sh - s.ph, 0), h_hi = std::min(p * s.sh - s.ph + s.kh, s.H);
  bool ok = true;
  for (int64_t q = 0; q < s.Q; ++q) {
    const int64_t w_lo = std::max<int64_t>(q * s.sw - s.pw, 0), w_hi = std::min(q * s.sw - s.pw + s.kw, s.W);
    const T* g = dyrow + q * C;
    const int64_t* ix = irow + q * C;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = ix[c];
      bool in_window = false;
      for (int64_t h = h_lo; h < h_hi; ++h) in_window |= i - h * s.W >= w_lo && i - h * s.W < w_hi;
      if (in_window) dxn[i * C + c] = g[c];
      else ok = false;
    }
  }
  return ok;
}

#if defined(__x86_64__)
// AVX-512 float, as unpool_row_disjoint_nhwc but each dx element written exactly once: input pixel
// (h, w) of the row's band is at window position of output q = (w + pw) / sw when it lies in that
// window (column offset (w + pw) % sw < kw, row h in the window rows), and gets dy where the index
// equals h*W + w, else 0; pixels no window covers get 0. hits (Q * ceil(C/16) masks) records which
// channels found their index; each must have, else false is returned. Indices are compared as int32
// (the caller guarantees H*W + W < 2^31; the saturating narrowing keeps larger ones from aliasing).
FC_TARGET_AVX512 bool unpool_row_disjoint_nhwc_avx512(const float* dyrow, const int64_t* irow, float* dxn, int64_t p,
                                                      const Pool2dShape& s, __mmask16* hits) {
  const int64_t C = s.C, CB = ceil_div(C, 16);
  const int64_t r0 = p == 0 ? 0 : std::min(p * s.sh - s.ph, s.H);
  const int64_t r1 = p == s.P - 1 ? s.H : std::min((p + 1) * s.sh - s.ph, s.H);
  const int64_t h_lo = std::max<int64_t>(p * s.sh - s.ph, 0), h_hi = std::min(p * s.sh - s.ph + s.kh, s.H);
  const __mmask16 tail = first_lanes(C - (CB - 1) * 16);
  std::fill(hits, hits + s.Q * CB, __mmask16(0));
  for (int64_t h = r0; h < r1; ++h) {
    float* row = dxn + h * s.W * C;
    if (h < h_lo || h >= h_hi) {
      std::fill(row, row + s.W * C, 0.f);
      continue;
    }
    for (int64_t w = 0; w < s.W; ++w) {
      float* px = row + w * C;
      const int64_t q = (w + s.pw) / s.sw;
      if (q >= s.Q || w + s.pw - q * s.sw >= s.kw) {
        std::fill(px, px + C, 0.f);
        continue;
      }
      const __m512i pos = _mm512_set1_epi32(int(h * s.W + w));
      const float* g = dyrow + q * C;
      const int64_t* ix = irow + q * C;
      __mmask16* hq = hits + q * CB;
      for (int64_t cb = 0; cb < CB; ++cb) {
        const int64_t c = cb * 16;
        const __mmask16 m = cb == CB - 1 ? tail : __mmask16(0xFFFF);
        const __m256i lo = _mm512_cvtsepi64_epi32(_mm512_maskz_loadu_epi64(__mmask8(m), ix + c));
        const __m256i hi = _mm512_cvtsepi64_epi32(_mm512_maskz_loadu_epi64(__mmask8(m >> 8), ix + c + 8));
        const __mmask16 eq = _mm512_mask_cmpeq_epi32_mask(m, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), pos);
        hq[cb] |= eq;
        _mm512_mask_storeu_ps(px + c, m, _mm512_maskz_loadu_ps(eq, g + c));
      }
    }
  }
  for (int64_t i = 0; i < s.Q * CB; ++i)
    if (hits[i] != (i % CB == CB - 1 ? tail : __mmask16(0xFFFF))) return false;
  return true;
}
#endif

template <typename T>
void max_pool2d_backward_nhwc(const T* dy, const at::Tensor& indices, T* dx, const Pool2dShape& s) {
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  if (!windows_disjoint(s)) return max_pool2d_backward_scatter_nhwc(dy, indices, dx, s);
  const int64_t HWC = s.H * s.W * s.C, QC = s.Q * s.C;
  bool fast = false;
#if defined(__x86_64__)
  fast = std::is_same_v<T, float> && current_isa() >= Isa::kAvx512 && s.H * s.W + s.W < (int64_t(1) << 31);
#endif
  std::atomic<bool> all_ok{true};
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, QC * s.kh * s.kw));
  at::parallel_for(0, s.N * s.P, grain, [&](int64_t begin, int64_t end) {
    bool ok = true;
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (fast) {
        std::vector<__mmask16> hits(s.Q * ceil_div(s.C, 16));
        for (int64_t r = begin; r < end; ++r)  // output row r = n*P + p
          ok &= unpool_row_disjoint_nhwc_avx512(dy + r * QC, idx + r * QC, dx + (r / s.P) * HWC, r % s.P, s, hits.data());
        if (!ok) all_ok = false;
        return;
      }
    }
#endif
    for (int64_t r = begin; r < end; ++r)  // output row r = n*P + p
      ok &= unpool_row_disjoint_nhwc(dy + r * QC, idx + r * QC, dx + (r / s.P) * HWC, r % s.P, s);
    if (!ok) all_ok = false;
  });
  if (!all_ok) max_pool2d_backward_scatter_nhwc(dy, indices, dx, s);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const Pool2dShape s = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, kCpuTypes);
  // Output and indices in the input's memory format (as PyTorch): NHWC kernels for channels_last.
  const at::MemoryFormat fmt = input.suggest_memory_format();
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor x = input.contiguous(fmt);
  at::Tensor y = at::empty({s.N, s.C, s.P, s.Q}, input.options().memory_format(fmt));
  at::Tensor idx = at::empty({s.N, s.C, s.P, s.Q}, input.options().dtype(at::kLong).memory_format(fmt));
  if (y.numel() == 0) return {y, idx};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastconv_max_pool2d_cpu", [&] {
    (nhwc ? max_pool2d_forward_nhwc<scalar_t> : max_pool2d_forward<scalar_t>)(
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>(), s);
  });
  return {y, idx};
}

// dx[idx[j]] += dy[j] for every output j, every other element 0: one write per element when the
// windows are disjoint, else the deterministic per-plane scatter.
at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   bool ceil_mode) {
  const auto size = C10_AS_INTARRAYREF_SLOW(input_size);
  const Pool2dShape s = check_max_pool2d_backward(grad_output, indices, size, kernel_size, stride, padding,
                                                  dilation, ceil_mode, kCpuTypes, /*check_indices=*/false);
  // dx in the indices' memory format: the forward's input format when the indices are the
  // forward's (PyTorch's grad_input follows the input, which this op does not receive).
  const at::MemoryFormat fmt = indices.suggest_memory_format();
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor dy = grad_output.contiguous(fmt), idx = indices.contiguous(fmt);
  at::Tensor dx = at::empty({s.N, s.C, s.H, s.W}, grad_output.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dy.scalar_type(), "fastconv_max_pool2d_backward_cpu", [&] {
    (nhwc ? max_pool2d_backward_nhwc<scalar_t> : max_pool2d_backward<scalar_t>)(
        dy.const_data_ptr<scalar_t>(), idx, dx.mutable_data_ptr<scalar_t>(), s);
  });
  return dx;
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d", &fastconv::cpu::max_pool2d_cpu);
  m.impl("max_pool2d_backward", &fastconv::cpu::max_pool2d_backward_cpu);
}
