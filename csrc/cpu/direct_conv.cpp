// The stride-1 direct convolution of cpu/direct_conv.h: AVX-512 micro-kernel, task loop, epilogue.
#include "cpu/direct_conv.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "common/checks.h"
#include "cpu/avx512.h"
#include "cpu/dispatch.h"
#include "cpu/partial_sums.h"
#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {
namespace {

// x, or 0 where a gate (relu's output) is <= 0: relu_backward's rule (a NaN gate passes x).
inline float gated(float x, const float* gate, int64_t i) { return gate && gate[i] <= 0.f ? 0.f : x; }

}  // namespace

// Tap (r, s): phase ((r*dh) % sh, (s*dw) % sw), row (r*dh) / sh, column (s*dw) / sw.
std::vector<int64_t> tap_offsets(const DirectConvShape& d, int64_t Wv, int64_t psize) {
  std::vector<int64_t> off(d.R * d.S);
  for (int64_t r = 0; r < d.R; ++r)
    for (int64_t s = 0; s < d.S; ++s) {
      const int64_t hr = r * d.dh, ws = s * d.dw;
      off[r * d.S + s] = ((hr % d.sh) * d.sw + ws % d.sw) * psize + hr / d.sh * Wv + ws / d.sw;
    }
  return off;
}

// Phase (a, b) row i is input row i*sh + a - ph; channel c's plane (a, b) at dst + ((c*sh + a)*sw + b)*psize.
void copy_padded_rows(const float* x, const float* gate, int64_t channels, const DirectConvShape& d, int64_t Wv,
                      int64_t p0, int64_t n, float* dst, int64_t psize) {
  // Plain loops rather than std::copy / std::fill: rows are often a few dozen floats, where the
  // library calls cost more than the copy.
  const int64_t HW = d.H * d.W, sw = d.sw;
  float* out = dst;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t a = 0; a < d.sh; ++a)
      for (int64_t b = 0; b < sw; ++b) {
        float* const end = out + psize;
        // Columns j in [jlo, jhi) read input column j*sw + w0, inside [0, W).
        const int64_t w0 = b - d.pw;
        const int64_t jlo = std::min(Wv, w0 >= 0 ? 0 : ceil_div(-w0, sw));
        const int64_t jhi = std::clamp<int64_t>(d.W - 1 - w0 < 0 ? 0 : (d.W - 1 - w0) / sw + 1, jlo, Wv);
        for (int64_t i = 0; i < n; ++i, out += Wv) {
          const int64_t h = (p0 + i) * d.sh + a - d.ph;
          if (h < 0 || h >= d.H) {
            for (int64_t j = 0; j < Wv; ++j) out[j] = 0.f;
            continue;
          }
          const int64_t at = c * HW + h * d.W + w0;  // input column j*sw + w0 at x[at + j*sw]
          for (int64_t j = 0; j < jlo; ++j) out[j] = 0.f;
          if (gate) {
            for (int64_t j = jlo; j < jhi; ++j) out[j] = gated(x[at + j * sw], gate, at + j * sw);
          } else if (sw == 1) {
            for (int64_t j = jlo; j < jhi; ++j) out[j] = x[at + j];
          } else {
            for (int64_t j = jlo; j < jhi; ++j) out[j] = x[at + j * sw];
          }
          for (int64_t j = jhi; j < Wv; ++j) out[j] = 0.f;
        }
        for (; out < end; ++out) *out = 0.f;
      }
}

#if defined(__x86_64__)
namespace {

// r[i][j] = sum over channels c < cn and taps t < taps of a[(c*taps + t)*8 + i] *
// x[c*cs + off[t] + 16j + l] (lane l), for i < 8 output channels and 48 virtual pixels: 24
// accumulators, and per tap 3 input loads + 8 weight broadcasts for 24 FMAs.
FC_TARGET_AVX512 inline __attribute__((always_inline)) void direct_tile(const float* a, const float* x, int64_t cs,
                                                                       int64_t cn, const int64_t* off, int64_t taps,
                                                                       __m512 (&r)[8][3]) {
  static_assert(kDirectMR == 8 && kDirectNR == 48, "the register tile is 8 x 48");
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i][0] = r[i][1] = r[i][2] = _mm512_setzero_ps();
  for (int64_t c = 0; c < cn; ++c, x += cs) {
    for (int64_t t = 0; t < taps; ++t, a += 8) {
      const float* b = x + off[t];
      const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m512 ai = _mm512_set1_ps(a[i]);
        r[i][0] = _mm512_fmadd_ps(ai, b0, r[i][0]);
        r[i][1] = _mm512_fmadd_ps(ai, b1, r[i][1]);
        r[i][2] = _mm512_fmadd_ps(ai, b2, r[i][2]);
      }
    }
  }
}

