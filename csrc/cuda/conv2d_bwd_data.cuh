// conv2d backward-data (grad_input) as an implicit GEMM (engine in igemm.cuh). Device code only.
//   m = input pixel (n, h, w) in [0, N*H*W), n = input channel c in the group [0, Cg),
//   k = (kout, r, s) in [0, Kg*R*S):
//   gin[n][g*Cg+c][h][w] = sum gout[n][g*Kg+kout][p][q] * w[g*Kg+kout][c][r][s]
//   over taps with h + ph - r*dh = p*sh, w + pw - s*dw = q*sw, 0 <= p < P, 0 <= q < Q.
// Taps failing the stride test contribute zero (for stride > 1 a stride-phase decomposition would
// skip them; not done yet).
#pragma once

#include "cuda/igemm.cuh"

namespace fastconv {
namespace cuda {

template <typename T>
struct ConvBwdDataOp {
  using scalar = T;
  using acc = acc_t<T>;

  // A[k][m]: grad_output at the tap that reads input pixel m. A thread stages 4 consecutive taps
  // k = (kout, r, s) of one input pixel per pass (ColTile); it keeps the pixel's grad_output image
  // offset and (h + ph, w + pw), and steps (s, r, kout) by increment.
  template <int BM, int BK, int NT>
  struct ALoad : ColTile<acc, BM, BK, NT> {
    using Base = ColTile<acc, BM, BK, NT>;
    int64_t off[Base::PASSES];  // (n*K + g*Kg) * P*Q
    int hb[Base::PASSES], wb[Base::PASSES];  // h + ph, w + pw; hb = -1 past the last pixel
    __device__ __forceinline__ void init(const ConvArgs<T>& a, int tid, int64_t m0, int g) {
      this->set_thread(tid);
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        const int64_t m = m0 + this->col + ps * Base::CPP;
        const int64_t n = m / a.HW, hw = m - n * a.HW;
        const int h = int(hw / a.W), w = int(hw - int64_t(h) * a.W);
        off[ps] = (n * a.K + int64_t(g) * a.Kg) * a.PQ;
        hb[ps] = m < a.M ? h + a.ph : -1;
        wb[ps] = w + a.pw;
      }
    }
    __device__ __forceinline__ void load(const ConvArgs<T>& a, int64_t k0, int64_t kend) {
      const int64_t kb = k0 + this->kg * 4;
      int ko = int(kb / a.RS), rs = int(kb - int64_t(ko) * a.RS);
      int r = rs / a.S, s = rs - r * a.S;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool kin = kb + i < kend;
#pragma unroll
        for (int ps = 0; ps < Base::PASSES; ++ps) {
          acc v = acc(0);
          const int th = hb[ps] - r * a.dh, tw = wb[ps] - s * a.dw;
          if (kin && th >= 0 && tw >= 0) {
            const int p = th / a.sh, q = tw / a.sw;
            if (p * a.sh == th && q * a.sw == tw && p < a.P && q < a.Q)
              v = to_acc<acc>(a.a[off[ps] + int64_t(ko) * a.PQ + int64_t(p) * a.Q + q]);
          }
          this->v[ps][i] = v;
        }
        if (++s == a.S) {  // next tap
          s = 0;
          if (++r == a.R) { r = 0; ++ko; }
        }
      }
    }
  };

  // B[k][n]: w[g*Kg+kout][c][r][s] with k = (kout, r, s), n = c.
  template <int BN, int BK, int NT>
  struct BLoad : ColTile<acc, BN, BK, NT> {
    using Base = ColTile<acc, BN, BK, NT>;
    int cs[Base::PASSES];  // input channel in the group, or -1 outside [0, Cg)
    int64_t gbase;         // offset of the group's first weight
    __device__ __forceinline__ void init(const ConvArgs<T>& a, int tid, int n0, int g) {
      this->set_thread(tid);
      gbase = int64_t(g) * a.Kg * a.Cg * a.RS;
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        const int c = n0 + this->col + ps * Base::CPP;
        cs[ps] = c < a.Ncols ? c : -1;
      }
    }
    __device__ __forceinline__ void load(const ConvArgs<T>& a, int64_t k0, int64_t kend) {
      const int64_t kb = k0 + this->kg * 4;
      int64_t tap[4];  // offset of w[g*Kg+kout][0][r][s], or -1 past kend
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t kidx = kb + i;
        const int ko = int(kidx / a.RS), rs = int(kidx - int64_t(ko) * a.RS);
        tap[i] = kidx < kend ? gbase + int64_t(ko) * a.Cg * a.RS + rs : -1;
      }
#pragma unroll
      for (int ps = 0; ps < Base::PASSES; ++ps) {
        acc* v = this->v[ps];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          v[i] = (cs[ps] >= 0 && tap[i] >= 0) ? to_acc<acc>(a.b[tap[i] + int64_t(cs[ps]) * a.RS]) : acc(0);
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
    store_nchw<T, false, BM, BN, TM, TN>(static_cast<T*>(a.out), static_cast<const T*>(nullptr), c, tm,
                                         tn, m0, n0, g, a.M, a.Ncols, a.C, a.HW, a.vec_c);
  }
};

}  // namespace cuda
}  // namespace fastconv
