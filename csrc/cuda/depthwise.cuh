// Depthwise convolution (groups == C, K = m*C output channels, output channel k = c*m + j reads
// input channel c only): forward, backward-data and backward-weight, NCHW and NHWC. Device code
// only; the launcher is csrc/cuda/depthwise_launch.h.
//
// A depthwise layer does R*S multiply-adds per output and no reduction over channels: it is
// memory-bound, and the kernels are built to read each input and write each output once.
//
// NCHW (blocks own a (image, channel, tile of one plane); block = tq x tr threads, thread (tx, ty)):
//  * forward: the input tile plus its halo is staged in shared memory (acc type, zero outside
//    the plane), its columns de-interleaved by stride phase (column cc at (cc % sw)*phase + cc/sw),
//    so that output q = q0 + tx reads, for tap s, phase (s*dw) % sw at position tx + (s*dw)/sw:
//    consecutive lanes read consecutive words for any stride. A thread computes vp outputs of one
//    column (rows ty, ty + tr, ...), for all m output channels of the staged input channel.
//  * backward-data, the adjoint: dx[h][w] = sum_j sum over the taps with (h+ph-r*dh) % sh == 0 and
//    (w+pw-s*dw) % sw == 0 of dy[c*m+j][(h+ph-r*dh)/sh][(w+pw-s*dw)/sw] * w[c*m+j][r][s]. The dy tile
//    is staged; a thread owns dx rows ty + i*tr and the columns w0 + b + sw*tx of phases b, and
//    walks only the contributing taps (first tap, then steps of sh/gcd(sh, dh)); within one phase
//    every lane has the same taps (no divergence) and reads consecutive words. With stride 2 and
//    32-lane rows the two phases are exchanged by shuffles so that every store is 32 consecutive
//    columns.
//  * backward-weight: block (k, split z) walks its range of (image, output tile) items in order,
//    staging the input tile (as the forward) and the dy tile; warp wi sums taps tg + G*u
//    (tg = wi % G) over the pixels of pixel group wi / G in registers, then a fixed-order warp
//    shuffle tree and a fixed-order sum over pixel groups give one partial per (split, k, tap) in
//    a workspace that reduce_splits_kernel sums over splits in order: deterministic, no atomics.
// NHWC (channels_last; threads along C, V = 16 bytes / sizeof(T) channels per thread where K % V == 0
// and the pointers are 16-byte aligned, else V = 1; weights transposed to wt[R*S][K] by the launcher):
//  * forward: a thread computes V channels of one output pixel; grid (pixels of a row x vectors,
//    N*P rows); neighbouring pixels of a block share their input through L1.
//  * backward-data: a thread computes V channels of one dx pixel over the contributing taps.
//  * backward-weight (+ bias): thread (tap or bias, vector) sums over its split's pixels in order;
//    the same workspace and reduce_splits_kernel.
#pragma once

#include "cuda/device.h"

