// Kernels whose performance counters are known by hand (tests/test_simt_counters.py). Each marked
// line is one counted instruction; the expected values are in the test.
#pragma once

#include "cuda/mma.h"

namespace simt_counters_test {

using namespace fastconv::cuda;

// out[i] = in[i * stride]: stride 1 -> every warp request covers 128 contiguous bytes = 4 sectors;
// stride 32 -> 32 sectors. The store is coalesced (4 sectors).
__global__ void k_copy(const float* in, float* out, int stride) {
  const int i = threadIdx.x;
  const float v = __ldg(in + i * stride);  // COUNT_GLD
  st_global(out + i, v);                  // COUNT_GST
}

// 64 threads (2 warps), smem of 64 * 33 floats.
__global__ void k_shared(float* out) {
  FC_DYNAMIC_SHARED(float, sm);
  const int t = threadIdx.x, lane = t % 32;
  st_shared(sm + t, 1.f);                       // COUNT_STS_LINEAR: 1 wavefront per request
  __syncthreads();                              // COUNT_BAR
  float a = ld_shared(sm + 32 * lane);          // COUNT_LDS_32WAY: 32 words in bank 0
  float b = ld_shared(sm + 33 * lane);          // COUNT_LDS_PADDED: stride 33 -> conflict-free
  float c = ld_shared(sm + 5);                  // COUNT_LDS_BROADCAST: one word
  float4 d = ld_shared(reinterpret_cast<const float4*>(sm) + lane);  // COUNT_LDS_128: 4 phases
  // 8-byte accesses go in 2 phases of 16 lanes: each half-warp reads 16 words of bank 0 and 16 of
  // bank 1 (16 wavefronts), the same addresses in both halves -> 32 in all.
  float2 e = ld_shared(reinterpret_cast<const float2*>(sm) + 16 * (lane % 16));  // COUNT_LDS_64_HALVES
  out[t] = a + b + c + d.x + e.y;
}

// ldmatrix x4 with rows 16 bytes apart (conflict-free: 1 wavefront per matrix) and with rows 128
// bytes apart (all 8 rows of a matrix in the same 4 banks: 8 wavefronts per matrix).
__global__ void k_ldsm_banks(float* out) {
  FC_DYNAMIC_SHARED(uint16_t, sm);
  for (int i = threadIdx.x; i < 4096; i += 32) sm[i] = uint16_t(i);
  __syncthreads();
  const int lane = threadIdx.x;
  uint32_t r[4], q[4];
  ldmatrix_x4(r, sm + 8 * lane);   // COUNT_LDSM_DENSE
  ldmatrix_x4(q, sm + 64 * lane);  // COUNT_LDSM_STRIDED
  out[lane] = float(r[0] & 0xff) + float(q[0] & 0xff);
}

}  // namespace simt_counters_test
