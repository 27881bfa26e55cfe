// The weight gradient of strided convolutions (float32, AVX-512) on phase planes
// (cpu/direct_conv.h): a stride (sh, sw) convolution reads the zero-padded input xpad only at rows
// p*sh + r*dh and columns q*sw + s*dw, so with each channel split into sh*sw phase planes,
//   phase(a, b)[i][j] = xpad[i*sh + a][j*sw + b]   (rows of Wv = ceil(Wp/sw)),
// tap (r, s) of output (p, q) is phase((r*dh) % sh, (s*dw) % sw)[p + r*dh/sh][q + s*dw/sw]: a
// stride-1 read. The planes are built once per image, where the GEMM's im2col reads each input
// element R*S times with the stride. (The forward of strided layers is direct_conv's, on the same
// planes; their input gradient stays on the GEMM.)
#pragma once

#include <cstdint>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// True when the kernels below can run s: AVX-512 selected, groups 1, padding >= 0 and phase rows
// of >= 16 pixels (ceil((W + 2*pw) / sw) >= 16).
bool strided_direct_supports(const Conv2dShape& s);

// The heuristic: stride > 1, any channel count (3x3 stride 2 at 64-128 channels: 1.8x the GEMM;
// 1x1 stride 2 and an 11x11/4 stem: on par).
bool strided_direct_weight_grad_faster(const Conv2dShape& s);

// dw (K, C, R, S) from dy (N, K, P, Q) and x: dw^T[(c, r, s)][k] sums
// phase-plane values (broadcast, 6 taps per tile) times dy transposed to [pixel][64 channels]
// (4 vectors), over the pixels of each image in order, images in order (no split sums). With a
// gate (dy's shape), dy is read as relu_backward(dy, gate).
void strided_direct_weight_grad(const float* dy, const float* x, float* dw, const Conv2dShape& s,
                                const float* gate = nullptr);

}  // namespace cpu
}  // namespace fastconv
