// The phase-decomposed strided direct convolution of cpu/strided_direct.h.
#include "cpu/strided_direct.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "cpu/avx512.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {
#if defined(__x86_64__)
namespace {

constexpr int kMR = 8;    // output channels per register tile
constexpr int kNR = 48;   // virtual pixels per register tile (3 vectors)
constexpr int64_t kMaxDepth = 256;

// The tile r[i][j] = sum over channels c < cn and taps t < taps of a[(c*taps + t)*8 + i] *
// x[c*cs + off[t] + 16j + lane], stored to y: virtual pixel v0 + 16j + lane is output (lr, q) with
// lr = v / Wv, q = v % Wv, kept when q < Q and lr < nr, at y[i*plane + lr*Q + q] for channels
// i < channels, plus bias[i] (when given), then ReLU when `relu` (NaN stays NaN). Wv >= 16, so a
// vector spans at most two output rows: the lanes of the second are compressed to its row start.
FC_TARGET_AVX512 void tile_out(const float* a, const float* x, int64_t cs, int64_t cn, const int64_t* off,
                               int64_t taps, int64_t v0, int64_t Wv, int64_t Q, int64_t nr, float* y, int64_t plane,
                               int channels, const float* bias, bool relu) {
  __m512 r[kMR][3];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) r[i][0] = r[i][1] = r[i][2] = _mm512_setzero_ps();
  for (int64_t c = 0; c < cn; ++c, x += cs) {
    for (int64_t t = 0; t < taps; ++t, a += kMR) {
      const float* b = x + off[t];
      const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
#pragma GCC unroll 8
      for (int i = 0; i < kMR; ++i) {
        const __m512 ai = _mm512_set1_ps(a[i]);
        r[i][0] = _mm512_fmadd_ps(ai, b0, r[i][0]);
        r[i][1] = _mm512_fmadd_ps(ai, b1, r[i][1]);
        r[i][2] = _mm512_fmadd_ps(ai, b2, r[i][2]);
      }
    }
  }
  __mmask16 m0[3], m1[3], n1[3];
  int64_t at0[3], at1[3];
  for (int j = 0; j < 3; ++j) {
    const int64_t v = v0 + 16 * j, lr = v / Wv, q = v % Wv, next = Wv - q;  // lanes >= next: row lr + 1
    m0[j] = lr < nr && q < Q ? __mmask16((1u << std::min<int64_t>(16, Q - q)) - 1) : 0;
    const int64_t count = next < 16 && lr + 1 < nr ? std::min<int64_t>(16 - next, Q) : 0;
    m1[j] = count ? __mmask16(((1u << count) - 1) << next) : 0;
    n1[j] = __mmask16((1u << count) - 1);
    at0[j] = lr * Q + q;
    at1[j] = (lr + 1) * Q;
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < channels; ++i) {
    const __m512 bi = _mm512_set1_ps(bias ? bias[i] : 0.f);
    float* yi = y + i * plane;
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) {
      __m512 v = _mm512_add_ps(r[i][j], bi);
      if (relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
      if (m0[j]) _mm512_mask_storeu_ps(yi + at0[j], m0[j], v);
      if (m1[j]) _mm512_mask_storeu_ps(yi + at1[j], n1[j], _mm512_maskz_compress_ps(m1[j], v));
    }
  }
}

}  // namespace

bool strided_direct_supports(const Conv2dShape& s) {
  const int64_t Wv = ceil_div(s.W + 2 * s.pad_w, s.stride_w);
  return current_isa() == Isa::kAvx512 && s.groups == 1 && s.pad_h >= 0 && s.pad_w >= 0 &&
         s.C * s.R * s.S <= kMaxDepth && Wv >= 16 && s.N > 0 && s.K > 0 && s.P > 0 && s.Q > 0;
}

bool strided_direct_faster(const Conv2dShape& s) { return (s.stride_h > 1 || s.stride_w > 1) && s.C <= 4; }