namespace fastconv {
namespace cuda {

// Threads per block (the maximum for the NCHW kernels, whose block is tq x tr <= this): the
// __launch_bounds__, the launcher and benchmarks/cuda_resources.py all use these.
constexpr int dw_fwd_nchw_threads = 256;
constexpr int dw_bwd_data_nchw_threads = 256;
constexpr int dw_bwd_weight_nchw_threads = 256;
constexpr int dw_fwd_nhwc_threads = 256;
constexpr int dw_bwd_data_nhwc_threads = 256;
constexpr int dw_bwd_weight_nhwc_threads = 256;

constexpr int kDwVp = 4;   // outputs per thread along H (NCHW), at most
constexpr int kDwNb = 2;   // stride phases per thread along W (NCHW backward-data), at most
constexpr int kDwTpw = 8;  // taps per warp and pass (NCHW backward-weight)

// Shape, tiling and split of one depthwise call (the launcher fills it; sizes checked < 2^31).
struct DwArgs {
  int64_t N;
  int C, H, W, K, m, R, S, P, Q;
  int sh, sw, ph, pw, dh, dw;
  // NCHW tiling: block = tq x tr threads, vp rows per thread; a tile is (tr*vp) x (tq*cph) outputs
  // (cph = sw in backward-data: one column per stride phase, else 1).
  int tq, tr, vp, nb;      // nb: phases per pass (backward-data), <= kDwNb
  int tiles_p, tiles_q;
  int in_rows, in_cols, phase, pitch;  // staged tile: rows, columns, phase width, row pitch
  int rstep, sstep;        // backward-data: tap steps sh/gcd(sh,dh), sw/gcd(sw,dw)
  int groups;              // backward-weight NCHW: tap groups G (a power of two dividing the warps)
  int64_t items, chunk;    // backward-weight: work items (NCHW: N*tiles, NHWC: N*P*Q) and per split
  int tap_begin, tap_end;  // NHWC backward-weight: taps [0, R*S) weights, tap R*S the bias
};

__host__ __device__ inline int dw_floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// First tap t in [0, step) with (base - t*d) % st == 0 (base may be negative; step = st/gcd(st, d),
// the period), or `none` if there is none (then no tap contributes).
__device__ __forceinline__ int dw_first_tap(int base, int d, int st, int step, int none) {
  for (int t = 0; t < step; ++t)
    if ((base - t * d) % st == 0) return t;
  return none;
}

// Stages rows [r0, r0+rows) x columns [c0, c0+cols) of an H x W plane into dst (acc type, zero
// outside the plane), column cc at (cc % sw)*phase + cc / sw of its row (pitch apart). Thread
// (tx, ty) of a tq x tr block: rows ty, ty+tr, ..., columns tx, tx+tq, ... (coalesced reads).
template <typename T, typename A>
__device__ __forceinline__ void dw_stage(const T* __restrict__ plane, int H, int W, int r0, int c0, int rows,
                                         int cols, int sw, int phase, int pitch, A* dst, int tx, int ty, int tq,
                                         int tr) {
  for (int r = ty; r < rows; r += tr) {
    const int ih = r0 + r;
    const bool rin = unsigned(ih) < unsigned(H);
    for (int cc = tx; cc < cols; cc += tq) {
      const int iw = c0 + cc;
      A v = A(0);
      if (rin && unsigned(iw) < unsigned(W)) v = to_acc<A>(ld_global(plane + int64_t(ih) * W + iw));
      st_shared(dst + r * pitch + (cc % sw) * phase + cc / sw, v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NCHW

// y (N, K, P, Q) = depthwise conv of x (N, C, H, W) with w (K, 1, R, S) (+ bias), ReLU when RELU.
// grid.x = N*C*tiles_p*tiles_q. smem: x tile [in_rows][pitch], the weights [R*S] of one output
// channel (acc type). KS = 0: any shape, a thread's rows ty + i*tr, one shared load per FMA.
// KS = 3, 5, 7 (R = S = KS, stride 1, dilation 1): the weights in registers, a thread's rows
// ty*vp + i consecutive, so each staged input value feeds up to KS of them: (vp+KS-1)*KS shared
// loads per vp*KS*KS FMAs (0.5 per FMA for 3x3 at vp = 4).
template <typename T, bool RELU, int KS>
__global__ void __launch_bounds__(dw_fwd_nchw_threads, 2)
dw_fwd_nchw_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                   T* __restrict__ y, const DwArgs a) {
  using A = acc_t<T>;
  FC_DYNAMIC_SHARED(A, xs);
  const int RS = a.R * a.S;
  A* ws = xs + a.in_rows * a.pitch;
  const int tiles = a.tiles_p * a.tiles_q;
  const int64_t plane = int64_t(blockIdx.x) / tiles;  // n*C + c
  const int tile = int(int64_t(blockIdx.x) - plane * tiles);
  const int c = int(plane % a.C);
  const int64_t n = plane / a.C;
  const int TP = a.tr * a.vp;
  const int p0 = (tile / a.tiles_q) * TP, q0 = (tile % a.tiles_q) * a.tq;
  const int tx = int(threadIdx.x) % a.tq, ty = int(threadIdx.x) / a.tq;
  dw_stage(x + plane * a.H * a.W, a.H, a.W, p0 * a.sh - a.ph, q0 * a.sw - a.pw, a.in_rows, a.in_cols, a.sw,
           a.phase, a.pitch, xs, tx, ty, a.tq, a.tr);
  const int q = q0 + tx;
  for (int j = 0; j < a.m; ++j) {
    const int k = c * a.m + j;
    if (j > 0) __syncthreads();  // the previous channel's weights are consumed
    for (int i = threadIdx.x; i < RS; i += blockDim.x) st_shared(ws + i, to_acc<A>(ld_global(w + int64_t(k) * RS + i)));
    __syncthreads();
    const A b = bias != nullptr ? to_acc<A>(ld_global(bias + k)) : A(0);
    A acc[kDwVp];
#pragma unroll
    for (int i = 0; i < kDwVp; ++i) acc[i] = b;
    if constexpr (KS > 0) {
      A wr[KS][KS];
#pragma unroll
      for (int r = 0; r < KS; ++r)
#pragma unroll
        for (int s = 0; s < KS; ++s) wr[r][s] = ld_shared(ws + r * KS + s);
      const A* col = xs + ty * a.vp * a.pitch + tx;
#pragma unroll
      for (int ir = 0; ir < kDwVp + KS - 1; ++ir) {  // input rows of the thread's outputs
        if (ir >= a.vp + KS - 1) break;
#pragma unroll
        for (int s = 0; s < KS; ++s) {
          const A xv = ld_shared(col + ir * a.pitch + s);
#pragma unroll
          for (int i = 0; i < kDwVp; ++i)  // output row i reads it as tap r = ir - i
            if (ir - i >= 0 && ir - i < KS && i < a.vp) acc[i] = fc_fma(xv, wr[ir - i][s], acc[i]);
        }
      }
    } else {
      for (int r = 0; r < a.R; ++r) {
        const A* row = xs + (ty * a.sh + r * a.dh) * a.pitch + tx;
        for (int s = 0; s < a.S; ++s) {
          const A wv = ld_shared(ws + r * a.S + s);
          const int sd = s * a.dw;
          const A* src = row + (sd % a.sw) * a.phase + sd / a.sw;
#pragma unroll
          for (int i = 0; i < kDwVp; ++i)
            if (i < a.vp) acc[i] = fc_fma(ld_shared(src + i * a.tr * a.sh * a.pitch), wv, acc[i]);
        }
      }
    }
    if (q < a.Q) {
#pragma unroll
      for (int i = 0; i < kDwVp; ++i) {
        const int p = p0 + (KS > 0 ? ty * a.vp + i : ty + i * a.tr);
        if (i < a.vp && p < a.P) {
          A v = acc[i];
          if (RELU) v = v < A(0) ? A(0) : v;  // keeps NaN, as relu does
          st_global(y + ((n * a.K + k) * a.P + p) * a.Q + q, from_acc<T>(v));
        }
      }
    }
  }
}

// dx (N, C, H, W) from dy (N, K, P, Q) and w. grid.x = N*C*tiles_p*tiles_q; a tile is
// (tr*vp) rows x (tq*sw) columns of dx. smem: dy tile [in_rows][pitch] (rows from
// floor((h0+ph-(R-1)*dh)/sh), columns likewise, zero outside the plane), weights [R*S] of plane k.
template <typename T>
__global__ void __launch_bounds__(dw_bwd_data_nchw_threads, 2)
dw_bwd_data_nchw_kernel(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, const DwArgs a) {
  using A = acc_t<T>;
  FC_DYNAMIC_SHARED(A, ys);
  const int RS = a.R * a.S;
  A* ws = ys + a.in_rows * a.pitch;
  const int tiles = a.tiles_p * a.tiles_q;
  const int64_t plane = int64_t(blockIdx.x) / tiles;
  const int tile = int(int64_t(blockIdx.x) - plane * tiles);
  const int c = int(plane % a.C);
  const int64_t n = plane / a.C;
  const int TH = a.tr * a.vp, TW = a.tq * a.sw;
  const int h0 = (tile / a.tiles_q) * TH, w0 = (tile % a.tiles_q) * TW;
  const int pr0 = dw_floor_div(h0 + a.ph - (a.R - 1) * a.dh, a.sh);
  const int qc0 = dw_floor_div(w0 + a.pw - (a.S - 1) * a.dw, a.sw);
  const int tx = int(threadIdx.x) % a.tq, ty = int(threadIdx.x) / a.tq;
  const int rdp = a.rstep * a.dh / a.sh, sdq = a.sstep * a.dw / a.sw;  // dy row / column per tap step
  for (int b0 = 0; b0 < a.sw; b0 += a.nb) {  // passes over the stride phases of the columns
    A acc[kDwVp][kDwNb];
#pragma unroll
    for (int i = 0; i < kDwVp; ++i)
#pragma unroll
      for (int bb = 0; bb < kDwNb; ++bb) acc[i][bb] = A(0);
    for (int j = 0; j < a.m; ++j) {
      if (a.m > 1 || b0 == 0) {  // the tile of dy plane k = c*m + j and w[k] (with m == 1 staged once)
        const int64_t k = int64_t(c) * a.m + j;
        __syncthreads();
        dw_stage(dy + (n * a.K + k) * a.P * a.Q, a.P, a.Q, pr0, qc0, a.in_rows, a.in_cols, 1, 0, a.pitch, ys, tx, ty,
                 a.tq, a.tr);
        for (int i = threadIdx.x; i < RS; i += blockDim.x) st_shared(ws + i, to_acc<A>(ld_global(w + k * RS + i)));
        __syncthreads();
      }
      const A* wj = ws;
#pragma unroll
      for (int i = 0; i < kDwVp; ++i) {
        if (i >= a.vp) break;
        const int hb = h0 + ty + i * a.tr + a.ph;
        const int r = dw_first_tap(hb, a.dh, a.sh, a.rstep, a.R);
        const int pl = (hb - r * a.dh) / a.sh - pr0;  // exact when r < R (a contributing tap)
#pragma unroll
        for (int bb = 0; bb < kDwNb; ++bb) {
          const int b = b0 + bb;
          if (bb >= a.nb || b >= a.sw) break;
          const int wb = w0 + b + a.pw;  // + sw*tx: the same taps for every lane
          const int s1 = dw_first_tap(wb, a.dw, a.sw, a.sstep, a.S);
          const int ql1 = (wb - s1 * a.dw) / a.sw - qc0 + tx;
          A sum = acc[i][bb];
          int pr = pl;
          for (int rr = r; rr < a.R; rr += a.rstep, pr -= rdp) {
            const A* row = ys + pr * a.pitch;
            int ql = ql1;
            for (int s = s1; s < a.S; s += a.sstep, ql -= sdq)
              sum = fc_fma(ld_shared(row + ql), ld_shared(wj + rr * a.S + s), sum);
          }
          acc[i][bb] = sum;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kDwVp; ++i) {
      const int h = h0 + ty + i * a.tr;
      if (a.sw == 2 && a.tq == 32) {  // a warp is one row: lane l stores columns l and 32 + l
        if (i >= a.vp) break;  // (warp-uniform: h too, so every lane takes part in the shuffles)
        const int src = tx / 2;
        const A lo0 = __shfl_sync(0xffffffffu, acc[i][0], src), lo1 = __shfl_sync(0xffffffffu, acc[i][1], src);
        const A hi0 = __shfl_sync(0xffffffffu, acc[i][0], 16 + src);
        const A hi1 = __shfl_sync(0xffffffffu, acc[i][1], 16 + src);
        if (h >= a.H) break;
        T* row = dx + (plane * a.H + h) * a.W;
        if (w0 + tx < a.W) st_global(row + w0 + tx, from_acc<T>(tx % 2 ? lo1 : lo0));
        if (w0 + 32 + tx < a.W) st_global(row + w0 + 32 + tx, from_acc<T>(tx % 2 ? hi1 : hi0));
        continue;
      }
      if (i >= a.vp || h >= a.H) break;
#pragma unroll
      for (int bb = 0; bb < kDwNb; ++bb) {
        const int wcol = w0 + b0 + bb + a.sw * tx;
        if (bb < a.nb && b0 + bb < a.sw && wcol < a.W)
          st_global(dx + (plane * a.H + h) * a.W + wcol, from_acc<T>(acc[i][bb]));
      }
    }
  }
}

// Partial weight gradients ws[z][k][tap] (acc type) of split z = blockIdx.y for channel k =
// blockIdx.x, over the work items (n, output tile) [z*chunk, min((z+1)*chunk, items)). Block:
// tq x tr threads, a multiple of 32. smem: x tile [in_rows][pitch], dy tile [tr*vp][tq],
// warp partials [warps][kDwTpw].
template <typename T>
__global__ void __launch_bounds__(dw_bwd_weight_nchw_threads, 2)
dw_bwd_weight_nchw_kernel(const T* __restrict__ x, const T* __restrict__ dy, acc_t<T>* __restrict__ wsp,
                          const DwArgs a) {
  using A = acc_t<T>;
  FC_DYNAMIC_SHARED(A, xs);
  const int RS = a.R * a.S, TP = a.tr * a.vp, tile_px = TP * a.tq;
  A* ys = xs + a.in_rows * a.pitch;
  A* red = ys + tile_px;
  const int k = blockIdx.x, z = blockIdx.y, c = k / a.m;
  const int tx = int(threadIdx.x) % a.tq, ty = int(threadIdx.x) / a.tq;
  const int warps = int(blockDim.x) / 32, wi = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int G = a.groups, tg = wi % G, pg = wi / G, pgroups = warps / G;
  const int tiles = a.tiles_p * a.tiles_q;
  const int64_t it0 = int64_t(z) * a.chunk;
  const int64_t it1 = it0 + a.chunk < a.items ? it0 + a.chunk : a.items;
  for (int tb = 0; tb < RS; tb += G * kDwTpw) {  // passes of G*kDwTpw taps
    int toff[kDwTpw];  // tap tb + tg + G*u: its offset in the x tile, or -1
#pragma unroll
    for (int u = 0; u < kDwTpw; ++u) {
      const int t = tb + tg + G * u;
      const int r = t / a.S, sd = (t - r * a.S) * a.dw;
      toff[u] = t < RS ? r * a.dh * a.pitch + (sd % a.sw) * a.phase + sd / a.sw : -1;
    }
    A acc[kDwTpw];
#pragma unroll
    for (int u = 0; u < kDwTpw; ++u) acc[u] = A(0);
    for (int64_t it = it0; it < it1; ++it) {
      const int64_t n = it / tiles;
      const int tile = int(it - n * tiles);
      const int p0 = (tile / a.tiles_q) * TP, q0 = (tile % a.tiles_q) * a.tq;
      __syncthreads();  // the previous item's tiles are consumed
      dw_stage(x + (n * a.C + c) * a.H * a.W, a.H, a.W, p0 * a.sh - a.ph, q0 * a.sw - a.pw, a.in_rows,
               a.in_cols, a.sw, a.phase, a.pitch, xs, tx, ty, a.tq, a.tr);
      dw_stage(dy + (n * a.K + k) * a.P * a.Q, a.P, a.Q, p0, q0, TP, a.tq, 1, 0, a.tq, ys, tx, ty, a.tq, a.tr);
      __syncthreads();
      const int np = a.P - p0 < TP ? a.P - p0 : TP, nq = a.Q - q0 < a.tq ? a.Q - q0 : a.tq;
      for (int e = lane + 32 * pg; e < tile_px; e += 32 * pgroups) {
        const int pl = e / a.tq, ql = e - pl * a.tq;
        if (pl >= np || ql >= nq) continue;  // outside the output: no contribution
        const A d = ld_shared(ys + e);
        const A* xb = xs + pl * a.sh * a.pitch + ql;
#pragma unroll
        for (int u = 0; u < kDwTpw; ++u)
          if (toff[u] >= 0) acc[u] = fc_fma(ld_shared(xb + toff[u]), d, acc[u]);
      }
    }
    // fixed-order reductions: xor tree over the warp, then pixel groups in ascending order
#pragma unroll
    for (int u = 0; u < kDwTpw; ++u) {
#pragma unroll
      for (int o = 16; o > 0; o /= 2) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], o);
    }
    __syncthreads();
    if (lane == 0) {
#pragma unroll
      for (int u = 0; u < kDwTpw; ++u) st_shared(red + wi * kDwTpw + u, acc[u]);
    }
    __syncthreads();
    const int tl = int(threadIdx.x);
    if (tl < G * kDwTpw && tb + tl < RS) {
      const int g = tl % G, u = tl / G;
      A s = A(0);
      for (int q = 0; q < pgroups; ++q) s += ld_shared(red + (q * G + g) * kDwTpw + u);
      st_global(wsp + (int64_t(z) * a.K + k) * RS + tb + tl, s);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NHWC (channels_last)

template <typename T, int V>
using DwVec = Vec<T, V>;  // device.h

// y (N, P, Q, K) in memory; x (N, H, W, C); wt [R*S][K]. grid (ceil(Q*K/V / threads), rows of
// N*P from row0 = blockIdx.y + row_base). Thread: V output channels k0.. of one pixel.
template <typename T, int V, bool RELU>
__global__ void __launch_bounds__(dw_fwd_nhwc_threads, 2)
dw_fwd_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ wt, const T* __restrict__ bias,
                   T* __restrict__ y, const DwArgs a, int64_t row_base) {
  using A = acc_t<T>;
  const int KV = a.K / V;
  const int o = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x);
  if (o >= a.Q * KV) return;
  const int q = o / KV, k0 = (o - q * KV) * V;
  const int64_t row = row_base + blockIdx.y;  // n*P + p
  const int64_t n = row / a.P;
  const int p = int(row - n * a.P);
  A acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = bias != nullptr ? to_acc<A>(ld_global(bias + k0 + v)) : A(0);
  const T* xn = x + n * a.H * a.W * a.C;
  for (int r = 0; r < a.R; ++r) {
    const int ih = p * a.sh - a.ph + r * a.dh;
    if (unsigned(ih) >= unsigned(a.H)) continue;
    for (int s = 0; s < a.S; ++s) {
      const int iw = q * a.sw - a.pw + s * a.dw;
      if (unsigned(iw) >= unsigned(a.W)) continue;
      const T* px = xn + (int64_t(ih) * a.W + iw) * a.C;
      const DwVec<T, V> wv = ld_global(reinterpret_cast<const DwVec<T, V>*>(wt + int64_t(r * a.S + s) * a.K + k0));
      if (a.m == 1) {
        const DwVec<T, V> xv = ld_global(reinterpret_cast<const DwVec<T, V>*>(px + k0));
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = fc_fma(to_acc<A>(xv.v[v]), to_acc<A>(wv.v[v]), acc[v]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v)
          acc[v] = fc_fma(to_acc<A>(ld_global(px + (k0 + v) / a.m)), to_acc<A>(wv.v[v]), acc[v]);
      }
    }
  }
  DwVec<T, V> out;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    A t = acc[v];
    if (RELU) t = t < A(0) ? A(0) : t;
    out.v[v] = from_acc<T>(t);
  }
  st_global(reinterpret_cast<DwVec<T, V>*>(y + (row * a.Q + q) * a.K + k0), out);
}

// dx (N, H, W, C) from dy (N, P, Q, K) and wt [R*S][K]. grid (ceil(W*C/V / threads), rows of N*H).
// Thread: V input channels c0.. of one dx pixel, over the contributing taps.
template <typename T, int V>
__global__ void __launch_bounds__(dw_bwd_data_nhwc_threads, 2)
dw_bwd_data_nhwc_kernel(const T* __restrict__ dy, const T* __restrict__ wt, T* __restrict__ dx, const DwArgs a,
                        int64_t row_base) {
  using A = acc_t<T>;
  const int CV = a.C / V;
  const int o = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x);
  if (o >= a.W * CV) return;
  const int wcol = o / CV, c0 = (o - wcol * CV) * V;
  const int64_t row = row_base + blockIdx.y;  // n*H + h
  const int64_t n = row / a.H;
  const int h = int(row - n * a.H);
  A acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = A(0);
  const int hb = h + a.ph, wb = wcol + a.pw;
  const int r1 = dw_first_tap(hb, a.dh, a.sh, a.rstep, a.R), s1 = dw_first_tap(wb, a.dw, a.sw, a.sstep, a.S);
  const T* dyn = dy + n * a.P * a.Q * a.K;
  for (int r = r1; r < a.R; r += a.rstep) {
    const int p = (hb - r * a.dh) / a.sh;  // exact: r contributes
    if (hb - r * a.dh < 0 || p >= a.P) continue;
    for (int s = s1; s < a.S; s += a.sstep) {
      const int q = (wb - s * a.dw) / a.sw;
      if (wb - s * a.dw < 0 || q >= a.Q) continue;
      const T* py = dyn + (int64_t(p) * a.Q + q) * a.K;
      const T* pw = wt + int64_t(r * a.S + s) * a.K;
      if (a.m == 1) {
        const DwVec<T, V> yv = ld_global(reinterpret_cast<const DwVec<T, V>*>(py + c0));
        const DwVec<T, V> wv = ld_global(reinterpret_cast<const DwVec<T, V>*>(pw + c0));
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = fc_fma(to_acc<A>(yv.v[v]), to_acc<A>(wv.v[v]), acc[v]);
      } else {
        for (int j = 0; j < a.m; ++j) {
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const int k = (c0 + v) * a.m + j;
            acc[v] = fc_fma(to_acc<A>(ld_global(py + k)), to_acc<A>(ld_global(pw + k)), acc[v]);
          }
        }
      }
    }
  }
  DwVec<T, V> out;
#pragma unroll
  for (int v = 0; v < V; ++v) out.v[v] = from_acc<T>(acc[v]);
  st_global(reinterpret_cast<DwVec<T, V>*>(dx + (row * a.W + wcol) * a.C + c0), out);
}

// Partial weight (and bias) gradients wsp[z][K*R*S + K] of split z = blockIdx.y: thread (tap t in
// [tap_begin, tap_end), vector of V output channels); tap R*S is the bias (sum of dy). Pixels
// (n, p, q) of [z*chunk, min((z+1)*chunk, N*P*Q)) in order.
template <typename T, int V>
__global__ void __launch_bounds__(dw_bwd_weight_nhwc_threads, 2)
dw_bwd_weight_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ dy, acc_t<T>* __restrict__ wsp,
                          const DwArgs a) {
  using A = acc_t<T>;
  const int KV = a.K / V, RS = a.R * a.S;
  const int o = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x);
  if (o >= (a.tap_end - a.tap_begin) * KV) return;
  const int t = a.tap_begin + o / KV, k0 = (o - (o / KV) * KV) * V;
  const bool is_bias = t == RS;
  const int r = is_bias ? 0 : t / a.S, s = is_bias ? 0 : t - (t / a.S) * a.S;
  const int64_t PQ = int64_t(a.P) * a.Q;
  const int64_t pix0 = int64_t(blockIdx.y) * a.chunk;
  const int64_t pix1 = pix0 + a.chunk < a.items ? pix0 + a.chunk : a.items;
  A acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = A(0);
  if (pix0 < pix1) {
    int64_t n = pix0 / PQ;
    int p = int((pix0 - n * PQ) / a.Q), q = int(pix0 - n * PQ - int64_t(p) * a.Q);
    for (int64_t pix = pix0; pix < pix1; ++pix) {
      const DwVec<T, V> yv = ld_global(reinterpret_cast<const DwVec<T, V>*>(dy + pix * a.K + k0));
      if (is_bias) {
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += to_acc<A>(yv.v[v]);
      } else {
        const int ih = p * a.sh - a.ph + r * a.dh, iw = q * a.sw - a.pw + s * a.dw;
        if (unsigned(ih) < unsigned(a.H) && unsigned(iw) < unsigned(a.W)) {
          const T* px = x + ((n * a.H + ih) * a.W + iw) * a.C;
          if (a.m == 1) {
            const DwVec<T, V> xv = ld_global(reinterpret_cast<const DwVec<T, V>*>(px + k0));
#pragma unroll
            for (int v = 0; v < V; ++v) acc[v] = fc_fma(to_acc<A>(xv.v[v]), to_acc<A>(yv.v[v]), acc[v]);
          } else {
#pragma unroll
            for (int v = 0; v < V; ++v)
              acc[v] = fc_fma(to_acc<A>(ld_global(px + (k0 + v) / a.m)), to_acc<A>(yv.v[v]), acc[v]);
          }
        }
      }
      if (++q == a.Q) {  // next pixel
        q = 0;
        if (++p == a.P) { p = 0; ++n; }
      }
    }
  }
  A* dst = wsp + int64_t(blockIdx.y) * (int64_t(a.K) * RS + a.K);
#pragma unroll
  for (int v = 0; v < V; ++v) st_global(dst + (is_bias ? int64_t(a.K) * RS + k0 + v : int64_t(k0 + v) * RS + t), acc[v]);
}

}  // namespace cuda
}  // namespace fastconv
