// Host-side building blocks shared by the CUDA launchers (conv2d_launch.h, max_pool2d_launch.h,
// relu_launch.h): dtype dispatch, device guard, SM count, size checks, grid sizing and the memory-
// format helper. Every launcher is written once and compiled twice: by nvcc in kernels.cu (the CUDA
// backend of torch.ops.fastconv) and by g++ with -DFASTCONV_SIMT in simt/kernels_simt.cpp
// (torch.ops.fastconv_simt on CPU tensors, the kernels running in the emulator).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstdint>

#if !defined(FASTCONV_SIMT)
#include <c10/cuda/CUDAGuard.h>
#endif

#include "common/checks.h"
#include "cuda/device.h"

namespace fastconv {
namespace cuda {

inline const DTypes& kernel_dtypes() { return kCudaDtypes; }

// Run f(Tag<T>{}) for the tensor dtype (one of kernel_dtypes(); the checks ran before).
template <typename T>
struct Tag { using type = T; };
template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(Tag<float>{}); break;
    case at::kDouble: f(Tag<double>{}); break;
    case at::kHalf: f(Tag<at::Half>{}); break;
    case at::kBFloat16: f(Tag<at::BFloat16>{}); break;
    default: TORCH_CHECK(false, "fastconv: unexpected dtype ", t);
  }
}

// Makes the tensor's device current on the GPU (no-op in the emulator).
#if defined(FASTCONV_SIMT)
struct DeviceGuard { explicit DeviceGuard(const at::Tensor&) {} };
#else
struct DeviceGuard {
  c10::cuda::CUDAGuard g;
  explicit DeviceGuard(const at::Tensor& t) : g(t.device()) {}
};
#endif

// Streaming multiprocessors of the current device; sizes grids and split-K. The emulator reports a
// small fixed number so that tests exercise several splits and grid-stride loops.
inline int sm_count() {
#if defined(FASTCONV_SIMT)
  return 4;
#else
  static int cache[128] = {0};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 128) dev = 0;
  if (cache[dev] == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&cache[dev], cudaDevAttrMultiProcessorCount, dev));
  return cache[dev];
#endif
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The kernels keep per-axis sizes in 32-bit registers; whole-tensor offsets are 64-bit.
inline void check_int(const char* op, const char* what, int64_t v) {
  TORCH_CHECK(v <= int64_t(INT32_MAX), "fastconv.", op, " (CUDA): ", what, " = ", v,
              " exceeds the 2^31-1 the CUDA kernels support per axis");
}

// Elementwise / pooling grids: one thread per element up to a few waves of blocks, then grid-stride.
inline dim3 stride_grid(int64_t work, int threads) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads,
                                                                int64_t(sm_count()) * 16));
  return dim3(unsigned(blocks));
}

// Memory formats: outputs take the format of the rules shared by every backend (common/checks.h:
// conv2d_memory_format; max_pool2d the input's, its backward the indices'; relu the input's
// layout). The tensor-core convolutions, the depthwise and max-pool NHWC kernels and ReLU (on the
// dense storage) produce it directly; the NCHW kernels through one layout conversion (below).
inline at::Tensor laid_out_like(const at::Tensor& t, const at::Tensor& like) {
  if (!like.is_non_overlapping_and_dense()) return t.contiguous(like.suggest_memory_format());
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_like(like);
  out.copy_(t);
  return out;
}

}  // namespace cuda
}  // namespace fastconv
