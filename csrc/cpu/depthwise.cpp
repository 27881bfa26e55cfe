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
#include "cpu/gemm.h"

#define FC_INLINE inline __attribute__((always_inline))

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
  int64_t H, W, top, left, sh, sw, rows, cols, stride;
  PhasePlane(int64_t H, int64_t W, int64_t top, int64_t left, int64_t sh, int64_t sw, int64_t rows, int64_t cols)
      : H(H), W(W), top(top), left(left), sh(sh), sw(sw), rows(rows), cols(cols),
        stride(round_up(rows * cols + cols + kTile, 16)) {}
  int64_t size() const { return sh * sw * stride; }
  // Where padded element (hp, wp) (source (hp - top, wp - left)) lives, hp, wp >= 0.
  int64_t at(int64_t hp, int64_t wp) const {
    return ((hp % sh) * sw + wp % sw) * stride + (hp / sh) * cols + wp / sw;
  }
};

// v, or 0 where a gate (relu's output) is <= 0: relu_backward's rule (a NaN gate passes v).
template <typename T>
FC_INLINE T gated(T v, T g) {
  return g <= T(0) ? T(0) : v;
}

// Fills the phase plane g at dst from src (H x W, row-major); with a gate (src's layout), values
// whose gate is <= 0 are read as 0.
template <typename T>
FC_INLINE void fill_phases(const T* __restrict src, const T* __restrict gate, const PhasePlane& g,
                           T* __restrict dst) {
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      T* sub = dst + (a * g.sw + b) * g.stride;
      // Sub-plane columns whose source column j*sw + b - left lies in [0, W): [j0, j1).
      const int64_t j0 = std::clamp<int64_t>(div_up(g.left - b, g.sw), 0, g.cols);
      const int64_t j1 = std::clamp<int64_t>(div_up(g.W + g.left - b, g.sw), j0, g.cols);
      const int64_t w0 = j0 * g.sw + b - g.left, n = j1 - j0, sw = g.sw;
      for (int64_t i = 0; i < g.rows; ++i) {
        T* out = sub + i * g.cols;
        const int64_t h = i * g.sh + a - g.top;
        if (h < 0 || h >= g.H) {
          for (int64_t j = 0; j < g.cols; ++j) out[j] = T(0);
          continue;
        }
        for (int64_t j = 0; j < j0; ++j) out[j] = T(0);
        const T* row = src + h * g.W + w0;
        T* o = out + j0;
        if (gate) {
          const T* grow = gate + h * g.W + w0;
          if (sw == 1) {
            for (int64_t k = 0; k < n; ++k) o[k] = gated(row[k], grow[k]);
          } else {
            for (int64_t k = 0; k < n; ++k) o[k] = gated(row[k * sw], grow[k * sw]);
          }
        } else if (sw == 1) {
          for (int64_t k = 0; k < n; ++k) o[k] = row[k];
        } else if (sw == 2) {
          for (int64_t k = 0; k < n; ++k) o[k] = row[2 * k];
        } else {
          for (int64_t k = 0; k < n; ++k) o[k] = row[k * sw];
        }
        for (int64_t j = j1; j < g.cols; ++j) out[j] = T(0);
      }
      for (int64_t k = g.rows * g.cols; k < g.stride; ++k) sub[k] = T(0);
    }
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
// out[v] = sum over taps t (in order) of w[t] * src[t][v], for v < round_up(n, kTile): tiles of 4
// vectors, one weight broadcast and 4 unaligned loads per tap. out holds round_up(n, kTile) floats.
FC_TARGET_AVX512 void gather_avx512(const float* const* src, const float* w, int64_t taps, float* out, int64_t n) {
  for (int64_t v0 = 0; v0 < n; v0 += kTile) {
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
}

// The lane sum of a float vector, in double.
FC_TARGET_AVX512 inline double reduce_pd(__m512 a) {
  const __m256 lo = _mm512_castps512_ps256(a);
  const __m256 hi = _mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(a), 1));
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(lo), _mm512_cvtps_pd(hi)));
}