// The tile into the task's buffer: yv[i*ldy + j] (=|+=) r[i][j]. yv is 64-byte aligned, ldy a
// multiple of 16.
FC_TARGET_AVX512 void direct_uk(const float* a, const float* x, int64_t cs, int64_t cn, const int64_t* off,
                                int64_t taps, float* yv, int64_t ldy, bool accumulate) {
  __m512 r[8][3];
  direct_tile(a, x, cs, cn, off, taps, r);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    float* yi = yv + i * ldy;
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) {
      if (accumulate) r[i][j] = _mm512_add_ps(r[i][j], _mm512_load_ps(yi + 16 * j));
      _mm512_store_ps(yi + 16 * j, r[i][j]);
    }
  }
}

// Where a tile's 48 virtual pixels go in y when the whole depth fits one call: pixels [v0, v0 + 48)
// of a task's nr output rows of Wp (>= 16) pixels, of which columns q < Q exist; output row lr
// starts at lr*Q. A 16-lane vector j spans at most two output rows: lanes m0 go to at0 + lane, and
// lanes m1 (the next row's, from lane Wp - q on) are compressed to the front and go to at1, n1 of them.
// Computed once per tile and shared by its output-channel blocks (the divisions are not cheap).
struct TileRows {
  __mmask16 m0[3], m1[3], n1[3];
  int64_t at0[3], at1[3];
};

TileRows tile_rows(int64_t v0, int64_t Wp, int64_t Q, int64_t nr) {
  TileRows t;
  for (int j = 0; j < 3; ++j) {
    const int64_t v = v0 + 16 * j, lr = v / Wp, q = v % Wp, next = Wp - q;
    t.m0[j] = lr < nr && q < Q ? __mmask16((1u << std::min<int64_t>(16, Q - q)) - 1) : 0;
    const int64_t count = next < 16 && lr + 1 < nr ? std::min<int64_t>(16 - next, Q) : 0;
    t.m1[j] = __mmask16(((1u << count) - 1) << (count ? next : 0));
    t.n1[j] = __mmask16((1u << count) - 1);
    t.at0[j] = lr * Q + q;
    t.at1[j] = (lr + 1) * Q;
  }
  return t;
}

// The tile straight into y (output channel i at y + i*plane, i < channels <= 8), with bias (of the
// tile's first channel, or null) and ReLU (max(0, v) keeps NaN, as relu does).
FC_TARGET_AVX512 void direct_uk_out(const float* a, const float* x, int64_t cs, int64_t cn, const int64_t* off,
                                    int64_t taps, const TileRows& t, float* y, int64_t plane, int channels,
                                    const float* bias, bool relu) {
  __m512 r[8][3];
  direct_tile(a, x, cs, cn, off, taps, r);
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < channels; ++i) {
    const __m512 b = _mm512_set1_ps(bias ? bias[i] : 0.f);
    float* yi = y + i * plane;
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) {
      __m512 v = _mm512_add_ps(r[i][j], b);
      if (relu) v = _mm512_max_ps(zero, v);
      _mm512_mask_storeu_ps(yi + t.at0[j], t.m0[j], v);
      if (t.m1[j]) _mm512_mask_storeu_ps(yi + t.at1[j], t.n1[j], _mm512_maskz_compress_ps(t.m1[j], v));
    }
  }
}

// dst[q] = src[q] + b, then ReLU when `relu` (NaN stays NaN), q < n.
FC_TARGET_AVX512 void bias_relu_row(const float* src, float b, bool relu, float* dst, int64_t n) {
  if (relu) {
    for (int64_t q = 0; q < n; ++q) {
      const float v = src[q] + b;
      dst[q] = v < 0.f ? 0.f : v;
    }
  } else {
    for (int64_t q = 0; q < n; ++q) dst[q] = src[q] + b;
  }
}

