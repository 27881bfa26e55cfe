// The small-M path (float32, AVX-512): convolutions whose GEMM has few columns, M = N*P*Q (batch x
// output pixels), next to a large weight, e.g. deep layers at 7x7 or 3x3 pixels, strided 1x1 and
// 3x3 downsampling layers at small spatial size. Any stride, padding, dilation and groups.
//
// Per group, with CRS = Cg*R*S and the weight W (Kg x CRS, row-major, read in place, never packed):
//   colT[m][crs]  the im2col matrix transposed, one row of CRSp = round_up(CRS, 16) floats per
//                 output pixel m = n*P*Q + p*Q + q (zeros in the padding and past CRS). M*CRSp
//                 floats, at most the size of the weight when M <= Kg (what the chooser keeps).
//   forward:      y[k][m] = dot(W[k][:], colT[m][:])       (+ bias, ReLU)
//                 6 weight rows x 4 pixel rows of dot products per tile, vectorised along crs (the
//                 contiguous dimension of both), reduced across lanes once per depth chunk.
//   weight grad:  dW[k][crs] = sum_m dy[k][m] * colT[m][crs]   (dy gathered as dyK, Kg x M)
//   input grad:   colgT[m][crs] = sum_k dy[k][m] * W[k][crs]   (dy gathered as dyT, M x Kg), then
//                 col2im adds colgT into dx.
//                 Both: 6 broadcast rows x 64 columns (4 vectors, masked at the edge) per tile,
//                 reading W or colT rows in place with their row stride.
// Every output element is summed by one tile over depth chunks whose sizes depend only on the
// shape and the cache sizes, so results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// True when the small-M kernels can run s: the AVX-512 kernels selected (cpu::current_isa()) and
// nothing empty. Whether they should is dispatch's call (small_m_faster).
bool small_m_supports(const Conv2dShape& s);

// The speed heuristic: few output pixels for the weight (M = N*P*Q at most Kg, and small enough
// that colT stays a fraction of the last-level cache), a deep enough reduction (CRS >= 128) and
// enough output channels (Kg >= 32) for the tiles to be full.
bool small_m_faster(const Conv2dShape& s);

// y (N, K, P, Q) = conv(x, w) (+ bias[K]), then ReLU when `relu`.
void small_m_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s, bool relu);

// dx (N, C, H, W) from dy (N, K, P, Q); with a gate (dy's shape), dy is read as
// relu_backward(dy, gate).
void small_m_backward_input(const float* dy, const float* w, float* dx, const Conv2dShape& s,
                            const float* gate = nullptr);

// dw (K, Cg, R, S) from dy and x; with a gate, dy is read as relu_backward(dy, gate).
void small_m_backward_weight(const float* dy, const float* x, float* dw, const Conv2dShape& s,
                             const float* gate = nullptr);

}  // namespace cpu
}  // namespace fastconv
