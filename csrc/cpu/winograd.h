// Winograd F(4x4, 3x3) convolution (float32, AVX-512) for 3x3, stride-1, dilation-1, groups-1
// convolutions, with the standard interpolation points 0, +-1, +-2, infinity (Lavin & Gray):
//   U = G g G^T (6x6 per output/input channel pair; kept across calls in inference)
//   V = B^T d B (6x6 per input tile d and channel; tiles overlap by 2, zero padding read as 0)
//   M_xi = U_xi * V_xi for each of the 36 positions xi: a (K x C) * (C x tiles) GEMM
//   y tile = A^T M A (4x4 outputs per tile and output channel) + bias, then ReLU when asked.
// It does 36*K*C multiply-adds per 16 outputs instead of 144*K*C, at a float32 error of
// 1e-6 to 4e-6 relative (growing with C; ~2.5e-7 for the exact paths): fastconv.set_cpu_conv_algo
// chooses (cpu/dispatch.h).
#pragma once

#include <cstdint>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// True when winograd_conv3x3 can run the convolution s: 3x3 / stride 1 / dilation 1 / groups 1,
// padding >= 0, nothing empty, and the AVX-512 kernels selected (cpu::current_isa()).
bool winograd_supports(const Conv2dShape& s);

// The transformed weights U of w (K, C, 3, 3) for the convolution s: winograd_weights_size(s)
// floats, 64-byte aligned (filled by winograd_transform_weights; callers may keep them across
// calls, cpu/packed_weights.h).
int64_t winograd_weights_size(const Conv2dShape& s);
void winograd_transform_weights(const float* w, const Conv2dShape& s, float* U);

// y (N, K, P, Q) = conv(x (N, C, H, W), w (K, C, 3, 3)) (+ bias[K]), then ReLU when `relu`, from
// U = winograd_transform_weights(w). Needs winograd_supports(s).
void winograd_conv3x3(const float* x, const float* U, const float* bias, float* y, const Conv2dShape& s,
                      bool relu);

// dx (N, C, H, W) of the convolution s from dy (N, K, P, Q), as the Winograd forward of its dual
// convolution input_grad_dual(s) (cpu/dispatch.h), which must satisfy winograd_supports. With a
// gate (dy's shape), dy is read as relu_backward(dy, gate).
void winograd_backward_input(const float* dy, const float* w, float* dx, const Conv2dShape& s,
                             const float* gate = nullptr);

}  // namespace cpu
}  // namespace fastconv
