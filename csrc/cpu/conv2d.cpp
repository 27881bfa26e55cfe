// conv2d forward and backward on the CPU, as GEMMs over implicit im2col matrices (cpu/im2col.h)
// driven by the blocked GEMM of cpu/gemm.h. Per image n and group g, with CRS = Cg*R*S, PQ = P*Q:
//   forward:      y[Kg x PQ]    = W[Kg x CRS] * col[CRS x PQ]                 (+ bias)
//   input grad:   colgrad[CRS x PQ] = W^T * dy[Kg x PQ], then col2im adds it into dx
//   weight grad:  dW^T[CRS x Kg] += col[CRS x PQ] * dy^T[PQ x Kg]   (summed over n)
// All reductions run in a fixed order independent of the thread count, so results are
// deterministic and reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "cpu/depthwise.h"
#include "cpu/direct_conv.h"
#include "cpu/gemm.h"
#include "cpu/im2col.h"
#include "cpu/winograd.h"

namespace fastconv {
namespace cpu {
namespace {

constexpr DTypes kCpuTypes = {at::kFloat, at::kDouble};
constexpr int64_t kColumnTile = kNC;  // output pixels per forward / input-grad task


// The weights of every group packed once as GEMM A operands, shared by all images and tiles:
// W_g (Kg x CRS) for the forward pass, or W_g^T (CRS x Kg) for the input gradient.
template <typename T>
std::vector<PackedA<T>> pack_weights(const T* w, const Conv2dShape& s, bool transposed) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S;
  const int64_t rows = transposed ? CRS : Kg, depth = transposed ? Kg : CRS;
  const int mr = micro_kernel<T>().mr;
  const int64_t size = PackedA<T>::size(rows, depth, mr);
  static thread_local Scratch<T> scratch;  // reused across calls
  T* buf = scratch.get(size * s.groups);
  std::vector<PackedA<T>> packed;
  for (int64_t g = 0; g < s.groups; ++g) {
    const T* wg = w + g * Kg * CRS;  // row-major Kg x CRS
    const StridedMatrix<T> src = transposed ? StridedMatrix<T>{wg, 1, CRS} : StridedMatrix<T>{wg, CRS, 1};
    packed.emplace_back(src, rows, depth, mr, buf + g * size);
  }
  return packed;
}

// The direct kernel (cpu/direct_conv.h) serves float32 stride-1 convolutions on AVX-512 machines.
bool use_direct(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && direct_conv_available();
}

// The convolution as direct_conv sees it (channels per group).
DirectConvShape direct_shape(const Conv2dShape& s) {
  return {s.N, s.groups, s.Cg(), s.Kg(), s.H, s.W, s.R, s.S, s.pad_h, s.pad_w, s.dil_h, s.dil_w};
}

// Forward through the direct kernel: w (K, Cg, R, S) packed in the calling thread's reused buffer.
void conv2d_forward_direct(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s,
                           bool relu) {
  const DirectConvShape d = direct_shape(s);
  static thread_local Scratch<float> scratch;
  float* wp = scratch.get(direct_weights_size(d));
  pack_direct_weights(w, d, wp);
  direct_conv(x, wp, bias, y, d, relu);
}

// y = conv2d(x) (+ bias), then relu(y) when `relu` (the fused epilogue of conv2d_relu).
template <typename T>
void conv2d_forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s, bool relu) {
  if (depthwise_applies(s)) return depthwise_forward(x, w, bias, y, s, relu);
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_applies(s)) return winograd_conv3x3(x, w, bias, y, s, relu);
    if (use_direct(s)) return conv2d_forward_direct(x, w, bias, y, s, relu);
  }
  const Im2colGeometry geo(s);
  const int64_t Cg = s.Cg(), Kg = s.Kg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t tiles = ceil_div(PQ, kColumnTile);
  const std::vector<PackedA<T>> wpacked = pack_weights(w, s, /*transposed=*/false);
  at::parallel_for(0, s.N * s.groups * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task % tiles, ng = task / tiles, g = ng % s.groups, n = ng / s.groups;
      const int64_t j0 = t * kColumnTile, nc = std::min(kColumnTile, PQ - j0);
      const T* xg = x + (n * s.C + g * Cg) * HW;
      T* yg = y + (n * s.K + g * Kg) * PQ + j0;
      gemm<T>(Kg, nc, CRS, wpacked[g].rows_from(0), Im2colAsB<T>{geo, xg, j0}, yg, PQ, 1, false);
      if (bias || relu)
        for (int64_t k = 0; k < Kg; ++k) {
          const T b = bias ? bias[g * Kg + k] : T(0);
          T* row = yg + k * PQ;
          for (int64_t j = 0; j < nc; ++j) {
            const T v = row[j] + b;
            row[j] = relu && v < T(0) ? T(0) : v;  // NaN stays NaN, as in relu
          }
        }
    }
  });
}

