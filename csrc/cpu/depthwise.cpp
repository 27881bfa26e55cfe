// The depthwise convolution family of cpu/depthwise.h: phase planes, the gather and weight-gradient
// kernels (AVX-512 float32, and portable), and the three passes.
#include "cpu/depthwise.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "cpu/avx512.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"
#include "cpu/simd.h"  // FC_INLINE

namespace fastconv {
namespace cpu {
namespace {

constexpr int64_t kTile = 64;  // virtual pixels per gather tile (4 AVX-512 vectors of floats)

// a / b rounded up, for any a (also negative) and b > 0.
inline int64_t div_up(int64_t a, int64_t b) { return -floor_div(-a, b); }

// A plane of H x W values stored as sh*sw phase sub-planes of `rows` x `cols` values each:
//   sub(a, b)[i][j] = src[i*sh + a - top][j*sw + b - left], 0 outside the source,
// i.e. the plane zero-padded by `top` rows / `left` columns (and at the far ends up to the sub-planes'
// size), de-interleaved by the strides. Sub-plane (a, b) starts at (a*sw + b)*stride; its
// rows*cols values are followed by >= cols + kTile zeros, which the last gather tile may read.
struct PhasePlane {
  // Sub-plane columns [j0, j1) of one phase whose source column j*sw + b - left lies in [0, W);
  // w0 is the source column of j0.
  struct Columns {
    int64_t j0, j1, w0;
  };
  // With stride 1 and every source column landing (left >= 0, left + W <= cols), the source rows
  // h0 ... h1 - 1 fill padded positions in order, so the copy is a run of 16-lane vectors: vector
  // `at` (its first element) takes `count` consecutive source values from `src`, expanded to the
  // lanes of `mask` (its other lanes are padding: zeros).
  struct Expand {
    int64_t at, src;
    uint16_t mask;
    int count;
  };
  int64_t H, W, top, left, sh, sw, rows, cols, stride;
  int64_t h0, h1;             // the source rows that land in the sub-planes
  std::vector<Columns> col;  // per column phase b < sw
  std::vector<Expand> expand;  // empty unless stride 1 and every column lands
  PhasePlane(int64_t H, int64_t W, int64_t top, int64_t left, int64_t sh, int64_t sw, int64_t rows, int64_t cols)
      : H(H), W(W), top(top), left(left), sh(sh), sw(sw), rows(rows), cols(cols),
        stride(round_up(rows * cols + cols + kTile, 16)),
        h0(std::max<int64_t>(0, -top)),
        h1(std::clamp<int64_t>(rows * sh - top, h0, H)) {
    for (int64_t b = 0; b < sw; ++b) {
      const int64_t j0 = std::clamp<int64_t>(div_up(left - b, sw), 0, cols);
      const int64_t j1 = std::clamp<int64_t>(div_up(W + left - b, sw), j0, cols);
      col.push_back({j0, j1, j0 * sw + b - left});
    }
    if (sh != 1 || sw != 1 || left < 0 || left + W > cols || h0 >= h1) return;
    const int64_t f0 = (h0 + top) * cols + left, f1 = (h1 - 1 + top) * cols + left + W;  // padded range
    for (int64_t k = f0 / 16; 16 * k < f1; ++k) {
      Expand e{16 * k, -1, 0, 0};
      for (int64_t l = 0; l < 16; ++l) {
        const int64_t f = 16 * k + l, wp = f % cols - left;
        if (f < f0 || f >= f1 || wp < 0 || wp >= W) continue;
        if (e.count++ == 0) e.src = (f / cols - top) * W + wp;
        e.mask |= uint16_t(1u << l);
      }
      expand.push_back(e);
    }
  }
  int64_t size() const { return sh * sw * stride; }
  // Where padded element (hp, wp) (source (hp - top, wp - left)) lives, hp, wp >= 0.
  int64_t at(int64_t hp, int64_t wp) const {
    return ((hp % sh) * sw + wp % sw) * stride + (hp / sh) * cols + wp / sw;
  }
};

// Where the 16-lane vectors of a virtual plane (rows of L >= Q pixels, P rows) go in an output
// plane (rows of Q): dropping the lanes with q >= Q (or past the last row) from the virtual order
// leaves exactly the output order, so vector i's valid lanes, compressed to its front, go to
// consecutive outputs from at[i].
struct OutputMap {
  std::vector<uint16_t> valid, front;  // per vector: its valid lanes; as many lanes from lane 0
  std::vector<int64_t> at;
  OutputMap(int64_t P, int64_t Q, int64_t L) {
    const int64_t n = ceil_div(P * L, 16);
    valid.resize(n), front.resize(n), at.resize(n);
    int64_t p = 0, q = 0, out = 0;  // virtual pixel 16*i + l = (p, q); outputs before it
    for (int64_t i = 0; i < n; ++i) {
      unsigned mask = 0, count = 0;
      at[i] = out;
      for (int64_t l = 0; l < 16; ++l) {
        if (p < P && q < Q) mask |= 1u << l, ++count;
        if (++q == L) q = 0, ++p;
      }
      valid[i] = uint16_t(mask), front[i] = uint16_t((1u << count) - 1);
      out += count;
    }
  }
  int64_t vectors() const { return int64_t(at.size()); }
};

// v, or 0 where a gate (relu's output) is <= 0: relu_backward's rule (a NaN gate passes v).
template <typename T>
FC_INLINE T gated(T v, T g) {
  return g <= T(0) ? T(0) : v;
}

// Copies src (H x W, row-major) into the phase plane g at dst, whose other elements (padding,
// slack) must be zero: a task zeroes its buffer once (zero_phases), and every plane of a call puts
// its values at the same places, so the zeros stay. With a gate (src's layout), values whose gate
// is <= 0 are read as 0.
template <typename T>
FC_INLINE void copy_phases_portable(const T* __restrict src, const T* __restrict gate, const PhasePlane& g,
                                    T* __restrict dst) {
  const int64_t sw = g.sw;
  for (int64_t h = g.h0; h < g.h1; ++h) {
    const int64_t hp = h + g.top;
    for (int64_t b = 0; b < sw; ++b) {
      const PhasePlane::Columns& c = g.col[b];
      T* __restrict o = dst + ((hp % g.sh) * sw + b) * g.stride + (hp / g.sh) * g.cols + c.j0;
      const T* __restrict row = src + h * g.W + c.w0;
      const int64_t n = c.j1 - c.j0;
      if (gate) {
        const T* __restrict grow = gate + h * g.W + c.w0;
        for (int64_t k = 0; k < n; ++k) o[k] = gated(row[k * sw], grow[k * sw]);
      } else if (sw == 1) {
        for (int64_t k = 0; k < n; ++k) o[k] = row[k];
      } else {
        for (int64_t k = 0; k < n; ++k) o[k] = row[k * sw];
      }
    }
  }
}

template <typename T>
void zero_phases(const PhasePlane& g, T* dst, int64_t planes = 1) {
  std::fill(dst, dst + planes * g.size(), T(0));
}

// out[v] = sum over taps t (in order) of w[t] * src[t][v], for v < n (the portable kernel; the
// compiler vectorises the v loops for whatever ISA the caller is compiled for).
template <typename T>
FC_INLINE void gather_portable(const T* const* src, const T* w, int64_t taps, T* __restrict out, int64_t n) {
  constexpr int64_t kBlock = 256;  // outputs per block: its sums stay in L1
  for (int64_t v0 = 0; v0 < n; v0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - v0);
    T* __restrict o = out + v0;
    for (int64_t v = 0; v < nb; ++v) o[v] = T(0);
    for (int64_t t = 0; t < taps; ++t) {
      const T wt = w[t];
      const T* __restrict x = src[t] + v0;
      for (int64_t v = 0; v < nb; ++v) o[v] += wt * x[v];
    }
  }
}

// sums[t] += sum over p < P, q < Q of gated(dy[p*Q + q]) * src[t][p*L + q], for t < taps, in double.
template <typename T>
FC_INLINE void wgrad_portable(const T* dy, const T* gate, int64_t P, int64_t Q, const T* const* src, int64_t taps,
                              int64_t L, double* sums) {
  for (int64_t t = 0; t < taps; ++t) {
    double acc = 0;
    for (int64_t p = 0; p < P; ++p) {
      const T* d = dy + p * Q;
      const T* g = gate ? gate + p * Q : nullptr;
      const T* x = src[t] + p * L;
      for (int64_t q = 0; q < Q; ++q) acc += double(g ? gated(d[q], g[q]) : d[q]) * double(x[q]);
    }
    sums[t] += acc;
  }
}

#if defined(__x86_64__)
// out[v] = sum over taps t (in order) of w[t] * src[t][v], for v < round_up(n, 16): tiles of 4
// vectors, one weight broadcast and 4 unaligned loads per tap, then single vectors.
FC_TARGET_AVX512 void gather_avx512(const float* const* src, const float* w, int64_t taps, float* out, int64_t n) {
  const int64_t n16 = round_up(n, 16);
  int64_t v0 = 0;
  for (; v0 + kTile <= n16; v0 += kTile) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = 0; t < taps; ++t) {
      const __m512 wt = _mm512_set1_ps(w[t]);
      const float* x = src[t] + v0;
      a0 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(x), a0);
      a1 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(x + 16), a1);
      a2 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(x + 32), a2);
      a3 = _mm512_fmadd_ps(wt, _mm512_loadu_ps(x + 48), a3);
    }
    _mm512_storeu_ps(out + v0, a0);
    _mm512_storeu_ps(out + v0 + 16, a1);
    _mm512_storeu_ps(out + v0 + 32, a2);
    _mm512_storeu_ps(out + v0 + 48, a3);
  }
  for (; v0 < n16; v0 += 16) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t t = 0; t < taps; ++t) a = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), _mm512_loadu_ps(src[t] + v0), a);
    _mm512_storeu_ps(out + v0, a);
  }
}

