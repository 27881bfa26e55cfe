// max_pool2d forward (values + int64 indices) and backward. Device code only.
// Memory-bound: one thread per output (forward) or input (backward) element, grid-stride, 64-bit;
// NCHW kernels scalar, NHWC (channels_last) kernels on 16-byte vectors along C.
#pragma once

#include "cuda/device.h"

namespace fastconv {
namespace cuda {

struct PoolArgs {
  int64_t NC;  // N*C planes
  int C;
  int H, W, P, Q;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// Threads per block of each kernel: its __launch_bounds__, the launcher's block (csrc/cuda/max_pool2d_launch.h)
// and benchmarks/cuda_resources.py (which reads '<kernel>_threads' for '<kernel>_kernel') all use
// these, so they cannot disagree.
constexpr int max_pool2d_fwd_threads = 256;
constexpr int max_pool2d_bwd_threads = 256;
constexpr int max_pool2d_bwd_scatter_threads = 256;
constexpr int max_pool2d_fwd_nhwc_threads = 256;
constexpr int max_pool2d_bwd_nhwc_threads = 256;

// Window of output (p, q): rows h0, h0+dh, .. < h1 and columns w0, w0+dw, .. < w1, the in-bounds
// taps (empty when h0 >= h1 or w0 >= w1: a window in the padding).
struct PoolWindow {
  int h0, h1, w0, w1;
};
__device__ __forceinline__ PoolWindow pool_window(const PoolArgs& a, int p, int q) {
  PoolWindow r;
  r.h0 = p * a.sh - a.ph;
  r.w0 = q * a.sw - a.pw;
  r.h1 = min(r.h0 + (a.kh - 1) * a.dh + 1, a.H);
  r.w1 = min(r.w0 + (a.kw - 1) * a.dw + 1, a.W);
  while (r.h0 < 0) r.h0 += a.dh;
  while (r.w0 < 0) r.w0 += a.dw;
  return r;
}

// Outputs p0 <= p < p1, q0 <= q < q1 whose windows' extents contain input (h, w): p*sh - ph <= h <=
// p*sh - ph + (kh-1)*dh (a superset of the windows holding (h, w) when dilated).
struct PoolRange {
  int p0, p1, q0, q1;
};
__device__ __forceinline__ PoolRange pool_windows_of(const PoolArgs& a, int h, int w) {
  const int ext_h = (a.kh - 1) * a.dh + 1, ext_w = (a.kw - 1) * a.dw + 1;
  PoolRange r;
  r.p0 = h + a.ph < ext_h ? 0 : (h + a.ph - ext_h) / a.sh + 1;
  r.q0 = w + a.pw < ext_w ? 0 : (w + a.pw - ext_w) / a.sw + 1;
  r.p1 = min((h + a.ph) / a.sh + 1, a.P);
  r.q1 = min((w + a.pw) / a.sw + 1, a.Q);
  return r;
}

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
    const PoolWindow win = pool_window(a, p, q);
    const T* plane = in + nc * a.H * a.W;
    int64_t best = int64_t(win.h0) * a.W + win.w0;
    A m = -INFINITY;
    for (int h = win.h0; h < win.h1; h += a.dh)
      for (int w = win.w0; w < win.w1; w += a.dw) {
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
    const PoolRange r = pool_windows_of(a, h, w);
    const int64_t me = int64_t(h) * a.W + w;
    const int64_t base = nc * a.P * a.Q;
    A s = A(0);
    for (int p = r.p0; p < r.p1; ++p)
      for (int q = r.q0; q < r.q1; ++q) {
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

// ---- NHWC: in/gin [N][H][W][C], out/gout/idx [N][P][Q][C]. One thread per pixel and V consecutive
// channels (V > 1 when C % V == 0 and the pointers are 16-byte aligned, else 1); consecutive
// threads take consecutive channel groups of a pixel, then the next pixel, so a warp's accesses
// cover whole 32-byte sectors when C * sizeof(T) is a multiple of 32. Per channel the same rules
// as the NCHW kernels above (first maximum, NaN wins, index h*W + w in the plane).
// Forward: V = vec16<T>(), every value access one 16-byte Vec<T, V>; a thread's V int64 indices
// (V * 8 bytes, 2-4 16-byte pieces) are staged in shared memory and stored by the block as
// consecutive 16-byte pieces (a thread storing its own pieces would touch every sector of a warp
// request half). Backward: V = 2, so a thread's indices are one 16-byte load (the largest
// stream, 8 bytes a channel), grad_output / grad_input 2 channels a thread, contiguous in a warp.

template <int V>
__device__ __forceinline__ void ld_indices(const int64_t* p, int64_t (&v)[V]) {
  constexpr int IV = V >= 2 ? 2 : 1;
#pragma unroll
  for (int j = 0; j < V; j += IV) {
    const Vec<int64_t, IV> b = ld_global(reinterpret_cast<const Vec<int64_t, IV>*>(p + j));
#pragma unroll
    for (int u = 0; u < IV; ++u) v[j + u] = b.v[u];
  }
}

// At least 4 blocks an SM (64 registers): with no minimum ptxas spilled the V = 8 kernels at 48.
template <typename T, int V>
__global__ void __launch_bounds__(max_pool2d_fwd_nhwc_threads, 4)
max_pool2d_fwd_nhwc_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t* __restrict__ idx,
                           const PoolArgs a) {
  using A = acc_t<T>;
  using VT = Vec<T, V>;
  constexpr int NT = max_pool2d_fwd_nhwc_threads, IV = V >= 2 ? 2 : 1;
  using VI = Vec<int64_t, IV>;
  __shared__ VI sidx[NT * V / IV];  // the block's indices, in output order
  const int CV = a.C / V;
  const int64_t total = a.NC / V * a.P * a.Q;  // o = pixel * CV + channel group
  const int64_t stride = int64_t(gridDim.x) * NT;
  // Every thread runs every iteration (the barriers); o past the end computes nothing.
  for (int64_t o0 = int64_t(blockIdx.x) * NT; o0 < total; o0 += stride) {
    const int64_t o = o0 + threadIdx.x;
    if (o < total) {
      const int64_t pix = o / CV;  // (n, p, q)
      const int q = int(pix % a.Q);
      const int p = int((pix / a.Q) % a.P);
      const int64_t n = pix / (int64_t(a.P) * a.Q);
      const PoolWindow win = pool_window(a, p, q);
      const T* img = in + n * a.H * a.W * a.C + (o - pix * CV) * V;
      A m[V];
      int64_t best[V];
#pragma unroll
      for (int j = 0; j < V; ++j) m[j] = -INFINITY, best[j] = int64_t(win.h0) * a.W + win.w0;
      for (int h = win.h0; h < win.h1; h += a.dh)
        for (int w = win.w0; w < win.w1; w += a.dw) {
          const int64_t i = int64_t(h) * a.W + w;
          const VT x = ld_global(reinterpret_cast<const VT*>(img + i * a.C));
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const A v = to_acc<A>(x.v[j]);
            if (v > m[j] || is_nan(v)) {
              m[j] = v;
              best[j] = i;
            }
          }
        }
      VT y;
#pragma unroll
      for (int j = 0; j < V; ++j) y.v[j] = from_acc<T>(m[j]);
      st_global(reinterpret_cast<VT*>(out + o * V), y);
#pragma unroll
      for (int j = 0; j < V; j += IV) {
        VI b;
#pragma unroll
        for (int u = 0; u < IV; ++u) b.v[u] = best[j + u];
        st_shared(&sidx[(int(threadIdx.x) * V + j) / IV], b);
      }
    }
    __syncthreads();
    const int pieces = (total - o0 < NT ? int(total - o0) : NT) * V / IV;
    VI* dst = reinterpret_cast<VI*>(idx + o0 * V);
    for (int c = threadIdx.x; c < pieces; c += NT) st_global(dst + c, ld_shared(&sidx[c]));
    __syncthreads();  // sidx is rewritten next iteration
  }
}

// The gather of max_pool2d_bwd_kernel per channel group: gout is read only where an index matches.
template <typename T, int V>
__global__ void __launch_bounds__(max_pool2d_bwd_nhwc_threads)
max_pool2d_bwd_nhwc_kernel(const T* __restrict__ gout, const int64_t* __restrict__ idx, T* __restrict__ gin,
                           const PoolArgs a) {
  using A = acc_t<T>;
  using VT = Vec<T, V>;
  const int CV = a.C / V;
  const int64_t total = a.NC / V * a.H * a.W;  // e = pixel * CV + channel group
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t pix = e / CV;  // (n, h, w)
    const int w = int(pix % a.W);
    const int h = int((pix / a.W) % a.H);
    const int64_t n = pix / (int64_t(a.H) * a.W);
    const PoolRange r = pool_windows_of(a, h, w);
    const int64_t me = int64_t(h) * a.W + w;
    const int64_t base = n * a.P * a.Q * a.C + (e - pix * CV) * V;
    A s[V];
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] = A(0);
    for (int p = r.p0; p < r.p1; ++p)
      for (int q = r.q0; q < r.q1; ++q) {
        const int64_t o = base + (int64_t(p) * a.Q + q) * a.C;
        int64_t id[V];
        ld_indices<V>(idx + o, id);
        bool any = false;
#pragma unroll
        for (int j = 0; j < V; ++j) any |= id[j] == me;
        if (!any) continue;
        const VT g = ld_global(reinterpret_cast<const VT*>(gout + o));
#pragma unroll
        for (int j = 0; j < V; ++j)
          if (id[j] == me) s[j] += to_acc<A>(g.v[j]);
      }
    VT y;
#pragma unroll
    for (int j = 0; j < V; ++j) y.v[j] = from_acc<T>(s[j]);
    st_global(reinterpret_cast<VT*>(gin + e * V), y);
  }
}

}  // namespace cuda
}  // namespace fastconv
