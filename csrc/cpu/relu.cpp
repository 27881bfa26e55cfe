// ReLU forward (out of place and in place) and backward on the CPU: single passes over memory.
// relu(x) = x < 0 ? 0 : x, so NaN propagates; grad = result <= 0 ? 0 : grad_output, as
// PyTorch's threshold_backward (a NaN result passes the gradient through).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"

namespace fastconv {
namespace cpu {
namespace {

constexpr DTypes kCpuTypes = {at::kFloat, at::kDouble};
constexpr int64_t kGrain = 1 << 15;

template <typename T>
void relu_forward(const T* x, T* y, int64_t n) {  // y may be x (relu_)
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
  });
}

template <typename T>
void relu_backward(const T* __restrict__ dy, const T* __restrict__ out, T* __restrict__ dx, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T g = dy[i];  // loaded unconditionally so that the select vectorises
      dx[i] = out[i] <= T(0) ? T(0) : g;
    }
  });
}

at::Tensor relu_cpu(const at::Tensor& input) {
  check_relu("relu", input, kCpuTypes, false);
  at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_relu_cpu", [&] {
    relu_forward<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.numel());
  });
  return y;
}

void relu_inplace_cpu(at::Tensor& input) {
  check_relu("relu_", input, kCpuTypes, true);
  at::Tensor x = input.is_contiguous() ? input : input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastconv_relu_inplace_cpu", [&] {
    relu_forward<scalar_t>(x.const_data_ptr<scalar_t>(), x.mutable_data_ptr<scalar_t>(), x.numel());
  });
  if (!x.is_same(input)) input.copy_(x);
}

at::Tensor relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& result) {
  check_relu_backward(grad_output, result, kCpuTypes);
  at::Tensor dy = grad_output.contiguous(), out = result.contiguous();
  at::Tensor dx = at::empty(dy.sizes(), dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastconv_relu_backward_cpu", [&] {
    relu_backward<scalar_t>(dy.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                            dx.mutable_data_ptr<scalar_t>(), dy.numel());
  });
  return dx;
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("relu", &fastconv::cpu::relu_cpu);
  m.impl("relu_", &fastconv::cpu::relu_inplace_cpu);
  m.impl("relu_backward", &fastconv::cpu::relu_backward_cpu);
}
