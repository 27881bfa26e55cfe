// The stride-1 direct convolution of cpu/direct_conv.h: AVX-512 micro-kernel, task loop, epilogue.
#include "cpu/direct_conv.h"

#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {
namespace {

#define FC_TARGET_AVX512 __attribute__((target("avx512f")))

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// yv[i*ldy + j] (=|+=) sum over channels c < cn and taps t < taps of a[(c*taps + t)*8 + i] *
// x[c*cs + off[t] + j], for i < 8 output channels and j < 48 virtual pixels: 24 accumulators, and
// per tap 3 input loads + 8 weight broadcasts for 24 FMAs. yv is 64-byte aligned, ldy a multiple
// of 16.
FC_TARGET_AVX512 void direct_uk(const float* a, const float* x, int64_t cs, int64_t cn, const int64_t* off,
                                int64_t taps, float* yv, int64_t ldy, bool accumulate) {
  static_assert(kDirectMR == 8 && kDirectNR == 48, "the register tile is 8 x 48");
  __m512 r[8][3];
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

}  // namespace

bool direct_conv_available() { return current_isa() == Isa::kAvx512; }

void direct_conv(const float* x, const float* wpacked, const float* bias, float* y, const DirectConvShape& d,
                 bool relu) {
  const int64_t P = d.P(), Q = d.Q(), Wp = d.W + 2 * d.pw, RS = d.R * d.S, HW = d.H * d.W;
  const int64_t blocks = ceil_div(d.Co, kDirectMR), halo = d.dh * (d.R - 1);
  const int64_t NG = d.N * d.groups;
  // Output rows per task: about 512 virtual pixels, but at least one task per thread.
  int64_t rblocks = ceil_div(P, std::clamp<int64_t>(512 / Wp, 1, P));
  rblocks = std::min(P, std::max(rblocks, ceil_div(at::get_num_threads(), NG)));
  const int64_t rows = ceil_div(P, rblocks);
  rblocks = ceil_div(P, rows);
  const int64_t L = round_up(rows * Wp, kDirectNR);  // virtual pixels of a task (buffer row length)
  // A local input channel: rows + halo padded rows, then zeros for the last tile's overreach.
  const int64_t plane = round_up((rows + halo) * Wp + kDirectNR + d.dw * (d.S - 1), 16);
  // Input channels per depth chunk (its weights and input rows stay in L1): about 256 taps, split evenly.
  const int64_t chunk = ceil_div(d.Ci, ceil_div(d.Ci, std::max<int64_t>(1, 256 / RS)));
  int64_t off[64];
  std::vector<int64_t> off_heap;
  int64_t* offs = RS <= 64 ? off : (off_heap.resize(RS), off_heap.data());
  for (int64_t r = 0; r < d.R; ++r)
    for (int64_t s = 0; s < d.S; ++s) offs[r * d.S + s] = r * d.dh * Wp + s * d.dw;

  at::parallel_for(0, NG * rblocks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<float> x_scratch, y_scratch;
    float* xl = x_scratch.get(d.Ci * plane);
    float* yv = y_scratch.get(blocks * kDirectMR * L);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task % rblocks, ng = task / rblocks, g = ng % d.groups;
      const int64_t p0 = rb * rows, nr = std::min(rows, P - p0), len = round_up(nr * Wp, kDirectNR);
      // Local padded input: row lr is padded row p0 + lr, i.e. input row p0 + lr - ph.
      const float* xg = x + ng * d.Ci * HW;
      for (int64_t c = 0; c < d.Ci; ++c) {
        float* dst = xl + c * plane;
        for (int64_t lr = 0; lr < nr + halo; ++lr, dst += Wp) {
          const int64_t h = p0 + lr - d.ph;
          if (h < 0 || h >= d.H) {
            std::fill(dst, dst + Wp, 0.f);
          } else {
            const float* src = xg + c * HW + h * d.W;
            std::fill(dst, dst + d.pw, 0.f);
            std::copy(src, src + d.W, dst + d.pw);
            std::fill(dst + d.pw + d.W, dst + Wp, 0.f);
          }
        }
        std::fill(dst, xl + (c + 1) * plane, 0.f);
      }
      const float* wg = wpacked + g * blocks * kDirectMR * d.Ci * RS;
      for (int64_t c0 = 0; c0 < d.Ci; c0 += chunk) {
        const int64_t cn = std::min(chunk, d.Ci - c0);
        for (int64_t t0 = 0; t0 < len; t0 += kDirectNR)
          for (int64_t b = 0; b < blocks; ++b)
            direct_uk(wg + (b * d.Ci + c0) * RS * kDirectMR, xl + c0 * plane + t0, plane, cn, offs, RS,
                      yv + b * kDirectMR * L + t0, L, c0 > 0);
      }
      for (int64_t o = 0; o < d.Co; ++o) {
        const float bo = bias ? bias[g * d.Co + o] : 0.f;
        float* yo = y + ((ng * d.Co + o) * P + p0) * Q;
        for (int64_t lr = 0; lr < nr; ++lr) bias_relu_row(yv + o * L + lr * Wp, bo, relu, yo + lr * Q, Q);
      }
    }
  });
}

}  // namespace cpu
}  // namespace fastconv