// c[i][j] += sum over output rows r < nrows and columns t < rowlen of rows[i][v0 + r*Wp + t] *
// bt[r*rowlen + t][j], for i < MR, j < 16*NV (bt and c row-major with rows of 16*NV, 64-byte
// aligned): MR broadcasts and NV aligned loads per pixel for MR*NV FMAs.
template <int MR, int NV>
FC_TARGET_AVX512 void wgrad_uk(const float* const* rows, int64_t v0, int64_t nrows, int64_t rowlen, int64_t Wp,
                               const float* bt, float* c) {
  constexpr int64_t ldb = 16 * NV, ldc = 16 * NV;
  __m512 acc[MR][NV];
  const float* r[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    r[i] = rows[i] + v0;
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  for (int64_t row = 0; row < nrows; ++row) {
    for (int64_t t = 0; t < rowlen; ++t, bt += ldb) {
      __m512 b[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) b[j] = _mm512_load_ps(bt + 16 * j);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 a = _mm512_set1_ps(r[i][t]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) r[i] += Wp;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* ci = c + i * ldc + 16 * j;
      _mm512_store_ps(ci, _mm512_add_ps(_mm512_load_ps(ci), acc[i][j]));
    }
}

// dst[j*ldd + i] = src[i*lds + j] for i, j < 16: an in-register 16 x 16 transpose. With a gate
// (same layout as src), elements whose gate is <= 0 become 0 (relu_backward's rule).
FC_TARGET_AVX512 void transpose16(const float* src, const float* gate, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    r[i] = _mm512_loadu_ps(src + i * lds);
    if (gate) r[i] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(gate + i * lds), _mm512_setzero_ps(),
                                                            _CMP_NLE_UQ), r[i]);
  }
  // Per 128-bit lane L, element k of a row is column 4L + k.
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {  // t[i] = (r_i[k], r_i+1[k], ...) for k = 0,1; t[i+1] for k = 2,3
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 4
  for (int g = 0; g < 16; g += 4) {  // r[g + k]: lane L holds column 4L + k of rows g .. g+3
    r[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
    r[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
    r[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    r[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {  // gather lane L of the four row groups: column 4L + k
    const __m512 w0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44), w1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xEE);
    const __m512 w2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44),
                 w3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xEE);
    _mm512_storeu_ps(dst + (0 + k) * ldd, _mm512_shuffle_f32x4(w0, w2, 0x88));
    _mm512_storeu_ps(dst + (4 + k) * ldd, _mm512_shuffle_f32x4(w0, w2, 0xDD));
    _mm512_storeu_ps(dst + (8 + k) * ldd, _mm512_shuffle_f32x4(w1, w3, 0x88));
    _mm512_storeu_ps(dst + (12 + k) * ldd, _mm512_shuffle_f32x4(w1, w3, 0xDD));
  }
}

}  // namespace

void transpose_panel(const float* src, const float* gate, int64_t ld, int64_t on, int64_t len, float* bt,
                     int64_t ldb, int64_t width) {
  const int64_t o16 = on / 16 * 16, t16 = len / 16 * 16;
  for (int64_t o0 = 0; o0 < o16; o0 += 16)
    for (int64_t t0 = 0; t0 < t16; t0 += 16)
      transpose16(src + o0 * ld + t0, gate ? gate + o0 * ld + t0 : nullptr, ld, bt + t0 * ldb + o0, ldb);
  for (int64_t t = 0; t < len; ++t) {
    float* dst = bt + t * ldb;
    for (int64_t o = t < t16 ? o16 : 0; o < on; ++o) dst[o] = gated(src[o * ld + t], gate, o * ld + t);
    for (int64_t o = on; o < width; ++o) dst[o] = 0.f;
  }
}

FC_TARGET_AVX512 void copy_stride2(const float* src, int64_t n, float* dst) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {  // reads src[2i .. 2i + 30]: never the odd element past the last
    const __m512 lo = _mm512_loadu_ps(src + 2 * i), hi = _mm512_maskz_loadu_ps(0x7FFF, src + 2 * i + 16);
    _mm512_storeu_ps(dst + i, _mm512_permutex2var_ps(lo, even, hi));
  }
  if (i < n) {
    const int64_t rem = n - i, count = 2 * rem - 1;  // src[2i .. 2i + count)
    const __mmask16 mlo = __mmask16(count >= 16 ? 0xFFFF : (1u << count) - 1);
    const __mmask16 mhi = __mmask16(count > 16 ? (1u << (count - 16)) - 1 : 0);
    const __m512 lo = _mm512_maskz_loadu_ps(mlo, src + 2 * i), hi = _mm512_maskz_loadu_ps(mhi, src + 2 * i + 16);
    _mm512_mask_storeu_ps(dst + i, __mmask16((1u << rem) - 1), _mm512_permutex2var_ps(lo, even, hi));
  }
}

