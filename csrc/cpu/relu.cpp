// ReLU forward (out of place and in place) and backward on the CPU: single passes over memory,
// in the input's memory format (see "Layouts" below): full-width vector loops (AVX-512 or AVX2,
// chosen at run time; a portable loop otherwise and for the ends), outputs larger than the
// last-level cache written with streaming stores.
// relu(x) = x < 0 ? 0 : x, so NaN propagates; grad = result <= 0 ? 0 : grad_output, as
// PyTorch's threshold_backward (a NaN result passes the gradient through).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/checks.h"
#include "cpu/dispatch.h"
#include "cpu/simd.h"


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

// Whole vectors of VB bytes over [b, e) (the caller does the ends), written once for every ISA
// (cpu/simd.h) with the portable loops' selects, so NaN and -0.0 pass as there. stream:
// non-temporal stores, which need y + b aligned to the vector (the caller aligns b), then a store
// fence so that the results are visible to other threads in order once the range is done.
template <int VB, typename T>
FC_INLINE void relu_forward_vec(const T* x, T* y, int64_t b, int64_t e, bool streamed) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::kLanes;
  const V zero = V{};
  for (int64_t i = b; i < e; i += L) {
    const V v = load<V>(x + i);
    const V r = v < zero ? zero : v;
    streamed ? stream(y + i, r) : store(y + i, r, L);
  }
  if (streamed) stream_fence();
}
template <int VB, typename T>
FC_INLINE void relu_backward_vec(const T* dy, const T* out, T* dx, int64_t b, int64_t e, bool streamed) {
  using V = typename Vec<T, VB>::type;
  constexpr int L = Vec<T, VB>::kLanes;
  const V zero = V{};
  for (int64_t i = b; i < e; i += L) {
    const V r = load<V>(out + i) <= zero ? zero : load<V>(dy + i);
    streamed ? stream(dx + i, r) : store(dx + i, r, L);
  }
  if (streamed) stream_fence();
}
// The ISA-specific instantiations (the target attribute must be on the function the loop is in).
template <typename T>
FC_TARGET_AVX512 void relu_forward_avx512(const T* x, T* y, int64_t b, int64_t e, bool s) {
  relu_forward_vec<64>(x, y, b, e, s);
}
template <typename T>
FC_TARGET_AVX2 void relu_forward_avx2(const T* x, T* y, int64_t b, int64_t e, bool s) {
  relu_forward_vec<32>(x, y, b, e, s);
}
template <typename T>
FC_TARGET_AVX512 void relu_backward_avx512(const T* dy, const T* out, T* dx, int64_t b, int64_t e, bool s) {
  relu_backward_vec<64>(dy, out, dx, b, e, s);
}
template <typename T>
FC_TARGET_AVX2 void relu_backward_avx2(const T* dy, const T* out, T* dx, int64_t b, int64_t e, bool s) {
  relu_backward_vec<32>(dy, out, dx, b, e, s);
}
#endif  // __x86_64__

// The vector width of the current ISA's kernels in elements of T (0: the portable loops only), and
// the split of [b, e) for them: [m0, m1) whole vectors, m0 the first element whose address in
// `out` is vector-aligned (streamed stores must be), the ends [b, m0) and [m1, e) portable.
// bfloat16 has the portable loops only.
template <typename T>
int vector_split(const T* out, int64_t b, int64_t e, int64_t& m0, int64_t& m1) {
  m0 = m1 = b;
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) return 0;
  const Isa isa = current_isa();
  const int64_t bytes = isa >= Isa::kAvx512 ? 64 : isa == Isa::kAvx2 ? 32 : 0;
  const int64_t mis = int64_t(reinterpret_cast<uintptr_t>(out + b) % uintptr_t(bytes ? bytes : 1));
  if (bytes == 0 || mis % int64_t(sizeof(T))) return 0;  // no vectors, or out not even T-aligned
  const int64_t lanes = bytes / int64_t(sizeof(T));
  m0 = std::min(e, b + (bytes - mis) % bytes / int64_t(sizeof(T)));
  m1 = m0 + (e - m0) / lanes * lanes;
  return int(lanes);
#else
  (void)out, (void)e;
  return 0;
#endif
}

// Whether a pass writing `bytes` of output streams it (non-temporal stores): when they exceed the
// last-level cache, they would not stay there anyway.
bool streams(int64_t bytes) { return bytes > cache_sizes().l3; }

template <typename T>
void relu_forward(const T* x, T* y, int64_t n) {  // y may be x (relu_)
  const bool stream = streams(n * int64_t(sizeof(T)));
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    int64_t m0, m1;
    if (vector_split(y, b, e, m0, m1)) {
#if defined(__x86_64__)
      if constexpr (!std::is_same_v<T, c10::BFloat16>)  // (vector_split gives bfloat16 no vectors)
        (current_isa() >= Isa::kAvx512 ? relu_forward_avx512<T> : relu_forward_avx2<T>)(x, y, m0, m1, stream);
#endif
      relu_forward_range(x, y, b, m0);
      b = m1;
    }
    relu_forward_range(x, y, b, e);
  });
}

template <typename T>
void relu_backward(const T* dy, const T* out, T* dx, int64_t n) {
  const bool stream = streams(n * int64_t(sizeof(T)));
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    int64_t m0, m1;
    if (vector_split(dx, b, e, m0, m1)) {
#if defined(__x86_64__)
      if constexpr (!std::is_same_v<T, c10::BFloat16>)
        (current_isa() >= Isa::kAvx512 ? relu_backward_avx512<T> : relu_backward_avx2<T>)(dy, out, dx, m0, m1, stream);
#endif
      relu_backward_range(dy, out, dx, b, m0);
      b = m1;
    }
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
