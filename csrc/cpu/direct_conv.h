// Direct convolution for stride 1 (float32, AVX-512): no im2col packing at all.
//
// With stride 1, output pixel (p, q) of a zero-padded input reads xpad[c][p + r*dh][q + s*dw]. Lay
// the output out in "virtual rows" as wide as the padded input, v = p*Wp + q with Wp = W + 2*pw;
// then every tap (c, r, s) reads xpad at v + off(c, r, s), one contiguous run for all v. So
//   yv[o][v] = sum_{c, r, s} w[o][c][r][s] * xpad_c[v + r*dh*Wp + s*dw]
// is a GEMM whose B operand is read straight from the padded input with unaligned vector loads.
// Columns q >= Q of a virtual row are computed and discarded (a (S-1)*dw / Wp overhead).
//
// One task = one image, one group and a block of output rows: it copies the rows it reads into a
// zero-padded local buffer, accumulates yv for all output channels in a local buffer (8 channels x
// 48 virtual pixels per micro-kernel call, input channels in depth chunks that stay in L1), and
// writes the valid columns to y with bias and ReLU. Each output's sum runs in the same order
// whatever the task split, so results are deterministic and thread-count independent.
//
// The same kernel computes the input gradient of a stride-1 convolution: dx = conv(dy, w') with w'
// the weight transposed (in <-> out channels) and flipped (r, s -> R-1-r, S-1-s), padding
// dil*(k-1) - pad.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// A convolution of stride (sh, sw): input (N, groups*Ci, H, W), output (N, groups*Co, P, Q) with
// P = (H + 2*ph - dh*(R-1) - 1) / sh + 1, Q likewise. Stride 1 but for direct_conv's forward.
struct DirectConvShape {
  int64_t N, groups, Ci, Co, H, W, R, S, ph, pw, dh, dw, sh = 1, sw = 1;
  int64_t P() const { return (H + 2 * ph - dh * (R - 1) - 1) / sh + 1; }
  int64_t Q() const { return (W + 2 * pw - dw * (S - 1) - 1) / sw + 1; }
};

constexpr int kDirectMR = 8;   // output channels per micro-kernel tile
constexpr int kDirectNR = 48;  // virtual pixels per micro-kernel tile

// True when the direct kernels can run the convolution s (the forward or, for the input gradient,
// its dual, cpu/dispatch.h): stride 1, padding >= 0, and the AVX-512 kernels selected
// (cpu::current_isa()).
bool direct_conv_supports(const Conv2dShape& s);

// The same for direct_conv's forward alone, at any stride.
bool direct_conv_strided_supports(const Conv2dShape& s);

// The heuristic for a strided forward: stride > 1 and a kernel wider than 1x1, whose taps share
// the phase planes where the GEMM's im2col reads each input element R*S times with the stride
// (3x3 stride 2 at 32-128 channels: 1.3-2x the GEMM; 7x7/2 and 11x11/4 stems: on par or faster).
// A 1x1 strided convolution reads one phase of four: the GEMM, which packs it in place, wins.
bool direct_conv_strided_faster(const Conv2dShape& s);

// The stride-1 convolution s as the direct kernels see it (channels per group).
inline DirectConvShape direct_shape(const Conv2dShape& s) {
  return {s.N, s.groups, s.Cg(), s.Kg(), s.H, s.W, s.R, s.S, s.pad_h, s.pad_w, s.dil_h, s.dil_w, s.stride_h, s.stride_w};
}

// Phase planes (direct_conv's local input; the strided weight gradient's, cpu/strided_direct.h):
// a channel's sh*sw planes of psize floats each, plane (a, b) holding rows of Wv floats,
//   phase(a, b)[i][j] = xpad[i*sh + a][j*sw + b]   (stride 1: the padded plane itself).
// tap_offsets: where tap (r, s) of output (0, 0) reads, relative to the channel's first plane.
// copy_padded_rows: phase rows [p0, p0 + n) of `channels` channels of x (each H x W) into dst
// (channel c's planes at dst + c*sh*sw*psize), each plane zero-filled past those rows; with a
// gate (x's shape), x read as relu_backward(x, gate).
std::vector<int64_t> tap_offsets(const DirectConvShape& d, int64_t Wv, int64_t psize);
void copy_padded_rows(const float* x, const float* gate, int64_t channels, const DirectConvShape& d, int64_t Wv,
                      int64_t p0, int64_t n, float* dst, int64_t psize);

// Packed weights: per group, ceil(Co/8) blocks of [Ci][R*S][8] (output channels past Co are 0).
inline int64_t direct_weights_size(const DirectConvShape& d) {
  return d.groups * round_up(d.Co, kDirectMR) * d.Ci * d.R * d.S;
}

