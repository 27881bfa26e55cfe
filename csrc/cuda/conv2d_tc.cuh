// conv2d forward on tensor cores: an NHWC implicit GEMM with a multistage cp.async pipeline.
// Device code only; the launcher (conv2d_launch.h) prepares the operands and picks the tile.
//
//   C[m][n] = sum_k A[m][k] * B[n][k]   m = output pixel (img, p, q) in [0, M = N*P*Q)
//                                       n = output channel in [0, K)
//                                       k = (r, s, c), c innermost, c in [0, C)
//   A[m][(r,s,c)] = x[img][p*sh - ph + r*dh][q*sw - pw + s*dw][c]   (0 outside the image)
//   B[n][(r,s,c)] = w[n][r][s][c]
// x is NHWC, w is KRSC, both with C a multiple of the 16-byte vector (8 halfs / 4 floats; the
// launcher pads 3-channel inputs with zero channels) and 16-byte aligned.
//
// K loop: tap-major, (r, s) outer, C in blocks of BK = 64 bytes (32 halfs, 16 floats) inner, so a
// stage's A row is 64 contiguous bytes of one input pixel and its B row 64 bytes of one weight row;
// channels past C are zero-filled by cp.async (src-size 0). The iterator keeps (r, s, channel block)
// and per-row base offsets and window origins computed once per block: no division in the loop.
//
// Shared memory: STAGES x { A: BM rows x 64 B, B: BN rows x 64 B }. A row is four 16-byte chunks;
// chunk j of row i is stored at chunk slot j ^ ((i >> 1) & 3) of its row. Eight consecutive rows'
// chunk j then fall in eight distinct 16-byte slots of the 32 banks (rows 2i, 2i+1 share one
// 128-byte line), so every 8x8 ldmatrix phase and every 8-lane phase of the 16-byte cp.async
// stores is conflict-free.
//
// Fragments: one mma consumes 32 bytes of k (two chunks): m16n8k16 for f16 / bf16, m16n8k8 TF32
// for float (operands rounded with cvt.rna.tf32). In both, ldmatrix.x4 over (rows 0-7, chunk 0),
// (rows 8-15, chunk 0), (rows 0-7, chunk 1), (rows 8-15, chunk 1) gives the A fragment, and over
// (n 0-7, chunk 0), (n 0-7, chunk 1), (n 8-15, chunk 0), (n 8-15, chunk 1) two B fragments.
//
// Epilogue from the accumulators: + bias, ReLU, converted to T, stored NHWC (the lane's two
// adjacent channels in one store when K is even) or NCHW into out (N, K, OH, OW): GEMM pixel
// (img, p, q) goes to row p*osh + oh0, column q*osw + ow0 (the forward: OH = P, OW = Q, stride 1,
// offset 0; a phase of the strided backward-data: every s-th input pixel, conv2d_launch.h).
#pragma once

#include <cstring>

#include "cuda/mma.h"
#include "cuda/tc_configs.h"

namespace fastconv {
namespace cuda {

template <typename T>
struct TcConvArgs {
  const T* x;      // [N][H][W][C]
  const T* w;      // [K][R][S][C]
  const T* bias;   // [K] or null
  T* out;          // [N][P][Q][K] (out_nchw false) or [N][K][P][Q]
  int64_t M;       // N*P*Q
  int64_t PQ;      // P*Q
  int H, W, C, K, R, S;
  int sh, sw, ph, pw, dh, dw;
  int Q;
  int OH, OW, osh, osw, oh0, ow0;  // output placement (the epilogue above)
  int cblocks;     // ceil(C / BK)
  bool relu, out_nchw;
  bool pair_store; // NHWC output with K even: one 2-element store per lane and channel pair
};

// Two adjacent output elements stored at once (4 bytes for half types, 8 for float).
template <typename T>
struct alignas(2 * sizeof(T)) TcPair {
  T v[2];
};

// The mma for T over 32 bytes of k.
__device__ __forceinline__ void tc_mma(at::Half, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_m16n8k16_f16(d, a, b, d);
}
__device__ __forceinline__ void tc_mma(at::BFloat16, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_m16n8k16_bf16(d, a, b, d);
}
__device__ __forceinline__ void tc_mma(float, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_m16n8k8_tf32(d, a, b, d);
}
// float operands are rounded to TF32 (nearest) once loaded; half types pass unchanged.
template <typename T, int N>
__device__ __forceinline__ void tc_round(uint32_t (&r)[N]) {
  if constexpr (std::is_same<T, float>::value) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float f;
      memcpy(&f, &r[i], 4);
      r[i] = to_tf32(f);
    }
  }
}

// Byte offset of 16-byte chunk j of row i in a 64-byte-row operand (the XOR swizzle above).
__device__ __forceinline__ int tc_swz(int row, int chunk) { return row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4); }

