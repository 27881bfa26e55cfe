// ReLU forward and backward, vectorised and grid-stride. Device code only.
//   relu(x) = x < 0 ? 0 : x            (NaN propagates; -0.0 stays -0.0, as in PyTorch and on the CPU)
//   relu_backward(g, y) = y <= 0 ? 0 : g (y is relu's output; NaN passes g through)
// Elements [head, head + packs*V) run as 16-byte vectors (V = vec16<T>(): 4 floats, 8 halfs,
// 2 doubles; every pointer 16-byte aligned there), the head before them and the tail after them
// as scalars. The launcher (relu_launch.h) picks head so that the vectors are aligned, or runs
// everything scalar (packs = 0, head = 0) when the pointers are misaligned differently.
#pragma once

#include "cuda/device.h"

namespace fastconv {
namespace cuda {

// Threads per block of each kernel: its __launch_bounds__, the launcher's block (csrc/cuda/relu_launch.h)
// and benchmarks/cuda_resources.py (which reads '<kernel>_threads' for '<kernel>_kernel') all use
// these, so they cannot disagree.
constexpr int relu_fwd_threads = 256;
constexpr int relu_bwd_threads = 256;

struct VecSpan {
  int64_t n, head, packs;
  // The k-th scalar element (k < n - packs*V): the head, then the tail.
  template <int V>
  __device__ __forceinline__ int64_t scalar(int64_t k) const { return k < head ? k : k + packs * V; }
};

template <typename T>
__device__ __forceinline__ T relu_val(T x) {
  return to_acc<acc_t<T>>(x) < acc_t<T>(0) ? T(0) : x;
}
template <typename T>
__device__ __forceinline__ T relu_grad(T g, T y) {
  return to_acc<acc_t<T>>(y) <= acc_t<T>(0) ? T(0) : g;
}

// out may equal in (relu_).
template <typename T>
__global__ void __launch_bounds__(relu_fwd_threads)
relu_fwd_kernel(const T* in, T* out, const VecSpan sp) {
  constexpr int V = vec16<T>();
  using VT = Vec<T, V>;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const VT* pin = reinterpret_cast<const VT*>(in + sp.head);
  VT* pout = reinterpret_cast<VT*>(out + sp.head);
  for (int64_t i = tid; i < sp.packs; i += stride) {
    VT x = ld_global(pin + i);
#pragma unroll
    for (int j = 0; j < V; ++j) x.v[j] = relu_val(x.v[j]);
    st_global(pout + i, x);
  }
  for (int64_t k = tid; k < sp.n - sp.packs * V; k += stride) {
    const int64_t i = sp.scalar<V>(k);
    st_global(out + i, relu_val(ld_global(in + i)));
  }
}

template <typename T>
__global__ void __launch_bounds__(relu_bwd_threads)
relu_bwd_kernel(const T* __restrict__ gout, const T* __restrict__ res, T* __restrict__ gin, const VecSpan sp) {
  constexpr int V = vec16<T>();
  using VT = Vec<T, V>;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const VT* pg = reinterpret_cast<const VT*>(gout + sp.head);
  const VT* pr = reinterpret_cast<const VT*>(res + sp.head);
  VT* po = reinterpret_cast<VT*>(gin + sp.head);
  for (int64_t i = tid; i < sp.packs; i += stride) {
    const VT g = ld_global(pg + i), r = ld_global(pr + i);
    VT o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = relu_grad(g.v[j], r.v[j]);
    st_global(po + i, o);
  }
  for (int64_t k = tid; k < sp.n - sp.packs * V; k += stride) {
    const int64_t i = sp.scalar<V>(k);
    st_global(gin + i, relu_grad(ld_global(gout + i), ld_global(res + i)));
  }
}

}  // namespace cuda
}  // namespace fastconv