// The lane sum of a float vector, in double.
FC_TARGET_AVX512 inline double reduce_pd(__m512 a) {
  const __m256 lo = _mm512_castps512_ps256(a);
  const __m256 hi = _mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(a), 1));
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(lo), _mm512_cvtps_pd(hi)));
}

// Asks for the cache line kPrefetch bytes past p: the copies read planes front to back, and planes
// of consecutive tasks are adjacent, so this keeps the reads ahead of the hardware's own prefetching.
constexpr int64_t kPrefetch = 2048;
inline void prefetch_ahead(const float* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetch, _MM_HINT_T0);
}

// Lanes [0, n) of a vector, n clamped to [0, 16].
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// copy_phases_portable for float32 with AVX-512: stride-1 rows with (masked) vector copies,
// stride-2 rows de-interleaved by a two-register permute (16 outputs of a phase from 32 source
// columns), other strides element by element.
FC_TARGET_AVX512 void copy_phases_avx512(const float* src, const float* gate, const PhasePlane& g, float* dst) {
  if (!g.expand.empty()) {  // stride 1: whole vectors, padding zeros included
    for (const PhasePlane::Expand& e : g.expand) {
      const __mmask16 n = first_lanes(e.count);
      prefetch_ahead(src + e.src);
      __m512 v = _mm512_maskz_expand_ps(e.mask, _mm512_maskz_loadu_ps(n, src + e.src));
      if (gate) {
        const __m512 gv = _mm512_maskz_expand_ps(e.mask, _mm512_maskz_loadu_ps(n, gate + e.src));
        v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(gv, _mm512_setzero_ps(), _CMP_NLE_UQ), v);
      }
      _mm512_storeu_ps(dst + e.at, v);
    }
    return;
  }
  if (g.sw > 2 || (gate && g.sw != 1)) return copy_phases_portable(src, gate, g, dst);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 zero = _mm512_setzero_ps();
  int64_t a = (g.h0 + g.top) % g.sh, i = (g.h0 + g.top) / g.sh;  // phase and row of source row h
  // Short rows (small planes, where per-row bookkeeping is most of the cost): constant masks.
  if (!gate && g.sw == 1 && g.col[0].j1 - g.col[0].j0 <= 16) {
    const PhasePlane::Columns& c = g.col[0];
    const __mmask16 m = first_lanes(c.j1 - c.j0);
    for (int64_t h = g.h0; h < g.h1; ++h) {
      const float* row = src + h * g.W + c.w0;
      prefetch_ahead(row);
      _mm512_mask_storeu_ps(dst + a * g.stride + i * g.cols + c.j0, m, _mm512_maskz_loadu_ps(m, row));
      if (++a == g.sh) a = 0, ++i;
    }
    return;
  }
  if (!gate && g.sw == 2 && g.left >= 0 && g.W <= 32) {
    const int64_t b0 = g.col[0].w0;  // the phase of the even columns (see below)
    const PhasePlane::Columns &ce = g.col[b0], &co = g.col[1 - b0];
    const __mmask16 lo = first_lanes(g.W), hi = first_lanes(g.W - 16);
    const __mmask16 me = first_lanes(ce.j1 - ce.j0), mo = first_lanes(co.j1 - co.j0);
    const int64_t oe = b0 * g.stride + ce.j0, oo = (1 - b0) * g.stride + co.j0;
    for (int64_t h = g.h0; h < g.h1; ++h) {
      const float* row = src + h * g.W;
      float* drow = dst + a * 2 * g.stride + i * g.cols;
      prefetch_ahead(row);
      const __m512 l = _mm512_maskz_loadu_ps(lo, row), r = _mm512_maskz_loadu_ps(hi, row + 16);
      _mm512_mask_storeu_ps(drow + oe, me, _mm512_permutex2var_ps(l, even, r));
      _mm512_mask_storeu_ps(drow + oo, mo, _mm512_permutex2var_ps(l, odd, r));
      if (++a == g.sh) a = 0, ++i;
    }
    return;
  }
  for (int64_t h = g.h0; h < g.h1; ++h) {
    float* drow = dst + a * g.sw * g.stride + i * g.cols;
    if (++a == g.sh) a = 0, ++i;
    for (int64_t b = 0; b < g.sw; ++b) {
      const PhasePlane::Columns& c = g.col[b];
      float* o = drow + b * g.stride + c.j0;
      const float* row = src + h * g.W + c.w0;
      const int64_t n = c.j1 - c.j0;
      if (g.sw == 1) {
        if (gate) {
          const float* grow = gate + h * g.W + c.w0;
          for (int64_t k = 0; k < n; k += 16) {
            const __mmask16 m = first_lanes(n - k);
            const __mmask16 pass = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, grow + k), zero, _CMP_NLE_UQ);
            _mm512_mask_storeu_ps(o + k, m, _mm512_maskz_loadu_ps(pass, row + k));
          }
        } else {
          int64_t k = 0;
          for (; k + 16 <= n; k += 16) {
            prefetch_ahead(row + k);
            _mm512_storeu_ps(o + k, _mm512_loadu_ps(row + k));
          }
          if (k < n) {
            prefetch_ahead(row + k);
            const __mmask16 m = first_lanes(n - k);
            _mm512_mask_storeu_ps(o + k, m, _mm512_maskz_loadu_ps(m, row + k));
          }
        }
      } else if (g.left >= 0) {
        // Both phases start at source columns 0 and 1 (w0 = 2*j0 + b - left is 0 or 1): one pair of
        // loads per 32 source columns, split into even and odd columns.
        const int64_t b0 = g.col[0].w0;  // the phase of the even columns
        const PhasePlane::Columns &ce = g.col[b0], &co = g.col[1 - b0];
        float* oe = drow + b0 * g.stride + ce.j0;
        float* oo = drow + (1 - b0) * g.stride + co.j0;
        const float* row0 = src + h * g.W;
        const int64_t ne = ce.j1 - ce.j0, no = co.j1 - co.j0;
        for (int64_t k = 0; k < std::max(ne, no); k += 16) {
          prefetch_ahead(row0 + 2 * k);
          prefetch_ahead(row0 + 2 * k + 16);
          const bool full = g.W - 2 * k >= 32;  // (unmasked loads where possible: they are cheaper)
          const __m512 lo = full ? _mm512_loadu_ps(row0 + 2 * k)
                                 : _mm512_maskz_loadu_ps(first_lanes(g.W - 2 * k), row0 + 2 * k);
          const __m512 hi = full ? _mm512_loadu_ps(row0 + 2 * k + 16)
                                 : _mm512_maskz_loadu_ps(first_lanes(g.W - 2 * k - 16), row0 + 2 * k + 16);
          _mm512_mask_storeu_ps(oe + k, first_lanes(ne - k), _mm512_permutex2var_ps(lo, even, hi));
          _mm512_mask_storeu_ps(oo + k, first_lanes(no - k), _mm512_permutex2var_ps(lo, odd, hi));
        }
        break;
      } else {  // o[k] = row[2k], k < n: source columns [0, 2n - 1)
        for (int64_t k = 0; k < n; k += 16) {
          const int64_t left = 2 * (n - k) - 1;  // source columns from row + 2k still to read
          const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(left), row + 2 * k);
          const __m512 hi = _mm512_maskz_loadu_ps(first_lanes(left - 16), row + 2 * k + 16);
          _mm512_mask_storeu_ps(o + k, first_lanes(n - k), _mm512_permutex2var_ps(lo, even, hi));
        }
      }
    }
  }
}

