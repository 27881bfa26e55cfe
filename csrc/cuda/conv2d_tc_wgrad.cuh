// conv2d weight gradient on tensor cores: an NHWC implicit GEMM, split-K over the output pixels,
// with the same tiles, pipeline and mma as the forward (conv2d_tc.cuh). Device code only; the
// launcher (conv2d_launch.h) prepares the operands, picks the tile and the split count.
//
//   D[m][n] = sum_k A[m][k] * B[k][n]   m = output channel in [0, K)
//                                       n = (r, s, c), c innermost, in [0, R*S*Cp)
//                                       k = output pixel (img, p, q) in [0, N*P*Q)
//   A[m][k] = dy[k][m]                                           (dy NHWC, [N*P*Q][Kp])
//   B[k][(r,s,c)] = x[img][p*sh - ph + r*dh][q*sw - pw + s*dw][c]  (x NHWC, 0 outside the image)
// Kp, Cp: K and C padded to the 16-byte vector (zero channels). Split z of gridDim.z sums the
// pixels [z*chunk, min((z+1)*chunk, N*P*Q)) into ws[z][m][n] (fp32); reduce_splits_kernel then
// sums the splits in order (deterministic, no atomics).
//
// K loop: BK = 64 bytes' worth of pixels per stage (32 for f16 / bf16, 16 for float). Both operands
// are stored pixel-major: smem row (b, k) = b * BK + k holds 64 bytes (BK elements) of block b of
// the tile's m (or n) range at pixel k, so every 16-byte chunk is one cp.async of 8 halfs / 4 floats
// that are contiguous in the NHWC tensor. Thread tid copies chunk tid % 4 of rows tid / 4 + i*NT/4;
// NT/4 is a multiple of BK, so a thread always copies the same pixel row k = (tid/4) % BK of a
// stage, and its pixel (img, p, q) advances by BK pixels per stage without a division (the launcher
// splits BK = st_img*P*Q + st_p*Q + st_q). Its B chunks' taps (r, s) and channels are fixed and
// computed once.
//
// Swizzle: chunk j of row i is stored at slot j ^ f(i), f(i) = 2*bit1(i) + bit2(i) (bits 1 and 2 of
// i swapped). The eight rows of an aligned 8-row group: even rows get the four distinct f values,
// odd rows too, so an 8x8 ldmatrix phase (8 rows, one chunk) hits 8 distinct 16-byte bank groups;
// rows i and i+2 (same banks: 64-byte rows, two per 128-byte line) differ in bit 1 of f, so the
// TF32 fragment loads below (rows t = 0..3, chunks {2h, 2h+1}) are conflict-free too; the cp.async
// stores (rows 2i, 2i+1, all four chunks per 8 lanes) are a permutation of one 128-byte line.
//
// Fragments: A (m x k) and B (k x n) are both k-major in shared memory.
//   f16 / bf16, m16n8k16: ldmatrix.x4.trans. A: matrices (k 0-7, m 0-7), (k 0-7, m 8-15),
//   (k 8-15, m 0-7), (k 8-15, m 8-15): lane gets A[g][2t..2t+1] etc. B: (k 0-7, n 0-7),
//   (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15): two B fragments.
//   float, m16n8k8 TF32: one 32-bit lds per register, A[g][t] = row t, column g (+8, row +4),
//   B[t][g] = row t, column g (row +4), rounded with cvt.rna.tf32.
//
// Epilogue: the accumulators as float2 pairs into ws[z][m][n] (n even, R*S*Cp even).
//
// Bias gradient (a.wsb set): grad_bias[m] = sum_k A[m][k], the row sums of the A operand. The
// blocks of the first column tile (blockIdx.x == 0) already stage every dy element of their m
// range once per split, so their threads each sum one channel's column (two, where the block has
// fewer threads than BM) of every A stage in smem, pixels in order (fp32, exact for float: no TF32 rounding), and store the split's sum
// into wsb[z][m]; reduce_splits_kernel sums the splits in order like the weights' (deterministic,
// no atomics). The other blocks do no extra work.
#pragma once

#include "cuda/conv2d_tc.cuh"

