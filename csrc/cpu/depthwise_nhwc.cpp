// The channels_last (NHWC) passes of the depthwise family (cpu/depthwise.h): staged rows, and two
// row kernels vectorised along C, compiled for AVX-512, AVX2 and the baseline and chosen at run time.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/depthwise.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"  // Scratch
#include "cpu/simd.h"

namespace fastconv {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Row kernels, on the portable vectors of cpu/simd.h (one source for every ISA).

constexpr int kMaxPixels = 8;  // pixels per forward tile (accumulators in registers)
constexpr int kMaxTaps = 12;   // taps per weight-gradient group (accumulators in registers)

// NV channel vectors (u < NV, lanes l < L) of NP pixels i:
//   dst[i*dstride + u*L + l] = bias[u*L + l]
//                              + sum over taps t of w[t][woff + u*L + l] * src[t][soff + i*istride + u*L + l]
// then ReLU when `relu` (max(0, v), NaN kept); of the last vector only lanes l < `lanes` are stored.
template <typename T, int VB, int NP, int NV>
FC_INLINE void conv_tile(const T* const* src, const T* const* w, int64_t taps, int64_t soff, int64_t woff,
                         int64_t istride, const T* bias, bool relu, int lanes, T* dst, int64_t dstride) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::kLanes;
  // Tiles of fewer than 4 pixels (edge pixels, short rows) sum their taps in SP interleaved partial
  // sums, so that enough independent FMA chains are in flight; added in a fixed order at the end.
  constexpr int SP = NP >= 4 ? 1 : NP == 1 ? 4 : 2;
  V acc[SP][NV][NP];
#pragma GCC unroll 4
  for (int j = 0; j < SP; ++j)
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) {
      const V b = j == 0 ? load<V>(bias + u * L) : V{};
#pragma GCC unroll 8
      for (int i = 0; i < NP; ++i) acc[j][u][i] = b;
    }
  int64_t t = 0;
  for (; t + SP <= taps; t += SP)
#pragma GCC unroll 4
    for (int j = 0; j < SP; ++j) {
      const T* s = src[t + j] + soff;
#pragma GCC unroll 2
      for (int u = 0; u < NV; ++u) {
        const V wt = load<V>(w[t + j] + woff + u * L);
#pragma GCC unroll 8
        for (int i = 0; i < NP; ++i) acc[j][u][i] += wt * load<V>(s + i * istride + u * L);
      }
    }
#pragma GCC unroll 4
  for (int j = 0; j + 1 < SP; ++j) {  // the last taps % SP, into partial sums 0, 1, ...
    if (t + j >= taps) break;
    const T* s = src[t + j] + soff;
#pragma GCC unroll 2
    for (int u = 0; u < NV; ++u) {
      const V wt = load<V>(w[t + j] + woff + u * L);
#pragma GCC unroll 8
      for (int i = 0; i < NP; ++i) acc[j][u][i] += wt * load<V>(s + i * istride + u * L);
    }
  }
  const V zero = V{};
#pragma GCC unroll 2
  for (int u = 0; u < NV; ++u)
#pragma GCC unroll 8
    for (int i = 0; i < NP; ++i) {
      V v = acc[0][u][i];
#pragma GCC unroll 4
      for (int j = 1; j < SP; ++j) v += acc[j][u][i];
      store(dst + i * dstride + u * L, relu ? (v < zero ? zero : v) : v, u + 1 < NV ? L : lanes);
    }
}

