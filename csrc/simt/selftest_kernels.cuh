// Small kernels that test the SIMT emulator itself (emulator-only: plain CUDA C++ written against
// simt.h). Used by simt_ops.cpp (torch ops _selftest / _planted) and by the sanitizer test binary.
//   selftest_run(which, out): a correct kernel; out holds its result (checked by the tests).
//   planted_run(which, out):  a kernel with a planted bug:
//     race         missing __syncthreads: out depends on the thread order
//     divergence   __syncthreads at two different lines       -> error naming both lines
//     exit_barrier __syncthreads after some threads returned    -> error
//     shfl_exited  shuffle mask names lanes that returned       -> error
//     oob_smem     write one past the end of dynamic shared mem -> error (canary; ASan report)
//     oob_global   write one past the end of a global buffer    -> memcheck error naming the line
//                                                                  (an ASan report in the ASan build)
//     oob_global_read  read one past the end of a global buffer -> memcheck error naming the line
//     null_write   write through a null pointer                 -> error naming the line
//     ldg_misaligned   __ldg of a float4 at a 4-byte offset     -> error naming the line
//     vec_misaligned   plain float4 load at a 4-byte offset: an error naming the line when the
//                      compiler emits an aligned vector move (general-protection fault)
//     smem_no_optin    64 KiB of dynamic smem without the attribute          -> launch error
//     smem_over_arch   200 KiB of dynamic smem (sm_80 allows 163 KiB)        -> launch error
//     nonatomic    non-atomic += on one shared variable: same result in every order, only the
//                  TSan build reports it
#pragma once

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "simt/simt.h"

namespace simt_selftest {

// ---- indices: every thread writes its coordinates.
__global__ void k_indices(int* out) {
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int* o = out + 12 * (b * blockDim.x * blockDim.y * blockDim.z + t);
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
  o[6] = blockDim.x; o[7] = blockDim.y; o[8] = blockDim.z;
  o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
}

// ---- shuffles over 64 threads (2 warps); 9 results per thread.
__global__ void k_shuffles(float* out) {
  const unsigned t = threadIdx.x;
  const float v = 1.5f * t;
  const double d = 0.25 * t;
  const long long ll = (long long)t << 33;
  float* o = out + 9 * t;
  o[0] = __shfl_sync(0xffffffffu, v, 3);
  o[1] = __shfl_up_sync(0xffffffffu, v, 1);
  o[2] = __shfl_down_sync(0xffffffffu, v, 2);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[4] = __shfl_sync(0xffffffffu, v, 5, 8);        // width 8: lane (t & ~7) + 5
  o[5] = __shfl_down_sync(0xffffffffu, v, 3, 16);  // stays inside 16-lane groups
  o[6] = (float)__shfl_xor_sync(0xffffffffu, d, 1);
  o[7] = (float)(__shfl_down_sync(0xffffffffu, ll, 1) >> 33);
  o[8] = (float)__shfl_up_sync(0xffffffffu, (int)t, 4);
}

// ---- warp reduction of 32-thread groups with xor shuffles + full block reduction.
__global__ void k_reduce(const float* in, float* out) {
  __shared__ float partial[32];
  const unsigned t = threadIdx.x;
  float v = in[blockIdx.x * blockDim.x + t];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if ((t & 31) == 0) partial[t >> 5] = v;
  __syncthreads();
  if (t < 32) {
    float w = t < blockDim.x / 32 ? partial[t] : 0.f;
    for (int off = 16; off > 0; off >>= 1) w += __shfl_down_sync(0xffffffffu, w, off);
    if (t == 0) out[blockIdx.x] = w;
  }
}

// ---- votes and barrier reductions over 96 threads; 9 results per thread (masks split in
// 16-bit halves so that they survive the trip through float).
__global__ void k_votes(int* out) {
  const unsigned t = threadIdx.x;
  int* o = out + 9 * t;
  const unsigned ballot = __ballot_sync(0xffffffffu, t % 3 == 0);
  o[0] = int(ballot & 0xffff);
  o[1] = int(ballot >> 16);
  o[2] = __any_sync(0xffffffffu, t == 40);
  o[3] = __all_sync(0xffffffffu, t < 64);
  o[4] = __syncthreads_count(t % 2);
  o[5] = __syncthreads_and(t < 96);
  o[6] = __syncthreads_or(t == 95);
  __syncwarp();
  const unsigned active = __activemask();
  o[7] = int(active & 0xffff);
  o[8] = int(active >> 16);
}

// ---- two half-warp groups with their own masks and a different number of warp ops, then a
// full-warp __syncwarp ordering the halves' shared-memory writes (64 threads).
__global__ void k_warp_groups(float* out) {
  __shared__ float buf[64];
  const unsigned t = threadIdx.x, lane = t % 32;
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  buf[t] = float(t);
  __syncwarp(half);
  float a = buf[t ^ 1];  // written by a lane of the same half
  a += __shfl_xor_sync(half, a, 2);
  if (lane < 16) __syncwarp(half);  // one half does an extra op
  buf[t] = a;
  __syncwarp();
  out[t] = buf[t ^ 16];  // written by the other half
}

// ---- atomics from many blocks; counters[0..7].
__global__ void k_atomics(int* ic, float* fc, double* dc, unsigned long long* uc, unsigned* u) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&ic[0], 1);
  atomicMax(&ic[1], g);
  atomicMin(&ic[2], -g);
  atomicAdd(&fc[0], 1.0f);  // exact: small integers
  atomicAdd(&dc[0], 0.5);
  atomicAdd(&uc[0], 3ull);
  atomicAdd(&u[0], 2u);
  // A CAS spin: each thread increments ic[3] once through atomicCAS.
  int old = atomicAdd(&ic[3], 0), seen;  // (a plain load here would race with the CAS: TSan saw it)
  while ((seen = atomicCAS(&ic[3], old, old + 1)) != old) old = seen;
  if (g == 7) atomicExch(&ic[4], 12345);
  __threadfence();
}

