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

// The phase planes of a call (cpu/direct_conv.h): each input channel (n, c) becomes sh*sw planes
// of psize floats, holding phase rows i < prows (P + halo: every row a tap reads) of Wv floats;
// off[r*S + s] = where tap (r, s) of output (0, 0) reads, relative to the channel's first plane.
struct PhaseGeometry {
  DirectConvShape d;
  int64_t Wv, prows, psize, cs;
  std::vector<int64_t> off;
  explicit PhaseGeometry(const Conv2dShape& s)
      : d(direct_shape(s)), Wv(ceil_div(s.W + 2 * s.pad_w, s.stride_w)),
        prows(s.P + (s.R - 1) * s.dil_h / s.stride_h), psize(round_up(prows * Wv, 16)),
        cs(s.stride_h * s.stride_w * psize), off(tap_offsets(d, Wv, psize)) {}
};

// xph (images x channels x cs floats): the phase planes of `images` images of x, channels in parallel.
void build_phases(const float* x, int64_t images, const PhaseGeometry& g, float* xph) {
  const int64_t C = g.d.Ci, HW = g.d.H * g.d.W;
  at::parallel_for(0, images * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc)
      copy_padded_rows(x + nc * HW, nullptr, 1, g.d, g.Wv, 0, g.prows, xph + nc * g.cs, g.psize);
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
  return current_isa() >= Isa::kAvx512 && s.groups == 1 && s.pad_h >= 0 && s.pad_w >= 0 && Wv >= 16 &&
         s.N > 0 && s.K > 0 && s.P > 0 && s.Q > 0;
}

bool strided_direct_weight_grad_faster(const Conv2dShape& s) { return s.stride_h > 1 || s.stride_w > 1; }

void strided_direct_weight_grad(const float* dy, const float* x, float* dw, const Conv2dShape& s, const float* gate) {
  const int64_t C = s.C, K = s.K, P = s.P, Q = s.Q, PQ = P * Q, RS = s.R * s.S, CRS = C * RS;
  const PhaseGeometry geo(s);
  const int64_t KW = round_up(K, 64), kblocks = KW / 64, tiles = ceil_div(CRS, 6);
  // Output rows per chunk: the chunk's dy transposed ([pixels][KW] floats) in a quarter of L2.
  const int64_t chunk_rows = std::clamp<int64_t>(cache_sizes().l2 / 4 / (Q * KW * 4), 1, P);
  static thread_local Scratch<float> x_scratch, acc_scratch;
  float* xph = x_scratch.get(C * geo.cs);       // image n's phase planes
  float* acc = acc_scratch.get(tiles * 6 * KW);  // dw^T [crs][KW], rows padded to whole tiles
  for (int64_t n = 0; n < s.N; ++n) {
    build_phases(x + n * C * s.H * s.W, 1, geo, xph);  // one image at a time
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
  // dw[k][crs] = acc[crs][k], 16 x 16 blocks in registers, 64 crs rows per task.
  at::parallel_for(0, ceil_div(CRS, 64), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = begin * 64; r0 < std::min(CRS, end * 64); r0 += 64) {
      const int64_t rows = std::min<int64_t>(64, CRS - r0);
      transpose_panel(acc + r0 * KW, nullptr, KW, rows, K, dw + r0, CRS, rows);
    }
  });
}

#else  // not x86-64: no AVX-512, so dispatch never chooses this.
bool strided_direct_supports(const Conv2dShape&) { return false; }
bool strided_direct_weight_grad_faster(const Conv2dShape&) { return false; }
void strided_direct_weight_grad(const float*, const float*, float*, const Conv2dShape&, const float*) { std::abort(); }
#endif

}  // namespace cpu
}  // namespace fastconv