void strided_direct_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s,
                            bool relu) {
  const int64_t C = s.C, K = s.K, P = s.P, Q = s.Q, H = s.H, W = s.W, sh = s.stride_h, sw = s.stride_w;
  const int64_t RS = s.R * s.S, CRS = C * RS, HW = H * W, PQ = P * Q;
  const int64_t Wv = ceil_div(W + 2 * s.pad_w, sw);  // phase row width
  const int64_t halo = (s.R - 1) * s.dil_h / sh, jmax = (s.S - 1) * s.dil_w / sw;
  const int64_t phases = sh * sw, blocks = ceil_div(K, kMR);
  // Output rows per task: about 512 virtual pixels; when images x row blocks are fewer than the
  // threads, the 8-channel output blocks are split into parts too (no sum is split).
  int64_t rblocks = ceil_div(P, std::clamp<int64_t>(512 / Wv, 1, P));
  const int64_t rows = ceil_div(P, rblocks);
  rblocks = ceil_div(P, rows);
  const int64_t kparts = std::min(blocks, ceil_div(at::get_num_threads(), s.N * rblocks));
  const int64_t part = ceil_div(blocks, kparts);
  // Phase planes of whole images, built once per call: P + halo phase rows each (every row a tile
  // reads), then zeros for the last tile's overreach. Channel stride cs, image stride C*cs.
  const int64_t prows = P + halo;
  const int64_t psize = round_up(prows * Wv + kNR + jmax + 1, 16);
  const int64_t cs = phases * psize;
  std::vector<int64_t> off(RS);
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t t = 0; t < s.S; ++t) {
      const int64_t hr = r * s.dil_h, wt = t * s.dil_w;
      off[r * s.S + t] = ((hr % sh) * sw + wt % sw) * psize + (hr / sh) * Wv + wt / sw;
    }
  // Weights: block b holds [c][rs][8] for output channels 8b .. 8b+7 (zeros past K).
  static thread_local Scratch<float> w_scratch, x_scratch;
  float* wp = w_scratch.get(blocks * CRS * kMR);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t t = 0; t < CRS; ++t)
      for (int64_t i = 0; i < kMR; ++i) {
        const int64_t o = b * kMR + i;
        wp[(b * CRS + t) * kMR + i] = o < K ? w[o * CRS + t] : 0.f;
      }
  float* xph = x_scratch.get(s.N * C * cs);
  // Phase (a, bph) of channel (n, c), row i: padded row i*sh + a, padded columns j*sw + bph.
  at::parallel_for(0, s.N * C * phases, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t nc = task / phases, a = task % phases / sw, bph = task % sw;
      float* dst = xph + nc * cs + (a * sw + bph) * psize;
      // Columns j in [jlo, jhi) read x column j*sw + bph - pw inside [0, W).
      const int64_t w0 = bph - s.pad_w;
      const int64_t jlo = std::min(Wv, w0 >= 0 ? 0 : ceil_div(-w0, sw));
      const int64_t jhi = std::clamp<int64_t>(W - 1 - w0 < 0 ? 0 : (W - 1 - w0) / sw + 1, jlo, Wv);
      for (int64_t i = 0; i < prows; ++i) {
        const int64_t h = i * sh + a - s.pad_h;
        float* out = dst + i * Wv;
        if (h < 0 || h >= H) {
          std::fill(out, out + Wv, 0.f);
          continue;
        }
        const float* src = x + nc * HW + h * W + w0;
        for (int64_t j = 0; j < jlo; ++j) out[j] = 0.f;
        for (int64_t j = jlo; j < jhi; ++j) out[j] = src[j * sw];
        for (int64_t j = jhi; j < Wv; ++j) out[j] = 0.f;
      }
      std::fill(dst + prows * Wv, dst + psize, 0.f);
    }
  });

  at::parallel_for(0, s.N * rblocks * kparts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kp = task % kparts, rb = task / kparts % rblocks, n = task / kparts / rblocks;
      const int64_t b0 = kp * part, b1 = std::min(blocks, b0 + part);
      const int64_t p0 = rb * rows, nr = std::min(rows, P - p0), len = round_up(nr * Wv, kNR);
      const float* xl = xph + n * C * cs + p0 * Wv;
      for (int64_t t0 = 0; t0 < len; t0 += kNR)
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t o0 = b * kMR;
          tile_out(wp + b * CRS * kMR, xl + t0, cs, C, off.data(), RS, t0, Wv, Q, nr,
                   y + (n * K + o0) * PQ + p0 * Q, PQ, int(std::min<int64_t>(kMR, K - o0)), bias ? bias + o0 : nullptr,
                   relu);
        }
    }
  });
}

#else  // not x86-64: no AVX-512, so dispatch never chooses this.
bool strided_direct_supports(const Conv2dShape&) { return false; }
bool strided_direct_faster(const Conv2dShape&) { return false; }
void strided_direct_forward(const float*, const float*, const float*, float*, const Conv2dShape&, bool) {
  std::abort();
}
#endif

}  // namespace cpu
}  // namespace fastconv
