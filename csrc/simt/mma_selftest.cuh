// Test kernels for the tensor-core / async-copy instructions of csrc/cuda/mma.h, run by the SIMT
// emulator (torch.ops.fastconv_simt._mma_*; tests/test_simt_mma.py). Plain CUDA: the same source
// would run on a GPU.
//   k_mma_regs    every block = one mma on fragments given register by register (layout tests)
//   k_ldsm        every block = one ldmatrix of 4 8x8 b16 matrices whose rows sit at given offsets
//   k_cp_async    cp.async sizes / zero-fill / wait_group N
//   k_gemm16      C[M][N] = A[M][K] * B[K][N] (f16/bf16): cp.async double buffering -> ldmatrix -> mma,
//                 with planted bugs selected by `bug`
//   k_gemm_tf32   the same product in tf32 (operands rounded with to_tf32, or raw = truncated)
#pragma once

#include "cuda/mma.h"

namespace simt_mma_test {

using namespace fastconv::cuda;

// kind: 0 f16, 1 bf16, 2 tf32. a: [blocks][32][4], b: [blocks][32][2], c, d: [blocks][32][4].
__global__ void k_mma_regs(int kind, const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int i = blockIdx.x * 32 + threadIdx.x;
  uint32_t ra[4] = {a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]};
  uint32_t rb[2] = {b[2 * i], b[2 * i + 1]};
  float rc[4] = {c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]};
  float rd[4];
  if (kind == 0) mma_m16n8k16_f16(rd, ra, rb, rc);
  else if (kind == 1) mma_m16n8k16_bf16(rd, ra, rb, rc);
  else mma_m16n8k8_tf32(rd, ra, rb, rc);
  for (int j = 0; j < 4; ++j) d[4 * i + j] = rd[j];
}

// smem image: [blocks][words] b16 values copied to dynamic smem; rows: [blocks][32] 16-byte row
// indices (lane l's address = smem + 16 * rows[l]); out: [blocks][32][4] (n registers used).
__global__ void k_ldsm(int n, int trans, int words, const uint16_t* image, const int* rows, uint32_t* out) {
  FC_DYNAMIC_SHARED(uint16_t, sm);
  for (int w = threadIdx.x; w < words; w += blockDim.x) sm[w] = image[blockIdx.x * words + w];
  __syncthreads();
  const int l = threadIdx.x;
  const uint16_t* row = sm + 8 * rows[blockIdx.x * 32 + l];
  uint32_t r[4] = {0, 0, 0, 0};
  if (!trans) {
    if (n == 1) { uint32_t q[1]; ldmatrix_x1(q, row); r[0] = q[0]; }
    else if (n == 2) { uint32_t q[2]; ldmatrix_x2(q, row); r[0] = q[0]; r[1] = q[1]; }
    else { uint32_t q[4]; ldmatrix_x4(q, row); for (int i = 0; i < 4; ++i) r[i] = q[i]; }
  } else {
    if (n == 1) { uint32_t q[1]; ldmatrix_x1_trans(q, row); r[0] = q[0]; }
    else if (n == 2) { uint32_t q[2]; ldmatrix_x2_trans(q, row); r[0] = q[0]; r[1] = q[1]; }
    else { uint32_t q[4]; ldmatrix_x4_trans(q, row); for (int i = 0; i < 4; ++i) r[i] = q[i]; }
  }
  for (int i = 0; i < 4; ++i) out[(blockIdx.x * 32 + l) * 4 + i] = r[i];
}