// sums[t] += sum over p < P, q < Q of gated(dy[p*Q + q]) * src[t][p*L + q], for NT taps: NT vector
// accumulators; per 16 pixels one dy load and NT input loads (lanes past Q masked to 0, so
// columns past Q never enter, not even as 0 * inf).
template <int NT>
FC_TARGET_AVX512 void wgrad_avx512(const float* dy, const float* gate, int64_t P, int64_t Q, const float* const* src,
                                   int64_t L, double* sums) {
  __m512 acc[NT];
  const float* x[NT];
#pragma GCC unroll 16
  for (int k = 0; k < NT; ++k) acc[k] = _mm512_setzero_ps(), x[k] = src[k];
  for (int64_t p = 0; p < P; ++p, dy += Q) {
    for (int64_t q0 = 0; q0 < Q; q0 += 16) {
      const __mmask16 m = Q - q0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (Q - q0)) - 1);
      __m512 d = _mm512_maskz_loadu_ps(m, dy + q0);
      if (gate)
        d = _mm512_maskz_mov_ps(
            _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, gate + p * Q + q0), _mm512_setzero_ps(), _CMP_NLE_UQ), d);
#pragma GCC unroll 16
      for (int k = 0; k < NT; ++k) acc[k] = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, x[k] + q0), acc[k]);
    }
#pragma GCC unroll 16
    for (int k = 0; k < NT; ++k) x[k] += L;
  }
#pragma GCC unroll 16
  for (int k = 0; k < NT; ++k) sums[k] += reduce_pd(acc[k]);
}

constexpr int kMaxWgradTaps = 12;  // taps per weight-gradient block (accumulators in registers)

using WgradFn = void (*)(const float*, const float*, int64_t, int64_t, const float* const*, int64_t, double*);
constexpr WgradFn kWgradAvx512[kMaxWgradTaps + 1] = {
    nullptr,          &wgrad_avx512<1>, &wgrad_avx512<2>, &wgrad_avx512<3>,  &wgrad_avx512<4>,
    &wgrad_avx512<5>, &wgrad_avx512<6>, &wgrad_avx512<7>, &wgrad_avx512<8>,  &wgrad_avx512<9>,
    &wgrad_avx512<10>, &wgrad_avx512<11>, &wgrad_avx512<12>};
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

// Weight-gradient sums of all taps, in blocks of <= kMaxWgradTaps taps.
template <bool kVec, typename T>
FC_INLINE void wgrad(const T* dy, const T* gate, int64_t P, int64_t Q, const T* const* src, int64_t taps, int64_t L,
                     double* sums) {
#if defined(__x86_64__)
  if constexpr (kVec) {
    static_assert(std::is_same_v<T, float>);
    const int64_t blocks = ceil_div(taps, kMaxWgradTaps);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t t0 = b * taps / blocks, t1 = (b + 1) * taps / blocks;
      kWgradAvx512[t1 - t0](dy, gate, P, Q, src + t0, L, sums + t0);
    }
    return;
  }
#endif
  wgrad_portable(dy, gate, P, Q, src, taps, L, sums);
}

// Whether the float32 AVX-512 kernels run.
template <typename T>
bool use_avx512() {
  return std::is_same_v<T, float> && current_isa() == Isa::kAvx512;
}

// ---------------------------------------------------------------------------------------------
// Forward. Task = image n, input channel c: its phase plane, then its m output planes.

// Everything one pass needs besides the tensors, shared by its tasks.
template <typename T>
struct ForwardArgs {
  const Conv2dShape& s;
  const PhasePlane& g;
  const int64_t* off;  // tap t = r*S + s: offset of its run in the phase plane
  bool relu;
};

// x: plane (n, c); w, bias: of output channels c*m ...; y: their m output planes.
template <typename T, bool kVec>
FC_INLINE void forward_plane(const T* x, const T* w, const T* bias, T* y, const ForwardArgs<T>& a, T* buf, T* out,
                             const T** src) {
  const Conv2dShape& s = a.s;
  const int64_t RS = s.R * s.S, m = s.Kg(), L = a.g.cols, PQ = s.P * s.Q;
  fill_phases<T>(x, nullptr, a.g, buf);
  for (int64_t t = 0; t < RS; ++t) src[t] = buf + a.off[t];
  for (int64_t j = 0; j < m; ++j) {
    gather<kVec, T>(src, w + j * RS, RS, out, s.P * L);
    const T b = bias ? bias[j] : T(0);
    T* yj = y + j * PQ;
    for (int64_t p = 0; p < s.P; ++p) {
      const T* o = out + p * L;
      T* yr = yj + p * s.Q;
      if (a.relu) {
        for (int64_t q = 0; q < s.Q; ++q) {
          const T v = o[q] + b;
          yr[q] = v < T(0) ? T(0) : v;  // NaN stays NaN, as in relu
        }
      } else {
        for (int64_t q = 0; q < s.Q; ++q) yr[q] = o[q] + b;
      }
    }
  }
}

template <typename T>
using ForwardPlaneFn = void (*)(const T*, const T*, const T*, T*, const ForwardArgs<T>&, T*, T*, const T**);

