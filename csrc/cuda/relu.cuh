// ReLU forward and backward, vectorised and grid-stride. Device code only.
//   relu(x) = x < 0 ? 0 : x            (NaN propagates; -0.0 stays -0.0, as in PyTorch and on the CPU)
//   relu_backward(g, y) = y <= 0 ? 0 : g (y is relu's output; NaN passes g through)
// When every pointer is aligned to 4 elements (16 bytes for float), the body runs on packs of 4
// elements (one 16-byte load/store for float); a scalar loop finishes the tail.
#pragma once

#include "cuda/device.h"

namespace fastconv {
namespace cuda {

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

// Threads per block of each kernel: its __launch_bounds__, the launcher's block (csrc/cuda/relu_launch.h)
// and benchmarks/cuda_resources.py (which reads '<kernel>_threads' for '<kernel>_kernel') all use
// these, so they cannot disagree.
constexpr int relu_fwd_threads = 256;
constexpr int relu_bwd_threads = 256;

template <typename T>
__device__ __forceinline__ T relu_val(T x) {
  return to_acc<acc_t<T>>(x) < acc_t<T>(0) ? T(0) : x;
}

// out may equal in (relu_).
template <typename T>
__global__ void __launch_bounds__(relu_fwd_threads)
relu_fwd_kernel(const T* in, T* out, int64_t n, bool vec) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    const int64_t packs = n / 4;
    const Pack4<T>* pin = reinterpret_cast<const Pack4<T>*>(in);
    Pack4<T>* pout = reinterpret_cast<Pack4<T>*>(out);
    for (int64_t i = tid; i < packs; i += stride) {
      Pack4<T> x = pin[i];
#pragma unroll
      for (int j = 0; j < 4; ++j) x.v[j] = relu_val(x.v[j]);
      pout[i] = x;
    }
    done = packs * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride) out[i] = relu_val(in[i]);
}

template <typename T>
__global__ void __launch_bounds__(relu_bwd_threads)
relu_bwd_kernel(const T* __restrict__ gout, const T* __restrict__ res, T* __restrict__ gin, int64_t n,
                bool vec) {
  using A = acc_t<T>;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    const int64_t packs = n / 4;
    const Pack4<T>* pg = reinterpret_cast<const Pack4<T>*>(gout);
    const Pack4<T>* pr = reinterpret_cast<const Pack4<T>*>(res);
    Pack4<T>* po = reinterpret_cast<Pack4<T>*>(gin);
    for (int64_t i = tid; i < packs; i += stride) {
      const Pack4<T> g = pg[i], r = pr[i];
      Pack4<T> o;
#pragma unroll
      for (int j = 0; j < 4; ++j) o.v[j] = to_acc<A>(r.v[j]) <= A(0) ? T(0) : g.v[j];
      po[i] = o;
    }
    done = packs * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride) gin[i] = to_acc<A>(res[i]) <= A(0) ? T(0) : gout[i];
}

}  // namespace cuda
}  // namespace fastconv