// The forward gather with its epilogue in registers, for NP planes at once (their phase planes
// pstride apart, tap offsets shared): y[p] (a P x Q plane) = sum over taps t of w[p][t] * src[t][v]
// (+ pstride*p) at the virtual pixels v that are outputs, + bias[p], then ReLU when `relu`
// (max(0, v) keeps NaN). Tiles of NV vectors x NP planes (NV*NP accumulators, so small planes
// still have enough independent sums); each vector's valid lanes are compressed and stored.
template <int NV, int NP>
FC_TARGET_AVX512 void gather_store_avx512(const float* const* src, int64_t pstride, const float* const* w,
                                          int64_t taps, const OutputMap& map, const float* bias, bool relu,
                                          float* const* y) {
  const int64_t n = map.vectors();
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < n; i0 += NV) {
    __m512 acc[NP][NV];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      const __m512 b = _mm512_set1_ps(bias[p]);
#pragma GCC unroll 4
      for (int k = 0; k < NV; ++k) acc[p][k] = b;
    }
    const int64_t v0 = 16 * i0;
    for (int64_t t = 0; t < taps; ++t) {
      const float* x = src[t] + v0;
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) {
        const __m512 wt = _mm512_set1_ps(w[p][t]);
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k)
          acc[p][k] = _mm512_fmadd_ps(wt, _mm512_loadu_ps(x + p * pstride + 16 * k), acc[p][k]);
      }
    }
    const int kn = int(std::min<int64_t>(NV, n - i0));
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p)
      for (int k = 0; k < kn; ++k) {
        __m512 v = acc[p][k];
        if (relu) v = _mm512_max_ps(zero, v);
        const __mmask16 m = map.valid[i0 + k];
        float* dst = y[p] + map.at[i0 + k];
        if (m == 0xFFFF) {
          _mm512_storeu_ps(dst, v);
        } else {
          _mm512_mask_storeu_ps(dst, map.front[i0 + k], _mm512_maskz_compress_ps(m, v));
        }
      }
  }
}

// acc[t] (16 lanes, t < NT, in and out) += dy * x_t at the virtual pixels that are outputs: vector i
// of the virtual plane takes dy's next valid-lane-count values (from map.at[i]), expanded to its
// valid lanes (the forward epilogue's compression, reversed), and x_t's lanes masked the same
// way, so columns past Q never enter, not even as 0 * inf. With a gate (dy's shape), dy is read
// as relu_backward(dy, gate). One dy vector and NT input loads per NT FMAs.
template <int NT>
FC_TARGET_AVX512 void wgrad_avx512(const float* dy, const float* gate, const float* const* src, const OutputMap& map,
                                   float* acc_io) {
  __m512 acc[NT];
#pragma GCC unroll 16
  for (int k = 0; k < NT; ++k) acc[k] = _mm512_loadu_ps(acc_io + 16 * k);
  const int64_t n = map.vectors();
  for (int64_t i = 0; i < n; ++i) {
    const __mmask16 m = map.valid[i], f = map.front[i];
    prefetch_ahead(dy + map.at[i]);
    __m512 d = _mm512_maskz_expand_ps(m, _mm512_maskz_loadu_ps(f, dy + map.at[i]));
    if (gate) {
      const __m512 g = _mm512_maskz_expand_ps(m, _mm512_maskz_loadu_ps(f, gate + map.at[i]));
      d = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_NLE_UQ), d);
    }
    const int64_t v = 16 * i;
#pragma GCC unroll 16
    for (int k = 0; k < NT; ++k) acc[k] = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, src[k] + v), acc[k]);
  }
#pragma GCC unroll 16
  for (int k = 0; k < NT; ++k) _mm512_storeu_ps(acc_io + 16 * k, acc[k]);
}

constexpr int kMaxWgradTaps = 12;  // taps per weight-gradient block (accumulators in registers)

using WgradFn = void (*)(const float*, const float*, const float* const*, const OutputMap&, float*);
constexpr WgradFn kWgradAvx512[kMaxWgradTaps + 1] = {
    nullptr,          &wgrad_avx512<1>, &wgrad_avx512<2>, &wgrad_avx512<3>,  &wgrad_avx512<4>,
    &wgrad_avx512<5>, &wgrad_avx512<6>, &wgrad_avx512<7>, &wgrad_avx512<8>,  &wgrad_avx512<9>,
    &wgrad_avx512<10>, &wgrad_avx512<11>, &wgrad_avx512<12>};