// The input gradient of a stride-1 convolution runs through the direct kernel as dx = conv(dy, w')
// with w' transposed and flipped, padding dil*(k-1) - pad, which must not be negative.
bool backward_input_direct_applies(const Conv2dShape& s) {
  return use_direct(s) && s.pad_h <= s.dil_h * (s.R - 1) && s.pad_w <= s.dil_w * (s.S - 1);
}

// dx through the direct kernel when backward_input_direct_applies (else false); with a gate, dy is
// read as relu_backward(dy, gate).
bool conv2d_backward_input_direct(const float* dy, const float* w, float* dx, const Conv2dShape& s,
                                  const float* gate = nullptr) {
  if (!backward_input_direct_applies(s)) return false;
  const int64_t ph = s.dil_h * (s.R - 1) - s.pad_h, pw = s.dil_w * (s.S - 1) - s.pad_w;
  const DirectConvShape d{s.N, s.groups, s.Kg(), s.Cg(), s.P, s.Q, s.R, s.S, ph, pw, s.dil_h, s.dil_w};
  static thread_local Scratch<float> scratch;  // the calling thread's, reused across calls
  float* wp = scratch.get(direct_weights_size(d));
  pack_direct_weights_flipped(w, d, wp);
  direct_conv(dy, wp, nullptr, dx, d, false, gate);
  return true;
}

// Input gradient. Tasks own disjoint channel blocks of dx (col2im of rows of channel c only
// touches input plane c), so no two tasks write the same element. A gate (dy read as
// relu_backward(dy, gate)) is only passed where a depthwise, Winograd or direct kernel runs
// (gated_backward_applies).
template <typename T>
void conv2d_backward_input(const T* dy, const T* w, T* dx, const Conv2dShape& s, const T* gate = nullptr) {
  if (depthwise_applies(s)) return depthwise_backward_input(dy, w, dx, s, gate);
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_backward_input(dy, w, dx, s, gate)) return;
    if (conv2d_backward_input_direct(dy, w, dx, s, gate)) return;
  }
  TORCH_INTERNAL_ASSERT(!gate, "fastconv: the GEMM input gradient cannot apply a ReLU gate");
  const Im2colGeometry geo(s);
  const int64_t Cg = s.Cg(), Kg = s.Kg(), RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  // Channels per task: a multiple of 24 (so that the block's first row, cb*RS*b, is a multiple of
  // every micro-kernel's MR: 8, 6, 4) with at most ~256 GEMM rows.
  const int64_t cb = std::min<int64_t>(Cg, std::max<int64_t>(24, 256 / RS / 24 * 24));
  const int64_t cblocks = ceil_div(Cg, cb);
  const std::vector<PackedA<T>> wpacked = pack_weights(w, s, /*transposed=*/true);
  at::parallel_for(0, s.N * s.groups * cblocks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> col_scratch;
    T* col = col_scratch.get(cb * RS * kColumnTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task % cblocks, ng = task / cblocks, g = ng % s.groups, n = ng / s.groups;
      const int64_t c0 = b * cb, cn = std::min(cb, Cg - c0), rows = cn * RS;
      T* dxg = dx + (n * s.C + g * Cg) * HW;
      std::fill(dxg + c0 * HW, dxg + (c0 + cn) * HW, T(0));
      const T* dyg = dy + (n * s.K + g * Kg) * PQ;
      for (int64_t j0 = 0; j0 < PQ; j0 += kColumnTile) {
        const int64_t nc = std::min(kColumnTile, PQ - j0);
        gemm<T>(rows, nc, Kg, wpacked[g].rows_from(c0 * RS), StridedMatrix<T>{dyg + j0, 1, PQ}, col, nc, 1,
                false);
        for (int64_t i = 0; i < rows; ++i) geo.add_row(dxg, c0 * RS + i, j0, nc, col + i * nc, 1);
      }
    }
  });
}