// A row of n pixels x cb channels (cb <= the buffers' channel pitch, which is a multiple of the
// vector): pixel i, channel k reads src[t][i*istride + k] and w[t][k], writes dst[i*dstride + k];
// bias[k] is added (cb rounded up to whole vectors must be readable in w and bias). Tiles of <= 8
// pixels, sized evenly (a 7-pixel row is one tile of 7 independent sums per tap), x two vectors
// with AVX-512 (32 registers), else one.
template <typename T, int VB>
FC_INLINE void conv_row(const T* const* src, const T* const* w, int64_t taps, int64_t istride, const T* bias,
                        bool relu, int64_t n, int64_t cb, T* dst, int64_t dstride) {
  constexpr int L = Vec<T, VB>::kLanes;
  constexpr int64_t NV = VB == 64 ? 2 : 1;
  const int64_t tiles = ceil_div(n, kMaxPixels), vectors = ceil_div(cb, L);
  for (int64_t vi = 0; vi < vectors;) {
    const int64_t nv = std::min(NV, vectors - vi), v = vi * L;
    const int lanes = int(std::min<int64_t>(L, cb - (vi + nv - 1) * L));
    for (int64_t tl = 0; tl < tiles; ++tl) {
      const int64_t i0 = tl * n / tiles, np = (tl + 1) * n / tiles - i0;
      const int64_t soff = v + i0 * istride;
      T* d = dst + i0 * dstride + v;
      switch (np * 2 + nv - 1) {
#define FC_CASE(K)                                                                                       \
  case 2 * K: conv_tile<T, VB, K, 1>(src, w, taps, soff, v, istride, bias + v, relu, lanes, d, dstride); break; \
  case 2 * K + 1:                                                                                        \
    if constexpr (NV == 2) conv_tile<T, VB, K, 2>(src, w, taps, soff, v, istride, bias + v, relu, lanes, d, dstride); \
    break;
        FC_CASE(1) FC_CASE(2) FC_CASE(3) FC_CASE(4) FC_CASE(5) FC_CASE(6) FC_CASE(7) FC_CASE(8)
#undef FC_CASE
      }
    }
    vi += nv;
  }
}

// acc[t][l] (t < NT, at accs[t] + off) += sum over pixels q < n of dy[q*pitch + off + l] *
// src[t][off + q*istride + l]: the weight-gradient sums of one channel vector over one row.
template <typename T, int VB, int NT>
FC_INLINE void wgrad_group(const T* const* src, T* const* accs, const T* dy, int64_t pitch, int64_t off,
                           int64_t istride, int64_t n) {
  using V = typename Vec<T, VB>::type;
  V acc[NT];
#pragma GCC unroll 12
  for (int t = 0; t < NT; ++t) acc[t] = load<V>(accs[t] + off);
  for (int64_t q = 0; q < n; ++q) {
    const V d = load<V>(dy + q * pitch + off);
#pragma GCC unroll 12
    for (int t = 0; t < NT; ++t) acc[t] += d * load<V>(src[t] + off + q * istride);
  }
#pragma GCC unroll 12
  for (int t = 0; t < NT; ++t) std::memcpy(accs[t] + off, &acc[t], sizeof(V));
}

// A row for every tap t < taps, channels [0, cb) (whole vectors): accs[t][k] += sum over q < n of
// dy[q*pitch + k] * src[t][q*istride + k]. Taps in even groups of <= kMaxTaps.
template <typename T, int VB>
FC_INLINE void wgrad_row(const T* const* src, T* const* accs, int64_t taps, const T* dy, int64_t pitch,
                         int64_t istride, int64_t n, int64_t cb) {
  constexpr int L = Vec<T, VB>::kLanes;
  const int64_t groups = ceil_div(taps, kMaxTaps);
  for (int64_t v = 0; v < cb; v += L)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t0 = g * taps / groups, nt = (g + 1) * taps / groups - t0;
      switch (nt) {
#define FC_CASE(K) \
  case K: wgrad_group<T, VB, K>(src + t0, accs + t0, dy, pitch, v, istride, n); break;
        FC_CASE(1) FC_CASE(2) FC_CASE(3) FC_CASE(4) FC_CASE(5) FC_CASE(6)
        FC_CASE(7) FC_CASE(8) FC_CASE(9) FC_CASE(10) FC_CASE(11) FC_CASE(12)
#undef FC_CASE
      }
    }
}

// d[i*pitch + k] = src[i*pstride + k] for i < n, k < cb: whole vectors, then single elements.
template <typename T, int VB>
FC_INLINE void copy_pixels(const T* src, int64_t pstride, int64_t n, int64_t cb, T* d, int64_t pitch) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::kLanes;
  const int64_t full = cb / L * L;
  for (int64_t i = 0; i < n; ++i) {
    const T* s = src + i * pstride;
    T* o = d + i * pitch;
    int64_t k = 0;
    for (; k < full; k += L) store(o + k, load<V>(s + k), L);
    for (; k < cb; ++k) o[k] = s[k];
  }
}