// d[2k] = first[k], d[2k + 1] = second[k] for 2k, 2k + 1 < W: two phase rows interleaved.
FC_TARGET_AVX512 void interleave_row_avx512(const float* first, const float* second, float* d, int64_t W) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  if (W <= 16) {  // short rows: one masked pair, no loop
    const __m512 a = _mm512_maskz_loadu_ps(first_lanes((W + 1) / 2), first);
    const __m512 b = _mm512_maskz_loadu_ps(first_lanes(W / 2), second);
    return _mm512_mask_storeu_ps(d, first_lanes(W), _mm512_permutex2var_ps(a, lo, b));
  }
  for (int64_t k = 0; 2 * k < W; k += 16) {
    const __m512 a = _mm512_maskz_loadu_ps(first_lanes((W + 1) / 2 - k), first + k);
    const __m512 b = _mm512_maskz_loadu_ps(first_lanes(W / 2 - k), second + k);
    _mm512_mask_storeu_ps(d + 2 * k, first_lanes(W - 2 * k), _mm512_permutex2var_ps(a, lo, b));
    _mm512_mask_storeu_ps(d + 2 * k + 16, first_lanes(W - 2 * k - 16), _mm512_permutex2var_ps(a, hi, b));
  }
}

#endif

// The gather of the selected kernel family.
template <bool kVec, typename T>
FC_INLINE void gather(const T* const* src, const T* w, int64_t taps, T* out, int64_t n) {
#if defined(__x86_64__)
  if constexpr (kVec) {
    static_assert(std::is_same_v<T, float>);
    return gather_avx512(src, w, taps, out, n);
  }
#endif
  gather_portable(src, w, taps, out, n);
}

// The copy into phase planes of the selected kernel family.
template <bool kVec, typename T>
FC_INLINE void copy_phases(const T* src, const T* gate, const PhasePlane& g, T* dst) {
#if defined(__x86_64__)
  if constexpr (kVec) return copy_phases_avx512(src, gate, g, dst);
#endif
  copy_phases_portable(src, gate, g, dst);
}

// y[p*Q + q] = out[p*L + q] + bias, then ReLU when `relu` (the portable forward epilogue).
template <typename T>
FC_INLINE void store_rows(const T* out, int64_t L, T bias, bool relu, T* y, int64_t P, int64_t Q) {
  for (int64_t p = 0; p < P; ++p) {
    const T* o = out + p * L;
    T* yr = y + p * Q;
    if (relu) {
      for (int64_t q = 0; q < Q; ++q) {
        const T v = o[q] + bias;
        yr[q] = v < T(0) ? T(0) : v;  // NaN stays NaN, as in relu
      }
    } else {
      for (int64_t q = 0; q < Q; ++q) yr[q] = o[q] + bias;
    }
  }
}

// Whether the float32 AVX-512 kernels run.
template <typename T>
bool use_avx512() {
  return std::is_same_v<T, float> && current_isa() >= Isa::kAvx512;
}

// ---------------------------------------------------------------------------------------------
// Forward. Task = image n, input channel c: its phase plane, then its m output planes. Planes go
// in groups of kGroup: the group's copies first, then its gathers, so that a gather does not read
// a copy's stores while they are still in flight (on small planes that stall dominated).

constexpr int64_t kGroup = 4;

// Everything the forward pass needs, shared by its tasks.
template <typename T>
struct ForwardArgs {
  const Conv2dShape& s;
  const PhasePlane& g;
  const int64_t* off;  // tap t = r*S + s: offset of its run in the phase plane
  const T *x, *w, *bias;
  T* y;
  bool relu;
  const OutputMap* map;  // for the AVX-512 kernels
  const T* gate = nullptr;  // x's shape: x read as relu_backward(x, gate) (the dual convolution of dx)
};

#if defined(__x86_64__)
// The gathers of one group of gn <= kGroup copied planes, nc0 ...: with m == 1 and a full group, the
// planes go through the kernel together (4 at once when a plane is at most 8 vectors, else 2),
// otherwise one output plane at a time.
FC_TARGET_AVX512 void forward_group_avx512(int64_t nc0, int64_t gn, const ForwardArgs<float>& a, float* buf,
                                           const float** src) {
  const Conv2dShape& s = a.s;
  const int64_t RS = s.R * s.S, m = s.Kg(), PQ = s.P * s.Q, size = a.g.size(), nv = a.map->vectors();
  const float* w[kGroup];
  float* y[kGroup];
  float bias[kGroup];
  auto plane = [&](int64_t slot, int64_t i, int64_t j) {  // output j of plane i into slot
    const int64_t nc = nc0 + i, k = (nc % s.C) * m + j;
    w[slot] = a.w + k * RS;
    y[slot] = a.y + (nc * m + j) * PQ;
    bias[slot] = a.bias ? a.bias[k] : 0.f;
  };
  if (m == 1 && gn == kGroup) {
    static_assert(kGroup == 4, "groups of 4 planes");
    for (int64_t t = 0; t < RS; ++t) src[t] = buf + a.off[t];
    for (int64_t i = 0; i < kGroup; ++i) plane(i, i, 0);
    switch (nv) {
      case 1: return gather_store_avx512<1, 4>(src, size, w, RS, *a.map, bias, a.relu, y);
      case 2: return gather_store_avx512<2, 4>(src, size, w, RS, *a.map, bias, a.relu, y);
      case 3: return gather_store_avx512<3, 4>(src, size, w, RS, *a.map, bias, a.relu, y);
      case 4: return gather_store_avx512<4, 4>(src, size, w, RS, *a.map, bias, a.relu, y);
      case 5:
      case 6: return gather_store_avx512<3, 4>(src, size, w, RS, *a.map, bias, a.relu, y);
      case 7:
      case 8: return gather_store_avx512<4, 4>(src, size, w, RS, *a.map, bias, a.relu, y);
      default:
        gather_store_avx512<4, 2>(src, size, w, RS, *a.map, bias, a.relu, y);
        for (int64_t t = 0; t < RS; ++t) src[t] += 2 * size;
        return gather_store_avx512<4, 2>(src, size, w + 2, RS, *a.map, bias + 2, a.relu, y + 2);
    }
  }
  for (int64_t i = 0; i < gn; ++i) {
    for (int64_t t = 0; t < RS; ++t) src[t] = buf + i * size + a.off[t];
    for (int64_t j = 0; j < m; ++j) {
      plane(0, i, j);
      gather_store_avx512<4, 1>(src, size, w, RS, *a.map, bias, a.relu, y);
    }
  }
}
#endif

