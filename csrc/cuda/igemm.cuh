// Implicit-GEMM engine shared by the three convolution kernels (conv2d_fwd, conv2d_bwd_data,
// conv2d_bwd_weight). Device code only.
//
// Each op is a GEMM  C[m][n] = sum_k A[k][m] * B[k][n]  whose operands are gathered on the fly from
// NCHW tensors (no im2col buffer). A block computes a BM x BN tile of C with NT = (BM/TM)*(BN/TN)
// threads; each thread owns a TM x TN register tile. K is walked in steps of BK through two
// shared-memory buffers (double buffering): while the block multiplies buffer t&1, every thread
// already holds tile t+1 in registers and stores it to the other buffer afterwards, so one barrier
// per K step suffices.
//
// Shared memory (dynamic, 16-byte aligned): As[2][BK][BM], Bs[2][BK][BN] in the accumulation type.
// A thread's rows are TM/4 runs of 4 consecutive rows, the runs BM*4/TM apart (columns likewise),
// so 8 consecutive threads read 128 contiguous bytes of a row (no bank conflicts) and the epilogue
// stores runs of 4 consecutive output pixels.
#pragma once

#include "cuda/device.h"

namespace fastconv {
namespace cuda {

// Everything a convolution kernel needs; sizes < 2^31 are int (the launcher checks), products that
// index whole tensors are int64.
template <typename T>
struct ConvArgs {
  const T* a;       // fwd: input      bwd_data: grad_output  bwd_weight: input
  const T* b;       // fwd: weight     bwd_data: weight       bwd_weight: grad_output
  const T* bias;    // fwd only (may be null)
  void* out;        // fwd: output T   bwd_data: grad_input T bwd_weight: workspace acc_t
  int64_t N;
  int C, H, W, K, R, S, P, Q;
  int sh, sw, ph, pw, dh, dw;
  int groups, Cg, Kg, RS;
  int64_t HW, PQ;
  int64_t M;        // GEMM rows:  fwd N*P*Q, bwd_data N*H*W, bwd_weight Cg*R*S
  int Ncols;        // GEMM cols per group: fwd Kg, bwd_data Cg, bwd_weight Kg
  int64_t Kd;       // GEMM depth: fwd Cg*R*S, bwd_data Kg*R*S, bwd_weight N*P*Q
  int64_t k_chunk;  // depth handled by one blockIdx.z (split-K); a multiple of BK
  int tiles_n;      // ceil(Ncols / BN): blockIdx.y = (group - group0) * tiles_n + n-tile
  int group0;       // first group of this launch (grids are chunked when groups is huge)
  bool vec_b;       // 16-byte loads of B are legal
  bool vec_c;       // 16-byte stores of the output are legal
};

// Position of a thread's i-th row (or column) inside the tile: runs of 4, runs D*4/TD apart.
template <int D, int TD>
__device__ __forceinline__ int frag_pos(int t, int i) {
  return (i / 4) * (D * 4 / TD) + t * 4 + (i % 4);
}

// Copy 4 consecutive values (16-byte aligned for float).
template <typename A>
__device__ __forceinline__ void copy4(A* dst, const A* src) {
  if constexpr (std::is_same<A, float>::value) {
    *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
  } else {
    dst[0] = src[0]; dst[1] = src[1]; dst[2] = src[2]; dst[3] = src[3];
  }
}

// Register staging of an A-style tile [BK][D]: per pass, 4 consecutive positions along D at one k.
// Thread t covers d = (t % TPR)*4 .. +3 and k = t / TPR + pass*RPP.
template <typename A, int D, int BK, int NT>
struct RowTile {
  static constexpr int TPR = D / 4;        // threads per k row
  static constexpr int RPP = NT / TPR;     // k rows per pass
  static constexpr int PASSES = BK / RPP;
  static_assert(D % 4 == 0 && NT % TPR == 0 && RPP <= BK && BK % RPP == 0, "RowTile shape");
  A v[PASSES][4];
  int dg, kr;  // this thread's position group along D, first k row
  __device__ __forceinline__ void set_thread(int tid) { dg = tid % TPR; kr = tid / TPR; }
  __device__ __forceinline__ void store(A* s) const {
#pragma unroll
    for (int p = 0; p < PASSES; ++p) copy4(s + (kr + p * RPP) * D + dg * 4, v[p]);
  }
};

// Register staging of a B-style tile [BK][D]: per pass, 4 consecutive k at one position along D.
// Thread t covers k = (t % GPC)*4 .. +3 and d = t / GPC + pass*CPP.
template <typename A, int D, int BK, int NT>
struct ColTile {
  static constexpr int GPC = BK / 4;       // 4-groups of k per column
  static constexpr int CPP = NT / GPC;     // columns per pass
  static constexpr int PASSES = D / CPP;
  static_assert(BK % 4 == 0 && NT % GPC == 0 && CPP <= D && D % CPP == 0, "ColTile shape");
  A v[PASSES][4];
  int kg, col;
  __device__ __forceinline__ void set_thread(int tid) { kg = tid % GPC; col = tid / GPC; }
  __device__ __forceinline__ void store(A* s) const {
#pragma unroll
    for (int p = 0; p < PASSES; ++p)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[(kg * 4 + i) * D + col + p * CPP] = v[p][i];
  }
};

// acc[TM][TN] += As[BK][BM]^T-fragment x Bs[BK][BN]-fragment for one shared-memory stage.
template <typename A, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void mma_stage(const A* __restrict__ As, const A* __restrict__ Bs,
                                          A (&acc)[TM][TN], int tm, int tn) {
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    A a[TM], b[TN];
#pragma unroll
    for (int i = 0; i < TM; i += 4) copy4(a + i, As + kk * BM + frag_pos<BM, TM>(tm, i));
#pragma unroll
    for (int j = 0; j < TN; j += 4) copy4(b + j, Bs + kk * BN + frag_pos<BN, TN>(tn, j));
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fc_fma(a[i], b[j], acc[i][j]);
  }
}

// Dynamic shared memory the engine needs for one block.
template <typename A, int BM, int BN, int BK>
constexpr int igemm_smem_bytes() { return 2 * BK * (BM + BN) * int(sizeof(A)); }

// The engine. Op supplies: acc (accumulator type), ALoad<BM,BK,NT> / BLoad<BN,BK,NT> (a RowTile
// or ColTile with init(args, tid, tile_start, group) and load(args, k0, kend)), k_range(args, z, &kbeg,
// &kend) and epilogue<BM,BN,TM,TN>(args, acc, tm, tn, m0, n0, group, z).
// Blocks per SM the register allocation must allow: 65536 / (NT * min_blocks) = 128 registers a
// thread for 256- and 128-thread blocks (two / four resident blocks).
// fp64 (gradcheck, not speed) is left unconstrained.
template <int NT, typename A>
constexpr int igemm_min_blocks() { return sizeof(A) > 4 ? 1 : (NT >= 256 ? 2 : 4); }

template <class Op, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), igemm_min_blocks<(BM / TM) * (BN / TN), typename Op::acc>())
igemm_kernel(const ConvArgs<typename Op::scalar> args) {
  using A = typename Op::acc;
  constexpr int NT = (BM / TM) * (BN / TN);
  static_assert(TM % 4 == 0 && TN % 4 == 0 && BM % TM == 0 && BN % TN == 0, "tile shape");
  FC_DYNAMIC_SHARED(unsigned char, smem);
  A* As = reinterpret_cast<A*>(smem);  // [2][BK][BM]
  A* Bs = As + 2 * BK * BM;            // [2][BK][BN]

  const int tid = threadIdx.x;
  const int tm = tid % (BM / TM), tn = tid / (BM / TM);
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int g = args.group0 + int(blockIdx.y) / args.tiles_n;
  const int n0 = (int(blockIdx.y) % args.tiles_n) * BN;
  int64_t kbeg, kend;
  Op::k_range(args, int(blockIdx.z), kbeg, kend);

  typename Op::template ALoad<BM, BK, NT> la;
  typename Op::template BLoad<BN, BK, NT> lb;
  la.init(args, tid, m0, g);
  lb.init(args, tid, n0, g);

  A acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = A(0);

  const int64_t ntiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;  // uniform in the block
  if (ntiles > 0) {
    la.load(args, kbeg, kend);
    lb.load(args, kbeg, kend);
    la.store(As);
    lb.store(Bs);
    __syncthreads();
    for (int64_t t = 0; t < ntiles; ++t) {
      const int cur = int(t & 1);
      const bool more = t + 1 < ntiles;
      if (more) {  // fetch the next K step into registers while this one is multiplied
        la.load(args, kbeg + (t + 1) * BK, kend);
        lb.load(args, kbeg + (t + 1) * BK, kend);
      }
      mma_stage<A, BM, BN, BK, TM, TN>(As + cur * BK * BM, Bs + cur * BK * BN, acc, tm, tn);
      if (more) {
        la.store(As + (cur ^ 1) * BK * BM);
        lb.store(Bs + (cur ^ 1) * BK * BN);
      }
      __syncthreads();
    }
  }
  Op::template epilogue<BM, BN, TM, TN>(args, acc, tm, tn, m0, n0, g, int(blockIdx.z));
}

