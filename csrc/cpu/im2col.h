// im2col without the matrix: the input image of one group, (Cg, H, W), viewed as the matrix
// col[crs][pq] (crs = (c*R + r)*S + s, pq = p*Q + q) whose element is x[c][h][w] with
//   h = p*stride_h - pad_h + r*dil_h,  w = q*stride_w - pad_w + s*dil_w,
// or 0 where (h, w) falls in the padding. Rows are visited in runs along pq so that the GEMM
// packers (forward, weight gradient) copy from it and col2im (input gradient) adds into it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/checks.h"
#include "cpu/direct_conv.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {

// dst[i] = src[i*step] for i < n: float stride-2 runs on AVX-512 in registers (copy_stride2). Used
// for the weight gradient's rows; the forward's B panels keep the scalar loop (its runs are cut at
// 32-column panel edges, and the call measured slower there: 1x1/2 at 56x56, -10%).
template <typename T>
inline void copy_strided(const T* src, int64_t step, int64_t n, T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    if (step == 2 && n >= 8 && current_isa() >= Isa::kAvx512) return copy_stride2(src, n, dst);
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * step];
}

struct Im2colGeometry {
  int64_t H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw;
  explicit Im2colGeometry(const Conv2dShape& s)
      : H(s.H), W(s.W), R(s.R), S(s.S), P(s.P), Q(s.Q), sh(s.stride_h), sw(s.stride_w),
        ph(s.pad_h), pw(s.pad_w), dh(s.dil_h), dw(s.dil_w) {}

  // Calls pad(t, n) for runs of n columns that read padding and run(t, n, offset) for runs that
  // read x[offset + i*sw], i < n, where t is the column's position relative to pq0.
  template <typename Pad, typename Run>
  void visit_row(int64_t crs, int64_t pq0, int64_t len, Pad&& pad, Run&& run) const {
    const int64_t s = crs % S, r = (crs / S) % R, c = crs / (R * S);
    const int64_t woff = s * dw - pw;  // w = q*sw + woff
    // Columns with a valid w: q in [qlo, qhi).
    const int64_t qlo = woff >= 0 ? 0 : floor_div(-woff + sw - 1, sw);
    const int64_t qhi = W - 1 - woff < 0 ? 0 : std::min(Q, floor_div(W - 1 - woff, sw) + 1);
    int64_t t = 0;
    while (t < len) {
      const int64_t pq = pq0 + t, p = pq / Q, q0 = pq % Q;
      const int64_t n = std::min(len - t, Q - q0);  // columns left in output row p
      const int64_t h = p * sh - ph + r * dh;
      if (h < 0 || h >= H || qlo >= qhi) {
        pad(t, n);
      } else {
        const int64_t a = std::clamp(qlo, q0, q0 + n), b = std::clamp(qhi, q0, q0 + n);
        if (a > q0) pad(t, a - q0);
        if (b > a) run(t + (a - q0), b - a, (c * H + h) * W + a * sw + woff);
        if (q0 + n > b) pad(t + (b - q0), q0 + n - b);
      }
      t += n;
    }
  }

  // dst[t*ds] = col[crs][pq0 + t] for t < len.
  template <typename T>
  void copy_row(const T* x, int64_t crs, int64_t pq0, int64_t len, T* dst, int64_t ds) const {
    const int64_t step = sw;
    visit_row(
        crs, pq0, len, [&](int64_t t, int64_t n) { for (int64_t i = 0; i < n; ++i) dst[(t + i) * ds] = T(0); },
        [&](int64_t t, int64_t n, int64_t off) {
          const T* src = x + off;
          T* d = dst + t * ds;
          if (step == 1 && ds == 1) {
            std::copy(src, src + n, d);
          } else if (ds == 1) {
            copy_strided(src, step, n, d);
          } else {
            for (int64_t i = 0; i < n; ++i) d[i * ds] = src[i * step];
          }
        });
  }