// ---- dynamic shared memory is poisoned at every block start: read before write.
__global__ void k_poison(float* out, unsigned* bits) {
  FC_DYNAMIC_SHARED(float, sm);
  const unsigned t = threadIdx.x;
  const float before = sm[t];
  unsigned b;
  std::memcpy(&b, &sm[t], 4);
  sm[t] = 1.0f;  // the next block must see poison again, not this
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = before;
  bits[blockIdx.x * blockDim.x + t] = b;
}

// ---- partial warp (48 threads): reading a lane past the end yields all-ones bits (NaN).
__global__ void k_partial(float* out) {
  const unsigned t = threadIdx.x;
  out[t] = __shfl_down_sync(0xffffffffu, (float)t, 8);
}

// ---- tiled matrix multiply C = A*B (M x K)*(K x N) with dynamic smem tiles of TxT.
__global__ void k_matmul(const float* A, const float* B, float* C, int M, int N, int K) {
  FC_DYNAMIC_SHARED(float, sm);
  const int T = blockDim.x;
  float* As = sm;
  float* Bs = sm + T * T;
  const int r = blockIdx.y * T + threadIdx.y, c = blockIdx.x * T + threadIdx.x;
  float acc = 0.f;
  for (int k0 = 0; k0 < K; k0 += T) {
    const int ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    As[threadIdx.y * T + threadIdx.x] = (r < M && ka < K) ? A[r * K + ka] : 0.f;
    Bs[threadIdx.y * T + threadIdx.x] = (kb < K && c < N) ? B[kb * N + c] : 0.f;
    __syncthreads();
    for (int k = 0; k < T; ++k) acc = __fmaf_rn(As[threadIdx.y * T + k], Bs[k * T + threadIdx.x], acc);
    __syncthreads();
  }
  if (r < M && c < N) C[r * N + c] = acc;
}

// ---- empty kernels for timing.
__global__ void k_empty(int) {}
__global__ void k_barriers(int nsync) {
  for (int i = 0; i < nsync; ++i) __syncthreads();
}

// ---------------------------------------------------------------- planted bugs
__global__ void p_race(float* out) {
  FC_DYNAMIC_SHARED(float, sm);
  const unsigned t = threadIdx.x;
  sm[t] = float(t + 1);
  // planted: missing __syncthreads() here
  out[t] = sm[(t + 1) % blockDim.x];
}

__global__ void p_divergence(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();  // SIMT_PLANTED_DIVERGENCE_A
  } else {
    __syncthreads();  // SIMT_PLANTED_DIVERGENCE_B
  }
  out[threadIdx.x] = 1.f;
}

__global__ void p_exit_barrier(float* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();  // SIMT_PLANTED_EXIT_BARRIER
  out[threadIdx.x] = 1.f;
}

__global__ void p_shfl_exited(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);  // SIMT_PLANTED_SHFL_EXITED
}

__global__ void p_oob_smem(float* out, int n) {
  FC_DYNAMIC_SHARED(float, sm);
  sm[threadIdx.x] = 1.f;
  if (threadIdx.x == 0) sm[n] = 2.f;  // planted: n == number of floats of dynamic smem
  __syncthreads();
  out[threadIdx.x] = sm[threadIdx.x];
}

__global__ void p_oob_global(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.f;  // planted: <= instead of <   SIMT_PLANTED_OOB_WRITE
}