// Epilogue shared by forward and backward-data: C[m][n] goes to out[(img*Cout + g*Cgout + n)*plane
// + pix] with m = img*plane + pix; adds bias[g*Cgout + n] when given, then ReLU when RELU.
// vec_c: plane % 4 == 0 and out 16-byte aligned (float), so a run of 4 rows is one float4.
template <typename T, bool RELU, int BM, int BN, int TM, int TN, typename A>
__device__ __forceinline__ void store_nchw(T* __restrict__ out, const T* __restrict__ bias,
                                           const A (&acc)[TM][TN], int tm, int tn, int64_t m0,
                                           int n0, int g, int64_t M, int Ncols, int Cout,
                                           int64_t plane, bool vec_c) {
#pragma unroll
  for (int h = 0; h < TM / 4; ++h) {
    const int64_t mrun = m0 + frag_pos<BM, TM>(tm, h * 4);  // first of 4 consecutive rows
    if (mrun >= M) continue;
    int64_t img[4], pix[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      img[i] = (mrun + i) / plane;
      pix[i] = (mrun + i) - img[i] * plane;
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + frag_pos<BN, TN>(tn, j);
      if (n >= Ncols) continue;
      const int ch = g * Ncols + n;
      const A bv = bias != nullptr ? to_acc<A>(bias[ch]) : A(0);
      A v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v[i] = acc[h * 4 + i][j] + bv;
        if (RELU) v[i] = v[i] < A(0) ? A(0) : v[i];  // keeps NaN and -0.0, as relu does
      }
      if constexpr (std::is_same<T, float>::value) {
        if (vec_c) {  // all 4 rows valid and in one image (plane % 4 == 0, mrun % 4 == 0)
          *reinterpret_cast<float4*>(out + (img[0] * Cout + ch) * plane + pix[0]) =
              make_float4(v[0], v[1], v[2], v[3]);
          continue;
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (mrun + i < M) out[(img[i] * Cout + ch) * plane + pix[i]] = from_acc<T>(v[i]);
    }
  }
}

}  // namespace cuda
}  // namespace fastconv
