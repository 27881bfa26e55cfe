// conv2d backward-weight and backward-bias, deterministic (no float atomics). Device code only.
//
// grad_weight as a split-K implicit GEMM (engine in igemm.cuh):
//   m = (c, r, s) in [0, Cg*R*S), n = output channel kout in the group [0, Kg),
//   k = output pixel (n, p, q) in [0, N*P*Q), split into gridDim.z chunks of k_chunk:
//   ws[z][g*Kg+kout][c][r][s] = sum over the chunk of in[n][g*Cg+c][p*sh-ph+r*dh][q*sw-pw+s*dw]
//                                                     * gout[n][g*Kg+kout][p][q]
// then reduce_splits_kernel sums ws over z in a fixed order into grad_weight.
// grad_bias: bias_grad_kernel, one block per channel, fixed per-thread strides + a tree reduction.
#pragma once

#include "cuda/igemm.cuh"

namespace fastconv {
namespace cuda {

template <typename T>
struct ConvBwdWeightOp {
  using scalar = T;
  using acc = acc_t<T>;

  // A[k][m]: the input tap (c, r, s) = m of output pixel k. Per m: channel offset and tap offsets;
  // one output pixel decoded per pass.
  template <int BM, int BK, int NT>
  struct ALoad : RowTile<acc, BM, BK, NT> {
    using Base = RowTile<acc, BM, BK, NT>;
    int64_t coff[4];  // c * H*W, or -1 outside [0, Cg*R*S)
    int roff[4], soff[4];  // r*dh - ph, s*dw - pw
    int64_t gbase;        // offset of channel g*Cg in image 0
    __device__ __forceinline__ void init(const ConvArgs<T>& a, int tid, int64_t m0, int g) {
      this->set_thread(tid);
      gbase = int64_t(g) * a.Cg * a.HW;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t m = m0 + this->dg * 4 + j;
        const int c = int(m / a.RS), rs = int(m - int64_t(c) * a.RS);
        const int r = rs / a.S, s = rs - r * a.S;
        coff[j] = m < a.M ? int64_t(c) * a.HW : -1;
        roff[j] = r * a.dh - a.ph;
        soff[j] = s * a.dw - a.pw;
      }
    }
    __device__ __forceinline__ void load(const ConvArgs<T>& a, int64_t k0, int64_t kend) {
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        const int64_t pix = k0 + this->kr + ps * Base::RPP;
        acc* v = this->v[ps];
        v[0] = v[1] = v[2] = v[3] = acc(0);
        if (pix >= kend) continue;
        const int64_t n = pix / a.PQ, pq = pix - n * a.PQ;
        const int p = int(pq / a.Q), q = int(pq - int64_t(p) * a.Q);
        const T* img = a.a + n * a.C * a.HW + gbase;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int ih = p * a.sh + roff[j], iw = q * a.sw + soff[j];
          if (coff[j] >= 0 && unsigned(ih) < unsigned(a.H) && unsigned(iw) < unsigned(a.W))
            v[j] = to_acc<acc>(img[coff[j] + int64_t(ih) * a.W + iw]);
        }
      }
    }
  };

  // B[k][n]: grad_output of channel g*Kg+n at output pixel k, contiguous along k within an image.
  // vec_b: P*Q % 4 == 0, float, aligned -> 4 consecutive pixels are one float4 in one plane.
  template <int BN, int BK, int NT>
  struct BLoad : ColTile<acc, BN, BK, NT> {
    using Base = ColTile<acc, BN, BK, NT>;
    int64_t ch[Base::PASSES];  // channel g*Kg+n, or -1 outside [0, Kg)
    __device__ __forceinline__ void init(const ConvArgs<T>& a, int tid, int n0, int g) {
      this->set_thread(tid);
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        const int n = n0 + this->col + ps * Base::CPP;
        ch[ps] = n < a.Ncols ? int64_t(g) * a.Kg + n : -1;
      }
    }
    __device__ __forceinline__ void load(const ConvArgs<T>& a, int64_t k0, int64_t kend) {
      const int64_t kb = k0 + this->kg * 4;
      int64_t img[4], pq[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        img[i] = (kb + i) / a.PQ;
        pq[i] = (kb + i) - img[i] * a.PQ;
      }
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        acc* v = this->v[ps];
        v[0] = v[1] = v[2] = v[3] = acc(0);
        if (ch[ps] < 0) continue;
        if constexpr (std::is_same<T, float>::value) {
          if (a.vec_b) {  // kend % 4 == 0
            if (kb < kend) {
              const float4 x = __ldg(reinterpret_cast<const float4*>(
                  a.b + (img[0] * a.K + ch[ps]) * a.PQ + pq[0]));
              v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
            }
            continue;
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (kb + i < kend) v[i] = to_acc<acc>(a.b[(img[i] * a.K + ch[ps]) * a.PQ + pq[i]]);
      }
    }
  };

  // Split z covers output pixels [z*k_chunk, min((z+1)*k_chunk, N*P*Q)).
  static __device__ __forceinline__ void k_range(const ConvArgs<T>& a, int z, int64_t& kbeg, int64_t& kend) {
    kbeg = int64_t(z) * a.k_chunk;
    kend = kbeg + a.k_chunk < a.Kd ? kbeg + a.k_chunk : a.Kd;
  }

  // ws[z][g*Kg+n][m] (acc type), contiguous along m; vec_c: Cg*R*S % 4 == 0 and acc is float.
  template <int BM, int BN, int TM, int TN>
  static __device__ __forceinline__ void epilogue(const ConvArgs<T>& a, const acc (&c)[TM][TN], int tm,
                                                  int tn, int64_t m0, int n0, int g, int z) {
    acc* ws = static_cast<acc*>(a.out) + int64_t(z) * a.K * a.M;
#pragma unroll
    for (int h = 0; h < TM / 4; ++h) {
      const int64_t mrun = m0 + frag_pos<BM, TM>(tm, h * 4);
      if (mrun >= a.M) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int n = n0 + frag_pos<BN, TN>(tn, j);
        if (n >= a.Ncols) continue;
        acc* dst = ws + (int64_t(g) * a.Kg + n) * a.M + mrun;
        if constexpr (std::is_same<acc, float>::value) {
          if (a.vec_c) {
            *reinterpret_cast<float4*>(dst) = make_float4(c[h * 4][j], c[h * 4 + 1][j], c[h * 4 + 2][j],
                                                          c[h * 4 + 3][j]);
            continue;
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (mrun + i < a.M) dst[i] = c[h * 4 + i][j];
      }
    }
  }
};