// MIN_BLOCKS (the kernels' __launch_bounds__ minimum): kTcConfig's blocks_per_sm, so the register
// allocation allows that many resident blocks.
template <int BM, int BN, int WM, int WN, int STAGES>
struct TcTile {
  static constexpr int kThreads = 32 * WM * WN;
  static constexpr int kWarpM = BM / WM, kWarpN = BN / WN;  // warp tile
  static constexpr int kMI = kWarpM / 16, kNI = kWarpN / 8;  // mma tiles per warp
  static constexpr int kARows = BM * 4 / kThreads;           // 16-byte chunks per thread per stage
  static constexpr int kBRows = BN * 4 / kThreads;
  static constexpr int kStageBytes = (BM + BN) * 64;
  static constexpr int kSmem = STAGES * kStageBytes;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0 && kARows >= 1 && kBRows >= 1, "tile shape");
};

// The accumulators of a warp tile, zeroed.
template <int MI, int NI>
__device__ __forceinline__ void tc_zero(float (&acc)[MI][NI][4]) {
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

// The multistage cp.async pipeline of the tensor-core kernels over K tiles 0 .. ktiles-1:
// load_stage(slot) issues this thread's copies of the next K tile into stage slot, compute(slot)
// consumes stage slot. Stages 0 .. STAGES-2 go in flight first (one commit group each, empty past
// the last tile); before tile kt is consumed its copies have landed for every thread (wait, then
// barrier), which also means everyone is done with the stage tile kt+STAGES-1 then refills.
// Nothing is in flight on return.
template <int STAGES, class Load, class Compute>
__device__ __forceinline__ void tc_pipeline(int ktiles, Load&& load_stage, Compute&& compute) {
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < ktiles) load_stage(st);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (kt + STAGES - 1 < ktiles) load_stage((kt + STAGES - 1) % STAGES);
    cp_async_commit();
    compute(kt % STAGES);
  }
  cp_async_wait_all();
}

