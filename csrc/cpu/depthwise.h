// Depthwise convolution: groups == C (input channels), K = m*C output channels (channel multiplier
// m >= 1), so output channel k = c*m + j reads input plane c only. Input (N, C, H, W), weight
// (K, 1, R, S), output (N, K, P, Q), any kernel size, stride, padding and dilation.
//
// A depthwise layer does R*S multiply-adds per output and no reduction over channels: it is
// memory-bound, and the GEMM path (one tiny GEMM per group) wastes most of its time on packing.
// This family works plane by plane instead, vectorised along W of NCHW:
//
// * Phase planes. A plane is copied, zero-padded, into sh*sw *phase sub-planes*
//   sub(a, b)[i][j] = xpad[i*sh + a][j*sw + b] (sh, sw = the strides). Output (p, q) of tap (r, s)
//   reads xpad[p*sh + r*dh][q*sw + s*dw] = sub((r*dh) % sh, (s*dw) % sw)[p + (r*dh)/sh][q + (s*dw)/sw],
//   so for every stride each tap reads one contiguous run of a sub-plane: strided outputs cost no
//   gathers, only the de-interleaving copy (once per plane, in cache).
// * Virtual rows. Outputs are computed at virtual positions v = p*L + q, L the sub-plane row width
//   (>= Q): each tap is then a single contiguous run x_t[v] = sub_t[v + off_t] over the whole plane,
//   so small planes (7x7, 14x14) fill whole vectors; the L - Q columns past Q of each virtual row
//   are computed and dropped: the forward epilogue compresses each vector's valid lanes (the
//   virtual order without them is the output order) and stores them with bias and ReLU applied.
// * Input gradient: with stride 1, multiplier 1 and padding <= dil*(k-1), the forward kernels on dy
//   with the weights flipped (padding dil*(k-1) - pad). Otherwise the adjoint, split by output
//   phase: sub-plane (a, b) of the padded dx is the sum over the taps with
//   ((r*dh) % sh, (s*dw) % sw) == (a, b) of w * dy shifted by ((r*dh)/sh, (s*dw)/sw): the same
//   gather over a padded copy of the m dy planes of channel c, then the sub-planes are interleaved
//   (and cropped) into dx.
// * Weight gradient: dw[k][r][s] = sum over images and (p, q) of dy[k][p][q] * x_t[p*L + q], with the
//   same phase planes of x and dy expanded into the virtual rows (the epilogue's compression
//   reversed); float lane sums over a shape-fixed number of images, then double accumulators.
//
// * Small planes (AVX-512 float32 forward, blocked planes within L1; with >= 25 taps, within half
//   of L2): 16 channels of one image at
//   a time, transposed into a zero-padded channel-blocked plane (pixel-major, 16 channel lanes),
//   where every tap is an aligned vector load; the blocked output is transposed back.
//
// Tasks own whole output planes (forward: (n, c) -> m planes of y; input gradient: (n, c) -> one
// plane of dx; weight gradient: channel c x a number of image ranges fixed by the shape), and every
// sum runs in a fixed order, so results do not depend on the thread count. float32 runs AVX-512
// kernels when cpu::current_isa() is kAvx512; every other case (float64, other ISAs) runs the
// portable path of the same algorithm.
//
// Channels_last (NHWC: x (N, H, W, C), y (N, P, Q, K)) has its own passes, vectorised along C
// (cpu/depthwise_nhwc.cpp), so a channels_last layer never changes layout. A task owns a block of
// channels and a range of rows; with multiplier 1 and whole vectors of channels it reads its
// inputs in place (edge pixels with their in-row taps only), otherwise it stages the rows it
// reads, zero-padded, in a ring (channel k of an output reads input channel k / m):
// * Forward: output row p = sum over taps (r, s) of w[:, r, s] * staged input row
//   p*sh - ph + r*dh from column q*sw + s*dw: a stride is only a pixel step, no de-interleaving.
// * Input gradient: a gather per input pixel, by column phase b = w % sw: input (h, w) takes the
//   taps whose output ((h + ph - r*dh)/sh, (w + pw - s*dw)/sw) divides exactly, over the m staged
//   dy rows of its channel; no scatter, every stride, multiplier and padding.
// * Weight gradient: per output row, lane sums dy * staged input for up to 12 taps in registers,
//   moved into double sums every 2^14 products; a shape-fixed number of row ranges, added in order.
// Tiles of up to 8 pixels x one vector of channels, whose size and instructions follow the ISA
// (AVX-512, AVX2, baseline), for float32 and float64 alike.
#pragma once

#include <cstdint>

#include "common/checks.h"
#include "cpu/conv2d_nhwc.h"  // WeightStrides

namespace fastconv {
namespace cpu {

// True when conv2d of shape s is depthwise (groups == C > 1) and runs through this family; then
// every pass (forward, input gradient, weight gradient), dtype and ISA takes it.
bool depthwise_supports(const Conv2dShape& s);

// y (N, K, P, Q) = conv(x (N, C, H, W), w (K, 1, R, S)) (+ bias[K]), then ReLU when `relu`.
template <typename T>
void depthwise_forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s, bool relu);

// dx (N, C, H, W) from dy (N, K, P, Q); with a gate (dy's shape), dy is read as
// relu_backward(dy, gate): 0 where gate <= 0 (a NaN gate passes dy).
template <typename T>
void depthwise_backward_input(const T* dy, const T* w, T* dx, const Conv2dShape& s, const T* gate = nullptr);

// dw (K, 1, R, S) from dy and x, summed over images; gate as above.
template <typename T>
void depthwise_backward_weight(const T* dy, const T* x, T* dw, const Conv2dShape& s, const T* gate = nullptr);

// The channels_last passes: x, y, dy, dx dense NHWC; w (K, 1, R, S) read through its strides; dw
// written as (K, 1, R, S) dense (the same memory in both formats).
template <typename T>
void depthwise_forward_nhwc(const T* x, const T* w, WeightStrides ws, const T* bias, T* y, const Conv2dShape& s,
                            bool relu);
template <typename T>
void depthwise_backward_input_nhwc(const T* dy, const T* w, WeightStrides ws, T* dx, const Conv2dShape& s);
template <typename T>
void depthwise_backward_weight_nhwc(const T* dy, const T* x, T* dw, const Conv2dShape& s);

}  // namespace cpu
}  // namespace fastconv