// Planes nc = n*C + c in [nc0, nc0 + count): x plane nc -> the m planes of y from channel c*m.
// buf: kGroup phase planes; out: round_up(P * g.cols, kTile); src: R*S pointers.
template <typename T, bool kVec>
FC_INLINE void forward_planes(int64_t nc0, int64_t count, const ForwardArgs<T>& a, T* buf, T* out, const T** src) {
  const Conv2dShape& s = a.s;
  const int64_t RS = s.R * s.S, m = s.Kg(), L = a.g.cols, PQ = s.P * s.Q, HW = s.H * s.W, size = a.g.size();
  for (int64_t g0 = 0; g0 < count; g0 += kGroup) {
    const int64_t gn = std::min(kGroup, count - g0);
    for (int64_t i = 0; i < gn; ++i) {
      const int64_t at = (nc0 + g0 + i) * HW;
      copy_phases<kVec, T>(a.x + at, a.gate ? a.gate + at : nullptr, a.g, buf + i * size);
    }
#if defined(__x86_64__)
    if constexpr (kVec) {
      forward_group_avx512(nc0 + g0, gn, a, buf, src);
      continue;
    }
#endif
    for (int64_t i = 0; i < gn; ++i) {
      const int64_t nc = nc0 + g0 + i, k0 = (nc % s.C) * m;
      for (int64_t t = 0; t < RS; ++t) src[t] = buf + i * size + a.off[t];
      for (int64_t j = 0; j < m; ++j) {
        gather<kVec, T>(src, a.w + (k0 + j) * RS, RS, out, s.P * L);
        store_rows<T>(out, L, a.bias ? a.bias[k0 + j] : T(0), a.relu, a.y + (nc * m + j) * PQ, s.P, s.Q);
      }
    }
  }
}

template <typename T>
using ForwardPlanesFn = void (*)(int64_t, int64_t, const ForwardArgs<T>&, T*, T*, const T**);

template <typename T>
void forward_planes_portable(int64_t nc0, int64_t count, const ForwardArgs<T>& a, T* buf, T* out, const T** src) {
  forward_planes<T, false>(nc0, count, a, buf, out, src);
}

// ---------------------------------------------------------------------------------------------
// Input gradient. Task = image n, input channel c: the m dy planes of c padded, then each phase
// sub-plane of the padded dx gathered from its taps, then interleaved into dx.

template <typename T>
struct InputGradArgs {
  const Conv2dShape& s;
  const PhasePlane& g;  // one dy plane: top Tp, left Lp, rows Tp + Hs, cols Lp + Ws
  int64_t Hs;           // rows of a phase sub-plane of the padded dx (its row width is g.cols)
  int64_t osub;         // elements between the sub-planes of `out`: round_up(Hs * g.cols, kTile)
  // The taps of output phase f = a*sw + b: [first[f], first[f + 1]) of tap_at (offset of its run
  // in the m padded dy planes) and tap_w (index of its weight among channel c's m*R*S).
  std::vector<int64_t> first, tap_at, tap_w;
  InputGradArgs(const Conv2dShape& s, const PhasePlane& g, int64_t Hs) : s(s), g(g), Hs(Hs), osub(round_up(Hs * g.cols, kTile)) {
    const int64_t sh = s.stride_h, sw = s.stride_w;
    const int64_t Tp = (s.R - 1) * s.dil_h / sh, Lp = (s.S - 1) * s.dil_w / sw;
    for (int64_t pa = 0; pa < sh; ++pa)
      for (int64_t pb = 0; pb < sw; ++pb) {
        // Sub-plane (pa, pb)[i][jj] = sum over its taps of w * dy[i - (r*dh)/sh][jj - (s*dw)/sw].
        first.push_back(int64_t(tap_at.size()));
        for (int64_t j = 0; j < s.Kg(); ++j)
          for (int64_t r = 0; r < s.R; ++r) {
            if ((r * s.dil_h) % sh != pa) continue;
            for (int64_t c = 0; c < s.S; ++c) {
              if ((c * s.dil_w) % sw != pb) continue;
              tap_at.push_back(j * g.size() + (Tp - r * s.dil_h / sh) * g.cols + (Lp - c * s.dil_w / sw));
              tap_w.push_back((j * s.R + r) * s.S + c);
            }
          }
      }
    first.push_back(int64_t(tap_at.size()));
  }
};

// dy, gate: the m planes (n, c*m ...); w: weights of output channels c*m ...; dx: plane (n, c).
template <typename T, bool kVec>
FC_INLINE void input_grad_plane(const T* dy, const T* gate, const T* w, T* dx, const InputGradArgs<T>& a, T* buf,
                                T* out, const T** src, T* wt) {
  const Conv2dShape& s = a.s;
  const PhasePlane& g = a.g;
  const int64_t m = s.Kg(), PQ = s.P * s.Q, L = g.cols, n = a.Hs * L;
  const int64_t sh = s.stride_h, sw = s.stride_w;
  for (int64_t j = 0; j < m; ++j)
    copy_phases<kVec, T>(dy + j * PQ, gate ? gate + j * PQ : nullptr, g, buf + j * g.size());
  for (int64_t f = 0; f < sh * sw; ++f) {
    const int64_t t0 = a.first[f], taps = a.first[f + 1] - t0;
    for (int64_t t = 0; t < taps; ++t) src[t] = buf + a.tap_at[t0 + t], wt[t] = w[a.tap_w[t0 + t]];
    T* o = out + f * a.osub;
    if (taps == 0) {
      std::fill(o, o + n, T(0));
    } else {
      gather<kVec, T>(src, wt, taps, o, n);
    }
  }
  // dx[h][x] = padded dx (h + ph, x + pw) = sub((h + ph) % sh, (x + pw) % sw)[(h + ph)/sh][(x + pw)/sw].
  int64_t ha = s.pad_h % sh, hi = s.pad_h / sh;  // phase and sub-plane row of dx row h
  for (int64_t h = 0; h < s.H; ++h) {
    const T* orow = out + ha * sw * a.osub + hi * L;
    if (++ha == sh) ha = 0, ++hi;
    T* __restrict d = dx + h * s.W;
    if (sw == 1) {
      const T* __restrict o = orow + s.pad_w;
      for (int64_t x = 0; x < s.W; ++x) d[x] = o[x];
    }
#if defined(__x86_64__)
    else if (kVec && sw == 2) {  // columns 0, 2, ... from phase pw % 2, 1, 3, ... from the other
      const int64_t b = s.pad_w % 2;
      if constexpr (kVec)
        interleave_row_avx512(orow + b * a.osub + s.pad_w / 2, orow + (1 - b) * a.osub + (s.pad_w + 1) / 2, d, s.W);
    }
#endif
    else {
      for (int64_t pb = 0; pb < sw; ++pb) {
        const int64_t x0 = ((pb - s.pad_w) % sw + sw) % sw;  // first column of phase pb
        const T* __restrict o = orow + pb * a.osub + (x0 + s.pad_w) / sw;
        for (int64_t x = x0, jj = 0; x < s.W; x += sw, ++jj) d[x] = o[jj];
      }
    }
  }
}

template <typename T>
using InputGradPlaneFn = void (*)(const T*, const T*, const T*, T*, const InputGradArgs<T>&, T*, T*, const T**, T*);

template <typename T>
void input_grad_plane_portable(const T* dy, const T* gate, const T* w, T* dx, const InputGradArgs<T>& a, T* buf,
                               T* out, const T** src, T* wt) {
  input_grad_plane<T, false>(dy, gate, w, dx, a, buf, out, src, wt);
}

// ---------------------------------------------------------------------------------------------
// Weight gradient. Task = input channel c and a range of images: per image the phase plane of
// x(n, c), then the sums of its m output channels' taps.

