// The phase-decomposed strided direct convolution of cpu/strided_direct.h.
#include "cpu/strided_direct.h"

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


// The phase planes of a call: each input channel (n, c) becomes sh*sw planes of psize floats,
// plane (a, b) holding phase rows i < prows (P + halo: every row a tile reads) of Wv floats, then
// zeros for the last tile's overreach. off[r*S + s] = where tap (r, s) of output (0, 0) reads,
// relative to the channel's first plane.
struct PhaseGeometry {
  int64_t Wv, halo, jmax, prows, psize, cs;
  std::vector<int64_t> off;
  explicit PhaseGeometry(const Conv2dShape& s) {
    const int64_t sh = s.stride_h, sw = s.stride_w;
    Wv = ceil_div(s.W + 2 * s.pad_w, sw);
    halo = (s.R - 1) * s.dil_h / sh, jmax = (s.S - 1) * s.dil_w / sw;
    prows = s.P + halo;
    psize = round_up(prows * Wv + kNR + jmax + 1, 16);
    cs = sh * sw * psize;
    off.resize(s.R * s.S);
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t t = 0; t < s.S; ++t) {
        const int64_t hr = r * s.dil_h, wt = t * s.dil_w;
        off[r * s.S + t] = ((hr % sh) * sw + wt % sw) * psize + (hr / sh) * Wv + wt / sw;
      }
  }
};

// xph (N*C*cs floats): phase (a, b) of channel (n, c), row i = padded row i*sh + a, padded columns
// j*sw + b.
void build_phases(const float* x, const Conv2dShape& s, const PhaseGeometry& g, float* xph) {
  const int64_t sh = s.stride_h, sw = s.stride_w, phases = sh * sw, HW = s.H * s.W, Wv = g.Wv;
  at::parallel_for(0, s.N * s.C * phases, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t nc = task / phases, a = task % phases / sw, bph = task % sw;
      float* dst = xph + nc * g.cs + (a * sw + bph) * g.psize;
      // Columns j in [jlo, jhi) read x column j*sw + bph - pw inside [0, W).
      const int64_t w0 = bph - s.pad_w;
      const int64_t jlo = std::min(Wv, w0 >= 0 ? 0 : ceil_div(-w0, sw));
      const int64_t jhi = std::clamp<int64_t>(s.W - 1 - w0 < 0 ? 0 : (s.W - 1 - w0) / sw + 1, jlo, Wv);
      for (int64_t i = 0; i < g.prows; ++i) {
        const int64_t h = i * sh + a - s.pad_h;
        float* out = dst + i * Wv;
        if (h < 0 || h >= s.H) {
          std::fill(out, out + Wv, 0.f);
          continue;
        }
        const float* src = x + nc * HW + h * s.W + w0;
        for (int64_t j = 0; j < jlo; ++j) out[j] = 0.f;
        for (int64_t j = jlo; j < jhi; ++j) out[j] = src[j * sw];
        for (int64_t j = jhi; j < Wv; ++j) out[j] = 0.f;
      }
      std::fill(dst + g.prows * Wv, dst + g.psize, 0.f);
    }
  });
}

// Weight-gradient tile: acc[i][16v + lane] (=|+=) sum over output pixels (p, q), p0 <= p < p1, of
// rows[i][p*Wv + q] * dyT[((p - p0)*Q + q)*ld + 16v + lane], i < 6 (x rows of (c, r, s) taps), v < 4.
FC_TARGET_AVX512 void wgrad_tile(const float* const* rows, const float* dyT, int64_t ld, int64_t p0, int64_t p1,
                                 int64_t Q, int64_t Wv, float* acc, int64_t lda, bool accumulate) {
  __m512 r[6][4];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) r[i][v] = _mm512_setzero_ps();
  for (int64_t p = p0; p < p1; ++p) {
    const float* xr[6];
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) xr[i] = rows[i] + p * Wv;
    const float* d = dyT + (p - p0) * Q * ld;
    for (int64_t q = 0; q < Q; ++q, d += ld) {
      __m512 b[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) b[v] = _mm512_load_ps(d + 16 * v);
#pragma GCC unroll 6
      for (int i = 0; i < 6; ++i) {
        const __m512 a = _mm512_set1_ps(xr[i][q]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) r[i][v] = _mm512_fmadd_ps(a, b[v], r[i][v]);
      }
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      float* ai = acc + i * lda + 16 * v;
      _mm512_store_ps(ai, accumulate ? _mm512_add_ps(_mm512_load_ps(ai), r[i][v]) : r[i][v]);
    }
}

}  // namespace

bool strided_direct_supports(const Conv2dShape& s) {
  const int64_t Wv = ceil_div(s.W + 2 * s.pad_w, s.stride_w);
  return current_isa() >= Isa::kAvx512 && s.groups == 1 && s.pad_h >= 0 && s.pad_w >= 0 &&
         s.C * s.R * s.S <= kMaxDepth && Wv >= 16 && s.N > 0 && s.K > 0 && s.P > 0 && s.Q > 0;
}

bool strided_direct_faster(const Conv2dShape& s) { return (s.stride_h > 1 || s.stride_w > 1) && s.C <= 4; }