// Weight gradient. Tasks own disjoint row blocks of dW^T; the sum over images is split into a
// number of partial sums fixed by the shape (not by the thread count), added in order at the end.
template <typename T>
void conv2d_backward_weight(const T* dy, const T* x, T* dw, const Conv2dShape& s, const T* gate = nullptr) {
  if (depthwise_applies(s)) return depthwise_backward_weight(dy, x, dw, s, gate);
  if constexpr (std::is_same_v<T, float>) {
    if (use_direct(s)) return direct_conv_weight_grad(dy, x, dw, direct_shape(s), gate);
  }
  TORCH_INTERNAL_ASSERT(!gate, "fastconv: the GEMM weight gradient cannot apply a ReLU gate");
  const Im2colGeometry geo(s);
  const int64_t Cg = s.Cg(), Kg = s.Kg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t rb = std::max<int64_t>(32, ceil_div(ceil_div(CRS, 2), 8) * 8);  // rows per task
  const int64_t rblocks = ceil_div(CRS, rb);
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(s.N, 8 / (s.groups * rblocks)));
  const int64_t wsize = s.K * CRS;
  // Partial sum 0 is dw itself; others live in a scratch tensor.
  std::vector<T> partial(size_t((splits - 1) * wsize));
  at::parallel_for(0, splits * s.groups * rblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task % rblocks, rest = task / rblocks, g = rest % s.groups, sp = rest / s.groups;
      const int64_t r0 = b * rb, rows = std::min(rb, CRS - r0);
      const int64_t n0 = sp * s.N / splits, n1 = (sp + 1) * s.N / splits;
      T* out = (sp == 0 ? dw : partial.data() + (sp - 1) * wsize) + g * Kg * CRS + r0;
      if (n0 == n1) {
        for (int64_t k = 0; k < Kg; ++k) std::fill(out + k * CRS, out + k * CRS + rows, T(0));
        continue;
      }
      for (int64_t n = n0; n < n1; ++n) {
        const T* xg = x + (n * s.C + g * Cg) * HW;
        const T* dyg = dy + (n * s.K + g * Kg) * PQ;
        // C(i = crs - r0, j = k) at dw[k*CRS + crs].
        gemm<T>(rows, Kg, PQ, Im2colAsA<T>{geo, xg, r0, r0 + rows}, StridedMatrix<T>{dyg, PQ, 1}, out, 1, CRS,
                n > n0);
      }
    }
  });
  for (int64_t sp = 1; sp < splits; ++sp) {
    const T* p = partial.data() + (sp - 1) * wsize;
    at::parallel_for(0, wsize, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dw[i] += p[i];
    });
  }
}

// db[k] = sum of dy over images and pixels (of relu_backward(dy, gate) with a gate).
template <typename T>
void conv2d_backward_bias(const T* dy, T* db, const Conv2dShape& s, const T* gate = nullptr) {
  using Acc = double;
  const int64_t PQ = s.P * s.Q;
  at::parallel_for(0, s.K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      Acc sum = 0;
      for (int64_t n = 0; n < s.N; ++n) {
        const int64_t at = (n * s.K + k) * PQ;
        const T* row = dy + at;
        if (gate) {
          for (int64_t j = 0; j < PQ; ++j) sum += gate[at + j] <= T(0) ? T(0) : row[j];
        } else {
          for (int64_t j = 0; j < PQ; ++j) sum += row[j];
        }
      }
      db[k] = T(sum);
    }
  });
}

