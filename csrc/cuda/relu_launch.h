// Host side of the CUDA ReLU (forward, in place, backward).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <initializer_list>

#include "cuda/launch_common.h"
#include "cuda/relu.cuh"

namespace fastconv {
namespace cuda {

// n elements at ptrs: the scalar head up to the first 16-byte boundary of ptrs[0], then 16-byte
// vectors when every pointer reaches a boundary there too (a misaligned view shifts them all
// alike), else everything scalar.
template <typename T>
VecSpan vec_span(int64_t n, std::initializer_list<const T*> ptrs) {
  constexpr int64_t V = vec16<T>();
  const int64_t head = std::min<int64_t>(n, (16 - reinterpret_cast<uintptr_t>(*ptrs.begin()) % 16) % 16 / sizeof(T));
  bool vec = true;
  for (const T* p : ptrs) vec = vec && aligned16(p + head);
  return vec ? VecSpan{n, head, (n - head) / V} : VecSpan{n, 0, 0};
}
// Blocks for the larger of the vector and the scalar parts.
template <typename T>
dim3 vec_span_grid(const VecSpan& sp, int threads) {
  return stride_grid(std::max<int64_t>(sp.packs, sp.n - sp.packs * vec16<T>()), threads);
}

template <typename T>
void relu_run(const T* in, T* out, int64_t n) {
  const VecSpan sp = vec_span<T>(n, {out, in});
  auto* kernel = &relu_fwd_kernel<T>;
  FC_LAUNCH(kernel, vec_span_grid<T>(sp, relu_fwd_threads), dim3(relu_fwd_threads), 0, FC_CURRENT_STREAM())(in, out, sp);
  FC_CHECK_LAUNCH();
}

inline at::Tensor relu(const at::Tensor& input) {
  check_relu("relu", input, kernel_dtypes(), false);
  DeviceGuard guard(input);
  // Elementwise over the dense storage: the output keeps the input's layout with no conversion.
  const at::Tensor x = input.is_non_overlapping_and_dense() ? input : input.contiguous(input.suggest_memory_format());
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    relu_run<T>(x.const_data_ptr<T>(), out.mutable_data_ptr<T>(), x.numel());
  });
  return out;
}

inline void relu_(at::Tensor& input) {
  check_relu("relu_", input, kernel_dtypes(), true);
  if (input.numel() == 0) return;
  if (!input.is_contiguous()) {  // compute contiguously, then write back through the view
    input.copy_(relu(input));
    return;
  }
  DeviceGuard guard(input);
  dispatch(input.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    relu_run<T>(input.const_data_ptr<T>(), input.mutable_data_ptr<T>(), input.numel());
  });
}

inline at::Tensor relu_backward(const at::Tensor& grad_output, const at::Tensor& result) {
  check_relu_backward(grad_output, result, kernel_dtypes());
  DeviceGuard guard(grad_output);
  at::Tensor gx = at::empty(grad_output.sizes(), grad_output.options());
  const int64_t n = gx.numel();
  if (n == 0) return laid_out_like(gx, result);
  const at::Tensor gy = grad_output.contiguous(), y = result.contiguous();
  dispatch(gy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = gy.const_data_ptr<T>();
    const T* r = y.const_data_ptr<T>();
    T* o = gx.mutable_data_ptr<T>();
    const VecSpan sp = vec_span<T>(n, {o, g, r});
    auto* kernel = &relu_bwd_kernel<T>;
    FC_LAUNCH(kernel, vec_span_grid<T>(sp, relu_bwd_threads), dim3(relu_bwd_threads), 0, FC_CURRENT_STREAM())(g, r, o, sp);
    FC_CHECK_LAUNCH();
  });
  return laid_out_like(gx, result);  // result's layout, as the CPU and PyTorch
}

}  // namespace cuda
}  // namespace fastconv