template <typename T>
void forward_plane_portable(const T* x, const T* w, const T* bias, T* y, const ForwardArgs<T>& a, T* buf, T* out,
                            const T** src) {
  forward_plane<T, false>(x, w, bias, y, a, buf, out, src);
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
};

// dy, gate: the m planes (n, c*m ...); w: weights of output channels c*m ...; dx: plane (n, c).
template <typename T, bool kVec>
FC_INLINE void input_grad_plane(const T* dy, const T* gate, const T* w, T* dx, const InputGradArgs<T>& a, T* buf,
                                T* out, const T** src, T* wt) {
  const Conv2dShape& s = a.s;
  const PhasePlane& g = a.g;
  const int64_t m = s.Kg(), PQ = s.P * s.Q, L = g.cols, n = a.Hs * L;
  const int64_t sh = s.stride_h, sw = s.stride_w;
  const int64_t Tp = (s.R - 1) * s.dil_h / sh, Lp = (s.S - 1) * s.dil_w / sw;
  for (int64_t j = 0; j < m; ++j)
    fill_phases<T>(dy + j * PQ, gate ? gate + j * PQ : nullptr, g, buf + j * g.size());
  for (int64_t pa = 0; pa < sh; ++pa)
    for (int64_t pb = 0; pb < sw; ++pb) {
      // Sub-plane (pa, pb)[i][jj] = sum over its taps of w * dy[i - (r*dh)/sh][jj - (s*dw)/sw].
      int64_t taps = 0;
      for (int64_t j = 0; j < m; ++j)
        for (int64_t r = 0; r < s.R; ++r) {
          if ((r * s.dil_h) % sh != pa) continue;
          for (int64_t c = 0; c < s.S; ++c) {
            if ((c * s.dil_w) % sw != pb) continue;
            src[taps] = buf + j * g.size() + (Tp - r * s.dil_h / sh) * L + (Lp - c * s.dil_w / sw);
            wt[taps++] = w[(j * s.R + r) * s.S + c];
          }
        }
      T* o = out + (pa * sw + pb) * a.osub;
      if (taps == 0) {
        std::fill(o, o + n, T(0));
      } else {
        gather<kVec, T>(src, wt, taps, o, n);
      }
    }
  // dx[h][x] = padded dx (h + ph, x + pw) = sub((h + ph) % sh, (x + pw) % sw)[(h + ph)/sh][(x + pw)/sw].
  for (int64_t h = 0; h < s.H; ++h) {
    const int64_t hp = h + s.pad_h;
    const T* orow = out + (hp % sh) * sw * a.osub + (hp / sh) * L;
    T* __restrict d = dx + h * s.W;
    if (sw == 1) {
      const T* __restrict o = orow + s.pad_w;
      for (int64_t x = 0; x < s.W; ++x) d[x] = o[x];
    } else {
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
  fill_phases<T>(x, nullptr, a.g, buf);
  for (int64_t t = 0; t < RS; ++t) src[t] = buf + a.off[t];
  for (int64_t j = 0; j < m; ++j)
    wgrad<kVec, T>(dy + j * PQ, gate ? gate + j * PQ : nullptr, s.P, s.Q, src, RS, a.g.cols, sums + j * RS);
}

template <typename T>
using WeightGradPlaneFn = void (*)(const T*, const T*, const T*, const ForwardArgs<T>&, T*, const T**, double*);

template <typename T>
void weight_grad_plane_portable(const T* x, const T* dy, const T* gate, const ForwardArgs<T>& a, T* buf,
                                const T** src, double* sums) {
  weight_grad_plane<T, false>(x, dy, gate, a, buf, src, sums);
}

#if defined(__x86_64__)
FC_TARGET_AVX512 void forward_plane_avx512(const float* x, const float* w, const float* bias, float* y,
                                           const ForwardArgs<float>& a, float* buf, float* out, const float** src) {
  forward_plane<float, true>(x, w, bias, y, a, buf, out, src);
}
FC_TARGET_AVX512 void input_grad_plane_avx512(const float* dy, const float* gate, const float* w, float* dx,
                                              const InputGradArgs<float>& a, float* buf, float* out,
                                              const float** src, float* wt) {
  input_grad_plane<float, true>(dy, gate, w, dx, a, buf, out, src, wt);
}
FC_TARGET_AVX512 void weight_grad_plane_avx512(const float* x, const float* dy, const float* gate,
                                               const ForwardArgs<float>& a, float* buf, const float** src,
                                               double* sums) {
  weight_grad_plane<float, true>(x, dy, gate, a, buf, src, sums);
}
#endif

template <typename T>
ForwardPlaneFn<T> forward_plane_fn() {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512<T>()) return &forward_plane_avx512;
#endif
  return &forward_plane_portable<T>;
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
WeightGradPlaneFn<T> weight_grad_plane_fn() {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512<T>()) return &weight_grad_plane_avx512;
#endif
  return &weight_grad_plane_portable<T>;
}

// The phase plane of an input plane for the forward pass and the weight gradient, and its taps'
// offsets (tap t = r*S + s reads sub((r*dh) % sh, (s*dw) % sw) from row (r*dh)/sh, column (s*dw)/sw).
PhasePlane input_phases(const Conv2dShape& s) {
  return PhasePlane(s.H, s.W, s.pad_h, s.pad_w, s.stride_h, s.stride_w, div_up(s.H + 2 * s.pad_h, s.stride_h),
                    div_up(s.W + 2 * s.pad_w, s.stride_w));
}

std::vector<int64_t> tap_offsets(const Conv2dShape& s, const PhasePlane& g) {
  std::vector<int64_t> off(s.R * s.S);
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t c = 0; c < s.S; ++c) off[r * s.S + c] = g.at(r * s.dil_h, c * s.dil_w);
  return off;
}

}  // namespace

