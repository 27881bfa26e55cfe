// The one header every kernel (.cuh) includes: CUDA under nvcc, the CPU emulator of the CUDA
// execution model under -DFASTCONV_SIMT (csrc/simt/simt.h provides the same names and macros:
// FC_DYNAMIC_SHARED, FC_LAUNCH, FC_CHECK_LAUNCH, FC_CURRENT_STREAM).
#pragma once

#if defined(FASTCONV_SIMT)
#include "simt/simt.h"
#else
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

// FC_DYNAMIC_SHARED(T, name): T* name -> the launch's dynamic shared memory, 16-byte aligned.
#define FC_DYNAMIC_SHARED(type, name)                                  \
  extern __shared__ __align__(16) unsigned char fc_dynamic_smem_[];    \
  type* const name = reinterpret_cast<type*>(fc_dynamic_smem_)
// FC_LAUNCH(kernel, grid, block, smem_bytes, stream)(args...); a template kernel is bound to a
// pointer first (auto* k = &kern<float, 64>;) because of the commas in its name.
#define FC_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
// Raise a c10::Error naming the launch site if the launch failed.
#define FC_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
// The stream of the current device that PyTorch is using (respects torch.cuda.stream / graphs).
#define FC_CURRENT_STREAM() (c10::cuda::getCurrentCUDAStream().stream())
#endif

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace fastconv {
namespace cuda {

// Accumulation type: double for double, float for float / half / bfloat16.
template <typename T>
struct Acc { using type = float; };
template <>
struct Acc<double> { using type = double; };
template <typename T>
using acc_t = typename Acc<T>::type;

template <typename A, typename T>
__device__ __forceinline__ A to_acc(T v) { return static_cast<A>(v); }
template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }

// V consecutive elements, aligned to their size: one 16-byte access for V = vec16<T>() (4 floats,
// 8 halfs, 2 doubles). The vectorised elementwise, pooling and depthwise kernels load and store these.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};
template <typename T>
__host__ __device__ constexpr int vec16() { return int(16 / sizeof(T)); }

// NaN test that works for float and double on both compilers (x != x is true only for NaN).
template <typename A>
__device__ __forceinline__ bool is_nan(A v) { return v != v; }

// Fused multiply-add in the accumulation type (explicit so host compilers never pick the double
// overload for floats).
__device__ __forceinline__ float fc_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fc_fma(double a, double b, double c) { return fma(a, b, c); }

// Explicit loads / stores: plain accesses under nvcc; under the emulator they check alignment and
// feed its performance counters (global requests / sectors, shared bank-conflict wavefronts).
#if defined(FASTCONV_SIMT)
#define FC_ACCESS(kind, p, T)                                                                  \
  if (reinterpret_cast<uintptr_t>(p) % alignof(T)) ::simt::detail::misaligned(p, alignof(T), #kind, file, line); \
  if (::simt::detail::g_counting_any) ::simt::detail::count_access(kind##_id, p, sizeof(T), file, line)
constexpr int ld_global_id = 0, st_global_id = 1, ld_shared_id = 2, st_shared_id = 3;
template <typename T>
__forceinline__ T ld_global(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  FC_ACCESS(ld_global, p, T);
  return *p;
}
template <typename T>
__forceinline__ void st_global(T* p, T v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  FC_ACCESS(st_global, p, T);
  *p = v;
}
template <typename T>
__forceinline__ T ld_shared(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  FC_ACCESS(ld_shared, p, T);
  return *p;
}
template <typename T>
__forceinline__ void st_shared(T* p, T v, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  FC_ACCESS(st_shared, p, T);
  *p = v;
}
#undef FC_ACCESS
#else
template <typename T>
__device__ __forceinline__ T ld_global(const T* p) { return *p; }
template <typename T>
__device__ __forceinline__ void st_global(T* p, T v) { *p = v; }
template <typename T>
__device__ __forceinline__ T ld_shared(const T* p) { return *p; }
template <typename T>
__device__ __forceinline__ void st_shared(T* p, T v) { *p = v; }
#endif

}  // namespace cuda
}  // namespace fastconv