// The row kernels of one ISA, and their channel vector in elements (the buffers' channel pitch
// is a multiple of it).
template <typename T>
struct RowKernels {
  int lanes;
  void (*conv)(const T* const*, const T* const*, int64_t, int64_t, const T*, bool, int64_t, int64_t, T*, int64_t);
  void (*wgrad)(const T* const*, T* const*, int64_t, const T*, int64_t, int64_t, int64_t, int64_t);
  void (*copy)(const T*, int64_t, int64_t, int64_t, T*, int64_t);
};

#define FC_ROW_KERNELS(NAME, TARGET, T, VB)                                                                   \
  TARGET void NAME##_conv(const T* const* src, const T* const* w, int64_t taps, int64_t istride, const T* bias, \
                          bool relu, int64_t n, int64_t cb, T* dst, int64_t dstride) {                         \
    conv_row<T, VB>(src, w, taps, istride, bias, relu, n, cb, dst, dstride);                                  \
  }                                                                                                            \
  TARGET void NAME##_wgrad(const T* const* src, T* const* accs, int64_t taps, const T* dy, int64_t pitch,      \
                           int64_t istride, int64_t n, int64_t cb) {                                           \
    wgrad_row<T, VB>(src, accs, taps, dy, pitch, istride, n, cb);                                              \
  }                                                                                                            \
  TARGET void NAME##_copy(const T* src, int64_t pstride, int64_t n, int64_t cb, T* d, int64_t pitch) {          \
    copy_pixels<T, VB>(src, pstride, n, cb, d, pitch);                                                         \
  }                                                                                                            \
  constexpr RowKernels<T> NAME = {Vec<T, VB>::kLanes, &NAME##_conv, &NAME##_wgrad, &NAME##_copy};

FC_ROW_KERNELS(generic_f32, , float, 16)
FC_ROW_KERNELS(generic_f64, , double, 16)
#if defined(__x86_64__)
FC_ROW_KERNELS(avx2_f32, FC_TARGET_AVX2, float, 32)
FC_ROW_KERNELS(avx2_f64, FC_TARGET_AVX2, double, 32)
FC_ROW_KERNELS(avx512_f32, FC_TARGET_AVX512, float, 64)
FC_ROW_KERNELS(avx512_f64, FC_TARGET_AVX512, double, 64)
#endif
#undef FC_ROW_KERNELS

template <typename T>
const RowKernels<T>& row_kernels() {
  if constexpr (std::is_same_v<T, float>) {
#if defined(__x86_64__)
    if (current_isa() >= Isa::kAvx512) return avx512_f32;
    if (current_isa() == Isa::kAvx2) return avx2_f32;
#endif
    return generic_f32;
  } else {
#if defined(__x86_64__)
    if (current_isa() >= Isa::kAvx512) return avx512_f64;
    if (current_isa() == Isa::kAvx2) return avx2_f64;
#endif
    return generic_f64;
  }
}

// ---------------------------------------------------------------------------------------------
// Staged rows. A task owns a block of cb <= CB channels (CB a multiple of the vector) and keeps
// the source rows it reads in a ring of `slots` rows of `cols` pixels x CB channels, zero where
// the row has no pixel (padding) and in channels [cb, CB): row u lives in slot u % slots, so the
// rows one output row reads (a window of <= slots consecutive rows) never share a slot.

template <typename T>
struct Ring {
  T* buf;
  int64_t slots, cols, CB;
  std::vector<int64_t> tag;  // the row each slot holds, -1 for none
  Ring(T* buf, int64_t slots, int64_t cols, int64_t CB) : buf(buf), slots(slots), cols(cols), CB(CB), tag(slots, -1) {
    std::fill(buf, buf + slots * cols * CB, T(0));
  }
  T* slot(int64_t u) { return buf + (u % slots) * cols * CB; }
  // Whether row u must be copied in (and marks it present).
  bool missing(int64_t u) {
    int64_t& t = tag[u % slots];
    if (t == u) return false;
    t = u;
    return true;
  }
};

// d[i*CB + k] = src[i*pstride + (first + k*num)/den], i < n, k < cb: a row of n source pixels
// into staged columns; channel k of the block reads source channel (first + k*num)/den.
template <typename T>
void stage_row(const RowKernels<T>& kern, const T* src, int64_t pstride, int64_t n, int64_t first, int64_t num,
               int64_t den, int64_t cb, T* d, int64_t CB) {
  if (num == 1 && den == 1) return kern.copy(src + first, pstride, n, cb, d, CB);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < cb; ++k) d[i * CB + k] = src[i * pstride + (first + k * num) / den];
}