bool depthwise_applies(const Conv2dShape& s) { return s.groups == s.C && s.groups > 1; }

template <typename T>
void depthwise_forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s, bool relu) {
  const PhasePlane g = input_phases(s);
  const std::vector<int64_t> off = tap_offsets(s, g);
  const ForwardArgs<T> args{s, g, off.data(), relu};
  const int64_t m = s.Kg(), RS = s.R * s.S, HW = s.H * s.W, PQ = s.P * s.Q;
  const ForwardPlaneFn<T> fn = forward_plane_fn<T>();
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> buf_scratch, out_scratch;
    static thread_local Scratch<const T*> src_scratch;
    T* buf = buf_scratch.get(g.size());
    T* out = out_scratch.get(round_up(s.P * g.cols, kTile));
    const T** src = src_scratch.get(RS);
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t c = nc % s.C;
      fn(x + nc * HW, w + c * m * RS, bias ? bias + c * m : nullptr, y + nc * m * PQ, args, buf, out, src);
    }
  });
}

template <typename T>
void depthwise_backward_input(const T* dy, const T* w, T* dx, const Conv2dShape& s, const T* gate) {
  const int64_t sh = s.stride_h, sw = s.stride_w, m = s.Kg(), RS = s.R * s.S, HW = s.H * s.W, PQ = s.P * s.Q;
  const int64_t Tp = (s.R - 1) * s.dil_h / sh, Lp = (s.S - 1) * s.dil_w / sw;
  const int64_t Hs = div_up(s.H + 2 * s.pad_h, sh), Ws = div_up(s.W + 2 * s.pad_w, sw);
  const PhasePlane g(s.P, s.Q, Tp, Lp, 1, 1, Tp + Hs, Lp + Ws);
  const InputGradArgs<T> args{s, g, Hs, round_up(Hs * g.cols, kTile)};
  const InputGradPlaneFn<T> fn = input_grad_plane_fn<T>();
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> buf_scratch, out_scratch, w_scratch;
    static thread_local Scratch<const T*> src_scratch;
    T* buf = buf_scratch.get(m * g.size());
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
  const ForwardArgs<T> args{s, g, off.data(), false};
  const int64_t m = s.Kg(), RS = s.R * s.S, HW = s.H * s.W, PQ = s.P * s.Q, wsize = s.K * RS;
  // The sum over images is split into a number of partial sums fixed by the shape (enough tasks
  // for a few threads when channels are few), each summed in image order, then added in order.
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(s.N, ceil_div(8, s.C)));
  std::vector<double> sums(size_t(splits * wsize), 0.0);
  const WeightGradPlaneFn<T> fn = weight_grad_plane_fn<T>();
  at::parallel_for(0, splits * s.C, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> buf_scratch;
    static thread_local Scratch<const T*> src_scratch;
    T* buf = buf_scratch.get(g.size());
    const T** src = src_scratch.get(RS);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sp = task / s.C, c = task % s.C;
      const int64_t n0 = sp * s.N / splits, n1 = (sp + 1) * s.N / splits;
      double* out = sums.data() + sp * wsize + c * m * RS;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t at = (n * s.C + c) * m * PQ;
        fn(x + (n * s.C + c) * HW, dy + at, gate ? gate + at : nullptr, args, buf, src, out);
      }
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