namespace fastconv {
namespace cuda {

template <typename T>
struct TcWgradArgs {
  const T* dy;    // [N*P*Q][Kp]
  const T* x;     // [N][H][W][Cp]
  float* ws;      // [gridDim.z][K][rsc]
  float* wsb;     // [gridDim.z][K] bias gradient partial sums, or nullptr: no bias gradient
  int64_t npq;    // N*P*Q
  int64_t chunk;  // pixels per split, a multiple of BK
  int H, W, Cp, Kp, K, S, P, Q;
  int sh, sw, ph, pw, dh, dw;
  int rsc;                // R*S*Cp
  int st_img, st_p, st_q; // BK = st_img*P*Q + st_p*Q + st_q, st_p < P, st_q < Q
};

// Byte offset of 16-byte chunk j of smem row i (the swizzle above).
__device__ __forceinline__ int wg_swz(int row, int chunk) {
  return row * 64 + ((chunk ^ (((row >> 1) & 1) << 1 | ((row >> 2) & 1))) << 4);
}

template <typename T, int BM, int BN, int WM, int WN, int STAGES, int MIN_BLOCKS>
__global__ void __launch_bounds__(32 * WM * WN, MIN_BLOCKS)
conv2d_tc_wgrad_kernel(const TcWgradArgs<T> a) {
  using Tile = TcTile<BM, BN, WM, WN, STAGES>;
  constexpr int NT = Tile::kThreads, VEC = 16 / int(sizeof(T)), BK = 64 / int(sizeof(T));
  constexpr bool kF32 = std::is_same<T, float>::value;
  static_assert((NT / 4) % BK == 0 && Tile::kWarpM % BK == 0 && Tile::kWarpN % BK == 0, "wgrad tile shape");
  FC_DYNAMIC_SHARED(unsigned char, smem);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int n0 = int(blockIdx.x) * BN, m0 = int(blockIdx.y) * BM;
  const int64_t kbeg = int64_t(blockIdx.z) * a.chunk;
  const int64_t kend = kbeg + a.chunk < a.npq ? kbeg + a.chunk : a.npq;
  const int ktiles = int((kend - kbeg + BK - 1) / BK);

  // This thread's copies: chunk tid%4 of rows tid/4 + i*NT/4, i.e. pixel row kr of the stage and
  // column blocks (tid/4)/BK + i*NT/(4*BK) of the tile.
  const int chunk = tid % 4, kr = (tid / 4) % BK;
  const int st_off = wg_swz(tid / 4, chunk);  // + i*(NT/4) rows: a multiple of 8, same swizzle
  const int col0 = ((tid / 4) / BK) * BK + chunk * VEC;  // + i * (NT/4/BK) * BK
  constexpr int kColStep = (NT / 4 / BK) * BK;
  // A: output channels m0 + col0 + i*kColStep (< Kp: bit i of a_ok)
  unsigned a_ok = 0;
#pragma unroll
  for (int i = 0; i < Tile::kARows; ++i) a_ok |= unsigned(m0 + col0 + i * kColStep < a.Kp) << i;
  // B: columns n0 + col0 + i*kColStep = (r, s, c): tap offsets r*dh - ph, s*dw - pw, channel c
  // (-1 past R*S*Cp)
  int b_ro[Tile::kBRows], b_so[Tile::kBRows], b_c[Tile::kBRows];
#pragma unroll
  for (int i = 0; i < Tile::kBRows; ++i) {
    const int n = n0 + col0 + i * kColStep;
    const int rs = n / a.Cp, r = rs / a.S;
    b_c[i] = n < a.rsc ? n - rs * a.Cp : -1;
    b_ro[i] = r * a.dh - a.ph;
    b_so[i] = (rs - r * a.S) * a.dw - a.pw;
  }
  // The thread's pixel kpix = kbeg + kt*BK + kr and its (img, p, q), advanced per stage.
  int64_t kpix = kbeg + kr;
  int img, p, q;
  {
    const int64_t PQ = int64_t(a.P) * a.Q;
    img = int(kpix / PQ);
    const int pq = int(kpix - img * PQ);
    p = pq / a.Q;
    q = pq - p * a.Q;
  }

  auto load_stage = [&](int stage) {
    unsigned char* As = smem + stage * Tile::kStageBytes;
    unsigned char* Bs = As + BM * 64;
    const bool kin = kpix < kend;
#pragma unroll
    for (int i = 0; i < Tile::kARows; ++i) {
      const bool ok = kin && (a_ok >> i & 1u);
      const T* src = ok ? a.dy + kpix * a.Kp + (m0 + col0 + i * kColStep) : a.dy;
      cp_async_cg(As + st_off + i * (NT / 4) * 64, src, ok ? 16 : 0);
    }
    const int ih0 = p * a.sh, iw0 = q * a.sw, pix0 = img * a.H;
#pragma unroll
    for (int i = 0; i < Tile::kBRows; ++i) {
      const int ih = ih0 + b_ro[i], iw = iw0 + b_so[i];
      const bool ok = kin && b_c[i] >= 0 && unsigned(ih) < unsigned(a.H) && unsigned(iw) < unsigned(a.W);
      const T* src = ok ? a.x + int64_t((pix0 + ih) * a.W + iw) * a.Cp + b_c[i] : a.x;
      cp_async_cg(Bs + st_off + i * (NT / 4) * 64, src, ok ? 16 : 0);
    }
    // next stage's pixel: + BK
    kpix += BK;
    q += a.st_q;
    p += a.st_p;
    if (q >= a.Q) q -= a.Q, ++p;
    if (p >= a.P) p -= a.P, ++img;
    img += a.st_img;
  };

  float acc[Tile::kMI][Tile::kNI][4];
  tc_zero(acc);
  // The bias row sums of this thread: channels m0 + mb, mb = tid + c*NT < BM (one or, where the
  // block has fewer threads than rows, two of them); channel mb is held at smem row (mb/BK)*BK + k,
  // element mb % BK of the 64-byte row (chunk (mb%BK)/VEC), for the stage's pixels k < BK.
  constexpr int kBiasRows = (BM + NT - 1) / NT;
  const bool bias_sum = a.wsb != nullptr && blockIdx.x == 0;
  float bsum[kBiasRows] = {};

  const int wm = warp % WM, wn = warp / WM;
  const int g = lane / 4, t = lane % 4;
  // Fragment byte offsets of this lane for 16-column pair h (columns 16h..16h+15 of a 64-byte row)
  // at the warp tile's first block and stage row 0; a fragment adds (its block) * BK rows and its
  // k step's rows (multiples of 8: the same swizzle).
  //   16-bit: ldmatrix row address; A: k row lane%8 + 8*(lane/16), chunk 2h + (lane/8)%2;
  //           B: k row lane%8 + 8*((lane/8)%2), chunk 2h + lane/16.
  //   float:  af_off / bf_off: the word at k row t, column g of the block; k row t + 4 (f: bit 0
  //           flips) and column g + 8 (chunk: bit 1 flips) by f32_at, an XOR of the slot bits and
  //           + 4 rows (fewer live registers than one offset per register of the fragment).
  const int a_blk0 = wm * (Tile::kWarpM / BK), b_blk0 = wn * (Tile::kWarpN / BK);
  int a_off[2], b_off[2], af_off = 0, bf_off = 0;
  if constexpr (!kF32) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      a_off[h] = wg_swz(a_blk0 * BK + lane % 8 + 8 * (lane / 16), 2 * h + (lane / 8) % 2);
      b_off[h] = wg_swz(b_blk0 * BK + lane % 8 + 8 * ((lane / 8) % 2), 2 * h + lane / 16);
    }
  } else {
    af_off = wg_swz(a_blk0 * BK + t, g / 4) + (g % 4) * 4;
    bf_off = wg_swz(b_blk0 * BK + t, g / 4) + (g % 4) * 4;
  }
  // af_off / bf_off at column + 8*c8, k row + 4*k4 (a block's rows start at a multiple of 16: f(row)
  // is f(t) = 2*(t/2), f(t + 4) = f(t) + 1; bits 4-5 of the offset hold the slot chunk ^ f)
  auto f32_at = [](int off, int c8, int k4) { return (off ^ ((2 * c8 + k4) << 4)) + k4 * 4 * 64; };

