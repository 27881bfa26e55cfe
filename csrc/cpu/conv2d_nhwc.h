// conv2d on channels_last (NHWC) tensors: GEMMs whose operands are read straight from NHWC memory
// (cpu/gemm.h packers), so a channels_last model never changes layout. With M = N*P*Q output
// pixels, per group g (Cg, Kg channels, depth CRS = R*S*Cg ordered (r, s, c), c fastest):
//   forward:      Y[M x Kg]     = col[M x CRS] * Wt[CRS x Kg]   (+ bias, ReLU)  Y = y (N,P,Q,K)
//   input grad:   stride 1 (pad <= dil*(k-1)): the forward of the dual convolution (dy as input,
//                 the weight transposed and flipped); otherwise per tile of pixels
//                 colgrad[mt x CRS] = dY[mt x Kg] * W[Kg x CRS], then col2im adds it into dx
//                 (tasks: image ranges x groups x input-channel blocks, disjoint parts of dx)
//   weight grad:  dW[Kg x CRS]  = dY^T[Kg x M] * col[M x CRS]   (dW in (K, R, S, Cg) order, i.e. a
//                 channels_last weight), the pixel sum split into a number of partial sums fixed by
//                 the shape and added in order: deterministic whatever the thread count
//   bias grad:    db[K] = column sums of dY[M x K] (float64 accumulation, fixed order)
// col[m][(r, s, c)] = x[n][h][w][g*Cg + c] with h = p*sh - ph + r*dh, w = q*sw - pw + s*dw (0 in the
// padding) is never stored. x, y, dy, dx are dense NHWC (strides H*W*C, 1, W*C, C); the weight is
// read through its strides (any layout). y, dx and dw are acc_t<T> (cpu/gemm.h): float32 for
// bfloat16 operands, which the caller rounds once.
// float32 on AVX-512 takes the direct path of conv2d_nhwc.cpp for the forward, the stride-1 input
// gradient, the strided one's colgrad and the weight gradient instead: the same products, no
// im2col panels (tiles broadcast the input straight from NHWC memory through a per-chunk table of
// tap rows).
#pragma once

#include <cstdint>

#include "common/checks.h"
#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {

// The strides of a 4-D weight (K, Cg, R, S), in elements.
struct WeightStrides {
  int64_t k, c, r, s;
};

template <typename T>
void conv2d_forward_nhwc(const T* x, const T* w, WeightStrides ws, const T* bias, acc_t<T>* y,
                         const Conv2dShape& s, bool relu);
template <typename T>
void conv2d_backward_input_nhwc(const T* dy, const T* w, WeightStrides ws, acc_t<T>* dx, const Conv2dShape& s);
template <typename T>
void conv2d_backward_weight_nhwc(const T* dy, const T* x, acc_t<T>* dw, const Conv2dShape& s);
template <typename T>
void conv2d_backward_bias_nhwc(const T* dy, T* db, const Conv2dShape& s);

}  // namespace cpu
}  // namespace fastconv
