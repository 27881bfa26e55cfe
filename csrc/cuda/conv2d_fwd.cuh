// conv2d forward as an implicit GEMM (engine in igemm.cuh). Device code only.
//   m = output pixel (n, p, q) in [0, N*P*Q), n = output channel k in the group [0, Kg),
//   k = (c, r, s) in [0, Cg*R*S):  out[n][g*Kg+k][p][q] = sum in[n][g*Cg+c][p*sh-ph+r*dh][q*sw-pw+s*dw]
//                                                           * w[g*Kg+k][c][r][s]  (+ bias, ReLU)
#pragma once

#include "cuda/igemm.cuh"

namespace fastconv {
namespace cuda {

template <typename T, bool RELU>
struct ConvFwdOp {
  using scalar = T;
  using acc = acc_t<T>;

  // A[k][m]: the input pixel tap. A thread stages 4 consecutive taps k = (c, r, s) of one output
  // pixel per pass (ColTile), so it keeps only that pixel's image offset and window origin; the
  // taps after the first are reached by incrementing (s, r, c) instead of dividing.
  template <int BM, int BK, int NT>
  struct ALoad : ColTile<acc, BM, BK, NT> {
    using Base = ColTile<acc, BM, BK, NT>;
    int64_t off[Base::PASSES];     // (n*C + g*Cg) * H*W
    int ih0[Base::PASSES], iw0[Base::PASSES];  // window origin; ih0 = kNoRow past the last pixel
    static constexpr int kNoRow = -(1 << 30);
    __device__ __forceinline__ void init(const ConvArgs<T>& a, int tid, int64_t m0, int g) {
      this->set_thread(tid);
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        const int64_t m = m0 + this->col + ps * Base::CPP;
        const int64_t n = m / a.PQ, pq = m - n * a.PQ;
        const int p = int(pq / a.Q), q = int(pq - int64_t(p) * a.Q);
        off[ps] = (n * a.C + int64_t(g) * a.Cg) * a.HW;
        ih0[ps] = m < a.M ? p * a.sh - a.ph : kNoRow;
        iw0[ps] = q * a.sw - a.pw;
      }
    }
    __device__ __forceinline__ void load(const ConvArgs<T>& a, int64_t k0, int64_t kend) {
      const int64_t kb = k0 + this->kg * 4;
      int c = int(kb / a.RS), rs = int(kb - int64_t(c) * a.RS);
      int r = rs / a.S, s = rs - r * a.S;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool kin = kb + i < kend;
#pragma unroll
        for (int ps = 0; ps < Base::PASSES; ++ps) {
          const int ih = ih0[ps] + r * a.dh, iw = iw0[ps] + s * a.dw;
          this->v[ps][i] = (kin && unsigned(ih) < unsigned(a.H) && unsigned(iw) < unsigned(a.W))
                               ? to_acc<acc>(a.a[off[ps] + int64_t(c) * a.HW + int64_t(ih) * a.W + iw])
                               : acc(0);
        }
        if (++s == a.S) {  // next tap
          s = 0;
          if (++r == a.R) { r = 0; ++c; }
        }
      }
    }
  };

  // B[k][n]: weight row of output channel g*Kg+n, contiguous along k = (c, r, s).
  // vec_b: Cg*R*S % 4 == 0, float, aligned -> one float4 per pass.
  template <int BN, int BK, int NT>
  struct BLoad : ColTile<acc, BN, BK, NT> {
    using Base = ColTile<acc, BN, BK, NT>;
    int64_t row[Base::PASSES];  // offset of the weight row, or -1 outside [0, Kg)
    __device__ __forceinline__ void init(const ConvArgs<T>& a, int tid, int n0, int g) {
      this->set_thread(tid);
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        const int n = n0 + this->col + ps * Base::CPP;
        row[ps] = n < a.Ncols ? (int64_t(g) * a.Kg + n) * a.Kd : -1;
      }
    }
    __device__ __forceinline__ void load(const ConvArgs<T>& a, int64_t k0, int64_t kend) {
      const int64_t kb = k0 + this->kg * 4;
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        acc* v = this->v[ps];
        v[0] = v[1] = v[2] = v[3] = acc(0);
        if (row[ps] < 0) continue;
        if constexpr (std::is_same<T, float>::value) {
          if (a.vec_b) {  // kend % 4 == 0: the 4 taps are all in range or all out
            if (kb < kend) {
              const float4 x = __ldg(reinterpret_cast<const float4*>(a.b + row[ps] + kb));
              v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
            }
            continue;
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (kb + i < kend) v[i] = to_acc<acc>(a.b[row[ps] + kb + i]);
      }
    }
  };

  static __device__ __forceinline__ void k_range(const ConvArgs<T>& a, int, int64_t& kbeg, int64_t& kend) {
    kbeg = 0;
    kend = a.Kd;
  }

  template <int BM, int BN, int TM, int TN>
  static __device__ __forceinline__ void epilogue(const ConvArgs<T>& a, const acc (&c)[TM][TN], int tm,
                                                  int tn, int64_t m0, int n0, int g, int) {
    store_nchw<T, RELU, BM, BN, TM, TN>(static_cast<T*>(a.out), a.bias, c, tm, tn, m0, n0, g, a.M,
                                        a.Ncols, a.K, a.PQ, a.vec_c);
  }
};

}  // namespace cuda
}  // namespace fastconv