// One block of 32 threads, 64 bytes of smem per thread, src: 32 * 16 floats.
// Thread t: group 0: 16-byte cg copy of src[16t..16t+3] with src_bytes = (t % 5) * 4 (zero-fill),
//           group 1: 8-byte ca copy of src[16t+4..+5], group 2: 4-byte ca copy of src[16t+6].
// out[t][0..15] (after wait_group 1: groups 0 and 1 landed, group 2 still poisoned),
// out[t][16..31] (after wait_all). Unwritten smem words are NaN (poison).
__global__ void k_cp_async(const float* src, float* out) {
  FC_DYNAMIC_SHARED(float, sm);
  const int t = threadIdx.x;
  float* mine = sm + 16 * t;
  const float* s = src + 16 * t;
  cp_async_cg(mine, s, (t % 5) * 4);
  cp_async_commit();
  cp_async_ca<8>(mine + 4, s + 4);
  cp_async_commit();
  cp_async_ca<4>(mine + 6, s + 6);
  cp_async_commit();
  cp_async_wait<1>();
  for (int j = 0; j < 16; ++j) out[32 * t + j] = mine[j];
  cp_async_wait_all();
  for (int j = 0; j < 16; ++j) out[32 * t + 16 + j] = mine[j];
}

// Planted bugs of k_gemm16 (0: none).
enum GemmBug { kNone = 0, kNoWait = 1, kNoBarrier = 2, kMisalignedRow = 3, kRowOutOfRange = 4 };

// C[M][N] = A[M][K] * B (+0). A: row-major [M][K] b16; B: if b_kn, row-major [K][N] (fragments
// with ldmatrix .trans), else [N][K] (= B^T, plain ldmatrix). N % 16 == 0, K % 16 == 0; M any
// (rows past M are zero-filled by cp.async). Block: 128 threads = 4 warps, a 32 x 16 tile of C;
// warp w: rows 16*(w%2).., columns 8*(w/2)... K in steps of 16, two cp.async stages.
template <bool BF16>
__global__ void __launch_bounds__(128)
k_gemm16(const uint16_t* A, const uint16_t* B, float* C, int M, int N, int K, int b_kn, int bug) {
  // stage s: A tile [32][16] at sm + s*768, B tile [16][16] at sm + s*768 + 512 (b16 words)
  FC_DYNAMIC_SHARED(uint16_t, sm);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int m0 = blockIdx.x * 32, n0 = blockIdx.y * 16;
  const int steps = K / 16;
  auto issue = [&](int step, int s) {
    uint16_t* sa = sm + s * 768;
    uint16_t* sb = sa + 512;
    const int k0 = step * 16;
    if (tid < 64) {  // A: 32 rows x 2 chunks of 8
      const int r = tid / 2, c = (tid % 2) * 8;
      const bool in = m0 + r < M;
      cp_async_cg(sa + r * 16 + c, A + (in ? (int64_t(m0 + r) * K + k0 + c) : 0), in ? 16 : 0);
    } else if (tid < 96) {  // B: 16 rows x 2 chunks of 8
      const int r = (tid - 64) / 2, c = (tid % 2) * 8;
      const uint16_t* src = b_kn ? B + int64_t(k0 + r) * N + n0 + c : B + int64_t(n0 + r) * K + k0 + c;
      cp_async_cg(sb + r * 16 + c, src);
    }
  };
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  issue(0, 0);
  cp_async_commit();
  for (int step = 0; step < steps; ++step) {
    const int s = step & 1;
    if (step + 1 < steps) issue(step + 1, s ^ 1);
    cp_async_commit();
    if (bug != kNoWait) cp_async_wait<1>();  // this thread's copies of stage `step` have landed
    if (bug != kNoBarrier) __syncthreads();  // ... and everyone else's
    const uint16_t* sa = sm + s * 768;
    const uint16_t* sb = sa + 512;
    // A fragment: lanes 0-15 rows 0-15 at k 0, lanes 16-31 rows 0-15 at k 8.
    int arow = 16 * (warp % 2) + lane % 16;
    int acol = (lane / 16) * 8;
    if (bug == kMisalignedRow) acol += 4;
    if (bug == kRowOutOfRange) arow += 96;  // past the 3072 bytes
    uint32_t a[4], b[2];
    ldmatrix_x4(a, sa + arow * 16 + acol);  // SIMT_MMA_LDSM_A
    if (b_kn) {
      // B as [k][n]: matrix j = k rows 8j..8j+7, columns n 8*(warp/2)..; transposed on load.
      const int l = lane % 16;
      ldmatrix_x2_trans(b, sb + l * 16 + 8 * (warp / 2));  // SIMT_MMA_LDSM_B
    } else {
      const int l = lane % 16;
      ldmatrix_x2(b, sb + (8 * (warp / 2) + l % 8) * 16 + (l / 8) * 8);
    }
    if (BF16) mma_m16n8k16_bf16(acc, a, b, acc);
    else mma_m16n8k16_f16(acc, a, b, acc);
    __syncthreads();  // the buffer is refilled by the next step's cp.async
  }
  cp_async_wait_all();
  const int g = lane / 4, t = lane % 4;
  const int r0 = m0 + 16 * (warp % 2) + g, c0 = n0 + 8 * (warp / 2) + 2 * t;
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + 8 * h;
    if (r < M) {
      C[int64_t(r) * N + c0] = acc[2 * h];
      C[int64_t(r) * N + c0 + 1] = acc[2 * h + 1];
    }
  }
}