// x: plane (n, c); dy, gate: planes (n, c*m ...); sums: m x RS doubles, added to.
template <typename T, bool kVec>
FC_INLINE void weight_grad_plane(const T* x, const T* dy, const T* gate, const ForwardArgs<T>& a, T* buf,
                                 const T** src, double* sums) {
  const Conv2dShape& s = a.s;
  const int64_t RS = s.R * s.S, m = s.Kg(), PQ = s.P * s.Q;
  copy_phases<kVec, T>(x, nullptr, a.g, buf);
  for (int64_t t = 0; t < RS; ++t) src[t] = buf + a.off[t];
  for (int64_t j = 0; j < m; ++j)
    wgrad_portable(dy + j * PQ, gate ? gate + j * PQ : nullptr, s.P, s.Q, src, RS, a.g.cols, sums + j * RS);
}

// Channel c, images [n0, n1): sums (m x RS doubles) += the weight-gradient sums. vacc: m*RS*16 floats.
template <typename T>
using WeightGradTaskFn = void (*)(int64_t c, int64_t n0, int64_t n1, const T* dy, const T* gate,
                                  const ForwardArgs<T>& a, T* buf, const T** src, float* vacc, double* sums);

template <typename T>
void weight_grad_task_portable(int64_t c, int64_t n0, int64_t n1, const T* dy, const T* gate, const ForwardArgs<T>& a,
                               T* buf, const T** src, float*, double* sums) {
  const Conv2dShape& s = a.s;
  const int64_t m = s.Kg(), HW = s.H * s.W, PQ = s.P * s.Q;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t at = (n * s.C + c) * m * PQ;
    weight_grad_plane<T, false>(a.x + (n * s.C + c) * HW, dy + at, gate ? gate + at : nullptr, a, buf, src, sums);
  }
}

#if defined(__x86_64__)
// The AVX-512 task: lane sums in float vectors (vacc) across images, moved into the double sums
// every F images (F*P*Q <= 2^14, so a lane adds at most ~2^10 products in float) and at the end; F
// depends on the shape only, so the order of every sum is fixed.
FC_TARGET_AVX512 void weight_grad_task_avx512(int64_t c, int64_t n0, int64_t n1, const float* dy, const float* gate,
                                              const ForwardArgs<float>& a, float* buf, const float** src,
                                              float* vacc, double* sums) {
  const Conv2dShape& s = a.s;
  const int64_t m = s.Kg(), RS = s.R * s.S, HW = s.H * s.W, PQ = s.P * s.Q;
  const int64_t F = std::max<int64_t>(1, (int64_t(1) << 14) / PQ), blocks = ceil_div(RS, kMaxWgradTaps);
  std::fill(vacc, vacc + m * RS * 16, 0.f);
  for (int64_t t = 0; t < RS; ++t) src[t] = buf + a.off[t];
  for (int64_t n = n0; n < n1; ++n) {
    copy_phases_avx512(a.x + (n * s.C + c) * HW, nullptr, a.g, buf);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t at = ((n * s.C + c) * m + j) * PQ;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t t0 = b * RS / blocks, t1 = (b + 1) * RS / blocks;
        kWgradAvx512[t1 - t0](dy + at, gate ? gate + at : nullptr, src + t0, *a.map, vacc + (j * RS + t0) * 16);
      }
    }
    if ((n - n0 + 1) % F == 0 || n + 1 == n1) {
      for (int64_t i = 0; i < m * RS; ++i) sums[i] += reduce_pd(_mm512_loadu_ps(vacc + 16 * i));
      std::fill(vacc, vacc + m * RS * 16, 0.f);
    }
  }
}
#endif

#if defined(__x86_64__)
FC_TARGET_AVX512 void forward_planes_avx512(int64_t nc0, int64_t count, const ForwardArgs<float>& a, float* buf,
                                            float* out, const float** src) {
  forward_planes<float, true>(nc0, count, a, buf, out, src);
}
FC_TARGET_AVX512 void input_grad_plane_avx512(const float* dy, const float* gate, const float* w, float* dx,
                                              const InputGradArgs<float>& a, float* buf, float* out,
                                              const float** src, float* wt) {
  input_grad_plane<float, true>(dy, gate, w, dx, a, buf, out, src, wt);
}
#endif

template <typename T>
ForwardPlanesFn<T> forward_planes_fn() {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512<T>()) return &forward_planes_avx512;
#endif
  return &forward_planes_portable<T>;
}

template <typename T>
InputGradPlaneFn<T> input_grad_plane_fn() {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512<T>()) return &input_grad_plane_avx512;
#endif
  return &input_grad_plane_portable<T>;
}

template <typename T>
WeightGradTaskFn<T> weight_grad_task_fn() {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512<T>()) return &weight_grad_task_avx512;
#endif
  return &weight_grad_task_portable<T>;
}

// The phase plane of an input plane for the forward pass and the weight gradient, and its taps'
// offsets (tap t = r*S + s reads sub((r*dh) % sh, (s*dw) % sw) from row (r*dh)/sh, column (s*dw)/sw).
// With stride 1 along W the rows share their padding: a row pitch of W + pw (>= Q) leaves pw zeros
// between consecutive rows, which serve as the right padding of one row and the left padding of
// the next (the last column read, Q - 1 + (S-1)*dw = W + 2*pw - 1, is within pw of the row's end),
// so fewer virtual columns are computed and dropped (7x7 planes, 7x7 kernel: 10 instead of 13).
PhasePlane input_phases(const Conv2dShape& s) {
  const int64_t cols = s.stride_w == 1 ? std::max(s.W + s.pad_w, s.Q) : div_up(s.W + 2 * s.pad_w, s.stride_w);
  return PhasePlane(s.H, s.W, s.pad_h, s.pad_w, s.stride_h, s.stride_w, div_up(s.H + 2 * s.pad_h, s.stride_h), cols);
}

std::vector<int64_t> tap_offsets(const Conv2dShape& s, const PhasePlane& g) {
  std::vector<int64_t> off(s.R * s.S);
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t c = 0; c < s.S; ++c) off[r * s.S + c] = g.at(r * s.dil_h, c * s.dil_w);
  return off;
}

}  // namespace

bool depthwise_supports(const Conv2dShape& s) { return s.depthwise(); }

namespace {

#if defined(__x86_64__)
// ---------------------------------------------------------------------------------------------
// Channel-blocked forward for small planes (AVX-512 float32). On a 7x7 or 14x14 plane a row fills
// a fraction of a vector, and the virtual rows' taps are unaligned loads across cache lines; here
// 16 planes (channels c0 ... c0 + 15 of one image) go through together: transposed into a
// zero-padded blocked plane xb[(h + ph)*Wp + w + pw][16 lanes = planes], so every tap of every
// stride is one aligned load for 16 planes; TW output pixels of a row sum in registers into the
// blocked output ob[p*Q + q][16], which is transposed back into the 16 output planes.

// r[j] lane i = r[i] lane j for a 16 x 16 block, in place: pairs of rows interleaved by 32 then
// 64 bits (lane block k of u[4g + j] = column j + 4k of rows 4g ... 4g + 3), then the 128-bit
// blocks gathered by two rounds of shuffle_f32x4.
FC_TARGET_AVX512 FC_INLINE void transpose16(__m512* r) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));      // columns 0, 4, 8, 12
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));  // 1, 5, 9, 13
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));  // 2, 6, 10, 14
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));  // 3, 7, 11, 15
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), w0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD), w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[j + 4] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[j + 12] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