void strided_direct_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s,
                            bool relu) {
  const int64_t C = s.C, K = s.K, P = s.P, Q = s.Q, W = s.W, sw = s.stride_w;
  const int64_t RS = s.R * s.S, CRS = C * RS, PQ = P * Q;
  const int64_t Wv = ceil_div(W + 2 * s.pad_w, sw);  // phase row width
  const int64_t blocks = ceil_div(K, kMR);
  // Output rows per task: about 512 virtual pixels; when images x row blocks are fewer than the
  // threads, the 8-channel output blocks are split into parts too (no sum is split).
  int64_t rblocks = ceil_div(P, std::clamp<int64_t>(512 / Wv, 1, P));
  const int64_t rows = ceil_div(P, rblocks);
  rblocks = ceil_div(P, rows);
  const int64_t kparts = std::min(blocks, ceil_div(at::get_num_threads(), s.N * rblocks));
  const int64_t part = ceil_div(blocks, kparts);
  const PhaseGeometry geo(s);
  const int64_t cs = geo.cs;
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
  build_phases(x, s, geo, xph);

  at::parallel_for(0, s.N * rblocks * kparts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kp = task % kparts, rb = task / kparts % rblocks, n = task / kparts / rblocks;
      const int64_t b0 = kp * part, b1 = std::min(blocks, b0 + part);
      const int64_t p0 = rb * rows, nr = std::min(rows, P - p0), len = round_up(nr * Wv, kNR);
      const float* xl = xph + n * C * cs + p0 * Wv;
      for (int64_t t0 = 0; t0 < len; t0 += kNR)
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t o0 = b * kMR;
          tile_out(wp + b * CRS * kMR, xl + t0, cs, C, geo.off.data(), RS, t0, Wv, Q, nr,
                   y + (n * K + o0) * PQ + p0 * Q, PQ, int(std::min<int64_t>(kMR, K - o0)), bias ? bias + o0 : nullptr,
                   relu);
        }
    }
  });
}

void strided_direct_weight_grad(const float* dy, const float* x, float* dw, const Conv2dShape& s, const float* gate) {
  const int64_t C = s.C, K = s.K, P = s.P, Q = s.Q, PQ = P * Q, RS = s.R * s.S, CRS = C * RS;
  const Conv2dShape one = [&] {  // the phase planes are built one image at a time
    Conv2dShape o = s;
    o.N = 1;
    return o;
  }();
  const PhaseGeometry geo(s);
  const int64_t KW = round_up(K, 64), kblocks = KW / 64, tiles = ceil_div(CRS, 6);
  // Output rows per chunk: the chunk's dy transposed ([pixels][KW] floats) in a quarter of L2.
  const int64_t chunk_rows = std::clamp<int64_t>(cache_sizes().l2 / 4 / (Q * KW * 4), 1, P);
  static thread_local Scratch<float> x_scratch, acc_scratch;
  float* xph = x_scratch.get(C * geo.cs);       // image n's phase planes
  float* acc = acc_scratch.get(tiles * 6 * KW);  // dw^T [crs][KW], rows padded to whole tiles
  for (int64_t n = 0; n < s.N; ++n) {
    build_phases(x + n * C * s.H * s.W, one, geo, xph);
    // Tasks: 6-row tiles of dw^T x 64-channel blocks. Each thread walks image n in chunks of
    // output rows, transposing the chunk of dy into its own L2-resident buffer (each thread that
    // has tasks transposes every chunk: cheaper than a barrier per chunk), then running its tiles.
    at::parallel_for(0, tiles * kblocks, 1, [&](int64_t begin, int64_t end) {
      static thread_local Scratch<float> dy_scratch;
      float* dyT = dy_scratch.get(chunk_rows * Q * KW);
      for (int64_t p0 = 0; p0 < P; p0 += chunk_rows) {
        const int64_t p1 = std::min(P, p0 + chunk_rows), len = (p1 - p0) * Q;
        const int64_t at = n * K * PQ + p0 * Q;  // dyT[t][k] = dy[n][k][p0*Q + t] (gated), 0 past K
        transpose_panel(dy + at, gate ? gate + at : nullptr, PQ, K, len, dyT, KW, KW);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t tile = task / kblocks, kb = task % kblocks * 64;
          const float* rows[6];
          for (int64_t i = 0; i < 6; ++i) {
            const int64_t crs = std::min(CRS - 1, tile * 6 + i);  // rows past CRS: repeat the last
            rows[i] = xph + (crs / RS) * geo.cs + geo.off[crs % RS];
          }
          wgrad_tile(rows, dyT + kb, KW, p0, p1, Q, geo.Wv, acc + tile * 6 * KW + kb, KW, n > 0 || p0 > 0);
        }
      }
    });
  }
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      for (int64_t crs = 0; crs < CRS; ++crs) dw[k * CRS + crs] = acc[crs * KW + k];
  });
}

#else  // not x86-64: no AVX-512, so dispatch never chooses this.
bool strided_direct_supports(const Conv2dShape&) { return false; }
bool strided_direct_faster(const Conv2dShape&) { return false; }
void strided_direct_forward(const float*, const float*, const float*, float*, const Conv2dShape&, bool) {
  std::abort();
}
void strided_direct_weight_grad(const float*, const float*, float*, const Conv2dShape&, const float*) { std::abort(); }
#endif

}  // namespace cpu
}  // namespace fastconv
