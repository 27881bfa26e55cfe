// Winograd F(4x4, 3x3) convolution (float32, AVX-512) for 3x3, stride-1, dilation-1, groups-1
// convolutions, with the standard interpolation points 0, +-1, +-2, infinity (Lavin & Gray):
//   U = G g G^T (6x6 per output/input channel pair, once per call)
//   V = B^T d B (6x6 per input tile d and channel; tiles overlap by 2, zero padding read as 0)
//   M_xi = U_xi * V_xi for each of the 36 positions xi: a (K x C) * (C x tiles) GEMM
//   y tile = A^T M A (4x4 outputs per tile and output channel) + bias, then ReLU when asked.
// It does 36*K*C multiply-adds per 16 outputs instead of 144*K*C, at a float32 error of
// 1e-6 to 4e-6 relative (growing with C; ~2.5e-7 for the exact paths): fastconv.set_cpu_conv_algo
// chooses.
#pragma once

#include <cstdint>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// What conv2d may use (fastconv.set_cpu_conv_algo / FASTCONV_CPU_CONV_ALGO):
//   kAuto: Winograd where it is faster (winograd_applies), else the exact paths;
//   kExact: never Winograd; kWinograd: Winograd wherever it can run (tests and benchmarks).
enum class ConvAlgo : int { kAuto = 0, kExact = 1, kWinograd = 2 };
ConvAlgo current_conv_algo();

// True when the forward convolution of shape s should run through winograd_conv3x3: the shape is
// 3x3 / stride 1 / dilation 1 / groups 1, the AVX-512 kernels are selected, and the algorithm
// choice (and for kAuto the speed heuristic) says so.
bool winograd_applies(const Conv2dShape& s);

// y (N, K, P, Q) = conv(x (N, C, H, W), w (K, C, 3, 3)) (+ bias[K]), then ReLU when `relu`.
// Needs winograd_applies(s).
void winograd_conv3x3(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s,
                      bool relu);

// dx (N, C, H, W) of the convolution s from dy (N, K, P, Q): the convolution of dy with w
// transposed (in <-> out) and flipped, padding 2 - pad. Returns false (doing nothing) when
// Winograd does not apply to that convolution or 2 - pad < 0. With a gate (dy's shape), dy is read
// as relu_backward(dy, gate).
bool winograd_backward_input(const float* dy, const float* w, float* dx, const Conv2dShape& s,
                             const float* gate = nullptr);

}  // namespace cpu
}  // namespace fastconv
