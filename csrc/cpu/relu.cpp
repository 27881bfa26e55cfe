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

// The loops below are force-inlined into their ISA-specific callers; their stand-alone copies
// (never called) would pass vectors by value without the ISA enabled.
#pragma GCC diagnostic ignored "-Wpsabi"

// One vector register of T per ISA: relu(v) = max(0, v) (maxps returns its second operand when
// either is NaN, so NaN and -0.0 pass as in x < 0 ? 0 : x); gate(out, g) = g where out > 0 or out
// is NaN (not "<= 0", an unordered compare), else 0.
template <typename T> struct Avx512;
template <> struct Avx512<float> {
  static constexpr int kLanes = 16;
  FC_TARGET_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  FC_TARGET_AVX512 static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  FC_TARGET_AVX512 static void stream(float* p, __m512 v) { _mm512_stream_ps(p, v); }
  FC_TARGET_AVX512 static __m512 relu(__m512 v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }
  FC_TARGET_AVX512 static __m512 gate(__m512 out, __m512 g) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(out, _mm512_setzero_ps(), _CMP_NLE_UQ), g);
  }
};
template <> struct Avx512<double> {
  static constexpr int kLanes = 8;
  FC_TARGET_AVX512 static __m512d load(const double* p) { return _mm512_loadu_pd(p); }
  FC_TARGET_AVX512 static void store(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
  FC_TARGET_AVX512 static void stream(double* p, __m512d v) { _mm512_stream_pd(p, v); }
  FC_TARGET_AVX512 static __m512d relu(__m512d v) { return _mm512_max_pd(_mm512_setzero_pd(), v); }
  FC_TARGET_AVX512 static __m512d gate(__m512d out, __m512d g) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(out, _mm512_setzero_pd(), _CMP_NLE_UQ), g);
  }
};
template <typename T> struct Avx2;
template <> struct Avx2<float> {
  static constexpr int kLanes = 8;
  FC_TARGET_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  FC_TARGET_AVX2 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  FC_TARGET_AVX2 static void stream(float* p, __m256 v) { _mm256_stream_ps(p, v); }
  FC_TARGET_AVX2 static __m256 relu(__m256 v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }
  FC_TARGET_AVX2 static __m256 gate(__m256 out, __m256 g) {
    return _mm256_and_ps(_mm256_cmp_ps(out, _mm256_setzero_ps(), _CMP_NLE_UQ), g);
  }
};
template <> struct Avx2<double> {
  static constexpr int kLanes = 4;
  FC_TARGET_AVX2 static __m256d load(const double* p) { return _mm256_loadu_pd(p); }
  FC_TARGET_AVX2 static void store(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
  FC_TARGET_AVX2 static void stream(double* p, __m256d v) { _mm256_stream_pd(p, v); }
  FC_TARGET_AVX2 static __m256d relu(__m256d v) { return _mm256_max_pd(_mm256_setzero_pd(), v); }
  FC_TARGET_AVX2 static __m256d gate(__m256d out, __m256d g) {
    return _mm256_and_pd(_mm256_cmp_pd(out, _mm256_setzero_pd(), _CMP_NLE_UQ), g);
  }
};

// [b, e) in whole vectors of V (the caller does the ends). stream: non-temporal stores, which
// need y + b aligned to the vector (the caller aligns b), then a store fence so that the results
// are visible to other threads in order once the range is done.
template <class V, typename T>
__attribute__((always_inline)) inline void relu_forward_vec(const T* x, T* y, int64_t b, int64_t e, bool stream) {
  if (stream) {
    for (int64_t i = b; i < e; i += V::kLanes) V::stream(y + i, V::relu(V::load(x + i)));
    _mm_sfence();
  } else {
    for (int64_t i = b; i < e; i += V::kLanes) V::store(y + i, V::relu(V::load(x + i)));
  }
}
template <class V, typename T>
__attribute__((always_inline)) inline void relu_backward_vec(const T* dy, const T* out, T* dx, int64_t b, int64_t e, bool stream) {
  if (stream) {
    for (int64_t i = b; i < e; i += V::kLanes) V::stream(dx + i, V::gate(V::load(out + i), V::load(dy + i)));
    _mm_sfence();
  } else {
    for (int64_t i = b; i < e; i += V::kLanes) V::store(dx + i, V::gate(V::load(out + i), V::load(dy + i)));
  }
}
// The ISA-specific instantiations (the target attribute must be on the function the loop is in).
template <typename T>
FC_TARGET_AVX512 void relu_forward_avx512(const T* x, T* y, int64_t b, int64_t e, bool s) {
  relu_forward_vec<Avx512<T>>(x, y, b, e, s);
}
template <typename T>
FC_TARGET_AVX2 void relu_forward_avx2(const T* x, T* y, int64_t b, int64_t e, bool s) {
  relu_forward_vec<Avx2<T>>(x, y, b, e, s);
}
template <typename T>
FC_TARGET_AVX512 void relu_backward_avx512(const T* dy, const T* out, T* dx, int64_t b, int64_t e, bool s) {
  relu_backward_vec<Avx512<T>>(dy, out, dx, b, e, s);
}
template <typename T>
FC_TARGET_AVX2 void relu_backward_avx2(const T* dy, const T* out, T* dx, int64_t b, int64_t e, bool s) {
  relu_backward_vec<Avx2<T>>(dy, out, dx, b, e, s);
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