at::Tensor conv2d_cpu_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           bool relu) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, kCpuTypes);
  at::Tensor x = input.contiguous(), w = weight.contiguous();
  at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_conv2d_cpu", [&] {
    conv2d_forward<scalar_t>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                             b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(), s,
                             relu);
  });
  return y;
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_cpu_impl(input, weight, bias, stride, padding, dilation, groups, false);
}

at::Tensor conv2d_relu_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_cpu_impl(input, weight, bias, stride, padding, dilation, groups, true);
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The requested gradients from dy, or with a gate from relu_backward(dy, gate) read on the fly;
// a gate needs float32 and a shape where every requested pass runs a direct kernel
// (gated_backward_applies).
Grads conv2d_backward_impl(const at::Tensor& grad_output, const at::Tensor& gate, const at::Tensor& input,
                           const at::Tensor& weight, const Conv2dShape& s, std::array<bool, 3> output_mask) {
  at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  // An unrequested gradient is a fresh empty tensor (outputs must not alias each other).
  at::Tensor dx = at::empty(output_mask[0] ? input.sizes() : at::IntArrayRef{0}, input.options());
  at::Tensor dw = at::empty(output_mask[1] ? weight.sizes() : at::IntArrayRef{0}, weight.options());
  at::Tensor db = at::empty({output_mask[2] ? s.K : 0}, weight.options());
  const at::Tensor r = gate.defined() ? gate.contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_conv2d_backward_cpu", [&] {
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* gp = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
    if (output_mask[0] && dx.numel() > 0)
      conv2d_backward_input<scalar_t>(dyp, w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), s, gp);
    if (output_mask[1])
      conv2d_backward_weight<scalar_t>(dyp, x.const_data_ptr<scalar_t>(), dw.mutable_data_ptr<scalar_t>(), s, gp);
    if (output_mask[2]) conv2d_backward_bias<scalar_t>(dyp, db.mutable_data_ptr<scalar_t>(), s, gp);
  });
  return {dx, dw, db};
}

Grads conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          std::array<bool, 3> output_mask) {
  const Conv2dShape s =
      check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, kCpuTypes);
  return conv2d_backward_impl(grad_output, at::Tensor(), input, weight, s, output_mask);
}

// Whether the depthwise or direct kernels can read relu_backward(dy, result) on the fly for this call.
bool gated_backward_applies(const at::Tensor& grad_output, const Conv2dShape& s, std::array<bool, 3> output_mask) {
  if (depthwise_applies(s)) return true;  // every dtype and ISA
  return grad_output.scalar_type() == at::kFloat && use_direct(s) &&
         (!output_mask[0] || backward_input_direct_applies(s));
}

// conv2d_relu's backward: the gradient through the ReLU is applied while the direct kernels read dy
// (no intermediate tensor, no extra pass); elsewhere it is computed first by fastconv::relu_backward.
Grads conv2d_relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& result, const at::Tensor& input,
                               const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const Conv2dShape s =
      check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, kCpuTypes);
  check_relu_backward(grad_output, result, kCpuTypes);
  if (gated_backward_applies(grad_output, s, output_mask))
    return conv2d_backward_impl(grad_output, result, input, weight, s, output_mask);
  static const auto relu_backward = c10::Dispatcher::singleton()
                                        .findSchemaOrThrow("fastconv::relu_backward", "")
                                        .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return conv2d_backward_impl(relu_backward.call(grad_output, result), at::Tensor(), input, weight, s, output_mask);
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &fastconv::cpu::conv2d_cpu);
  m.impl("conv2d_relu", &fastconv::cpu::conv2d_relu_cpu);
  m.impl("conv2d_backward", &fastconv::cpu::conv2d_backward_cpu);
  m.impl("conv2d_relu_backward", &fastconv::cpu::conv2d_relu_backward_cpu);
}
