// ReLU forward (out of place and in place) and backward on the CPU: single passes over memory,
// in the input's memory format (see "Layouts" below).
// relu(x) = x < 0 ? 0 : x, so NaN propagates; grad = result <= 0 ? 0 : grad_output, as
// PyTorch's threshold_backward (a NaN result passes the gradient through).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>

#include "common/checks.h"
#include "cpu/avx512.h"
#include "cpu/dispatch.h"


namespace fastconv {
namespace cpu {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Portable loops (the compiler vectorises them for the baseline ISA).
template <typename T>
void relu_forward_range(const T* x, T* y, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
}

template <typename T>
void relu_backward_range(const T* __restrict__ dy, const T* __restrict__ out, T* __restrict__ dx, int64_t b,
                         int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const T g = dy[i];  // loaded unconditionally so that the select vectorises
    dx[i] = out[i] <= T(0) ? T(0) : g;
  }
}

#if defined(__x86_64__)

// AVX-512, 16 floats / 8 doubles a step, the tail with masks. max(0, x) returns x when x is NaN
// (it returns its second operand unless the first is greater), so it is exactly x < 0 ? 0 : x.
FC_TARGET_AVX512 void relu_forward_range_avx512(const float* x, float* y, int64_t b, int64_t e) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t i = b;
  for (; i + 16 <= e; i += 16) _mm512_storeu_ps(y + i, _mm512_max_ps(zero, _mm512_loadu_ps(x + i)));
  const __mmask16 m = __mmask16((1u << (e - i)) - 1);
  _mm512_mask_storeu_ps(y + i, m, _mm512_max_ps(zero, _mm512_maskz_loadu_ps(m, x + i)));
}

FC_TARGET_AVX512 void relu_forward_range_avx512(const double* x, double* y, int64_t b, int64_t e) {
  const __m512d zero = _mm512_setzero_pd();
  int64_t i = b;
  for (; i + 8 <= e; i += 8) _mm512_storeu_pd(y + i, _mm512_max_pd(zero, _mm512_loadu_pd(x + i)));
  const __mmask8 m = __mmask8((1u << (e - i)) - 1);
  _mm512_mask_storeu_pd(y + i, m, _mm512_max_pd(zero, _mm512_maskz_loadu_pd(m, x + i)));
}

// dx = dy where out > 0 or out is NaN (not "<= 0", ordered compare), else 0.
FC_TARGET_AVX512 void relu_backward_range_avx512(const float* dy, const float* out, float* dx, int64_t b,
                                                 int64_t e) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t i = b;
  for (; i + 16 <= e; i += 16) {
    const __mmask16 pass = _mm512_cmp_ps_mask(_mm512_loadu_ps(out + i), zero, _CMP_NLE_UQ);
    _mm512_storeu_ps(dx + i, _mm512_maskz_loadu_ps(pass, dy + i));
  }
  const __mmask16 m = __mmask16((1u << (e - i)) - 1);
  const __mmask16 pass = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, out + i), zero, _CMP_NLE_UQ);
  _mm512_mask_storeu_ps(dx + i, m, _mm512_maskz_loadu_ps(pass, dy + i));
}

FC_TARGET_AVX512 void relu_backward_range_avx512(const double* dy, const double* out, double* dx, int64_t b,
                                                 int64_t e) {
  const __m512d zero = _mm512_setzero_pd();
  int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    const __mmask8 pass = _mm512_cmp_pd_mask(_mm512_loadu_pd(out + i), zero, _CMP_NLE_UQ);
    _mm512_storeu_pd(dx + i, _mm512_maskz_loadu_pd(pass, dy + i));
  }
  const __mmask8 m = __mmask8((1u << (e - i)) - 1);
  const __mmask8 pass = _mm512_mask_cmp_pd_mask(m, _mm512_maskz_loadu_pd(m, out + i), zero, _CMP_NLE_UQ);
  _mm512_mask_storeu_pd(dx + i, m, _mm512_maskz_loadu_pd(pass, dy + i));
}
#endif  // __x86_64__

template <typename T>
void relu_forward(const T* x, T* y, int64_t n) {  // y may be x (relu_)
  const bool avx512 = current_isa() >= Isa::kAvx512;
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (!std::is_same_v<T, c10::BFloat16>)  // float32 and float64
      if (avx512) return relu_forward_range_avx512(x, y, b, e);
#endif
    relu_forward_range(x, y, b, e);
  });
}

template <typename T>
void relu_backward(const T* dy, const T* out, T* dx, int64_t n) {
  const bool avx512 = current_isa() >= Isa::kAvx512;
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if constexpr (!std::is_same_v<T, c10::BFloat16>)
      if (avx512) return relu_backward_range_avx512(dy, out, dx, b, e);
#endif
    relu_backward_range(dy, out, dx, b, e);
  });
}

// Layouts: the elementwise loops run over the dense storage of tensors that share one layout
// (same sizes and strides, non-overlapping and dense: contiguous, channels_last or any other
// permutation); the result has the input's layout, as PyTorch's relu. A tensor that is not dense
// is first copied into the layout PyTorch suggests for it (suggest_memory_format).

// `t` when it is non-overlapping and dense, else a dense copy in its suggested memory format.
at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous(t.suggest_memory_format());
}

// `t` laid out exactly as `like` (dense): itself when the strides already agree, else a copy.
at::Tensor same_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_like(like);  // preserve_format: like's strides, since like is dense
  out.copy_(t);
  return out;
}

at::Tensor relu_cpu(const at::Tensor& input) {
  check_relu("relu", input, kCpuTypes, false);
  at::Tensor x = dense(input);
  at::Tensor y = at::empty_like(x);  // x's strides
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastconv_relu_cpu", [&] {
    relu_forward<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.numel());
  });
  return y;
}

void relu_inplace_cpu(at::Tensor& input) {
  check_relu("relu_", input, kCpuTypes, true);
  at::Tensor x = dense(input);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastconv_relu_inplace_cpu", [&] {
    relu_forward<scalar_t>(x.const_data_ptr<scalar_t>(), x.mutable_data_ptr<scalar_t>(), x.numel());
  });
  if (!x.is_same(input)) input.copy_(x);
}

// dx has result's layout (as PyTorch's threshold_backward); dy is brought to that layout.
at::Tensor relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& result) {
  check_relu_backward(grad_output, result, kCpuTypes);
  at::Tensor out = dense(result);
  at::Tensor dy = same_layout(grad_output, out);
  at::Tensor dx = at::empty_like(out);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dy.scalar_type(), "fastconv_relu_backward_cpu", [&] {
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