template <typename T, int BM, int BN, int WM, int WN, int STAGES, int MIN_BLOCKS>
__global__ void __launch_bounds__(32 * WM * WN, MIN_BLOCKS)
conv2d_tc_kernel(const TcConvArgs<T> a) {
  using Tile = TcTile<BM, BN, WM, WN, STAGES>;
  constexpr int NT = Tile::kThreads, VEC = 16 / int(sizeof(T)), BK = 64 / int(sizeof(T));
  FC_DYNAMIC_SHARED(unsigned char, smem);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  const int n0 = int(blockIdx.y) * BN;

  // This thread's 16-byte chunks: rows tid/4 + i*NT/4 of A and B, chunk tid%4 of each row.
  const int chunk = tid % 4;
  const int st_off = tc_swz(tid / 4, chunk);  // + i*(NT/4) rows: a multiple of 16, same swizzle
  int a_pix[Tile::kARows];  // img * H*W: the image's first pixel (N*H*W < 2^31: the launcher checks)
  int a_ih0[Tile::kARows], a_iw0[Tile::kARows];  // window origin; a_ih0 = -2^30 for rows >= M
#pragma unroll
  for (int i = 0; i < Tile::kARows; ++i) {
    const int64_t m = m0 + tid / 4 + i * (NT / 4);
    const int64_t img = m / a.PQ, pq = m - img * a.PQ;
    const int p = int(pq / a.Q), q = int(pq - int64_t(p) * a.Q);
    a_pix[i] = int(img) * a.H * a.W;
    a_ih0[i] = m < a.M ? p * a.sh - a.ph : -(1 << 30);
    a_iw0[i] = q * a.sw - a.pw;
  }
  // B rows n0 + tid/4 + i*NT/4: offset b_row0 + i*b_step (< 2^31: the launcher checks), valid
  // where bit i of b_ok is set (n < K)
  const int b_step = (NT / 4) * a.R * a.S * a.C;
  const int b_row0 = (n0 + tid / 4) * a.R * a.S * a.C;
  unsigned b_ok = 0;
#pragma unroll
  for (int i = 0; i < Tile::kBRows; ++i) b_ok |= unsigned(n0 + tid / 4 + i * (NT / 4) < a.K) << i;

  // The K iterator: tap (r, s), its offsets r*dh, s*dw, (r*S + s)*C, and the channel block.
  int r = 0, s = 0, rdh = 0, sdw = 0, cb = 0, tap_c = 0;
  const int ktiles = a.R * a.S * a.cblocks;

  auto load_stage = [&](int stage) {
    unsigned char* As = smem + stage * Tile::kStageBytes;
    unsigned char* Bs = As + BM * 64;
    const int c = cb * BK + chunk * VEC;
    const bool cin = c < a.C;
#pragma unroll
    for (int i = 0; i < Tile::kARows; ++i) {
      const int ih = a_ih0[i] + rdh, iw = a_iw0[i] + sdw;
      const bool ok = cin && unsigned(ih) < unsigned(a.H) && unsigned(iw) < unsigned(a.W);
      const T* src = ok ? a.x + int64_t(a_pix[i] + ih * a.W + iw) * a.C + c : a.x;
      cp_async_cg(As + st_off + i * (NT / 4) * 64, src, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < Tile::kBRows; ++i) {
      const bool ok = cin && (b_ok >> i & 1u);
      const T* src = ok ? a.w + (b_row0 + i * b_step + tap_c + c) : a.w;
      cp_async_cg(Bs + st_off + i * (NT / 4) * 64, src, ok ? 16 : 0);
    }
    // next K tile
    if (++cb == a.cblocks) {
      cb = 0;
      tap_c += a.C;
      sdw += a.dw;
      if (++s == a.S) {
        s = 0;
        sdw = 0;
        rdh += a.dh;
        ++r;
      }
    }
  };

  float acc[Tile::kMI][Tile::kNI][4];
  tc_zero(acc);

  const int wm = warp % WM, wn = warp / WM;
  // ldmatrix row addresses of this lane: A rows (lane%8) + 8*((lane/8)%2), chunk +lane/16;
  // B rows (lane%8) + 8*(lane/16), chunk +(lane/8)%2.
  // Rows 16 apart have the same swizzle, so the lane's byte offsets for k step ks are computed
  // once; fragment i / j adds i*16 (j*8) rows.
  const int a_lrow = wm * Tile::kWarpM + lane % 8 + 8 * ((lane / 8) % 2), a_lchunk = lane / 16;
  const int b_lrow = wn * Tile::kWarpN + lane % 8 + 8 * (lane / 16), b_lchunk = (lane / 8) % 2;
  const int a_off[2] = {tc_swz(a_lrow, a_lchunk), tc_swz(a_lrow, 2 + a_lchunk)};
  const int b_off[2] = {tc_swz(b_lrow, b_lchunk), tc_swz(b_lrow, 2 + b_lchunk)};

  tc_pipeline<STAGES>(ktiles, load_stage, [&](int slot) {
    const unsigned char* As = smem + slot * Tile::kStageBytes;
    const unsigned char* Bs = As + BM * 64;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two 32-byte k steps per stage
      // all B fragments of the warp tile, then one A fragment at a time (fewer live registers)
      uint32_t bf[Tile::kNI][2];
#pragma unroll
      for (int j = 0; j < Tile::kNI; j += 2) {
        uint32_t t4[4];
        ldmatrix_x4(t4, Bs + b_off[ks] + j * 8 * 64);
        tc_round<T>(t4);
        bf[j][0] = t4[0]; bf[j][1] = t4[1];
        bf[j + 1][0] = t4[2]; bf[j + 1][1] = t4[3];
      }
#pragma unroll
      for (int i = 0; i < Tile::kMI; ++i) {
        uint32_t af[4];
        ldmatrix_x4(af, As + a_off[ks] + i * 16 * 64);
        tc_round<T>(af);
#pragma unroll
        for (int j = 0; j < Tile::kNI; ++j) tc_mma(T(), acc[i][j], af, bf[j]);
      }
    }
  });

  // Epilogue: accumulator c[e] of tile (i, j) is C[row g + 8*(e/2)][col 2t + e%2].
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < Tile::kMI; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + wm * Tile::kWarpM + i * 16 + g + 8 * h;
      if (m >= a.M) continue;
      const int64_t img = m / a.PQ, pq = m - img * a.PQ;
      const int p = int(pq / a.Q), q = int(pq - int64_t(p) * a.Q);
      const int64_t OHW = int64_t(a.OH) * a.OW;
      const int64_t opix = int64_t(p * a.osh + a.oh0) * a.OW + (q * a.osw + a.ow0);  // in the image
      // out index of (m, n) = base + n * step
      const int64_t base = a.out_nchw ? img * a.K * OHW + opix : (img * OHW + opix) * a.K;
      const int64_t step = a.out_nchw ? OHW : 1;
#pragma unroll
      for (int j = 0; j < Tile::kNI; ++j) {
        const int n = n0 + wn * Tile::kWarpN + j * 8 + 2 * t;  // this lane's two channels n, n+1
        T y[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = acc[i][j][2 * h + e];
          if (a.bias != nullptr && n + e < a.K) v += static_cast<float>(a.bias[n + e]);
          if (a.relu) v = v < 0.f ? 0.f : v;  // keeps NaN and -0.0, as relu does
          y[e] = from_acc<T>(v);
        }
        if (a.pair_store) {  // NHWC, K even: n, n+1 adjacent and 2-element aligned
          if (n < a.K) st_global(reinterpret_cast<TcPair<T>*>(a.out + base + n), TcPair<T>{{y[0], y[1]}});
          continue;
        }
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (n + e < a.K) st_global(a.out + base + (n + e) * step, y[e]);
      }
    }
  }
}

}  // namespace cuda
}  // namespace fastconv