__global__ void p_oob_global_read(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = 0.f;
  if (i <= n) v = in[i];  // planted: <= instead of <   SIMT_PLANTED_OOB_READ
  if (i < n) out[i] = v;
}

__global__ void p_null_write(float* out) {
  if (threadIdx.x == 5) out[threadIdx.x] = 1.f;  // SIMT_PLANTED_NULL_WRITE
}

__global__ void p_vec_misaligned(const float* in, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(in + 4 * threadIdx.x + 1);  // SIMT_PLANTED_VEC
  out[threadIdx.x] = v.x + v.w;
}

__global__ void p_ldg_misaligned(const float* in, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(in + 4 * threadIdx.x + 1));  // SIMT_PLANTED_LDG
  out[threadIdx.x] = v.x;
}

// V distinguishes the kernels (the opt-in attribute is per kernel): 0 and 2 for the planted
// launches, 1 for the correct one.
template <int V>
__global__ void k_big_smem(float* out, int n) {
  FC_DYNAMIC_SHARED(float, sm);
  for (int i = threadIdx.x; i < n; i += blockDim.x) sm[i] = float(i);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = sm[n - 1] + V;
}

__global__ void p_nonatomic(float* out) {
  __shared__ int counter;
  if (threadIdx.x == 0) counter = 0;
  __syncthreads();
  counter += 1;  // planted: every thread, non-atomic; fibers never interleave here, TSan sees it
  __syncthreads();
  if (threadIdx.x == 0) out[0] = float(counter);
}

// ---------------------------------------------------------------- host drivers
inline float lcg_uniform(uint32_t& s) {
  s = s * 1664525u + 1013904223u;
  return float(s >> 8) / float(1u << 24) - 0.5f;
}

// Runs a correct kernel; returns its output flattened into floats.
inline std::vector<float> selftest_run(const std::string& which) {
  std::vector<float> out;
  if (which == "indices") {
    dim3 grid(3, 2, 2), block(4, 3, 2);
    std::vector<int> o(12 * 12 * 24, -1);
    FC_LAUNCH(k_indices, grid, block, 0, nullptr)(o.data());
    out.assign(o.begin(), o.end());
  } else if (which == "shuffles") {
    out.assign(64 * 9, -7.f);
    FC_LAUNCH(k_shuffles, 1, 64, 0, nullptr)(out.data());
  } else if (which == "reduce") {
    const int blocks = 37, threads = 256;
    std::vector<float> in(blocks * threads);
    for (int i = 0; i < blocks * threads; ++i) in[i] = float(i % 1000);  // exact sums in float
    out.assign(blocks, -1.f);
    FC_LAUNCH(k_reduce, blocks, threads, 0, nullptr)(in.data(), out.data());
  } else if (which == "warp_groups") {
    out.assign(64, -7.f);
    FC_LAUNCH(k_warp_groups, 1, 64, 0, nullptr)(out.data());
  } else if (which == "votes") {
    std::vector<int> o(96 * 9, -1);
    FC_LAUNCH(k_votes, 1, 96, 0, nullptr)(o.data());
    out.assign(o.begin(), o.end());
  } else if (which == "atomics") {
    int ic[5] = {0, -1, 1, 0, 0};
    float fc[1] = {0};
    double dc[1] = {0};
    unsigned long long uc[1] = {0};
    unsigned u[1] = {0};
    FC_LAUNCH(k_atomics, 64, 128, 0, nullptr)(ic, fc, dc, uc, u);
    out = {float(ic[0]), float(ic[1]), float(ic[2]), float(ic[3]), float(ic[4]), fc[0], float(dc[0]),
           float(uc[0]), float(u[0])};
  } else if (which == "poison") {
    const int blocks = 3, threads = 64;
    std::vector<float> o(blocks * threads, 0.f);
    std::vector<unsigned> bits(blocks * threads, 0);
    FC_LAUNCH(k_poison, blocks, threads, threads * sizeof(float), nullptr)(o.data(), bits.data());
    out = o;
    for (unsigned b : bits) out.push_back(b == 0xffffffffu ? 1.f : 0.f);
  } else if (which == "partial_warp") {
    out.assign(48, -7.f);
    FC_LAUNCH(k_partial, 1, 48, 0, nullptr)(out.data());
  } else if (which == "matmul") {
    const int M = 45, N = 37, K = 53, T = 8;
    std::vector<float> A(M * K), B(K * N), C(M * N, -1.f);
    uint32_t s = 42;
    for (auto& x : A) x = lcg_uniform(s);
    for (auto& x : B) x = lcg_uniform(s);
    dim3 grid((N + T - 1) / T, (M + T - 1) / T), block(T, T);
    FC_LAUNCH(k_matmul, grid, block, 2 * T * T * sizeof(float), nullptr)(A.data(), B.data(), C.data(), M, N, K);
    // Append the float64 reference so callers can compare.
    out = C;
    for (int r = 0; r < M; ++r)
      for (int c = 0; c < N; ++c) {
        double acc = 0;
        for (int k = 0; k < K; ++k) acc += double(A[r * K + k]) * B[k * N + c];
        out.push_back(float(acc));
      }
  } else if (which == "smem_optin") {
    // 64 KiB with the opt-in attribute: fine.
    auto* k = &k_big_smem<1>;
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10) != cudaSuccess)
      throw std::runtime_error("cudaFuncSetAttribute(64 KiB) failed");
    out.assign(1, 0.f);
    FC_LAUNCH(k, 1, 64, 64 << 10, nullptr)(out.data(), 16 << 10);
  } else {
    throw std::invalid_argument("simt selftest: unknown kernel '" + which + "'");
  }
  return out;
}