// C[16][8 * gridDim.x]... simple: one warp per 16 x 8 tile of C = A[M][K] * B[K][N], float inputs,
// M % 16 == 0, N % 8 == 0, K % 8 == 0; round: operands through to_tf32 (else raw bits: truncated).
__global__ void k_gemm_tf32(const float* A, const float* B, float* C, int M, int N, int K, int round) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const int m0 = blockIdx.x * 16, n0 = blockIdx.y * 8;
  auto cv = [&](float x) -> uint32_t {
    if (round) return to_tf32(x);
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
  };
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int k0 = 0; k0 < K; k0 += 8) {
    uint32_t a[4] = {cv(A[int64_t(m0 + g) * K + k0 + t]), cv(A[int64_t(m0 + g + 8) * K + k0 + t]),
                     cv(A[int64_t(m0 + g) * K + k0 + t + 4]), cv(A[int64_t(m0 + g + 8) * K + k0 + t + 4])};
    uint32_t b[2] = {cv(B[int64_t(k0 + t) * N + n0 + g]), cv(B[int64_t(k0 + t + 4) * N + n0 + g])};
    mma_m16n8k8_tf32(acc, a, b, acc);
  }
  C[int64_t(m0 + g) * N + n0 + 2 * t] = acc[0];
  C[int64_t(m0 + g) * N + n0 + 2 * t + 1] = acc[1];
  C[int64_t(m0 + g + 8) * N + n0 + 2 * t] = acc[2];
  C[int64_t(m0 + g + 8) * N + n0 + 2 * t + 1] = acc[3];
}

// Planted misuse of a warp collective: which 0: lanes 16..31 return before the mma;
// which 1: launched with 48 threads (the second warp is partial).
__global__ void k_mma_misuse(int which, float* out) {
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float c[4] = {1.f, 1.f, 1.f, 1.f}, d[4];
  if (which == 0 && threadIdx.x >= 16) return;
  mma_m16n8k16_f16(d, a, b, c);  // SIMT_MMA_MISUSE
  out[threadIdx.x] = d[0];
}

// Planted cp.async misuse (one thread copies): which 0: destination 8 bytes off a 16-byte boundary;
// 1: source 4 bytes off; 2: source just past the end of `src` (n floats); 3: destination in global
// memory.
__global__ void k_cp_async_misuse(int which, const float* src, int n, float* gdst) {
  FC_DYNAMIC_SHARED(float, sm);
  if (threadIdx.x == 0) {
    if (which == 0) cp_async_cg(sm + 2, src);                  // SIMT_CP_BAD_DST
    else if (which == 1) cp_async_cg(sm, src + 1);             // SIMT_CP_BAD_SRC
    else if (which == 2) cp_async_ca<16>(sm, src + n);         // SIMT_CP_SRC_OOB
    else cp_async_ca<4>(gdst, src);                            // SIMT_CP_GLOBAL_DST
    cp_async_wait_all();
  }
  __syncthreads();
}

}  // namespace simt_mma_test