// Channels per block for `channels` channels when each channel needs `bytes` bytes of staged
// rows: as many as fit in half of L1, whole vectors, blocks of even size.
int64_t channel_block(int64_t channels, int64_t bytes, int64_t lanes) {
  const int64_t fit = std::max<int64_t>(lanes, cache_sizes().l1 / 2 / std::max<int64_t>(1, bytes) / lanes * lanes);
  const int64_t blocks = ceil_div(channels, std::min(fit, round_up(channels, lanes)));
  return round_up(ceil_div(channels, blocks), lanes);
}

// Row chunks per (image, channel block) so that a call has >= 8 tasks per thread (balance).
int64_t row_chunks(int64_t rows, int64_t other_tasks) {
  const int64_t want = 8 * int64_t(at::get_num_threads());
  return std::clamp<int64_t>(ceil_div(want, std::max<int64_t>(1, other_tasks)), 1, std::max<int64_t>(1, rows));
}

// w (K, 1, R, S) through its strides as wp[t*Kp + k] = w[k][0][r][s] (t = r*S + s), zero for k >= K.
template <typename T>
std::vector<T> pack_taps(const T* w, WeightStrides ws, const Conv2dShape& s, int64_t Kp) {
  std::vector<T> wp(size_t(s.R * s.S * Kp), T(0));
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t c = 0; c < s.S; ++c) wp[(r * s.S + c) * Kp + k] = w[k * ws.k + r * ws.r + c * ws.s];
  return wp;
}

// The taps of output column q0 of output row p (image n) read in place from NHWC x, from channel
// k0: tap(t, src) for each tap t = r*S + c whose input pixel lies in the image, src its address.
// Returns how many. The columns after q0 of a run (column_runs) read src + i * stride_w * C.
template <typename T, class F>
FC_INLINE int64_t in_place_taps(const T* x, const Conv2dShape& s, int64_t n, int64_t p, int64_t q0, int64_t k0,
                                F&& tap) {
  int64_t taps = 0;
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
    if (h < 0 || h >= s.H) continue;
    for (int64_t c = 0; c < s.S; ++c) {
      const int64_t wc = q0 * s.stride_w - s.pad_w + c * s.dil_w;
      if (wc < 0 || wc >= s.W) continue;
      tap(r * s.S + c, x + ((n * s.H + h) * s.W + wc) * s.C + k0);
      ++taps;
    }
  }
  return taps;
}

// Output columns [0, Q) as runs with one set of taps each: [qa, qb), whose taps all lie in the
// row, as one run(qa, qb); the columns in the padding's reach one at a time.
template <class F>
FC_INLINE void column_runs(const Conv2dShape& s, F&& run) {
  const int64_t qa = std::min(s.Q, ceil_div(s.pad_w, s.stride_w));
  const int64_t qb =
      std::clamp<int64_t>(floor_div(s.W - 1 + s.pad_w - (s.S - 1) * s.dil_w, s.stride_w) + 1, qa, s.Q);
  for (int64_t q = 0; q < qa; ++q) run(q, q + 1);
  if (qa < qb) run(qa, qb);
  for (int64_t q = qb; q < s.Q; ++q) run(q, q + 1);
}