// Runs a planted-bug kernel; returns its output (errors the emulator detects are thrown).
inline std::vector<float> planted_run(const std::string& which) {
  std::vector<float> out(64, -7.f);
  if (which == "race") {
    FC_LAUNCH(p_race, 1, 64, 64 * sizeof(float), nullptr)(out.data());
  } else if (which == "divergence") {
    FC_LAUNCH(p_divergence, 1, 64, 0, nullptr)(out.data());
  } else if (which == "exit_barrier") {
    FC_LAUNCH(p_exit_barrier, 1, 64, 0, nullptr)(out.data());
  } else if (which == "shfl_exited") {
    FC_LAUNCH(p_shfl_exited, 1, 32, 0, nullptr)(out.data());
  } else if (which == "oob_smem") {
    FC_LAUNCH(p_oob_smem, 1, 64, 64 * sizeof(float), nullptr)(out.data(), 64);
  } else if (which == "oob_global") {
    const int n = 100;
#if defined(__SANITIZE_ADDRESS__)
    // A heap buffer of exactly n floats: ASan reports the write at index n.
    std::vector<float>* exact = new std::vector<float>(n);
    FC_LAUNCH(p_oob_global, 1, 128, 0, nullptr)(exact->data(), n);
    delete exact;
#else
    // Without ASan: a memcheck allocation of exactly n floats (it ends at an inaccessible page).
    float* exact = static_cast<float*>(simt::memcheck_alloc(n * sizeof(float)));
    struct Free { float* p; ~Free() { simt::memcheck_free(p); } } guard{exact};
    FC_LAUNCH(p_oob_global, 1, 128, 0, nullptr)(exact, n);
#endif
  } else if (which == "oob_global_read") {
    const int n = 100;
    float* exact = static_cast<float*>(simt::memcheck_alloc(n * sizeof(float)));
    struct Free { float* p; ~Free() { simt::memcheck_free(p); } } guard{exact};
    for (int i = 0; i < n; ++i) exact[i] = float(i);
    std::vector<float> o(n);
    FC_LAUNCH(p_oob_global_read, 1, 128, 0, nullptr)(exact, o.data(), n);
  } else if (which == "null_write") {
    FC_LAUNCH(p_null_write, 1, 32, 0, nullptr)(static_cast<float*>(nullptr));
  } else if (which == "ldg_misaligned") {
    std::vector<float> in(4 * 32 + 8, 1.f);
    float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(in.data()) + 15) & ~uintptr_t(15));
    FC_LAUNCH(p_ldg_misaligned, 1, 32, 0, nullptr)(aligned, out.data());
  } else if (which == "vec_misaligned") {
    std::vector<float> in(4 * 32 + 8, 1.f);
    float* aligned = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(in.data()) + 15) & ~uintptr_t(15));
    FC_LAUNCH(p_vec_misaligned, 1, 32, 0, nullptr)(aligned, out.data());
  } else if (which == "smem_no_optin") {
    auto* k = &k_big_smem<0>;
    FC_LAUNCH(k, 1, 64, 64 << 10, nullptr)(out.data(), 16 << 10);
  } else if (which == "smem_over_arch") {
    // The attribute call fails on sm_80 (cudaErrorInvalidValue), so does the launch; on sm_90
    // both succeed.
    auto* k = &k_big_smem<2>;
    (void)cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 << 10);
    FC_LAUNCH(k, 1, 64, 200 << 10, nullptr)(out.data(), 50 << 10);
  } else if (which == "nonatomic") {
    FC_LAUNCH(p_nonatomic, 1, 64, 0, nullptr)(out.data());
    out.resize(1);
  } else {
    throw std::invalid_argument("simt planted: unknown kernel '" + which + "'");
  }
  return out;
}

}  // namespace simt_selftest
