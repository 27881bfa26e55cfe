// max_pool2d forward (with indices) and backward on the CPU: one pass over each (n, c) plane,
// planes in parallel. PyTorch's conventions: a window's maximum is updated when
// `value > max || isnan(value)`, starting from -inf with the index of the window's first element
// inside the input; indices are offsets h*W + w into the input plane.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "common/checks.h"

namespace fastconv {
namespace cpu {
namespace {

constexpr DTypes kCpuTypes = {at::kFloat, at::kDouble};

template <typename T>
void max_pool2d_forward(const T* x, T* y, int64_t* idx, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* xp = x + plane * HW;
      T* yp = y + plane * PQ;
      int64_t* ip = idx + plane * PQ;
      for (int64_t p = 0; p < s.P; ++p) {
        int64_t h0 = p * s.sh - s.ph;
        const int64_t h1 = std::min(h0 + (s.kh - 1) * s.dh + 1, s.H);
        while (h0 < 0) h0 += s.dh;
        for (int64_t q = 0; q < s.Q; ++q) {
          int64_t w0 = q * s.sw - s.pw;
          const int64_t w1 = std::min(w0 + (s.kw - 1) * s.dw + 1, s.W);
          while (w0 < 0) w0 += s.dw;
          T best = -std::numeric_limits<T>::infinity();
          int64_t best_i = h0 * s.W + w0;
          for (int64_t h = h0; h < h1; h += s.dh)
            for (int64_t w = w0; w < w1; w += s.dw) {
              const int64_t i = h * s.W + w;
              const T v = xp[i];
              if (v > best || std::isnan(v)) {
                best = v;
                best_i = i;
              }
            }
          yp[p * s.Q + q] = best;
          ip[p * s.Q + q] = best_i;
        }
      }
    }
  });
}

template <typename T>
void max_pool2d_backward(const T* dy, const int64_t* idx, T* dx, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q;
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      T* dxp = dx + plane * HW;
      std::fill(dxp, dxp + HW, T(0));
      const T* dyp = dy + plane * PQ;
      const int64_t* ip = idx + plane * PQ;
      for (int64_t j = 0; j < PQ; ++j) {
        dxp[ip[j]] += dyp[j];  // indices were range-checked by check_max_pool2d_backward
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const Pool2dShape s = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, kCpuTypes);
  at::Tensor x = input.contiguous();
  at::Tensor y = at::empty({s.N, s.C, s.P, s.Q}, input.options());
  at::Tensor idx = at::empty({s.N, s.C, s.P, s.Q}, input.options().dtype(at::kLong));
  if (y.numel() == 0) return {y, idx};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_max_pool2d_cpu", [&] {
    max_pool2d_forward<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                 idx.mutable_data_ptr<int64_t>(), s);
  });
  return {y, idx};
}

// Scatters each output gradient to the input element its index names; per plane in order, so the
// sums of overlapping windows are deterministic.
at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   bool ceil_mode) {
  const auto size = C10_AS_INTARRAYREF_SLOW(input_size);
  const Pool2dShape s = check_max_pool2d_backward(grad_output, indices, size, kernel_size, stride, padding,
                                                  dilation, ceil_mode, kCpuTypes);
  at::Tensor dy = grad_output.contiguous(), idx = indices.contiguous();
  at::Tensor dx = at::empty({s.N, s.C, s.H, s.W}, grad_output.options());
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_max_pool2d_backward_cpu", [&] {
    max_pool2d_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                                  dx.mutable_data_ptr<scalar_t>(), s);
  });
  return dx;
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d", &fastconv::cpu::max_pool2d_cpu);
  m.impl("max_pool2d_backward", &fastconv::cpu::max_pool2d_backward_cpu);
}