// The taps of output row p (image n) from staged input rows: rows missing from the ring are
// staged first (input columns [w0, w1), channels k0 + [0, cb) read through channel / m, at staged
// column w + pad_w; ring key n*H + h). tap(t, src) with src the staged column of output column 0.
template <typename T, class F>
FC_INLINE int64_t staged_taps(const RowKernels<T>& kern, Ring<T>& ring, const T* x, const Conv2dShape& s, int64_t n,
                              int64_t p, int64_t k0, int64_t cb, int64_t w0, int64_t w1, F&& tap) {
  int64_t taps = 0;
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t h = p * s.stride_h - s.pad_h + r * s.dil_h;
    if (h < 0 || h >= s.H) continue;
    T* row = ring.slot(n * s.H + h);
    if (ring.missing(n * s.H + h))
      stage_row(kern, x + ((n * s.H + h) * s.W + w0) * s.C, s.C, w1 - w0, k0, 1, s.Kg(), cb,
                row + (w0 + s.pad_w) * ring.CB, ring.CB);
    for (int64_t c = 0; c < s.S; ++c, ++taps) tap(r * s.S + c, row + c * s.dil_w * ring.CB);
  }
  return taps;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Forward. Task = image n, block of output channels [k0, k0 + cb), a range of output rows. Output
// row p reads input rows h = p*sh - ph + r*dh, staged with the left padding: staged column
// q*sw + s*dw is tap (r, s) of output column q; output channel k reads input channel k / m.