// ob[16k ...] = bias + sum over taps t of wv[t] * xb[toff[t] + k*step] for k < TW (ReLU when
// `relu`): TW output pixels of a row, 16 planes each.
template <int TW>
FC_TARGET_AVX512 FC_INLINE void blocked_tile(const float* xb, int64_t step, const int64_t* toff, int64_t taps,
                                             const float* wv, __m512 bias, bool relu, float* ob) {
  __m512 acc[TW];
  for (int k = 0; k < TW; ++k) acc[k] = bias;
  for (int64_t t = 0; t < taps; ++t) {
    const __m512 wt = _mm512_load_ps(wv + 16 * t);
    const float* x = xb + toff[t];
    for (int k = 0; k < TW; ++k) acc[k] = _mm512_fmadd_ps(wt, _mm512_load_ps(x + k * step), acc[k]);
  }
  for (int k = 0; k < TW; ++k) _mm512_store_ps(ob + 16 * k, relu ? _mm512_max_ps(_mm512_setzero_ps(), acc[k]) : acc[k]);
}

// The shape facts of the blocked forward, shared by its tasks.
struct Blocked {
  int64_t Hp, Wp;                 // the padded plane
  std::vector<int64_t> toff;      // tap t = r*S + s: (r*dh*Wp + s*dw) * 16
  std::vector<int32_t> at;        // source pixel i = h*W + w -> its padded pixel (h + ph)*Wp + w + pw
  explicit Blocked(const Conv2dShape& s) : Hp(s.H + 2 * s.pad_h), Wp(s.W + 2 * s.pad_w) {
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t c = 0; c < s.S; ++c) toff.push_back((r * s.dil_h * Wp + c * s.dil_w) * 16);
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t w = 0; w < s.W; ++w) at.push_back(int32_t((h + s.pad_h) * Wp + w + s.pad_w));
  }
  // Floats of a task's scratch: xb, ob (rounded up to whole 16-pixel blocks), the weights.
  int64_t xb_size() const { return Hp * Wp * 16; }
  static int64_t ob_size(const Conv2dShape& s) { return round_up(s.P * s.Q, 16) * 16; }
};

// Whether the blocked forward runs (AVX-512 float32): when a task's blocked planes fit in 3/4 of
// L1 (small planes), or, with 25 taps or more, in half of L2: the transposes cost a fixed few
// shuffles per pixel, the taps R*S FMAs, so on larger planes, whose blocked rows stream from L2,
// it pays only when the taps dominate.
bool blocked_forward_fits(const Conv2dShape& s) {
  const int64_t bytes = 4 * ((s.H + 2 * s.pad_h) * (s.W + 2 * s.pad_w) * 16 + Blocked::ob_size(s));
  const CacheSizes& c = cache_sizes();
  return current_isa() >= Isa::kAvx512 && (4 * bytes <= 3 * c.l1 || (s.R * s.S >= 25 && 2 * bytes <= c.l2));
}

// Image n, channels [c0, c0 + cn): x planes -> the m output planes of each. xb: zeroed xb_size()
// floats (only the interior is written, so the padding stays zero); ob: scratch; wv: the blocked
// weights of these channels, m x (R*S + 1) x 16 (tap t of output j: wv[(j*(R*S + 1) + t)*16 + l]
// = w of output channel (c0 + l)*m + j, its bias at t = R*S; 0 for l >= cn).
FC_TARGET_AVX512 void blocked_group(int64_t n, int64_t c0, int64_t cn, const ForwardArgs<float>& a,
                                    const Blocked& b, float* xb, float* ob, const float* wv) {
  const Conv2dShape& s = a.s;
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q, RS = s.R * s.S, m = s.Kg();
  const __m512 zero = _mm512_setzero_ps();
  __m512 r[16];
  for (int64_t i0 = 0; i0 < HW; i0 += 16) {
    const __mmask16 lanes = first_lanes(HW - i0);
    for (int64_t l = 0; l < 16; ++l) {
      if (l >= cn) {
        r[l] = zero;
        continue;
      }
      const int64_t at = (n * s.C + c0 + l) * HW + i0;
      // The next group's planes follow these: ask for the same place in them (small planes are
      // short streams that the hardware prefetchers pick up too late).
      _mm_prefetch(reinterpret_cast<const char*>(a.x + at + 16 * HW), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(a.x + at + 16 * HW + 15), _MM_HINT_T0);
      r[l] = lanes == 0xFFFF ? _mm512_loadu_ps(a.x + at) : _mm512_maskz_loadu_ps(lanes, a.x + at);
      if (a.gate)
        r[l] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(lanes, a.gate + at), zero, _CMP_NLE_UQ),
                                   r[l]);
    }
    transpose16(r);
    const int64_t kn = std::min<int64_t>(16, HW - i0);
    for (int64_t k = 0; k < kn; ++k) _mm512_store_ps(xb + 16 * int64_t(b.at[i0 + k]), r[k]);
  }
  const int64_t step = 16 * s.stride_w;
  for (int64_t j = 0; j < m; ++j, wv += (RS + 1) * 16) {
    const __m512 bv = _mm512_load_ps(wv + RS * 16);
    for (int64_t p = 0; p < s.P; ++p) {
      const float* xrow = xb + p * s.stride_h * b.Wp * 16;
      float* orow = ob + p * s.Q * 16;
      int64_t q = 0;
      for (; q + 8 <= s.Q; q += 8) blocked_tile<8>(xrow + q * step, step, b.toff.data(), RS, wv, bv, a.relu, orow + 16 * q);
      if (q + 4 <= s.Q) blocked_tile<4>(xrow + q * step, step, b.toff.data(), RS, wv, bv, a.relu, orow + 16 * q), q += 4;
      if (q + 2 <= s.Q) blocked_tile<2>(xrow + q * step, step, b.toff.data(), RS, wv, bv, a.relu, orow + 16 * q), q += 2;
      if (q < s.Q) blocked_tile<1>(xrow + q * step, step, b.toff.data(), RS, wv, bv, a.relu, orow + 16 * q);
    }
    for (int64_t i0 = 0; i0 < PQ; i0 += 16) {
      for (int k = 0; k < 16; ++k) r[k] = _mm512_load_ps(ob + 16 * (i0 + k));
      transpose16(r);
      const __mmask16 lanes = first_lanes(PQ - i0);
      for (int64_t l = 0; l < cn; ++l) _mm512_mask_storeu_ps(a.y + ((n * s.C + c0 + l) * m + j) * PQ + i0, lanes, r[l]);
    }
  }
}