// Threads per block of reduce_splits_kernel and bias_grad_kernel (its NT): the __launch_bounds__,
// the launcher's block (csrc/cuda/conv2d_launch.h) and benchmarks/cuda_resources.py (which reads
// '<kernel>_threads' for '<kernel>_kernel') all use these, so they cannot disagree.
constexpr int reduce_splits_threads = 256;
constexpr int bias_grad_threads = 256;

// grad_weight[i] = sum_{z < splits} ws[z*total + i], z ascending (deterministic). Grid-stride.
template <typename T>
__global__ void __launch_bounds__(reduce_splits_threads)
reduce_splits_kernel(const acc_t<T>* __restrict__ ws, T* __restrict__ out, int64_t total, int splits) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    acc_t<T> s = ws[i];
    for (int z = 1; z < splits; ++z) s += ws[int64_t(z) * total + i];
    out[i] = from_acc<T>(s);
  }
}

// grad_bias[k] = sum over n, p, q of gout[n][k][p][q]. One block per channel (blockIdx.x = k);
// thread t sums plane elements t, t+NT, ... of every image in order, then a fixed tree reduction.
template <typename T, int NT>
__global__ void __launch_bounds__(NT)
bias_grad_kernel(const T* __restrict__ gout, T* __restrict__ gbias, int64_t N, int K, int64_t PQ) {
  using A = acc_t<T>;
  static_assert((NT & (NT - 1)) == 0, "NT must be a power of two");
  FC_DYNAMIC_SHARED(unsigned char, smem);
  A* part = reinterpret_cast<A*>(smem);  // [NT]
  const int k = blockIdx.x;
  A s = A(0);
  for (int64_t n = 0; n < N; ++n) {
    const T* plane = gout + (n * K + k) * PQ;
    for (int64_t i = threadIdx.x; i < PQ; i += NT) s += to_acc<A>(plane[i]);
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int width = NT / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) part[threadIdx.x] += part[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) gbias[k] = from_acc<T>(part[0]);
}

}  // namespace cuda
}  // namespace fastconv