void pack_transposed_panels(const float* src, int64_t ld, int64_t rows, int64_t kc, int width, float* dst) {
  if (width % 16 == 0) {  // each panel is one transpose
    for (int64_t r0 = 0; r0 < rows; r0 += width)
      transpose_panel(src + r0 * ld, nullptr, ld, std::min<int64_t>(width, rows - r0), kc, dst + r0 * kc, width, width);
    return;
  }
  // Narrower panels: 16 rows transposed at a time into t[k][16], then split into 16 / width panels.
  static thread_local Scratch<float> scratch;
  float* t = scratch.get(16 * kc);
  const int64_t panels = ceil_div(rows, width);
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    transpose_panel(src + r0 * ld, nullptr, ld, std::min<int64_t>(16, rows - r0), kc, t, 16, 16);
    for (int64_t h = 0; h < 16 / width && r0 / width + h < panels; ++h) {
      float* panel = dst + (r0 + h * width) * kc;
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < width; ++i) panel[k * width + i] = t[k * 16 + h * width + i];
    }
  }
}


bool direct_conv_supports(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && direct_conv_strided_supports(s);
}

bool direct_conv_strided_supports(const Conv2dShape& s) {
  return s.pad_h >= 0 && s.pad_w >= 0 && current_isa() >= Isa::kAvx512;
}

bool direct_conv_strided_faster(const Conv2dShape& s) {
  return (s.stride_h > 1 || s.stride_w > 1) && s.R * s.S > 1;
}

void direct_conv(const float* x, const float* wpacked, const float* bias, float* y, const DirectConvShape& d,
                 bool relu, const float* gate) {
  const int64_t P = d.P(), Q = d.Q(), RS = d.R * d.S, HW = d.H * d.W;
  const int64_t Wv = ceil_div(d.W + 2 * d.pw, d.sw);  // virtual row width: a phase row (stride 1: a padded row)
  const int64_t blocks = ceil_div(d.Co, kDirectMR), halo = d.dh * (d.R - 1) / d.sh;  // phase rows past a task's
  const int64_t NG = d.N * d.groups;
  // Output rows per task: about 512 virtual pixels. When images x groups x row blocks are fewer
  // than the threads (batch 1, small images), the 8-channel output blocks are split into parts too.
  int64_t rblocks = ceil_div(P, std::clamp<int64_t>(512 / Wv, 1, P));
  const int64_t rows = ceil_div(P, rblocks);
  rblocks = ceil_div(P, rows);
  const int64_t kparts = std::min(blocks, ceil_div(at::get_num_threads(), NG * rblocks));
  const int64_t part = ceil_div(blocks, kparts);  // output blocks per part
  const int64_t L = round_up(rows * Wv, kDirectNR);  // virtual pixels of a task (buffer row length)
  // A local input channel: sh*sw phase planes of rows + halo rows, each followed by zeros for the
  // last tile's overreach.
  const int64_t psize = round_up((rows + halo) * Wv + kDirectNR + d.dw * (d.S - 1) / d.sw, 16);
  const int64_t plane = d.sh * d.sw * psize;
  // Input channels per depth chunk (its weights and input rows stay in L1): about 256 taps, split evenly.
  const int64_t chunk = ceil_div(d.Ci, ceil_div(d.Ci, std::max<int64_t>(1, 256 / RS)));
  const std::vector<int64_t> off = tap_offsets(d, Wv, psize);
  const int64_t* offs = off.data();
  // With the whole depth in one chunk (few input channels, e.g. RGB first layers) the tiles are
  // final: they skip the buffer and go straight to y (needs rows of >= 16 pixels).
  const bool direct_out = chunk >= d.Ci && Wv >= 16;

  at::parallel_for(0, NG * rblocks * kparts, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<float> x_scratch, y_scratch;
    float* xl = x_scratch.get(d.Ci * plane);
    float* yv = y_scratch.get(blocks * kDirectMR * L);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kp = task % kparts, rb = task / kparts % rblocks, ng = task / kparts / rblocks, g = ng % d.groups;
      const int64_t b0 = kp * part, b1 = std::min(blocks, b0 + part);
      const int64_t p0 = rb * rows, nr = std::min(rows, P - p0), len = round_up(nr * Wv, kDirectNR);
      // Local padded input: phase row lr holds phase row p0 + lr.
      copy_padded_rows(x + ng * d.Ci * HW, gate ? gate + ng * d.Ci * HW : nullptr, d.Ci, d, Wv, p0, nr + halo, xl,
                       psize);
      const float* wg = wpacked + g * blocks * kDirectMR * d.Ci * RS;
      if (direct_out) {  // one depth chunk: tiles go straight to y
        for (int64_t t0 = 0; t0 < len; t0 += kDirectNR) {
          const TileRows rows_of_tile = tile_rows(t0, Wv, Q, nr);
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t o0 = b * kDirectMR;
            direct_uk_out(wg + b * d.Ci * RS * kDirectMR, xl + t0, plane, d.Ci, offs, RS, rows_of_tile,
                          y + ((ng * d.Co + o0) * P + p0) * Q, P * Q, int(std::min<int64_t>(kDirectMR, d.Co - o0)),
                          bias ? bias + g * d.Co + o0 : nullptr, relu);
          }
        }
        continue;
      }
      for (int64_t c0 = 0; c0 < d.Ci; c0 += chunk) {
        const int64_t cn = std::min(chunk, d.Ci - c0);
        for (int64_t t0 = 0; t0 < len; t0 += kDirectNR)
          for (int64_t b = b0; b < b1; ++b)
            direct_uk(wg + (b * d.Ci + c0) * RS * kDirectMR, xl + c0 * plane + t0, plane, cn, offs, RS,
                      yv + b * kDirectMR * L + t0, L, c0 > 0);
      }
      for (int64_t o = b0 * kDirectMR; o < std::min(d.Co, b1 * kDirectMR); ++o) {
        const float bo = bias ? bias[g * d.Co + o] : 0.f;
        float* yo = y + ((ng * d.Co + o) * P + p0) * Q;
        for (int64_t lr = 0; lr < nr; ++lr) bias_relu_row(yv + o * L + lr * Wv, bo, relu, yo + lr * Q, Q);
      }
    }
  });
}