  // col2im: x[...] += src[t*ds] for the elements of row crs, columns pq0 .. pq0+len.
  template <typename T>
  void add_row(T* x, int64_t crs, int64_t pq0, int64_t len, const T* src, int64_t ds) const {
    const int64_t step = sw;
    visit_row(
        crs, pq0, len, [](int64_t, int64_t) {},
        [&](int64_t t, int64_t n, int64_t off) {
          T* d = x + off;
          const T* s = src + t * ds;
          for (int64_t i = 0; i < n; ++i) d[i * step] += s[i * ds];
        });
  }
};

// Packers that read col[crs][pq] of one image (columns offset by pq_base) for the GEMM driver.
// As B (depth = crs, panel dimension = pq): forward convolution. Each depth row is visited once
// across all panels; runs are split at panel boundaries.
template <typename T>
struct Im2colAsB {
  const Im2colGeometry& g;
  const T* x;
  int64_t pq_base;
  const T* operator()(T* dst, int64_t j0, int64_t nc, int64_t k0, int64_t kc, int nr) const {
    const int64_t panels = ceil_div(nc, nr), step = g.sw;
    for (int64_t k = 0; k < kc; ++k) {
      // Element t of this depth row goes to panel t / nr, slot k*nr + t % nr.
      auto place = [&](int64_t t, int64_t n, const T* src) {
        while (n > 0) {
          const int64_t within = t % nr, len = std::min<int64_t>(n, nr - within);
          T* d = dst + (t / nr) * nr * kc + k * nr + within;
          if (!src) {
            std::fill(d, d + len, T(0));
          } else if (step == 1) {
            std::copy(src, src + len, d);
            src += len;
          } else {
            for (int64_t i = 0; i < len; ++i) d[i] = src[i * step];
            src += len * step;
          }
          t += len;
          n -= len;
        }
      };
      g.visit_row(
          k0 + k, pq_base + j0, nc, [&](int64_t t, int64_t n) { place(t, n, nullptr); },
          [&](int64_t t, int64_t n, int64_t off) { place(t, n, x + off); });
      // Columns past nc in the last panel are zero.
      T* last = dst + (panels - 1) * nr * kc + k * nr;
      for (int64_t j = nc - (panels - 1) * nr; j < nr; ++j) last[j] = T(0);
    }
    return dst;
  }
};

// col^T as B (depth = pq, panel dimension = crs): weight gradient, dW = dY * col^T. A panel of
// width w holds crs rows [x, x + w), one depth (pq) at a time. float on AVX-512: the rows are
// copied along pq, then transposed into the panels in registers (pack_transposed_panels).
template <typename T>
struct Im2colTAsB {
  const Im2colGeometry& g;
  const T* x;
  int64_t crs_base;
  int64_t crs_end;  // rows at or past this are zero
  const T* operator()(T* dst, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr) const {
    if constexpr (std::is_same_v<T, float>) {
      if (current_isa() >= Isa::kAvx512 && (mr % 16 == 0 || 16 % mr == 0)) {
        static thread_local Scratch<float> scratch;
        float* rows = scratch.get(mc * kc);  // rows[i][k] = col[crs_base + i0 + i][k0 + k]
        const int64_t n = std::clamp<int64_t>(crs_end - crs_base - i0, 0, mc);
        for (int64_t i = 0; i < n; ++i) g.copy_row(x, crs_base + i0 + i, k0, kc, rows + i * kc, 1);
        std::fill(rows + n * kc, rows + mc * kc, 0.f);
        pack_transposed_panels(rows, kc, mc, kc, mr, dst);
        return dst;
      }
    }
    for (int64_t ip = 0; ip < mc; ip += mr) {
      T* panel = dst + ip * kc;
      for (int64_t i = 0; i < mr; ++i) {
        const int64_t crs = crs_base + i0 + ip + i;
        if (ip + i < mc && crs < crs_end) {
          g.copy_row(x, crs, k0, kc, panel + i, mr);
        } else {
          for (int64_t k = 0; k < kc; ++k) panel[k * mr + i] = T(0);
        }
      }
    }
    return dst;
  }
};

}  // namespace cpu
}  // namespace fastconv