  tc_pipeline<STAGES>(ktiles, load_stage, [&](int slot) {
    const unsigned char* As = smem + slot * Tile::kStageBytes;
    const unsigned char* Bs = As + BM * 64;
    if (bias_sum)
#pragma unroll
      for (int c = 0; c < kBiasRows; ++c) {
        const int mb = tid + c * NT;
        if (mb < BM)
          for (int k = 0; k < BK; ++k)
            bsum[c] += to_acc<float>(ld_shared(reinterpret_cast<const T*>(
                As + wg_swz((mb / BK) * BK + k, (mb % BK) / VEC) + ((mb % BK) % VEC) * int(sizeof(T)))));
      }
    if constexpr (!kF32) {
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {  // two k steps of 16 pixels per stage
        uint32_t bf[Tile::kNI][2];
#pragma unroll
        for (int j = 0; j < Tile::kNI; j += 2) {  // n columns 8j..8j+15: block 8j/BK, pair (8j%BK)/16
          uint32_t t4[4];
          ldmatrix_x4_trans(t4, Bs + b_off[(8 * j % BK) / 16] + ((8 * j / BK) * BK + 16 * ks) * 64);
          bf[j][0] = t4[0]; bf[j][1] = t4[1];
          bf[j + 1][0] = t4[2]; bf[j + 1][1] = t4[3];
        }
#pragma unroll
        for (int i = 0; i < Tile::kMI; ++i) {  // m rows 16i..16i+15
          uint32_t af[4];
          ldmatrix_x4_trans(af, As + a_off[(16 * i % BK) / 16] + ((16 * i / BK) * BK + 16 * ks) * 64);
#pragma unroll
          for (int j = 0; j < Tile::kNI; ++j) tc_mma(T(), acc[i][j], af, bf[j]);
        }
      }
    } else {
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {  // two k steps of 8 pixels per stage
        uint32_t bf[Tile::kNI][2];
#pragma unroll
        for (int j = 0; j < Tile::kNI; ++j)  // n columns 8j..8j+7: block j/2, chunks 2(j%2) + g/4
#pragma unroll
          for (int e = 0; e < 2; ++e)
            bf[j][e] = ld_shared(reinterpret_cast<const uint32_t*>(
                Bs + f32_at(bf_off, j % 2, e) + ((j / 2) * BK + 8 * ks) * 64));
#pragma unroll
        for (int j = 0; j < Tile::kNI; ++j) tc_round<T>(bf[j]);
#pragma unroll
        for (int i = 0; i < Tile::kMI; ++i) {  // m rows 16i..16i+15: block i
          uint32_t af[4];
#pragma unroll
          for (int e = 0; e < 4; ++e)
            af[e] = ld_shared(reinterpret_cast<const uint32_t*>(
                As + f32_at(af_off, e % 2, e / 2) + (i * BK + 8 * ks) * 64));
          tc_round<T>(af);
#pragma unroll
          for (int j = 0; j < Tile::kNI; ++j) tc_mma(T(), acc[i][j], af, bf[j]);
        }
      }
    }
  });

  // Epilogue: c[e] of tile (i, j) is D[m = 16i + g + 8*(e/2)][n = 8j + 2t + e%2] of the warp tile.
  if (bias_sum)
#pragma unroll
    for (int c = 0; c < kBiasRows; ++c)
      if (tid + c * NT < BM && m0 + tid + c * NT < a.K)
        st_global(a.wsb + int64_t(blockIdx.z) * a.K + m0 + tid + c * NT, bsum[c]);
  float* ws = a.ws + int64_t(blockIdx.z) * a.K * a.rsc;
#pragma unroll
  for (int i = 0; i < Tile::kMI; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm * Tile::kWarpM + i * 16 + g + 8 * h;
      if (m >= a.K) continue;
#pragma unroll
      for (int j = 0; j < Tile::kNI; ++j) {
        const int n = n0 + wn * Tile::kWarpN + j * 8 + 2 * t;  // even; rsc even: n + 1 < rsc too
        if (n < a.rsc)
          st_global(reinterpret_cast<float2*>(ws + int64_t(m) * a.rsc + n),
                    make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]));
      }
    }
}

}  // namespace cuda
}  // namespace fastconv