template <typename T>
void depthwise_forward_nhwc(const T* x, const T* w, WeightStrides ws, const T* bias, T* y, const Conv2dShape& s,
                            bool relu) {
  if (s.N == 0) return;
  const RowKernels<T>& kern = row_kernels<T>();
  const int64_t m = s.Kg(), RS = s.R * s.S, L = kern.lanes, Kp = round_up(s.K, L);
  const int64_t sw = s.stride_w, pw = s.pad_w, dw = s.dil_w;
  const int64_t cols = (s.Q - 1) * sw + (s.S - 1) * dw + 1, slots = (s.R - 1) * s.dil_h + 1;
  // With m == 1 and whole vectors the input rows are read in place, not staged: output columns
  // [qa, qb), whose taps all lie in the row, as one run per tap; the few others (in the padding's
  // reach) pixel by pixel with their in-row taps. Channel blocks of <= 256 then.
  const bool direct = m == 1 && s.K % L == 0;
  const int64_t CB = direct ? round_up(ceil_div(s.K, ceil_div(s.K, 256)), L)
                            : channel_block(s.K, slots * cols * int64_t(sizeof(T)), L);
  const int64_t blocks = ceil_div(s.K, CB), chunks = row_chunks(s.P, s.N * blocks);
  const std::vector<T> wp = pack_taps(w, ws, s, Kp);
  std::vector<T> bp(size_t(Kp), T(0));
  if (bias) std::copy(bias, bias + s.K, bp.begin());
  // input columns [w0, w1) land in staged columns [w0 + pw, w1 + pw) < cols
  const int64_t w0 = std::max<int64_t>(0, -pw), w1 = std::clamp<int64_t>(cols - pw, w0, s.W);
  at::parallel_for(0, s.N * blocks * chunks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> ring_scratch;
    static thread_local Scratch<const T*> ptr_scratch;
    const T** src = ptr_scratch.get(2 * RS);
    const T** wt = src + RS;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks, b = (task / chunks) % blocks, n = task / (chunks * blocks);
      const int64_t k0 = b * CB, cb = std::min(CB, s.K - k0);
      const int64_t p0 = chunk * s.P / chunks, p1 = (chunk + 1) * s.P / chunks;
      if (direct) {
        for (int64_t p = p0; p < p1; ++p) {
          T* yrow = y + (n * s.P + p) * s.Q * s.K + k0;
          column_runs(s, [&](int64_t q0, int64_t q1) {
            int64_t i = 0;
            const int64_t taps = in_place_taps(x, s, n, p, q0, k0, [&](int64_t t, const T* in) {
              src[i] = in;
              wt[i++] = wp.data() + t * Kp + k0;
            });
            kern.conv(src, wt, taps, sw * s.C, bp.data() + k0, relu, q1 - q0, cb, yrow + q0 * s.K, s.K);
          });
        }
        continue;
      }
      Ring<T> ring(ring_scratch.get(slots * cols * CB), slots, cols, CB);
      for (int64_t p = p0; p < p1; ++p) {
        int64_t i = 0;
        const int64_t taps = staged_taps(kern, ring, x, s, n, p, k0, cb, w0, w1, [&](int64_t t, const T* in) {
          src[i] = in;
          wt[i++] = wp.data() + t * Kp + k0;
        });
        kern.conv(src, wt, taps, sw * CB, bp.data() + k0, relu, s.Q, cb, y + (n * s.P + p) * s.Q * s.K + k0,
                  s.K);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Input gradient, as a gather per input pixel. Task = image n, block of input channels
// [c0, c0 + cb), a range of input rows. Input (h, w) receives tap (r, s) of output
// ((h + ph - r*dh) / sh, (w + pw - s*dw) / sw) where both divide exactly: row h takes the output
// rows p of its valid r, and its columns of phase b = w % sw (w = b + i*sw) the taps s with
// (b + pw - s*dw) % sw == 0, column i reading output column q = i + o, o = (b + pw - s*dw) / sw.
// The m output channels c*m + j of channel c are staged as m rows, with `left` zero columns
// before q = 0 (where o < 0) and zeros past Q.

template <typename T>
void depthwise_backward_input_nhwc(const T* dy, const T* w, WeightStrides ws, T* dx, const Conv2dShape& s) {
  if (s.N == 0) return;
  const RowKernels<T>& kern = row_kernels<T>();
  const int64_t m = s.Kg(), RS = s.R * s.S, L = kern.lanes, sh = s.stride_h, sw = s.stride_w;
  const int64_t left = std::max<int64_t>(0, -floor_div(s.pad_w - (s.S - 1) * s.dil_w, sw));
  int64_t cols = s.Q;  // staged columns past `left`: every column a phase reads
  for (int64_t b = 0; b < std::min(sw, s.W); ++b) cols = std::max(cols, ceil_div(s.W - b, sw) + floor_div(b + s.pad_w, sw));
  cols += left;
  const int64_t slots = (s.R - 1) * s.dil_h / sh + 1;
  // With m == 1 and whole vectors dy is read in place, as the forward reads x.
  const bool direct = m == 1 && s.C % L == 0;
  const int64_t CB = direct ? round_up(ceil_div(s.C, ceil_div(s.C, 256)), L)
                            : channel_block(s.C, slots * m * cols * int64_t(sizeof(T)), L);
  const int64_t blocks = ceil_div(s.C, CB), chunks = row_chunks(s.H, s.N * blocks);
  // wp[(j*RS + t)*Cp + c] = w[c*m + j][t]; zero bias
  const int64_t Cp = round_up(s.C, L);
  std::vector<T> wp(size_t(m * RS * Cp), T(0)), zero(size_t(Cp), T(0));
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t j = 0; j < m; ++j)
      for (int64_t r = 0; r < s.R; ++r)
        for (int64_t q = 0; q < s.S; ++q)
          wp[(j * RS + r * s.S + q) * Cp + c] = w[(c * m + j) * ws.k + r * ws.r + q * ws.s];
  at::parallel_for(0, s.N * blocks * chunks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> ring_scratch;
    static thread_local Scratch<const T*> ptr_scratch;
    const T** src = ptr_scratch.get(2 * m * RS);
    const T** wt = src + m * RS;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks, b = (task / chunks) % blocks, n = task / (chunks * blocks);
      const int64_t c0 = b * CB, cb = std::min(CB, s.C - c0);
      const int64_t h0 = chunk * s.H / chunks, h1 = (chunk + 1) * s.H / chunks;
      if (direct) {
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t pb = 0; pb < std::min(sw, s.W); ++pb) {
            // columns i of this phase read dy columns i + o, o = (pb + pw - c*dw) / sw over its
            // taps c: [ia, ib) has every tap in the row, the others go pixel by pixel
            const int64_t nb = ceil_div(s.W - pb, sw);
            int64_t olo = 0, ohi = 0;
            bool any = false;
            for (int64_t c = 0; c < s.S; ++c) {
              const int64_t f = pb + s.pad_w - c * s.dil_w;
              if (((f % sw) + sw) % sw != 0) continue;
              olo = any ? std::min(olo, floor_div(f, sw)) : floor_div(f, sw);
              ohi = any ? std::max(ohi, floor_div(f, sw)) : floor_div(f, sw);
              any = true;
            }
            const int64_t ia = std::min(nb, std::max<int64_t>(0, -olo));
            const int64_t ib = std::clamp<int64_t>(s.Q - ohi, ia, nb);
            T* dxrow = dx + ((n * s.H + h) * s.W + pb) * s.C + c0;
            auto run = [&](int64_t i0, int64_t i1) {
              int64_t taps = 0;
              for (int64_t r = 0; r < s.R; ++r) {
                const int64_t e = h + s.pad_h - r * s.dil_h;
                if (e < 0 || e % sh != 0 || e / sh >= s.P) continue;
                for (int64_t c = 0; c < s.S; ++c) {
                  const int64_t f = pb + s.pad_w - c * s.dil_w;
                  if (((f % sw) + sw) % sw != 0) continue;
                  const int64_t q = i0 + floor_div(f, sw);
                  if (q < 0 || q >= s.Q) continue;
                  src[taps] = dy + ((n * s.P + e / sh) * s.Q + q) * s.K + c0;
                  wt[taps++] = wp.data() + (r * s.S + c) * Cp + c0;
                }
              }
              kern.conv(src, wt, taps, s.K, zero.data() + c0, false, i1 - i0, cb, dxrow + i0 * sw * s.C, sw * s.C);
            };
            for (int64_t i = 0; i < ia; ++i) run(i, i + 1);
            if (ia < ib) run(ia, ib);
            for (int64_t i = ib; i < nb; ++i) run(i, i + 1);
          }
        continue;
      }
      // ring row u = m*p + j: output row p, channel c*m + j
      Ring<T> ring(ring_scratch.get(slots * m * cols * CB), slots * m, cols, CB);
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t pb = 0; pb < std::min(sw, s.W); ++pb) {
          int64_t taps = 0;
          for (int64_t r = 0; r < s.R; ++r) {
            const int64_t e = h + s.pad_h - r * s.dil_h;
            if (e < 0 || e % sh != 0 || e / sh >= s.P) continue;
            const int64_t p = e / sh;
            for (int64_t j = 0; j < m; ++j) {
              T* row = ring.slot(m * p + j);
              if (ring.missing(m * p + j))
                stage_row(kern, dy + (n * s.P + p) * s.Q * s.K, s.K, s.Q, c0 * m + j, m, 1, cb, row + left * CB, CB);
              for (int64_t c = 0; c < s.S; ++c) {
                const int64_t f = pb + s.pad_w - c * s.dil_w;
                if (((f % sw) + sw) % sw != 0) continue;
                src[taps] = row + (floor_div(f, sw) + left) * CB;
                wt[taps++] = wp.data() + (j * RS + r * s.S + c) * Cp + c0;
              }
            }
          }
          kern.conv(src, wt, taps, CB, zero.data() + c0, false, ceil_div(s.W - pb, sw), cb,
                    dx + ((n * s.H + h) * s.W + pb) * s.C + c0, sw * s.C);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Weight gradient: dw[k][t] = sum over images and output pixels of dy[k] * (the input under tap t),
// staged as in the forward pass. Task = block of output channels x a range of the N*P output
// rows (a number of ranges fixed by the shape); per task, sums of T lanes over at most 2^14
// products each, moved into double sums; the ranges' double sums added in order at the end, so
// the result does not depend on the thread count.

template <typename T>
void depthwise_backward_weight_nhwc(const T* dy, const T* x, T* dw, const Conv2dShape& s) {
  const RowKernels<T>& kern = row_kernels<T>();
  const int64_t m = s.Kg(), RS = s.R * s.S, L = kern.lanes, NP = s.N * s.P;
  const int64_t cols = (s.Q - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1, slots = (s.R - 1) * s.dil_h + 1;
  // With m == 1 and whole vectors x and dy are read in place, as in the forward pass.
  const bool direct = m == 1 && s.K % L == 0;
  const int64_t CB = channel_block(
      s.K, (direct ? RS : slots * cols + s.Q + RS) * int64_t(sizeof(T)) + RS * 8, L);
  const int64_t blocks = ceil_div(s.K, CB);
  const int64_t splits = std::clamp<int64_t>(ceil_div(8, blocks), 1, std::max<int64_t>(1, NP));
  const int64_t flush = std::max<int64_t>(1, (int64_t(1) << 14) / s.Q);  // rows per float sum
  const int64_t w0 = std::max<int64_t>(0, -s.pad_w), w1 = std::clamp<int64_t>(cols - s.pad_w, w0, s.W);
  std::vector<double> sums(size_t(splits * RS * s.K), 0.0);  // [split][t][k]
  at::parallel_for(0, blocks * splits, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> ring_scratch, work_scratch;
    static thread_local Scratch<const T*> ptr_scratch;
    static thread_local Scratch<T*> acc_scratch;
    const T** src = ptr_scratch.get(RS);
    T** accs = acc_scratch.get(RS);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sp = task % splits, b = task / splits;
      const int64_t k0 = b * CB, cb = std::min(CB, s.K - k0);
      const int64_t g0 = sp * NP / splits, g1 = (sp + 1) * NP / splits;
      Ring<T> ring(ring_scratch.get(direct ? 0 : slots * cols * CB), direct ? 0 : slots, cols, CB);
      T* dyrow = work_scratch.get((s.Q + RS) * CB);  // one staged dy row, then RS lane sums
      T* acc = dyrow + s.Q * CB;
      std::fill(dyrow, dyrow + (s.Q + RS) * CB, T(0));
      double* out = sums.data() + sp * RS * s.K + k0;
      auto move_sums = [&] {
        for (int64_t t = 0; t < RS; ++t)
          for (int64_t k = 0; k < cb; ++k) out[t * s.K + k] += double(acc[t * CB + k]);
        std::fill(acc, acc + RS * CB, T(0));
      };
      for (int64_t g = g0; g < g1 && direct; ++g) {
        const int64_t n = g / s.P, p = g % s.P;
        const T* dyrow_in = dy + g * s.Q * s.K + k0;
        column_runs(s, [&](int64_t q0, int64_t q1) {  // as in the forward pass
          int64_t i = 0;
          const int64_t taps = in_place_taps(x, s, n, p, q0, k0, [&](int64_t t, const T* in) {
            src[i] = in;
            accs[i++] = acc + t * CB;
          });
          kern.wgrad(src, accs, taps, dyrow_in + q0 * s.K, s.K, s.stride_w * s.C, q1 - q0, cb);
        });
        if ((g - g0 + 1) % flush == 0) move_sums();
      }
      for (int64_t g = g0; g < g1 && !direct; ++g) {
        const int64_t n = g / s.P, p = g % s.P;
        int64_t i = 0;
        const int64_t taps = staged_taps(kern, ring, x, s, n, p, k0, cb, w0, w1, [&](int64_t t, const T* in) {
          src[i] = in;
          accs[i++] = acc + t * CB;
        });
        stage_row(kern, dy + g * s.Q * s.K, s.K, s.Q, k0, 1, 1, cb, dyrow, CB);
        kern.wgrad(src, accs, taps, dyrow, CB, s.stride_w * CB, s.Q, cb);
        if ((g - g0 + 1) % flush == 0) move_sums();
      }
      move_sums();
    }
  });
  at::parallel_for(0, s.K, 64, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k)
      for (int64_t t = 0; t < RS; ++t) {
        double v = sums[t * s.K + k];
        for (int64_t sp = 1; sp < splits; ++sp) v += sums[(sp * RS + t) * s.K + k];
        dw[k * RS + t] = T(v);
      }
  });
}

#define FC_INSTANTIATE(T)                                                                                       \
  template void depthwise_forward_nhwc<T>(const T*, const T*, WeightStrides, const T*, T*, const Conv2dShape&, \
                                          bool);                                                                \
  template void depthwise_backward_input_nhwc<T>(const T*, const T*, WeightStrides, T*, const Conv2dShape&);    \
  template void depthwise_backward_weight_nhwc<T>(const T*, const T*, T*, const Conv2dShape&);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cpu
}  // namespace fastconv
