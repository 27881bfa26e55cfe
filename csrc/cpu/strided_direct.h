// Direct strided convolution, forward and weight gradient, for few input channels (float32,
// AVX-512): the 7x7 stride-2 stems on RGB images, which the GEMM path runs at a packing cost per
// column as large as its FMAs. (Their input gradient stays on the GEMM.)
//
// Phase decomposition: a stride (sh, sw) convolution reads the zero-padded input xpad only at rows
// p*sh + r*dh and columns q*sw + s*dw. Split each padded channel into sh*sw phase planes,
//   phase(a, b)[i][j] = xpad[i*sh + a][j*sw + b]   (Hv = ceil(Hp/sh) rows of Wv = ceil(Wp/sw)),
// then tap (r, s) of output (p, q) is phase((r*dh) % sh, (s*dw) % sw)[p + r*dh/sh][q + s*dw/sw]: a
// stride-1 read. With the output laid out in virtual rows of Wv pixels (v = p*Wv + q), every tap
// reads one contiguous run of its phase plane, so the kernel is the stride-1 direct kernel's:
// 8 output channels x 48 virtual pixels per register tile, weights broadcast, inputs loaded
// unaligned. The whole depth (Cg*R*S <= 256) stays in registers; tiles go straight to y with bias
// and ReLU (virtual columns q >= Q dropped by store masks).
#pragma once

#include <cstdint>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// True when strided_direct_forward can run s: AVX-512 selected, groups 1, padding >= 0, a depth
// Cg*R*S <= 256 and phase rows of >= 16 pixels (ceil((W + 2*pw) / sw) >= 16).
bool strided_direct_supports(const Conv2dShape& s);

// The heuristic: stride > 1 (stride 1 has the direct kernel) and at most 4 input channels, where
// the GEMM's per-column packing costs as much as its FMAs.
bool strided_direct_faster(const Conv2dShape& s);

// y (N, K, P, Q) = conv(x, w) (+ bias[K]), then ReLU when `relu`.
void strided_direct_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s,
                            bool relu);

// dw (K, C, R, S) from dy (N, K, P, Q) and x, on the same phase planes: dw^T[(c, r, s)][k] sums
// phase-plane values (broadcast, 6 taps per tile) times dy transposed to [pixel][64 channels]
// (4 vectors), over the pixels of each image in order, images in order (no split sums). With a
// gate (dy's shape), dy is read as relu_backward(dy, gate).
void strided_direct_weight_grad(const float* dy, const float* x, float* dw, const Conv2dShape& s,
                                const float* gate = nullptr);

}  // namespace cpu
}  // namespace fastconv
