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

// NaN test that works for float and double on both compilers (x != x is true only for NaN;
// --use_fast_math does not change comparisons).
template <typename A>
__device__ __forceinline__ bool is_nan(A v) { return v != v; }

// Fused multiply-add in the accumulation type (explicit so host compilers never pick the double
// overload for floats).
__device__ __forceinline__ float fc_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fc_fma(double a, double b, double c) { return fma(a, b, c); }

template <typename T>
__host__ __device__ __forceinline__ T ceil_div(T a, T b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace fastconv