void direct_conv_weight_grad(const float* dy, const float* x, float* dw, const DirectConvShape& d, const float* gate) {
  TORCH_INTERNAL_ASSERT(d.sh == 1 && d.sw == 1, "fastconv: the direct weight gradient is stride 1 only");
  const int64_t P = d.P(), Q = d.Q(), Wp = d.W + 2 * d.pw, Hp = d.H + 2 * d.ph, RS = d.R * d.S;
  const int64_t CRS = d.Ci * RS, HW = d.H * d.W, PQ = P * Q, V = P * Wp;  // V: padded-row pixels of an image
  const bool wide = d.Co % 64 == 0;  // 6 rows x 64 channels, else 8 rows x 32 channels
  const int MR = wide ? 6 : 8;
  const int64_t NRk = wide ? 64 : 32, Kpad = round_up(d.Co, NRk);
  constexpr int64_t kChunk = 128;  // pixels per transposed dy chunk (kChunk x NRk floats, in L1)
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunk / Q);
  const int64_t plane = round_up(Hp * Wp + d.dw * (d.S - 1) + 1, 16);
  const std::vector<int64_t> off = tap_offsets(d, Wp, plane);
  // Tasks: input-channel blocks (disjoint rows of dw) x partial sums over images, both fixed by the
  // shape, so the summation order never depends on the thread count. Every block transposes all of
  // dy again, so blocks keep at least ~256 rows (transposing costs ~16/rows of the FMAs).
  const int64_t cb = ceil_div(d.Ci, std::clamp<int64_t>(CRS / 256, 1, 4)), cblocks = ceil_div(d.Ci, cb);
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(d.N, 8 / (d.groups * cblocks)));
  const int64_t wsize = d.groups * d.Co * CRS;
  static thread_local Scratch<float> partial_scratch;  // partial sums 1.. (0 is dw itself)
  float* partial = partial_scratch.get((splits - 1) * wsize);

  at::parallel_for(0, splits * d.groups * cblocks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<float> x_scratch, bt_scratch, acc_scratch, zero_scratch;
    const int64_t rows_max = round_up(cb * RS, MR);
    float* xl = x_scratch.get(cb * plane);
    float* bt = bt_scratch.get(kChunk * NRk);
    float* acc = acc_scratch.get(rows_max * NRk);  // [rows][NRk]: dw^T for NRk output channels
    float* zeros = zero_scratch.get(V);             // the input row of padding rows past `rows`
    std::fill(zeros, zeros + V, 0.f);
    std::vector<const float*> base(rows_max);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task % cblocks, rest = task / cblocks, g = rest % d.groups, sp = rest / d.groups;
      const int64_t c0 = b * cb, cn = std::min(cb, d.Ci - c0), rows = cn * RS, rows_pad = round_up(rows, MR);
      const int64_t n0 = sp * d.N / splits, n1 = (sp + 1) * d.N / splits;
      for (int64_t i = 0; i < rows_pad; ++i) base[i] = i < rows ? xl + (i / RS) * plane + off[i % RS] : zeros;
      float* out = (sp == 0 ? dw : partial + (sp - 1) * wsize) + g * d.Co * CRS + c0 * RS;
      // One block of NRk output channels at a time, so that its sums (rows x NRk) stay in L2; the
      // padded input is copied again for each block (cheap next to the block's FMAs).
      for (int64_t kb = 0; kb < Kpad; kb += NRk) {
        const int64_t on = std::min(NRk, d.Co - kb);
        std::fill(acc, acc + rows_pad * NRk, 0.f);
        for (int64_t n = n0; n < n1; ++n) {
          copy_padded_rows(x + ((n * d.groups + g) * d.Ci + c0) * HW, nullptr, cn, d, Wp, 0, Hp, xl, plane);
          const float* src = dy + ((n * d.groups + g) * d.Co + kb) * PQ;
          const float* src_gate = gate ? gate + (src - dy) : nullptr;
          // Chunks of whole output rows (or of one row's columns when a row is longer than
          // kChunk): dy's pixels [pq0, pq0 + len) are contiguous, the padded input rows Wp apart.
          for (int64_t p0 = 0; p0 < P; p0 += rows_per_chunk)
            for (int64_t q0 = 0; q0 < Q; q0 += kChunk) {
              const int64_t nrows = std::min(rows_per_chunk, P - p0), rowlen = std::min(kChunk, Q - q0);
              const int64_t pq0 = p0 * Q + q0, v0 = p0 * Wp + q0;
              // bt[t][o] = dy[kb+o][pq0+t]
              transpose_panel(src + pq0, src_gate ? src_gate + pq0 : nullptr, PQ, on, nrows * rowlen, bt, NRk, NRk);
              for (int64_t i = 0; i < rows_pad; i += MR) {
                if (wide) wgrad_uk<6, 4>(base.data() + i, v0, nrows, rowlen, Wp, bt, acc + i * NRk);
                else wgrad_uk<8, 2>(base.data() + i, v0, nrows, rowlen, Wp, bt, acc + i * NRk);
              }
            }
        }
        // dw[kb + o][c0*RS + i] = acc[i][o], transposed in 16 x 16 blocks.
        for (int64_t i0 = 0; i0 < rows; i0 += 16)
          for (int64_t o = 0; o < on; ++o)
            for (int64_t i = i0; i < std::min(i0 + 16, rows); ++i) out[(kb + o) * CRS + i] = acc[i * NRk + o];
      }
    }
  });
  add_partial_sums(dw, partial, splits, wsize);
}

#else  // not x86-64: no AVX-512, so the dispatch (cpu/dispatch.h) never chooses these.
bool direct_conv_supports(const Conv2dShape&) { return false; }
bool direct_conv_strided_supports(const Conv2dShape&) { return false; }
bool direct_conv_strided_faster(const Conv2dShape&) { return false; }
void direct_conv(const float*, const float*, const float*, float*, const DirectConvShape&, bool, const float*) {
  std::abort();
}
void direct_conv_weight_grad(const float*, const float*, float*, const DirectConvShape&, const float*) { std::abort(); }
void transpose_panel(const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t, int64_t) { std::abort(); }
void pack_transposed_panels(const float*, int64_t, int64_t, int64_t, int, float*) { std::abort(); }
void copy_stride2(const float*, int64_t, float*) { std::abort(); }
#endif

}  // namespace cpu
}  // namespace fastconv