// The forward pass through blocked_group: tasks of 16 channels of one image.
void blocked_forward(const ForwardArgs<float>& a) {
  const Conv2dShape& s = a.s;
  const Blocked b(s);
  const int64_t blocks = ceil_div(s.C, 16), m = s.Kg(), RS = s.R * s.S, wblock = m * (RS + 1) * 16;
  Scratch<float> wv_scratch;  // blocked_group's wv, block after block of 16 channels
  float* wv = wv_scratch.get(blocks * wblock);
  std::fill(wv, wv + blocks * wblock, 0.f);
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t j = 0; j < m; ++j) {
      const int64_t k = c * m + j;
      float* o = wv + (c / 16) * wblock + j * (RS + 1) * 16 + c % 16;
      for (int64_t t = 0; t < RS; ++t) o[16 * t] = a.w[k * RS + t];
      o[16 * RS] = a.bias ? a.bias[k] : 0.f;
    }
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<float> xb_scratch, ob_scratch;
    float* xb = xb_scratch.get(b.xb_size());
    std::fill(xb, xb + b.xb_size(), 0.f);
    float* ob = ob_scratch.get(Blocked::ob_size(s));
    for (int64_t g = begin; g < end; ++g) {
      const int64_t c0 = (g % blocks) * 16;
      blocked_group(g / blocks, c0, std::min<int64_t>(16, s.C - c0), a, b, xb, ob, wv + (g % blocks) * wblock);
    }
  });
}
#endif

// The forward pass; with a gate (x's shape), x is read as relu_backward(x, gate).
template <typename T>
void forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s, bool relu, const T* gate) {
  const PhasePlane g = input_phases(s);
  const std::vector<int64_t> off = tap_offsets(s, g);
  const OutputMap map(use_avx512<T>() ? s.P : 0, s.Q, g.cols);  // empty when unused
  const ForwardArgs<T> args{s, g, off.data(), x, w, bias, y, relu, &map, gate};
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>)
    if (blocked_forward_fits(s)) return blocked_forward(args);
#endif
  const ForwardPlanesFn<T> fn = forward_planes_fn<T>();
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> buf_scratch, out_scratch;
    static thread_local Scratch<const T*> src_scratch;
    T* buf = buf_scratch.get(kGroup * g.size());
    zero_phases(g, buf, kGroup);
    fn(begin, end - begin, args, buf, out_scratch.get(round_up(s.P * g.cols, kTile)), src_scratch.get(s.R * s.S));
  });
}

// With stride 1, multiplier 1 and padding <= dil*(k-1), dx is the forward convolution of dy with the
// weights flipped (r, s -> R-1-r, S-1-s), padding dil*(k-1) - pad: the forward kernels serve it.
bool input_grad_is_forward(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.Kg() == 1 && s.pad_h <= s.dil_h * (s.R - 1) &&
         s.pad_w <= s.dil_w * (s.S - 1);
}

template <typename T>
void input_grad_as_forward(const T* dy, const T* w, T* dx, const Conv2dShape& s, const T* gate) {
  Conv2dShape d = s;
  d.H = s.P, d.W = s.Q, d.P = s.H, d.Q = s.W;
  d.pad_h = s.dil_h * (s.R - 1) - s.pad_h, d.pad_w = s.dil_w * (s.S - 1) - s.pad_w;
  const int64_t RS = s.R * s.S;
  std::vector<T> flipped(size_t(s.K * RS));
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t t = 0; t < RS; ++t) flipped[k * RS + t] = w[k * RS + RS - 1 - t];
  forward(dy, flipped.data(), static_cast<const T*>(nullptr), dx, d, false, gate);
}

}  // namespace

template <typename T>
void depthwise_forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s, bool relu) {
  forward(x, w, bias, y, s, relu, static_cast<const T*>(nullptr));
}

template <typename T>
void depthwise_backward_input(const T* dy, const T* w, T* dx, const Conv2dShape& s, const T* gate) {
  if (input_grad_is_forward(s)) return input_grad_as_forward(dy, w, dx, s, gate);
  const int64_t sh = s.stride_h, sw = s.stride_w, m = s.Kg(), RS = s.R * s.S, HW = s.H * s.W, PQ = s.P * s.Q;
  const int64_t Tp = (s.R - 1) * s.dil_h / sh, Lp = (s.S - 1) * s.dil_w / sw;
  const int64_t Hs = div_up(s.H + 2 * s.pad_h, sh), Ws = div_up(s.W + 2 * s.pad_w, sw);
  const PhasePlane g(s.P, s.Q, Tp, Lp, 1, 1, Tp + Hs, Lp + Ws);
  const InputGradArgs<T> args(s, g, Hs);
  const InputGradPlaneFn<T> fn = input_grad_plane_fn<T>();
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> buf_scratch, out_scratch, w_scratch;
    static thread_local Scratch<const T*> src_scratch;
    T* buf = buf_scratch.get(m * g.size());
    zero_phases(g, buf, m);
    T* out = out_scratch.get(sh * sw * args.osub);
    const T** src = src_scratch.get(m * RS);
    T* wt = w_scratch.get(m * RS);
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t c = nc % s.C, at = nc * m * PQ;
      fn(dy + at, gate ? gate + at : nullptr, w + c * m * RS, dx + nc * HW, args, buf, out, src, wt);
    }
  });
}

template <typename T>
void depthwise_backward_weight(const T* dy, const T* x, T* dw, const Conv2dShape& s, const T* gate) {
  const PhasePlane g = input_phases(s);
  const std::vector<int64_t> off = tap_offsets(s, g);
  const OutputMap map(use_avx512<T>() ? s.P : 0, s.Q, g.cols);  // empty when unused
  const ForwardArgs<T> args{s, g, off.data(), x, nullptr, nullptr, nullptr, false, &map};
  const int64_t m = s.Kg(), RS = s.R * s.S, wsize = s.K * RS;
  // The sum over images is split into a number of partial sums fixed by the shape (enough tasks
  // for a few threads when channels are few), each summed in image order, then added in order.
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(s.N, ceil_div(8, s.C)));
  std::vector<double> sums(size_t(splits * wsize), 0.0);
  const WeightGradTaskFn<T> fn = weight_grad_task_fn<T>();
  at::parallel_for(0, splits * s.C, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> buf_scratch;
    static thread_local Scratch<const T*> src_scratch;
    static thread_local Scratch<float> vacc_scratch;
    T* buf = buf_scratch.get(g.size());
    zero_phases(g, buf);
    const T** src = src_scratch.get(RS);
    float* vacc = vacc_scratch.get(m * RS * 16);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sp = task / s.C, c = task % s.C;
      const int64_t n0 = sp * s.N / splits, n1 = (sp + 1) * s.N / splits;
      if (n0 < n1) fn(c, n0, n1, dy, gate, args, buf, src, vacc, sums.data() + sp * wsize + c * m * RS);
    }
  });
  at::parallel_for(0, wsize, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double v = sums[i];
      for (int64_t sp = 1; sp < splits; ++sp) v += sums[sp * wsize + i];
      dw[i] = T(v);
    }
  });
}

template void depthwise_forward<float>(const float*, const float*, const float*, float*, const Conv2dShape&, bool);
template void depthwise_forward<double>(const double*, const double*, const double*, double*, const Conv2dShape&,
                                        bool);
template void depthwise_backward_input<float>(const float*, const float*, float*, const Conv2dShape&, const float*);
template void depthwise_backward_input<double>(const double*, const double*, double*, const Conv2dShape&,
                                               const double*);
template void depthwise_backward_weight<float>(const float*, const float*, float*, const Conv2dShape&, const float*);
template void depthwise_backward_weight<double>(const double*, const double*, double*, const Conv2dShape&,
                                                const double*);

}  // namespace cpu
}  // namespace fastconv
