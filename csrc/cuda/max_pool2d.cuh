// max_pool2d forward (values + int64 indices) and backward. Device code only.
// Memory-bound: one thread per output (forward) or input (backward) element, grid-stride, 64-bit.
#pragma once

#include "cuda/device.h"

namespace fastconv {
namespace cuda {

struct PoolArgs {
  int64_t NC;  // N*C planes
  int H, W, P, Q;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// Threads per block of each kernel: its __launch_bounds__, the launcher's block (csrc/cuda/max_pool2d_launch.h)
// and benchmarks/cuda_resources.py (which reads '<kernel>_threads' for '<kernel>_kernel') all use
// these, so they cannot disagree.
constexpr int max_pool2d_fwd_threads = 256;
constexpr int max_pool2d_bwd_threads = 256;
constexpr int max_pool2d_bwd_scatter_threads = 256;

// out/idx[nc][p][q]: max of the window, PyTorch's rule: scan rows then columns over in-bounds taps,
// take a tap when val > max or val is NaN (so NaN propagates, the last NaN wins); the index starts
// at the first in-bounds tap and is h*W + w in the plane.
template <typename T>
__global__ void __launch_bounds__(max_pool2d_fwd_threads)
max_pool2d_fwd_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t* __restrict__ idx,
                      const PoolArgs a) {
  using A = acc_t<T>;
  const int64_t total = a.NC * a.P * a.Q;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += stride) {
    const int q = int(o % a.Q);
    const int p = int((o / a.Q) % a.P);
    const int64_t nc = o / (int64_t(a.P) * a.Q);
    int h0 = p * a.sh - a.ph, w0 = q * a.sw - a.pw;
    const int h1 = min(h0 + (a.kh - 1) * a.dh + 1, a.H), w1 = min(w0 + (a.kw - 1) * a.dw + 1, a.W);
    while (h0 < 0) h0 += a.dh;
    while (w0 < 0) w0 += a.dw;
    const T* plane = in + nc * a.H * a.W;
    int64_t best = int64_t(h0) * a.W + w0;
    A m = -INFINITY;
    for (int h = h0; h < h1; h += a.dh)
      for (int w = w0; w < w1; w += a.dw) {
        const int64_t i = int64_t(h) * a.W + w;
        const A v = to_acc<A>(plane[i]);
        if (v > m || is_nan(v)) {
          m = v;
          best = i;
        }
      }
    out[o] = from_acc<T>(m);
    idx[o] = best;
  }
}

// gin[nc][h][w] = sum of gout[nc][p][q] over the windows containing (h, w) whose index is h*W+w.
// A gather (no atomics): deterministic when windows overlap; windows visited p, q ascending.
template <typename T>
__global__ void __launch_bounds__(max_pool2d_bwd_threads)
max_pool2d_bwd_kernel(const T* __restrict__ gout, const int64_t* __restrict__ idx, T* __restrict__ gin,
                      const PoolArgs a) {
  using A = acc_t<T>;
  const int64_t total = a.NC * a.H * a.W;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int w = int(e % a.W);
    const int h = int((e / a.W) % a.H);
    const int64_t nc = e / (int64_t(a.H) * a.W);
    // Windows p with p*sh - ph <= h <= p*sh - ph + (kh-1)*dh (a superset when dilated).
    const int ext_h = (a.kh - 1) * a.dh + 1, ext_w = (a.kw - 1) * a.dw + 1;
    const int p0 = h + a.ph < ext_h ? 0 : (h + a.ph - ext_h) / a.sh + 1;
    const int q0 = w + a.pw < ext_w ? 0 : (w + a.pw - ext_w) / a.sw + 1;
    const int p1 = min((h + a.ph) / a.sh + 1, a.P), q1 = min((w + a.pw) / a.sw + 1, a.Q);
    const int64_t me = int64_t(h) * a.W + w;
    const int64_t base = nc * a.P * a.Q;
    A s = A(0);
    for (int p = p0; p < p1; ++p)
      for (int q = q0; q < q1; ++q) {
        const int64_t o = base + int64_t(p) * a.Q + q;
        if (idx[o] == me) s += to_acc<A>(gout[o]);
      }
    gin[e] = from_acc<T>(s);
  }
}

// The same gin, one thread per plane: zero the plane, then gin[idx[o]] += gout[o] for o ascending
// (the CPU's scatter, sums in the same order; deterministic, no atomics). Honours every index in
// [0, H*W), including those outside their own window, which the gather above never visits: a
// window wholly in the padding (possible with dilation) gets -inf with an index past its window
// that may still lie in the plane (PyTorch's rule, kept by the forward). Indices outside the plane
// are skipped (the CUDA launcher trusts indices; the emulator's rejects them before launching).
// Slow (N*C threads, P*Q steps each): the launcher takes it only when some window is empty.
template <typename T>
__global__ void __launch_bounds__(max_pool2d_bwd_scatter_threads)
max_pool2d_bwd_scatter_kernel(const T* __restrict__ gout, const int64_t* __restrict__ idx, T* __restrict__ gin,
                              const PoolArgs a) {
  using A = acc_t<T>;
  const int64_t HW = int64_t(a.H) * a.W, PQ = int64_t(a.P) * a.Q;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t nc = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; nc < a.NC; nc += stride) {
    T* plane = gin + nc * HW;
    for (int64_t i = 0; i < HW; ++i) plane[i] = T(0);
    for (int64_t o = nc * PQ; o < (nc + 1) * PQ; ++o) {
      const int64_t i = idx[o];
      if (i >= 0 && i < HW) plane[i] = from_acc<T>(to_acc<A>(plane[i]) + to_acc<A>(gout[o]));
    }
  }
}

}  // namespace cuda
}  // namespace fastconv