// Fills dst (direct_weights_size floats) from the weight w (groups*Co, Ci, R, S): block b of group g
// interleaves the 8 rows w[g*Co + 8b + j] (each Ci*R*S contiguous floats), rows past Co as zeros.
// Blocks in parallel: at 512 x 512 channels the weights are 9 MB, which one thread takes ms to move.
inline void pack_direct_weights(const float* w, const DirectConvShape& d, float* dst) {
  const int64_t CRS = d.Ci * d.R * d.S, blocks = ceil_div(d.Co, kDirectMR);
  at::parallel_for(0, d.groups * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gb = begin; gb < end; ++gb) {
      const int64_t g = gb / blocks, b = gb % blocks, rows = std::min<int64_t>(kDirectMR, d.Co - b * kDirectMR);
      const float* src = w + (g * d.Co + b * kDirectMR) * CRS;
      float* out = dst + gb * kDirectMR * CRS;
      for (int64_t t = 0; t < CRS; ++t, out += kDirectMR)
        for (int64_t j = 0; j < kDirectMR; ++j) out[j] = j < rows ? src[j * CRS + t] : 0.f;
    }
  });
}

// The same for the dual convolution of the input gradient, from the forward weight w
// (groups*Ci, Co, R, S): weight(g, o, i, rs) = w[g*Ci + i][o][R*S-1-rs]. Read in w's memory order:
// in the packed order every element would start a new weight row, each a cache miss.
inline void pack_direct_weights_flipped(const float* w, const DirectConvShape& d, float* dst) {
  const int64_t RS = d.R * d.S, blocks = ceil_div(d.Co, kDirectMR), block_size = kDirectMR * d.Ci * RS;
  at::parallel_for(0, d.groups * d.Ci, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t g = gi / d.Ci, i = gi % d.Ci;
      const float* src = w + gi * d.Co * RS;  // w[g*Ci + i]: Co x RS
      float* base = dst + g * blocks * block_size + i * RS * kDirectMR;
      for (int64_t o = 0; o < blocks * kDirectMR; ++o) {
        float* out = base + (o / kDirectMR) * block_size + o % kDirectMR;
        for (int64_t rs = 0; rs < RS; ++rs) out[(RS - 1 - rs) * kDirectMR] = o < d.Co ? src[o * RS + rs] : 0.f;
      }
    }
  });
}

// y = conv(x) (+ bias[groups*Co]) then ReLU when `relu`; x, y contiguous NCHW. With a gate (x's
// shape), x is read as relu_backward(x, gate): 0 where gate <= 0 (the fused ReLU's input gradient).
// Any stride: the task's copy of its input rows is split into sh*sw phase planes,
//   phase(a, b)[i][j] = xpad[i*sh + a][j*sw + b]   (rows of Wv = ceil((W + 2*pw) / sw) floats),
// and tap (r, s) of output (p, q) reads phase((r*dh) % sh, (s*dw) % sw)[p + r*dh/sh][q + s*dw/sw],
// so with virtual rows of Wv pixels every tap is again one contiguous run (stride 1: one phase,
// Wv = Wp). No FMA is spent on a tap that does not exist.
void direct_conv(const float* x, const float* wpacked, const float* bias, float* y, const DirectConvShape& d,
                 bool relu, const float* gate = nullptr);

// Weight gradient of the convolution y = conv(x): dw (groups*Co, Ci, R, S) = sum over images and
// output pixels (p, q) of dy[o][p][q] * xpad_i[(p + r*dh)*Wp + q + s*dw]. Tiles of 6 (or 8)
// (i, r, s) rows, broadcast from the padded input in place, x 64 (or 32) output channels loaded
// from dy transposed (16 x 16 blocks in registers) into L1-sized chunks; no reductions across
// vector lanes. The sum over images is split into a number of partial sums fixed by the shape.
// With a gate (dy's shape), dy is read as relu_backward(dy, gate).
void direct_conv_weight_grad(const float* dy, const float* x, float* dw, const DirectConvShape& d,
                             const float* gate = nullptr);

// bt[t*ldb + o] = src[o*ld + t] for o < on, t < len (the transpose of an on x len block), and 0
// for on <= o < width <= ldb; with a gate (src's layout), src is read as relu_backward(src, gate).
// 16 x 16 blocks in registers, the edges element by element. AVX-512 code: only when
// current_isa() >= Isa::kAvx512 (the small-M, strided and direct kernels that call it).
void transpose_panel(const float* src, const float* gate, int64_t ld, int64_t on, int64_t len, float* bt,
                     int64_t ldb, int64_t width);

// GEMM panels (cpu/gemm.h) of `width` rows (a multiple of 16, or a divisor of 16) from rows of
// src along the depth: panel q at dst + q*width*kc holds src[(q*width + i)*ld + k] at [k*width + i]
// for k < kc, zeros for rows past `rows`. Through transpose_panel: AVX-512 only.
void pack_transposed_panels(const float* src, int64_t ld, int64_t rows, int64_t kc, int width, float* dst);

// dst[i] = src[2*i] for i < n (reading no element past src[2*(n-1)]): the stride-2 im2col rows,
// de-interleaved in registers. AVX-512 only.
void copy_stride2(const float* src, int64_t n, float* dst);

}  // namespace cpu
}  // namespace fastconv
